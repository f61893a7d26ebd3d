package tests

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailfs/index"
)

const (
	fullSyncMailbox = "example.com/fs/Maildir"
	fullSyncSent    = fullSyncMailbox + "/.Sent"
	fullSyncSieve   = "example.com/fs/sieve/main.sieve"
)

// fullSyncFixture is two paired nodes whose mailbox holds three messages
// (new/, cur/ with flags, cur/ with a keyword) and a second mailbox with
// one, and a plain file (a sieve script), converged.
type fullSyncFixture struct {
	a, b   *node
	bodies map[string][]byte // key → body
	names  map[string]string // key → "mailbox/sub/name" on B
	mtimes map[string]time.Time
	sieve  []byte
	sieveT time.Time // its mtime on B
}

func newFullSyncFixture(t *testing.T) *fullSyncFixture {
	t.Helper()
	nodes := startNodes(t, 2)
	f := &fullSyncFixture{a: nodes[0], b: nodes[1], bodies: map[string][]byte{}, names: map[string]string{},
		mtimes: map[string]time.Time{}}
	mkMailbox(t, f.a.Mnt, fullSyncMailbox)
	mkMailbox(t, f.a.Mnt, fullSyncSent)
	writeKeywords(t, f.a.Mnt, fullSyncMailbox, "$Important")
	checkConverged(t, "mailbox created on A", f.a, f.b)
	base := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	for i, m := range []struct{ mb, key, sub, info string }{
		{fullSyncMailbox, "1700000100.M1P1.fs", "new", ""},
		{fullSyncMailbox, "1700000101.M2P1.fs", "cur", ":2,RS"},
		{fullSyncMailbox, "1700000102.M3P1.fs", "cur", ":2,Sa"},
		{fullSyncSent, "1700000103.M4P1.fs", "cur", ":2,S"},
	} {
		body := []byte("From: a@example.com\r\nSubject: full sync " + m.key + "\r\n\r\n" + strings.Repeat("body ", 200*(i+1)) + "\r\n")
		f.bodies[m.key] = body
		f.mtimes[m.key] = base.Add(time.Duration(i) * time.Hour)
		deliverMsg(t, f.a.Mnt, m.mb, m.sub, m.key+m.info, body, f.mtimes[m.key])
		f.names[m.key] = m.mb
	}
	f.sieve = []byte("require \"fileinto\";\nif header :contains \"subject\" \"x\" { fileinto \"Sent\"; }\n")
	if err := os.MkdirAll(filepath.Join(f.a.Mnt, filepath.Dir(fullSyncSieve)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.a.Mnt, fullSyncSieve), f.sieve, 0o644); err != nil {
		t.Fatal(err)
	}
	checkConverged(t, "four deliveries and a sieve script on A", f.a, f.b)
	fi, err := os.Stat(filepath.Join(f.b.Mnt, fullSyncSieve))
	if err != nil {
		t.Fatal(err)
	}
	f.sieveT = fi.ModTime()
	for key, mb := range f.names {
		sub, name := findMsg(t, f.b.Mnt, mb, key)
		f.names[key] = mb + "/" + sub + "/" + name
	}
	return f
}

// deleteBehindBack removes the backing files of keys from B's store (B is
// not running).
func (f *fullSyncFixture) deleteBehindBack(t *testing.T, keys ...string) {
	t.Helper()
	for _, k := range keys {
		p := filepath.Join(f.b.Store, "maildir", filepath.FromSlash(f.names[k]))
		if err := os.Remove(p); err != nil {
			t.Fatalf("deleting %s behind mailfs's back: %v", p, err)
		}
	}
}

// checkRestored checks that every message is on B's mount as it was:
// same name (so flags and sub), same bytes, same mtime.
func (f *fullSyncFixture) checkRestored(t *testing.T) {
	t.Helper()
	for key, rel := range f.names {
		p := filepath.Join(f.b.Mnt, filepath.FromSlash(rel))
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("message %s not back on B: %v", key, err)
		}
		if !bytes.Equal(got, f.bodies[key]) {
			t.Fatalf("message %s on B differs from the original (%d bytes, want %d)", key, len(got), len(f.bodies[key]))
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.ModTime().Equal(f.mtimes[key]) {
			t.Fatalf("message %s on B has mtime %s, want %s", key, fi.ModTime(), f.mtimes[key])
		}
	}
	if got, err := os.ReadFile(filepath.Join(f.b.Mnt, fullSyncSieve)); err != nil || !bytes.Equal(got, f.sieve) {
		t.Fatalf("sieve script on B: %q, %v", got, err)
	}
	if fi, err := os.Stat(filepath.Join(f.b.Mnt, fullSyncSieve)); err != nil || !fi.ModTime().Equal(f.sieveT) {
		t.Fatalf("sieve script on B: %v, %v (want mtime %s)", fi, err, f.sieveT)
	}
	checkConverged(t, "after the full sync", f.a, f.b)
}

// restartB starts B again on its store and address.
func (f *fullSyncFixture) restartB(t *testing.T, extra ...string) {
	t.Helper()
	f.b.mailfsProc = startMailfs(t, f.b.Store, f.b.Mnt, append([]string{"--listen", f.b.Addr}, extra...)...)
	waitConnected(t, f.b.Name, f.b.Store, f.a.ID, f.a.Name, f.a.Addr)
}

// checkIndexNotMissing stops B and reads its index: no message or mailbox
// may still be marked missing.
func (f *fullSyncFixture) checkIndexNotMissing(t *testing.T) {
	t.Helper()
	f.b.Stop()
	ix, err := index.Open(filepath.Join(f.b.Store, "index"), index.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("opening B's index: %v", err)
	}
	defer ix.Close()
	mailboxes, n := 0, 0
	err = ix.Mailboxes(func(mb index.Mailbox) error {
		mailboxes++
		if mb.Missing {
			t.Errorf("mailbox %s still marked missing in B's index", mb.Path)
		}
		return ix.Messages(mb.GUID, func(m index.Message) error {
			n++
			if m.Missing {
				t.Errorf("message %s still marked missing in B's index", m.Key)
			}
			return nil
		})
	})
	if err != nil || mailboxes != 2 || n != len(f.names) {
		t.Fatalf("B's index: %d mailboxes, %d messages (want 2, %d), err %v", mailboxes, n, len(f.names), err)
	}
}

// TestFullSyncCommand: message files deleted from B's backing store while
// B is down are marked missing at the next start, and `mailfs sync --full`
// brings them back from A byte for byte, with their flags, sub and mtime,
// without journaling anything.
func TestFullSyncCommand(t *testing.T) {
	t.Parallel()
	f := newFullSyncFixture(t)
	journaled := len(journalOps(t, f.b.Store))
	f.b.Stop()
	f.deleteBehindBack(t, "1700000100.M1P1.fs", "1700000101.M2P1.fs")
	// And a whole mailbox directory, and a plain file.
	for _, p := range []string{fullSyncSent, fullSyncSieve} {
		if err := os.RemoveAll(filepath.Join(f.b.Store, "maildir", p)); err != nil {
			t.Fatal(err)
		}
	}
	f.restartB(t)
	waitLog(t, f.b.mailfsProc, time.Second, "marked missing")
	if _, err := os.Stat(filepath.Join(f.b.Mnt, filepath.FromSlash(f.names["1700000101.M2P1.fs"]))); err == nil {
		t.Fatal("the deleted message is still on B's mount before the full sync")
	}

	out, errs, code := runMailfs(t, "sync", "--full", "--store", f.b.Store, "--timeout", "60s")
	if code != 0 {
		t.Fatalf("sync --full on B: exit %d: %s%s\n%s", code, out, errs, tail(f.b.Log(), 30))
	}
	for _, want := range []string{"mailboxes compared 2, differing 2, messages repaired 3, files restored 1", "bytes fetched"} {
		if !strings.Contains(out, want) {
			t.Errorf("sync --full output lacks %q:\n%s", want, out)
		}
	}
	waitLog(t, f.b.mailfsProc, time.Second, "restored a mailbox directory that vanished", "restored a message file that vanished")
	f.checkRestored(t)
	if n := len(journalOps(t, f.b.Store)); n != journaled {
		t.Fatalf("B journaled %d ops during the full sync (had %d, now %d)", n-journaled, journaled, n)
	}

	// Nothing differs any more: a second run repairs nothing.
	out, errs, code = runMailfs(t, "sync", "--full", "--store", f.b.Store, "--mailbox", fullSyncMailbox, "--timeout", "60s")
	if code != 0 || !strings.Contains(out, "mailboxes compared 1, differing 0, messages repaired 0") {
		t.Fatalf("second sync --full on B: exit %d: %s%s", code, out, errs)
	}
	f.checkIndexNotMissing(t)
}

// TestFullSyncAfterUncleanStop: after a SIGKILL, the start runs the full
// sync by itself once the peer answers.
func TestFullSyncAfterUncleanStop(t *testing.T) {
	t.Parallel()
	f := newFullSyncFixture(t)
	journaled := len(journalOps(t, f.b.Store))
	f.b.Kill()
	f.deleteBehindBack(t, "1700000102.M3P1.fs")
	f.restartB(t, "--full-sync-interval", "0")
	waitLog(t, f.b.mailfsProc, 30*time.Second, `msg="full sync finished" component=fullsync reason="unclean stop"`)
	f.checkRestored(t)
	if n := len(journalOps(t, f.b.Store)); n != journaled {
		t.Fatalf("B journaled %d ops during the full sync", n-journaled)
	}
	f.checkIndexNotMissing(t)
}

// TestFullSyncPeriodic: --full-sync-interval repairs without a command
// after a clean stop (no run at start then).
func TestFullSyncPeriodic(t *testing.T) {
	t.Parallel()
	f := newFullSyncFixture(t)
	f.b.Stop()
	f.deleteBehindBack(t, "1700000101.M2P1.fs")
	f.restartB(t, "--full-sync-interval", "1s")
	waitLog(t, f.b.mailfsProc, 30*time.Second, `msg="full sync finished" component=fullsync reason=periodic`)
	if strings.Contains(f.b.Log(), `reason="unclean stop"`) {
		t.Fatal("a full sync ran at start after a clean stop")
	}
	f.checkRestored(t)
	f.checkIndexNotMissing(t)
}

// TestFullSyncPeerDown: `sync --full` exits 75 naming the peer it could
// not reach; --mailbox without --full and an unknown mailbox are refused.
func TestFullSyncPeerDown(t *testing.T) {
	t.Parallel()
	nodes := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	a.Stop()
	out, errs, code := runMailfs(t, "sync", "--full", "--store", b.Store, "--timeout", "20s")
	if code != 75 || !strings.Contains(errs, a.Name) || !strings.Contains(errs, "unreachable") {
		t.Fatalf("sync --full with the peer down: exit %d (want 75 naming %s): %s%s", code, a.Name, out, errs)
	}
	if _, errs, code := runMailfs(t, "sync", "--mailbox", "x/Maildir", "--store", b.Store); code != 64 {
		t.Fatalf("sync --mailbox without --full: exit %d, want 64: %s", code, errs)
	}
	if _, errs, code := runMailfs(t, "sync", "--full", "--mailbox", "no/such/Maildir", "--store", b.Store); code != 1 ||
		!strings.Contains(errs, "no/such/Maildir") {
		t.Fatalf("sync --full of an unknown mailbox: exit %d, want 1 naming it: %s", code, errs)
	}
}
