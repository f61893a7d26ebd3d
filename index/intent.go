package index

import (
	"encoding/binary"
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"

	"mailfs/journal"
)

// Apply intents: crash safety of the applier's group commit.
//
// The syncer applies a peer's segment in bulk: a delivery's rename into
// new/ or cur/ goes through the mount at once (readers and inotify see it),
// but its index commit is only submitted, and the whole segment's commits
// are waited for together before the segment is acknowledged. A daemon
// killed in between leaves files in the tree that the index does not know:
// an ordinary reconcile would journal them as this node's own adds, and
// they would echo back to the peer (design §6 rule 11).
//
// So before it applies anything of a segment, the syncer commits, durably,
// the segment's message adds as an intent record of that peer (EvIntent).
// Reconcile reads every intent: an unknown file in a mailbox whose base name
// is the key of an intended add, and whose bytes are that add's content, is
// recorded as that peer op's (as the applier's rename would have been), not
// journaled. The segment itself is not acknowledged, so the peer sends it
// again, and applying it again finds the message in place (idempotent).
// The cursor commit that ends the segment (EvApplied) drops the intent in
// the same transaction.

const pIntent = "ai/" // + origin node ID → the message adds of its segment being applied

func intentKey(origin journal.NodeID) []byte { return append([]byte(pIntent), origin[:]...) }

// Intent is the set of a peer's ops whose index commits may not be durable
// yet while their files are visible (see EvIntent).
type Intent struct {
	Origin journal.NodeID
	Ops    []journal.Op
}

// IntentOf builds the event that records intent durably.
func IntentOf(origin journal.NodeID, ops []journal.Op) Event {
	return Event{Kind: EvIntent, Intent: &Intent{Origin: origin, Ops: ops}}
}

func (t *tx) putIntent(in *Intent) error {
	if in == nil || in.Origin.IsZero() {
		return fmt.Errorf("index: apply intent without an origin")
	}
	if len(in.Ops) == 0 {
		return t.clearIntent(in.Origin)
	}
	var b []byte
	for i := range in.Ops {
		enc := journal.Encode(nil, &in.Ops[i])
		b = binary.AppendUvarint(b, uint64(len(enc)))
		b = append(b, enc...)
	}
	return t.set(intentKey(in.Origin), append([]byte{recVersion}, b...))
}

func (t *tx) clearIntent(origin journal.NodeID) error {
	ok, err := t.has(intentKey(origin))
	if err != nil || !ok {
		return err
	}
	return t.del(intentKey(origin))
}

func decodeIntent(b []byte) ([]journal.Op, error) {
	if len(b) == 0 || b[0] != recVersion {
		return nil, fmt.Errorf("index: apply intent: unknown record version")
	}
	b = b[1:]
	var ops []journal.Op
	for len(b) > 0 {
		n, w := binary.Uvarint(b)
		if w <= 0 || n > uint64(len(b)-w) {
			return nil, errors.New("index: apply intent: damaged record")
		}
		op, err := journal.Decode(b[w : w+int(n)])
		if err != nil {
			return nil, fmt.Errorf("index: apply intent: %w", err)
		}
		ops = append(ops, *op)
		b = b[w+int(n):]
	}
	return ops, nil
}

// intendedAdds returns the message adds of every peer's intent, by key.
func (s *Store) intendedAdds() (map[string][]*journal.Op, error) {
	out := map[string][]*journal.Op{}
	err := s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte(pIntent)
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			ops, err := decodeIntent(v)
			if err != nil {
				return err
			}
			for i := range ops {
				if op := &ops[i]; op.Kind == journal.MessageAdd && !op.Content.IsZero() {
					out[op.Key] = append(out[op.Key], op)
				}
			}
		}
		return nil
	})
	return out, err
}

// Intents reports how many peers have an apply intent recorded (tests).
func (s *Store) Intents() (int, error) {
	n := 0
	err := s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte(pIntent)
		opt.PrefetchValues = false
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	return n, err
}
