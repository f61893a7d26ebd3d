package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"mailfs/index"
	"mailfs/journal"
)

// Options configure a mount.
type Options struct {
	// Store is the open index every change is committed to.
	Store *index.Store
	// Root is the backing Maildir tree.
	Root string
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// CacheTimeout is the kernel's entry and attribute cache lifetime.
	// mailfs is the only writer of its tree, so long lifetimes are safe;
	// zero means the default of 60 s.
	CacheTimeout time.Duration
	// Debug logs every FUSE request.
	Debug bool
	// FSName is shown in /proc/mounts (default "mailfs").
	FSName string
	// ObserveRequest, when set, is told how long each FUSE request took,
	// by operation ("rename", "lookup", ...).
	ObserveRequest func(op string, d time.Duration)
}

// Server is a running mount.
type Server struct {
	*fuse.Server
	Passthrough bool
	Direct      bool
	mountpoint  string
	m           *mailFS
	unmountMu   sync.Mutex
	unmounted   bool
}

// Apply runs fn, which carries out the peer's op through the mountpoint
// with ordinary syscalls, so that the kernel's caches and inotify (Dovecot's
// IDLE) see an ordinary change. The changes fn makes from this process are
// recorded in the index as op's, not journaled as new local ops (design §6
// rule 11); changes other processes make meanwhile are journaled as usual.
// fn must not hold a lock a FUSE handler needs.
func (s *Server) Apply(op *journal.Op, fn func() error) error {
	s.m.applyMu.Lock()
	defer s.m.applyMu.Unlock()
	defer s.m.asApplier(op)()
	return fn()
}

// asApplier marks the calling goroutine's thread as the applier's while it
// carries out op (fn of Apply runs on it: every syscall fn makes comes from
// that thread), and returns the undo.
func (m *mailFS) asApplier(op *journal.Op) func() {
	runtime.LockOSThread()
	m.applierTid.Store(int64(syscall.Gettid()))
	m.remote.Store(op)
	return func() {
		m.remote.Store(nil)
		m.applierTid.Store(0)
		runtime.UnlockOSThread()
	}
}

// ApplyNoWait is Apply for the applier's bulk path (a peer's delivery or
// flag change): a rename fn makes through the mount that needs no
// directory fsync (a delivery from the mailbox's own tmp/, a rename that
// changes only the flags) is submitted to the index as op's but not waited
// for; its pending commit is returned instead, and the caller waits for it
// (and for many others, in one group commit) before it acknowledges the
// segment. Until then the rename is on disk but not in the index: the
// caller has recorded its intent durably beforehand, so that a reconcile
// after a crash in between does not take the file for a local add (see
// index.Store.Reconcile). Every other change fn makes is waited for, as in
// Apply.
func (s *Server) ApplyNoWait(op *journal.Op, fn func() error) ([]*index.Pending, error) {
	s.m.applyMu.Lock()
	defer s.m.applyMu.Unlock()
	c := &collector{}
	s.m.collect.Store(c)
	defer s.m.collect.Store(nil)
	undo := s.m.asApplier(op)
	err := fn()
	undo()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending, err
}

// DeliverBehind is the applier's rename of a peer's message (op) from
// fromRel, in a mailbox's tmp/, into toRel in its new/ or cur/, made in the
// backing tree and recorded as the Rename handler records it, without the
// three FUSE round trips (LOOKUP of both names, RENAME) a rename through
// the mount costs. Its commit is submitted and returned, not waited for
// (as ApplyNoWait's). It is only right for a name the kernel cannot know
// (a new message: the mount keeps no negative entries, and the target must
// not exist), and the kernel does not see it: its cached listing and
// attributes of the directory stay as they were and nobody's inotify hears
// of it, until the next change made through the mount in that directory,
// which the caller makes before it lets go of the mailbox's dotlock.
// ok false (and no error): the delivery is not one it makes (the target
// name exists, the file is not the verified body), and nothing was done.
func (s *Server) DeliverBehind(op *journal.Op, fromRel, toRel string) (p *index.Pending, ok bool, err error) {
	m := s.m
	if op == nil || op.Content.IsZero() || !deliveryInMailbox(fromRel, toRel) {
		return nil, false, nil
	}
	absFrom, absTo := m.abs(fromRel), m.abs(toRel)
	var st syscall.Stat_t
	if err := syscall.Lstat(absFrom, &st); err != nil {
		return nil, false, &os.PathError{Op: "lstat", Path: absFrom, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG || st.Size != op.Size {
		return nil, false, nil // not the verified body: the Rename handler hashes it
	}
	if e := m.checkTarget(toRel, true); e != 0 {
		return nil, false, &os.PathError{Op: "deliver", Path: absTo, Err: e}
	}
	// As the Rename handler makes a delivery's event, the body being the
	// one the receiver verified against op's content ID.
	ev := index.Event{Kind: index.EvRename, Path: fromRel, NewPath: toRel, Remote: op, Content: hasher(absTo)}
	ev.File.Content, ev.File.Size = op.Content, op.Size
	// Under mu, as every change to the tree: a local rename of the new
	// file (seen in a listing the moment it is there) is submitted after
	// its delivery.
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := unix.Renameat2(unix.AT_FDCWD, absFrom, unix.AT_FDCWD, absTo, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return nil, false, nil // replacing a name the kernel may have cached
		}
		return nil, false, &os.LinkError{Op: "rename", Old: absFrom, New: absTo, Err: err}
	}
	if fi, _, err := statInfo(absTo); err == nil {
		ev.File.Mode, ev.File.Mtime = fi.Mode, fi.Mtime
	}
	if p, err = m.store.Submit(ev); err != nil {
		syscall.Rename(absTo, absFrom)
		return nil, false, err
	}
	return p, true, nil
}

// RenameBehind is the applier's rename of a peer's flag change (op): the
// message at fromRel renamed to toRel in the same new/ or cur/, made in the
// backing tree and recorded as the Rename handler records it, without the
// three FUSE round trips (LOOKUP of both names, RENAME) of a rename through
// the mount. Its commit is submitted and returned, not waited for (as
// ApplyNoWait's). go-fuse's node moves to the new name and the kernel is
// told to drop its entry for the old one, so no cached name finds the
// message where it was; the directory's cached attributes and listing stay
// as they were and nobody's inotify hears of it, until the caller's next
// change through the mount in that directory, or its InvalidateDir, which
// the caller makes before it lets go of the mailbox's dotlock.
// ok false (and no error): the rename is not one it makes (another
// directory, the target name exists), and nothing was done. An error
// wrapping ENOENT: the message is not at fromRel (a local rename came
// first).
func (s *Server) RenameBehind(op *journal.Op, fromRel, toRel string) (p *index.Pending, ok bool, err error) {
	m := s.m
	if op == nil || path.Dir(fromRel) != path.Dir(toRel) || !sameMessage(fromRel, toRel) {
		return nil, false, nil
	}
	absFrom, absTo := m.abs(fromRel), m.abs(toRel)
	if e := m.checkTarget(toRel, true); e != 0 {
		return nil, false, &os.PathError{Op: "rename", Path: absTo, Err: e}
	}
	ev := index.Event{Kind: index.EvRename, Path: fromRel, NewPath: toRel, Remote: op, Content: hasher(absTo)}
	oldName, newName := path.Base(fromRel), path.Base(toRel)
	dir := m.inode(path.Dir(fromRel))
	m.mu.Lock()
	if err := unix.Renameat2(unix.AT_FDCWD, absFrom, unix.AT_FDCWD, absTo, unix.RENAME_NOREPLACE); err != nil {
		m.mu.Unlock()
		if errors.Is(err, syscall.EEXIST) {
			return nil, false, nil
		}
		return nil, false, &os.LinkError{Op: "rename", Old: absFrom, New: absTo, Err: err}
	}
	if fi, _, err := statInfo(absTo); err == nil {
		ev.File.Mode, ev.File.Mtime, ev.File.Size = fi.Mode, fi.Mtime, fi.Size
	}
	if p, err = m.store.Submit(ev); err != nil {
		syscall.Rename(absTo, absFrom)
		m.mu.Unlock()
		return nil, false, err
	}
	// Under mu, as the Rename handler's rename and the tree's move are
	// ordered against other renames of the message.
	cached := dir != nil && dir.GetChild(oldName) != nil
	if cached {
		dir.MvChild(oldName, dir, newName, true)
	}
	m.mu.Unlock()
	if cached {
		// Outside mu: the kernel takes the directory's lock for it, which
		// a request waiting for mu may hold.
		dir.NotifyEntry(oldName)
	}
	return p, true, nil
}

// Settled runs fn, a look at the index and the backing tree together,
// while no local change is under way: every change made through the mount
// before it is in the index, and none is made until fn returns. (A local
// rename is made on disk and then submitted to the index, under mu: in
// between, the two disagree.) fn must not make changes through the mount,
// nor wait for anything a FUSE request holds.
func (s *Server) Settled(fn func() error) error {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	p, err := s.m.store.Submit() // behind every local change submitted so far
	if err != nil {
		return fmt.Errorf("waiting for local changes to reach the index: %w", err)
	}
	if _, err := p.Wait(); err != nil {
		return fmt.Errorf("waiting for local changes to reach the index: %w", err)
	}
	return fn()
}

// InvalidateDir makes the kernel drop what it cached of the directory at
// rel (attributes, listing), after changes made behind its back
// (RenameBehind). It must not be called from a FUSE handler or under a
// lock one needs.
func (s *Server) InvalidateDir(rel string) {
	if n := s.m.inode(rel); n != nil {
		n.NotifyContent(0, 0)
	}
}

// inode is go-fuse's node of the directory at rel, if the kernel knows it.
func (m *mailFS) inode(rel string) *fusefs.Inode {
	n := m.rootNode.EmbeddedInode()
	if rel == "" || rel == "." {
		return n
	}
	for _, name := range strings.Split(rel, "/") {
		if n = n.GetChild(name); n == nil {
			return nil
		}
	}
	return n
}

// collector gathers the pending commits of an ApplyNoWait.
type collector struct {
	mu      sync.Mutex
	pending []*index.Pending
}

// deferCommit hands p to the applier's ApplyNoWait, if the request is the
// applier's and ApplyNoWait is in progress, instead of waiting for it.
func (m *mailFS) deferCommit(ctx context.Context, p *index.Pending) bool {
	c := m.collect.Load()
	if c == nil || !m.byApplier(ctx) {
		return false
	}
	c.mu.Lock()
	c.pending = append(c.pending, p)
	c.mu.Unlock()
	return true
}

// Mountpoint is where the tree is mounted.
func (s *Server) Mountpoint() string { return s.mountpoint }

type mailFS struct {
	store *index.Store
	root  string
	log   *slog.Logger
	// rootNode is the mount's root (its go-fuse node tree: see inode).
	rootNode fusefs.InodeEmbedder
	// mu orders mutations: a syscall and the Submit of its event happen
	// under it, so the journal order equals the order on disk. The wait for
	// durability happens outside it, so many changes share one fsync.
	mu sync.Mutex
	// remote is the peer op the syncer's applier is carrying out through
	// the mount, if any (see Server.Apply).
	remote atomic.Pointer[journal.Op]
	// applyMu lets one peer op at a time be applied.
	applyMu sync.Mutex
	// collect, while an ApplyNoWait runs, takes the applier's pending
	// commits that need not be waited for in the handler.
	collect atomic.Pointer[collector]
	// applierTid is the thread carrying out remote (0: none).
	applierTid atomic.Int64
	// deliveryWait, when set, is how a delivery waits for the peers'
	// acknowledgement (mount --sync-timeout).
	deliveryWait atomic.Pointer[deliveryWaiter]
	// beforeLock, in tests, runs in Rename, Link, Mkdir and Rmdir between
	// the paths' lookup and taking mu (where a folder rename can slip in).
	beforeLock atomic.Pointer[func(op, from, to string)]
	// renamedOnDisk, in tests, runs in Rename under mu between the rename
	// on disk and its submit to the index (where the two disagree).
	renamedOnDisk atomic.Pointer[func(from, to string)]
}

type deliveryWaiter struct {
	wait    func(ctx context.Context, seq uint64) error
	timeout time.Duration
}

// SetDeliveryWait makes every delivery (a message renamed or linked into
// new/ or cur/ from outside them) wait, after it is durable here, until
// wait says the peers have it, for at most timeout (Dovecot's
// replication_sync_timeout). A timeout is not an error: the delivery is
// durable locally and replicates later.
func (s *Server) SetDeliveryWait(wait func(ctx context.Context, seq uint64) error, timeout time.Duration) {
	if wait == nil || timeout <= 0 {
		s.m.deliveryWait.Store(nil)
		return
	}
	s.m.deliveryWait.Store(&deliveryWaiter{wait: wait, timeout: timeout})
}

// waitPeers lets a delivery that journaled ops wait for the peers.
func (m *mailFS) waitPeers(p *index.Pending) {
	dw := m.deliveryWait.Load()
	if dw == nil {
		return
	}
	ops, err := p.Wait()
	if err != nil || len(ops) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), dw.timeout)
	defer cancel()
	if err := dw.wait(ctx, ops[len(ops)-1].Seq); err != nil {
		m.log.Debug("delivery not acknowledged by every peer within --sync-timeout; it replicates later",
			"seq", ops[len(ops)-1].Seq, "timeout", dw.timeout)
	}
}

// Mount mounts the backing tree at mountpoint and serves it until
// Unmount. Mount returns once the kernel answers requests.
func Mount(mountpoint string, o Options) (*Server, error) {
	if o.Store == nil || o.Root == "" {
		return nil, fmt.Errorf("fs: mount %s: store and root are required", mountpoint)
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	root, err := filepath.Abs(o.Root)
	if err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(root, &st); err != nil {
		return nil, fmt.Errorf("fs: backing tree %s: %w", root, err)
	}
	m := &mailFS{store: o.Store, root: root, log: log}
	lr := &fusefs.LoopbackRoot{Path: root, Dev: uint64(st.Dev)}
	lr.NewNode = func(r *fusefs.LoopbackRoot, parent *fusefs.Inode, name string, st *syscall.Stat_t) fusefs.InodeEmbedder {
		return &node{LoopbackNode: fusefs.LoopbackNode{RootData: r}, m: m}
	}
	rootNode := lr.NewNode(lr, nil, "", &st)
	lr.RootNode = rootNode
	m.rootNode = rootNode

	timeout := o.CacheTimeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	neg := time.Duration(0)
	name := o.FSName
	if name == "" {
		name = "mailfs"
	}
	direct := os.Geteuid() == 0
	opts := &fusefs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &neg,
		MountOptions: fuse.MountOptions{
			AllowOther:              true,
			FsName:                  root,
			Name:                    name,
			Options:                 []string{"default_permissions"},
			DirectMountStrict:       direct,
			Debug:                   o.Debug,
			MaxInflightRequestBytes: 64 << 20,
		},
		// Inode numbers come from the backing files (stable across
		// remounts, shared by hard links).
		Logger: nil,
	}
	srv, err := mount(mountpoint, rootNode, opts, o.ObserveRequest)
	if err != nil {
		return nil, fmt.Errorf("fs: mount %s: %w", mountpoint, err)
	}
	s := &Server{Server: srv, Direct: direct, mountpoint: mountpoint, m: m}
	s.Passthrough = srv.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH != 0 && direct
	log.Info("mounted", "mountpoint", mountpoint, "backing", root, "direct_mount", direct,
		"passthrough", s.Passthrough, "cache_timeout", timeout)
	return s, nil
}

// mount is go-fuse's fs.Mount, with the raw file system timed when
// observe is set.
func mount(mountpoint string, root fusefs.InodeEmbedder, opts *fusefs.Options, observe func(string, time.Duration)) (*fuse.Server, error) {
	rawFS := fusefs.NewNodeFS(root, opts)
	if observe != nil {
		rawFS = &timedFS{RawFileSystem: rawFS, observe: observe}
	}
	srv, err := fuse.NewServer(rawFS, mountpoint, &opts.MountOptions)
	if err != nil {
		return nil, err
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		return nil, err
	}
	return srv, nil
}

// Unmount unmounts, retrying while the mount is busy, and falls back to a
// lazy unmount so a signal always leaves no mount behind.
func (s *Server) Unmount() error {
	s.unmountMu.Lock()
	defer s.unmountMu.Unlock()
	if s.unmounted {
		return nil
	}
	s.unmounted = true
	var err error
	for i := 0; i < 5; i++ {
		if err = s.Server.Unmount(); err == nil {
			return nil
		}
		time.Sleep(time.Duration(i+1) * 100 * time.Millisecond)
	}
	if lerr := syscall.Unmount(s.mountpoint, syscall.MNT_DETACH); lerr == nil {
		return nil
	}
	return fmt.Errorf("fs: unmount %s: %w", s.mountpoint, err)
}
