package tests

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// replIdleBudget is how soon an IMAP IDLE on one node must hear of a
// message delivered on the other (issue acceptance: within 2 s).
const replIdleBudget = 2 * time.Second

// TestDovecotTwoNodes runs real Dovecot (IMAP and LMTP) on each of two
// paired, replicating mailfs nodes: a message delivered by LMTP on A is
// announced to an IMAP IDLE on B within 2 s and fetched there byte for
// byte; flags stored by IMAP on B are seen by IMAP on A; neither Dovecot
// logs an error or "UIDVALIDITY changed".
func TestDovecotTwoNodes(t *testing.T) {
	t.Parallel()
	// Every wait below is bounded by its own timeout; this bounds them all
	// by the test binary's deadline too, keeping room for the cleanups.
	limit := func(d time.Duration) time.Duration {
		if dl, ok := t.Deadline(); ok {
			if left := time.Until(dl) - 30*time.Second; left < d {
				if left < time.Second {
					t.Fatalf("test deadline too close (%v left)", time.Until(dl))
				}
				return left
			}
		}
		return d
	}

	nodes := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	// Dovecot's periodic check of an IDLEing mailbox is set to its default
	// (30 s) explicitly: an IDLE that answers within 2 s was woken by
	// inotify, i.e. by the change mailfs B made through its mount.
	opts := dovecotOptions{AllowLogErrors: true, ExtraConfig: "mailbox_idle_check_interval = 30 secs\n"}
	// Cleanups run last-in first-out: both Dovecots stop before the mounts.
	da := startDovecotOpts(t, a.Mnt, opts)
	db := startDovecotOpts(t, b.Mnt, opts)
	logsChecked := false
	checkLogs := func() {
		if logsChecked {
			return
		}
		logsChecked = true
		for _, s := range []struct {
			name string
			d    *dovecotServer
		}{{a.Name, da}, {b.Name, db}} {
			if err := s.d.Stop(); err != nil {
				t.Errorf("dovecot on %s: stop: %v", s.name, err)
			}
			if errs := s.d.LogErrors(); len(errs) > 0 {
				t.Errorf("dovecot on %s logged errors (%s):\n%s", s.name, s.d.LogPath(), strings.Join(errs, "\n"))
			}
		}
	}
	t.Cleanup(checkLogs) // when the test stops early; runs before the harness stops Dovecot

	const user = "alice@example.com"
	// diag describes both nodes for a failure message.
	diag := func() string {
		var d strings.Builder
		for _, s := range []struct {
			n *node
			d *dovecotServer
		}{{a, da}, {b, db}} {
			md := s.d.Maildir(user)
			fmt.Fprintf(&d, "=== %s: Maildir %s\n", s.n.Name, md)
			for _, sub := range []string{".", "new", "cur"} {
				fmt.Fprintf(&d, "%s: %q\n", sub, replListDir(filepath.Join(md, sub)))
			}
			kw, _ := os.ReadFile(filepath.Join(md, "dovecot-keywords"))
			fmt.Fprintf(&d, "dovecot-keywords: %q\n%s--- mailfs %s ---\n%s\n", kw, s.d.LogTail(25), s.n.Name, tail(s.n.Log(), 25))
			out, errs, _ := runMailfs(t, "journal", "--store", s.n.Store)
			fmt.Fprintf(&d, "--- journal of %s (last ops) ---\n%s%s\n", s.n.Name, tail(out, 12), errs)
		}
		return d.String()
	}
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v\n%s", what, err, diag())
		}
	}

	// The user's Maildir comes into being on A with a first delivery, and
	// reaches B (owned like its parent: the mail user) through replication.
	msg1 := dovecotTestMessage("two nodes first", "Delivered on A before anyone looks.\r\n")
	deliverLMTP(t, da.LMTPAddr(), user, msg1)
	syncAll(t, a, b)
	mdA, mdB := da.Maildir(user), db.Maildir(user)
	for _, sub := range []string{"", "cur", "new", "tmp"} {
		fi, err := os.Stat(filepath.Join(mdB, sub))
		must("Maildir on B", err)
		if uid, gid := replOwner(fi); uid != db.MailUID() || gid != db.MailGID() || !fi.IsDir() {
			t.Fatalf("%s on B: owner %d:%d dir %v, want the mail user %d:%d", filepath.Join(mdB, sub), uid, gid,
				fi.IsDir(), db.MailUID(), db.MailGID())
		}
	}

	ca := dialIMAP(t, da.IMAPAddr(), user, dovecotPassword)
	ca.Timeout = limit(imapCmdTimeout)
	miA, err := ca.Select("INBOX")
	must("SELECT INBOX on A", err)
	cb := dialIMAP(t, db.IMAPAddr(), user, dovecotPassword)
	cb.Timeout = limit(imapCmdTimeout)
	miB, err := cb.Select("INBOX")
	must("SELECT INBOX on B", err)
	if miA.Exists != 1 || miB.Exists != 1 {
		t.Fatalf("after the first delivery INBOX holds %d messages on A and %d on B, want 1", miA.Exists, miB.Exists)
	}
	if miA.UIDValidity == 0 || miB.UIDValidity == 0 {
		t.Fatalf("UIDVALIDITY %d on A, %d on B", miA.UIDValidity, miB.UIDValidity)
	}
	// Let whatever B's SELECT changed (new/ to cur/) replicate, and drain
	// any untagged news, before B goes idle.
	syncAll(t, a, b)
	_, err = cb.Cmd("NOOP")
	must("NOOP on B", err)

	// B goes IDLE; A gets a message by LMTP.
	msg2 := dovecotTestMessage("two nodes second", strings.Repeat("Replicated to B while it idles.\r\n", 40))
	idle, err := replStartIdle(cb)
	must("IDLE on B", err)
	idleWait := limit(replIdleBudget + 10*time.Second)
	heard := make(chan replIdleResult, 1)
	go func() { heard <- idle.waitExists(idleWait) }()
	sent := time.Now()
	deliverLMTP(t, da.LMTPAddr(), user, msg2)
	delivered := time.Now()
	res := <-heard
	if res.err != nil {
		must("IDLE on B", res.err)
	}
	if !res.got {
		t.Fatalf("IMAP IDLE on B heard nothing within %v of the LMTP delivery on A (untagged: %q)\n%s",
			idleWait, res.untagged, diag())
	}
	latency := res.at.Sub(sent)
	t.Logf("IDLE on B heard of the delivery on A %v after LMTP DATA began (%v after LMTP acknowledged it; LMTP took %v): %q",
		latency.Round(time.Millisecond), res.at.Sub(delivered).Round(time.Millisecond),
		delivered.Sub(sent).Round(time.Millisecond), res.untagged)
	if latency > replIdleBudget {
		t.Errorf("IDLE on B heard of the delivery after %v, want <= %v", latency, replIdleBudget)
	}
	more, err := idle.done()
	must("IDLE DONE on B", err)
	if n := replExistsCount(append(res.untagged, more...)); n != 2 {
		t.Errorf("IDLE on B reported EXISTS %d, want 2 (untagged: %q)", n, append(res.untagged, more...))
	}

	// B fetches the message; it is byte for byte what A has.
	wantID := "<two.nodes.second@example.net>"
	fb, err := cb.Fetch("1:*", "FLAGS RFC822.SIZE BODY.PEEK[]")
	must("FETCH on B", err)
	_, err = ca.Cmd("NOOP")
	must("NOOP on A", err)
	fa, err := ca.Fetch("1:*", "FLAGS RFC822.SIZE BODY.PEEK[]")
	must("FETCH on A", err)
	if len(fa) != 2 || len(fb) != 2 {
		t.Fatalf("INBOX holds %d messages on A and %d on B, want 2", len(fa), len(fb))
	}
	mA, okA := replMessageWithID(fa, wantID)
	mB, okB := replMessageWithID(fb, wantID)
	if !okA || !okB {
		t.Fatalf("message %s: on A %v, on B %v", wantID, okA, okB)
	}
	if !bytes.Equal(mA.Body, mB.Body) || mA.Size != mB.Size {
		t.Fatalf("BODY[] differs: A has %d bytes (RFC822.SIZE %d), B has %d (RFC822.SIZE %d)\nA:\n%s\nB:\n%s",
			len(mA.Body), mA.Size, len(mB.Body), mB.Size, mA.Body, mB.Body)
	}
	if !bytes.HasSuffix(mB.Body, msg2) {
		t.Fatalf("BODY[] on B does not end with the message delivered on A:\n%s", mB.Body)
	}
	fileA, fileB := replMaildirFileWith(t, mdA, wantID), replMaildirFileWith(t, mdB, wantID)
	if !bytes.Equal(fileA, fileB) {
		t.Fatalf("the message file differs: %d bytes on A, %d on B", len(fileA), len(fileB))
	}

	// Flags stored on B are seen by IMAP on A.
	flags := []string{`\Seen`, `\Flagged`, "$Important"}
	stored, err := cb.Store(uidStr(mB.UID), "+FLAGS", flags)
	must("STORE +FLAGS on B", err)
	if len(stored) != 1 || !replHasAllFlags(stored[0], flags) {
		t.Fatalf("STORE on B answered %+v, want flags %v", stored, flags)
	}
	// A's client polls (NOOP, FETCH) while the change is applied there, as
	// a client would: its Dovecot syncs the mailbox while mailfs applies.
	storedAt := time.Now()
	pollWait := limit(15 * time.Second)
	var got []fetchedMessage
	for {
		_, err = ca.Cmd("NOOP")
		must("NOOP on A", err)
		got, err = ca.Fetch(uidStr(mA.UID), "FLAGS")
		must("FETCH FLAGS on A", err)
		if len(got) == 1 && replHasAllFlags(got[0], flags) {
			break
		}
		if time.Since(storedAt) > pollWait {
			t.Fatalf("FETCH FLAGS on A %v after STORE on B: %+v, want %v\n%s", pollWait, got, flags, diag())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("IMAP on A saw the flags stored on B after %v", time.Since(storedAt).Round(time.Millisecond))
	syncAll(t, a, b)
	// A new session on A (fresh SELECT) sees them too; the first message
	// is untouched; UIDVALIDITY is stable on both.
	ca2 := dialIMAP(t, da.IMAPAddr(), user, dovecotPassword)
	ca2.Timeout = limit(imapCmdTimeout)
	mi2, err := ca2.Select("INBOX")
	must("second SELECT INBOX on A", err)
	if mi2.UIDValidity != miA.UIDValidity {
		t.Errorf("UIDVALIDITY on A changed from %d to %d", miA.UIDValidity, mi2.UIDValidity)
	}
	all, err := ca2.Fetch("1:*", "FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]")
	must("FETCH on A (new session)", err)
	for _, m := range all {
		isSecond := bytes.Contains(m.Sections["BODY[HEADER.FIELDS (MESSAGE-ID)]"], []byte(wantID))
		if isSecond && !replHasAllFlags(m, flags) {
			t.Errorf("new session on A: message %s has flags %v, want %v", wantID, m.Flags, flags)
		}
		if !isSecond && (m.HasFlag(`\Flagged`) || m.HasFlag("$Important")) {
			t.Errorf("new session on A: the first message has flags %v", m.Flags)
		}
	}
	if mi, err := cb.Select("INBOX"); err != nil {
		must("second SELECT INBOX on B", err)
	} else if mi.UIDValidity != miB.UIDValidity {
		t.Errorf("UIDVALIDITY on B changed from %d to %d", miB.UIDValidity, mi.UIDValidity)
	}

	// The trees converged; neither Dovecot nor mailfs logged an error.
	checkConverged(t, "after the Dovecot session", a, b)
	for _, c := range []*imapClient{ca, ca2, cb} {
		c.Close()
	}
	checkLogs()
	for _, n := range nodes {
		if strings.Contains(n.Log(), "level=ERROR") {
			t.Errorf("mailfs %s logged errors:\n%s", n.Name, n.Log())
		}
	}
}

// replIdle is an IDLE command in progress (the server has answered "+").
type replIdle struct {
	c   *imapClient
	tag string
	// untagged holds what the server sent before the continuation.
	untagged []string
}

type replIdleResult struct {
	got      bool      // an EXISTS arrived
	at       time.Time // when it was read
	untagged []string
	err      error
}

// startIdle sends IDLE and waits for the server's continuation, so that a
// change made afterwards is one the server must report.
func replStartIdle(c *imapClient) (*replIdle, error) {
	if c.conn == nil {
		return nil, errors.New("imap: connection closed")
	}
	in := &replIdle{c: c, tag: c.nextTag()}
	c.conn.SetDeadline(time.Now().Add(c.Timeout))
	if err := c.write(in.tag + " IDLE\r\n"); err != nil {
		return nil, err
	}
	for {
		l, err := c.readLine()
		if err != nil {
			return nil, fmt.Errorf("imap IDLE: %w", err)
		}
		switch {
		case strings.HasPrefix(l, "+"):
			return in, nil
		case strings.HasPrefix(l, in.tag+" "):
			return nil, fmt.Errorf("imap IDLE: %s", l[len(in.tag)+1:])
		case strings.HasPrefix(l, "* "):
			in.untagged = append(in.untagged, l[2:])
		}
	}
}

// waitExists reads untagged responses until an EXISTS arrives or timeout
// passes. It may run on another goroutine; nothing else may use the
// client meanwhile.
func (in *replIdle) waitExists(timeout time.Duration) replIdleResult {
	var res replIdleResult
	in.c.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		l, err := in.c.readLine()
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				res.err = fmt.Errorf("imap IDLE: %w", err)
			}
			return res
		}
		if !strings.HasPrefix(l, "* ") {
			res.err = fmt.Errorf("imap IDLE: unexpected line %q", l)
			return res
		}
		res.untagged = append(res.untagged, l[2:])
		if f := strings.Fields(l); len(f) == 3 && f[2] == "EXISTS" {
			res.got, res.at = true, time.Now()
			return res
		}
	}
}

// done ends the IDLE and returns the untagged responses sent meanwhile.
func (in *replIdle) done() ([]string, error) {
	c := in.c
	c.conn.SetDeadline(time.Now().Add(c.Timeout))
	if err := c.write("DONE\r\n"); err != nil {
		return nil, err
	}
	return c.readTagged(in.tag, "IDLE")
}

// existsCount returns the last "n EXISTS" among untagged responses (0 if none).
func replExistsCount(untagged []string) uint32 {
	var n uint32
	for _, u := range untagged {
		if f := strings.Fields(u); len(f) == 2 && f[1] == "EXISTS" {
			n = imapAtou32(f[0])
		}
	}
	return n
}

func replMessageWithID(ms []fetchedMessage, id string) (fetchedMessage, bool) {
	for _, m := range ms {
		if bytes.Contains(m.Body, []byte("Message-ID: "+id)) {
			return m, true
		}
	}
	return fetchedMessage{}, false
}

func replHasAllFlags(m fetchedMessage, flags []string) bool {
	for _, f := range flags {
		if !m.HasFlag(f) {
			return false
		}
	}
	return true
}

// maildirFileWith returns the content of the one message file in md's new/
// or cur/ that contains needle.
func replMaildirFileWith(t *testing.T, md, needle string) []byte {
	t.Helper()
	var found [][]byte
	var names []string
	for _, sub := range []string{"new", "cur"} {
		ents, err := os.ReadDir(filepath.Join(md, sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			data, err := os.ReadFile(filepath.Join(md, sub, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(data, []byte(needle)) {
				found = append(found, data)
				names = append(names, sub+"/"+e.Name())
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s: %d message files hold %q: %v", md, len(found), needle, names)
	}
	return found[0]
}

func replOwner(fi os.FileInfo) (uid, gid int) {
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}

// replListDir lists the names in dir (nil when it cannot be read).
func replListDir(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}
