package index

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// After an unclean stop the journal holds only acknowledged ops, and the
// disk may lag behind it (renames and unlinks that mailfs acknowledged
// without a directory fsync). Reconcile must bring the disk to the journal,
// not journal the disk's older state.
func TestReconcileAfterUncleanStop(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	mb := "example.com/a/Maildir"
	for _, sub := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, mb, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	write := func(rel, body string) {
		if err := os.WriteFile(filepath.Join(root, rel), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := openTest(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	commit := func(evs ...Event) {
		t.Helper()
		if _, err := s.Commit(ctx, evs...); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"example.com", "example.com/a", mb, mb + "/cur"} {
		commit(Event{Kind: EvMkdir, Path: d, IsDir: true})
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
