package tests

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDovecotOnMailfs runs real Dovecot with its mail on a mailfs mount and
// checks that every IMAP operation succeeds, Dovecot logs no error, and the
// journal holds the matching ops (keywords by name).
func TestDovecotOnMailfs(t *testing.T) {
	t.Parallel()
	store, mnt := newStoreDirs(t)
	startMailfs(t, store, mnt)
	s := startDovecot(t, mnt) // stopped before mailfs: cleanups run last-in first-out
	const user = "alice@example.com"
	c := dialIMAP(t, s.IMAPAddr(), user, dovecotPassword)
	inbox, err := filepath.Rel(mnt, s.Maildir(user))
	if err != nil {
		t.Fatal(err)
	}
	inbox = filepath.ToSlash(inbox)
	archive, archive2, trash := inbox+"/.Archive", inbox+"/.Archive2", inbox+"/.Trash"

	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v\nmailfs log:\n%s\ndovecot log:\n%s", what, err, lastLines(s.LogTail(40), 40), "")
		}
	}
	if _, err := c.Select("INBOX"); err != nil {
		must("SELECT INBOX", err)
	}
	msg1 := dovecotTestMessage("first", "Hello through mailfs.\r\n")
	msg2 := dovecotTestMessage("second", strings.Repeat("A longer body line.\r\n", 300))
	date := time.Date(2023, 4, 5, 6, 7, 8, 0, time.UTC)
	uid1, err := c.Append("INBOX", []string{`\Seen`}, msg1, date)
	must("APPEND 1", err)
	uid2, err := c.Append("INBOX", nil, msg2, time.Time{})
	must("APPEND 2", err)
	if _, err := c.Select("INBOX"); err != nil {
		must("SELECT", err)
	}
	fetched, err := c.Fetch("1:*", "FLAGS INTERNALDATE BODY.PEEK[]")
	must("FETCH", err)
	if len(fetched) != 2 || !bytes.Equal(fetched[0].Body, msg1) || !bytes.Equal(fetched[1].Body, msg2) {
		t.Fatalf("FETCH returned %d messages, bodies equal: %v", len(fetched), len(fetched) == 2 && bytes.Equal(fetched[0].Body, msg1))
	}
	if !fetched[0].InternalDate.Equal(date) {
		t.Fatalf("INTERNALDATE %v, want %v", fetched[0].InternalDate, date)
	}
	_, err = c.Store(uidStr(uid1), "+FLAGS", []string{"$Important", `\Flagged`})
	must("STORE +FLAGS keyword", err)
	must("CREATE Archive", c.Create("Archive"))
	_, err = c.Copy(uidStr(uid1), "Archive")
	must("COPY", err)
	_, err = c.Move(uidStr(uid2), "Archive")
	must("MOVE", err)
	_, err = c.Store(uidStr(uid1), "+FLAGS", []string{`\Deleted`})
	must("STORE \\Deleted", err)
	_, err = c.Expunge()
	must("EXPUNGE", err)
	must("RENAME", c.Rename("Archive", "Archive2"))
	must("SUBSCRIBE", c.Subscribe("Archive2"))
	must("CREATE Trash", c.Create("Trash"))
	must("DELETE Trash", c.Delete("Trash"))
	if _, err := c.Select("Archive2"); err != nil {
		must("SELECT Archive2", err)
	}
	fetched, err = c.Fetch("1:*", "FLAGS BODY.PEEK[]")
	must("FETCH Archive2", err)
	if len(fetched) != 2 {
		t.Fatalf("Archive2 holds %d messages, want 2", len(fetched))
	}
	if !fetched[0].HasFlag("$Important") || !bytes.Equal(fetched[1].Body, msg2) {
		t.Fatalf("Archive2 content wrong: %+v", fetched[0].Flags)
	}
	c.Close()
	if errs := s.LogErrors(); len(errs) > 0 {
		t.Fatalf("Dovecot logged errors:\n%s", strings.Join(errs, "\n"))
	}

	ops := journalOps(t, store)
	find := func(kind, path string, match func(jop) bool) jop {
		t.Helper()
		for _, op := range ops {
			if op.Kind == kind && op.Path == path && (match == nil || match(op)) {
				return op
			}
		}
		t.Fatalf("no %s op on %s in the journal:\n%s", kind, path, dumpOps(ops))
		return jop{}
	}
	find("MailboxCreate", inbox, nil)
	// Dovecot stores LF line endings: the key's W= is the CRLF size.
	add1 := find("MessageAdd", inbox, func(o jop) bool { return strings.Contains(o.Key, ",W="+itoa(uint32(len(msg1)))) })
	if len(add1.Flags) != 1 || add1.Flags[0] != `\Seen` || add1.Sub != "cur" {
		t.Fatalf("APPEND with \\Seen journaled as %+v", add1)
	}
	if add1.Mtime != date.UnixNano() {
		t.Fatalf("APPEND journaled mtime %d, want INTERNALDATE %d", add1.Mtime, date.UnixNano())
	}
	add2 := find("MessageAdd", inbox, func(o jop) bool { return strings.Contains(o.Key, ",W="+itoa(uint32(len(msg2)))) })
	find("MessageFlags", inbox, func(o jop) bool {
		return o.Key == add1.Key && hasFlag(o.Flags, "$Important") && hasFlag(o.Flags, `\Flagged`)
	})
	find("MailboxCreate", archive, nil)
	find("MessageAdd", archive, func(o jop) bool { return o.Key == add1.Key && o.Content == add1.Content })
	find("MessageAdd", archive, func(o jop) bool { return o.Key == add2.Key && o.Content == add2.Content })
	find("MessageExpunge", inbox, func(o jop) bool { return o.Key == add2.Key })
	find("MessageExpunge", inbox, func(o jop) bool { return o.Key == add1.Key })
	find("MailboxRename", archive, func(o jop) bool { return o.NewPath == archive2 })
	find("Subscribe", inbox, func(o jop) bool { return o.Name == "Archive2" })
	find("MailboxCreate", trash, nil)
	find("MailboxDelete", trash, nil)
	for i, op := range ops {
		if op.Seq != uint64(i+1) {
			t.Fatalf("journal has a gap: op %d has seq %d", i, op.Seq)
		}
		for _, p := range []string{op.Path, op.NewPath, op.From} {
			if strings.Contains(p, "dovecot") || strings.Contains(p, "/tmp/") || strings.HasSuffix(p, ".lock") {
				t.Fatalf("cache, lock or tmp/ path journaled: %+v", op)
			}
		}
	}
	// Dovecot renames a message to a new keyword letter before it writes
	// dovecot-keywords, so a letter may be journaled untranslated for a
	// moment; the last flags journaled for every message are all names.
	last := map[string][]string{}
	for _, op := range ops {
		switch op.Kind {
		case "MessageAdd", "MessageFlags":
			last[op.Path+"/"+op.Key] = op.Flags
		}
	}
	if got := last[archive+"/"+add1.Key]; !hasFlag(got, "$Important") || !hasFlag(got, `\Flagged`) {
		t.Fatalf("copy in Archive ends with flags %q, want $Important and \\Flagged", got)
	}
	for k, flags := range last {
		for _, f := range flags {
			if strings.HasPrefix(f, "mailfs-letter:") {
				t.Fatalf("%s: keyword letter left untranslated: %q", k, flags)
			}
		}
	}
	st := statusJSON(t, store)
	node := st["node"].(map[string]any)
	if got := node["messages"].(float64); got != float64(countMessages(t, mnt)) || got != 2 {
		t.Fatalf("status says %v messages, tree holds %d, want 2", got, countMessages(t, mnt))
	}
}

func uidStr(uid uint32) string { return itoa(uid) }

func itoa(u uint32) string {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + u%10)
		u /= 10
		if u == 0 {
			return string(b[i:])
		}
	}
}

func hasFlag(flags []string, f string) bool {
	for _, x := range flags {
		if x == f {
			return true
		}
	}
	return false
}

func dumpOps(ops []jop) string {
	var b strings.Builder
	for _, op := range ops {
		b.WriteString(strings.Join([]string{itoa(uint32(op.Seq)), op.Kind, op.Path, op.NewPath, op.Key, op.Name, strings.Join(op.Flags, ",")}, " "))
		b.WriteByte('\n')
	}
	return b.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// countMessages counts the files in every new/ and cur/ below root.
func countMessages(t testing.TB, root string) int {
	n := 0
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if !d.IsDir() && d.Type().IsRegular() {
			if b := filepath.Base(filepath.Dir(p)); b == "new" || b == "cur" {
				n++
			}
		}
		return nil
	})
	return n
}
