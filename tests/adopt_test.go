package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writeMaildirTree writes a Dovecot-style tree with n messages spread over
// an INBOX and a Sent folder, each with a dovecot-uidlist carrying its GUID.
func writeMaildirTree(t testing.TB, root string, n int) map[string]string {
	t.Helper()
	guids := map[string]string{
		"example.com/alice/Maildir":       "0123456789abcdef0123456789abcdef",
		"example.com/alice/Maildir/.Sent": "fedcba9876543210fedcba9876543210",
	}
	i := 0
	for mb, guid := range guids {
		for _, sub := range []string{"cur", "new", "tmp"} {
			if err := os.MkdirAll(filepath.Join(root, mb, sub), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		uidlist := fmt.Sprintf("3 V1700000000 N1 G%s\n", guid)
		if err := os.WriteFile(filepath.Join(root, mb, "dovecot-uidlist"), []byte(uidlist), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, mb, "dovecot-keywords"), []byte("0 $Important\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		for j := 0; j < n/len(guids); j++ {
			body := fmt.Sprintf("Subject: message %d\n\n%s\n", i, strings.Repeat("x", i%5000))
			name := fmt.Sprintf("1700000000.M%dP1.host,S=%d:2,Sa", i, len(body))
			if err := os.WriteFile(filepath.Join(root, mb, "cur", name), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			i++
		}
	}
	return guids
}

// adoptionTree writes a tree to adopt under a new temp dir: as many
// messages as the environment variable says, else def.
func adoptionTree(t *testing.T, env string, def int) (n int, dir, maildir string, guids map[string]string) {
	t.Helper()
	n = def
	if v := os.Getenv(env); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 2 {
			t.Fatalf("%s=%q: want a number >= 2", env, v)
		}
	}
	dir = t.TempDir()
	maildir = filepath.Join(dir, "vmail")
	return n, dir, maildir, writeMaildirTree(t, maildir, n)
}

// TestAdoptExistingMaildir indexes a full Maildir tree in place with
// `init --maildir`: every message is journaled once, mailbox GUIDs come
// from dovecot-uidlist, keywords are translated, progress is logged.
// MAILFS_ADOPT_MESSAGES raises the size (100000 for the full check).
func TestAdoptExistingMaildir(t *testing.T) {
	t.Parallel()
	n, dir, maildir, guids := adoptionTree(t, "MAILFS_ADOPT_MESSAGES", 6000)
	store := filepath.Join(dir, "store")
	start := time.Now()
	out, errs, code := runMailfs(t, "init", "--store", store, "--maildir", maildir, "--name", "adopted")
	elapsed := time.Since(start)
	if code != 0 {
		t.Fatalf("init --maildir: exit %d\n%s%s", code, out, errs)
	}
	t.Logf("adopted %d messages in %v (%.0f messages/s)", n, elapsed, float64(n)/elapsed.Seconds())
	if !strings.Contains(errs, "Maildir tree indexed") || !strings.Contains(errs, fmt.Sprintf("files=%d", n)) {
		t.Fatalf("init did not report its indexing:\n%s", errs)
	}
	ops := journalOps(t, store)
	adds := map[string]int{}
	for _, op := range ops {
		switch op.Kind {
		case "MailboxCreate":
			if want := guids[op.Path]; op.Mailbox != want {
				t.Fatalf("mailbox %s got GUID %s, want %s from its dovecot-uidlist", op.Path, op.Mailbox, want)
			}
		case "MessageAdd":
			adds[op.Path+"/"+op.Key]++
			if len(op.Flags) != 2 || op.Flags[0] != "$Important" || op.Flags[1] != `\Seen` {
				t.Fatalf("adopted message flags %q, want [$Important \\Seen]", op.Flags)
			}
		case "DirCreate", "FileWrite":
		default:
			t.Fatalf("adoption journaled %s: %+v", op.Kind, op)
		}
	}
	if len(adds) != n {
		t.Fatalf("%d messages journaled, want %d", len(adds), n)
	}
	for k, c := range adds {
		if c != 1 {
			t.Fatalf("%s journaled %d times", k, c)
		}
	}
	// Running init again (an interrupted adoption resumed) journals nothing new.
	before := len(ops)
	if out, errs, code := runMailfs(t, "init", "--store", store, "--maildir", maildir); code != 0 {
		t.Fatalf("second init: exit %d\n%s%s", code, out, errs)
	}
	if after := len(journalOps(t, store)); after != before {
		t.Fatalf("second init journaled %d more ops", after-before)
	}
	st := statusJSON(t, store)["node"].(map[string]any)
	if st["messages"].(float64) != float64(n) || st["mailboxes"].(float64) != 2 || st["name"] != "adopted" {
		t.Fatalf("status after adoption: %v", st)
	}
}

// TestChangesWhileUnmounted: what happens to the tree while mailfs is down
// is found at the next mount; adds are journaled, vanished messages are
// marked missing and never journaled as expunges.
func TestChangesWhileUnmounted(t *testing.T) {
	t.Parallel()
	store, mnt := newStoreDirs(t)
	p := startMailfs(t, store, mnt)
	mb := filepath.Join(mnt, "example.com/bob/Maildir")
	for _, sub := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(mb, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"1.M1P1.h:2,S", "2.M2P1.h:2,", "3.M3P1.h:2,"} {
		if err := os.WriteFile(filepath.Join(mb, "tmp", name), []byte("body "+name), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(mb, "tmp", name), filepath.Join(mb, "cur", name)); err != nil {
			t.Fatal(err)
		}
	}
	// An expunge acknowledged through the mount whose file comes back
	// (the unlink lost, or restored from a backup) must not resurrect it.
	if err := os.WriteFile(filepath.Join(mb, "tmp", "5.M5P1.h"), []byte("expunged"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(mb, "tmp", "5.M5P1.h"), filepath.Join(mb, "cur", "5.M5P1.h:2,S")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(mb, "cur", "5.M5P1.h:2,S")); err != nil {
		t.Fatal(err)
	}
	p.Stop()
	seq := len(journalOps(t, store))
	backing := filepath.Join(store, "maildir", "example.com/bob/Maildir")
	// Behind mailfs's back: one delivered, one vanished, one flag change.
	if err := os.WriteFile(filepath.Join(backing, "new", "4.M4P1.h"), []byte("added offline"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(backing, "cur", "2.M2P1.h:2,")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(backing, "cur", "3.M3P1.h:2,"), filepath.Join(backing, "cur", "3.M3P1.h:2,F")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(backing, "cur", "5.M5P1.h:2,S"), []byte("expunged"), 0o600); err != nil {
		t.Fatal(err)
	}
	p = startMailfs(t, store, mnt)
	if _, err := os.Stat(filepath.Join(mb, "cur", "5.M5P1.h:2,S")); !os.IsNotExist(err) {
		t.Fatalf("an expunged message came back: %v", err)
	}
	if !strings.Contains(p.Log(), "marked missing") {
		t.Fatalf("the vanished message was not reported:\n%s", p.Log())
	}
	got := journalOps(t, store)[seq:]
	var flags, add int
	for _, op := range got {
		switch {
		case op.Kind == "MessageFlags" && op.Key == "3.M3P1.h" && len(op.Flags) == 1 && op.Flags[0] == `\Flagged`:
			flags++
		case op.Kind == "MessageAdd" && op.Key == "4.M4P1.h" && op.Sub == "new":
			add++
		default:
			t.Fatalf("unexpected op journaled at mount (a vanished file must not be an expunge): %+v", op)
		}
	}
	if flags != 1 || add != 1 {
		t.Fatalf("ops journaled at mount:\n%s", dumpOps(got))
	}
}

// TestAdoptionInterruptedAndResumed stops an adoption half-way twice — a
// SIGINT (exit 75, "run again to resume") and then a SIGKILL — and runs it
// a third time: the result is the same as one uninterrupted run, with every
// message journaled exactly once and every GUID kept. Progress says how far
// it is and when it will be done.
func TestAdoptionInterruptedAndResumed(t *testing.T) {
	t.Parallel()
	n := 30000
	dir := t.TempDir()
	maildir := filepath.Join(dir, "vmail")
	guids := writeMaildirTree(t, maildir, n)
	store := filepath.Join(dir, "store")
	args := []string{"init", "--store", store, "--maildir", maildir, "--name", "adopted"}

	stopAtProgress := func(sig syscall.Signal) (string, int) {
		t.Helper()
		cmd := exec.Command(mailfsBin, args...)
		var errs syncBuffer
		cmd.Stderr = &errs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		deadline := time.Now().Add(2 * time.Minute)
		for !strings.Contains(errs.String(), "eta=") {
			select {
			case <-done:
				t.Fatalf("init finished before it could be interrupted (tree too small for this machine?):\n%s", errs.String())
			default:
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("no progress from init within 2m:\n%s", errs.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
		cmd.Process.Signal(sig)
		select {
		case <-done:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			t.Fatalf("init did not stop within 1m of %v:\n%s", sig, errs.String())
		}
		return errs.String(), cmd.ProcessState.ExitCode()
	}

	errs, code := stopAtProgress(syscall.SIGINT)
	if code != 75 || !strings.Contains(errs, "run the same init again to resume") {
		t.Fatalf("init after SIGINT: exit %d, want 75 and a hint to resume:\n%s", code, errs)
	}
	if !strings.Contains(errs, fmt.Sprintf("total=%d", n)) || !strings.Contains(errs, "eta=") || !strings.Contains(errs, "percent=") {
		t.Fatalf("adoption progress lacks total, percent or ETA:\n%s", errs)
	}
	if errs, _ := stopAtProgress(syscall.SIGKILL); strings.Contains(errs, "Maildir tree indexed") {
		t.Fatalf("the second init finished before SIGKILL:\n%s", errs)
	}
	out, errs, code := runMailfs(t, args...)
	if code != 0 || !strings.Contains(errs, "Maildir tree indexed") {
		t.Fatalf("resumed init: exit %d\n%s%s", code, out, errs)
	}
	adds := map[string]int{}
	for _, op := range journalOps(t, store) {
		switch op.Kind {
		case "MailboxCreate":
			if want := guids[op.Path]; op.Mailbox != want {
				t.Fatalf("mailbox %s got GUID %s, want %s from its dovecot-uidlist", op.Path, op.Mailbox, want)
			}
		case "MessageAdd":
			adds[op.Path+"/"+op.Key]++
		}
	}
	if len(adds) != n {
		t.Fatalf("%d messages journaled after the resumed adoption, want %d", len(adds), n)
	}
	for k, c := range adds {
		if c != 1 {
			t.Fatalf("%s journaled %d times", k, c)
		}
	}
	st := statusJSON(t, store)["node"].(map[string]any)
	if st["messages"].(float64) != float64(n) || st["mailboxes"].(float64) != 2 {
		t.Fatalf("status after the resumed adoption: %v", st)
	}
}

// TestAdoptAndPair adopts a Maildir tree in place (every mailbox GUID kept
// from dovecot-uidlist), pairs the adopted node with an empty one, and
// waits for the first sync: both trees end equal, with the same GUIDs, and
// the catch-up reports its progress in status and the log. It logs the
// adoption and first-sync rates. MAILFS_ADOPT_PAIR_MESSAGES sets the size
// (default 3000; 50000 for the full check).
func TestAdoptAndPair(t *testing.T) {
	t.Parallel()
	n, _, maildir, guids := adoptionTree(t, "MAILFS_ADOPT_PAIR_MESSAGES", 3000)
	var raw int64
	filepath.Walk(maildir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && strings.Contains(p, "/cur/") {
			raw += fi.Size()
		}
		return nil
	})

	storeA, mntA := newStoreDirs(t)
	os.Remove(storeA) // init --maildir makes it
	addrA := freeAddr(t)
	start := time.Now()
	initNode(t, storeA, "adopted", "--maildir", maildir, "--listen", addrA)
	adoption := time.Since(start)
	a := &node{mailfsProc: startMailfs(t, storeA, mntA), Name: "adopted", Addr: addrA}
	a.ID = nodeID(t, statusJSON(t, storeA))
	got := mailboxGUIDs(t, storeA)
	for mb, g := range guids {
		if got[mb] != g {
			t.Fatalf("adopted mailbox %s has GUID %s, want %s from its dovecot-uidlist", mb, got[mb], g)
		}
	}

	storeB, mntB := newStoreDirs(t)
	addrB := freeAddr(t)
	initNode(t, storeB, "empty", "--listen", addrB)
	b := &node{mailfsProc: startMailfs(t, storeB, mntB), Name: "empty", Addr: addrB}
	b.ID = nodeID(t, statusJSON(t, storeB))
	start = time.Now()
	pairNodes(t, a, b)

	// The first sync is a catch-up: status shows its progress while it runs.
	sawCatchUp := false
	for time.Since(start) < 30*time.Minute {
		p := peerState(t, a, b.ID)
		if c, ok := p["catch_up"].(map[string]any); ok && c != nil {
			if c["total_bytes"].(float64) == 0 {
				time.Sleep(20 * time.Millisecond)
				continue // still being summed, off the push path
			}
			sawCatchUp = c["total_ops"].(float64) >= float64(n) && c["total_bytes"].(float64) >= float64(raw)
			if !sawCatchUp {
				t.Fatalf("catch-up progress %v: want at least %d ops and %d bytes in total", c, n, raw)
			}
			break
		}
		if p != nil && p["lag_ops"] == float64(0) && p["acked_seq"].(float64) > 0 {
			break // done before status was asked
		}
		time.Sleep(20 * time.Millisecond)
	}
	// mailfs sync in rounds: one call runs at most runMailfs's 2 minutes.
	for {
		out, errs, code := runMailfs(t, "sync", "--store", a.Store, "--timeout", "90s")
		if code == 0 {
			break
		}
		if code != 75 || time.Since(start) > 30*time.Minute {
			t.Fatalf("mailfs sync after pairing: exit %d: %s%s\n%s", code, out, errs, tail(a.Log(), 20))
		}
	}
	first := time.Since(start)
	t.Logf("adopted %d messages (%.1f MiB) in %v: %.0f messages/s; first sync to an empty peer in %v: %.0f messages/s, %.1f MiB/s",
		n, float64(raw)/(1<<20), adoption.Round(time.Millisecond), float64(n)/adoption.Seconds(), first.Round(time.Millisecond),
		float64(n)/first.Seconds(), float64(raw)/(1<<20)/first.Seconds())
	if !sawCatchUp && !strings.Contains(a.Log(), "catching up a peer that is far behind") {
		t.Fatalf("the first sync of %d messages was not reported as a catch-up:\n%s", n, tail(a.Log(), 20))
	}
	if !strings.Contains(a.Log(), "peer caught up") {
		t.Fatalf("the end of the first sync was not logged:\n%s", tail(a.Log(), 20))
	}
	checkConverged(t, "after the first sync", a, b)
	if gb := mailboxGUIDs(t, storeB); gb["example.com/alice/Maildir"] != guids["example.com/alice/Maildir"] ||
		gb["example.com/alice/Maildir/.Sent"] != guids["example.com/alice/Maildir/.Sent"] {
		t.Fatalf("the empty node got GUIDs %v, want %v", gb, guids)
	}
}
