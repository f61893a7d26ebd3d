package fs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailfs/index"
)

// A local folder delete (Dovecot's rename to the trash name) is on disk
// before it is in the index. The syncer's applier looks at both together
// when a peer's change finds a file missing; if it looked in between, it
// would take the folder's files for gone behind mailfs's back and bring
// them back. Settled must run its look after the rename is in the index.
func TestSettledWaitsForALocalRenameInFlight(t *testing.T) {
	t.Parallel()
	tm := mountTest(t)
	const inbox = "example.com/bob/Maildir"
	const work = inbox + "/.Work"
	trash := inbox + "/..DOVECOT-TRASHED"
	if err := os.MkdirAll(tm.p("example.com/bob"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{inbox, work} {
		if err := mkMaildir(tm.p(d)); err != nil {
			t.Fatal(err)
		}
	}
	reached := make(chan struct{})
	hook := func(from, to string) {
		if !strings.HasSuffix(to, "..DOVECOT-TRASHED") {
			return
		}
		close(reached)
		time.Sleep(300 * time.Millisecond) // the window a look could fall into
	}
	tm.srv.m.renamedOnDisk.Store(&hook)
	renamed := make(chan error, 1)
	go func() { renamed <- os.Rename(tm.p(work), tm.p(trash)) }()
	select {
	case <-reached:
	case err := <-renamed:
		t.Fatalf("the folder rename finished (%v) without reaching the hook", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the folder rename did not reach the hook within 10s")
	}
	var live, onDisk bool
	err := tm.srv.Settled(func() error {
		_, err := os.Stat(filepath.Join(tm.Backing, work, "cur"))
		onDisk = !errors.Is(err, os.ErrNotExist)
		return tm.Store.View(func(v index.PeerView) error {
			var err error
			_, live, err = v.MailboxAt(work)
			return err
		})
	})
	if err != nil {
		t.Fatalf("Settled: %v", err)
	}
	if err := <-renamed; err != nil {
		t.Fatalf("renaming %s to its trash name: %v", work, err)
	}
	if live || onDisk {
		t.Fatalf("Settled saw %s live in the index: %v, on disk: %v; want neither (the delete was under way)", work, live, onDisk)
	}
}
