package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"mailfs/index"
	"mailfs/journal"
	"mailfs/maildir"
)

// node is a loopback node whose mutations are journaled.
type node struct {
	fusefs.LoopbackNode
	m *mailFS
}

var (
	_ = (fusefs.NodeMkdirer)((*node)(nil))
	_ = (fusefs.NodeRmdirer)((*node)(nil))
	_ = (fusefs.NodeUnlinker)((*node)(nil))
	_ = (fusefs.NodeRenamer)((*node)(nil))
	_ = (fusefs.NodeLinker)((*node)(nil))
	_ = (fusefs.NodeCreater)((*node)(nil))
	_ = (fusefs.NodeOpener)((*node)(nil))
	_ = (fusefs.NodeSetattrer)((*node)(nil))
	_ = (fusefs.NodeSymlinker)((*node)(nil))
	_ = (fusefs.NodeMknoder)((*node)(nil))
	_ = (fusefs.NodeFsyncer)((*node)(nil))
	_ = (fusefs.NodeOpendirHandler)((*node)(nil))
)

// rel is the node's path relative to the tree root, slash-separated.
func (n *node) rel() string { return n.Path(nil) }

func (n *node) child(name string) string {
	if r := n.rel(); r != "" {
		return r + "/" + name
	}
	return name
}

func (m *mailFS) abs(rel string) string { return filepath.Join(m.root, filepath.FromSlash(rel)) }

func relOf(e fusefs.InodeEmbedder) string { return e.EmbeddedInode().Path(nil) }

// inMessageDir reports whether rel's parent is a mailbox's new/ or cur/.
func inMessageDir(rel string) bool {
	dir := path.Dir(rel)
	if dir == "." {
		return false
	}
	c := maildir.Classify(dir, true)
	return c.Kind == maildir.KindMailboxSubdir && c.Sub != "tmp"
}

// checkTarget refuses names that must never appear in new/ or cur/: a
// directory, a symlink or device, or a file whose name is not a Maildir
// message name.
func (m *mailFS) checkTarget(rel string, regular bool) syscall.Errno {
	if !inMessageDir(rel) {
		return 0
	}
	if !regular {
		m.log.Warn("refused: only message files belong in new/ and cur/", "path", m.abs(rel))
		return syscall.EINVAL
	}
	if _, err := maildir.ParseName(path.Base(rel)); err != nil {
		m.log.Warn("refused: not a Maildir message name", "path", m.abs(rel), "err", err)
		return syscall.EINVAL
	}
	return 0
}

// replicatedFile reports whether changes to the file at rel become ops.
func replicatedFile(rel string) bool {
	switch maildir.Classify(rel, false).Kind {
	case maildir.KindMessage, maildir.KindPlainFile, maildir.KindSubscriptions, maildir.KindKeywords:
		return true
	}
	return false
}

// needsData reports whether an event on rel carries the file's content.
func needsData(rel string) bool {
	switch maildir.Classify(rel, false).Kind {
	case maildir.KindSubscriptions, maildir.KindKeywords:
		return true
	}
	return false
}

func statInfo(p string) (index.FileInfo, bool, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return index.FileInfo{}, false, err
	}
	fi := index.FileInfo{Mode: st.Mode & 0o7777, Size: st.Size, Mtime: st.Mtim.Nano()}
	return fi, st.Mode&syscall.S_IFMT == syscall.S_IFDIR, nil
}

// hasher returns a lazy content-ID function for the file at abs.
func hasher(abs string) func() (journal.ContentID, int64, error) {
	return func() (journal.ContentID, int64, error) { return index.HashFile(abs) }
}

// errno maps a commit error to what the kernel is told.
func (m *mailFS) errno(what, p string, err error) syscall.Errno {
	var en syscall.Errno
	if errors.As(err, &en) {
		m.log.Error("journal commit failed; change undone", "op", what, "path", p, "err", err)
		return en
	}
	if errors.Is(err, index.ErrClosed) {
		return syscall.EROFS
	}
	m.log.Error("journal commit failed; change undone", "op", what, "path", p, "err", err)
	if isNoSpace(err) {
		return syscall.ENOSPC
	}
	return syscall.EIO
}

func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || (err != nil && containsNoSpace(err.Error()))
}

func containsNoSpace(s string) bool {
	for i := 0; i+len("no space left") <= len(s); i++ {
		if s[i:i+len("no space left")] == "no space left" {
			return true
		}
	}
	return false
}

// submit queues ev; it must be called with m.mu held. A change made by the
// syncer's applier (its thread, while it is applying a peer's op) is
// submitted as that op's, so it is not journaled again.
func (m *mailFS) submit(ctx context.Context, ev index.Event) (*index.Pending, error) {
	if r := m.applierOp(ctx); r != nil {
		ev.Remote = r
	}
	return m.store.Submit(ev)
}

// applierOp is the peer op the request carries out, if the request is the
// syncer's applier at work.
func (m *mailFS) applierOp(ctx context.Context) *journal.Op {
	if r := m.remote.Load(); r != nil && m.fromApplier(ctx) {
		return r
	}
	return nil
}

// byApplier reports whether the request is the syncer's applier at work.
func (m *mailFS) byApplier(ctx context.Context) bool {
	return m.applierOp(ctx) != nil
}

// fromApplier reports whether the FUSE request came from the thread
// carrying out a peer's op (Server.Apply locks it to its goroutine for
// that long): the kernel reports the calling thread's ID. A compare, where
// a look in /proc/self/task for every request cost a path walk in procfs.
func (m *mailFS) fromApplier(ctx context.Context) bool {
	c, ok := fuse.FromContext(ctx)
	if !ok || c.Pid == 0 {
		return false
	}
	tid := m.applierTid.Load()
	return tid != 0 && int64(c.Pid) == tid
}

// waitDurable waits for p's group commit and, at the same time, fsyncs
// the backing directories whose entries the syscall changed: after a power
// loss the tree then agrees with every op the journal acknowledged, and the
// two flushes overlap instead of adding up.
//
// A failed directory fsync after a successful commit is reported as
// errSyncAfterCommit: the op is journaled, so the change must not be undone.
func (m *mailFS) waitDurable(p *index.Pending, dirs ...string) error {
	errs := make(chan error, len(dirs))
	seen := map[string]bool{}
	n := 0
	for _, d := range dirs {
		if seen[d] {
			continue
		}
		seen[d] = true
		n++
		go func(d string) { errs <- syncDir(d) }(d)
	}
	_, err := p.Wait()
	for i := 0; i < n; i++ {
		if derr := <-errs; derr != nil && err == nil {
			err = fmt.Errorf("%w: %w", errSyncAfterCommit, derr)
		}
	}
	return err
}

var errSyncAfterCommit = errors.New("journaled, but the backing directory could not be synced")

// undo reports whether a failed mutation must be undone on disk.
func undo(err error) bool { return err != nil && !errors.Is(err, errSyncAfterCommit) }

func syncDir(dir string) error {
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	defer syscall.Close(fd)
	if err := syscall.Fsync(fd); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	rel := n.child(name)
	if e := n.m.checkTarget(rel, false); e != 0 {
		return nil, e
	}
	c := maildir.Classify(rel, true)
	ev := index.Event{Kind: index.EvMkdir, Path: rel, IsDir: true, File: index.FileInfo{Mode: mode & 0o7777}}
	if c.Kind == maildir.KindMailboxSubdir && c.Sub == "cur" {
		if data, err := os.ReadFile(n.m.abs(path.Join(c.Mailbox, "dovecot-uidlist"))); err == nil {
			if g, ok := maildir.UidlistGUID(data); ok {
				ev.GUID = g
			}
		}
		ev.Data, _ = os.ReadFile(n.m.abs(path.Join(c.Mailbox, "dovecot-keywords")))
	}
	journaled := c.Kind == maildir.KindPlainDir || (c.Kind == maildir.KindMailboxSubdir && c.Sub == "cur")
	if !journaled {
		return n.LoopbackNode.Mkdir(ctx, name, mode, out)
	}
	n.m.testBeforeLock("mkdir", rel, "")
	n.m.mu.Lock()
	if n.child(name) != rel {
		// A folder on the path was renamed since the lookup (a peer's
		// rename or delete, applied meanwhile): the directory would be
		// made there while the event names rel. Decide again.
		n.m.mu.Unlock()
		return n.Mkdir(ctx, name, mode, out)
	}
	ch, errno := n.LoopbackNode.Mkdir(ctx, name, mode, out)
	if errno != 0 {
		n.m.mu.Unlock()
		return nil, errno
	}
	p, err := n.m.submit(ctx, ev)
	n.m.mu.Unlock()
	if err == nil {
		err = n.m.waitDurable(p, filepath.Dir(n.m.abs(rel)))
	}
	if undo(err) {
		syscall.Rmdir(n.m.abs(rel))
	}
	if err != nil {
		return nil, n.m.errno("mkdir", n.m.abs(rel), err)
	}
	return ch, 0
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	rel := n.child(name)
	c := maildir.Classify(rel, true)
	journaled := c.Kind == maildir.KindPlainDir || (c.Kind == maildir.KindMailboxSubdir && c.Sub == "cur")
	if !journaled {
		return n.LoopbackNode.Rmdir(ctx, name)
	}
	n.m.testBeforeLock("rmdir", rel, "")
	n.m.mu.Lock()
	if n.child(name) != rel {
		n.m.mu.Unlock()
		return n.Rmdir(ctx, name) // a folder on the path moved (see Mkdir)
	}
	if errno := n.LoopbackNode.Rmdir(ctx, name); errno != 0 {
		n.m.mu.Unlock()
		return errno
	}
	p, err := n.m.submit(ctx, index.Event{Kind: index.EvRmdir, Path: rel, IsDir: true})
	n.m.mu.Unlock()
	if err == nil {
		err = n.m.waitDurable(p, filepath.Dir(n.m.abs(rel)))
	}
	if undo(err) {
		os.Mkdir(n.m.abs(rel), 0o700)
	}
	if err != nil {
		return n.m.errno("rmdir", n.m.abs(rel), err)
	}
	return 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	rel := n.child(name)
	if !replicatedFile(rel) {
		return n.LoopbackNode.Unlink(ctx, name)
	}
	abs := n.m.abs(rel)
	var st syscall.Stat_t
	if err := syscall.Lstat(abs, &st); err != nil {
		return fusefs.ToErrno(err)
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		// unlink(2) of a directory fails; Dovecot probes with it before a
		// mailbox delete. It must never reach the staging rename below.
		return syscall.EISDIR
	}
	// Stage the unlink as a rename to a name that says what it was
	// (<mailbox>/tmp/.mailfs-unlink.<sub>.<name> for a message, a sibling
	// .mailfs-unlink.<name> otherwise), so a failed commit can put the file
	// back and a crash before the commit is resolved at the next start.
	staged := filepath.Join(filepath.Dir(abs), StagedUnlinkPrefix+filepath.Base(abs))
	if c := maildir.Classify(rel, false); c.Kind == maildir.KindMessage {
		if tmp := n.m.abs(path.Join(c.Mailbox, "tmp")); isDir(tmp) {
			staged = filepath.Join(tmp, StagedUnlinkPrefix+c.Sub+"."+c.Name)
		}
	}
	if len(filepath.Base(staged)) > 255 {
		return n.m.unlinkUnstaged(ctx, rel, abs)
	}
	n.m.mu.Lock()
	if err := syscall.Rename(abs, staged); err != nil {
		n.m.mu.Unlock()
		return fusefs.ToErrno(err)
	}
	p, err := n.m.submit(ctx, index.Event{Kind: index.EvUnlink, Path: rel})
	n.m.mu.Unlock()
	if err == nil {
		// No directory fsync: an expunge that a power loss undoes on disk
		// is finished at the next start from its tombstone.
		err = n.m.waitDurable(p)
	}
	if undo(err) {
		syscall.Rename(staged, abs)
		return n.m.errno("unlink", abs, err)
	}
	if uerr := syscall.Unlink(staged); uerr != nil {
		n.m.log.Warn("unlink of staged file failed; it stays as scratch", "path", staged, "err", uerr)
	}
	if err != nil {
		return n.m.errno("unlink", abs, err)
	}
	return 0
}

// StagedUnlinkPrefix starts the name an unlinked file has while its
// expunge is being committed (index.Reconcile resolves leftovers).
const StagedUnlinkPrefix = index.StagedUnlinkPrefix

// unlinkUnstaged unlinks first and journals after, for names too long to
// stage: a failed commit is then reported but cannot be undone.
func (m *mailFS) unlinkUnstaged(ctx context.Context, rel, abs string) syscall.Errno {
	m.mu.Lock()
	if err := syscall.Unlink(abs); err != nil {
		m.mu.Unlock()
		return fusefs.ToErrno(err)
	}
	p, err := m.submit(ctx, index.Event{Kind: index.EvUnlink, Path: rel})
	m.mu.Unlock()
	if err == nil {
		err = m.waitDurable(p)
	}
	if err != nil {
		return m.errno("unlink", abs, err)
	}
	return 0
}

// sameMessage reports whether a rename from -> to is a flag change: both
// message names of the same mailbox with the same key.
func sameMessage(from, to string) bool {
	cf, ct := maildir.Classify(from, false), maildir.Classify(to, false)
	if cf.Kind != maildir.KindMessage || ct.Kind != maildir.KindMessage || cf.Mailbox != ct.Mailbox {
		return false
	}
	nf, err1 := maildir.ParseName(cf.Name)
	nt, err2 := maildir.ParseName(ct.Name)
	return err1 == nil && err2 == nil && nf.Base == nt.Base
}

// deliveryInMailbox reports whether a rename from -> to moves a file from a
// mailbox's tmp/ into its own new/ or cur/ (a Maildir delivery).
func deliveryInMailbox(from, to string) bool {
	cf, ct := maildir.Classify(from, false), maildir.Classify(to, false)
	return cf.Kind == maildir.KindScratch && ct.Kind == maildir.KindMessage && cf.Mailbox == ct.Mailbox &&
		path.Dir(from) == path.Join(cf.Mailbox, "tmp")
}

// testBeforeLock runs the test hook beforeLock, if one is set.
func (m *mailFS) testBeforeLock(op, from, to string) {
	if h := m.beforeLock.Load(); h != nil {
		(*h)(op, from, to)
	}
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// renameTries bounds how often Rename and Link look their paths up again
// when a directory on them moved before they could take mu (or, for a
// file with several names, another name's lookup changed the one its
// path is made of).
const renameTries = 4

func (n *node) Rename(ctx context.Context, name string, newParent fusefs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if flags&^uint32(unix.RENAME_NOREPLACE) != 0 {
		// RENAME_EXCHANGE would be two changes in one syscall, and no
		// Maildir writer uses it (nor RENAME_WHITEOUT).
		return syscall.EINVAL
	}
	for try := 1; ; try++ {
		errno, moved := n.rename(ctx, name, newParent, newName, flags)
		if !moved {
			return errno
		}
		if try == renameTries {
			return syscall.EAGAIN
		}
	}
}

// renamePaths is where a rename of name in n to newName in newParent takes
// the file now, relative to the store.
func (n *node) renamePaths(name string, newParent fusefs.InodeEmbedder, newName string) (from, to string) {
	from = n.child(name)
	to = relOf(newParent)
	if to != "" {
		to += "/"
	}
	return from, to + newName
}

// rename is Rename with its paths looked up once; moved says a directory on
// them moved before the rename could be made (decide again).
func (n *node) rename(ctx context.Context, name string, newParent fusefs.InodeEmbedder, newName string, flags uint32) (errno syscall.Errno, moved bool) {
	from, to := n.renamePaths(name, newParent, newName)
	absFrom, absTo := n.m.abs(from), n.m.abs(to)
	var st syscall.Stat_t
	if err := syscall.Lstat(absFrom, &st); err != nil {
		return fusefs.ToErrno(err), false
	}
	isDirFrom := st.Mode&syscall.S_IFMT == syscall.S_IFDIR
	if !isDirFrom && maildir.Classify(to, false).Kind == maildir.KindTrash {
		// Into a folder being deleted (renamed to its trash name, the
		// caller's lookup of it made before): the file would go with it,
		// a message the deleter never saw among them. The folder is gone.
		// (No Maildir writer, nor the applier, puts files into a trash
		// directory: they only unlink what is there.)
		return syscall.ENOENT, false
	}
	if e := n.m.checkTarget(to, st.Mode&syscall.S_IFMT == syscall.S_IFREG); e != 0 {
		return e, false
	}
	ev := index.Event{Kind: index.EvRename, Path: from, NewPath: to, IsDir: isDirFrom}
	if isDirFrom {
		cf, ct := maildir.Classify(from, true), maildir.Classify(to, true)
		if !cf.Kind.Replicated() && !ct.Kind.Replicated() && cf.Kind != maildir.KindPlainDir && ct.Kind != maildir.KindTrash {
			return n.LoopbackNode.Rename(ctx, name, newParent, newName, flags), false
		}
	} else {
		if !replicatedFile(from) && !replicatedFile(to) {
			return n.LoopbackNode.Rename(ctx, name, newParent, newName, flags), false
		}
		cf, ct := maildir.Classify(from, false), maildir.Classify(to, false)
		// A body arriving in new/ or cur/ (or a plain file) from elsewhere
		// is hashed before the rename, outside the lock.
		if (ct.Kind == maildir.KindMessage && cf.Kind != maildir.KindMessage) || ct.Kind == maildir.KindPlainFile {
			if st.Mode&syscall.S_IFMT == syscall.S_IFLNK {
				target, err := os.Readlink(absFrom)
				if err != nil {
					return fusefs.ToErrno(err), false
				}
				ev.File.LinkTarget = target
			} else if r := n.m.applierOp(ctx); ct.Kind == maildir.KindMessage && r != nil && !r.Content.IsZero() &&
				r.Size == st.Size && st.Mode&syscall.S_IFMT == syscall.S_IFREG {
				// The applier delivers a body the receiver verified against
				// its content ID: hashing it again costs a read of every
				// byte of a catch-up for nothing.
				ev.File.Content, ev.File.Size = r.Content, r.Size
			} else if id, size, err := index.HashFile(absFrom); err == nil {
				ev.File.Content, ev.File.Size = id, size
			} else {
				return fusefs.ToErrno(errors.Unwrap(err)), false
			}
		}
		ev.Content = hasher(absTo)
	}
	n.m.testBeforeLock("rename", from, to)
	n.m.mu.Lock()
	if f, t := n.renamePaths(name, newParent, newName); f != from || t != to {
		// A folder on either path was renamed since the lookup (a
		// folder delete's rename to its trash name, say): the rename
		// would land elsewhere than the event says.
		n.m.mu.Unlock()
		return 0, true
	}
	if isDirFrom {
		if r := n.m.applierOp(ctx); r != nil && r.Kind == journal.MailboxDelete && n.m.holdsUnseenMail(ctx, from, r) {
			// Decided under mu, where no local delivery can slip in between
			// the check and the rename: a peer's folder delete never takes
			// mail its deleter had not seen.
			n.m.mu.Unlock()
			return syscall.EBUSY, false
		}
	}
	if errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, flags); errno != 0 {
		n.m.mu.Unlock()
		return errno, false
	}
	if h := n.m.renamedOnDisk.Load(); h != nil {
		(*h)(from, to)
	}
	if !isDirFrom {
		fi, _, err := statInfo(absTo)
		if err == nil {
			ev.File.Mode, ev.File.Mtime = fi.Mode, fi.Mtime
			if ev.File.Size == 0 {
				ev.File.Size = fi.Size
			}
		}
		if needsData(to) {
			ev.Data, _ = os.ReadFile(absTo)
		}
	}
	p, err := n.m.submit(ctx, ev)
	n.m.mu.Unlock()
	if err == nil {
		var dirs []string
		if !sameMessage(from, to) && !deliveryInMailbox(from, to) {
			dirs = []string{filepath.Dir(absFrom), filepath.Dir(absTo)}
		}
		// A flag rename (same mailbox, same key) and a delivery from the
		// mailbox's own tmp/ need no directory fsync: after an unclean
		// stop, reconcile restores the journal's name or redoes the
		// delivery from tmp/. The delivering MDA fsyncs new/ itself.
		if len(dirs) == 0 && n.m.deferCommit(ctx, p) {
			return 0, false // the applier waits for it with its segment (ApplyNoWait)
		}
		err = n.m.waitDurable(p, dirs...)
	}
	if undo(err) {
		syscall.Rename(absTo, absFrom)
	}
	if err != nil {
		return n.m.errno("rename", absFrom+" -> "+absTo, err), false
	}
	if !isDirFrom && isDelivery(from, to) && !n.m.byApplier(ctx) {
		n.m.waitPeers(p)
	}
	return 0, false
}

// isDelivery reports whether a rename or link from -> to brings a message
// into new/ or cur/ from outside them (an MDA's or IMAP APPEND's delivery).
func isDelivery(from, to string) bool {
	return maildir.Classify(to, false).Kind == maildir.KindMessage && maildir.Classify(from, false).Kind != maildir.KindMessage
}

func (n *node) Link(ctx context.Context, target fusefs.InodeEmbedder, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return n.link(ctx, target, name, out, renameTries)
}

// link is Link, looking its paths up again (a folder on them moved) at
// most tries times.
func (n *node) link(ctx context.Context, target fusefs.InodeEmbedder, name string, out *fuse.EntryOut, tries int) (*fusefs.Inode, syscall.Errno) {
	if _, parent := target.EmbeddedInode().Parent(); parent == nil {
		return nil, syscall.EXDEV // an O_TMPFILE file has no path to link from
	}
	from := relOf(target)
	to := n.child(name)
	absFrom, absTo := n.m.abs(from), n.m.abs(to)
	var st syscall.Stat_t
	if err := syscall.Lstat(absFrom, &st); err != nil {
		return nil, fusefs.ToErrno(err)
	}
	typ := st.Mode & syscall.S_IFMT
	if maildir.Classify(to, false).Kind == maildir.KindTrash {
		return nil, syscall.ENOENT // into a folder being deleted (see Rename)
	}
	if e := n.m.checkTarget(to, typ == syscall.S_IFREG); e != 0 {
		return nil, e
	}
	// A second name for a symlink is journaled the way Symlink journals the
	// first (on plain-file paths only), one for a FIFO, socket or device
	// the way Mknod does: not at all. Neither is ever opened to be hashed,
	// which would read outside the tree or block on a FIFO.
	symlink := typ == syscall.S_IFLNK && maildir.Classify(to, false).Kind == maildir.KindPlainFile
	if !replicatedFile(to) || (typ != syscall.S_IFREG && !symlink) {
		return n.LoopbackNode.Link(ctx, target, name, out)
	}
	ev := index.Event{Kind: index.EvLink, Path: from, NewPath: to, Content: hasher(absTo)}
	if symlink {
		lt, err := os.Readlink(absFrom)
		if err != nil {
			return nil, fusefs.ToErrno(err)
		}
		ev.File.LinkTarget = lt
	} else if cf := maildir.Classify(from, false); cf.Kind != maildir.KindMessage {
		if id, size, err := index.HashFile(absFrom); err == nil {
			ev.File.Content, ev.File.Size = id, size
		}
	}
	n.m.testBeforeLock("link", from, to)
	n.m.mu.Lock()
	if relOf(target) != from || n.child(name) != to {
		// A folder on either path was renamed since the lookup (see
		// Rename): decide again on the paths as they are now.
		n.m.mu.Unlock()
		if tries <= 1 {
			return nil, syscall.EAGAIN
		}
		return n.link(ctx, target, name, out, tries-1)
	}
	ch, errno := n.LoopbackNode.Link(ctx, target, name, out)
	if errno != 0 {
		n.m.mu.Unlock()
		return nil, errno
	}
	if fi, _, err := statInfo(absTo); err == nil {
		ev.File.Mode, ev.File.Mtime = fi.Mode, fi.Mtime
		if ev.File.Size == 0 {
			ev.File.Size = fi.Size
		}
	}
	if needsData(to) {
		ev.Data, _ = os.ReadFile(absTo)
	}
	p, err := n.m.submit(ctx, ev)
	n.m.mu.Unlock()
	if err == nil {
		err = n.m.waitDurable(p, filepath.Dir(absTo))
	}
	if undo(err) {
		syscall.Unlink(absTo)
	}
	if err != nil {
		return nil, n.m.errno("link", absTo, err)
	}
	return ch, 0
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	rel := n.child(name)
	if e := n.m.checkTarget(rel, false); e != 0 {
		return nil, e
	}
	if maildir.Classify(rel, false).Kind != maildir.KindPlainFile {
		return n.LoopbackNode.Symlink(ctx, target, name, out)
	}
	n.m.mu.Lock()
	ch, errno := n.LoopbackNode.Symlink(ctx, target, name, out)
	if errno != 0 {
		n.m.mu.Unlock()
		return nil, errno
	}
	ev := index.Event{Kind: index.EvWrite, Path: rel, File: index.FileInfo{LinkTarget: target}}
	if fi, _, err := statInfo(n.m.abs(rel)); err == nil {
		ev.File.Mode, ev.File.Mtime, ev.File.Size = fi.Mode, fi.Mtime, fi.Size
	}
	p, err := n.m.submit(ctx, ev)
	n.m.mu.Unlock()
	if err == nil {
		_, err = p.Wait()
	}
	if err != nil {
		syscall.Unlink(n.m.abs(rel))
		return nil, n.m.errno("symlink", n.m.abs(rel), err)
	}
	return ch, 0
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	rel := n.child(name)
	if e := n.m.checkTarget(rel, mode&syscall.S_IFMT == syscall.S_IFREG); e != 0 {
		return nil, e
	}
	return n.LoopbackNode.Mknod(ctx, name, mode, rdev, out)
}

// commitWrite journals the current content of the file at rel.
func (m *mailFS) commitWrite(ctx context.Context, rel string) syscall.Errno {
	abs := m.abs(rel)
	ev := index.Event{Kind: index.EvWrite, Path: rel}
	m.mu.Lock()
	fi, _, err := statInfo(abs)
	if err != nil {
		m.mu.Unlock()
		if errors.Is(err, syscall.ENOENT) {
			return 0 // unlinked while open: the unlink was journaled
		}
		return fusefs.ToErrno(err)
	}
	ev.File = fi
	if needsData(rel) {
		ev.Data, _ = os.ReadFile(abs)
	} else if ev.File.Content, ev.File.Size, err = index.HashFile(abs); err != nil {
		m.mu.Unlock()
		return fusefs.ToErrno(errors.Unwrap(err))
	}
	p, err := m.submit(ctx, ev)
	m.mu.Unlock()
	if err == nil {
		_, err = p.Wait()
	}
	if err != nil {
		return m.errno("write", abs, err)
	}
	return 0
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	rel := n.child(name)
	if e := n.m.checkTarget(rel, true); e != 0 {
		return nil, nil, 0, e
	}
	ch, fh, fflags, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if errno != 0 || !replicatedFile(rel) {
		return ch, fh, fflags, errno
	}
	lf, ok := fh.(*fusefs.LoopbackFile)
	if !ok {
		return ch, fh, fflags, errno
	}
	return ch, &trackedFile{LoopbackFile: lf, m: n.m, node: ch}, fflags, 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	fh, fflags, errno := n.LoopbackNode.Open(ctx, flags)
	if errno != 0 || flags&syscall.O_ACCMODE == syscall.O_RDONLY || !replicatedFile(n.rel()) {
		return fh, fflags, errno
	}
	lf, ok := fh.(*fusefs.LoopbackFile)
	if !ok {
		return fh, fflags, errno
	}
	return &trackedFile{LoopbackFile: lf, m: n.m, node: n.EmbeddedInode()}, fflags, 0
}

func (n *node) Setattr(ctx context.Context, f fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if th, ok := f.(*trackedFile); ok {
		f = th.LoopbackFile // an ftruncate is journaled at the handle's flush
	}
	if errno := n.LoopbackNode.Setattr(ctx, f, in, out); errno != 0 {
		return errno
	}
	rel := n.rel()
	if !replicatedFile(rel) {
		return 0
	}
	_, sizeSet := in.GetSize()
	if sizeSet && f == nil {
		return n.m.commitWrite(ctx, rel)
	}
	// A plain file's mode is replicated with it (dovecot-shared's mode
	// decides who shares a mailbox): a chmod journals the file again.
	if _, ok := in.GetMode(); ok && maildir.Classify(rel, false).Kind == maildir.KindPlainFile {
		return n.m.commitWrite(ctx, rel)
	}
	if _, ok := in.GetMTime(); ok && maildir.Classify(rel, false).Kind == maildir.KindMessage {
		fi, _, err := statInfo(n.m.abs(rel))
		if err != nil {
			return fusefs.ToErrno(err)
		}
		n.m.mu.Lock()
		p, err := n.m.submit(ctx, index.Event{Kind: index.EvTouch, Path: rel, File: fi})
		n.m.mu.Unlock()
		if err == nil {
			_, err = p.Wait()
		}
		if err != nil {
			return n.m.errno("utimens", n.m.abs(rel), err)
		}
	}
	return 0
}

// Fsync on a node without a handle (and on directories): the journal is
// already durable when a mutation returns, so only the backing file needs
// syncing.
func (n *node) Fsync(ctx context.Context, f fusefs.FileHandle, flags uint32) syscall.Errno {
	if fs, ok := f.(fusefs.FileFsyncer); ok {
		return fs.Fsync(ctx, flags)
	}
	fd, err := syscall.Open(n.m.abs(n.rel()), syscall.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fusefs.ToErrno(err)
	}
	defer syscall.Close(fd)
	return fusefs.ToErrno(syscall.Fsync(fd))
}

// OpendirHandle lets the kernel cache directory listings across opens.
// Every change to the tree goes through this mount, and the kernel drops a
// directory's cached listing whenever it changes it, so a 50k-message cur/
// is listed from the daemon once, not at every scan. (The applier's
// deliveries behind the kernel's back, Server.DeliverBehind, are each
// followed by one through the mount into the same directory.)
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	fh, fflags, errno := n.LoopbackNode.OpendirHandle(ctx, flags)
	if errno != 0 {
		return fh, fflags, errno
	}
	return fh, fflags | fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// trackedFile is an open handle to a replicated file that may be written:
// its content is journaled when it is flushed (every close) or fsynced.
//
// Its writes may bypass mailfs: the handle keeps the loopback's
// PassthroughFd, and it must, because the kernel refuses (EIO) to open an
// inode in passthrough mode while another handle has it open in cached mode
// and vice versa, so withholding passthrough from writers made every
// read-only open of a file that was open for writing fail, and the other
// way round. mailfs therefore never learns of single writes: every flush
// and fsync hashes the file and journals it if the content changed (an
// unchanged file journals nothing).
type trackedFile struct {
	*fusefs.LoopbackFile
	m    *mailFS
	node *fusefs.Inode
}

var (
	_ = (fusefs.FileFlusher)((*trackedFile)(nil))
	_ = (fusefs.FileFsyncer)((*trackedFile)(nil))
	_ = (fusefs.FilePassthroughFder)((*trackedFile)(nil))
)

func (h *trackedFile) Flush(ctx context.Context) syscall.Errno {
	if errno := h.LoopbackFile.Flush(ctx); errno != 0 {
		return errno
	}
	return h.commit(ctx)
}

func (h *trackedFile) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if errno := h.LoopbackFile.Fsync(ctx, flags); errno != 0 {
		return errno
	}
	return h.commit(ctx)
}

func (h *trackedFile) commit(ctx context.Context) syscall.Errno {
	rel := h.node.Path(nil)
	if !replicatedFile(rel) {
		return 0 // renamed to a scratch name meanwhile
	}
	return h.m.commitWrite(ctx, rel)
}

func (m *mailFS) String() string { return fmt.Sprintf("mailfs(%s)", m.root) }

// holdsUnseenMail reports whether the mailbox at rel holds a message that
// del, a peer's mailbox delete, had not seen (its add is not in del's
// version vector), or held one that was expunged or moved away since. It must run under m.mu: an empty commit first waits for
// every change submitted before (a local delivery still committing), so
// the index holds all that is on disk and nothing can slip in after.
func (m *mailFS) holdsUnseenMail(ctx context.Context, rel string, del *journal.Op) bool {
	unseen := false
	_, err := m.store.Commit(ctx)
	if err == nil {
		err = m.store.View(func(v index.PeerView) error {
			mb, ok, err := v.MailboxAt(rel)
			if err != nil || !ok {
				return err
			}
			err = v.Messages(mb.GUID, func(msg index.Message) error {
				if msg.AddedSeq != 0 && del.Seen[msg.Added.Origin] < msg.AddedSeq {
					unseen = true
				}
				return nil
			})
			if err != nil || unseen {
				return err
			}
			// Mail added and expunged (or moved away) again since the
			// applier's decision: the deleter gets that add after its
			// delete, and keeps the folder for it, empty; so must this node.
			unseen, err = v.ExpungedUnseen(mb.GUID, del.Seen)
			return err
		})
	}
	if err != nil {
		m.log.Warn("checking a deleted mailbox for unseen mail failed; the delete waits", "path", rel, "err", err)
		return true
	}
	return unseen
}
