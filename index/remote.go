package index

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"

	badger "github.com/dgraph-io/badger/v4"

	"mailfs/journal"
)

// This file holds what the syncer's applier needs from the index: the
// cursors of applied peer ops, index-only effects of peer ops (stamps,
// tombstones, GUID merges), and the reads its merge decisions are made on.

// remoteMailboxGUID is the mailbox GUID a peer op creates a mailbox with
// when carrying it out creates one.
func remoteMailboxGUID(op *journal.Op) journal.GUID {
	switch op.Kind {
	case journal.MessageMove:
		return op.Target
	case journal.MailboxCreate, journal.MailboxRename, journal.MessageAdd:
		return op.Mailbox
	}
	return journal.GUID{}
}

// RecreatedGUID is the GUID of the mailbox that keeps, at the path of
// deleted mailbox g, the mail its deleter had not seen (design §6 rule 4).
// Every node derives the same one.
func RecreatedGUID(g journal.GUID) journal.GUID {
	h := sha256.Sum256(append([]byte("mailfs recreated mailbox\x00"), g[:]...))
	var out journal.GUID
	copy(out[:], h[:16])
	out[6] = out[6]&0x0f | 0x40 // a version 4 UUID, like the others
	out[8] = out[8]&0x3f | 0x80
	return out
}

func (t *tx) setApplied(op *journal.Op) error {
	if op == nil || op.Origin.IsZero() {
		return fmt.Errorf("index: applied cursor without an origin")
	}
	return t.putRec(appliedKey(op.Origin), &appliedRec{Epoch: uint64(op.Mtime), Seq: op.Seq})
}

// noteApplying records that peer op op has taken visible effect (or is
// applied), though the segment it came in is not yet: a local op made from
// now on has seen it (a mailbox deleted here now takes op's message with
// it, and what is left of op finds the mailbox gone).
func (t *tx) noteApplying(op *journal.Op) error {
	if op.Origin.IsZero() || op.Origin == t.s.node {
		return nil
	}
	var a appliedRec
	if _, err := t.getRec(appliedKey(op.Origin), &a); err != nil {
		return err
	}
	if op.Seq <= a.Seq || op.Seq == a.Applying {
		return nil
	}
	a.Applying = op.Seq
	return t.putRec(appliedKey(op.Origin), &a)
}

// AppliedOp builds the event that records every op of origin up to seq (of
// journal epoch epoch) as applied.
func AppliedOp(origin journal.NodeID, epoch, seq uint64) Event {
	return Event{Kind: EvApplied, Remote: &journal.Op{Origin: origin, Seq: seq, Mtime: int64(epoch)}}
}

// versionVector is what this node has applied: its own journal and every
// peer's cursor.
func (t *tx) versionVector() (journal.VersionVector, error) {
	vv := journal.VersionVector{t.s.node: t.seq}
	if t.remote != nil {
		vv = journal.VersionVector{}
	}
	err := t.scanKeys([]byte(pApplied), func(k []byte) error {
		var a appliedRec
		if ok, err := t.getRec(k, &a); err != nil || !ok {
			return err
		}
		vv[journal.NodeID(k[len(pApplied):])] = max(a.Seq, a.Applying)
		return nil
	})
	if t.remote != nil {
		vv = t.remote.Seen
	}
	return vv, err
}

func (t *tx) stampSubscription(dir, name string, subscribed bool, st journal.Stamp) error {
	var old subStampRec
	ok, err := t.getRec(subStampKey(dir, name), &old)
	if err != nil {
		return err
	}
	if ok && st.Less(old.Stamp) {
		return nil
	}
	return t.putRec(subStampKey(dir, name), &subStampRec{Subscribed: subscribed, Stamp: st})
}

// remoteMeta records what a peer op means for the index when nothing on
// disk changes: the stamps of flags it set to values they already had, the
// tombstone of a message or mailbox this node never had, a subscription
// change that lost.
func (t *tx) remoteMeta(op *journal.Op) error {
	if op == nil {
		return fmt.Errorf("index: remote-meta event without an op")
	}
	st := journal.StampOf(op)
	switch op.Kind {
	case journal.MessageAdd, journal.MessageFlags, journal.MessageMove:
		g, key := op.Mailbox, op.Key
		if op.Kind == journal.MessageMove {
			g = op.Target
			if op.NewKey != "" {
				key = op.NewKey
			}
			if err := t.tombMessage(op.Mailbox, op.Key, op); err != nil {
				return err
			}
		}
		g = t.resolve(g)
		rec, err := t.message(g, key)
		if err != nil {
			return err
		}
		if rec != nil && op.Kind == journal.MessageMove {
			if err := t.followMove(t.resolve(op.Mailbox), op.Key, g, key, rec, op.Changed); err != nil {
				return err
			}
		}
		if rec == nil {
			if op.Kind != journal.MessageFlags {
				return nil
			}
			var ts tombstone
			dead, err := t.getRec(tombMessageKey(g, key), &ts)
			if err != nil {
				return err
			}
			if dead {
				if ts.Sub == 0 || ts.MovedTo != nil {
					return nil // expunge beats flags
				}
				// Expunged here, but a concurrent move may still bring it
				// back in its target: the move takes the flags it had when
				// it went, so they learn the changes made elsewhere meanwhile
				// (as on the nodes where the flags came before the expunge).
				return t.putRec(tombMessageKey(g, key), flagTombstone(&ts, op))
			}
			return t.noteEarlyFlags(g, key, op)
		}
		changed := op.Changed
		if op.Kind == journal.MessageAdd {
			changed = op.Flags
		}
		if op.Kind == journal.MessageFlags {
			live, err := t.has(mailboxKey(g))
			if err != nil {
				return err
			}
			if !live {
				// The record of a message deleted here with its mailbox,
				// which no rename on disk updates: a move of it out of
				// there that the delete had not seen takes its flags, so
				// they take this change as on the nodes that still had the
				// message when it came.
				rec.Flags = MergeFlags(rec.Flags, rec.FlagStamps, op, changed)
				if op.Sub == journal.SubCur {
					rec.Sub = journal.SubCur
				}
			}
		}
		stampFlags(rec, changed, st)
		return t.putRec(messageKey(g, key), rec)
	case journal.MessageExpunge:
		return t.tombMessage(t.resolve(op.Mailbox), op.Key, op)
	case journal.MailboxDelete:
		if ok, err := t.has(mailboxKey(op.Mailbox)); err != nil || ok {
			return err
		}
		var old tombstone
		ok, err := t.getRec(tombMailboxKey(op.Mailbox), &old)
		if err != nil {
			return err
		}
		if ok {
			// Deleted by two nodes: mail either deleter had seen is gone
			// (the other keeps only what neither had seen).
			old.Seen = mergeSeen(old.Seen, op.Seen)
			return t.putRec(tombMailboxKey(op.Mailbox), &old)
		}
		ts := &tombstone{Time: op.Time, Origin: op.Origin, Seq: op.Seq, Path: op.Path, Seen: op.Seen}
		if g := t.resolve(op.Mailbox); g != op.Mailbox {
			// Kept under another GUID for mail its deleter had not seen:
			// the creates that delete had seen went with it, and so does a
			// create made at their path concurrently that the delete had
			// seen too, when it arrives here later (rule 3).
			var mb mailboxRec
			ok, err := t.getRec(mailboxKey(g), &mb)
			if err != nil {
				return err
			}
			for _, c := range mailboxOf(&mb).Creates() {
				if ok && (op.Seen[c.Stamp.Origin] >= c.Seq || (c.Stamp.Origin == op.Origin && c.Seq < op.Seq)) {
					ts.Creates, ts.CreatedPath = append(ts.Creates, c), mb.CreatedPath
				}
			}
		}
		return t.putRec(tombMailboxKey(op.Mailbox), ts)
	case journal.Subscribe, journal.Unsubscribe:
		return t.stampSubscription(op.Path, op.Name, op.Kind == journal.Subscribe, st)
	case journal.MailboxCreate:
		// A mailbox made here by an op that came before its create (a
		// rename, mail from a third node) learns its create now: where and
		// by whom it was created decides which same-path creates are one
		// mailbox with it (rule 3), as on the nodes that had the create.
		if op.Seq == 0 {
			return nil
		}
		var mb mailboxRec
		g := t.resolve(op.Mailbox)
		ok, err := t.getRec(mailboxKey(g), &mb)
		if err != nil || !ok {
			return err
		}
		if mb.CreatedSeq != 0 || g != op.Mailbox {
			return t.noteMergedCreate(&mb, op)
		}
		if mb.Renamed == mb.Created && mb.Path == mb.CreatedPath {
			// Not renamed since it was made here: that making was no
			// rename, so the create dates its path (a rename of it from
			// before the op that made it here must still win). A mailbox
			// made for a rename (at the rename's old path, then moved) has
			// that rename's stamp, and keeps it.
			mb.Renamed, mb.RenamedSeq = st, op.Seq
		}
		mb.Created, mb.CreatedSeq, mb.CreatedPath, mb.CreatedSeen = st, op.Seq, op.Path, op.Seen
		if mb.CreatedGUID.IsZero() {
			mb.CreatedGUID = op.Mailbox
		}
		return t.putRec(mailboxKey(op.Mailbox), &mb)
	case journal.FileWrite, journal.FileDelete:
		return t.recordFileOp(op)
	case journal.MailboxRename:
		// A rename of a mailbox deleted here by a node that had not seen
		// it: the nodes that renamed it before the delete keep its unseen
		// mail at the new path, so the mailbox recreated here for that mail
		// goes there too.
		if ok, err := t.has(mailboxKey(t.resolve(op.Mailbox))); err != nil || ok {
			return err
		}
		var ts tombstone
		ok, err := t.getRec(tombMailboxKey(op.Mailbox), &ts)
		if err != nil || !ok || ts.Seen[op.Origin] >= op.Seq || (ts.Renamed != nil && st.Less(*ts.Renamed)) {
			return err
		}
		ts.Path, ts.Renamed, ts.RenamedSeq = op.NewPath, &st, op.Seq
		return t.putRec(tombMailboxKey(op.Mailbox), &ts)
	}
	return nil
}

// noteMergedCreate records op, a peer's create merged into mailbox mb by
// rule 3 (its GUID an alias of mb's now, or mb rekeyed to it), unless it
// is mb's own create or known already.
func (t *tx) noteMergedCreate(mb *mailboxRec, op *journal.Op) error {
	if (mb.Created.Origin == op.Origin && mb.CreatedSeq == op.Seq) || mb.CreatedGUID.IsZero() || mb.CreatedGUID == op.Mailbox {
		// Its own create, or a record from before CreatedGUID was kept.
		return nil
	}
	for _, c := range mb.MergedCreates {
		if c.Stamp.Origin == op.Origin && c.Seq == op.Seq {
			return nil
		}
	}
	mb.MergedCreates = append(mb.MergedCreates, CreateRef{GUID: op.Mailbox, Stamp: journal.StampOf(op), Seq: op.Seq, Seen: op.Seen})
	return t.putMailbox(mb)
}

// dropSeenCreates applies to mailbox g a delete of mailbox deleted whose
// node had applied seen, where some of g's creates (rule 3 merged several)
// outlive it (Mailbox.CreatesKept: those it had not seen, and those that
// were another mailbox on the deleter): the mailbox stays, as those
// creates make it on the nodes where they arrive
// after the delete, under the GUID they give it there, survivor (the
// highest of theirs and, when mail the deleter had not seen is kept, the
// GUID the deleter keeps that mail under, rule 4).
func (t *tx) dropSeenCreates(g, survivor, deleted journal.GUID, seen journal.VersionVector) error {
	var mb mailboxRec
	ok, err := t.getRec(mailboxKey(g), &mb)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("index: delete of the seen creates of mailbox %s: no such mailbox", g)
	}
	if survivor.IsZero() {
		return fmt.Errorf("index: delete of the seen creates of mailbox %s: no surviving GUID", g)
	}
	kept := mailboxOf(&mb).CreatesKept(deleted, seen)
	if len(kept) == 0 {
		return fmt.Errorf("index: delete of the seen creates of mailbox %s: the delete ends every create", g)
	}
	// The mailbox's create is the surviving GUID's, or any that survives.
	own := 0
	for i, c := range kept {
		if c.GUID == survivor {
			own = i
		}
	}
	c := kept[own]
	mb.Created, mb.CreatedSeq, mb.CreatedGUID, mb.CreatedSeen = c.Stamp, c.Seq, c.GUID, c.Seen
	mb.MergedCreates = append(append([]CreateRef(nil), kept[:own]...), kept[own+1:]...)
	if err := t.putMailbox(&mb); err != nil {
		return err
	}
	return t.rekeyMailbox(g, survivor)
}

// moveUnder moves each record under prefix src to the same key under
// prefix dst, unless dst has one there: then the record under src goes
// (the one under dst stands). It returns how many moved.
func (t *tx) moveUnder(src, dst []byte) (int, error) {
	moved := 0
	err := t.scanKeys(src, func(k []byte) error {
		nk := append(append([]byte(nil), dst...), k[len(src):]...)
		taken, err := t.has(nk)
		if err != nil || taken {
			if err == nil {
				err = t.del(k)
			}
			return err
		}
		v, _, err := get(t.txn, k)
		if err != nil {
			return err
		}
		if err := t.set(nk, v); err != nil {
			return err
		}
		moved++
		return t.del(k)
	})
	return moved, err
}

// mergeSeen is the pointwise maximum of two version vectors.
func mergeSeen(a, b journal.VersionVector) journal.VersionVector {
	out := journal.VersionVector{}
	for n, s := range a {
		out[n] = s
	}
	for n, s := range b {
		if s > out[n] {
			out[n] = s
		}
	}
	return out
}

// noteEarlyFlags keeps the flag changes of op for a message not here yet.
func (t *tx) noteEarlyFlags(g journal.GUID, key string, op *journal.Op) error {
	var ef earlyFlagsRec
	if _, err := t.getRec(earlyFlagsKey(g, key), &ef); err != nil {
		return err
	}
	if ef.Flags == nil {
		ef.Flags = map[string]FlagChange{}
	}
	st := journal.StampOf(op)
	ef.Cur = ef.Cur || op.Sub == journal.SubCur
	for _, f := range op.Changed {
		if old, ok := ef.Flags[f]; ok && st.Less(old.Stamp) {
			continue
		}
		present := false
		for _, g := range op.Flags {
			present = present || g == f
		}
		ef.Flags[f] = FlagChange{Present: present, Stamp: st}
	}
	return t.putRec(earlyFlagsKey(g, key), &ef)
}

// EarlyFlagsUnder is EarlyFlags of the changes kept under the GUID g
// itself, not the mailbox it names now.
func (v PeerView) EarlyFlagsUnder(g journal.GUID, key string) (map[string]FlagChange, bool, error) {
	var ef earlyFlagsRec
	_, err := v.t.getRec(earlyFlagsKey(g, key), &ef)
	return ef.Flags, ef.Cur, err
}

// takeEarlyFlags merges the early flag changes of a message that just
// arrived into its stamps, and forgets them.
func (t *tx) takeEarlyFlags(g journal.GUID, key string, rec *messageRec) error {
	if t.remote == nil {
		return t.takeEarlyFlagsOf(g, key, rec)
	}
	if raw := remoteMailboxGUID(t.remote); !raw.IsZero() && raw != g {
		// The peer's op names a mailbox this one stands for (recreated for
		// a deleted one's unseen mail, or merged): flag changes that came
		// first were kept under the name the peer used.
		if err := t.takeEarlyFlagsOf(raw, key, rec); err != nil {
			return err
		}
	}
	return t.takeEarlyFlagsOf(g, key, rec)
}

func (t *tx) takeEarlyFlagsOf(g journal.GUID, key string, rec *messageRec) error {
	var ef earlyFlagsRec
	ok, err := t.getRec(earlyFlagsKey(g, key), &ef)
	if err != nil || !ok {
		return err
	}
	for f, c := range ef.Flags {
		stampFlags(rec, []string{f}, c.Stamp)
	}
	return t.del(earlyFlagsKey(g, key))
}

// EarlyFlags returns the flag changes that arrived before message key of
// mailbox g, and whether one of them had it in cur/.
func (v PeerView) EarlyFlags(g journal.GUID, key string) (map[string]FlagChange, bool, error) {
	var ef earlyFlagsRec
	_, err := v.t.getRec(earlyFlagsKey(v.t.resolve(g), key), &ef)
	return ef.Flags, ef.Cur, err
}

func (t *tx) tombMessage(g journal.GUID, key string, op *journal.Op) error {
	rec, err := t.message(g, key)
	if err != nil {
		return err
	}
	if rec != nil {
		// Still here, unless only as the record of a message deleted with
		// its mailbox: a move of it from there leaves a trace pointing at
		// the moved message at once (one without a target would read as
		// an expunge wherever the mailbox's GUIDs meet again), so flag
		// changes made to it in the source follow it, as on the nodes
		// that moved it; and the moved message takes the stamps of the
		// flags the move did not change, as followMove gives it.
		live, err := t.has(mailboxKey(g))
		if err != nil || live || op.Kind != journal.MessageMove {
			return err
		}
		if ok, err := t.has(tombMessageKey(g, key)); err != nil || ok {
			return err
		}
		to, toKey := t.resolve(op.Target), op.Key
		if op.NewKey != "" {
			toKey = op.NewKey
		}
		if moved, err := t.message(to, toKey); err != nil {
			return err
		} else if moved != nil {
			carryFlagStamps(moved, rec.FlagStamps, op.Changed)
			if err := t.putRec(messageKey(to, toKey), moved); err != nil {
				return err
			}
		}
		return t.putRec(tombMessageKey(g, key), &tombstone{Time: op.Time, Origin: op.Origin, Seq: op.Seq,
			AddedOrigin: rec.Added.Origin, AddedSeq: rec.AddedSeq, MovedTo: &to, MovedKey: toKey})
	}
	var prev tombstone
	if ok, err := t.getRec(tombMessageKey(g, key), &prev); err != nil {
		return err
	} else if ok {
		if op.Kind == journal.MessageExpunge && prev.MovedTo != nil && !prev.Followed {
			// Moved away before this expunge came, which had not seen the
			// move (its node had the message here): the move wins, and the
			// key is expunged here as on the expunger's node, where the
			// move followed the expunge (followMove). A move back meets it.
			// The trace becomes the expunge's, as the expunger's is (a
			// move back made knowing it names it: see ExpungedBy).
			prev.Followed = true
			prev.Time, prev.Origin, prev.Seq = op.Time, op.Origin, op.Seq
			return t.putRec(tombMessageKey(g, key), &prev)
		}
		return nil
	}
	ts := &tombstone{Time: op.Time, Origin: op.Origin, Seq: op.Seq}
	var absent absentAddRec
	if ok, err := t.getRec(absentAddKey(g, key), &absent); err != nil {
		return err
	} else if ok {
		// The add came without its body: the mail was there all the same.
		ts.AddedOrigin, ts.AddedSeq = absent.Origin, absent.Seq
		if err := t.del(absentAddKey(g, key)); err != nil {
			return err
		}
	}
	if op.Kind == journal.MessageMove {
		to := t.resolve(op.Target)
		ts.MovedTo, ts.MovedKey = &to, op.Key
		if op.NewKey != "" {
			ts.MovedKey = op.NewKey
		}
		ts.MoverSeen = op.Seen
	}
	return t.putRec(tombMessageKey(g, key), ts)
}

// noteDeletedCreate records op, the create of a mailbox deleted here by a
// delete that had seen it but came first (so the tombstone has no creates
// yet): which creates made at its path were one mailbox with it (rule 3)
// is decided by it, for its renames that arrive later as for the others.
func (t *tx) noteDeletedCreate(op *journal.Op) error {
	if op == nil || op.Kind != journal.MailboxCreate || op.Seq == 0 {
		return fmt.Errorf("index: deleted create without its create op")
	}
	var ts tombstone
	ok, err := t.getRec(tombMailboxKey(op.Mailbox), &ts)
	if err != nil || !ok || len(ts.Creates) > 0 {
		return err
	}
	ts.Creates = []CreateRef{{GUID: op.Mailbox, Stamp: journal.StampOf(op), Seq: op.Seq, Seen: op.Seen}}
	if ts.CreatedPath == "" {
		ts.CreatedPath = op.Path
	}
	return t.putRec(tombMailboxKey(op.Mailbox), &ts)
}

// MovedAwayKnowing reports whether message key left mailbox g here by a
// move whose mover had applied op (origin, seq) — the move arrived before
// the message did — and where that move took it. A move of op's that puts
// the message into g is then over: the message had already moved on.
func (v PeerView) MovedAwayKnowing(g journal.GUID, key string, origin journal.NodeID, seq uint64) (journal.GUID, bool, error) {
	var ts tombstone
	ok, err := v.t.getRec(tombMessageKey(v.t.resolve(g), key), &ts)
	if err != nil || !ok || ts.MovedTo == nil || ts.Followed || seq == 0 || ts.MoverSeen[origin] < seq {
		return journal.GUID{}, false, err
	}
	return v.t.resolve(*ts.MovedTo), true, nil
}

// unrecreate forgets mailbox recreated, made for mail a delete of deleted
// had not seen and emptied by a later delete of deleted: it was part of
// deleted, so its tombstone and deleted's alias to it go, and mail
// neither delete had seen, arriving later, finds deleted's tombstone and
// recreates it again, under the same GUID.
func (t *tx) unrecreate(deleted, recreated journal.GUID) error {
	if ok, err := t.has(mailboxKey(recreated)); err != nil || ok {
		if err == nil {
			err = fmt.Errorf("index: forget recreated mailbox %s: it is still here", recreated)
		}
		return err
	}
	// The last hop of deleted's aliases, the one to recreated, goes.
	for g, i := deleted, 0; i < 8; i++ {
		b, ok, err := get(t.txn, aliasKey(g))
		if err != nil || !ok || len(b) != 16 {
			return err
		}
		if next := journal.GUID(b); next == recreated {
			if err := t.del(aliasKey(g)); err != nil {
				return err
			}
			break
		} else {
			g = next
		}
	}
	return t.del(tombMailboxKey(recreated))
}

// noteAbsentAdd keeps op, a peer's add of message key to mailbox g that
// came without its body, until the op that says where the message went
// arrives (tombMessage).
func (t *tx) noteAbsentAdd(g journal.GUID, key string, op *journal.Op) error {
	if op == nil || op.Kind != journal.MessageAdd || key == "" {
		return fmt.Errorf("index: absent add without its op")
	}
	if ok, err := t.has(tombMessageKey(g, key)); err != nil || ok {
		return err // where it went is known already
	}
	return t.putRec(absentAddKey(g, key), &absentAddRec{Origin: op.Origin, Seq: op.Seq})
}

// absentAddsTaken ends the adds to mailbox g that came without their
// bodies and that del, a delete of g, had seen: the mail went with the
// mailbox (on its origin, or on the deleter, where it was when the delete
// took it), which is the later op those adds waited for. Each becomes an
// expunge trace of del's, so a delete that had not seen the add knows
// another delete of the mailbox took it (tombstone.ByMailboxDelete).
func (t *tx) absentAddsTaken(g journal.GUID, del *journal.Op) error {
	if del == nil || del.Kind != journal.MailboxDelete {
		return fmt.Errorf("index: absent adds taken without a mailbox delete")
	}
	prefix := append([]byte(pAbsentAdd), g[:]...)
	return t.scanKeys(prefix, func(k []byte) error {
		var a absentAddRec
		if ok, err := t.getRec(k, &a); err != nil || !ok {
			return err
		}
		if del.Seen[a.Origin] < a.Seq {
			return nil // mail the delete had not seen: it keeps the mailbox (rule 4)
		}
		key := string(k[len(prefix):])
		if err := t.del(k); err != nil {
			return err
		}
		if ok, err := t.has(tombMessageKey(g, key)); err != nil || ok {
			return err
		}
		return t.putRec(tombMessageKey(g, key), &tombstone{Time: del.Time, Origin: del.Origin, Seq: del.Seq,
			AddedOrigin: a.Origin, AddedSeq: a.Seq, ByMailboxDelete: true})
	})
}

// resolve follows the alias of a mailbox GUID merged into another.
func (t *tx) resolve(g journal.GUID) journal.GUID {
	for i := 0; i < 8; i++ {
		b, ok, err := get(t.txn, aliasKey(g))
		if err != nil || !ok || len(b) != 16 {
			return g
		}
		g = journal.GUID(b)
	}
	return g
}

// rekeyMailbox gives mailbox from the GUID to: its record, its messages
// and their tombstones move, and from becomes an alias of to, so peer ops
// that name from still find it.
func (t *tx) rekeyMailbox(from, to journal.GUID) error {
	if from == to {
		return nil
	}
	var mb mailboxRec
	ok, err := t.getRec(mailboxKey(from), &mb)
	if err != nil {
		return err
	}
	if !ok {
		// Nothing here by that GUID: it only becomes a name of to. The
		// traces of ops that named it before (an expunge of mail that has
		// not arrived yet, an add that came without its body) are to's now,
		// or that mail, arriving under either name, would come back.
		for _, pre := range []string{pTombMessage, pAbsentAdd} {
			if _, err := t.moveUnder(append([]byte(pre), from[:]...), append([]byte(pre), to[:]...)); err != nil {
				return err
			}
		}
		return t.set(aliasKey(from), to[:])
	}
	if ok, err := t.has(mailboxKey(to)); err != nil || ok {
		if err == nil {
			err = fmt.Errorf("index: rekey mailbox %s: %s is in use", from, to)
		}
		return err
	}
	for _, p := range [][2][]byte{{messagePrefix(from), messagePrefix(to)},
		{append([]byte(pTombMessage), from[:]...), append([]byte(pTombMessage), to[:]...)},
		{append([]byte(pAbsentAdd), from[:]...), append([]byte(pAbsentAdd), to[:]...)}} {
		if err := t.rekey(p[0], p[1], false); err != nil {
			return err
		}
	}
	if err := t.del(mailboxKey(from)); err != nil {
		return err
	}
	if err := t.del(aliasKey(to)); err != nil { // to is a name of its own again
		return err
	}
	mb.GUID = to
	if err := t.putMailbox(&mb); err != nil {
		return err
	}
	return t.set(aliasKey(from), to[:])
}

// Applied returns how far the ops of origin are applied here: the journal
// epoch of origin they came from and the highest seq.
func (s *Store) Applied(origin journal.NodeID) (epoch, seq uint64, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		t := &tx{s: s, txn: txn}
		var a appliedRec
		ok, err := t.getRec(appliedKey(origin), &a)
		if ok {
			epoch, seq = a.Epoch, a.Seq
		}
		return err
	})
	return epoch, seq, err
}

// Tombstone is a delete record.
type Tombstone struct {
	Stamp journal.Stamp
	Seq   uint64
	Path  string
	Seen  journal.VersionVector
	// Creates and CreatedPath: a mailbox's creates, where they were made
	// (kept for mailboxes deleted here).
	Creates     []CreateRef
	CreatedPath string
	// Renamed and RenamedSeq: the rename that had taken it to Path, if any.
	Renamed    journal.Stamp
	RenamedSeq uint64
}

// PeerView is a read-only snapshot of the index for the syncer's merge
// decisions.
type PeerView struct{ t *tx }

// View runs fn on a consistent snapshot of the index.
func (s *Store) View(fn func(v PeerView) error) error {
	return s.db.View(func(txn *badger.Txn) error { return fn(PeerView{t: &tx{s: s, txn: txn}}) })
}

// Resolve follows the alias of a mailbox GUID merged into another.
func (v PeerView) Resolve(g journal.GUID) journal.GUID { return v.t.resolve(g) }

// Mailbox returns the live mailbox g (after aliases).
func (v PeerView) Mailbox(g journal.GUID) (Mailbox, bool, error) {
	var mb mailboxRec
	ok, err := v.t.getRec(mailboxKey(v.t.resolve(g)), &mb)
	if err != nil || !ok {
		return Mailbox{}, false, err
	}
	return mailboxOf(&mb), true, nil
}

// HasRecordsOf reports whether message records are kept under g itself
// (not the mailbox g is a name of): a deleted mailbox's, until swept.
func (v PeerView) HasRecordsOf(g journal.GUID) (bool, error) {
	found := false
	err := v.t.scanKeys(messagePrefix(g), func([]byte) error {
		found = true
		return errBatchDone
	})
	if errors.Is(err, errBatchDone) {
		err = nil
	}
	return found, err
}

// MailboxAt returns the live mailbox at path.
func (v PeerView) MailboxAt(path string) (Mailbox, bool, error) {
	mb, err := v.t.mailboxAt(path)
	if err != nil || mb == nil {
		return Mailbox{}, false, err
	}
	return mailboxOf(mb), true, nil
}

// MailboxTombstone returns the delete record of mailbox g.
func (v PeerView) MailboxTombstone(g journal.GUID) (Tombstone, bool, error) {
	var ts tombstone
	ok, err := v.t.getRec(tombMailboxKey(g), &ts)
	return tombstoneOf(&ts), ok, err
}

func tombstoneOf(ts *tombstone) Tombstone {
	out := Tombstone{Stamp: journal.Stamp{Time: ts.Time, Origin: ts.Origin}, Seq: ts.Seq, Path: ts.Path, Seen: ts.Seen,
		Creates: ts.Creates, CreatedPath: ts.CreatedPath}
	if ts.Renamed != nil {
		out.Renamed, out.RenamedSeq = *ts.Renamed, ts.RenamedSeq
	}
	return out
}

// ExpungedLive calls fn for each message of mailbox g that has an expunge
// trace too: an expunge that reached this node under another GUID of the
// mailbox (before a rule-3 merge or rule-4 rekey made the two one) and
// whose message is here under this one. The expunge wins: it was made
// after the add, by a node that had the message.
func (v PeerView) ExpungedLive(g journal.GUID, fn func(m Message, expunge journal.Op) error) error {
	g = v.t.resolve(g)
	prefix := messagePrefix(g)
	return v.t.scanKeys(prefix, func(k []byte) error {
		key := string(k[len(prefix):])
		var ts tombstone
		if ok, err := v.t.getRec(tombMessageKey(g, key), &ts); err != nil || !ok || ts.MovedTo != nil {
			return err
		}
		m, ok, err := v.Message(g, key)
		if err != nil || !ok {
			return err
		}
		return fn(m, journal.Op{Kind: journal.MessageExpunge, Origin: ts.Origin, Seq: ts.Seq, Time: ts.Time, Mailbox: g, Key: key})
	})
}

// DeletedCreatedAt lists the mailboxes deleted here that were created at
// path, by their GUID, with no alias (not merged into another since).
func (v PeerView) DeletedCreatedAt(path string) (map[journal.GUID]Tombstone, error) {
	return v.mailboxTombstones(func(g journal.GUID, ts *tombstone) bool {
		return ts.CreatedPath == path && v.t.resolve(g) == g
	})
}

// TombstonesCreatedAt lists every mailbox deleted here that was created
// at path, by its GUID, whether or not that GUID names a live mailbox now
// (one kept for mail its deleter had not seen).
func (v PeerView) TombstonesCreatedAt(path string) (map[journal.GUID]Tombstone, error) {
	return v.mailboxTombstones(func(_ journal.GUID, ts *tombstone) bool { return ts.CreatedPath == path })
}

// mailboxTombstones lists the mailbox tombstones that keep says to.
func (v PeerView) mailboxTombstones(keep func(g journal.GUID, ts *tombstone) bool) (map[journal.GUID]Tombstone, error) {
	out := map[journal.GUID]Tombstone{}
	err := v.t.scanKeys([]byte(pTombMailbox), func(k []byte) error {
		var ts tombstone
		if ok, err := v.t.getRec(k, &ts); err != nil || !ok {
			return err
		}
		if g := journal.GUID(k[len(pTombMailbox):]); keep(g, &ts) {
			out[g] = tombstoneOf(&ts)
		}
		return nil
	})
	return out, err
}

// KeptDeletedAt lists the mailboxes deleted at path (by their deleters'
// paths) whose GUIDs now name a live mailbox: one recreated, or kept, for
// mail their deleters had not seen (design §6 rule 4), wherever renames
// have taken it since.
func (v PeerView) KeptDeletedAt(path string) (map[journal.GUID]Tombstone, error) {
	return v.mailboxTombstones(func(g journal.GUID, ts *tombstone) bool {
		return ts.Path == path && v.t.resolve(g) != g
	})
}

// Message returns message key of mailbox g (after aliases).
func (v PeerView) Message(g journal.GUID, key string) (Message, bool, error) {
	rec, err := v.t.message(v.t.resolve(g), key)
	if err != nil || rec == nil {
		return Message{}, false, err
	}
	return Message{Key: key, Name: rec.Name, Sub: rec.Sub, Flags: rec.Flags, Mtime: rec.Mtime, Size: rec.Size,
		Content: rec.Content, Missing: rec.Missing, Arrived: rec.Arrived, Added: rec.Added, AddedSeq: rec.AddedSeq,
		AddedTo: rec.AddedTo, FlagStamps: rec.FlagStamps, OverExpunge: rec.Over}, true, nil
}

// MessageExpunged reports whether message key of mailbox g has a tombstone.
// MovedTo says where message key of mailbox g went when it was moved away.
func (v PeerView) MovedTo(g journal.GUID, key string) (journal.GUID, string, bool, error) {
	var ts tombstone
	ok, err := v.t.getRec(tombMessageKey(v.t.resolve(g), key), &ts)
	if err != nil || !ok || ts.MovedTo == nil {
		return journal.GUID{}, "", false, err
	}
	return v.t.resolve(*ts.MovedTo), ts.MovedKey, true, nil
}

// MovedAway reports whether message key of mailbox g left it by a move
// (its trace here is that move's, not an expunge's, even one a concurrent
// move followed elsewhere).
func (v PeerView) MovedAway(g journal.GUID, key string) (bool, error) {
	var ts tombstone
	ok, err := v.t.getRec(tombMessageKey(v.t.resolve(g), key), &ts)
	return ok && ts.MovedTo != nil && !ts.Followed, err
}

// ExpungedBy returns the op (origin and seq) whose expunge of message key
// of mailbox g left its trace here, if the trace is an expunge's (one a
// concurrent move followed elsewhere included).
func (v PeerView) ExpungedBy(g journal.GUID, key string) (journal.NodeID, uint64, bool, error) {
	var ts tombstone
	ok, err := v.t.getRec(tombMessageKey(v.t.resolve(g), key), &ts)
	if err != nil || !ok || (ts.MovedTo != nil && !ts.Followed) {
		return journal.NodeID{}, 0, false, err
	}
	return ts.Origin, ts.Seq, true, nil
}

// ExpungedAs returns what message key of mailbox g was (directory, flags
// and their stamps) when it was expunged here, if it was.
func (v PeerView) ExpungedAs(g journal.GUID, key string) (Message, bool, error) {
	var ts tombstone
	ok, err := v.t.getRec(tombMessageKey(v.t.resolve(g), key), &ts)
	if err != nil || !ok || ts.MovedTo != nil || ts.Sub == 0 {
		return Message{}, false, err // not expunged here (or before this was recorded)
	}
	return Message{Key: key, Sub: ts.Sub, Flags: ts.Flags, FlagStamps: ts.FlagStamps}, true, nil
}

// ExpungedUnseen reports whether mailbox g had a message, expunged or
// moved away since (not by a delete of g), whose add the version vector
// seen does not include: a delete with seen had not seen that mail, and on
// its deleter the mail arrives (and leaves) after the delete, in the
// mailbox recreated for it, which stays.
func (v PeerView) ExpungedUnseen(g journal.GUID, seen journal.VersionVector) (bool, error) {
	found := false
	err := v.ExpungedUnseenNamed(g, seen, func(_ journal.GUID, byMailboxDelete bool) { found = found || !byMailboxDelete })
	if err != nil || found {
		return found, err
	}
	return v.AbsentAddUnseen(g, seen)
}

// AbsentAddUnseen reports whether mailbox g has an add that came without
// its body (noteAbsentAdd) and that the version vector seen does not
// include.
func (v PeerView) AbsentAddUnseen(g journal.GUID, seen journal.VersionVector) (bool, error) {
	return v.absentAdd(g, func(a absentAddRec) bool { return seen[a.Origin] < a.Seq })
}

// AbsentAddSeen reports whether mailbox g has an add that came without its
// body and that the version vector seen includes (one a delete with seen
// takes: absentAddsTaken).
func (v PeerView) AbsentAddSeen(g journal.GUID, seen journal.VersionVector) (bool, error) {
	return v.absentAdd(g, func(a absentAddRec) bool { return seen[a.Origin] >= a.Seq })
}

func (v PeerView) absentAdd(g journal.GUID, match func(absentAddRec) bool) (bool, error) {
	g = v.t.resolve(g)
	found := false
	err := v.t.scanKeys(append([]byte(pAbsentAdd), g[:]...), func(k []byte) error {
		var a absentAddRec
		if ok, err := v.t.getRec(k, &a); err != nil || !ok || found {
			return err
		}
		found = match(a)
		return nil
	})
	return found, err
}

// ExpungedUnseenNamed calls fn with the mailbox GUID that the add named (g
// itself where the trace predates AddedTo) of every message of mailbox g
// expunged here whose add seen had not seen, and whether a delete of the
// mailbox removed it (tombstone.ByMailboxDelete).
func (v PeerView) ExpungedUnseenNamed(g journal.GUID, seen journal.VersionVector, fn func(addedTo journal.GUID, byMailboxDelete bool)) error {
	g = v.t.resolve(g)
	prefix := append([]byte(pTombMessage), g[:]...)
	return v.t.scanKeys(prefix, func(k []byte) error {
		var ts tombstone
		if ok, err := v.t.getRec(k, &ts); err != nil || !ok {
			return err
		}
		if ts.AddedSeq != 0 && seen[ts.AddedOrigin] < ts.AddedSeq {
			to := ts.AddedTo
			if to.IsZero() {
				to = g
			}
			fn(to, ts.ByMailboxDelete)
		}
		return nil
	})
}

func (v PeerView) MessageExpunged(g journal.GUID, key string) (bool, error) {
	return v.t.has(tombMessageKey(v.t.resolve(g), key))
}

// Messages calls fn for every message of mailbox g.
func (v PeerView) Messages(g journal.GUID, fn func(Message) error) error {
	g = v.t.resolve(g)
	prefix := messagePrefix(g)
	return v.t.scanKeys(prefix, func(k []byte) error {
		m, ok, err := v.Message(g, string(k[len(prefix):]))
		if err != nil || !ok {
			return err
		}
		return fn(m)
	})
}

// Subscription returns the newest subscribe or unsubscribe of name in the
// subscriptions file of dir.
func (v PeerView) Subscription(dir, name string) (subscribed bool, st journal.Stamp, ok bool, err error) {
	var r subStampRec
	ok, err = v.t.getRec(subStampKey(dir, name), &r)
	return r.Subscribed, r.Stamp, ok, err
}

// File is a plain file as the index knows it.
type File struct {
	Mode       uint32
	Mtime      int64
	Size       int64
	Content    journal.ContentID
	LinkTarget string
	Stamp      journal.Stamp
	Seq        uint64
}

// File returns the plain file at path.
func (v PeerView) File(path string) (File, bool, error) {
	var f fileRec
	ok, err := v.t.getRec(fileKey(path), &f)
	if err != nil || !ok || f.Missing {
		return File{}, false, err
	}
	return fileOf(&f), true, nil
}

// fileOf is what queries show of a plain file's record.
func fileOf(f *fileRec) File {
	return File{Mode: f.Mode, Mtime: f.Mtime, Size: f.Size, Content: f.Content, LinkTarget: f.LinkTarget, Stamp: f.Stamp,
		Seq: f.Seq}
}

// DirKnown reports whether the plain directory path is in the index.
func (v PeerView) DirKnown(path string) (bool, error) { return v.t.has(dirKey(path)) }

func mailboxOf(mb *mailboxRec) Mailbox {
	return Mailbox{GUID: mb.GUID, Path: mb.Path, Messages: mb.Messages, Missing: mb.Missing, Keywords: mb.Keywords,
		Renamed: mb.Renamed, RenamedSeq: mb.RenamedSeq, Created: mb.Created, CreatedSeq: mb.CreatedSeq, CreatedPath: mb.CreatedPath,
		CreatedGUID: mb.CreatedGUID, CreatedSeen: mb.CreatedSeen, MergedCreates: mb.MergedCreates}
}

// CreatedAt lists the live mailboxes created at path (wherever they are now).
func (v PeerView) CreatedAt(path string) ([]Mailbox, error) {
	var out []Mailbox
	err := v.t.scanKeys([]byte(pMailbox), func(k []byte) error {
		var mb mailboxRec
		if ok, err := v.t.getRec(k, &mb); err != nil || !ok {
			return err
		}
		if mb.CreatedPath == path {
			out = append(out, mailboxOf(&mb))
		}
		return nil
	})
	return out, err
}

// flagTombstone folds the flag changes of op into what ts says the
// message was when it was expunged (per flag, the newer change wins).
func flagTombstone(ts *tombstone, op *journal.Op) *tombstone {
	st := journal.StampOf(op)
	ts.Flags = MergeFlags(ts.Flags, ts.FlagStamps, op, op.Changed)
	if ts.FlagStamps == nil {
		ts.FlagStamps = map[string]journal.Stamp{}
	}
	for _, f := range op.Changed {
		if old, ok := ts.FlagStamps[f]; !ok || !st.Less(old) {
			ts.FlagStamps[f] = st
		}
	}
	if op.Sub == journal.SubCur {
		ts.Sub = journal.SubCur // cur/ beats new/
	}
	return ts
}

// EarlyFlagsIn calls fn for every message of mailbox g (the GUID itself,
// not what it names now) that has flag changes kept from before it arrived.
func (v PeerView) EarlyFlagsIn(g journal.GUID, fn func(key string, flags map[string]FlagChange, cur bool) error) error {
	prefix := append([]byte(pEarlyFlags), g[:]...)
	return v.t.scanKeys(prefix, func(k []byte) error {
		var ef earlyFlagsRec
		if ok, err := v.t.getRec(k, &ef); err != nil || !ok {
			return err
		}
		return fn(string(k[len(prefix):]), ef.Flags, ef.Cur)
	})
}

// followMove makes the expunge tombstone of message key of mailbox src,
// if it has one, point where a concurrent move brought the message back
// (rec, in mailbox dst): flag changes made to it elsewhere before that
// move follow it there, as on the nodes that had them before the move.
// The flags it came back with are the ones it had here when it went, so
// they keep their stamps (not the move's), but for those the move changed.
func (t *tx) followMove(src journal.GUID, key string, dst journal.GUID, dstKey string, rec *messageRec, changed []string) error {
	var ts tombstone
	ok, err := t.getRec(tombMessageKey(src, key), &ts)
	if err != nil || !ok || ts.MovedTo != nil {
		return err
	}
	if ts.Sub != 0 {
		carryFlagStamps(rec, ts.FlagStamps, changed)
	}
	ts.MovedTo, ts.MovedKey, ts.Followed = &dst, dstKey, true
	return t.putRec(tombMessageKey(src, key), &ts)
}

// carryFlagStamps gives a message brought back by a move the stamps its
// flags had where it was (stamps), but for the flags the move changed.
func carryFlagStamps(rec *messageRec, stamps map[string]journal.Stamp, changed []string) {
	if rec.FlagStamps == nil {
		rec.FlagStamps = map[string]journal.Stamp{}
	}
	for f, st := range stamps {
		if !slices.Contains(changed, f) {
			rec.FlagStamps[f] = st
		}
	}
}

// MergeFlags is flags with op's changes to the flags in changed applied
// where they are newer than the stamps flags have (design §6 rule 6: per
// flag, the newer change wins).
func MergeFlags(flags []string, stamps map[string]journal.Stamp, op *journal.Op, changed []string) []string {
	st := journal.StampOf(op)
	have := map[string]bool{}
	for _, f := range flags {
		have[f] = true
	}
	for _, f := range changed {
		if old, ok := stamps[f]; ok && st.Less(old) {
			continue
		}
		have[f] = slices.Contains(op.Flags, f)
	}
	out := make([]string, 0, len(have))
	for f, p := range have {
		if p {
			out = append(out, f)
		}
	}
	return journal.SortFlags(out)
}
