package index

import (
	"fmt"

	"mailfs/journal"
	"mailfs/maildir"
)

// Merging two mailboxes that both hold mail on disk (design §6 rule 3):
// a create reaches a node late, after the mailbox it is one with by rule 3
// was made here apart (a rename of it came first, or a third node's create
// took the path). The applier announces the merge (EvMerging), moves each
// message file of the merged-away mailbox into the kept one through the
// mount, and removes the emptied directory; the index moves each record as
// its file moves, and the removal of cur/ ends the merge. No op is
// journaled: every node reaches the same merge from the same peer ops. A
// crash in between leaves the announcement, and the applier, applying the
// same create again, carries on where it stopped.

// mergeRec says which mailbox the mail of a merging mailbox goes to.
type mergeRec struct {
	Into journal.GUID `json:"into"`
}

func (t *tx) startMerge(from, into journal.GUID) error {
	if from == into {
		return fmt.Errorf("index: merge of mailbox %s into itself", from)
	}
	for _, g := range []journal.GUID{from, into} {
		if ok, err := t.has(mailboxKey(g)); err != nil || !ok {
			if err == nil {
				err = fmt.Errorf("index: merge of mailbox %s into %s: %s is not here", from, into, g)
			}
			return err
		}
	}
	return t.putRec(mergingKey(from), &mergeRec{Into: into})
}

// mergingInto reports the mailbox g's mail is being moved into, if any.
func (t *tx) mergingInto(g journal.GUID) (journal.GUID, bool, error) {
	var m mergeRec
	ok, err := t.getRec(mergingKey(g), &m)
	return m.Into, ok, err
}

// mergeMove records the move of message key of merging mailbox mbF into
// mailbox into, as newName: the record goes with it as it was (its stamps,
// the op that added it), only its file name may differ (keyword letters
// are the target mailbox's, and a key into has already is kept apart as a
// conflict copy, rule 9).
func (t *tx) mergeMove(mbF *mailboxRec, into journal.GUID, key string, newName maildir.Name, ct maildir.Class, rec *messageRec) error {
	mbT, err := t.mailboxAt(ct.Mailbox)
	if err != nil {
		return err
	}
	if mbT == nil || mbT.GUID != into {
		return fmt.Errorf("index: mail of mailbox %s, merging into %s, moved to %q instead", mbF.GUID, into, ct.Mailbox)
	}
	if other, err := t.message(into, newName.Base); err != nil || other != nil {
		if err == nil {
			err = fmt.Errorf("index: message %s of merging mailbox %s: %s has one by that key", key, mbF.GUID, into)
		}
		return err
	}
	moved := *rec
	moved.Name, moved.Sub = ct.Name, subOf(ct.Sub)
	moved.Flags = maildir.FlagNames(newName.Letters(), mbT.Keywords)
	moved.Missing = false
	if err := t.del(messageKey(mbF.GUID, key)); err != nil {
		return err
	}
	if err := t.putRec(messageKey(into, newName.Base), &moved); err != nil {
		return err
	}
	mbF.Messages--
	mbT.Messages++
	if err := t.putMailbox(mbF); err != nil {
		return err
	}
	return t.putMailbox(mbT)
}

// endMerge retires mailbox mb, whose mail is all in into now: its records
// left (mail missing on disk, tombstones) join into's where into has none
// for the key, its creates become into's, its GUID a name of into, and the
// merged mailbox takes the higher of the two GUIDs (rule 3).
func (t *tx) endMerge(mb *mailboxRec, into journal.GUID) error {
	var in mailboxRec
	ok, err := t.getRec(mailboxKey(into), &in)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("index: merge of mailbox %s: %s is gone", mb.GUID, into)
	}
	moved, err := t.moveUnder(messagePrefix(mb.GUID), messagePrefix(into))
	if err != nil {
		return err
	}
	in.Messages += int64(moved)
	// Traces too: an expunge of a message now in into still wins there
	// (the applier removes it, applyEarlyExpunges).
	for _, pre := range []string{pTombMessage, pAbsentAdd} {
		if _, err := t.moveUnder(append([]byte(pre), mb.GUID[:]...), append([]byte(pre), into[:]...)); err != nil {
			return err
		}
	}
	if mb.CreatedSeq != 0 && !mb.Created.Origin.IsZero() {
		g := mb.CreatedGUID
		if g.IsZero() {
			g = mb.GUID
		}
		in.MergedCreates = append(in.MergedCreates, CreateRef{GUID: g, Stamp: mb.Created, Seq: mb.CreatedSeq, Seen: mb.CreatedSeen})
	}
	in.MergedCreates = append(in.MergedCreates, mb.MergedCreates...)
	if err := t.del(mailboxKey(mb.GUID)); err != nil {
		return err
	}
	if b, ok, err := get(t.txn, mailboxPathKey(mb.Path)); err != nil {
		return err
	} else if ok && journal.GUID(b) == mb.GUID {
		if err := t.del(mailboxPathKey(mb.Path)); err != nil {
			return err
		}
	}
	t.counts.Mailboxes--
	if err := t.putMailbox(&in); err != nil {
		return err
	}
	if err := t.del(mergingKey(mb.GUID)); err != nil {
		return err
	}
	if err := t.set(aliasKey(mb.GUID), into[:]); err != nil {
		return err
	}
	if string(mb.GUID[:]) > string(into[:]) {
		return t.rekeyMailbox(into, mb.GUID)
	}
	return nil
}
