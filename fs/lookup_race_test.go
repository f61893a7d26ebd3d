package fs

import (
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mailfs/index"
	"mailfs/journal"
)

// A message moved into a folder while the folder is renamed to its trash
// name (a folder delete, Dovecot's way or a peer's applied by the syncer)
// after the mover's lookup of the folder: the kernel sends the rename with
// the folder's directory, which is in the trash by then. The move must fail
// (the folder is gone) and leave the message where it was, not land in the
// trash, journaled as an expunge, and go with it.
func TestRenameIntoFolderMovedToTrash(t *testing.T) {
	t.Parallel()
	tm := mountTest(t)
	const inbox = "example.com/bob/Maildir"
	const work = inbox + "/.Work"
	const key = "1700000000.M1P2.host,S=42"
	if err := os.MkdirAll(tm.p("example.com/bob"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{inbox, work} {
		if err := mkMaildir(tm.p(d)); err != nil {
			t.Fatal(err)
		}
	}
	body := []byte(strings.Repeat("Subject: moved\r\n\r\nbody\r\n", 2))
	if err := deliver(tm.p(inbox), key, body, time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	trash := inbox + "/..DOVECOT-TRASHED-test"
	var once sync.Once
	trashed := make(chan error, 1) // the hook runs on a FUSE server goroutine
	hook := func(op, from, to string) {
		if op != "rename" || !strings.HasSuffix(from, "/new/"+key) {
			return
		}
		once.Do(func() {
			done := make(chan error, 1)
			go func() { done <- os.Rename(tm.p(work), tm.p(trash)) }()
			select {
			case err := <-done:
				trashed <- err
			case <-time.After(10 * time.Second):
				trashed <- errors.New("the folder rename did not finish within 10s")
			}
		})
	}
	tm.srv.m.beforeLock.Store(&hook)
	before := tm.Store.Seq()
	err := os.Rename(tm.p(inbox+"/new/"+key), tm.p(work+"/new/"+key))
	select {
	case terr := <-trashed:
		if terr != nil {
			t.Fatalf("renaming %s to its trash name: %v", work, terr)
		}
	default:
		t.Fatalf("the move's rename never reached the hook (err %v)", err)
	}
	if !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("move into a folder renamed to the trash meanwhile: %v; want ENOENT", err)
	}
	if _, err := os.Stat(tm.p(inbox + "/new/" + key)); err != nil {
		t.Fatalf("the message left %s/new: %v", inbox, err)
	}
	if _, err := os.Stat(tm.p(trash + "/new/" + key)); err == nil {
		t.Fatalf("the message is in the trash")
	}
	for _, op := range tm.opsSince(t, before) {
		if op.Key == key && (op.Kind == journal.MessageExpunge || op.Kind == journal.MessageMove) {
			t.Fatalf("journaled %v for the message that stayed", op.Kind)
		}
	}
	if err := os.RemoveAll(tm.p(trash)); err != nil {
		t.Fatal(err)
	}
}

// A folder's cur/ made (the mkdir that makes it a mailbox) while a folder
// on its path is renamed after the mkdir's lookup: the directory is made
// where the folder is now, and the index must say so too, not keep a
// mailbox at the old path that is on no disk.
func TestMkdirInFolderRenamedMeanwhile(t *testing.T) {
	t.Parallel()
	tm := mountTest(t)
	const inbox = "example.com/carol/Maildir"
	if err := os.MkdirAll(tm.p("example.com/carol"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := mkMaildir(tm.p(inbox)); err != nil {
		t.Fatal(err)
	}
	const made, moved = inbox + "/.New", inbox + "/.Other"
	for _, d := range []string{made, made + "/tmp", made + "/new"} {
		if err := os.Mkdir(tm.p(d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	var once sync.Once
	renamed := make(chan error, 1)
	hook := func(op, from, to string) {
		if op != "mkdir" || from != made+"/cur" {
			return
		}
		once.Do(func() {
			done := make(chan error, 1)
			go func() { done <- os.Rename(tm.p(made), tm.p(moved)) }()
			select {
			case err := <-done:
				renamed <- err
			case <-time.After(10 * time.Second):
				renamed <- errors.New("the folder rename did not finish within 10s")
			}
		})
	}
	tm.srv.m.beforeLock.Store(&hook)
	err := os.Mkdir(tm.p(made+"/cur"), 0o700)
	if rerr := <-renamed; rerr != nil {
		t.Fatalf("renaming %s: %v", made, rerr)
	}
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("mkdir cur in a folder renamed meanwhile: %v", err)
	}
	var where []string
	if err := tm.Store.Mailboxes(func(mb index.Mailbox) error {
		where = append(where, mb.Path)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, p := range where {
		if fi, err := os.Stat(tm.p(p + "/cur")); err != nil || !fi.IsDir() {
			t.Fatalf("the index has mailbox %s, which has no cur/ on disk (mailboxes %v)", p, where)
		}
	}
	_, onDisk := os.Stat(tm.p(moved + "/cur"))
	if (onDisk == nil) != slices.Contains(where, moved) {
		t.Fatalf("%s/cur on disk: %v; the index's mailboxes: %v", moved, onDisk, where)
	}
}
