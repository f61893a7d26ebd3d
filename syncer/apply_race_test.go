package syncer

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"testing"

	"mailfs/index"
	"mailfs/journal"
)

// hookedMount runs before, once, ahead of the first Apply of an op of kind:
// a local change landing between the applier's decision and its syscall.
type hookedMount struct {
	Mount
	kind   journal.Kind
	before func()
}

func (m *hookedMount) Apply(op *journal.Op, fn func() error) error {
	if m.before != nil && op.Kind == m.kind {
		before := m.before
		m.before = nil
		before()
	}
	return m.Mount.Apply(op, fn)
}

// A peer's delete of a folder that keeps mail it had not seen unlinks the
// mail it had seen one message at a time. A local rename of the folder
// between that decision and the unlink must not leave the seen message
// behind (the unlink found nothing under the old path and took the
// message for gone).
func TestDeleteKeepingUnseenMailRacesLocalRename(t *testing.T) {
	a, b := newFullNode(t, "a"), newFullNode(t, "b")
	folder := fullTestMailbox + "/.Work"
	for _, mb := range []string{fullTestMailbox, folder} {
		for _, d := range []string{"", "tmp", "new", "cur"} {
			if err := os.MkdirAll(filepath.Join(a.mnt, mb, d), 0o700); err != nil {
				t.Fatal(err)
			}
		}
	}
	deliverInto := func(n *fullNode, mb, name, body string) {
		t.Helper()
		tmp := filepath.Join(n.mnt, mb, "tmp", name)
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(n.mnt, mb, "new", name)); err != nil {
			t.Fatal(err)
		}
	}
	deliverInto(a, folder, "1700000001.M1P1.a", "Subject: seen\r\n\r\n1\r\n")
	replicate(t, a, b, 0, nil)
	// Mail b has not seen when it deletes the folder: the folder stays.
	deliverInto(a, folder, "1700000002.M2P1.a", "Subject: unseen\r\n\r\n2\r\n")
	trash := filepath.Join(b.mnt, fullTestMailbox, "..DOVECOT-TRASHED")
	if err := os.Rename(filepath.Join(b.mnt, folder), trash); err != nil {
		t.Fatalf("delete the folder on b: %v", err)
	}
	if err := os.RemoveAll(trash); err != nil {
		t.Fatal(err)
	}
	renamed := fullTestMailbox + "/.Archive"
	orig := a.sync.applier.mnt
	a.sync.applier.mnt = &hookedMount{Mount: orig, kind: journal.MailboxDelete, before: func() {
		if err := os.Rename(filepath.Join(a.mnt, folder), filepath.Join(a.mnt, renamed)); err != nil {
			t.Errorf("rename the folder on a: %v", err)
		}
	}}
	defer func() { a.sync.applier.mnt = orig }()
	replicate(t, b, a, 0, nil)

	var names []string
	for _, sub := range []string{"new", "cur"} {
		ents, err := os.ReadDir(filepath.Join(a.mnt, renamed, sub))
		if err != nil {
			t.Fatalf("the renamed folder on a: %v", err)
		}
		for _, e := range ents {
			names = append(names, path.Join(sub, e.Name()))
		}
	}
	if len(names) != 1 || names[0] != "new/1700000002.M2P1.a" {
		t.Fatalf("a's renamed folder holds %v, want only the mail b had not seen (new/1700000002.M2P1.a)", names)
	}
}

// A peer's create of a folder this node has at the same path merges with
// it (rule 3). A local delete of the folder between that decision and the
// merge's commit must not swallow the peer's create: the delete had not
// seen it, so the other nodes keep the folder under the create's GUID, and
// so must this one.
func TestSamePathMergeRacesLocalDelete(t *testing.T) {
	x, y := newFullNode(t, "x"), newFullNode(t, "y")
	folder := fullTestMailbox + "/.Archive"
	mkdirs := func(n *fullNode, mb string) {
		t.Helper()
		for _, d := range []string{"", "tmp", "new", "cur"} {
			if err := os.MkdirAll(filepath.Join(n.mnt, mb, d), 0o700); err != nil {
				t.Fatal(err)
			}
		}
	}
	mkdirs(x, fullTestMailbox)
	after := map[*fullNode]uint64{x: replicate(t, x, y, 0, nil)}
	mkdirs(x, folder)
	mkdirs(y, folder)
	// The receiver keeps its own GUID in the merge: the higher one.
	recv, send := x, y
	if g, h := folderGUID(t, x, folder), folderGUID(t, y, folder); string(g[:]) < string(h[:]) {
		recv, send = y, x
	}
	sent := folderGUID(t, send, folder)
	deleted := false
	recv.sync.applier.resolved = func(rule string) {
		if rule != ruleSamePathMerge || deleted {
			return
		}
		deleted = true
		trash := filepath.Join(recv.mnt, fullTestMailbox, "..DOVECOT-TRASHED")
		if err := os.Rename(filepath.Join(recv.mnt, folder), trash); err != nil {
			t.Errorf("delete the folder on the receiver: %v", err)
		}
		if err := os.RemoveAll(trash); err != nil {
			t.Error(err)
		}
	}
	replicate(t, send, recv, after[send], nil)
	if !deleted {
		t.Fatal("the receiver did not merge the two creates")
	}
	recv.sync.applier.resolved = func(string) {}
	replicate(t, recv, send, after[recv], nil)
	for _, n := range []*fullNode{recv, send} {
		if g := folderGUID(t, n, folder); g != sent {
			t.Errorf("%s is %s on a node, want %s (the create the delete had not seen)", folder, g, sent)
		}
	}
}

func folderGUID(t *testing.T, n *fullNode, mb string) journal.GUID {
	t.Helper()
	var g journal.GUID
	err := n.store.View(func(v index.PeerView) error {
		m, ok, err := v.MailboxAt(mb)
		if err == nil && !ok {
			err = fmt.Errorf("no mailbox at %s", mb)
		}
		g = m.GUID
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// A peer's delete of a folder with nothing in it that its deleter had not
// seen removes it. Mail added to the folder here and moved out again
// between that decision and the removal must keep the folder, empty: the
// deleter gets that add after its delete, and makes the folder again for
// it (rule 4); the move leaves it empty there.
func TestDeleteRacesLocalAddAndMoveOut(t *testing.T) {
	a, b := newFullNode(t, "a"), newFullNode(t, "b")
	folder := fullTestMailbox + "/.Archive"
	for _, mb := range []string{fullTestMailbox, folder} {
		for _, d := range []string{"", "tmp", "new", "cur"} {
			if err := os.MkdirAll(filepath.Join(a.mnt, mb, d), 0o700); err != nil {
				t.Fatal(err)
			}
		}
	}
	afterA := replicate(t, a, b, 0, nil)
	trash := filepath.Join(b.mnt, fullTestMailbox, "..DOVECOT-TRASHED")
	if err := os.Rename(filepath.Join(b.mnt, folder), trash); err != nil {
		t.Fatalf("delete the folder on b: %v", err)
	}
	if err := os.RemoveAll(trash); err != nil {
		t.Fatal(err)
	}
	const name = "1700000003.M3P1.a"
	orig := a.sync.applier.mnt
	a.sync.applier.mnt = &hookedMount{Mount: orig, kind: journal.MailboxDelete, before: func() {
		tmp := filepath.Join(a.mnt, folder, "tmp", name)
		if err := os.WriteFile(tmp, []byte("Subject: in and out\r\n\r\n3\r\n"), 0o600); err != nil {
			t.Errorf("deliver on a: %v", err)
			return
		}
		if err := os.Rename(tmp, filepath.Join(a.mnt, folder, "new", name)); err != nil {
			t.Errorf("deliver on a: %v", err)
			return
		}
		if err := os.Rename(filepath.Join(a.mnt, folder, "new", name), filepath.Join(a.mnt, fullTestMailbox, "new", name)); err != nil {
			t.Errorf("move to the inbox on a: %v", err)
		}
	}}
	defer func() { a.sync.applier.mnt = orig }()
	replicate(t, b, a, 0, nil)
	a.sync.applier.mnt = orig
	replicate(t, a, b, afterA, nil)
	for _, n := range []*fullNode{a, b} {
		if _, err := os.Stat(filepath.Join(n.mnt, folder, "cur")); err != nil {
			t.Errorf("%s on %s: %v; want it kept, empty (mail the deleter had not seen was added to it)", folder, n.mnt, err)
			continue
		}
		if _, err := os.Stat(filepath.Join(n.mnt, fullTestMailbox, "new", name)); err != nil {
			t.Errorf("the moved message on %s: %v", n.mnt, err)
		}
	}
	if ga, gb := folderGUID(t, a, folder), folderGUID(t, b, folder); ga != gb {
		t.Errorf("%s is %s on a, %s on b", folder, ga, gb)
	}
}
