package index

import (
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"

	"mailfs/journal"
)

// After an unclean stop the journal holds only acknowledged ops, and the
// disk may lag behind it (renames and unlinks that mailfs acknowledged
// without a directory fsync). Reconcile must bring the disk to the journal,
// not journal the disk's older state.
func TestReconcileAfterUncleanStop(t *testing.T) {
	t.Parallel()
	root, mb, s, commit := reconcileFixture(t)
	defer s.Close()
	ctx := context.Background()
	write := func(rel, body string) {
		if err := os.WriteFile(filepath.Join(root, rel), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// 1: a delivery acknowledged, but the rename out of tmp/ was lost.
	write(mb+"/tmp/1.M1.h", "one")
	commit(Event{Kind: EvRename, Path: mb + "/tmp/1.M1.h", NewPath: mb + "/new/1.M1.h", File: FileInfo{Size: 3}})
	// 2: a flag rename acknowledged, lost on disk.
	write(mb+"/cur/2.M2.h:2,S", "two")
	commit(Event{Kind: EvRescan, Path: mb + "/cur/2.M2.h:2,S", File: FileInfo{Size: 3}})
	commit(Event{Kind: EvRename, Path: mb + "/cur/2.M2.h:2,S", NewPath: mb + "/cur/2.M2.h:2,FS"})
	// 3: an expunge acknowledged, the unlink lost.
	write(mb+"/cur/3.M3.h:2,", "three")
	commit(Event{Kind: EvRescan, Path: mb + "/cur/3.M3.h:2,", File: FileInfo{Size: 5}})
	commit(Event{Kind: EvUnlink, Path: mb + "/cur/3.M3.h:2,"})
	seq := s.Seq()

	s.wasClean = false
	rep, err := s.Reconcile(ctx, root, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Seq() != seq {
		t.Fatalf("reconcile journaled %d ops; the journal was already right", s.Seq()-seq)
	}
	exists := func(rel string) bool {
		_, err := os.Lstat(filepath.Join(root, rel))
		return err == nil
	}
	if !exists(mb+"/new/1.M1.h") || exists(mb+"/tmp/1.M1.h") {
		t.Errorf("delivery not redone from tmp/")
	}
	if !exists(mb+"/cur/2.M2.h:2,FS") || exists(mb+"/cur/2.M2.h:2,S") {
		t.Errorf("flag rename not restored to the journal's name")
	}
	if exists(mb + "/cur/3.M3.h:2,") {
		t.Errorf("expunged message came back")
	}
	if rep.Redone != 2 {
		t.Errorf("report says %d renames redone, want 2", rep.Redone)
	}
}

// A peer's delivery renamed into place by the applier, whose index commit
// was still pending when the daemon died (the bulk path of a segment), is
// recorded as the peer's op by the reconcile that follows, not journaled
// as a local add (which would echo back); a file the intent does not name,
// or whose bytes differ, is a local add as ever. The cursor commit that
// ends the segment drops the intent.
func TestReconcileIntendedAdds(t *testing.T) {
	t.Parallel()
	root, mb, s, commit := reconcileFixture(t)
	defer s.Close()
	ctx := context.Background()
	g, ok, err := s.MailboxByPath(mb)
	if err != nil || !ok {
		t.Fatalf("mailbox: %v %v", ok, err)
	}
	write := func(rel, body string) journal.ContentID {
		if err := os.WriteFile(filepath.Join(root, rel), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return journal.ContentID(sha256.Sum256([]byte(body)))
	}
	peer := journal.NodeID{9}
	c1 := write(mb+"/new/1.M1.peer", "from the peer")
	c2 := journal.ContentID(sha256.Sum256([]byte("other bytes")))
	write(mb+"/new/2.M2.peer", "not what the peer sent")
	write(mb+"/cur/3.M3.local:2,S", "local")
	add := func(seq uint64, key string, c journal.ContentID, size int64) journal.Op {
		return journal.Op{Kind: journal.MessageAdd, Origin: peer, Seq: seq, Time: journal.HLC{WallMs: 1000},
			Mailbox: g.GUID, Path: mb, Key: key, Sub: journal.SubNew, Size: size, Content: c}
	}
	commit(IntentOf(peer, []journal.Op{add(1, "1.M1.peer", c1, 13), add(2, "2.M2.peer", c2, 11)}))
	if n, err := s.Intents(); err != nil || n != 1 {
		t.Fatalf("intents: %d %v", n, err)
	}
	seq := s.Seq()
	s.wasClean = false
	if _, err := s.Reconcile(ctx, root, nil); err != nil {
		t.Fatal(err)
	}
	if got := s.Seq() - seq; got != 2 {
		t.Fatalf("reconcile journaled %d ops, want 2 (the local file and the one whose bytes differ)", got)
	}
	var peerAdded bool
	if err := s.View(func(v PeerView) error {
		m, ok, err := v.Message(g.GUID, "1.M1.peer")
		peerAdded = ok && m.Added.Origin == peer && m.AddedSeq == 1 && m.Content == c1
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !peerAdded {
		t.Fatalf("the intended delivery is not recorded as the peer's add")
	}
	commit(AppliedOp(peer, 1, 2))
	if n, err := s.Intents(); err != nil || n != 0 {
		t.Fatalf("intents after the cursor commit: %d %v", n, err)
	}
}

// reconcileFixture is a backing tree with one mailbox (tmp, new, cur) and
// an open store that knows it; commit commits events or fails the test.
func reconcileFixture(t *testing.T) (root, mb string, s *Store, commit func(evs ...Event)) {
	t.Helper()
	root = t.TempDir()
	mb = "example.com/a/Maildir"
	for _, sub := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, mb, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	s = openTest(t, t.TempDir())
	commit = func(evs ...Event) {
		t.Helper()
		if _, err := s.Commit(context.Background(), evs...); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"example.com", "example.com/a", mb, mb + "/cur"} {
		commit(Event{Kind: EvMkdir, Path: d, IsDir: true})
	}
	return root, mb, s, commit
}
