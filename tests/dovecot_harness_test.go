package tests

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDovecotHarness checks every helper of dovecot_helpers_test.go against
// real Dovecot on a plain temporary directory (no FUSE).
func TestDovecotHarness(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	s := startDovecot(t, root)
	const user = "alice@example.com"
	c := dialIMAP(t, s.IMAPAddr(), user, dovecotPassword)
	md := s.Maildir(user)

	mi, err := c.Select("INBOX")
	if err != nil {
		t.Fatal(err)
	}
	if mi.Exists != 0 || mi.UIDValidity == 0 || mi.UIDNext != 1 || mi.ReadOnly {
		t.Fatalf("SELECT INBOX: %+v", mi)
	}
	if _, err := c.Select("NoSuchBox"); err == nil {
		t.Fatal("SELECT of a missing mailbox succeeded")
	}
	if _, err := c.Select("INBOX"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Cmd("NOOP"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Cmd("FOO"); err == nil {
		t.Fatal("unknown command did not fail")
	}

	// APPEND with flags and INTERNALDATE, then FETCH it back.
	msg1 := dovecotTestMessage("first", "Hello from the harness.\r\n.leading dot\r\n")
	date := time.Date(2023, 4, 5, 6, 7, 8, 0, time.FixedZone("", 2*3600))
	uid1, err := c.Append("INBOX", []string{`\Seen`}, msg1, date)
	if err != nil {
		t.Fatal(err)
	}
	if uid1 != 1 {
		t.Fatalf("APPENDUID = %d, want 1", uid1)
	}
	msgs, err := c.Fetch("1:*", "FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[]")
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 {
		t.Fatalf("FETCH returned %d messages", len(msgs))
	}
	m := msgs[0]
	if m.UID != uid1 || m.Seq != 1 || !m.HasFlag(`\Seen`) || m.HasFlag(`\Flagged`) {
		t.Errorf("FETCH: uid %d seq %d flags %v", m.UID, m.Seq, m.Flags)
	}
	if !bytes.Equal(m.Body, msg1) {
		t.Errorf("FETCH BODY[] = %q, want %q", m.Body, msg1)
	}
	if int(m.Size) != len(msg1) {
		t.Errorf("RFC822.SIZE = %d, want %d", m.Size, len(msg1))
	}
	if !m.InternalDate.Equal(date) {
		t.Errorf("INTERNALDATE = %v, want %v", m.InternalDate, date)
	}
	// On disk: one file in cur/ with the S flag, mtime = INTERNALDATE,
	// owned by the mail uid.
	cur := dovecotOnlyFile(t, filepath.Join(md, "cur"))
	if !strings.HasSuffix(cur, ":2,S") {
		t.Errorf("cur file %q lacks :2,S", cur)
	}
	fi, err := os.Stat(filepath.Join(md, "cur", cur))
	if err != nil {
		t.Fatal(err)
	}
	if !fi.ModTime().Equal(date) {
		t.Errorf("mtime %v, want %v", fi.ModTime(), date)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != s.MailUID() || int(st.Gid) != s.MailGID() {
		t.Errorf("message owned by %d:%d, want %d:%d", st.Uid, st.Gid, s.MailUID(), s.MailGID())
	}

	// STORE a system flag and a keyword.
	msgs, err = c.Store("1", "+FLAGS", []string{`\Flagged`, "$Label1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || !msgs[0].HasFlag(`\Flagged`) || !msgs[0].HasFlag("$Label1") || !msgs[0].HasFlag(`\Seen`) {
		t.Errorf("STORE +FLAGS returned %+v", msgs)
	}
	if cur = dovecotOnlyFile(t, filepath.Join(md, "cur")); !strings.HasSuffix(cur, ":2,FSa") {
		t.Errorf("after STORE the file is %q, want suffix :2,FSa", cur)
	}
	if kw, err := os.ReadFile(filepath.Join(md, "dovecot-keywords")); err != nil || !strings.Contains(string(kw), "0 $Label1\n") {
		t.Errorf("dovecot-keywords = %q, %v", kw, err)
	}
	if msgs, err = c.Store("1", "-FLAGS.SILENT", []string{`\Flagged`}); err != nil || len(msgs) != 0 {
		t.Errorf("STORE -FLAGS.SILENT: %v, %+v", err, msgs)
	}

	// CREATE, LIST, SUBSCRIBE, LSUB, STATUS.
	for _, mb := range []string{"Archive", "Archive.2024", "Entwürfe & Co"} {
		if err := c.Create(mb); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{".Archive/cur", ".Archive.2024/new", ".Entw&APw-rfe &- Co/tmp"} {
		if _, err := os.Stat(filepath.Join(md, d)); err != nil {
			t.Errorf("after CREATE: %v", err)
		}
	}
	list, err := c.List("", "*")
	if err != nil {
		t.Fatal(err)
	}
	if got := dovecotListNames(list); got != "Archive,Archive.2024,Entwürfe & Co,INBOX" {
		t.Errorf("LIST = %s", got)
	}
	if list[0].Delim != "." {
		t.Errorf("hierarchy delimiter %q", list[0].Delim)
	}
	if err := c.Subscribe("Archive"); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe("Entwürfe & Co"); err != nil {
		t.Fatal(err)
	}
	if err := c.Unsubscribe("Entwürfe & Co"); err != nil {
		t.Fatal(err)
	}
	if list, err = c.Lsub("", "*"); err != nil || dovecotListNames(list) != "Archive" {
		t.Errorf("LSUB = %s, %v", dovecotListNames(list), err)
	}
	if subs, err := os.ReadFile(filepath.Join(md, "subscriptions")); err != nil || !strings.Contains(string(subs), "Archive\n") {
		t.Errorf("subscriptions = %q, %v", subs, err)
	}

	// COPY (hard link), MOVE, STATUS.
	dst, err := c.Copy("1", "Archive")
	if err != nil || len(dst) != 1 || dst[0] != 1 {
		t.Fatalf("COPY: %v %v", dst, err)
	}
	linked := dovecotOnlyFile(t, filepath.Join(md, ".Archive", "cur"))
	if fi, err := os.Stat(filepath.Join(md, ".Archive", "cur", linked)); err != nil || fi.Sys().(*syscall.Stat_t).Nlink != 2 {
		t.Errorf("copied message is not a hard link: %v %v", fi, err)
	}
	dst, err = c.Move("1", "Archive.2024")
	if err != nil || len(dst) != 1 || dst[0] != 1 {
		t.Fatalf("MOVE: %v %v", dst, err)
	}
	for mb, want := range map[string]uint32{"INBOX": 0, "Archive": 1, "Archive.2024": 1} {
		st, err := c.Status(mb)
		if err != nil {
			t.Fatal(err)
		}
		if st["MESSAGES"] != want || st["UIDVALIDITY"] == 0 {
			t.Errorf("STATUS %s = %v, want %d messages", mb, st, want)
		}
	}

	// EXPUNGE and UID EXPUNGE.
	for i := 0; i < 3; i++ {
		if _, err := c.Append("INBOX", nil, dovecotTestMessage("expunge me", "x\r\n"), time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Store("2:4", "+FLAGS.SILENT", []string{`\Deleted`}); err != nil {
		t.Fatal(err)
	}
	if seqs, err := c.ExpungeUIDs("3"); err != nil || len(seqs) != 1 || seqs[0] != 2 {
		t.Errorf("UID EXPUNGE 3: %v %v", seqs, err)
	}
	if seqs, err := c.Expunge(); err != nil || len(seqs) != 2 {
		t.Errorf("EXPUNGE: %v %v", seqs, err)
	}
	if msgs, err = c.Fetch("1:*", "FLAGS"); err != nil || len(msgs) != 0 {
		t.Errorf("INBOX after EXPUNGE: %+v %v", msgs, err)
	}

	// RENAME (children follow) and DELETE.
	if err := c.Rename("Archive", "Old"); err != nil {
		t.Fatal(err)
	}
	if list, err = c.List("", "*"); err != nil || dovecotListNames(list) != "Entwürfe & Co,INBOX,Old,Old.2024" {
		t.Errorf("LIST after RENAME = %s, %v", dovecotListNames(list), err)
	}
	if err := c.Delete("Old.2024"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete("Old.2024"); err == nil {
		t.Error("second DELETE succeeded")
	}
	if _, err := os.Stat(filepath.Join(md, ".Old.2024")); !os.IsNotExist(err) {
		t.Errorf("deleted mailbox dir: %v", err)
	}

	// IDLE wakes up on an LMTP delivery; the delivered message is fetchable.
	if _, err := c.Select("INBOX"); err != nil {
		t.Fatal(err)
	}
	if got, _, err := c.Idle(200 * time.Millisecond); err != nil || got {
		t.Fatalf("IDLE without mail: exists=%v err=%v", got, err)
	}
	body := "Delivered over LMTP.\r\n.dot line\r\n"
	lmtpErr := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		lmtpErr <- lmtpDeliver(s.LMTPAddr(), "bob@example.net", []string{user}, dovecotTestMessage("via lmtp", body))
	}()
	start := time.Now()
	got, untagged, err := c.Idle(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-lmtpErr; err != nil {
		t.Fatal(err)
	}
	if !got {
		t.Fatalf("IDLE saw no EXISTS after %v: %q", time.Since(start), untagged)
	}
	deliverLMTP(t, s.LMTPAddr(), user, dovecotTestMessage("second", "two\r\n"))
	if _, err := c.Cmd("NOOP"); err != nil { // let the session see the second delivery
		t.Fatal(err)
	}
	msgs, err = c.Fetch("1:*", "BODY.PEEK[] BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
	if err != nil || len(msgs) != 2 {
		t.Fatalf("FETCH after delivery: %d messages, %v", len(msgs), err)
	}
	if !bytes.Contains(msgs[0].Body, []byte("\r\n\r\n"+body)) {
		t.Errorf("delivered body = %q", msgs[0].Body)
	}
	if subj := msgs[0].Sections["BODY[HEADER.FIELDS (SUBJECT)]"]; string(subj) != "Subject: via lmtp\r\n\r\n" {
		t.Errorf("subject section = %q", subj)
	}
	if fs := append(dovecotListDir(t, filepath.Join(md, "new")), dovecotListDir(t, filepath.Join(md, "cur"))...); len(fs) != 2 {
		t.Errorf("INBOX files after delivery: %v", fs)
	}

	// doveadm works against this instance.
	if out, err := s.Doveadm("mailbox", "list", "-u", user); err != nil || !strings.Contains(out, "Entwürfe & Co") {
		t.Errorf("doveadm mailbox list: %q %v", out, err)
	}

	// Nothing went wrong on Dovecot's side; and the index stayed off the mail tree.
	c.Close()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if errs := s.LogErrors(); len(errs) > 0 {
		t.Errorf("log errors:\n%s", strings.Join(errs, "\n"))
	}
	_ = filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(fi.Name(), "dovecot.index") {
			t.Errorf("index file in the mail tree: %s", p)
		}
		return nil
	})
	// With INDEX= set, INBOX's index lives in "<INDEX>/.INBOX/".
	if _, err := os.Stat(filepath.Join(s.IndexRoot(), "example.com", "alice", ".INBOX", "dovecot.index.log")); err != nil {
		t.Errorf("no index under INDEX=: %v", err)
	}
}

// TestDovecotHarnessParallel runs two servers at once: no shared ports or paths.
func TestDovecotHarnessParallel(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"a", "b"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := startDovecot(t, t.TempDir())
			c := dialIMAP(t, s.IMAPAddr(), name+"@example.org", dovecotPassword)
			if _, err := c.Append("INBOX", nil, dovecotTestMessage(name, name+"\r\n"), time.Time{}); err != nil {
				t.Fatal(err)
			}
			deliverLMTP(t, s.LMTPAddr(), name+"@example.org", dovecotTestMessage(name, "lmtp\r\n"))
			st, err := c.Status("INBOX")
			if err != nil || st["MESSAGES"] != 2 {
				t.Fatalf("STATUS = %v, %v", st, err)
			}
		})
	}
}

// TestDovecotHarnessHelpers covers the pure helpers.
func TestDovecotHarnessHelpers(t *testing.T) {
	for in, want := range map[string]string{"INBOX": "INBOX", "Entwürfe & Co": "Entw&APw-rfe &- Co", "日本語": "&ZeVnLIqe-"} {
		if got := encodeMUTF7(in); got != want {
			t.Errorf("encodeMUTF7(%q) = %q, want %q", in, got, want)
		}
		if got := decodeMUTF7(want); got != in {
			t.Errorf("decodeMUTF7(%q) = %q, want %q", want, got, in)
		}
	}
	if got := imapExpandUIDSet("1:3,7,9:8"); len(got) != 6 || got[5] != 8 {
		t.Errorf("imapExpandUIDSet = %v", got)
	}
	ms, err := imapParseFetches([]string{"3 FETCH (UID 7 FLAGS (\\Seen $X) BODY[HEADER.FIELDS (FROM)] {5}\r\nab)cd INTERNALDATE \" 1-Jan-2020 00:00:00 +0000\")"})
	if err != nil || len(ms) != 1 || ms[0].UID != 7 || !ms[0].HasFlag("$x") || string(ms[0].Sections["BODY[HEADER.FIELDS (FROM)]"]) != "ab)cd" || ms[0].InternalDate.Year() != 2020 {
		t.Errorf("imapParseFetches = %+v, %v", ms, err)
	}
}

func dovecotTestMessage(subject, body string) []byte {
	return []byte("From: Test <test@example.net>\r\nTo: alice@example.com\r\nSubject: " + subject +
		"\r\nDate: Wed, 05 Apr 2023 06:07:08 +0200\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", ".") +
		"@example.net>\r\n\r\n" + body)
}

func dovecotListNames(l []listEntry) string {
	var names []string
	for _, e := range l {
		names = append(names, e.Name)
	}
	sort.Strings(names) // LIST order is not specified
	return strings.Join(names, ",")
}

func dovecotListDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func dovecotOnlyFile(t *testing.T, dir string) string {
	t.Helper()
	names := dovecotListDir(t, dir)
	if len(names) != 1 {
		t.Fatalf("%s holds %v, want one file", dir, names)
	}
	return names[0]
}
