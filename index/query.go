package index

import (
	"encoding/binary"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"

	"mailfs/journal"
)

// Ops calls fn for every journaled op with seq >= from, in seq order. It
// streams: at most one op is decoded at a time. Only committed ops are
// listed: a batch whose commit failed may still sit in badger's memtable.
func (s *Store) Ops(from uint64, fn func(*journal.Op) error) error {
	last := s.seq.Load()
	return s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte(pJournal)
		opt.PrefetchValues = false
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Seek(journalKey(from)); it.Valid(); it.Next() {
			item := it.Item()
			k := item.Key()
			if len(k) != len(pJournal)+8 {
				return fmt.Errorf("index: journal key %x is damaged", k)
			}
			if binary.BigEndian.Uint64(k[len(pJournal):]) > last {
				return nil
			}
			var op *journal.Op
			err := item.Value(func(v []byte) error {
				var err error
				op, err = journal.Decode(v)
				return err
			})
			if err != nil {
				return fmt.Errorf("index: journal op %d: %w", binary.BigEndian.Uint64(k[len(pJournal):]), err)
			}
			if err := fn(op); err != nil {
				return err
			}
		}
		return nil
	})
}

// Mailbox is a mailbox as the index knows it.
type Mailbox struct {
	GUID     journal.GUID
	Path     string
	Messages int64
	Missing  bool
	Keywords []string
	// Renamed and RenamedSeq: the op that last set Path (a rename, or the
	// create).
	Renamed    journal.Stamp
	RenamedSeq uint64
	// Created, CreatedSeq and CreatedPath: the op that created the mailbox.
	Created     journal.Stamp
	CreatedSeq  uint64
	CreatedPath string
	CreatedGUID journal.GUID
	CreatedSeen journal.VersionVector
	// MergedCreates are the other creates merged into it by rule 3.
	MergedCreates []CreateRef
}

// CreateRef is a peer's create of a mailbox: the GUID it made, its op's
// stamp and seq, and what its node had seen.
type CreateRef struct {
	GUID  journal.GUID          `json:"guid"`
	Stamp journal.Stamp         `json:"stamp"`
	Seq   uint64                `json:"seq"`
	Seen  journal.VersionVector `json:"seen,omitempty"`
}

// CreatesUnseen lists the creates of m (its own, and those merged into
// it) that a node having applied seen had not seen.
func (m Mailbox) CreatesUnseen(seen journal.VersionVector) []CreateRef {
	var out []CreateRef
	if m.CreatedSeq != 0 && !m.Created.Origin.IsZero() && seen[m.Created.Origin] < m.CreatedSeq {
		g := m.CreatedGUID
		if g.IsZero() {
			g = m.GUID
		}
		out = append(out, CreateRef{GUID: g, Stamp: m.Created, Seq: m.CreatedSeq, Seen: m.CreatedSeen})
	}
	for _, c := range m.MergedCreates {
		if seen[c.Stamp.Origin] < c.Seq {
			out = append(out, c)
		}
	}
	return out
}

// Creates lists every create of m: its own, and those merged into it.
func (m Mailbox) Creates() []CreateRef { return m.CreatesUnseen(nil) }

// CreatesKept lists the creates of m that outlive a delete of mailbox
// deleted by a node that had applied seen: those it had not seen (rule 4:
// the mailbox stays for them), and those it had seen that were another
// mailbox there, joined with the deleted one here only through creates it
// had not seen. On the deleter a create it had seen was one mailbox with
// the deleted one when the two were made concurrently (neither creator had
// seen the other's create: rule 3), directly or through others it had
// seen; a create made after it had seen the deleted one's is a mailbox of
// its own (the deleted one had been renamed away from that path). When no
// create of m is deleted's own (the GUID the delete names is one derived
// or merged away here), every create it had seen goes, as before.
func (m Mailbox) CreatesKept(deleted journal.GUID, seen journal.VersionVector) []CreateRef {
	all := m.Creates()
	hadSeen := func(c CreateRef) bool { return seen[c.Stamp.Origin] >= c.Seq }
	gone := make([]bool, len(all))
	named := false
	for i, c := range all {
		if c.GUID == deleted && hadSeen(c) {
			gone[i], named = true, true
		}
	}
	if !named {
		return m.CreatesUnseen(seen)
	}
	for changed := true; changed; {
		changed = false
		for i, c := range all {
			if gone[i] || !hadSeen(c) {
				continue
			}
			for j, d := range all {
				if gone[j] && !c.SawCreate(d) && !d.SawCreate(c) {
					gone[i], changed = true, true
					break
				}
			}
		}
	}
	var out []CreateRef
	for i, c := range all {
		if !gone[i] {
			out = append(out, c)
		}
	}
	return out
}

// SawCreate reports whether c's node had applied create d when it made c.
func (c CreateRef) SawCreate(d CreateRef) bool {
	if c.Stamp.Origin == d.Stamp.Origin {
		return c.Seq > d.Seq
	}
	return c.Seen[d.Stamp.Origin] >= d.Seq
}

// Survivor is the GUID a mailbox keeps after a delete that had not seen
// the creates unseen: the highest, as rule 3 merges them on the nodes
// where they arrive after the delete.
func Survivor(unseen []CreateRef) journal.GUID {
	var g journal.GUID
	for _, c := range unseen {
		if string(c.GUID[:]) > string(g[:]) {
			g = c.GUID
		}
	}
	return g
}

// Mailboxes calls fn for every live mailbox.
func (s *Store) Mailboxes(fn func(Mailbox) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte(pMailbox)
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var mb mailboxRec
			if err := it.Item().Value(func(v []byte) error { return decodeRec(v, &mb) }); err != nil {
				return err
			}
			if err := fn(Mailbox{GUID: mb.GUID, Path: mb.Path, Messages: mb.Messages, Missing: mb.Missing, Keywords: mb.Keywords}); err != nil {
				return err
			}
		}
		return nil
	})
}

// MailboxByPath returns the mailbox whose directory is path.
func (s *Store) MailboxByPath(path string) (Mailbox, bool, error) {
	var out Mailbox
	var found bool
	err := s.db.View(func(txn *badger.Txn) error {
		t := &tx{s: s, txn: txn}
		mb, err := t.mailboxAt(path)
		if err != nil || mb == nil {
			return err
		}
		found = true
		out = Mailbox{GUID: mb.GUID, Path: mb.Path, Messages: mb.Messages, Missing: mb.Missing, Keywords: mb.Keywords}
		return nil
	})
	return out, found, err
}

// Message is a message as the index knows it.
type Message struct {
	Key        string
	Name       string
	Sub        journal.Sub
	Flags      []string
	Mtime      int64
	Size       int64
	Content    journal.ContentID
	Missing    bool
	Arrived    string
	Added      journal.Stamp
	AddedSeq   uint64
	AddedTo    journal.GUID
	FlagStamps map[string]journal.Stamp
	// OverExpunge is the expunge (origin: seq) the move that put the
	// message here was made over, if any.
	OverExpunge journal.VersionVector
}

// Messages calls fn for every message of mailbox g, in key order.
func (s *Store) Messages(g journal.GUID, fn func(Message) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		prefix := messagePrefix(g)
		opt := badger.DefaultIteratorOptions
		opt.Prefix = prefix
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var m messageRec
			if err := it.Item().Value(func(v []byte) error { return decodeRec(v, &m) }); err != nil {
				return err
			}
			key := string(it.Item().Key()[len(prefix):])
			if err := fn(Message{Key: key, Name: m.Name, Sub: m.Sub, Flags: m.Flags, Mtime: m.Mtime,
				Size: m.Size, Content: m.Content, Missing: m.Missing, Arrived: m.Arrived}); err != nil {
				return err
			}
		}
		return nil
	})
}

// Subscriptions returns the names subscribed in the subscriptions file of dir.
func (s *Store) Subscriptions(dir string) ([]string, error) {
	var out []string
	err := s.db.View(func(txn *badger.Txn) error {
		prefix := subPrefix(dir)
		opt := badger.DefaultIteratorOptions
		opt.Prefix = prefix
		opt.PrefetchValues = false
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			out = append(out, string(it.Item().Key()[len(prefix):]))
		}
		return nil
	})
	return out, err
}

// Expunged reports whether the message key of mailbox g was expunged (a
// tombstone exists for it).
func (s *Store) Expunged(g journal.GUID, key string) (bool, error) {
	var found bool
	err := s.db.View(func(txn *badger.Txn) error {
		_, ok, err := get(txn, tombMessageKey(g, key))
		found = ok
		return err
	})
	return found, err
}

// FileKnown reports whether the index has a plain file at path.
func (s *Store) FileKnown(path string) (bool, error) {
	var found bool
	err := s.db.View(func(txn *badger.Txn) error {
		_, ok, err := get(txn, fileKey(path))
		found = ok
		return err
	})
	return found, err
}
