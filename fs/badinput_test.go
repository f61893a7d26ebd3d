package fs

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"mailfs/index"
	"mailfs/journal"
)

// badMaildirNames are names no Maildir writer produces in new/ or cur/.
var badMaildirNames = []string{".hidden", "x:3,abc", "a:2,S!", ":2,S", "b:2,S F"}

// setupMailbox makes a Maildir (cur, new, tmp) at rel through the mount and
// returns its GUID from the MailboxCreate op.
func setupMailbox(t *testing.T, tm *testMount, rel string) journal.GUID {
	t.Helper()
	before := tm.Store.Seq()
	if err := os.MkdirAll(filepath.Dir(tm.p(rel)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := mkMaildir(tm.p(rel)); err != nil {
		t.Fatal(err)
	}
	for _, op := range tm.opsSince(t, before) {
		if op.Kind == journal.MailboxCreate && op.Path == rel {
			return op.Mailbox
		}
	}
	t.Fatalf("no MailboxCreate journaled for %s", rel)
	return journal.GUID{}
}

// writeThrough creates rel through the mount with body, fsyncs and closes it.
func writeThrough(t *testing.T, tm *testMount, rel string, body []byte) {
	t.Helper()
	f, err := os.OpenFile(tm.p(rel), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(body); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// wantNoOps fails t if anything was journaled after seq.
func wantNoOps(t *testing.T, tm *testMount, seq uint64, what string) {
	t.Helper()
	if got := tm.opsSince(t, seq); len(got) > 0 {
		var b strings.Builder
		for i := range got {
			fmt.Fprintf(&b, "\n  %v", &got[i])
		}
		t.Errorf("%s journaled %d op(s), want none:%s", what, len(got), b.String())
	}
}

// wantFile fails t unless rel holds body, both through the mount and on
// the backing tree.
func wantFile(t *testing.T, tm *testMount, rel string, body []byte) {
	t.Helper()
	for _, p := range []string{tm.p(rel), filepath.Join(tm.Backing, filepath.FromSlash(rel))} {
		got, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
		} else if !bytes.Equal(got, body) {
			t.Errorf("%s holds %q, want %q", p, got, body)
		}
	}
}

// wantAbsent fails t if rel exists through the mount or on the backing tree.
func wantAbsent(t *testing.T, tm *testMount, rel string) {
	t.Helper()
	for _, p := range []string{tm.p(rel), filepath.Join(tm.Backing, filepath.FromSlash(rel))} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: Lstat says %v, want it absent", p, err)
		}
	}
}

func wantErrno(t *testing.T, what string, err error, want syscall.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: got error %v, want %v (%d)", what, err, want, int(want))
	}
}

// TestBadInputMalformedNames: a malformed message name renamed, linked,
// created or mknod'ed into new/ or cur/ fails with EINVAL, leaves the
// source where it was, and journals nothing. A rename of a delivered
// message to a malformed name (a broken flag change) is refused the same
// way, and so are directories and symlinks in new/ and cur/.
func TestBadInputMalformedNames(t *testing.T) {
	t.Parallel()
	tm := mountTest(t)
	const mb = "example.com/bob/Maildir"
	setupMailbox(t, tm, mb)
	delivered := []byte("Subject: delivered\r\n\r\nbody\r\n")
	writeThrough(t, tm, mb+"/tmp/1700000000.M1P1.host", delivered)
	if err := os.Rename(tm.p(mb+"/tmp/1700000000.M1P1.host"), tm.p(mb+"/cur/1700000000.M1P1.host:2,S")); err != nil {
		t.Fatal(err)
	}
	scratch := []byte("Subject: scratch\r\n\r\nbody\r\n")
	writeThrough(t, tm, mb+"/tmp/src", scratch)
	plain := []byte("a plain file\n")
	writeThrough(t, tm, mb+"/notes", plain)

	for _, sub := range []string{"new", "cur"} {
		for _, bad := range badMaildirNames {
			dst := mb + "/" + sub + "/" + bad
			t.Run(sub+"/"+bad, func(t *testing.T) {
				seq := tm.Store.Seq()

				wantErrno(t, "rename tmp/src to "+dst, os.Rename(tm.p(mb+"/tmp/src"), tm.p(dst)), syscall.EINVAL)
				wantFile(t, tm, mb+"/tmp/src", scratch)
				wantAbsent(t, tm, dst)

				wantErrno(t, "rename a plain file to "+dst, os.Rename(tm.p(mb+"/notes"), tm.p(dst)), syscall.EINVAL)
				wantFile(t, tm, mb+"/notes", plain)
				wantAbsent(t, tm, dst)

				wantErrno(t, "link tmp/src to "+dst, os.Link(tm.p(mb+"/tmp/src"), tm.p(dst)), syscall.EINVAL)
				wantFile(t, tm, mb+"/tmp/src", scratch)
				wantAbsent(t, tm, dst)

				f, err := os.OpenFile(tm.p(dst), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
				if err == nil {
					f.Close()
				}
				wantErrno(t, "create "+dst, err, syscall.EINVAL)
				wantAbsent(t, tm, dst)

				wantErrno(t, "mknod "+dst, unix.Mknod(tm.p(dst), unix.S_IFREG|0o600, 0), syscall.EINVAL)
				wantAbsent(t, tm, dst)

				if sub == "cur" {
					from := mb + "/cur/1700000000.M1P1.host:2,S"
					wantErrno(t, "rename "+from+" to "+dst, os.Rename(tm.p(from), tm.p(dst)), syscall.EINVAL)
					wantFile(t, tm, from, delivered)
					wantAbsent(t, tm, dst)
				}
				wantNoOps(t, tm, seq, "refused changes to "+dst)
			})
		}
	}

	t.Run("non-files", func(t *testing.T) {
		seq := tm.Store.Seq()
		for _, sub := range []string{"new", "cur"} {
			dst := mb + "/" + sub + "/1700000001.M2P2.host"
			wantErrno(t, "mkdir "+dst, os.Mkdir(tm.p(dst), 0o700), syscall.EINVAL)
			wantAbsent(t, tm, dst)
			wantErrno(t, "symlink "+dst, os.Symlink("../tmp/src", tm.p(dst)), syscall.EINVAL)
			wantAbsent(t, tm, dst)
			wantErrno(t, "mkfifo "+dst, unix.Mkfifo(tm.p(dst), 0o600), syscall.EINVAL)
			wantAbsent(t, tm, dst)
			if err := os.Mkdir(tm.p(mb+"/tmp/d"), 0o700); err != nil {
				t.Fatal(err)
			}
			wantErrno(t, "rename a directory to "+dst, os.Rename(tm.p(mb+"/tmp/d"), tm.p(dst)), syscall.EINVAL)
			wantAbsent(t, tm, dst)
			if err := os.Remove(tm.p(mb + "/tmp/d")); err != nil {
				t.Fatal(err)
			}
			// A second name for a symlink or a FIFO is not a message either.
			if err := os.Symlink("src", tm.p(mb+"/tmp/sym")); err != nil {
				t.Fatal(err)
			}
			wantErrno(t, "link a symlink to "+dst, os.Link(tm.p(mb+"/tmp/sym"), tm.p(dst)), syscall.EINVAL)
			wantAbsent(t, tm, dst)
			if err := unix.Mkfifo(tm.p(mb+"/tmp/fifo"), 0o600); err != nil {
				t.Fatal(err)
			}
			wantErrno(t, "link a FIFO to "+dst, os.Link(tm.p(mb+"/tmp/fifo"), tm.p(dst)), syscall.EINVAL)
			wantAbsent(t, tm, dst)
			for _, n := range []string{"sym", "fifo"} {
				if err := os.Remove(tm.p(mb + "/tmp/" + n)); err != nil {
					t.Fatal(err)
				}
			}
		}
		wantNoOps(t, tm, seq, "refused non-files in new/ and cur/")
	})
}

// TestBadInputLinkSpecialFiles: a hard link to a symlink or a FIFO on a
// plain-file path is never opened to be hashed (that read the symlink's
// target outside the tree, or blocked on the FIFO): a symlink's second name
// is journaled as a symlink, a FIFO's not at all, as for Symlink and Mknod.
func TestBadInputLinkSpecialFiles(t *testing.T) {
	t.Parallel()
	tm := mountTest(t)
	fifo := filepath.Join(tm.Backing, "fifo")
	t.Cleanup(func() {
		// Unblock a reader stuck on the FIFO, so that the unmount works
		// even when this test fails.
		if fd, err := unix.Open(fifo, unix.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			unix.Close(fd)
		}
	})
	if err := os.Symlink("/etc/hostname", tm.p("sym")); err != nil {
		t.Fatal(err)
	}
	link := func(from, to string) func() error {
		return func() error {
			return within(t, 10*time.Second, "link "+from, func() error { return os.Link(tm.p(from), tm.p(to)) })
		}
	}
	ops := tm.step(t, "link a symlink", link("sym", "sym2"), want{Kind: journal.FileWrite, Path: "sym2"})
	if op := ops[0]; op.LinkTarget != "/etc/hostname" || !op.Content.IsZero() {
		t.Errorf("the link of a symlink is journaled as %v, want a symlink to /etc/hostname", &op)
	}
	if err := unix.Mkfifo(tm.p("fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	tm.step(t, "link a FIFO", link("fifo", "fifo2"))
	if err := os.Symlink(fifo, tm.p("tofifo")); err != nil {
		t.Fatal(err)
	}
	tm.step(t, "link a symlink to a FIFO", link("tofifo", "tofifo2"), want{Kind: journal.FileWrite, Path: "tofifo2"})
}

// TestBadInputTmpRenames: tmp/ is scratch, so a file renamed out of tmp/
// into new/ is a delivery (MessageAdd with the file's size, mtime and
// content ID) and a delivered message renamed from cur/ into tmp/ has left
// the mailbox (MessageExpunge), exactly one op each.
func TestBadInputTmpRenames(t *testing.T) {
	t.Parallel()
	tm := mountTest(t)
	const mb = "example.com/carol/Maildir"
	guid := setupMailbox(t, tm, mb)
	const key = "1700000000.M3P3.host"
	body := []byte("From: a@example.com\r\nSubject: tmp renames\r\n\r\nhello\r\n")

	seq := tm.Store.Seq()
	writeThrough(t, tm, mb+"/tmp/"+key, body)
	wantNoOps(t, tm, seq, "writing tmp/"+key)
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(tm.Backing, mb, "tmp", key), &st); err != nil {
		t.Fatal(err)
	}

	add := tm.step(t, "tmp/ -> new/", func() error {
		return os.Rename(tm.p(mb+"/tmp/"+key), tm.p(mb+"/new/"+key))
	}, want{Kind: journal.MessageAdd, Path: mb, Key: key, Sub: journal.SubNew})
	if op := add[0]; op.Mailbox != guid || op.Size != int64(len(body)) || op.Content != sha256.Sum256(body) || op.Mtime != st.Mtim.Nano() {
		t.Errorf("MessageAdd is %v; want mailbox %s, size %d, content %x, mtime %d",
			&op, guid, len(body), sha256.Sum256(body), st.Mtim.Nano())
	}
	wantFile(t, tm, mb+"/new/"+key, body)

	tm.step(t, "new/ -> cur/ with \\Seen", func() error {
		return os.Rename(tm.p(mb+"/new/"+key), tm.p(mb+"/cur/"+key+":2,S"))
	}, want{Kind: journal.MessageFlags, Path: mb, Key: key, Sub: journal.SubCur, Flags: []string{`\Seen`}})

	exp := tm.step(t, "cur/ -> tmp/", func() error {
		return os.Rename(tm.p(mb+"/cur/"+key+":2,S"), tm.p(mb+"/tmp/"+key))
	}, want{Kind: journal.MessageExpunge, Path: mb, Key: key})
	if exp[0].Mailbox != guid {
		t.Errorf("MessageExpunge is for mailbox %s, want %s", exp[0].Mailbox, guid)
	}
	wantFile(t, tm, mb+"/tmp/"+key, body)
	wantAbsent(t, tm, mb+"/cur/"+key+":2,S")

	seq = tm.Store.Seq()
	if err := os.Remove(tm.p(mb + "/tmp/" + key)); err != nil {
		t.Fatal(err)
	}
	wantNoOps(t, tm, seq, "removing the expunged file from tmp/")

	// qmail-style delivery: link() into new/, then unlink() in tmp/.
	const key2 = "1700000001.M4P4.host"
	body2 := []byte("Subject: linked\r\n\r\nhi\r\n")
	writeThrough(t, tm, mb+"/tmp/"+key2, body2)
	add = tm.step(t, "link tmp/ -> new/", func() error {
		return os.Link(tm.p(mb+"/tmp/"+key2), tm.p(mb+"/new/"+key2))
	}, want{Kind: journal.MessageAdd, Path: mb, Key: key2, Sub: journal.SubNew})
	if op := add[0]; op.Size != int64(len(body2)) || op.Content != sha256.Sum256(body2) {
		t.Errorf("MessageAdd is %v; want size %d, content %x", &op, len(body2), sha256.Sum256(body2))
	}
	tm.step(t, "unlink tmp/", func() error { return os.Remove(tm.p(mb + "/tmp/" + key2)) })
	wantFile(t, tm, mb+"/new/"+key2, body2)
}

// TestBadInputScratchAndCachesNotJournaled: nothing done to tmp/ or to
// Dovecot's indexes, caches, logs and locks is journaled.
func TestBadInputScratchAndCachesNotJournaled(t *testing.T) {
	t.Parallel()
	tm := mountTest(t)
	const root = "example.com/dave/Maildir"
	setupMailbox(t, tm, root)
	setupMailbox(t, tm, root+"/.Sent")
	seq := tm.Store.Seq()

	do := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// churn creates, rewrites, truncates, chmods, touches, renames, links
	// and removes files named from names inside dir.
	churn := func(dir string, names ...string) {
		t.Helper()
		for _, n := range names {
			p := tm.p(dir + "/" + n)
			do("create "+p, os.WriteFile(p, []byte("first version of "+n), 0o600))
			f, err := os.OpenFile(p, os.O_RDWR|os.O_APPEND, 0)
			do("open "+p, err)
			_, err = f.Write([]byte(" appended"))
			do("append "+p, err)
			do("fsync "+p, f.Sync())
			do("ftruncate "+p, f.Truncate(5))
			do("close "+p, f.Close())
			do("truncate "+p, os.Truncate(p, 2))
			do("chmod "+p, os.Chmod(p, 0o640))
			when := time.Unix(1700000000, 0)
			do("utimes "+p, os.Chtimes(p, when, when))
			do("setxattr "+p, unix.Setxattr(p, "user.mailfs-test", []byte("x"), 0))
			do("rename "+p, os.Rename(p, p+".tmp"))
			do("rename back "+p, os.Rename(p+".tmp", p))
			do("link "+p, os.Link(p, p+".lock"))
			do("unlink link of "+p, os.Remove(p+".lock"))
			do("overwrite "+p, os.WriteFile(p, []byte("second version"), 0o600))
		}
		for _, n := range names {
			do("unlink "+n, os.Remove(tm.p(dir+"/"+n)))
		}
	}

	for _, mb := range []string{root, root + "/.Sent"} {
		// Scratch: every kind of change inside tmp/.
		churn(mb+"/tmp", "1700000000.M5P5.host", ".hidden", "x:3,abc", "dovecot.index")
		do("mkdir tmp/sub", os.Mkdir(tm.p(mb+"/tmp/sub"), 0o700))
		do("create in tmp/sub", os.WriteFile(tm.p(mb+"/tmp/sub/file"), []byte("x"), 0o600))
		do("rename tmp/sub", os.Rename(tm.p(mb+"/tmp/sub"), tm.p(mb+"/tmp/sub2")))
		do("symlink in tmp", os.Symlink("sub2/file", tm.p(mb+"/tmp/link")))
		do("mkfifo in tmp", unix.Mkfifo(tm.p(mb+"/tmp/fifo"), 0o600))
		do("remove tmp/sub2", os.RemoveAll(tm.p(mb+"/tmp/sub2")))
		do("remove tmp/link", os.Remove(tm.p(mb+"/tmp/link")))
		do("remove tmp/fifo", os.Remove(tm.p(mb+"/tmp/fifo")))

		// Dovecot's indexes, caches, logs and locks in the mailbox.
		churn(mb, "dovecot.index", "dovecot.index.cache", "dovecot.index.log", "dovecot.index.log.2",
			"dovecot.list.index", "dovecot.list.index.log", "dovecot.mailbox.log", "dovecot-uidlist.lock",
			"dovecot-keywords.lock", "dovecot-uidvalidity", "dovecot-uidvalidity.65a1b2c3")
		// Dovecot's own write patterns: index recreation through
		// dovecot.index.tmp, and dovecot-uidlist written under its lock.
		do("write dovecot.index.tmp", os.WriteFile(tm.p(mb+"/dovecot.index.tmp"), []byte("idx"), 0o600))
		do("rename to dovecot.index", os.Rename(tm.p(mb+"/dovecot.index.tmp"), tm.p(mb+"/dovecot.index")))
		do("write dovecot-uidlist.lock", os.WriteFile(tm.p(mb+"/dovecot-uidlist.lock"), []byte("3 V1 N1\n"), 0o600))
		do("rename to dovecot-uidlist", os.Rename(tm.p(mb+"/dovecot-uidlist.lock"), tm.p(mb+"/dovecot-uidlist")))
		do("create uidvalidity", os.WriteFile(tm.p(mb+"/dovecot-uidvalidity.65a1b2c4"), nil, 0o600))
		do("link uidvalidity", os.Link(tm.p(mb+"/dovecot-uidvalidity.65a1b2c4"), tm.p(mb+"/dovecot-uidvalidity")))
		for _, n := range []string{"dovecot.index", "dovecot-uidvalidity.65a1b2c4", "dovecot-uidvalidity"} {
			do("unlink "+n, os.Remove(tm.p(mb+"/"+n)))
		}
	}
	wantNoOps(t, tm, seq, "changes to tmp/ and to Dovecot caches and locks")

	// The mailboxes still work: a delivery is journaled as usual.
	writeThrough(t, tm, root+"/tmp/1700000002.M6P6.host", []byte("x"))
	tm.step(t, "a delivery after all that", func() error {
		return os.Rename(tm.p(root+"/tmp/1700000002.M6P6.host"), tm.p(root+"/new/1700000002.M6P6.host"))
	}, want{Kind: journal.MessageAdd, Path: root, Key: "1700000002.M6P6.host", Sub: journal.SubNew})
}

// requireRoot skips t when the process cannot mount filesystems itself.
func requireRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root to %s", why)
	}
}

// mountTmpfs mounts a tmpfs of size bytes at dir and unmounts it when t
// ends (register it before anything that lives on it).
func mountTmpfs(t *testing.T, dir string, size int64) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		t.Fatalf("mount tmpfs at %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount tmpfs %s: %v; detaching it", dir, err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
}

// delivery is one attempted delivery in TestBadInputDiskFull.
type delivery struct {
	key  string
	body []byte
	err  error  // nil if the rename into new/ succeeded
	step string // where it failed
}

// deliverStep writes body to mb/tmp/key, fsyncs, closes and renames it into
// mb/new, like an MDA; on failure it removes the tmp file like one, too.
func deliverStep(tm *testMount, mb, key string, body []byte) delivery {
	d := delivery{key: key, body: body}
	tmp := tm.p(mb + "/tmp/" + key)
	fail := func(step string, err error) delivery {
		d.step, d.err = step, err
		os.Remove(tmp)
		return d
	}
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fail("create", err)
	}
	if _, err := f.Write(body); err != nil {
		f.Close()
		return fail("write", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fail("fsync", err)
	}
	if err := f.Close(); err != nil {
		return fail("close", err)
	}
	if err := os.Rename(tmp, tm.p(mb+"/new/"+key)); err != nil {
		return fail("rename", err)
	}
	return d
}

// TestBadInputDiskFull fills the backing Maildir (an 8 MiB tmpfs; the index
// is elsewhere) through the mount until a delivery fails. The failure must
// be ENOSPC, the failed delivery must journal nothing and leave nothing in
// new/, every delivery whose rename succeeded must be journaled exactly
// once and be intact, and after expunging some messages through the mount
// delivery works again.
func TestBadInputDiskFull(t *testing.T) {
	requireRoot(t, "mount a tmpfs")
	t.Parallel()
	backing := filepath.Join(t.TempDir(), "maildir")
	mountTmpfs(t, backing, 8<<20)
	tm := mountTestWith(t, mountTestOptions{Backing: backing})
	const mb = "example.com/erin/Maildir"
	setupMailbox(t, tm, mb)
	seq := tm.Store.Seq()

	const size = 300 << 10
	var ok []delivery
	var failed *delivery
	for i := 0; i < 100 && failed == nil; i++ {
		body := make([]byte, size)
		rand.Read(body)
		d := deliverStep(tm, mb, fmt.Sprintf("1700000000.M%dP7.host", i), body)
		if d.err != nil {
			failed = &d
			break
		}
		ok = append(ok, d)
	}
	if failed == nil {
		t.Fatalf("%d deliveries of %d bytes fit in an 8 MiB tmpfs", len(ok), size)
	}
	if len(ok) == 0 {
		t.Fatalf("the first delivery failed: %s: %v", failed.step, failed.err)
	}
	t.Logf("%d deliveries fit; delivery %s failed at %s: %v", len(ok), failed.key, failed.step, failed.err)
	wantErrno(t, "the delivery on a full disk ("+failed.step+")", failed.err, syscall.ENOSPC)
	wantAbsent(t, tm, mb+"/new/"+failed.key)
	wantAbsent(t, tm, mb+"/tmp/"+failed.key)

	checkDelivered := func(ok []delivery, ops []journal.Op) {
		t.Helper()
		adds := map[string][]journal.Op{}
		for _, op := range ops {
			if op.Kind != journal.MessageAdd {
				t.Errorf("unexpected op %v", &op)
				continue
			}
			adds[op.Key] = append(adds[op.Key], op)
		}
		for _, d := range ok {
			got := adds[d.key]
			if len(got) != 1 {
				t.Errorf("%s: journaled %d times, want once", d.key, len(got))
			} else if got[0].Content != sha256.Sum256(d.body) || got[0].Size != int64(len(d.body)) || got[0].Sub != journal.SubNew {
				t.Errorf("%s: journaled as %v, want size %d content %x in new", d.key, &got[0], len(d.body), sha256.Sum256(d.body))
			}
			delete(adds, d.key)
			wantFile(t, tm, mb+"/new/"+d.key, d.body)
		}
		for key := range adds {
			t.Errorf("%s: journaled, but its delivery failed", key)
		}
	}
	checkDelivered(ok, tm.opsSince(t, seq))

	// Another delivery while full fails the same way (or fits, if the
	// failed one left enough room).
	if d := deliverStep(tm, mb, "1700000001.M0P7.host", make([]byte, 1<<20)); d.err == nil {
		ok = append(ok, d)
	} else {
		wantErrno(t, "a second delivery on a full disk ("+d.step+")", d.err, syscall.ENOSPC)
	}
	checkDelivered(ok, tm.opsSince(t, seq))

	// Free space by expunging through the mount: one op each.
	seq = tm.Store.Seq()
	if len(ok) < 4 {
		t.Fatalf("only %d deliveries fit; want at least 4 to expunge", len(ok))
	}
	freed := ok[:4]
	for _, d := range freed {
		if err := os.Remove(tm.p(mb + "/new/" + d.key)); err != nil {
			t.Fatalf("expunge %s on a full disk: %v", d.key, err)
		}
		wantAbsent(t, tm, mb+"/new/"+d.key)
	}
	exp := tm.opsSince(t, seq)
	if len(exp) != len(freed) {
		t.Errorf("expunging %d messages journaled %d ops", len(freed), len(exp))
	}
	for i, op := range exp {
		if i < len(freed) && (op.Kind != journal.MessageExpunge || op.Key != freed[i].key) {
			t.Errorf("op %d is %v, want MessageExpunge of %s", i, &op, freed[i].key)
		}
	}

	// Delivery works again, including the one that failed.
	seq = tm.Store.Seq()
	d := deliverStep(tm, mb, failed.key, failed.body)
	if d.err != nil {
		t.Fatalf("delivery after freeing space: %s: %v", d.step, d.err)
	}
	checkDelivered([]delivery{d}, tm.opsSince(t, seq))
}

// TestBadInputUnwritableStore: a store whose index cannot be written fails
// cleanly. At start, an index directory on a read-only filesystem is
// refused before anything is mounted. While mounted, when the filesystem
// under the index dies (ext4 shut down, as when its disk fails), every
// journaled change fails with EIO and is undone on disk, nothing the caller
// was refused shows up in the journal, reads and scratch writes go on, the
// mount unmounts, and the index recovered from the dead disk holds exactly
// the ops that were acknowledged.
func TestBadInputUnwritableStore(t *testing.T) {
	requireRoot(t, "mount filesystems")
	t.Parallel()

	t.Run("read-only at start", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "ro")
		mountTmpfs(t, dir, 64<<20)
		var node journal.NodeID
		rand.Read(node[:])
		// One index created while writable, one never created.
		st, err := index.Open(filepath.Join(dir, "existing"), index.Options{Node: node, Name: "test"})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(filepath.Join(dir, "fresh"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			t.Fatalf("remount read-only: %v", err)
		}
		for _, name := range []string{"existing", "fresh"} {
			st, err := index.Open(filepath.Join(dir, name), index.Options{Node: node, Name: "test"})
			if err == nil {
				st.Close()
				t.Errorf("%s index on a read-only filesystem: opened, want an error", name)
				continue
			}
			if !strings.Contains(err.Error(), "read-only file system") {
				t.Errorf("%s index on a read-only filesystem: %v, want it to say read-only", name, err)
			}
			t.Logf("%s: %v", name, err)
		}
	})

	t.Run("dies while mounted", func(t *testing.T) {
		for _, tool := range []string{"mkfs.ext4", "mount", "umount"} {
			if _, err := exec.LookPath(tool); err != nil {
				t.Skipf("needs %s to build an ext4 filesystem that can be shut down: %v", tool, err)
			}
		}
		dir := t.TempDir()
		img, idx := filepath.Join(dir, "index.img"), filepath.Join(dir, "idx")
		mountExt4Image(t, img, idx, true)

		var node journal.NodeID
		rand.Read(node[:])
		st, err := index.Open(filepath.Join(idx, "index"), index.Options{Node: node, Name: "test"})
		if err != nil {
			t.Fatal(err)
		}
		tm := &testMount{Mnt: filepath.Join(dir, "mnt"), Backing: filepath.Join(dir, "maildir"), Store: st}
		for _, d := range []string{tm.Mnt, tm.Backing} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		srv, err := Mount(tm.Mnt, Options{Store: st, Root: tm.Backing, FSName: "mailfs-test"})
		if err != nil {
			st.Close()
			t.Fatal(err)
		}
		dead := false
		t.Cleanup(func() {
			if err := srv.Unmount(); err != nil {
				t.Errorf("unmount %s: %v", tm.Mnt, err)
			}
			// badger's Close retries its memtable flush forever when the
			// disk is gone, so a dead store is abandoned, not closed.
			if !dead {
				if err := st.Close(); err != nil {
					t.Errorf("close index: %v", err)
				}
			}
		})

		const mb = "example.com/frank/Maildir"
		setupMailbox(t, tm, mb)
		bodies := map[string][]byte{}
		for i := 1; i <= 2; i++ {
			key := fmt.Sprintf("1700000000.M%dP8.host", i)
			bodies[key] = []byte("Subject: before the disk died " + key + "\r\n\r\nx\r\n")
			if d := deliverStep(tm, mb, key, bodies[key]); d.err != nil {
				t.Fatalf("delivery %s: %s: %v", key, d.step, d.err)
			}
		}
		const late = "1700000000.M3P8.host"
		lateBody := []byte("Subject: after the disk died\r\n\r\nx\r\n")
		writeThrough(t, tm, mb+"/tmp/"+late, lateBody)
		acked := tm.ops(t)
		seq := st.Seq()

		shutdownExt4(t, idx)
		dead = true

		// Every syscall below must answer promptly, not hang on the dead
		// index.
		do := func(what string, fn func() error) error { return within(t, 30*time.Second, what, fn) }
		wantErrno(t, "rename into new/", do("rename", func() error {
			return os.Rename(tm.p(mb+"/tmp/"+late), tm.p(mb+"/new/"+late))
		}), syscall.EIO)
		wantFile(t, tm, mb+"/tmp/"+late, lateBody)
		wantAbsent(t, tm, mb+"/new/"+late)

		wantErrno(t, "link into new/", do("link", func() error {
			return os.Link(tm.p(mb+"/tmp/"+late), tm.p(mb+"/new/"+late))
		}), syscall.EIO)
		wantAbsent(t, tm, mb+"/new/"+late)

		first := "1700000000.M1P8.host"
		wantErrno(t, "expunge", do("unlink", func() error { return os.Remove(tm.p(mb + "/new/" + first)) }), syscall.EIO)
		wantFile(t, tm, mb+"/new/"+first, bodies[first])

		wantErrno(t, "flag change", do("flag rename", func() error {
			return os.Rename(tm.p(mb+"/new/"+first), tm.p(mb+"/cur/"+first+":2,S"))
		}), syscall.EIO)
		wantFile(t, tm, mb+"/new/"+first, bodies[first])
		wantAbsent(t, tm, mb+"/cur/"+first+":2,S")

		wantErrno(t, "mkdir", do("mkdir", func() error { return os.Mkdir(tm.p("example.com/frank/sieve"), 0o700) }), syscall.EIO)
		wantAbsent(t, tm, "example.com/frank/sieve")

		// Reads and scratch work on: they need no journal.
		wantFile(t, tm, mb+"/new/1700000000.M2P8.host", bodies["1700000000.M2P8.host"])
		if err := do("write tmp/", func() error { return os.WriteFile(tm.p(mb+"/tmp/scratch"), []byte("x"), 0o600) }); err != nil {
			t.Errorf("write to tmp/ with a dead index: %v", err)
		}

		if got := st.Seq(); got != seq {
			t.Errorf("seq is %d after the refused changes, want %d", got, seq)
		}
		wantNoOps(t, tm, seq, "changes refused with a dead index")
		if err := st.Failed(); !errors.Is(err, index.ErrFailed) {
			t.Errorf("Failed() = %v, want ErrFailed", err)
		}

		// What survives on the dead disk is exactly what was acknowledged.
		copyImg := filepath.Join(dir, "copy.img")
		copyFile(t, img, copyImg)
		idx2 := filepath.Join(dir, "idx2")
		mountExt4Image(t, copyImg, idx2, false)
		st2, err := index.Open(filepath.Join(idx2, "index"), index.Options{Node: node, Name: "test"})
		if err != nil {
			t.Fatalf("reopen the index from a copy of the dead disk: %v", err)
		}
		defer st2.Close()
		var recovered []journal.Op
		if err := st2.Ops(1, func(op *journal.Op) error { recovered = append(recovered, *op); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(recovered) != len(acked) {
			t.Errorf("recovered %d ops, want the %d acknowledged", len(recovered), len(acked))
		}
		for i := range recovered {
			if i < len(acked) && recovered[i].String() != acked[i].String() {
				t.Errorf("recovered op %d is %v, want %v", i, &recovered[i], &acked[i])
			}
		}
	})
}

// mountExt4Image makes (if mkfs) a 64 MiB ext4 image at img and loop-mounts
// it at dir until t ends. The unmount is lazy: a store abandoned on a dead
// filesystem keeps its files open until the process exits.
func mountExt4Image(t *testing.T, img, dir string, mkfs bool) {
	t.Helper()
	if mkfs {
		f, err := os.Create(img)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(64 << 20); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4: %v\n%s", err, out)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, dir).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount an ext4 image here: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
}

// shutdownExt4 shuts the ext4 filesystem at dir down without flushing its
// log (EXT4_IOC_SHUTDOWN, EXT4_GOING_FLAGS_NOLOGFLUSH): from then on every
// write and fsync on it fails with EIO, as when its disk dies.
func shutdownExt4(t *testing.T, dir string) {
	t.Helper()
	const ext4IocShutdown = 0x8004587d // _IOR('X', 125, __u32)
	const noLogFlush = 2
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetPointerInt(fd, ext4IocShutdown, noLogFlush); err != nil {
		t.Fatalf("EXT4_IOC_SHUTDOWN %s: %v", dir, err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// within runs fn (a syscall on the mount that might hang) and returns its
// error; it fails t if fn has not returned after d.
func within(t *testing.T, d time.Duration, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("%s: still running after %v", what, d)
		return nil
	}
}
