package fs

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailfs/journal"
)

// want is the part of an op a step asserts.
type want struct {
	Kind    journal.Kind
	Path    string
	NewPath string
	Key     string
	NewKey  string
	Sub     journal.Sub
	Flags   []string
	Name    string
	From    string
}

func (w want) String() string {
	return fmt.Sprintf("%v path=%q new_path=%q key=%q new_key=%q sub=%v flags=%q name=%q from=%q",
		w.Kind, w.Path, w.NewPath, w.Key, w.NewKey, w.Sub, w.Flags, w.Name, w.From)
}

func wantOf(op journal.Op) want {
	w := want{Kind: op.Kind, Path: op.Path, NewPath: op.NewPath, Key: op.Key, NewKey: op.NewKey, Sub: op.Sub, Name: op.Name, From: op.From}
	if len(op.Flags) > 0 {
		w.Flags = op.Flags
	}
	return w
}

// step runs do, then checks that exactly the wanted ops were journaled
// since the previous step, in order.
func (tm *testMount) step(t *testing.T, name string, do func() error, wants ...want) []journal.Op {
	t.Helper()
	before := tm.Store.Seq()
	if err := do(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	got := tm.opsSince(t, before)
	var gotW []want
	for _, op := range got {
		gotW = append(gotW, wantOf(op))
	}
	if !reflect.DeepEqual(gotW, wants) {
		var b strings.Builder
		for _, w := range gotW {
			fmt.Fprintf(&b, "  got  %v\n", w)
		}
		for _, w := range wants {
			fmt.Fprintf(&b, "  want %v\n", w)
		}
		t.Fatalf("%s: journaled ops differ:\n%s", name, b.String())
	}
	for i, op := range got {
		if op.Seq != before+uint64(i)+1 || op.Origin != tm.Store.Node() || op.Time.IsZero() {
			t.Fatalf("%s: op %d has seq %d origin %s time %v", name, i, op.Seq, op.Origin.Short(), op.Time)
		}
	}
	return got
}

// deliver writes body into mb/tmp, fsyncs it, renames it into mb/new and
// fsyncs new/, the way an MDA does.
func deliver(dir, key string, body []byte, mtime time.Time) error {
	tmp := filepath.Join(dir, "tmp", key)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(body); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if !mtime.IsZero() {
		if err := os.Chtimes(tmp, mtime, mtime); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, filepath.Join(dir, "new", key)); err != nil {
		return err
	}
	d, err := os.Open(filepath.Join(dir, "new"))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func mkMaildir(dir string) error {
	for _, sub := range []string{"", "cur", "new", "tmp"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			return err
		}
	}
	return nil
}

func TestJournalMaildirOperations(t *testing.T) {
	t.Parallel()
	tm := mountTest(t)
	const user = "example.com/alice"
	const inbox = user + "/Maildir"
	const sent = inbox + "/.Sent"
	const key = "1700000000.M1P2.host,S=42"
	body := []byte(strings.Repeat("Subject: hello\r\n\r\nbody\r\n", 2))

	tm.step(t, "create user dirs and INBOX", func() error {
		if err := os.MkdirAll(tm.p(user), 0o700); err != nil {
			return err
		}
		return mkMaildir(tm.p(inbox))
	},
		want{Kind: journal.DirCreate, Path: "example.com"},
		want{Kind: journal.DirCreate, Path: user},
		want{Kind: journal.DirCreate, Path: inbox},
		want{Kind: journal.MailboxCreate, Path: inbox},
	)

	internal := time.Date(2023, 11, 14, 22, 13, 20, 123456789, time.UTC)
	ops := tm.step(t, "delivery tmp -> new", func() error { return deliver(tm.p(inbox), key, body, internal) },
		want{Kind: journal.MessageAdd, Path: inbox, Key: key, Sub: journal.SubNew})
	add := ops[0]
	if add.Content != sha256.Sum256(body) || add.Size != int64(len(body)) || add.Mtime != internal.UnixNano() {
		t.Fatalf("MessageAdd content=%s size=%d mtime=%d; want sha256 of body, %d, %d",
			add.Content, add.Size, add.Mtime, len(body), internal.UnixNano())
	}
	if fi, err := os.Stat(tm.p(inbox + "/new/" + key)); err != nil || !fi.ModTime().Equal(internal) {
		t.Fatalf("delivered mtime %v, %v; want %v (INTERNALDATE must be kept exactly)", fi.ModTime(), err, internal)
	}

	tm.step(t, "new -> cur with \\Seen", func() error {
		return os.Rename(tm.p(inbox+"/new/"+key), tm.p(inbox+"/cur/"+key+":2,S"))
	}, want{Kind: journal.MessageFlags, Path: inbox, Key: key, Sub: journal.SubCur, Flags: []string{`\Seen`}})

	tm.step(t, "flag change", func() error {
		return os.Rename(tm.p(inbox+"/cur/"+key+":2,S"), tm.p(inbox+"/cur/"+key+":2,FRS"))
	}, want{Kind: journal.MessageFlags, Path: inbox, Key: key, Sub: journal.SubCur, Flags: []string{`\Answered`, `\Flagged`, `\Seen`}})

	tm.step(t, "keyword letters via dovecot-keywords", func() error {
		// Dovecot writes dovecot-keywords through a lock file and a rename.
		lock := tm.p(inbox + "/dovecot-keywords.lock")
		if err := os.WriteFile(lock, []byte("0 $Important\n1 work\n"), 0o600); err != nil {
			return err
		}
		if err := os.Rename(lock, tm.p(inbox+"/dovecot-keywords")); err != nil {
			return err
		}
		return os.Rename(tm.p(inbox+"/cur/"+key+":2,FRS"), tm.p(inbox+"/cur/"+key+":2,FRSab"))
	}, want{Kind: journal.MessageFlags, Path: inbox, Key: key, Sub: journal.SubCur,
		Flags: []string{"$Important", `\Answered`, `\Flagged`, `\Seen`, "work"}})

	tm.step(t, "a new keyword letter before dovecot-keywords names it (Dovecot's order)", func() error {
		return os.Rename(tm.p(inbox+"/cur/"+key+":2,FRSab"), tm.p(inbox+"/cur/"+key+":2,FRSabc"))
	}, want{Kind: journal.MessageFlags, Path: inbox, Key: key, Sub: journal.SubCur,
		Flags: []string{"$Important", `\Answered`, `\Flagged`, `\Seen`, "mailfs-letter:c", "work"}})
	tm.step(t, "dovecot-keywords then names the letter: flags journaled again by name", func() error {
		lock := tm.p(inbox + "/dovecot-keywords.lock")
		if err := os.WriteFile(lock, []byte("0 $Important\n1 work\n2 urgent\n"), 0o600); err != nil {
			return err
		}
		return os.Rename(lock, tm.p(inbox+"/dovecot-keywords"))
	}, want{Kind: journal.MessageFlags, Path: inbox, Key: key, Sub: journal.SubCur,
		Flags: []string{"$Important", `\Answered`, `\Flagged`, `\Seen`, "urgent", "work"}})
	if err := os.Rename(tm.p(inbox+"/cur/"+key+":2,FRSabc"), tm.p(inbox+"/cur/"+key+":2,FRSab")); err != nil {
		t.Fatal(err)
	}

	tm.step(t, "unlink(2) of a directory is refused and changes nothing (Dovecot probes with it)", func() error {
		if err := syscall.Unlink(tm.p(inbox)); err != syscall.EISDIR {
			return fmt.Errorf("unlink of a mailbox directory: %v, want EISDIR", err)
		}
		if _, err := os.Stat(tm.p(inbox + "/cur")); err != nil {
			return fmt.Errorf("mailbox gone after refused unlink: %v", err)
		}
		return nil
	})

	tm.step(t, "Maildir++ folder create", func() error {
		if err := mkMaildir(tm.p(sent)); err != nil {
			return err
		}
		return os.WriteFile(tm.p(sent+"/maildirfolder"), nil, 0o600)
	},
		want{Kind: journal.DirCreate, Path: sent},
		want{Kind: journal.MailboxCreate, Path: sent},
		want{Kind: journal.FileWrite, Path: sent + "/maildirfolder"},
	)

	ops = tm.step(t, "hard-link copy into another mailbox", func() error {
		return os.Link(tm.p(inbox+"/cur/"+key+":2,FRSab"), tm.p(sent+"/cur/"+key+":2,S"))
	}, want{Kind: journal.MessageAdd, Path: sent, Key: key, Sub: journal.SubCur, Flags: []string{`\Seen`}})
	if ops[0].Content != add.Content {
		t.Fatalf("copy has content %s, want the original's %s (one content, two memberships)", ops[0].Content, add.Content)
	}

	const key2 = "1700000001.M3P4.host,S=7"
	tm.step(t, "second delivery", func() error { return deliver(tm.p(inbox), key2, []byte("second\n"), time.Time{}) },
		want{Kind: journal.MessageAdd, Path: inbox, Key: key2, Sub: journal.SubNew})
	ops = tm.step(t, "move across mailboxes", func() error {
		return os.Rename(tm.p(inbox+"/new/"+key2), tm.p(sent+"/cur/"+key2+":2,S"))
	}, want{Kind: journal.MessageMove, Path: inbox, NewPath: sent, Key: key2, Sub: journal.SubCur, Flags: []string{`\Seen`}})
	if ops[0].Target.IsZero() || ops[0].Target == ops[0].Mailbox {
		t.Fatalf("move: source %s target %s", ops[0].Mailbox, ops[0].Target)
	}

	tm.step(t, "expunge", func() error { return os.Remove(tm.p(inbox + "/cur/" + key + ":2,FRSab")) },
		want{Kind: journal.MessageExpunge, Path: inbox, Key: key})

	tm.step(t, "subscriptions change", func() error {
		lock := tm.p(inbox + "/subscriptions.lock")
		if err := os.WriteFile(lock, []byte("V\t2\n\nINBOX\nSent\n"), 0o600); err != nil {
			return err
		}
		if err := os.Rename(lock, tm.p(inbox+"/subscriptions")); err != nil {
			return err
		}
		if err := os.WriteFile(lock, []byte("V\t2\n\nSent\nArchive\n"), 0o600); err != nil {
			return err
		}
		return os.Rename(lock, tm.p(inbox+"/subscriptions"))
	},
		want{Kind: journal.Subscribe, Path: inbox, Name: "INBOX"},
		want{Kind: journal.Subscribe, Path: inbox, Name: "Sent"},
		want{Kind: journal.Subscribe, Path: inbox, Name: "Archive"},
		want{Kind: journal.Unsubscribe, Path: inbox, Name: "INBOX"},
	)

	const sent2 = inbox + "/.Sent Messages"
	tm.step(t, "Maildir++ folder rename", func() error { return os.Rename(tm.p(sent), tm.p(sent2)) },
		want{Kind: journal.MailboxRename, Path: sent, NewPath: sent2})

	tm.step(t, "nothing in tmp/ or the caches is journaled", func() error {
		for _, f := range []string{"dovecot.index", "dovecot.index.log", "dovecot.index.cache", "dovecot-uidlist",
			"dovecot-uidlist.lock", "dovecot-uidvalidity", "dovecot-uidvalidity.65f0a1b2", "dovecot.list.index.log",
			".dovecot-sync.lock", "tmp/1700000002.M5P6.host"} {
			p := tm.p(inbox + "/" + f)
			if err := os.WriteFile(p, []byte("cache"), 0o600); err != nil {
				return err
			}
			if err := os.Rename(p, p+".old.lock"); err != nil {
				return err
			}
			if err := os.Link(p+".old.lock", p); err != nil {
				return err
			}
			if err := os.Remove(p + ".old.lock"); err != nil {
				return err
			}
			if err := os.Remove(p); err != nil {
				return err
			}
		}
		return os.Mkdir(tm.p(inbox+"/tmp/scratchdir"), 0o700)
	})

	tm.step(t, "Maildir++ folder delete the way Dovecot does it", func() error {
		// Dovecot expunges the messages, renames the folder into its trash
		// name and removes that recursively.
		if err := os.Remove(tm.p(sent2 + "/cur/" + key + ":2,S")); err != nil {
			return err
		}
		if err := os.Remove(tm.p(sent2 + "/cur/" + key2 + ":2,S")); err != nil {
			return err
		}
		trash := tm.p(inbox + "/.DOVECOT-TRASHED")
		if err := os.Rename(tm.p(sent2), trash); err != nil {
			return err
		}
		return os.RemoveAll(trash)
	},
		want{Kind: journal.MessageExpunge, Path: sent2, Key: key},
		want{Kind: journal.MessageExpunge, Path: sent2, Key: key2},
		want{Kind: journal.MailboxDelete, Path: sent2},
		want{Kind: journal.DirDelete, Path: sent2},
	)

	tm.step(t, "folder delete by rmdir", func() error {
		const f = inbox + "/.Trash"
		if err := mkMaildir(tm.p(f)); err != nil {
			return err
		}
		for _, sub := range []string{"cur", "new", "tmp", ""} {
			if err := os.Remove(tm.p(f + "/" + sub)); err != nil {
				return err
			}
		}
		return nil
	},
		want{Kind: journal.DirCreate, Path: inbox + "/.Trash"},
		want{Kind: journal.MailboxCreate, Path: inbox + "/.Trash"},
		want{Kind: journal.MailboxDelete, Path: inbox + "/.Trash"},
		want{Kind: journal.DirDelete, Path: inbox + "/.Trash"},
	)

	mailboxes, messages := tm.Store.Counts()
	if mailboxes != 1 || messages != 0 {
		t.Fatalf("index counts %d mailboxes, %d messages; want 1, 0", mailboxes, messages)
	}
}
