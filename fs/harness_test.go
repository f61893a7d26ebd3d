package fs

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"mailfs/index"
	"mailfs/journal"
)

// testMount is a real mailfs mount served by this test process.
type testMount struct {
	Mnt     string // the mountpoint
	Backing string // the real Maildir tree
	Store   *index.Store
	srv     *Server
}

// mountTest mounts a fresh store for t and unmounts it when t ends, even on
// failure. A machine without /dev/fuse fails the test with the reason.
func mountTest(t testing.TB) *testMount {
	t.Helper()
	return mountTestWith(t, mountTestOptions{})
}

// mountTestOptions place a test mount's parts; empty fields get fresh
// directories under t.TempDir().
type mountTestOptions struct {
	Backing string // the backing Maildir tree (must exist)
	Index   string // the badger index directory
}

// mountTestWith is mountTest with the backing tree or the index placed by
// the caller (a small tmpfs, say). A caller that mounts something there
// must register its unmount with t.Cleanup before calling this, so that it
// runs after the FUSE unmount.
func mountTestWith(t testing.TB, o mountTestOptions) *testMount {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("cannot mount: /dev/fuse is missing (%v); mailfs tests need FUSE (modprobe fuse, or run with --device /dev/fuse)", err)
	}
	dir := t.TempDir()
	tm := &testMount{Mnt: filepath.Join(dir, "mnt"), Backing: o.Backing}
	if tm.Backing == "" {
		tm.Backing = filepath.Join(dir, "maildir")
	}
	if o.Index == "" {
		o.Index = filepath.Join(dir, "index")
	}
	for _, d := range []string{tm.Mnt, tm.Backing} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var node journal.NodeID
	rand.Read(node[:])
	st, err := index.Open(o.Index, index.Options{Node: node, Name: "test"})
	if err != nil {
		t.Fatalf("open index: %v", err)
	}
	tm.Store = st
	srv, err := Mount(tm.Mnt, Options{Store: st, Root: tm.Backing, FSName: "mailfs-test"})
	if err != nil {
		st.Close()
		t.Fatalf("mount: %v", err)
	}
	tm.srv = srv
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", tm.Mnt, err)
		}
		if err := st.Close(); err != nil {
			t.Errorf("close index: %v", err)
		}
	})
	return tm
}

// ops returns every op journaled so far.
func (tm *testMount) ops(t testing.TB) []journal.Op {
	t.Helper()
	var out []journal.Op
	if err := tm.Store.Ops(1, func(op *journal.Op) error {
		out = append(out, *op)
		return nil
	}); err != nil {
		t.Fatalf("read journal: %v", err)
	}
	return out
}

// opsSince returns the ops journaled after seq.
func (tm *testMount) opsSince(t testing.TB, seq uint64) []journal.Op {
	var out []journal.Op
	for _, op := range tm.ops(t) {
		if op.Seq > seq {
			out = append(out, op)
		}
	}
	return out
}

// p returns the path of rel inside the mount.
func (tm *testMount) p(rel string) string { return filepath.Join(tm.Mnt, filepath.FromSlash(rel)) }
