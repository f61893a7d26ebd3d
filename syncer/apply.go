package syncer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"mailfs/index"
	"mailfs/journal"
	"mailfs/maildir"
)

// Mount is what the applier needs of the FUSE mount: where it is, and a way
// to have changes made through it recorded as a peer's op (fs.Server).
type Mount interface {
	Mountpoint() string
	Apply(op *journal.Op, fn func() error) error
	// ApplyNoWait is Apply whose delivery and flag renames are submitted
	// to the index but not waited for: their pending commits are returned
	// (the bulk path of a segment, see applier.bulk).
	ApplyNoWait(op *journal.Op, fn func() error) ([]*index.Pending, error)
	// DeliverBehind renames a peer's new message from its mailbox's tmp/
	// into new/ or cur/ in the backing tree and submits its commit as
	// ApplyNoWait would, without the kernel seeing the change (fs.Server);
	// ok false: it did not, the rename must go through the mount.
	DeliverBehind(op *journal.Op, fromRel, toRel string) (p *index.Pending, ok bool, err error)
	// RenameBehind is DeliverBehind for a peer's flag change: the message
	// renamed within its new/ or cur/ (the kernel forgets the old name).
	RenameBehind(op *journal.Op, fromRel, toRel string) (p *index.Pending, ok bool, err error)
	// InvalidateDir drops the kernel's cache of a directory changed behind
	// its back.
	InvalidateDir(rel string)
	// Settled runs fn with local changes held: the index has every change
	// made through the mount so far, and none is made while fn looks at
	// the index and the backing tree together. fn makes no change itself.
	Settled(fn func() error) error
}

// Bodies finds a staged body by content ID.
type Bodies interface {
	Body(c journal.ContentID) (path string, ok bool)
}

// applier merges peer ops into this node (design §6) and carries them out
// with ordinary syscalls on the mountpoint.
type applier struct {
	store *index.Store
	mnt   Mount
	// root is the backing tree: scratch files (a body before its rename
	// into new/ or cur/, a dotlock's temp) are written there directly,
	// since only the step that makes them visible must go through the
	// mount for the kernel's caches and inotify to see it.
	root string
	log  *slog.Logger
	// locks holds the dovecot-uidlist.lock dotlocks taken while applying a
	// segment, by mailbox path; released when the segment is done.
	locks map[string]string
	// resolved counts a conflict resolved by a merge rule (metrics).
	resolved func(rule string)
	// lockedSince is when the oldest dotlock in locks was taken.
	lockedSince time.Time
	// keywords is the dovecot-keywords of a mailbox whose dotlock is held,
	// read once per hold.
	keywords map[string]maildir.Keywords

	// The bulk path (a segment applied by the receiver, see bulkSegment):
	// bulk is on for the segment, async for the op being applied when its
	// index commits need not be waited for one by one.
	bulk, async bool
	// behind is on for a batch's segment (behindSegmentOps ops or more):
	// its deliveries and flag renames may be held (see held).
	behind bool
	// pending are the submitted commits not waited for yet; pendingKeys
	// the message keys they concern (an op on one of those keys waits for
	// them first: it must see their effect in the index).
	pending     []*index.Pending
	pendingKeys map[string]bool
	// syncDirs are the new/ and cur/ directories the bulk path delivered
	// to, made durable with the segment (syncDelivered).
	syncDirs map[string]bool
	// held is, per new/ or cur/ directory, the last delivery (still in
	// tmp/) or flag rename (not made yet) of the bulk path of a batch's
	// segment: the ones before it went in behind the kernel's back
	// (Mount.DeliverBehind, Mount.RenameBehind: no FUSE round trips), and
	// this one goes through the mount (showHeld) before the mailbox's
	// dotlock is let go, so that the kernel drops what it cached of the
	// directory and inotify (Dovecot's IDLE) hears of the directory's
	// change. Watchers then hear of the directory, not of each name: in a
	// catch-up or a burst (a client's flag change of a whole folder), not
	// in live replication's segments of a few ops.
	held map[string]heldDelivery
	// behindDirs are the directories renamed in behind the kernel's back
	// since the last showHeld, whose cache it drops (Mount.InvalidateDir)
	// even when the held change that follows them is not made after all.
	behindDirs map[string]bool
	// goneSince is when a delivery first found the directory of a mailbox
	// the index has missing from disk, by path (see restoreIfGone).
	goneSince map[string]goneMailbox
	// unheld are deliveries once held that could not be made behind the
	// kernel's back: showHeld makes them through the mount.
	unheld []heldDelivery
}

// heldDelivery is a delivery whose last rename is yet to be made, or a
// flag change (flags) whose rename of the message from tmp is.
type heldDelivery struct {
	op      *journal.Op
	tmp, to string // relative paths
	flags   bool
	ctx     context.Context // the op's, for deciding it again (showFlags)
}

func newApplier(store *index.Store, mnt Mount, root string, log *slog.Logger) *applier {
	return &applier{store: store, mnt: mnt, root: root, log: log, locks: map[string]string{}, resolved: func(string) {},
		pendingKeys: map[string]bool{}, syncDirs: map[string]bool{}, keywords: map[string]maildir.Keywords{},
		held: map[string]heldDelivery{}, behindDirs: map[string]bool{}, goneSince: map[string]goneMailbox{}}
}

// bulkKind reports whether op may take the bulk path: a message add or a
// flag change, whose effect is one rename inside one mailbox, decided from
// that message's own index state.
func bulkKind(op *journal.Op) bool {
	return op.Kind == journal.MessageAdd || op.Kind == journal.MessageFlags
}

// applyFS carries out fn for op through the mount; on the bulk path the
// index commits of its renames are left pending (waited for by flush).
func (a *applier) applyFS(op *journal.Op, fn func() error) error {
	if !a.async {
		return a.mnt.Apply(op, fn)
	}
	p, err := a.mnt.ApplyNoWait(op, fn)
	a.pending = append(a.pending, p...)
	return err
}

// submit commits ev, or on the bulk path only submits it (flush waits).
func (a *applier) submit(ctx context.Context, ev index.Event) error {
	if !a.async {
		_, err := a.store.Commit(ctx, ev)
		return err
	}
	p, err := a.store.Submit(ev)
	if err == nil {
		a.pending = append(a.pending, p)
	}
	return err
}

// flush waits for every pending commit of the bulk path. Commits are
// applied in submission order, so once flush returns the index shows every
// op applied so far.
func (a *applier) flush() error {
	first := a.showHeld()
	for _, p := range a.pending {
		if _, err := p.Wait(); err != nil && first == nil {
			first = err
		}
	}
	a.pending = a.pending[:0]
	clear(a.pendingKeys)
	return first
}

// holdDelivery makes op's delivery of the body at tmp to the name to, on the
// bulk path (in op's Mount.ApplyNoWait): it is held, and the one held before
// for the same directory is made behind the kernel's back, or, when that
// cannot be, left for showHeld.
func (a *applier) holdDelivery(op *journal.Op, tmp, to string) error {
	return a.hold(heldDelivery{op: op, tmp: tmp, to: to})
}

// hold holds n, making the change held before in its directory behind the
// kernel's back.
func (a *applier) hold(n heldDelivery) error {
	dir := path.Dir(n.to)
	if h, ok := a.held[dir]; ok {
		if err := a.behindHeld(h); err != nil {
			return err
		}
	}
	a.held[dir] = n
	return nil
}

// behindHeld makes h behind the kernel's back, or leaves it for showHeld
// when that cannot be.
func (a *applier) behindHeld(h heldDelivery) error {
	if h.flags {
		p, done, err := a.mnt.RenameBehind(h.op, h.tmp, h.to)
		if err != nil || !done {
			return a.showFlags(h, err)
		}
		a.pending = append(a.pending, p)
		a.behindDirs[path.Dir(h.to)] = true
		return a.heldMeta(h)
	}
	p, done, err := a.mnt.DeliverBehind(h.op, h.tmp, h.to)
	if err != nil {
		// Not wrapped: apply's retry is for op, not for this one.
		return fmt.Errorf("delivering op %d %s: %v", h.op.Seq, h.to, err)
	}
	if done {
		a.pending = append(a.pending, p)
		a.behindDirs[path.Dir(h.to)] = true
	} else {
		a.unheld = append(a.unheld, h)
	}
	return nil
}

// showHeld makes the held deliveries through the mount.
func (a *applier) showHeld() error {
	var first error
	for _, h := range a.unheld {
		first = cmp.Or(first, a.showDelivery(h))
	}
	a.unheld = a.unheld[:0]
	for dir, h := range a.held {
		first = cmp.Or(first, a.showDelivery(h))
		delete(a.held, dir)
	}
	for dir := range a.behindDirs {
		a.mnt.InvalidateDir(dir)
		delete(a.behindDirs, dir)
	}
	return first
}

func (a *applier) showDelivery(h heldDelivery) error {
	if h.flags {
		return a.showFlags(h, nil)
	}
	ps, err := a.mnt.ApplyNoWait(h.op, func() error { return renameFile(a.abs(h.tmp), a.abs(h.to)) })
	a.pending = append(a.pending, ps...)
	if err != nil {
		return fmt.Errorf("delivering op %d %s: %v", h.op.Seq, h.to, err)
	}
	return nil
}

// showFlags makes h's flag rename through the mount (behind is why
// RenameBehind did not, if it failed), then records the op's stamps. A
// message gone from its name (a local rename came between the decision and
// the rename) has the op decided again.
func (a *applier) showFlags(h heldDelivery, behind error) error {
	err := behind
	if err == nil {
		var ps []*index.Pending
		ps, err = a.mnt.ApplyNoWait(h.op, func() error { return renameFile(a.abs(h.tmp), a.abs(h.to)) })
		a.pending = append(a.pending, ps...)
	}
	if err == nil {
		return a.heldMeta(h)
	}
	if !raced(err) {
		return fmt.Errorf("flag change op %d %s: %v", h.op.Seq, h.to, err)
	}
	async := a.async
	a.async = false // decided and made at once, as outside the bulk path
	defer func() { a.async = async }()
	for attempt := 0; attempt < 5; attempt++ {
		a.log.Debug("applying a peer op raced a local change; deciding again", "op", h.op.String(), "err", err)
		time.Sleep(time.Duration(attempt+1) * 10 * time.Millisecond)
		if err = a.flagMessage(h.ctx, h.op); err == nil || !raced(err) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("flag change op %d %s: %v", h.op.Seq, h.to, err)
	}
	return nil
}

// heldMeta records the stamps of a held flag change once it is made (as
// mergeFlags does after its rename).
func (a *applier) heldMeta(h heldDelivery) error {
	p, err := a.store.Submit(index.Event{Kind: index.EvRemoteMeta, Remote: h.op})
	if err == nil {
		a.pending = append(a.pending, p)
	}
	return err
}

// raced reports whether err is a local change racing the applier's (the op
// is decided again).
func raced(err error) bool {
	return errors.Is(err, errRace) || errors.Is(err, index.ErrChanged) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EEXIST)
}

// syncDelivered makes the deliveries of the bulk path durable: the bodies
// were made durable when staged, so what is left is each file's inode
// (owner, mode, times: cheap, its data is on disk) and the directories
// that got the renames: one syncfs of each file system they are on, where
// an fsync of every file and directory cost a journal commit per few.
func (a *applier) syncDelivered() error {
	var first error
	synced := map[uint64]bool{}
	dirs := make([]string, 0, len(a.syncDirs)+1)
	if len(a.syncDirs) > 0 {
		// The tree's own file system too: a directory renamed away since
		// (a local folder rename) took its deliveries there.
		dirs = append(dirs, "")
	}
	for d := range a.syncDirs {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		var st syscall.Stat_t
		dir := a.backing(d)
		if err := syscall.Stat(dir, &st); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // gone since (a mailbox deleted): nothing of it to keep
			}
			first = cmp.Or(first, fmt.Errorf("fsync %s: %w", dir, err))
			continue
		}
		if !synced[st.Dev] {
			synced[st.Dev] = true
			if err := syncFS(dir); err != nil {
				first = cmp.Or(first, err)
			}
		}
	}
	clear(a.syncDirs)
	return first
}

// dropDelivered forgets the deliveries of a segment that failed (it is not
// acknowledged: the peer sends it again).
func (a *applier) dropDelivered() {
	for dir, h := range a.held {
		if !h.flags { // a flag change's is the message itself
			os.Remove(a.backing(h.tmp))
		}
		delete(a.held, dir)
	}
	for _, h := range a.unheld {
		os.Remove(a.backing(h.tmp))
	}
	a.unheld = a.unheld[:0]
	clear(a.syncDirs)
}

// processStarted is when this process started: before its mount existed.
var processStarted = time.Now()

// errRace is a local change that raced the applier (a file renamed or
// removed between the decision and the syscall): the op is decided again.
var errRace = errors.New("a local change raced the applier")

func (a *applier) abs(rel string) string {
	return filepath.Join(a.mnt.Mountpoint(), filepath.FromSlash(rel))
}

// backing is rel in the backing tree, for scratch files only (see root).
func (a *applier) backing(rel string) string {
	return filepath.Join(a.root, filepath.FromSlash(rel))
}

// apply merges one peer op. It is idempotent: applying an op again after a
// crash changes nothing.
func (a *applier) apply(ctx context.Context, op *journal.Op, bodies Bodies) error {
	bulk := a.bulk && bulkKind(op) && !a.pendingKeys[op.Key]
	if !bulk {
		// Everything else decides from state the pending commits change.
		if err := a.flush(); err != nil {
			return fmt.Errorf("apply op %d %s from %s: %w", op.Seq, op.Kind, op.Origin.Short(), err)
		}
	}
	a.async = bulk
	defer func() { a.async = false }()
	if bulk {
		a.pendingKeys[op.Key] = true
	}
	before := len(a.pending)
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		err = a.applyOnce(ctx, op, bodies)
		if err == nil || !raced(err) {
			break
		}
		a.log.Debug("applying a peer op raced a local change; deciding again", "op", op.String(), "err", err)
		time.Sleep(time.Duration(attempt+1) * 10 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("apply op %d %s from %s: %w", op.Seq, op.Kind, op.Origin.Short(), err)
	}
	// A local op made from now on has seen op (its version vector says
	// so), though the segment's cursor moves only when all of it is done.
	// On the bulk path every commit left pending for op (a rename of its
	// message, its stamps) says so already.
	if bulk && len(a.pending) > before {
		return nil
	}
	if err := a.submit(ctx, index.Event{Kind: index.EvApplying, Remote: op}); err != nil {
		return fmt.Errorf("apply op %d %s from %s: %w", op.Seq, op.Kind, op.Origin.Short(), err)
	}
	return nil
}

func (a *applier) applyOnce(ctx context.Context, op *journal.Op, bodies Bodies) error {
	// A keyword letter the peer could not name (Dovecot renames a message
	// to a new letter before it writes dovecot-keywords; a later op names
	// it) means nothing here, where letters are assigned differently.
	op.Flags, op.Changed = dropUnknownLetters(op.Flags), dropUnknownLetters(op.Changed)
	switch op.Kind {
	case journal.MailboxCreate:
		_, err := a.ensureMailbox(ctx, op.Mailbox, op.Path, op)
		if errors.Is(err, errSkip) {
			// Deleted here already: the delete's record learns the create
			// (followRenameOfDeleted reads it).
			return a.submit(ctx, index.Event{Kind: index.EvDeletedCreate, Remote: op})
		}
		if err != nil {
			return err
		}
		return a.meta(ctx, op) // a mailbox made before its create arrived learns it

	case journal.MailboxRename:
		return a.renameMailbox(ctx, op)
	case journal.MailboxDelete:
		return a.deleteMailbox(ctx, op, false)
	case journal.MessageAdd:
		return a.addMessage(ctx, op, bodies)
	case journal.MessageFlags:
		return a.flagMessage(ctx, op)
	case journal.MessageMove:
		return a.moveMessage(ctx, op, bodies)
	case journal.MessageExpunge:
		return a.expungeMessage(ctx, op)
	case journal.Subscribe, journal.Unsubscribe:
		return a.subscription(ctx, op)
	case journal.DirCreate:
		return a.dirCreate(op)
	case journal.DirDelete:
		return a.dirDelete(op)
	case journal.FileWrite, journal.FileDelete:
		if maildir.Classify(op.Path, false).Kind != maildir.KindPlainFile {
			return nil // kept per node by this version (see validateOp)
		}
		return a.plainFile(ctx, op, bodies)
	}
	return fmt.Errorf("%w: kind %s", ErrBadOp, op.Kind)
}

// meta records the index-only effects of op (stamps, tombstones).
func (a *applier) meta(ctx context.Context, op *journal.Op) error {
	return a.submit(ctx, index.Event{Kind: index.EvRemoteMeta, Remote: op})
}

// errSkip: the op has nothing left to do here (its target was deleted).
var errSkip = errors.New("nothing to apply")

func (a *applier) view(fn func(v index.PeerView) error) error { return a.store.View(fn) }

// ensureMailbox returns the live mailbox g, creating it at p when this node
// never had it (rule 1), merging it with a different mailbox already at p
// (rule 3: the higher GUID is adopted), and sending the mail of a deleted
// mailbox that its deleter had not seen to the mailbox recreated in its
// place (rule 4). errSkip: g was deleted, and op was seen by the deleter.
func (a *applier) ensureMailbox(ctx context.Context, g journal.GUID, p string, op *journal.Op) (index.Mailbox, error) {
	var recreatedFrom journal.GUID // the deleted mailbox whose unseen mail goes to g
	revived := false               // g's own create, which g's delete here had not seen, makes it again
	for depth := 0; depth < 8; depth++ {
		var (
			mb, at      index.Mailbox
			have, taken bool
			sameCreate  bool // at was created at p concurrently with op: the same mailbox
			tomb        index.Tombstone
			dead        bool
			seenDead    bool
			gDeleted    bool // g itself deleted, by a delete that had not seen op
		)
		err := a.view(func(v index.PeerView) error {
			// g itself deleted by a node that had seen op: op went with it,
			// even where g now names the mailbox recreated for unseen mail.
			t, ok, err := v.MailboxTombstone(g)
			if err != nil || (ok && t.Seen[op.Origin] >= op.Seq) {
				seenDead = ok
				return err
			}
			gDeleted = ok
			if mb, have, err = v.Mailbox(g); err != nil || have {
				return err
			}
			if tomb, dead, err = v.MailboxTombstone(v.Resolve(g)); err != nil || (dead && !revived) {
				return err
			}
			if op.Kind == journal.MailboxCreate && op.Seen != nil && op.Mailbox == g {
				// Created here too, at the same path, by a create the peer
				// had not seen: the same mailbox, wherever it is now.
				same, err := v.CreatedAt(p)
				if err != nil {
					return err
				}
				for _, m := range same {
					// Concurrent both ways: a create that had seen the other
					// made a mailbox of its own (the other had left the path).
					if m.GUID != g && concurrentCreate(op, m) {
						at, taken, sameCreate = m, true, true
						return nil
					}
				}
			}
			at, taken, err = v.MailboxAt(p)
			return err
		})
		if err != nil {
			return mb, err
		}
		if seenDead {
			if op.Kind == journal.MailboxCreate && op.Mailbox == g && op.Seq != 0 && op.Seen != nil {
				if err := a.mergeIntoDeleted(ctx, op, p); err != nil {
					return index.Mailbox{}, err
				}
			}
			return index.Mailbox{}, errSkip
		}
		if have && gDeleted && recreatedFrom.IsZero() && mb.GUID != g && !derivedFrom(mb.GUID, g) &&
			(op.Kind == journal.MessageAdd || op.Kind == journal.MessageMove) {
			// Mail naming g, deleted here by a delete that had not seen it,
			// where g names another create's mailbox (one made at its path
			// concurrently, which that delete had not seen either): on the
			// node that added the mail, g was that mailbox's name when the
			// delete came, and the mailbox was kept under the higher of the
			// creates' GUIDs and the one derived from g (rules 3 and 4).
			if r := index.RecreatedGUID(g); r != mb.GUID && string(r[:]) > string(mb.GUID[:]) {
				a.log.Info("mail the deleter had not seen names the deleted mailbox; the mailbox it went to takes the GUID derived from it",
					"path", mb.Path, "mailbox", mb.GUID.String(), "kept_as", r.String())
				if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvRekey, GUID: mb.GUID, NewGUID: r}); err != nil {
					return index.Mailbox{}, err
				}
				if err := a.applyEarlyFlags(ctx, r, mb.GUID); err != nil {
					return index.Mailbox{}, err
				}
				continue
			}
		}
		if have {
			if !recreatedFrom.IsZero() {
				// Every later op naming the deleted mailbox that its deleter
				// had not seen (flags, expunges, moves of the mail kept)
				// finds the recreated one, as on the nodes that applied the
				// delete (deleteMailbox rekeys it).
				if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvRekey, GUID: recreatedFrom, NewGUID: mb.GUID}); err != nil {
					return index.Mailbox{}, err
				}
				if err := a.applyEarlyFlags(ctx, mb.GUID, recreatedFrom); err != nil {
					return index.Mailbox{}, err
				}
				recreatedFrom = journal.GUID{}
			}
			if op.Kind == journal.MailboxCreate && op.Seen != nil && op.Mailbox == g && op.Seq != 0 &&
				gDeleted && mb.GUID != g && derivedFrom(mb.GUID, g) {
				// g's create, which g's delete here had not seen, after mail
				// that delete had not seen either (a third node's, which
				// overtook the create) made g's folder again under the GUID
				// derived from g: the nodes that had the create first kept
				// the folder under g, the create the delete never saw
				// (deleteMailbox), and so does this one. The records of what
				// the delete took go first, or that mail would come back.
				a.log.Info("a create a delete here had not seen takes back the folder its unseen mail made again",
					"path", mb.Path, "mailbox", mb.GUID.String(), "kept_as", g.String())
				a.resolved(ruleUnseenKept)
				if err := a.sweepOrphans(ctx, g); err != nil {
					return index.Mailbox{}, err
				}
				if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvRekey, GUID: mb.GUID, NewGUID: g, Remote: op,
					Path: mb.Path, Expect: mb.GUID}); err != nil {
					return index.Mailbox{}, err
				}
				if err := a.applyEarlyFlags(ctx, g, mb.GUID); err != nil {
					return index.Mailbox{}, err
				}
				continue
			}
			if op.Kind == journal.MailboxCreate && op.Seen != nil && op.Mailbox == g && op.Seq != 0 {
				// A create that reached this node after its mailbox was made
				// here (a rename came first), or after it merged with one
				// create made at its path: any other mailbox made at that
				// path concurrently is one with it too, though both hold mail
				// here by now.
				other, found, err := a.concurrentAt(op, p, mb.GUID)
				if err != nil {
					return index.Mailbox{}, err
				}
				if found {
					keep, gone := mergeOrder(mb, other)
					if err := a.mergeFolders(ctx, op, keep, gone); errors.Is(err, errKeptApart) {
						return mb, nil
					} else if err != nil {
						return index.Mailbox{}, err
					}
					continue
				}
				// A mailbox made at that path concurrently and deleted here
				// by a delete that had not seen op's create: on the nodes
				// that merged the two first, that delete left the mailbox to
				// op's create, and ops naming the deleted one that the delete
				// had not seen go to it.
				dead, err := a.deletedConcurrent(op, p)
				if err != nil {
					return index.Mailbox{}, err
				}
				var renamedTo index.Tombstone
				var renamedFrom journal.GUID
				for d, ts := range dead {
					if ts.Seen[op.Origin] >= op.Seq {
						continue // it went with that delete; not this one
					}
					if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvRekey, GUID: d, NewGUID: mb.GUID, Remote: op}); err != nil {
						return index.Mailbox{}, err
					}
					if err := a.applyEarlyFlags(ctx, mb.GUID, d); err != nil {
						return index.Mailbox{}, err
					}
					if ts.Path != "" && ts.Path != ts.CreatedPath && string(d[:]) > string(renamedFrom[:]) {
						renamedTo, renamedFrom = ts, d
					}
				}
				if !renamedFrom.IsZero() && mb.Path == p {
					// That mailbox was renamed before its delete: on the
					// nodes that merged op's into it first, the rename took
					// both, and the delete left op's create there.
					if err := a.followDeletedRename(mb, renamedTo); err != nil {
						return index.Mailbox{}, err
					}
				}
			}
			return mb, nil
		}
		if dead && !revived && op.Kind == journal.MailboxCreate && op.Mailbox == g && op.Seq != 0 &&
			tomb.Seen[op.Origin] < op.Seq && tomb.Path != "" {
			var self bool
			if err := a.view(func(v index.PeerView) error { self = v.Resolve(g) == g; return nil }); err != nil {
				return index.Mailbox{}, err
			}
			if self {
				// g deleted here by a delete that had not seen g's create
				// (a rename, or a third node's mail, had made g here first):
				// the nodes that had the create kept the mailbox under g
				// (what the delete had seen of it went), where the deleter
				// had it; so does this one.
				a.log.Info("a mailbox deleted here before its create arrived is made again for that create",
					"path", tomb.Path, "mailbox", g.String())
				a.resolved(ruleUnseenKept)
				if err := a.sweepOrphans(ctx, g); err != nil {
					return index.Mailbox{}, err
				}
				revived, p = true, tomb.Path
				continue
			}
		}
		if dead && !revived {
			if tomb.Seen[op.Origin] >= op.Seq || op.Kind == journal.MailboxCreate || op.Kind == journal.MailboxRename {
				return index.Mailbox{}, errSkip
			}
			// Mail the deleter had not seen survives in a mailbox recreated
			// where the deleted one was.
			var deleted journal.GUID
			if err := a.view(func(v index.PeerView) error { deleted = v.Resolve(g); return nil }); err != nil {
				return index.Mailbox{}, err
			}
			recreatedFrom = deleted
			g, p = index.RecreatedGUID(deleted), tomb.Path
			if tomb.Path == "" && op.Path != "" {
				p = op.Path
			}
			if err := a.joinCreatedSince(ctx, op, tomb, g, p); err != nil {
				return index.Mailbox{}, err
			}
			continue
		}
		if op.Kind == journal.MailboxCreate && op.Seen != nil && op.Mailbox == g && op.Seq != 0 {
			// A mailbox made at p concurrently and deleted here by a delete
			// that had seen op's create too (its node had merged the two):
			// op's mailbox went with it, whatever holds p here now (the
			// mailbox that delete kept for mail it had not seen, or one made
			// since), as on the deleter, where op's create came first.
			gone, err := a.deletedWith(op, p)
			if err != nil {
				return index.Mailbox{}, err
			}
			if !gone.IsZero() {
				if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvRekey, GUID: g, NewGUID: gone, Remote: op}); err != nil {
					return index.Mailbox{}, err
				}
				continue
			}
		}
		if taken && !sameCreate && op.Kind == journal.MailboxCreate && op.Mailbox == g && op.Seq != 0 {
			if aside := a.createdApart(op, at, p); aside != "" {
				p, taken = aside, false
			} else if a.occupantApart(op, at) {
				if err := a.stepAside(at, p); err != nil {
					return index.Mailbox{}, err
				}
				continue
			}
		}
		if taken && derivedFrom(g, at.GUID) {
			// g is the GUID at's own unseen mail gets when a delete of at
			// reaches a node (or a delete of that one, and so on): at was
			// deleted elsewhere and the delete has not arrived here. Until
			// it does, g names at (the deletes' rekeys then make at g, as
			// on the nodes that had them first). Decided from a view, as
			// the merge below.
			if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvRekey, GUID: g, NewGUID: at.GUID,
				Path: at.Path, Expect: at.GUID}); err != nil {
				return index.Mailbox{}, err
			}
			if err := a.applyEarlyFlags(ctx, at.GUID, g); err != nil {
				return index.Mailbox{}, err
			}
			continue
		}
		if !taken && op.Kind == journal.MailboxCreate && op.Seen != nil && op.Mailbox == g && op.Seq != 0 {
			// Made at the path of a mailbox its creator had deleted, where
			// that delete kept mail it had not seen: on the creator's node
			// that mail arrives later and meets op's mailbox at p, and the
			// two merge there (below); renames here have only moved the
			// kept one away since.
			if kept, found, err := a.keptForUnseenAt(op, g, p); err != nil {
				return index.Mailbox{}, err
			} else if found {
				at, taken = kept, true
			}
		}
		if taken {
			winner, loser := at.GUID, g
			if string(g[:]) > string(at.GUID[:]) {
				winner, loser = g, at.GUID
			}
			a.log.Info("merging two mailboxes created at the same path (the higher GUID is kept)", "path", p,
				"kept", winner.String(), "merged", loser.String())
			a.resolved(ruleSamePathMerge)
			// The merge is op's visible effect: a local delete of the merged
			// mailbox must name op as seen, or the other nodes keep op's
			// create where this one deleted it. It was decided from a view:
			// a local delete or rename of at since then has op decided again
			// (merged into a mailbox deleted meanwhile, op's create would
			// go with a delete that had not seen it).
			if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvRekey, GUID: loser, NewGUID: winner, Remote: op,
				Path: at.Path, Expect: at.GUID}); err != nil {
				return index.Mailbox{}, err
			}
			if err := a.applyEarlyFlags(ctx, winner, loser); err != nil {
				return index.Mailbox{}, err
			}
			continue
		}
		create := &journal.Op{Kind: journal.MailboxCreate, Origin: op.Origin, Seq: op.Seq, Time: op.Time, Mailbox: g, Path: p}
		if op.Kind == journal.MailboxCreate {
			create.Seen = op.Seen // what its creator had seen (createdApart)
		} else {
			// Created here by an op that found it missing (its create has not
			// arrived, or it is recreated for a deleted one's unseen mail):
			// no create of op's origin, so no seq a delete could have missed
			// (deleteMailbox would keep it as a create its deleter never saw).
			create.Seq = 0
		}
		if err := a.mnt.Apply(create, func() error { return a.mkdirMailbox(p) }); err != nil {
			return index.Mailbox{}, fmt.Errorf("create mailbox %s at %q: %w", g, p, err)
		}
	}
	return index.Mailbox{}, fmt.Errorf("mailbox %s at %q: could not be created", g, p)
}

// mergeIntoDeleted handles op, a peer's create of a mailbox that a delete
// which had seen op deleted here before op came: a mailbox made here at
// op's path concurrently is one with op's (rule 3), and when op's GUID is
// the higher, the deleter had that GUID for the two and its delete takes
// this one too (what it had seen of it), as on the nodes that merged them
// before the delete came.
func (a *applier) mergeIntoDeleted(ctx context.Context, op *journal.Op, p string) error {
	var (
		m  index.Mailbox
		ok bool
	)
	if err := a.view(func(v index.PeerView) error {
		var err error
		m, ok, err = v.MailboxAt(p)
		return err
	}); err != nil || !ok {
		return err
	}
	g := op.Mailbox
	if m.GUID == g || string(g[:]) < string(m.GUID[:]) || !concurrentCreate(op, m) {
		return nil
	}
	a.log.Info("a peer's create that a delete here had seen merges with the mailbox made at its path; the delete takes it",
		"path", p, "mailbox", m.GUID.String(), "deleted", g.String())
	a.resolved(ruleSamePathMerge)
	if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvRekey, GUID: m.GUID, NewGUID: g, Remote: op}); err != nil {
		return err
	}
	if err := a.meta(ctx, op); err != nil {
		return err
	}
	return a.applyEarlyDelete(ctx, g)
}

// keptForUnseenAt finds the live mailbox kept for unseen mail of a
// mailbox deleted at p by a delete that op's creator had seen, when that
// creator had seen nothing since that the delete had not (so not the mail
// that kept it, nor a rename of it): op's mailbox g meets it on its
// creator's node when that mail arrives, and is one with it.
func (a *applier) keptForUnseenAt(op *journal.Op, g journal.GUID, p string) (index.Mailbox, bool, error) {
	var (
		found index.Mailbox
		ok    bool
	)
	err := a.view(func(v index.PeerView) error {
		dead, err := v.KeptDeletedAt(p)
		if err != nil {
			return err
		}
		for d, ts := range dead {
			sawDelete := (ts.Stamp.Origin == op.Origin && op.Seq > ts.Seq) || op.Seen[ts.Stamp.Origin] >= ts.Seq
			if !sawDelete {
				continue
			}
			mb, live, err := v.Mailbox(d)
			if err != nil {
				return err
			}
			if !live || mb.GUID == g || mb.Path == p {
				continue
			}
			if saw, err := sawKeptMailbox(v, op, mb, ts); err != nil || saw {
				if err != nil {
					return err
				}
				continue
			}
			found, ok = mb, true
			return nil
		}
		return nil
	})
	return found, ok, err
}

// sawKeptMailbox reports whether op's creator had seen what made mb, kept
// for mail the delete ts had not seen, differ from what that delete left:
// the rename that took it from the deleted path, or an add of that unseen
// mail. Had it seen neither, then on its node the mail came after op and
// was kept at the deleted path, where op's mailbox was: the two are one
// there, and the rename moved them together. (Anything else it had seen
// since the delete does not bear on that.)
func sawKeptMailbox(v index.PeerView, op *journal.Op, mb index.Mailbox, ts index.Tombstone) (bool, error) {
	had := func(origin journal.NodeID, seq uint64) bool {
		return seq != 0 && ((origin == op.Origin && seq < op.Seq) || op.Seen[origin] >= seq)
	}
	if had(mb.Renamed.Origin, mb.RenamedSeq) {
		return true, nil
	}
	saw := false
	err := v.Messages(mb.GUID, func(m index.Message) error {
		if ts.Seen[m.Added.Origin] < m.AddedSeq && had(m.Added.Origin, m.AddedSeq) {
			saw = true
			return errStopScan
		}
		return nil
	})
	if errors.Is(err, errStopScan) {
		err = nil
	}
	return saw, err
}

// errStopScan ends a scan early.
var errStopScan = errors.New("scan stopped")

// joinCreatedSince is keptForUnseenAt seen from the other side: g is to
// keep, at p, mail that the delete tomb had not seen, and a mailbox was
// made at p since, by a create that had seen that delete and nothing since
// that it had not, and renamed away. On the nodes where the mail was kept
// before that create came, the two merged at p (rule 3) and moved together:
// so g is one with it here (the higher GUID kept).
func (a *applier) joinCreatedSince(ctx context.Context, op *journal.Op, tomb index.Tombstone, g journal.GUID, p string) error {
	var (
		since index.Mailbox
		found bool
	)
	err := a.view(func(v index.PeerView) error {
		if _, have, err := v.Mailbox(g); err != nil || have {
			return err
		}
		same, err := v.CreatedAt(p)
		if err != nil {
			return err
		}
		for _, m := range same {
			if m.Path == p || m.GUID == g || m.CreatedSeq == 0 || m.Created.Origin.IsZero() {
				continue // at p: the loop merges it; no create to go by
			}
			sawDelete := (m.Created.Origin == tomb.Stamp.Origin && m.CreatedSeq > tomb.Seq) ||
				m.CreatedSeen[tomb.Stamp.Origin] >= tomb.Seq
			if !sawDelete || createSawKept(m, op, tomb) {
				continue
			}
			if !found || string(m.GUID[:]) > string(since.GUID[:]) {
				since, found = m, true
			}
		}
		return nil
	})
	if err != nil || !found {
		return err
	}
	winner, loser := since.GUID, g
	if string(g[:]) > string(since.GUID[:]) {
		winner, loser = g, since.GUID
	}
	a.log.Info("mail a delete had not seen joins the mailbox made at its path since and renamed (the higher GUID is kept)",
		"path", p, "mailbox", since.GUID.String(), "moved_to", since.Path, "kept", winner.String())
	a.resolved(ruleSamePathMerge)
	if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvRekey, GUID: loser, NewGUID: winner,
		Path: since.Path, Expect: since.GUID}); err != nil {
		return err
	}
	return a.applyEarlyFlags(ctx, winner, loser)
}

// createSawKept reports whether the create of m had seen what keeps mail
// of the deleted mailbox tomb apart from it on its creator's node: op, the
// unseen mail arriving here, or a rename of the deleted mailbox the delete
// had not seen (which takes the kept mail elsewhere). Anything else its
// creator had seen since the delete does not bear on it.
func createSawKept(m index.Mailbox, op *journal.Op, tomb index.Tombstone) bool {
	had := func(origin journal.NodeID, seq uint64) bool {
		return seq != 0 && ((origin == m.Created.Origin && seq < m.CreatedSeq) || m.CreatedSeen[origin] >= seq)
	}
	if had(op.Origin, op.Seq) {
		return true
	}
	r := tomb.Renamed
	return !r.Origin.IsZero() && tomb.Seen[r.Origin] < tomb.RenamedSeq && had(r.Origin, tomb.RenamedSeq)
}

// aliasRecreated makes recreated, a GUID derived for mail a delete had not
// seen that was merged into survivor on the other nodes, a name of
// survivor here, unless it names a mailbox of its own (live or deleted) or
// is a name of one already.
// Flag changes that came naming it before are applied to survivor.
func (a *applier) aliasRecreated(ctx context.Context, recreated, survivor journal.GUID) error {
	skip := false
	err := a.view(func(v index.PeerView) error {
		if v.Resolve(recreated) != recreated {
			skip = true
			return nil
		}
		_, have, err := v.Mailbox(recreated)
		if err != nil || have {
			skip = have
			return err
		}
		_, skip, err = v.MailboxTombstone(recreated)
		return err
	})
	if err != nil || skip {
		return err
	}
	if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvRekey, GUID: recreated, NewGUID: survivor}); err != nil {
		return err
	}
	return a.applyEarlyFlags(ctx, survivor, recreated)
}

// applyEarlyDelete applies the delete of mailbox g that reached this node
// before g did: a third node deleted the mailbox kept under g for mail an
// earlier delete had not seen, and that earlier delete, which made g here,
// came later. What g's deleter had seen goes now; what it had not stays.
func (a *applier) applyEarlyDelete(ctx context.Context, g journal.GUID) error {
	var (
		ts   index.Tombstone
		dead bool
	)
	err := a.view(func(v index.PeerView) error {
		var err error
		if v.Resolve(g) != g {
			return nil
		}
		if _, live, err := v.Mailbox(g); err != nil || !live {
			return err
		}
		ts, dead, err = v.MailboxTombstone(g)
		return err
	})
	if err != nil || !dead || ts.Seq == 0 || ts.Stamp.Origin.IsZero() {
		return err
	}
	a.log.Info("a peer's delete of a mailbox that came before the mailbox applies now", "mailbox", g.String(), "path", ts.Path)
	del := &journal.Op{Kind: journal.MailboxDelete, Origin: ts.Stamp.Origin, Seq: ts.Seq, Time: ts.Stamp.Time,
		Mailbox: g, Path: ts.Path, Seen: ts.Seen}
	return a.deleteMailbox(ctx, del, true)
}

// sweepOrphans turns the message records deleted mailbox g left into
// expunge traces, a batch per transaction, before g is made again: its
// deleted mail must not come back with it.
func (a *applier) sweepOrphans(ctx context.Context, g journal.GUID) error {
	for batch := 0; ; batch++ {
		if batch == 1<<16 {
			return fmt.Errorf("mailbox %s: records of its deleted mail are still there after %d batches", g, batch)
		}
		var left bool
		if err := a.view(func(v index.PeerView) (err error) {
			left, err = v.HasRecordsOf(g) // g's own, even where g names another mailbox now
			return err
		}); err != nil || !left {
			return err
		}
		if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvSweepOrphans, GUID: g}); err != nil {
			return err
		}
	}
}

// derivedFrom reports whether g is the GUID that mail kept from deletes of
// mailbox from gets (design §6 rule 4), after one delete or a few in a row.
func derivedFrom(g, from journal.GUID) bool {
	for i := 0; i < 4; i++ {
		from = index.RecreatedGUID(from)
		if g == from {
			return true
		}
	}
	return false
}

// createdApart handles op, a peer's create of a mailbox at p where this
// node has another one, at: when at's creator had seen op's create, the
// new mailbox had left p there by an op still on its way (a rename or a
// delete): not the same mailbox, so it is made beside at, at p-GUID (as a
// clash left by renames, T14), where that op will find it. It returns
// that path, or "" when at's creator had not seen op.
func (a *applier) createdApart(op *journal.Op, at index.Mailbox, p string) string {
	if at.GUID != at.CreatedGUID || at.CreatedSeen[op.Origin] < op.Seq {
		// at is not (only) what its create made: recreated for a deleted
		// one's unseen mail, or merged with another; rule 3 merges.
		return ""
	}
	aside := p + "-" + op.Mailbox.String()
	if _, err := os.Lstat(a.abs(aside)); err == nil {
		return "" // taken too: merge, as before
	}
	a.log.Info("a peer's mailbox created where another one is now; kept apart until its later op arrives",
		"path", p, "mailbox", op.Mailbox.String(), "at", aside, "other", at.GUID.String())
	return aside
}

// occupantApart reports whether op's creator had seen at's create: at had
// then left p there (by an op still on its way), and op's mailbox is
// another one.
func (a *applier) occupantApart(op *journal.Op, at index.Mailbox) bool {
	return op.Seen != nil && at.GUID == at.CreatedGUID && at.CreatedSeq != 0 && !at.Created.Origin.IsZero() &&
		op.Seen[at.Created.Origin] >= at.CreatedSeq
}

// followDeletedRename moves mailbox mb to where a mailbox made at its path
// concurrently was renamed before a delete that had not seen mb's create
// (ts, that delete's tombstone), with that rename's stamp, unless that
// path is taken here.
func (a *applier) followDeletedRename(mb index.Mailbox, ts index.Tombstone) error {
	if _, err := os.Lstat(a.abs(ts.Path)); err == nil {
		return nil
	}
	if fi, err := os.Stat(a.abs(path.Dir(ts.Path))); err != nil || !fi.IsDir() {
		return nil // its parent is gone here: it stays where it was made
	}
	taken := false
	if err := a.view(func(v index.PeerView) error {
		_, ok, err := v.MailboxAt(ts.Path)
		taken = ok
		return err
	}); err != nil || taken {
		return err
	}
	a.log.Info("a peer's mailbox follows the rename of a mailbox made at its path concurrently and deleted since",
		"path", mb.Path, "mailbox", mb.GUID.String(), "to", ts.Path)
	a.resolved(ruleSamePathMerge)
	return a.moveMailbox(mb.GUID, mb.Path, ts.Path, ts.Renamed)
}

// followRenameOfDeleted applies op, a rename of a mailbox deleted here by
// a delete that had not seen it, to the live mailbox at op's source path
// made there concurrently with the deleted one (one with it by rule 3, and
// kept by the delete for a create it had not seen): on the nodes that had
// the two merged before the rename, the rename took both, and the delete
// left that one where the rename had put it (followDeletedRename, as a
// create arriving after the rename and the delete follows it).
func (a *applier) followRenameOfDeleted(op *journal.Op) error {
	var (
		ts    index.Tombstone
		at    index.Mailbox
		found bool
	)
	err := a.view(func(v index.PeerView) error {
		t, ok, err := v.MailboxTombstone(op.Mailbox)
		if err != nil || !ok || t.Seen[op.Origin] >= op.Seq || t.Path != op.NewPath || t.CreatedPath == "" {
			return err
		}
		m, ok, err := v.MailboxAt(op.Path)
		if err != nil || !ok || m.GUID == op.Mailbox || m.CreatedPath != t.CreatedPath {
			return err
		}
		for _, c := range m.Creates() {
			for _, d := range t.Creates {
				if c.GUID != d.GUID && c.Seq != 0 && d.Seq != 0 && !c.SawCreate(d) && !d.SawCreate(c) {
					ts, at, found = t, m, true
					return nil
				}
			}
		}
		return nil
	})
	if err != nil || !found {
		return err
	}
	if pathRenamed(at) && !at.Renamed.Less(journal.StampOf(op)) {
		return nil // a newer rename of its own decided its path
	}
	return a.followDeletedRename(at, ts)
}

// pathRenamed reports whether mailbox mb's path stamp is a rename's: not
// when it is where it was made and the stamp is one of its creates' (the
// create that dated its path, its own or one merged into it by rule 3),
// which an older rename of a create merged with it still beats.
func pathRenamed(mb index.Mailbox) bool {
	if mb.Path != mb.CreatedPath {
		return true
	}
	return mb.Renamed != mb.Created && !slices.ContainsFunc(mb.Creates(), func(c index.CreateRef) bool { return c.Stamp == mb.Renamed })
}

// moveMailbox moves mailbox g's directory from one path to another for a
// merge decision (no op of its own is journaled), stamped as renamed by
// the rename it stands for, so later renames compare with that one.
func (a *applier) moveMailbox(g journal.GUID, from, to string, renamed journal.Stamp) error {
	move := &journal.Op{Kind: journal.MailboxRename, Origin: renamed.Origin, Time: renamed.Time,
		Mailbox: g, Path: from, NewPath: to}
	a.unlockAll() // dotlocks go with the directory
	return a.mnt.Apply(move, func() error {
		if err := os.Rename(a.abs(from), a.abs(to)); err != nil {
			return fmt.Errorf("move mailbox %s from %q to %q: %w", g, from, to, err)
		}
		return nil
	})
}

// stepAside moves mailbox at from p to p-GUID, keeping the stamp of its
// path: the rename or delete of it that made room at p on the node whose
// create now takes p is still on its way, and it must win here as there.
func (a *applier) stepAside(at index.Mailbox, p string) error {
	aside := p + "-" + at.GUID.String()
	if _, err := os.Lstat(a.abs(aside)); err == nil {
		return fmt.Errorf("mailbox %s at %q: %q is taken too", at.GUID, p, aside)
	}
	a.log.Info("a mailbox steps aside for a peer's create at its path; its own later op moves it",
		"path", p, "mailbox", at.GUID.String(), "at", aside)
	a.resolved(ruleSamePathMerge)
	return a.moveMailbox(at.GUID, p, aside, at.Renamed)
}

// recreatedFor returns, of the GUIDs derived for mail kept from a delete
// (rule 4) from the mailboxes named, the first that is mailbox g here
// (g itself, or merged into it), if any.
func (a *applier) recreatedFor(named []journal.GUID, g journal.GUID) (journal.GUID, error) {
	var found journal.GUID
	err := a.view(func(v index.PeerView) error {
		for _, n := range named {
			if r := index.RecreatedGUID(n); !n.IsZero() && v.Resolve(r) == g {
				found = r
				return nil
			}
		}
		return nil
	})
	return found, err
}

// backFromAside returns mailbox kept (mb, recreated for mail the delete op
// had not seen) to where op's deleter had it, when this node had set mb
// aside for a peer's create at that path (stepAside): op was the op that
// was to move it, and instead it keeps mail. On the deleter that mail is
// kept at op's path, where it meets the create that had taken the path
// (rule 3: one mailbox, the higher GUID kept); so it does here.
func (a *applier) backFromAside(ctx context.Context, op *journal.Op, mb index.Mailbox, kept journal.GUID) error {
	if op.Path == "" || mb.Path != op.Path+"-"+op.Mailbox.String() {
		return nil
	}
	var (
		at, now     index.Mailbox
		taken, live bool
	)
	if err := a.view(func(v index.PeerView) error {
		var err error
		if now, live, err = v.Mailbox(kept); err != nil || !live {
			return err
		}
		at, taken, err = v.MailboxAt(op.Path)
		return err
	}); err != nil || !live || now.Path != mb.Path {
		return err
	}
	a.log.Info("a mailbox set aside for a peer's create at its path keeps mail its delete had not seen; it goes back there",
		"path", mb.Path, "mailbox", kept.String(), "to", op.Path)
	if !taken {
		return a.moveMailbox(kept, mb.Path, op.Path, now.Renamed)
	}
	if err := a.mergeFolders(ctx, op, at, now); err != nil && !errors.Is(err, errKeptApart) {
		return err
	}
	return nil
}

// applyEarlyFlags applies, after loser's mail became winner's (a rule-3
// merge, or a rule-4 rekey to the recreated GUID), the flag
// changes kept under either GUID for messages that had not arrived under
// it (a third node's change, named by the GUID its sender had): the
// message is there now, under the other GUID, and no add of it will come
// to take them. The same goes for expunges (applyEarlyExpunges).
func (a *applier) applyEarlyFlags(ctx context.Context, winner, loser journal.GUID) error {
	if err := a.applyEarlyFlagChanges(ctx, winner, loser); err != nil {
		return err
	}
	return a.applyEarlyExpunges(ctx, winner)
}

// dropEarlyFlags forgets the flag changes kept for message key of mailbox
// g (they went with the message elsewhere).
func (a *applier) dropEarlyFlags(ctx context.Context, g journal.GUID, key string) error {
	var (
		resolved journal.GUID
		kept     bool
	)
	if err := a.view(func(v index.PeerView) error {
		resolved = v.Resolve(g)
		early, _, err := v.EarlyFlags(g, key)
		kept = len(early) > 0
		return err
	}); err != nil || !kept {
		return err
	}
	_, err := a.store.Commit(ctx, index.Event{Kind: index.EvDropEarlyFlags, GUID: resolved, Path: key})
	return err
}

// applyEarlyExpunges removes the messages of mailbox g that an expunge
// reached this node for under another of g's GUIDs before the two were
// one (index.PeerView.ExpungedLive).
func (a *applier) applyEarlyExpunges(ctx context.Context, g journal.GUID) error {
	type traced struct {
		m  index.Message
		op journal.Op
	}
	var found []traced
	var mb index.Mailbox
	err := a.view(func(v index.PeerView) error {
		var ok bool
		var err error
		if mb, ok, err = v.Mailbox(g); err != nil || !ok {
			return err
		}
		return v.ExpungedLive(g, func(m index.Message, op journal.Op) error {
			found = append(found, traced{m, op})
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, t := range found {
		a.log.Info("a message expunged under another GUID of its merged mailbox goes", "mailbox", mb.Path, "key", t.m.Key)
		if err := a.unlinkDeleted(&t.op, mb, t.m); err != nil {
			return fmt.Errorf("expunge of %s kept for %s: %w", t.m.Key, mb.Path, err)
		}
	}
	return nil
}

func (a *applier) applyEarlyFlagChanges(ctx context.Context, winner, loser journal.GUID) error {
	type early struct {
		g     journal.GUID
		key   string
		flags map[string]index.FlagChange
		cur   bool
	}
	var found []early
	err := a.view(func(v index.PeerView) error {
		for _, g := range []journal.GUID{winner, loser} {
			err := v.EarlyFlagsIn(g, func(key string, flags map[string]index.FlagChange, cur bool) error {
				if _, ok, err := v.Message(winner, key); err != nil || !ok {
					return err
				}
				found = append(found, early{g, key, flags, cur})
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, e := range found {
		names := make([]string, 0, len(e.flags))
		for f := range e.flags {
			names = append(names, f)
		}
		slices.Sort(names)
		for _, f := range names {
			c := e.flags[f]
			op := &journal.Op{Kind: journal.MessageFlags, Origin: c.Stamp.Origin, Time: c.Stamp.Time, Mailbox: winner, Key: e.key,
				Changed: []string{f}}
			if c.Present {
				op.Flags = []string{f}
			}
			if e.cur {
				op.Sub = journal.SubCur
			}
			if err := a.flagMessage(ctx, op); err != nil {
				return fmt.Errorf("flag changes kept for %s in %s: %w", e.key, e.g, err)
			}
		}
		if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvDropEarlyFlags, GUID: e.g, Path: e.key}); err != nil {
			return err
		}
	}
	return nil
}

// mkdirMailbox makes p/tmp, p/new and p/cur (cur last: it makes the
// mailbox), and any missing parent, owned like the nearest existing parent.
func (a *applier) mkdirMailbox(p string) error {
	for _, d := range []string{p, path.Join(p, "tmp"), path.Join(p, "new"), path.Join(p, "cur")} {
		if err := a.mkdirAll(d); err != nil {
			return err
		}
	}
	return nil
}

// mkdirAll creates the directory rel and its missing parents through the
// mount, each owned like its parent.
func (a *applier) mkdirAll(rel string) error {
	if rel == "" || rel == "." {
		return nil
	}
	abs := a.abs(rel)
	if fi, err := os.Lstat(abs); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", abs)
		}
		return nil
	}
	if err := a.mkdirAll(path.Dir(rel)); err != nil {
		return err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Dir(abs), &st); err != nil {
		return err
	}
	if err := syscall.Mkdir(abs, st.Mode&0o7777); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("mkdir %s: %w", abs, err)
	}
	return os.Lchown(abs, int(st.Uid), int(st.Gid))
}

// owner is the owner and mode of the directory holding rel.
func (a *applier) owner(dirRel string) (uid, gid int, mode uint32) {
	var st syscall.Stat_t
	if err := syscall.Stat(a.backing(dirRel), &st); err != nil {
		return -1, -1, 0o700
	}
	return int(st.Uid), int(st.Gid), st.Mode & 0o777
}

func (a *applier) renameMailbox(ctx context.Context, op *journal.Op) error {
	var mb index.Mailbox
	var have bool
	err := a.view(func(v index.PeerView) error {
		var err error
		mb, have, err = v.Mailbox(op.Mailbox)
		return err
	})
	if err != nil {
		return err
	}
	if !have {
		// Never known here: it is where the peer had it before the rename
		// (merged with a mailbox created here at that path, rule 3), and
		// then it is renamed like any other.
		mb, err = a.ensureMailbox(ctx, op.Mailbox, op.Path, op)
		if errors.Is(err, errSkip) {
			if err := a.meta(ctx, op); err != nil { // deleted: where its unseen mail goes may move
				return err
			}
			return a.followRenameOfDeleted(op)
		}
		if err != nil {
			return err
		}
	}
	// Only a newer rename decides against op: a mailbox created here with
	// a newer stamp (this op's own create where the peer's create has not
	// arrived yet, or another node's same-name create merged with it) was
	// renamed by op on the nodes that had it first.
	if (pathRenamed(mb) && !mb.Renamed.Less(journal.StampOf(op))) || mb.Path == op.NewPath {
		return nil // a newer rename (or this one) decided the path
	}
	target := op.NewPath
	if _, err := os.Lstat(a.abs(target)); err == nil {
		// A clash left by renames: the loser gets its GUID appended (T14).
		target = op.NewPath + "-" + mb.GUID.String()
		if _, err := os.Lstat(a.abs(target)); err == nil {
			return nil
		}
	}
	if err := a.mkdirAll(path.Dir(target)); err != nil {
		return err
	}
	// A dotlock held in the directory would move with it and never be
	// released: let go of them first.
	a.unlockAll()
	return a.mnt.Apply(op, func() error {
		if err := os.Rename(a.abs(mb.Path), a.abs(target)); err != nil {
			return fmt.Errorf("rename mailbox: %w", err)
		}
		return nil
	})
}

// deleteMailbox applies a peer's delete of a mailbox. early: op is a
// delete this node recorded before it had the mailbox, which a later
// delete's rekey has just made (the GUID kept for unseen mail): it
// applies now, as on the nodes that had the mailbox when it came.
func (a *applier) deleteMailbox(ctx context.Context, op *journal.Op, early bool) error {
	var (
		mb            index.Mailbox
		have          bool
		seen          []index.Message
		unseen        int
		unseenNamed   []journal.GUID // the GUIDs the adds of unseen mail named
		keptEmpty     bool
		takesAbsent   bool // adds that came without their bodies, which this delete had seen
		deletedBefore bool
		hasNested     bool
	)
	err := a.view(func(v index.PeerView) error {
		t, ok, err := v.MailboxTombstone(op.Mailbox)
		if err != nil || (!early && ok && t.Stamp.Origin == op.Origin && t.Seq == op.Seq) {
			// This delete is applied already (replayed after a crash): its
			// GUID may name the mailbox recreated for unseen mail now.
			return err
		}
		// Deleted here before (by another node's delete, or this node's):
		// the GUID names the mailbox recreated for the mail that delete had
		// not seen, and this delete takes what it had seen of that.
		deletedBefore = ok && !early
		if mb, have, err = v.Mailbox(op.Mailbox); err != nil || !have {
			return err
		}
		if takesAbsent, err = v.AbsentAddSeen(mb.GUID, op.Seen); err != nil {
			return err
		}
		err = v.Messages(mb.GUID, func(m index.Message) error {
			if m.AddedSeq != 0 && op.Seen[m.Added.Origin] < m.AddedSeq {
				unseen++
				unseenNamed = append(unseenNamed, m.AddedTo)
				return nil
			}
			seen = append(seen, m)
			return nil
		})
		if err != nil {
			return err
		}
		// Mail the deleter had not seen and that is gone again here still
		// recreates the mailbox on the deleter (it gets the add after its
		// delete): keep the mailbox, empty, as it will be there, and under
		// the GUID it will have there (what that add named decides it, as
		// for the mail still here). Not when another delete of the mailbox
		// took it: that delete reaches the deleter too and takes the
		// mailbox made again there.
		gone := false
		err = v.ExpungedUnseenNamed(mb.GUID, op.Seen, func(to journal.GUID, byMailboxDelete bool) {
			gone = gone || !byMailboxDelete
			unseenNamed = append(unseenNamed, to)
		})
		if err != nil || unseen > 0 {
			return err
		}
		if !gone {
			gone, err = v.AbsentAddUnseen(mb.GUID, op.Seen)
		}
		if gone {
			unseen, keptEmpty = 1, true
		}
		return err
	})
	if err != nil {
		return err
	}
	if !have {
		return a.meta(ctx, op)
	}
	if takesAbsent {
		if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvAbsentAddsTaken, GUID: mb.GUID, Remote: op}); err != nil {
			return err
		}
	}
	a.unlockAll() // the dotlocks go with the directories
	err = a.store.Mailboxes(func(o index.Mailbox) error {
		if o.GUID != mb.GUID && (mb.Path == "" || strings.HasPrefix(o.Path, mb.Path+"/")) {
			hasNested = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	// A mailbox the deleter never saw created (another node's, merged
	// with the deleted one by rule 3) is not what it deleted: only the
	// mail the deleter had seen goes, and the mailbox stays, under the
	// GUID of the creates the deleter had not seen, as on the deleter's
	// side, where they arrive after the delete. So does one it had seen
	// but that was another mailbox there, merged here with the deleted one
	// only through a create it had not seen (index.Mailbox.CreatesKept).
	if keptCreates := mb.CreatesKept(op.Mailbox, op.Seen); len(keptCreates) > 0 {
		for _, m := range seen {
			if err := a.unlinkDeleted(op, mb, m); err != nil {
				return err
			}
		}
		survivor := index.Survivor(keptCreates)
		var recreated journal.GUID
		for _, named := range unseenNamed {
			if slices.ContainsFunc(keptCreates, func(c index.CreateRef) bool { return c.GUID == named }) {
				continue // the deleter puts it in that create's mailbox
			}
			// Mail named by a mailbox the deleter had seen created: it
			// keeps it under the GUID derived from the one it deleted
			// (rule 4; op's, which here may be merged into a create it had
			// not seen), which the creates it had not seen merge with when
			// they arrive (rule 3).
			recreated = index.RecreatedGUID(op.Mailbox)
			if string(recreated[:]) > string(survivor[:]) {
				survivor = recreated
			}
			break
		}
		a.log.Info("mailbox deleted on a peer that had not seen every create merged into it; kept", "path", mb.Path,
			"mailbox", mb.GUID.String(), "kept_as", survivor.String())
		if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvDropSeenCreates, GUID: mb.GUID, NewGUID: survivor,
			Seen: op.Seen, Deleted: op.Mailbox}); err != nil {
			return err
		}
		if survivor != mb.GUID {
			if err := a.applyEarlyFlags(ctx, survivor, mb.GUID); err != nil {
				return err
			}
		}
		if !recreated.IsZero() && recreated != survivor {
			// The deleter and the nodes that kept the mail before the
			// creates came had it under the derived GUID, merged into the
			// survivor since: the deleter's later ops on that mail name the
			// derived one, which is a name of the survivor here too.
			if err := a.aliasRecreated(ctx, recreated, survivor); err != nil {
				return err
			}
		}
		if err := a.meta(ctx, op); err != nil {
			return err
		}
		if survivor != mb.GUID {
			return a.applyEarlyDelete(ctx, survivor)
		}
		return nil
	}
	if unseen > 0 || hasNested {
		// Remove only what the deleter had seen; the mailbox stays (for
		// unseen mail, under the GUID every node derives for it).
		for _, m := range seen {
			if err := a.unlinkDeleted(op, mb, m); err != nil {
				return err
			}
		}
		if unseen > 0 {
			kept := unseen
			if keptEmpty {
				kept = 0
			}
			a.log.Info("mailbox deleted on a peer keeps mail the peer had not seen", "path", mb.Path,
				"mailbox", mb.GUID.String(), "kept", kept)
			a.resolved(ruleUnseenKept)
			recreated := index.RecreatedGUID(mb.GUID)
			// Another delete that had not seen this mail came first and made
			// the mailbox again for it, under the GUID derived from the one
			// the mail named, which this delete's create then merged with:
			// the mailbox goes back to that GUID, as on the nodes where this
			// delete came first (it ends the create; the mail's mailbox
			// stays as the other delete left it).
			// Not when the deleter deleted that made-again mailbox itself:
			// its unseen mail gets the GUID derived from that one's.
			back, err := a.recreatedFor(unseenNamed, mb.GUID)
			if err != nil {
				return err
			}
			if !back.IsZero() && back != op.Mailbox {
				recreated = back
			}
			if !deletedBefore && recreated != mb.GUID {
				var other index.Mailbox
				inUse := false
				if err := a.view(func(v index.PeerView) error {
					var err error
					other, inUse, err = v.Mailbox(recreated)
					inUse = inUse && other.GUID == recreated
					return err
				}); err != nil {
					return err
				}
				kept := mb.GUID // what becomes the kept GUID
				if inUse {
					// Mail that names the kept GUID came first and made it
					// elsewhere: the two are one mailbox; merge them on disk
					// rather than refuse the delete for good. Where the
					// deleted one was moved by a rename its deleter had not
					// seen, the kept mail is there on the other nodes (the
					// rename moved the kept mailbox), and under the kept GUID
					// whichever GUID is the higher.
					a.log.Warn("mailbox deleted on a peer keeps mail where the GUID kept for it is already in use; merging the two",
						"path", mb.Path, "mailbox", mb.GUID.String(), "other_path", other.Path, "other", recreated.String())
					keep, gone := mergeOrder(mb, other)
					if err := a.mergeFolders(ctx, op, keep, gone); errors.Is(err, errKeptApart) {
						return a.meta(ctx, op)
					} else if err != nil {
						return err
					}
					if err := a.view(func(v index.PeerView) error { kept = v.Resolve(recreated); return nil }); err != nil {
						return err
					}
				}
				if kept != recreated {
					if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvRekey, GUID: kept, NewGUID: recreated}); err != nil {
						return err
					}
					// A third node's flag change to the kept mail, naming the
					// recreated GUID, may have come first and waited for it.
					if err := a.applyEarlyFlags(ctx, recreated, kept); err != nil {
						return err
					}
				}
				if err := a.meta(ctx, op); err != nil {
					return err
				}
				if !inUse {
					if err := a.backFromAside(ctx, op, mb, recreated); err != nil {
						return err
					}
				}
				return a.applyEarlyDelete(ctx, recreated)
			}
			return a.meta(ctx, op)
		}
		err := a.mnt.Apply(op, func() error {
			for _, sub := range []string{"cur", "new", "tmp"} {
				d := a.abs(path.Join(mb.Path, sub))
				if sub == "tmp" {
					clearDir(d)
				}
				if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
					return fmt.Errorf("rmdir %s: %w", d, err)
				}
			}
			return nil
		})
		if err == nil && deletedBefore {
			err = a.meta(ctx, op) // the deleted GUID's record learns this delete's view
		}
		return err
	}
	// Like Dovecot: rename the mailbox into its trash name, then remove it.
	trash := path.Join(path.Dir(mb.Path), "..DOVECOT-TRASHED-mailfs-"+mb.GUID.String())
	if path.Dir(mb.Path) == "." {
		trash = "..DOVECOT-TRASHED-mailfs-" + mb.GUID.String()
	}
	err = a.mnt.Apply(op, func() error {
		// Decided again at the last moment: mail delivered here since the
		// decision, which the deleter had not seen, must stay.
		if err := a.view(func(v index.PeerView) error {
			return v.Messages(mb.GUID, func(m index.Message) error {
				if m.AddedSeq != 0 && op.Seen[m.Added.Origin] < m.AddedSeq {
					return fmt.Errorf("%w: %s arrived in %s", errRace, m.Key, mb.Path)
				}
				return nil
			})
		}); err != nil {
			return err
		}
		if err := os.Rename(a.abs(mb.Path), a.abs(trash)); errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("%w: mail the deleter had not seen arrived in %s", errRace, mb.Path)
		} else if err != nil {
			return fmt.Errorf("delete mailbox %q: %w", mb.Path, err)
		}
		if err := os.RemoveAll(a.abs(trash)); err != nil {
			a.log.Warn("removing a deleted mailbox's files failed", "path", a.abs(trash), "err", err)
		}
		return nil
	})
	if err == nil && deletedBefore && derivedFrom(mb.GUID, op.Mailbox) {
		// The mailbox recreated for what an earlier delete of op's had not
		// seen is empty now: it goes as part of those deletes, not as a
		// mailbox of its own, so mail neither delete had seen, arriving
		// later, recreates it under the same GUID, as on the nodes where
		// that mail was in it all along.
		_, err = a.store.Commit(ctx, index.Event{Kind: index.EvUnrecreate, GUID: op.Mailbox, NewGUID: mb.GUID})
	}
	if err == nil && deletedBefore {
		err = a.meta(ctx, op) // the deleted GUID's record learns this delete's view
	}
	return err
}

func clearDir(d string) {
	ents, _ := os.ReadDir(d)
	for _, e := range ents {
		os.RemoveAll(filepath.Join(d, e.Name()))
	}
}

// messageTarget resolves where a peer's message op lands here: the live
// mailbox (created if needed) and whether the key is expunged there.
func (a *applier) messageTarget(ctx context.Context, g journal.GUID, p, key string, op *journal.Op) (mb index.Mailbox, expunged bool, err error) {
	mb, err = a.ensureMailbox(ctx, g, p, op)
	if err != nil {
		return mb, false, err
	}
	err = a.view(func(v index.PeerView) error {
		expunged, err = v.MessageExpunged(mb.GUID, key)
		return err
	})
	return mb, expunged, err
}

func (a *applier) message(g journal.GUID, key string) (m index.Message, ok bool, err error) {
	err = a.view(func(v index.PeerView) error {
		m, ok, err = v.Message(g, key)
		return err
	})
	return m, ok, err
}

func (a *applier) addMessage(ctx context.Context, op *journal.Op, bodies Bodies) error {
	var expunged, unseenByDelete bool
	err := a.view(func(v index.PeerView) error {
		var err error
		if expunged, err = v.MessageExpunged(op.Mailbox, op.Key); err != nil || !expunged {
			return err
		}
		if _, live, err := v.Mailbox(op.Mailbox); err != nil || live {
			return err
		}
		ts, dead, err := v.MailboxTombstone(v.Resolve(op.Mailbox))
		unseenByDelete = dead && ts.Seen[op.Origin] < op.Seq
		return err
	})
	if err != nil {
		return err
	}
	if expunged {
		// An expunge wins: nothing resurrects (rule 5). But mail the
		// deleter of its mailbox had not seen keeps that mailbox (empty
		// now), as on the nodes that had the mail when the delete came.
		if unseenByDelete {
			if _, err := a.ensureMailbox(ctx, op.Mailbox, op.Path, op); err != nil && !errors.Is(err, errSkip) {
				return err
			}
		}
		return nil
	}
	mb, expunged, err := a.messageTarget(ctx, op.Mailbox, op.Path, op.Key, op)
	if errors.Is(err, errSkip) || expunged {
		return nil
	}
	if err != nil {
		return err
	}
	return a.place(ctx, op, mb, op.Key, op.Flags, bodies)
}

// place puts the message op describes into mailbox mb under key: a new
// file from the staged body, a flag merge with the same message already
// there, or, for a different message under the same key, both kept (rule 9).
func (a *applier) place(ctx context.Context, op *journal.Op, mb index.Mailbox, key string, asserted []string, bodies Bodies) error {
	local, have, err := a.message(mb.GUID, key)
	if err != nil {
		return err
	}
	if have && local.Content == op.Content {
		return a.mergeFlags(ctx, op, mb, local, asserted)
	}
	if have {
		return a.conflict(ctx, op, mb, local, key, bodies)
	}
	body, ok := bodies.Body(op.Content)
	if !ok {
		// The peer no longer had the body when it sent the op: the message
		// moved or went away there since, and a later op says where.
		a.log.Debug("peer op without its body; a later op carries the message", "op", op.String())
		if op.Kind != journal.MessageAdd {
			return nil
		}
		// Until that op comes, a delete of the mailbox must know the mail
		// was added (rule 4).
		return a.submit(ctx, index.Event{Kind: index.EvAbsentAdd, GUID: mb.GUID, Path: key, Remote: op})
	}
	flags, cur, err := a.withEarlyFlags(mb.GUID, key, op)
	if err != nil {
		return err
	}
	sub := op.Sub
	if cur {
		sub = journal.SubCur
	}
	name, err := a.fileName(ctx, op, mb, key, sub, flags)
	if err != nil {
		return err
	}
	err = a.applyFS(op, func() error { return a.deliverAs(op, mb.Path, sub, name, body, op.Mtime) })
	if errors.Is(err, os.ErrNotExist) {
		if rerr := a.restoreIfGone(ctx, mb); rerr != nil {
			return rerr
		}
	} else if err == nil && len(a.goneSince) > 0 {
		delete(a.goneSince, mb.Path) // there again: a later miss starts over
	}
	return err
}

// goneGrace is how long a mailbox directory must stay missing from disk,
// while the index has the mailbox there, before a delivery into it makes
// it again: long past any local rename or delete in flight (those change
// the index within their own request), so only a directory gone behind
// mailfs's back is made again.
const goneGrace = time.Second

// goneMailbox is a mailbox whose directory a delivery found missing, and
// since when.
type goneMailbox struct {
	guid  journal.GUID
	since time.Time
}

// restoreIfGone makes the directories of mailbox mb again when a peer's
// delivery into it found them missing from disk and they still are, a
// goneGrace later, while the index has mb live at that path: a directory
// removed behind mailfs's back would otherwise refuse the delivery on every
// resend, and every later op of that peer with it. Its messages are marked
// missing (the full sync brings them back); the delivery is then decided
// again (errRace).
func (a *applier) restoreIfGone(ctx context.Context, mb index.Mailbox) error {
	var (
		there, live bool
		at          index.Mailbox
	)
	if err := a.mnt.Settled(func() error {
		// Settled: a local rename or delete of the folder is in the index
		// too, not taken for a directory gone.
		_, err := os.Lstat(a.backing(path.Join(mb.Path, "cur")))
		if there = !errors.Is(err, os.ErrNotExist); there {
			return nil
		}
		return a.view(func(v index.PeerView) error {
			var err error
			at, live, err = v.MailboxAt(mb.Path)
			return err
		})
	}); err != nil {
		return err
	}
	if there {
		delete(a.goneSince, mb.Path)
		return nil
	}
	if !live || at.GUID != mb.GUID {
		return nil // moved or deleted meanwhile: the retry finds where
	}
	// A resend comes at most RetryMax (30 s by default) after the last: a
	// miss older than a minute is of another spell.
	was, seen := a.goneSince[mb.Path]
	if !seen || was.guid != mb.GUID || time.Since(was.since) > time.Minute {
		a.goneSince[mb.Path] = goneMailbox{guid: mb.GUID, since: time.Now()}
		return nil
	}
	if time.Since(was.since) < goneGrace {
		return nil
	}
	delete(a.goneSince, mb.Path)
	a.log.Warn("a peer's mail is for a mailbox whose directory is gone from disk; made again (a full sync restores its messages)",
		"mailbox", mb.Path)
	if err := a.restoreMailboxDir(ctx, mb); err != nil {
		return err
	}
	return fmt.Errorf("%w: mailbox directory %s made again", errRace, mb.Path)
}

// withEarlyFlags is the flags op adds a message with, after the flag
// changes that overtook the add (from a third node) and are newer.
func (a *applier) withEarlyFlags(g journal.GUID, key string, op *journal.Op) ([]string, bool, error) {
	st := journal.StampOf(op)
	return a.earlyFlagsOver(g, key, op, op.Flags, func(string) journal.Stamp { return st })
}

// earlyFlagsOver is flags, the flags message key of mailbox g gets from
// op, after the flag changes that overtook op (from a third node) and are
// newer than the stamp each flag has then (stampOf), and whether one of
// those changes had the message in cur/.
func (a *applier) earlyFlagsOver(g journal.GUID, key string, op *journal.Op, flags []string,
	stampOf func(flag string) journal.Stamp) ([]string, bool, error) {
	var early map[string]index.FlagChange
	var cur bool
	if err := a.view(func(v index.PeerView) error {
		var err error
		early, cur, err = v.EarlyFlags(g, key)
		named := op.Mailbox
		if op.Kind == journal.MessageMove {
			named = op.Target
		}
		if err != nil || named == g {
			return err
		}
		// Changes that came before the mailbox g stands for existed here
		// (recreated for a deleted one's unseen mail) are under op's name.
		also, alsoCur, err := v.EarlyFlagsUnder(named, key)
		for f, c := range also {
			if old, ok := early[f]; !ok || old.Stamp.Less(c.Stamp) {
				if early == nil {
					early = map[string]index.FlagChange{}
				}
				early[f] = c
			}
		}
		cur = cur || alsoCur
		return err
	}); err != nil || len(early) == 0 {
		return flags, cur, err
	}
	have := map[string]bool{}
	for _, f := range flags {
		have[f] = true
	}
	for f, c := range early {
		if stampOf(f).Less(c.Stamp) {
			have[f] = c.Present
		}
	}
	var out []string
	for f, p := range have {
		if p {
			out = append(out, f)
		}
	}
	return journal.SortFlags(out), cur, nil
}

// conflict keeps both messages that claim one key (rule 9): the older one
// (by its add's stamp) takes a name every node derives the same way.
func (a *applier) conflict(ctx context.Context, op *journal.Op, mb index.Mailbox, local index.Message, key string, bodies Bodies) error {
	remote := journal.StampOf(op)
	localOrigin, localSeq := local.Added.Origin, local.AddedSeq
	if localSeq == 0 {
		localOrigin = a.store.Node()
	}
	if remote.Less(local.Added) {
		ckey := conflictKey(key, op.Origin, op.Seq)
		if _, have, err := a.message(mb.GUID, ckey); err != nil || have {
			return err
		}
		body, ok := bodies.Body(op.Content)
		if !ok {
			return nil
		}
		a.log.Warn("a peer's message has the key of a different local message: both kept", "mailbox", mb.Path,
			"key", key, "peer_copy", ckey)
		a.resolved(ruleKeyConflict)
		name, err := a.fileName(ctx, op, mb, ckey, op.Sub, op.Flags)
		if err != nil {
			return err
		}
		return a.mnt.Apply(op, func() error { return a.deliver(mb.Path, op.Sub, name, body, op.Mtime) })
	}
	// The local message is older: it moves to the conflict name and the
	// peer's takes the key.
	ckey := conflictKey(key, localOrigin, localSeq)
	n, err := maildir.ParseName(local.Name)
	if err != nil {
		return err
	}
	cname := ckey
	if n.HasInfo {
		cname += ":" + n.Info
	}
	a.log.Warn("a peer's message has the key of a different local message: both kept", "mailbox", mb.Path,
		"key", key, "local_copy", ckey)
	a.resolved(ruleKeyConflict)
	sub := subName(local.Sub)
	if err := a.mnt.Apply(op, func() error {
		if err := a.lockMailbox(mb.Path); err != nil {
			return err
		}
		return os.Rename(a.abs(path.Join(mb.Path, sub, local.Name)), a.abs(path.Join(mb.Path, sub, cname)))
	}); err != nil {
		return err
	}
	body, ok := bodies.Body(op.Content)
	if !ok {
		return nil
	}
	name, err := a.fileName(ctx, op, mb, key, op.Sub, op.Flags)
	if err != nil {
		return err
	}
	return a.mnt.Apply(op, func() error { return a.deliver(mb.Path, op.Sub, name, body, op.Mtime) })
}

func conflictKey(key string, origin journal.NodeID, seq uint64) string {
	return fmt.Sprintf("%s.mailfs-conflict-%s-%d", key, origin.Short(), seq)
}

func subName(s journal.Sub) string {
	if s == journal.SubNew {
		return "new"
	}
	return "cur"
}

// mergeFlags merges op's flags into the local message one flag at a time,
// the newest change of each winning (rule 6); cur/ beats new/.
func (a *applier) mergeFlags(ctx context.Context, op *journal.Op, mb index.Mailbox, local index.Message, changed []string) error {
	flags := mergedFlags(local, op, changed)
	sub := local.Sub
	if op.Sub == journal.SubCur {
		sub = journal.SubCur
	}
	if slices.Equal(flags, journal.SortFlags(local.Flags)) && sub == local.Sub {
		return a.meta(ctx, op)
	}
	name, err := a.fileName(ctx, op, mb, local.Key, sub, flags)
	if err != nil {
		return err
	}
	from := path.Join(mb.Path, subName(local.Sub), local.Name)
	to := path.Join(mb.Path, subName(sub), name)
	if local.Missing {
		// Its file went behind mailfs's back: the change is recorded in
		// the index, and the full sync brings the file back under the new
		// name.
		a.log.Warn("a peer's flag change to a message not on disk is recorded; marked missing (a full sync restores it)",
			"path", to)
		if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvRename, Path: from, NewPath: to, Remote: op},
			index.Event{Kind: index.EvMissing, Path: to}); err != nil {
			return fmt.Errorf("flags of missing %s: %w", from, err)
		}
		return a.meta(ctx, op)
	}
	if a.async && a.behind && op.Kind == journal.MessageFlags && sub == local.Sub {
		// A batch's flag change: held, and made behind the kernel's back
		// when the next change in its directory comes, or through the
		// mount (showHeld); its stamps follow its rename.
		if err := a.lockMailbox(mb.Path); err != nil {
			return err
		}
		a.pendingKeys[local.Key] = true
		return a.hold(heldDelivery{op: op, tmp: from, to: to, flags: true, ctx: ctx})
	}
	if err := a.applyFS(op, func() error {
		if err := a.lockMailbox(mb.Path); err != nil {
			return err
		}
		return renameFile(a.abs(from), a.abs(to))
	}); err != nil {
		return err
	}
	return a.meta(ctx, op)
}

// locate finds message key of mailbox g, following it where it was moved
// since (a flag change made concurrently with a move applies to the moved
// message).
func (a *applier) locate(g journal.GUID, key string) (mb index.Mailbox, m index.Message, found bool, err error) {
	err = a.view(func(v index.PeerView) error {
		for hop := 0; hop < 8; hop++ {
			var err error
			if m, found, err = v.Message(g, key); err != nil {
				return err
			}
			if found {
				mb, found, err = v.Mailbox(g)
				if err != nil || found {
					return err
				}
				// Deleted here with its mailbox, but perhaps moved away
				// since by a peer's move that brought it back elsewhere.
			}
			to, tk, moved, err := v.MovedTo(g, key)
			if err != nil || !moved {
				return err
			}
			g, key = to, tk
		}
		return nil
	})
	return mb, m, found, err
}

func (a *applier) flagMessage(ctx context.Context, op *journal.Op) error {
	mb, local, have, err := a.locate(op.Mailbox, op.Key)
	if err != nil {
		return err
	}
	if !have {
		return a.meta(ctx, op) // expunged here: expunge beats flags (rule 7)
	}
	if mb.GUID != op.Mailbox || local.Key != op.Key {
		// Moved here meanwhile: the change applies to it where it is.
		moved := *op
		moved.Mailbox, moved.Key = mb.GUID, local.Key
		op = &moved
	}
	if err := a.mergeFlags(ctx, op, mb, local, op.Changed); err != nil {
		if !errors.Is(err, syscall.ENOENT) || local.Missing {
			return err
		}
		if gone, gerr := a.fileGone(mb, local); gerr != nil || !gone {
			return errors.Join(err, gerr)
		}
		local.Missing = true // recorded, marked missing for the full sync
		if err := a.mergeFlags(ctx, op, mb, local, op.Changed); err != nil {
			return err
		}
	}
	if op.Mtime != 0 && op.Mtime != local.Mtime {
		// A flag op carries the message's mtime (utimens on a message).
		m, have, err := a.message(op.Mailbox, op.Key)
		if err != nil || !have {
			return err
		}
		p := a.abs(path.Join(mb.Path, subName(m.Sub), m.Name))
		return a.mnt.Apply(op, func() error {
			t := time.Unix(0, op.Mtime)
			return os.Chtimes(p, t, t)
		})
	}
	return nil
}

func (a *applier) moveMessage(ctx context.Context, op *journal.Op, bodies Bodies) error {
	newKey := op.Key
	if op.NewKey != "" {
		newKey = op.NewKey
	}
	src, have, err := a.message(op.Mailbox, op.Key)
	if err != nil {
		return err
	}
	var (
		srcMb  index.Mailbox
		orphan bool // src is the record of a message deleted with its mailbox here
	)
	if have {
		err = a.view(func(v index.PeerView) error {
			var ok bool
			srcMb, ok, err = v.Mailbox(op.Mailbox)
			if err == nil && !ok {
				have, orphan = false, true
			}
			return err
		})
		if err != nil {
			return err
		}
	}
	dst, expunged, err := a.messageTarget(ctx, op.Target, op.NewPath, newKey, op)
	var onTo journal.GUID
	over := false // a later move took the message on from the target
	if err == nil && expunged {
		// A move made after this one on a node that had applied it (its
		// Seen names this op) came first and took the message on from the
		// target: this move is over. Otherwise the key's trace in the
		// target may be that of an earlier move out of it (a move there
		// and back): that is no expunge, and this move brings the message
		// back. An expunge there that a concurrent move out of it followed
		// stays one: the move back is an add that meets it (rules 5 and
		// 7), as on the mover's node, where the expunge comes after the
		// move back and removes the message. A move made knowing the
		// expunge (its mover had applied it: op.Seen names it) beats it.
		err = a.view(func(v index.PeerView) error {
			var err error
			if onTo, over, err = v.MovedAwayKnowing(dst.GUID, newKey, op.Origin, op.Seq); err != nil || over {
				return err
			}
			movedAway, err := v.MovedAway(dst.GUID, newKey)
			if err != nil || movedAway {
				expunged = false
				return err
			}
			origin, seq, ok, err := v.ExpungedBy(dst.GUID, newKey)
			expunged = !(ok && seq != 0 && op.Seen[origin] >= seq)
			return err
		})
	}
	if err == nil && over {
		// What this move would move stays if it is where the later move
		// put the message; else that later move took it, and it goes.
		a.log.Debug("a later move that had seen this one came first; the message has moved on", "op", op.String(),
			"moved_to", onTo.String())
		if have && onTo != srcMb.GUID {
			return a.unlinkMessage(op, srcMb, src)
		}
		return a.meta(ctx, op)
	}
	if errors.Is(err, errSkip) || (err == nil && expunged) {
		// The target is gone (or the key expunged there): the source goes.
		if have {
			return a.unlinkMessage(op, srcMb, src)
		}
		return a.meta(ctx, op)
	}
	if err != nil {
		return err
	}
	if !have || src.Content != op.Content {
		// Not here (expunged concurrently, or never received): the move
		// is an add in the target, with the body it carries, and the flag
		// changes made here before the expunge (the mover's node gets them
		// too, applied to the moved message).
		add := op
		if !have {
			var was index.Message
			var expunged bool
			if err := a.view(func(v index.PeerView) error {
				var err error
				was, expunged, err = v.ExpungedAs(op.Mailbox, op.Key)
				return err
			}); err != nil {
				return err
			}
			if !expunged && orphan {
				// Deleted here with its mailbox, which leaves no expunge
				// trace but the message's record: its flags and their
				// stamps meet the move's as they would have in the source.
				was, expunged = src, true
			}
			if expunged {
				merged := *op
				merged.Flags = mergedFlags(was, op, op.Changed)
				if was.Sub == journal.SubCur {
					merged.Sub = journal.SubCur // cur/ beats new/
				}
				add = &merged
			}
			// Flag changes made to it in the source before the move reached
			// their nodes, which came here before the message did: they
			// stand where the move did not change the flag (the nodes that
			// had the message moved it with them).
			st := journal.StampOf(op)
			flags, cur, err := a.earlyFlagsOver(op.Mailbox, op.Key, op, add.Flags, func(f string) journal.Stamp {
				if slices.Contains(op.Changed, f) {
					return st
				}
				return journal.Stamp{}
			})
			if err != nil {
				return err
			}
			if !slices.Equal(flags, add.Flags) || (cur && add.Sub != journal.SubCur) {
				merged := *add
				merged.Flags = flags
				if cur {
					merged.Sub = journal.SubCur
				}
				add = &merged
			}
		}
		if err := a.place(ctx, add, dst, newKey, add.Flags, bodies); err != nil {
			return err
		}
		if !have {
			if err := a.dropEarlyFlags(ctx, op.Mailbox, op.Key); err != nil {
				return err
			}
		}
		return a.meta(ctx, op)
	}
	if _, there, err := a.message(dst.GUID, newKey); err != nil {
		return err
	} else if there && dst.GUID != srcMb.GUID {
		// Already in the target (a replayed op): the source goes.
		return a.unlinkMessage(op, srcMb, src)
	}
	flags := mergedFlags(src, op, op.Changed)
	sub := op.Sub
	if src.Sub == journal.SubCur {
		sub = journal.SubCur // cur/ beats new/
	}
	// Flag changes a third node made to the moved message in the target,
	// which overtook the move, apply where newer than what it has then.
	st := journal.StampOf(op)
	flags, earlyCur, err := a.earlyFlagsOver(dst.GUID, newKey, op, flags, func(f string) journal.Stamp {
		if slices.Contains(op.Changed, f) {
			return st
		}
		return src.FlagStamps[f]
	})
	if err != nil {
		return err
	}
	if earlyCur {
		sub = journal.SubCur
	}
	name, err := a.fileName(ctx, op, dst, newKey, sub, flags)
	if err != nil {
		return err
	}
	from := path.Join(srcMb.Path, subName(src.Sub), src.Name)
	to := path.Join(dst.Path, subName(sub), name)
	if err := a.mnt.Apply(op, func() error {
		if err := a.lockMailbox(srcMb.Path); err != nil {
			return err
		}
		if err := a.lockMailbox(dst.Path); err != nil {
			return err
		}
		return renameFile(a.abs(from), a.abs(to))
	}); err != nil {
		if !errors.Is(err, syscall.ENOENT) || src.Missing {
			return err
		}
		if gone, gerr := a.fileGone(srcMb, src); gerr != nil || !gone {
			return errors.Join(err, gerr)
		}
		// Its file gone behind mailfs's back, the source is not here: the
		// move is an add in the target, with the body it carries (decided
		// again, as for a message expunged here).
		if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvUnlink, Path: from, Remote: op}); err != nil {
			return fmt.Errorf("drop the record of %s: %w", from, err)
		}
		return fmt.Errorf("%w: the file of %s was gone", errRace, from)
	}
	return a.meta(ctx, op)
}

// mergedFlags is local's flags with op's changes to the flags in changed
// applied where they are newer than local's own (rule 6).
func mergedFlags(local index.Message, op *journal.Op, changed []string) []string {
	return index.MergeFlags(local.Flags, local.FlagStamps, op, changed)
}

func (a *applier) expungeMessage(ctx context.Context, op *journal.Op) error {
	local, have, err := a.message(op.Mailbox, op.Key)
	if err != nil {
		return err
	}
	if !have || (op.Seq != 0 && local.OverExpunge[op.Origin] >= op.Seq) {
		// Not here; or here by a move made over this very expunge (its
		// mover had applied it): the expunge took an earlier copy.
		return a.meta(ctx, op)
	}
	var mb index.Mailbox
	err = a.view(func(v index.PeerView) error {
		mb, have, err = v.Mailbox(op.Mailbox)
		return err
	})
	if err != nil || !have {
		return err
	}
	err = a.unlinkMessage(op, mb, local)
	if errors.Is(err, syscall.ENOENT) {
		return a.expungeMissing(ctx, op, mb, local)
	}
	return err
}

// fileGone reports whether the file of m of mb is not on disk where the
// index has it (gone behind mailfs's back), so that a peer's change to it
// is recorded rather than refused on every resend. A message or mailbox
// renamed meanwhile is a race (decided again).
func (a *applier) fileGone(mb index.Mailbox, m index.Message) (bool, error) {
	rel := path.Join(mb.Path, subName(m.Sub), m.Name)
	gone := false
	err := a.mnt.Settled(func() error {
		// Settled: a local rename of the message or its folder (a flag
		// change, a folder delete's rename to its trash name) is on disk
		// and in the index alike, not taken for a file gone.
		have, live, err := a.indexedAs(mb, m)
		if err != nil {
			return err
		}
		if !have || !live {
			return fmt.Errorf("%w: %s or its mailbox gone meanwhile", errRace, m.Name)
		}
		_, err = os.Lstat(a.backing(rel))
		gone = errors.Is(err, os.ErrNotExist)
		return nil
	})
	if err != nil || !gone {
		return false, err
	}
	a.log.Warn("a message file the index has is not on disk", "path", rel)
	return true, nil
}

// expungeMissing carries out op, a peer's expunge of m, whose file is not
// where the index has it. A local rename since (a flag change, a move of
// the mailbox) is decided again; a file under another name of the same
// message goes; and a file gone behind mailfs's back (a crash between a
// rename and its record, an admin's rm) is what op asked for: the index
// forgets it with op's stamp. Refusing instead would refuse the segment
// on every resend, and every later op of that peer with it.
func (a *applier) expungeMissing(ctx context.Context, op *journal.Op, mb index.Mailbox, m index.Message) error {
	var (
		have, live bool
		others     []string // the same message under names the index does not have
	)
	err := a.mnt.Settled(func() error {
		var err error
		if have, live, err = a.indexedAs(mb, m); err != nil || !have || !live {
			return err
		}
		for _, sub := range []string{"cur", "new"} {
			ents, err := os.ReadDir(a.backing(path.Join(mb.Path, sub)))
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("expunge %s in %s: %w", m.Key, mb.Path, err)
			}
			for _, e := range ents {
				if e.Name() == m.Key || strings.HasPrefix(e.Name(), m.Key+":") {
					others = append(others, path.Join(sub, e.Name()))
				}
			}
		}
		return nil
	})
	switch {
	case err != nil:
		return err
	case !have:
		return nil // gone meanwhile, with its record
	case !live:
		return fmt.Errorf("%w: mailbox %s gone meanwhile", errRace, mb.Path)
	}
	for _, o := range others {
		a.log.Warn("expunging a message whose file has another name than the index says",
			"mailbox", mb.Path, "indexed", m.Name, "found", o)
		other := a.abs(path.Join(mb.Path, o))
		if err := a.mnt.Apply(op, func() error { return os.Remove(other) }); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("expunge %s in %s: %w", m.Key, mb.Path, err)
		}
	}
	rel := path.Join(mb.Path, subName(m.Sub), m.Name)
	a.log.Warn("a message the index has was not on disk; the peer's expunge is recorded", "path", rel,
		"peer", op.Origin.Short(), "seq", op.Seq)
	if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvUnlink, Path: rel, Remote: op}); err != nil {
		return fmt.Errorf("expunge %s: %w", rel, err)
	}
	return a.meta(ctx, op)
}

// unlinkDeleted removes message m of mailbox mb, deleted with it by op. A
// message renamed meanwhile (a local flag change) is decided again where
// it is now; one whose file is gone already needs nothing.
func (a *applier) unlinkDeleted(op *journal.Op, mb index.Mailbox, m index.Message) error {
	err := a.unlinkMessage(op, mb, m)
	if !errors.Is(err, syscall.ENOENT) {
		return err
	}
	_, _, err = a.indexedAs(mb, m)
	return err
}

// indexedAs reports whether the index still has message m of mailbox mb
// (have) and mb as a live mailbox (live). A rename of m since (a local
// flag change) or a move of its live mailbox (a local rename between the
// caller's decision and its change; the message went with it) is errRace:
// the caller decides again where they are now.
func (a *applier) indexedAs(mb index.Mailbox, m index.Message) (have, live bool, err error) {
	var (
		now index.Message
		at  index.Mailbox
	)
	if err := a.view(func(v index.PeerView) error {
		var err error
		if now, have, err = v.Message(mb.GUID, m.Key); err != nil || !have {
			return err
		}
		at, live, err = v.Mailbox(mb.GUID)
		return err
	}); err != nil {
		return false, false, err
	}
	if have && (now.Name != m.Name || now.Sub != m.Sub) {
		return have, live, fmt.Errorf("%w: %s renamed to %s", errRace, m.Name, now.Name)
	}
	if have && live && at.Path != mb.Path {
		return have, live, fmt.Errorf("%w: mailbox %s renamed to %s", errRace, mb.Path, at.Path)
	}
	return have, live, nil
}

func (a *applier) unlinkMessage(op *journal.Op, mb index.Mailbox, m index.Message) error {
	p := a.abs(path.Join(mb.Path, subName(m.Sub), m.Name))
	return a.mnt.Apply(op, func() error {
		if err := a.lockMailbox(mb.Path); err != nil {
			return err
		}
		return os.Remove(p)
	})
}

// fileName is the name a message with flags gets in mailbox mb: its key
// plus the flag letters of this node (keywords are added to the mailbox's
// dovecot-keywords first when they have no letter here yet).
func (a *applier) fileName(ctx context.Context, op *journal.Op, mb index.Mailbox, key string, sub journal.Sub, flags []string) (string, error) {
	// Dovecot assigns keyword letters and rewrites dovecot-keywords only
	// while it holds dovecot-uidlist.lock (and unlinks any
	// dovecot-keywords.lock it finds): so does the applier, and it reads
	// the letters under that lock.
	if err := a.lockMailbox(mb.Path); err != nil {
		return "", err
	}
	// Read once per hold of the lock: nobody else changes the file while
	// the applier holds it (and addKeywords updates the copy).
	kw, ok := a.keywords[mb.Path]
	if !ok {
		data, _ := os.ReadFile(a.abs(path.Join(mb.Path, "dovecot-keywords")))
		kw = maildir.ParseKeywords(data)
		if _, held := a.locks[mb.Path]; held {
			a.keywords[mb.Path] = kw
		}
	}
	letters, missing := maildir.FlagLetters(flags, kw)
	if len(missing) > 0 {
		kw, err := a.addKeywords(op, mb, missing)
		if err != nil {
			delete(a.keywords, mb.Path)
			return "", err
		}
		if _, held := a.locks[mb.Path]; held {
			a.keywords[mb.Path] = kw
		}
		letters, missing = maildir.FlagLetters(flags, kw)
		if len(missing) > 0 {
			a.log.Warn("flags not representable here (all 26 keyword letters in use)", "mailbox", mb.Path, "flags", missing)
		}
	}
	if sub == journal.SubNew && letters == "" {
		return key, nil
	}
	return key + ":2," + letters, nil
}

// addKeywords gives names letters in mb's dovecot-keywords, written the way
// Dovecot writes it (dotlock, then rename over the file).
func (a *applier) addKeywords(op *journal.Op, mb index.Mailbox, names []string) (maildir.Keywords, error) {
	var kw maildir.Keywords
	err := a.mnt.Apply(op, func() error {
		return a.replaceFile(path.Join(mb.Path, "dovecot-keywords"), mb.Path, func(cur []byte) []byte {
			kw = addKeywordNames(maildir.ParseKeywords(cur), names)
			return maildir.FormatKeywords(kw)
		})
	})
	return kw, err
}

// addKeywordNames gives each name a free letter (of 26) in kw.
func addKeywordNames(kw maildir.Keywords, names []string) maildir.Keywords {
	for _, n := range names {
		if kw.Index(n) >= 0 {
			continue
		}
		slot := -1
		for i := 0; i < 26; i++ {
			if i >= len(kw) || kw[i] == "" {
				slot = i
				break
			}
		}
		if slot < 0 {
			break
		}
		for len(kw) <= slot {
			kw = append(kw, "")
		}
		kw[slot] = n
	}
	return kw
}

// replaceFile rewrites rel as Dovecot replaces its small files: take the
// dotlock (rel.lock, created exclusively), read the current content, write
// what build makes of it into the lock, rename the lock over rel. Reading
// under the lock keeps a concurrent writer's change from being overwritten
// (and then recorded as the peer's).
func (a *applier) replaceFile(rel, ownerDir string, build func(cur []byte) []byte) error {
	lock := a.abs(rel + ".lock")
	var f *os.File
	var err error
	for i := 0; i < 200; i++ {
		f, err = os.OpenFile(lock, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil || !errors.Is(err, os.ErrExist) {
			break
		}
		if fi, serr := os.Stat(lock); serr == nil && (time.Since(fi.ModTime()) > 2*time.Minute || fi.ModTime().Before(processStarted)) {
			// Stale, as Dovecot's dotlocks count it, or older than this
			// process and so older than its mount, which every writer
			// goes through: left by a daemon killed while it held it.
			a.log.Warn("removing a stale lock", "path", lock, "modified", fi.ModTime())
			os.Remove(lock)
		}
		time.Sleep(25 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", lock, err)
	}
	cur, rerr := os.ReadFile(a.abs(rel))
	if rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		f.Close()
		os.Remove(lock)
		return fmt.Errorf("read %s: %w", a.abs(rel), rerr)
	}
	data := build(cur)
	uid, gid, mode := a.owner(ownerDir)
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Chmod(os.FileMode(mode & 0o666))
	}
	if werr == nil && uid >= 0 {
		werr = f.Chown(uid, gid)
	}
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(lock, a.abs(rel))
	}
	if werr != nil {
		os.Remove(lock)
		return fmt.Errorf("write %s: %w", a.abs(rel), werr)
	}
	return nil
}

// deliver writes a message as an MDA does: the body into tmp/, fsync, the
// original mtime, then one rename into new/ or cur/. Readers never see a
// partial message. tmp/ is scratch (never replicated, never watched), so
// the body is written there in the backing tree; the rename, which readers
// and inotify must see, goes through the mount.
func (a *applier) deliver(mbPath string, sub journal.Sub, name, body string, mtime int64) error {
	return a.deliverAs(nil, mbPath, sub, name, body, mtime)
}

// deliverAs is deliver, for op on the bulk path (else nil): its last rename
// is held (holdDelivery).
func (a *applier) deliverAs(op *journal.Op, mbPath string, sub journal.Sub, name, body string, mtime int64) error {
	if err := a.lockMailbox(mbPath); err != nil {
		return err
	}
	base := name
	if i := strings.IndexByte(base, ':'); i >= 0 {
		base = base[:i]
	}
	tmpRel := path.Join(mbPath, "tmp", base)
	if _, err := os.Lstat(a.backing(tmpRel)); err == nil {
		tmpRel += ".mailfs"
		os.Remove(a.backing(tmpRel))
	}
	uid, gid, mode := a.owner(path.Join(mbPath, "cur"))
	f, linked, err := a.stageInto(body, a.backing(tmpRel), os.FileMode(mode&0o666))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			// Off the common path: the op is retried (ENOENT) after this.
			if rerr := a.repairMailboxDirs(mbPath); rerr != nil {
				return rerr
			}
		}
		return fmt.Errorf("deliver into %s: %w", mbPath, err)
	}
	if uid >= 0 && f != nil {
		err = f.Chown(uid, gid)
	} else if uid >= 0 {
		err = os.Lchown(a.backing(tmpRel), uid, gid)
	}
	// On the bulk path the receiver made the staged body (this very
	// inode) durable before the segment was applied: the bytes are on disk
	// before the rename makes them visible. The inode's new owner, mode and
	// times and the rename itself are made durable with the segment's
	// (syncDelivered).
	later := linked && a.bulk
	if err == nil && !later {
		if f == nil {
			f, err = os.OpenFile(a.backing(tmpRel), os.O_WRONLY, 0)
		}
		if err == nil {
			err = f.Sync()
		}
	}
	if f != nil {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil && mtime != 0 {
		t := time.Unix(0, mtime)
		err = os.Chtimes(a.backing(tmpRel), t, t)
	}
	to := path.Join(mbPath, subName(sub), name)
	if err == nil && later && op != nil && a.async && a.behind {
		err = a.holdDelivery(op, tmpRel, to)
	} else if err == nil {
		err = renameFile(a.abs(tmpRel), a.abs(to))
	}
	if err != nil {
		os.Remove(a.backing(tmpRel))
		if errors.Is(err, os.ErrNotExist) {
			if rerr := a.repairMailboxDirs(mbPath); rerr != nil {
				return rerr
			}
		}
		return fmt.Errorf("deliver %s into %s: %w", name, mbPath, err)
	}
	if later {
		a.syncDirs[path.Join(mbPath, subName(sub))] = true
	}
	return nil
}

// renameFile renames a message file through the mount. os.Rename would
// first lstat the target (to refuse a rename over a directory, which the
// kernel refuses anyway for a file): through the mount that is a LOOKUP and
// a GETATTR more for every delivery and flag change applied.
func renameFile(from, to string) error {
	if err := syscall.Rename(from, to); err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// repairMailboxDirs puts back tmp/ or new/ of the mailbox at mbPath when
// the mailbox is there (its cur/ is) but they are not: a local folder
// delete racing the applier's making of the folder can take one of them
// with it, and every retry of a delivery would fail the same way. deliver
// calls it when it finds a directory missing, before the op is retried. A
// mailbox that is not there (renamed or deleted meanwhile) is left alone:
// the retry finds where it went. Each directory is made with one mkdir
// through the mount, so a mailbox that goes meanwhile is not made again.
func (a *applier) repairMailboxDirs(mbPath string) error {
	var st syscall.Stat_t
	if err := syscall.Stat(a.backing(path.Join(mbPath, "cur")), &st); err != nil {
		return nil
	}
	for _, d := range []string{"tmp", "new"} {
		rel := path.Join(mbPath, d)
		if _, err := os.Lstat(a.backing(rel)); !errors.Is(err, os.ErrNotExist) {
			continue
		}
		a.log.Warn("a mailbox directory was missing; made again", "path", rel)
		if err := syscall.Mkdir(a.abs(rel), st.Mode&0o7777); err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("deliver into %s: mkdir %s: %w", mbPath, d, err)
		}
		if err := os.Lchown(a.abs(rel), int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("deliver into %s: %w", mbPath, err)
		}
	}
	return nil
}

// stageInto puts the staged body at tmp (in the backing tree), with mode.
// A body staged on the same file system and not used yet is hard-linked
// there: no copy, and no inode made and freed per message (ext4's inode
// allocator slows down past many recently freed inodes); linked says so,
// and f is nil (its mode set by path: an open and a close less per
// message). Otherwise it is copied, and f is the copy, open for writing.
func (a *applier) stageInto(body, tmp string, mode os.FileMode) (f *os.File, linked bool, err error) {
	if fi, err := os.Stat(body); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink == 1 && os.Link(body, tmp) == nil {
			if err := os.Chmod(tmp, mode); err != nil {
				os.Remove(tmp)
				return nil, false, err
			}
			return nil, true, nil
		}
	}
	src, err := os.Open(body)
	if err != nil {
		return nil, false, fmt.Errorf("staged body: %w", err)
	}
	defer src.Close()
	f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return nil, false, err
	}
	if _, err := io.Copy(f, src); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, false, err
	}
	return f, false, nil
}

// lockMailbox takes Dovecot's dovecot-uidlist.lock of the mailbox (same
// dotlock protocol: exclusive create, stale after 2 minutes), held until
// the segment is applied, so Dovecot never scans a mailbox mid-change.
func (a *applier) lockMailbox(mbPath string) error {
	if _, held := a.locks[mbPath]; held {
		return nil
	}
	lock := a.abs(path.Join(mbPath, "dovecot-uidlist.lock"))
	host, _ := os.Hostname()
	// As Dovecot makes its dotlocks: a temp file holding pid:host, owned
	// like the mailbox from the start, linked to the lock name. A Dovecot
	// waiting for the lock watches it with inotify, which needs read
	// access: a lock owned by root with mode 0600 makes it log an error.
	// The temp file is scratch in the mailbox's tmp/, written in the
	// backing tree and kept for the next lock: creating and deleting an
	// inode per applied op makes ext4's inode allocator scan ever longer
	// past recently deleted inodes. It is touched before each link, since
	// the lock's mtime (the temp's: they are one inode) is what Dovecot
	// judges staleness by. Only the link that takes the lock goes through
	// the mount.
	tmpRel := path.Join(mbPath, "tmp", fmt.Sprintf(".mailfs-lock.%d", os.Getpid()))
	tmp := a.abs(tmpRel)
	if err := a.lockTemp(a.backing(tmpRel), mbPath, fmt.Sprintf("%d:%s", os.Getpid(), host)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // no such mailbox directory (yet): nothing to guard
		}
		return fmt.Errorf("lock %s: %w", lock, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := os.Link(tmp, lock)
		if err == nil {
			if len(a.locks) == 0 {
				a.lockedSince = time.Now()
			}
			a.locks[mbPath] = lock
			return nil
		}
		if errors.Is(err, os.ErrNotExist) {
			// The temp went (Dovecot cleans old files out of tmp/): make
			// it again, or the mailbox itself went.
			if err := a.lockTemp(a.backing(tmpRel), mbPath, fmt.Sprintf("%d:%s", os.Getpid(), host)); err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return nil
				}
				return fmt.Errorf("lock %s: %w", lock, err)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("lock %s: its temp file keeps vanishing", lock)
			}
			continue
		}
		if !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("lock %s: %w", lock, err)
		}
		if fi, serr := os.Stat(lock); serr == nil && time.Since(fi.ModTime()) > 2*time.Minute {
			a.log.Warn("removing a stale dovecot-uidlist.lock", "path", lock, "age", time.Since(fi.ModTime()))
			os.Remove(lock)
			continue
		}
		if deadHolder(lock, host) {
			// As Dovecot decides: a lock of this host whose process is gone
			// is stale at once (a daemon killed while holding it).
			a.log.Warn("removing a dovecot-uidlist.lock whose process is gone", "path", lock)
			os.Remove(lock)
			continue
		}
		if owner, _ := os.ReadFile(lock); string(owner) == fmt.Sprintf("%d:%s", os.Getpid(), host) {
			// Ours, but not held: its directory was renamed while this
			// process held it. Nobody else can remove it.
			a.log.Info("removing a dovecot-uidlist.lock of this process left by a mailbox rename", "path", lock)
			os.Remove(lock)
			continue
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lock %s: held by another process for 30s", lock)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lockTemp makes sure the dotlock temp p exists holding owner and is fresh:
// touched when it is there, else created owned like the mailbox.
func (a *applier) lockTemp(p, mbPath, owner string) error {
	now := time.Now()
	if err := os.Chtimes(p, now, now); err == nil {
		return nil
	}
	os.Remove(p)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if uid, gid, _ := a.owner(mbPath); uid >= 0 {
		err = f.Chown(uid, gid)
	}
	if err == nil {
		_, err = f.WriteString(owner)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(p)
	}
	return err
}

// unlockAll releases the dotlocks taken for a segment.
func (a *applier) unlockAll() {
	clear(a.keywords)
	for mb, lock := range a.locks {
		if err := os.Remove(lock); err != nil && !errors.Is(err, os.ErrNotExist) {
			a.log.Warn("releasing dovecot-uidlist.lock failed", "path", lock, "err", err)
		}
		delete(a.locks, mb)
	}
}

func (a *applier) subscription(ctx context.Context, op *journal.Op) error {
	var (
		st  journal.Stamp
		ok  bool
		err error
	)
	err = a.view(func(v index.PeerView) error {
		_, st, ok, err = v.Subscription(op.Path, op.Name)
		return err
	})
	if err != nil {
		return err
	}
	if ok && journal.StampOf(op).Less(st) {
		return nil // a newer (un)subscribe decided (rule 8)
	}
	names, err := a.store.Subscriptions(op.Path)
	if err != nil {
		return err
	}
	want := op.Kind == journal.Subscribe
	if slices.Contains(names, op.Name) == want {
		return a.meta(ctx, op)
	}
	rel := path.Join(op.Path, "subscriptions")
	if err := a.mkdirAll(op.Path); err != nil {
		return err
	}
	build := func(data []byte) []byte {
		// Decided again under the lock: a local (un)subscribe made since
		// the check above is newer than op and must stay.
		var newer bool
		a.view(func(v index.PeerView) error {
			_, st, ok, err := v.Subscription(op.Path, op.Name)
			newer = err == nil && ok && journal.StampOf(op).Less(st)
			return err
		})
		if newer {
			return data
		}
		var b strings.Builder
		b.WriteString("V\t2\n\n")
		for _, n := range maildir.ParseSubscriptions(data) {
			if n != op.Name {
				b.WriteString(n)
				b.WriteByte('\n')
			}
		}
		if want {
			b.WriteString(op.Name)
			b.WriteByte('\n')
		}
		return []byte(b.String())
	}
	if err := a.mnt.Apply(op, func() error { return a.replaceFile(rel, op.Path, build) }); err != nil {
		return err
	}
	return a.meta(ctx, op)
}

func (a *applier) dirCreate(op *journal.Op) error {
	if op.From != "" {
		if fi, err := os.Lstat(a.abs(op.From)); err == nil && fi.IsDir() {
			if _, err := os.Lstat(a.abs(op.Path)); errors.Is(err, os.ErrNotExist) {
				if err := a.mkdirAll(path.Dir(op.Path)); err != nil {
					return err
				}
				a.unlockAll()
				return a.mnt.Apply(op, func() error { return os.Rename(a.abs(op.From), a.abs(op.Path)) })
			}
		}
	}
	return a.mnt.Apply(op, func() error { return a.mkdirAll(op.Path) })
}

func (a *applier) dirDelete(op *journal.Op) error {
	return a.mnt.Apply(op, func() error {
		err := syscall.Rmdir(a.abs(op.Path))
		switch {
		case err == nil, errors.Is(err, syscall.ENOENT):
			return nil
		case errors.Is(err, syscall.ENOTEMPTY), errors.Is(err, syscall.EEXIST):
			a.log.Info("a directory deleted on a peer still has files here; kept", "path", a.abs(op.Path))
			return nil
		}
		return err
	})
}

// dropUnknownLetters returns flags without the untranslated letters
// (maildir.UnknownLetterPrefix).
func dropUnknownLetters(flags []string) []string {
	var out []string
	for _, f := range flags {
		if !strings.HasPrefix(f, maildir.UnknownLetterPrefix) {
			out = append(out, f)
		}
	}
	return out
}

// deadHolder reports whether the dotlock at p names a process of this host
// ("pid:host", as Dovecot writes them) that no longer exists.
func deadHolder(p, host string) bool {
	b, err := os.ReadFile(p)
	if err != nil {
		return false
	}
	pidStr, h, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	if !ok || h != host {
		return false
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return false
	}
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}
