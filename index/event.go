package index

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/google/uuid"

	"mailfs/journal"
	"mailfs/maildir"
)

// EventKind is the filesystem-level change an Event reports.
type EventKind uint8

// Event kinds.
const (
	EvMkdir           EventKind = iota + 1 // a directory was created at Path
	EvRmdir                                // the directory at Path was removed
	EvRename                               // Path was renamed to NewPath
	EvLink                                 // NewPath was hard-linked to Path
	EvUnlink                               // the file at Path was removed
	EvWrite                                // the file at Path was created or its content changed
	EvTouch                                // the file at Path got a new mtime (utimens)
	EvRescan                               // reconcile found the file at Path as File describes
	EvMissing                              // reconcile found Path gone: mark it missing, journal nothing
	EvApplied                              // every op of Remote.Origin up to Remote.Seq is applied (cursor)
	EvRemoteMeta                           // Remote changes index state only: stamps and tombstones
	EvRekey                                // the mailbox GUID becomes NewGUID (rules 3 and 4)
	EvApplying                             // Remote is applied, its segment not yet: a local op has seen it (index-only)
	EvIntent                               // Intent: a peer's adds whose files may appear before their commits (intent.go)
	EvDropEarlyFlags                       // the early flag changes kept for message Path of mailbox GUID are applied
	EvDropSeenCreates                      // a delete of Deleted that had applied Seen ends the creates of mailbox GUID it deleted (Mailbox.CreatesKept); it becomes NewGUID
	EvMerging                              // mailbox GUID's mail is being moved into mailbox NewGUID (merge.go)
	EvUnrecreate                           // mailbox NewGUID, recreated for deleted GUID's unseen mail and emptied, is forgotten
	EvAbsentAdd                            // Remote adds message Path to mailbox GUID, but came without its body
	EvSweepOrphans                         // up to sweepBatch message records left by deleted mailbox GUID become expunge traces
	EvAbsentAddsTaken                      // Remote, a delete of mailbox GUID, took the mail of the adds it had seen that came without their bodies
	EvDeletedCreate                        // Remote, the create of a mailbox deleted here before it came, is recorded with the delete
)

var eventNames = [...]string{"", "mkdir", "rmdir", "rename", "link", "unlink", "write", "touch", "rescan", "missing",
	"applied", "remote-meta", "rekey", "applying", "intent", "drop-early-flags", "drop-seen-creates", "merging", "unrecreate", "absent-add", "sweep-orphans", "absent-adds-taken", "deleted-create"}

func (k EventKind) String() string {
	if int(k) < len(eventNames) {
		return eventNames[k]
	}
	return "event?"
}

// FileInfo describes the file an event leaves behind.
type FileInfo struct {
	Mode       uint32
	Size       int64
	Mtime      int64 // ns since the epoch
	Content    journal.ContentID
	LinkTarget string
}

// Event is one filesystem-level change, reported after it happened on the
// backing tree. Paths are relative to the maildir root, slash-separated.
type Event struct {
	Kind    EventKind
	Path    string
	NewPath string
	IsDir   bool
	File    FileInfo
	// Data is the new content of a subscriptions or dovecot-keywords file
	// that the event wrote (those are small and parsed, not hashed).
	Data []byte
	// GUID, for mkdir of <mailbox>/cur or a rescan of a mailbox, is the
	// mailbox GUID found in an existing dovecot-uidlist.
	GUID journal.GUID
	// NewGUID is what EvRekey renames GUID to. An EvRekey with Remote is
	// a merge made for that op: a local op from then on has seen it.
	NewGUID journal.GUID
	// Content computes the content ID of the file at the event's target
	// when File.Content is unset and the index does not know it.
	Content func() (journal.ContentID, int64, error)
	// Expect, for EvRekey, is the mailbox the decision saw live at Path
	// (the one a peer's create merges with): when a local change has
	// deleted or moved it since, the event fails with ErrChanged.
	Expect journal.GUID
	// Remote is the peer's op this change carries out (the syncer's
	// applier made it): index state follows as for a local change, but no
	// op is journaled and stamps are the peer op's.
	Remote *journal.Op
	// Intent, for EvIntent, is what the applier is about to apply.
	Intent *Intent
	// Seen, for EvDropSeenCreates, is what the deleting node had applied,
	// and Deleted the mailbox its delete named (Mailbox.CreatesKept).
	Seen    journal.VersionVector
	Deleted journal.GUID
}

func (t *tx) apply(ev Event) error {
	t.remote = ev.Remote
	defer func() { t.remote = nil }()
	if ev.Remote != nil {
		t.s.clock.Observe(ev.Remote.Time)
		if g := remoteMailboxGUID(ev.Remote); !g.IsZero() && ev.Kind != EvRekey && ev.Kind != EvMerging && ev.Kind != EvAbsentAdd && ev.Kind != EvAbsentAddsTaken {
			ev.GUID = g
		}
		if visibleEffect(ev) {
			// A local op made from now on has seen the peer op: what it did
			// is there to be seen (a mailbox, a message).
			if err := t.noteApplying(ev.Remote); err != nil {
				return err
			}
		}
	}
	switch ev.Kind {
	case EvApplied:
		// The segment is applied and durable with this cursor: its intent
		// has served (intent.go).
		if ev.Remote != nil {
			if err := t.clearIntent(ev.Remote.Origin); err != nil {
				return err
			}
		}
		return t.setApplied(ev.Remote)
	case EvIntent:
		return t.putIntent(ev.Intent)
	case EvRemoteMeta:
		return t.remoteMeta(ev.Remote)
	case EvRekey:
		if !ev.Expect.IsZero() {
			if at, err := t.mailboxAt(ev.Path); err != nil || at == nil || at.GUID != ev.Expect {
				if err == nil {
					err = fmt.Errorf("%w: mailbox %s is no longer at %q", ErrChanged, ev.Expect, ev.Path)
				}
				return err
			}
		}
		return t.rekeyMailbox(ev.GUID, ev.NewGUID)
	case EvApplying:
		return nil // noted above
	case EvDropEarlyFlags:
		return t.del(earlyFlagsKey(ev.GUID, ev.Path))
	case EvDropSeenCreates:
		return t.dropSeenCreates(ev.GUID, ev.NewGUID, ev.Deleted, ev.Seen)
	case EvMerging:
		return t.startMerge(ev.GUID, ev.NewGUID)
	case EvUnrecreate:
		return t.unrecreate(ev.GUID, ev.NewGUID)
	case EvAbsentAdd:
		return t.noteAbsentAdd(t.resolve(ev.GUID), ev.Path, ev.Remote)
	case EvSweepOrphans:
		return t.sweepOrphans(ev.GUID)
	case EvAbsentAddsTaken:
		return t.absentAddsTaken(t.resolve(ev.GUID), ev.Remote)
	case EvDeletedCreate:
		return t.noteDeletedCreate(ev.Remote)
	case EvMkdir:
		return t.mkdir(ev)
	case EvRmdir:
		return t.rmdir(ev.Path)
	case EvRename:
		if ev.IsDir {
			return t.renameDir(ev.Path, ev.NewPath)
		}
		return t.renameFile(ev)
	case EvLink:
		return t.arrive(ev.NewPath, ev, ev.Path, false)
	case EvUnlink:
		return t.depart(ev.Path)
	case EvWrite:
		return t.arrive(ev.Path, ev, "", false)
	case EvTouch:
		return t.touch(ev.Path, ev.File.Mtime)
	case EvRescan:
		if ev.IsDir {
			return t.mkdir(ev)
		}
		return t.arrive(ev.Path, ev, "", true)
	case EvMissing:
		return t.missing(ev.Path, ev.IsDir)
	}
	return fmt.Errorf("index: unknown event kind %d", ev.Kind)
}

// visibleEffect reports whether ev, made by the applier for a peer op,
// changes what a client sees: not a scratch file in tmp/ or a lock, which
// come before the effect (a body written before its rename into new/).
func visibleEffect(ev Event) bool {
	switch ev.Kind {
	case EvApplied, EvIntent, EvDropSeenCreates, EvSweepOrphans, EvAbsentAddsTaken, EvDeletedCreate:
		return false
	case EvRekey, EvMerging:
		// A rule-3 merge made for a peer's create: a local delete of the
		// merged mailbox from now on takes that create with it.
		return ev.Remote != nil
	case EvRemoteMeta, EvApplying:
		return true
	}
	if maildir.Classify(ev.Path, ev.IsDir).Kind.Replicated() {
		return true
	}
	return ev.NewPath != "" && maildir.Classify(ev.NewPath, ev.IsDir).Kind.Replicated()
}

func (t *tx) mkdir(ev Event) error {
	c := maildir.Classify(ev.Path, true)
	switch c.Kind {
	case maildir.KindMailboxSubdir:
		if c.Sub != "cur" {
			return nil
		}
		mb, err := t.mailboxAt(c.Mailbox)
		if err != nil {
			return err
		}
		if mb != nil {
			if mb.Missing {
				mb.Missing = false
				return t.putMailbox(mb)
			}
			return nil
		}
		_, err = t.createMailbox(c.Mailbox, ev.GUID, ev.Data)
		return err
	case maildir.KindPlainDir:
		var d dirRec
		ok, err := t.getRec(dirKey(ev.Path), &d)
		if err != nil {
			return err
		}
		if ok {
			if d.Missing {
				d.Missing = false
				return t.putRec(dirKey(ev.Path), &d)
			}
			return nil
		}
		if err := t.putRec(dirKey(ev.Path), &dirRec{Mode: ev.File.Mode & 0o7777}); err != nil {
			return err
		}
		return t.journal(journal.Op{Kind: journal.DirCreate, Path: ev.Path, Mode: ev.File.Mode & 0o7777})
	}
	return nil
}

func (t *tx) createMailbox(path string, guid journal.GUID, keywords []byte) (*mailboxRec, error) {
	if !guid.IsZero() {
		// A GUID already in use (a copied mailbox directory) or deleted
		// before must not be reused: it would merge two mailboxes.
		inUse, err := t.has(mailboxKey(guid))
		if err != nil {
			return nil, err
		}
		var ts tombstone
		dead, err := t.getRec(tombMailboxKey(guid), &ts)
		if err != nil {
			return nil, err
		}
		if r := t.remote; dead && r != nil && r.Kind == journal.MailboxCreate && r.Mailbox == guid && r.Seq != 0 &&
			ts.Seen[r.Origin] < r.Seq {
			// The peer's create of guid, which its delete here had not
			// seen (a rename or a third node's mail made it here first):
			// the nodes that had the create kept the mailbox under guid.
			dead = false
		}
		if inUse || dead {
			guid = journal.GUID{}
		}
	}
	if guid.IsZero() {
		guid = journal.GUID(uuid.New())
	}
	mb := &mailboxRec{GUID: guid, Path: path, Keywords: maildir.ParseKeywords(keywords)}
	seen, err := t.versionVector()
	if err != nil {
		return nil, err
	}
	if err := t.journal(journal.Op{Kind: journal.MailboxCreate, Mailbox: guid, Path: path, Seen: seen}); err != nil {
		return nil, err
	}
	mb.Renamed, mb.RenamedSeq = journal.StampOf(&t.lastOp), t.lastOp.Seq
	mb.Created, mb.CreatedSeq, mb.CreatedPath, mb.CreatedGUID = mb.Renamed, t.lastOp.Seq, path, guid
	mb.CreatedSeen = seen
	t.counts.Mailboxes++
	return mb, t.putMailbox(mb)
}

func (t *tx) deleteMailbox(mb *mailboxRec) error {
	if err := t.del(mailboxKey(mb.GUID)); err != nil {
		return err
	}
	if err := t.del(mailboxPathKey(mb.Path)); err != nil {
		return err
	}
	t.counts.Mailboxes--
	t.counts.Messages -= mb.Messages
	// Message records of the deleted mailbox stay, like tombstones (there
	// is no sweep yet): a peer's concurrent move out of it finds there the
	// flags and stamps the message had here. The orphan mark names them;
	// deleting them in one transaction would not do for 100k messages.
	if err := t.set(orphanKey(mb.GUID), nil); err != nil {
		return err
	}
	seen, err := t.versionVector()
	if err != nil {
		return err
	}
	op := journal.Op{Kind: journal.MailboxDelete, Mailbox: mb.GUID, Path: mb.Path, Seen: seen}
	if err := t.journal(op); err != nil {
		return err
	}
	last := t.lastOp
	ts := &tombstone{Time: last.Time, Origin: last.Origin, Seq: last.Seq, Path: mb.Path, Seen: op.Seen,
		Creates: mailboxOf(mb).Creates(), CreatedPath: mb.CreatedPath}
	if renamed := mb.Renamed; renamed != (journal.Stamp{}) {
		ts.Renamed, ts.RenamedSeq = &renamed, mb.RenamedSeq // an older rename the deleter had not seen does not move Path
	}
	if r := t.remote; r != nil && r.Kind == journal.MailboxDelete && r.Path != "" && r.Path != mb.Path &&
		t.resolve(r.Mailbox) == mb.GUID && r.Seen[mb.Renamed.Origin] >= mb.RenamedSeq {
		// A peer's delete that had seen this mailbox's path here, and a
		// rename of it since that has not arrived yet: where the deleter
		// had it is where mail it had not seen is kept (that rename, seen
		// by the deleter, changes nothing when it comes).
		ts.Path, ts.Renamed, ts.RenamedSeq = r.Path, nil, 0
	}
	return t.putRec(tombMailboxKey(mb.GUID), ts)
}

// sweepBatch is how many message records of a deleted mailbox one
// transaction turns into expunge traces.
const sweepBatch = 512

// sweepOrphans turns up to sweepBatch message records left by deleted
// mailbox g into expunge traces (with the flags and stamps they had): g
// is about to be made again (a create its delete had not seen), and its
// deleted mail must not come back with it.
func (t *tx) sweepOrphans(g journal.GUID) error {
	if live, err := t.has(mailboxKey(g)); err != nil || live {
		return err
	}
	var ts tombstone
	if _, err := t.getRec(tombMailboxKey(g), &ts); err != nil {
		return err
	}
	prefix := messagePrefix(g)
	var keys []string
	err := t.scanKeys(prefix, func(k []byte) error {
		if len(keys) == sweepBatch {
			return errBatchDone
		}
		keys = append(keys, string(k[len(prefix):]))
		return nil
	})
	if err != nil && !errors.Is(err, errBatchDone) {
		return err
	}
	for _, key := range keys {
		rec, err := t.message(g, key)
		if err != nil || rec == nil {
			return err
		}
		if err := t.del(messageKey(g, key)); err != nil {
			return err
		}
		if ok, err := t.has(tombMessageKey(g, key)); err != nil || ok {
			if err != nil {
				return err
			}
			continue
		}
		trace := expungeTrace(ts.Time, ts.Origin, ts.Seq, rec)
		trace.ByMailboxDelete = true
		if err := t.putRec(tombMessageKey(g, key), trace); err != nil {
			return err
		}
	}
	return nil
}

var errBatchDone = errors.New("batch done")

// expungeTrace is the tombstone message rec leaves when the op at
// (time, origin, seq) removes it: what it was (directory, flags and their
// stamps), for a concurrent move that brings it back.
func expungeTrace(time journal.HLC, origin journal.NodeID, seq uint64, rec *messageRec) *tombstone {
	return &tombstone{Time: time, Origin: origin, Seq: seq, AddedOrigin: rec.Added.Origin, AddedSeq: rec.AddedSeq,
		AddedTo: rec.AddedTo, Sub: rec.Sub, Flags: rec.Flags, FlagStamps: rec.FlagStamps}
}

func (t *tx) rmdir(path string) error {
	c := maildir.Classify(path, true)
	switch c.Kind {
	case maildir.KindMailboxSubdir:
		if c.Sub != "cur" {
			return nil
		}
		mb, err := t.mailboxAt(c.Mailbox)
		if err != nil || mb == nil {
			return err
		}
		if into, ok, err := t.mergingInto(mb.GUID); err != nil || ok {
			if err != nil {
				return err
			}
			return t.endMerge(mb, into)
		}
		return t.deleteMailbox(mb)
	case maildir.KindPlainDir:
		ok, err := t.has(dirKey(path))
		if err != nil || !ok {
			return err
		}
		if err := t.del(dirKey(path)); err != nil {
			return err
		}
		return t.journal(journal.Op{Kind: journal.DirDelete, Path: path})
	}
	return nil
}

// renameDir moves a directory subtree. Mailboxes keep their GUIDs: one
// MailboxRename each. A move into Dovecot's trash directory is a delete.
func (t *tx) renameDir(from, to string) error {
	cf, ct := maildir.Classify(from, true), maildir.Classify(to, true)
	if cf.Kind == maildir.KindTrash {
		return nil
	}
	if cf.Kind == maildir.KindMailboxSubdir || ct.Kind == maildir.KindMailboxSubdir {
		// Renaming cur/ itself in or out: the mailbox ends or begins.
		if err := t.rmdir(from); err != nil {
			return err
		}
		return t.mkdir(Event{Kind: EvMkdir, Path: to})
	}
	mailboxes, err := t.mailboxesUnder(from)
	if err != nil {
		return err
	}
	if ct.Kind == maildir.KindTrash {
		for _, mb := range mailboxes {
			if err := t.deleteMailbox(mb); err != nil {
				return err
			}
		}
		if err := t.dropSubtree(from); err != nil {
			return err
		}
		if ok, err := t.has(dirKey(from)); err != nil || !ok {
			return err
		}
		if err := t.del(dirKey(from)); err != nil {
			return err
		}
		return t.journal(journal.Op{Kind: journal.DirDelete, Path: from})
	}
	topIsMailbox := len(mailboxes) > 0 && mailboxes[0].Path == from
	if err := t.rekeySubtree(from, to); err != nil {
		return err
	}
	if !topIsMailbox {
		var d dirRec
		if _, err := t.getRec(dirKey(to), &d); err != nil {
			return err
		}
		if err := t.journal(journal.Op{Kind: journal.DirCreate, Path: to, From: from, Mode: d.Mode}); err != nil {
			return err
		}
	}
	for _, mb := range mailboxes {
		old := mb.Path
		if err := t.del(mailboxPathKey(old)); err != nil {
			return err
		}
		mb.Path = to + strings.TrimPrefix(old, from)
		if err := t.journal(journal.Op{Kind: journal.MailboxRename, Mailbox: mb.GUID, Path: old, NewPath: mb.Path}); err != nil {
			return err
		}
		mb.Renamed, mb.RenamedSeq = journal.StampOf(&t.lastOp), t.lastOp.Seq
		if err := t.putMailbox(mb); err != nil {
			return err
		}
	}
	return nil
}

// mailboxesUnder lists the mailboxes at dir or below it, shallowest first.
func (t *tx) mailboxesUnder(dir string) ([]*mailboxRec, error) {
	var out []*mailboxRec
	add := func(path string) error {
		mb, err := t.mailboxAt(path)
		if err == nil && mb != nil {
			out = append(out, mb)
		}
		return err
	}
	if err := add(dir); err != nil {
		return nil, err
	}
	prefix := mailboxPathKey(dir + "/")
	if dir == "" {
		prefix = mailboxPathKey("")
	}
	err := t.scanKeys(prefix, func(k []byte) error {
		p := string(k[len(pMailboxPath):])
		if p == dir {
			return nil
		}
		return add(p)
	})
	sort.Slice(out, func(i, j int) bool { return len(out[i].Path) < len(out[j].Path) })
	return out, err
}

// rekeySubtree moves the plain dir, plain file, plain-file version and
// subscription records at and below from to the same place below to.
func (t *tx) rekeySubtree(from, to string) error {
	for _, p := range []string{pDir, pFile, pFileReg} {
		if err := t.rekey([]byte(p+from), []byte(p+to), true); err != nil {
			return err
		}
		if err := t.rekey([]byte(p+from+"/"), []byte(p+to+"/"), false); err != nil {
			return err
		}
	}
	if err := t.rekey(subPrefix(from), subPrefix(to), false); err != nil {
		return err
	}
	return t.rekey([]byte(pSubscribed+from+"/"), []byte(pSubscribed+to+"/"), false)
}

func (t *tx) rekey(from, to []byte, exact bool) error {
	move := func(k []byte) error {
		v, ok, err := get(t.txn, k)
		if err != nil || !ok {
			return err
		}
		nk := append(append([]byte(nil), to...), k[len(from):]...)
		if err := t.set(nk, v); err != nil {
			return err
		}
		return t.del(k)
	}
	if exact {
		return move(from)
	}
	return t.scanKeys(from, move)
}

// dropSubtree forgets the plain records at and below dir (it went to trash).
func (t *tx) dropSubtree(dir string) error {
	for _, p := range []string{pFile, pFileReg, pDir, pSubscribed} {
		if err := t.scanKeys([]byte(p+dir+"/"), t.del); err != nil {
			return err
		}
	}
	return t.scanKeys(subPrefix(dir), t.del)
}

func sortStrings(s []string) { sort.Strings(s) }
