package fs

import (
	"crypto/rand"
	"errors"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"mailfs/journal"
)

// A peer's flag rename made behind the kernel's back: the kernel, which had
// the old name cached, no longer finds the message under it, finds it under
// the new one, lists the new name once told to (InvalidateDir), and no op is
// journaled for it (it is the peer's).
func TestRenameBehind(t *testing.T) {
	t.Parallel()
	tm := mountTest(t)
	const inbox = "example.com/alice/Maildir"
	const key = "1700000000.M1P2.host,S=42"
	if err := os.MkdirAll(tm.p("example.com/alice"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := mkMaildir(tm.p(inbox)); err != nil {
		t.Fatal(err)
	}
	if err := deliver(tm.p(inbox), key, []byte("Subject: x\r\n\r\nbody\r\n"), time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	oldRel, newRel := inbox+"/cur/"+key+":2,S", inbox+"/cur/"+key+":2,FS"
	if err := os.Rename(tm.p(inbox+"/new/"+key), tm.p(oldRel)); err != nil {
		t.Fatal(err)
	}
	// The kernel caches the old name and the listing.
	if _, err := os.Stat(tm.p(oldRel)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadDir(tm.p(inbox + "/cur")); err != nil {
		t.Fatal(err)
	}
	ops := tm.ops(t)
	seq := ops[len(ops)-1].Seq
	var peer journal.NodeID
	rand.Read(peer[:])
	op := &journal.Op{Kind: journal.MessageFlags, Origin: peer, Seq: 1, Mailbox: ops[len(ops)-1].Mailbox, Key: key,
		Sub: journal.SubCur, Flags: []string{`\Flagged`, `\Seen`}, Changed: []string{`\Flagged`}}

	if _, ok, err := tm.srv.RenameBehind(op, oldRel, inbox+"/new/"+key); ok || err != nil {
		t.Fatalf("RenameBehind into another directory: ok %v, %v; want not made", ok, err)
	}
	p, ok, err := tm.srv.RenameBehind(op, oldRel, newRel)
	if err != nil || !ok {
		t.Fatalf("RenameBehind: ok %v, %v", ok, err)
	}
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tm.p(oldRel)); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("old name after the rename: %v; want ENOENT (the kernel was told to forget it)", err)
	}
	if _, err := os.Stat(tm.p(newRel)); err != nil {
		t.Fatalf("new name: %v", err)
	}
	tm.srv.InvalidateDir(inbox + "/cur")
	entries, err := os.ReadDir(tm.p(inbox + "/cur"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{key + ":2,FS"}) {
		t.Fatalf("cur/ lists %q; want only the new name", names)
	}
	if got := tm.opsSince(t, seq); len(got) != 0 {
		t.Fatalf("journaled %d ops for a peer's rename: %v", len(got), got)
	}
	if _, _, err := tm.srv.RenameBehind(op, oldRel, newRel); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("RenameBehind of a name that is gone: %v; want ENOENT (the applier decides again)", err)
	}
}
