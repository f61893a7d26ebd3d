package index

import (
	"encoding/binary"
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"

	"mailfs/journal"
)

// tx is one batch transaction of the committer: state reads see the batch's
// own earlier writes, and journaled ops get dense seqs.
type tx struct {
	s      *Store
	txn    *badger.Txn
	seq    uint64
	last   journal.HLC
	counts counts
	ops    []journal.Op
	muts   []mutation // every write of the batch, for the journal WAL
	// remote is the peer op the event being applied carries out (see
	// Event.Remote): the state changes are recorded as that op's, and
	// nothing is journaled (design §6 rule 11, echo suppression).
	remote *journal.Op
	// lastOp is the op most recently journaled or applied for a peer.
	lastOp journal.Op
}

// set and delete write through the batch's badger transaction and record
// the mutation for the WAL. Every committer write goes through them.
func (t *tx) set(key, value []byte) error {
	if err := t.txn.Set(key, value); err != nil {
		return err
	}
	t.muts = append(t.muts, mutation{key: key, value: value})
	return nil
}

func (t *tx) delete(key []byte) error {
	if err := t.txn.Delete(key); err != nil {
		return err
	}
	t.muts = append(t.muts, mutation{del: true, key: key})
	return nil
}

func (s *Store) newTx() *tx {
	s.countsMu.Lock()
	c := s.counts
	s.countsMu.Unlock()
	return &tx{s: s, txn: s.db.NewTransaction(true), seq: s.seq.Load(), counts: c}
}

// journal stamps op with origin, seq and time and adds it to the batch.
func (t *tx) journal(op journal.Op) error {
	if t.remote != nil {
		op.Origin, op.Seq, op.Time = t.remote.Origin, t.remote.Seq, t.remote.Time
		t.lastOp = op
		return nil
	}
	if op.Origin.IsZero() {
		op.Origin = t.s.node
		t.seq++
		op.Seq = t.seq
		op.Time = t.s.clock.Now()
	}
	if t.last.Less(op.Time) {
		t.last = op.Time
	}
	if err := t.set(journalKey(op.Seq), journal.Encode(nil, &op)); err != nil {
		return err
	}
	t.ops = append(t.ops, op)
	t.lastOp = op
	return nil
}

// finish makes the batch durable: its mutations go to the journal WAL with
// one fdatasync, then to badger without a sync. A failure before the WAL
// record is durable leaves nothing behind; a badger failure after it is
// errAfterWAL: the batch is acknowledged (the WAL replays it at the next
// open) and the store stops taking changes.
func (t *tx) finish() error {
	defer t.txn.Discard()
	if len(t.ops) > 0 {
		if err := t.set([]byte(kSeq), u64(t.seq)); err != nil {
			return err
		}
		h := make([]byte, 12)
		binary.BigEndian.PutUint64(h, uint64(t.last.WallMs))
		binary.BigEndian.PutUint32(h[8:], t.last.Logical)
		if err := t.set([]byte(kHLC), h); err != nil {
			return err
		}
	}
	c, err := encodeRec(t.counts)
	if err != nil {
		return err
	}
	if err := t.set([]byte(kCounts), c); err != nil {
		return err
	}
	s := t.s
	commit := s.commit + 1
	if err := t.set([]byte(kCommit), u64(commit)); err != nil {
		return err
	}
	payload := encodeMutations(nil, t.muts)
	if len(payload) > s.wal.maxPayload() {
		// Larger than the whole WAL: commit and sync badger directly.
		if err := t.txn.Commit(); err != nil {
			return fmt.Errorf("%w: %w", errCommit, err)
		}
		if err := s.db.Sync(); err != nil {
			return fmt.Errorf("%w: %w", errAfterWAL, err)
		}
		s.commit = commit
		return nil
	}
	if !s.wal.fits(len(payload)) {
		if err := s.checkpoint(); err != nil {
			return fmt.Errorf("%w: %w", errCommit, err)
		}
	}
	if err := s.wal.append(commit, payload); err != nil {
		return fmt.Errorf("%w: %w", errCommit, err)
	}
	s.commit = commit
	if err := t.txn.Commit(); err != nil {
		return fmt.Errorf("%w: %w", errAfterWAL, err)
	}
	return nil
}

func (t *tx) getRec(key []byte, v any) (bool, error) {
	b, ok, err := get(t.txn, key)
	if err != nil || !ok {
		return false, err
	}
	return true, decodeRec(b, v)
}

func (t *tx) putRec(key []byte, v any) error {
	b, err := encodeRec(v)
	if err != nil {
		return err
	}
	return t.set(key, b)
}

func (t *tx) del(key []byte) error { return t.delete(key) }

func (t *tx) has(key []byte) (bool, error) {
	_, err := t.txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	return err == nil, err
}

// mailboxAt returns the mailbox whose directory is path.
func (t *tx) mailboxAt(path string) (*mailboxRec, error) {
	b, ok, err := get(t.txn, mailboxPathKey(path))
	if err != nil || !ok || len(b) != 16 {
		return nil, err
	}
	var mb mailboxRec
	ok, err = t.getRec(mailboxKey(journal.GUID(b)), &mb)
	if err != nil || !ok {
		return nil, err
	}
	return &mb, nil
}

func (t *tx) putMailbox(mb *mailboxRec) error {
	if err := t.putRec(mailboxKey(mb.GUID), mb); err != nil {
		return err
	}
	return t.set(mailboxPathKey(mb.Path), mb.GUID[:])
}

func (t *tx) message(g journal.GUID, key string) (*messageRec, error) {
	var m messageRec
	ok, err := t.getRec(messageKey(g, key), &m)
	if err != nil || !ok {
		return nil, err
	}
	return &m, nil
}

// scanKeys calls fn for every key under prefix (keys only; fn gets a copy).
func (t *tx) scanKeys(prefix []byte, fn func(key []byte) error) error {
	opt := badger.DefaultIteratorOptions
	opt.PrefetchValues = false
	opt.Prefix = prefix
	it := t.txn.NewIterator(opt)
	var keys [][]byte
	for it.Rewind(); it.Valid(); it.Next() {
		keys = append(keys, it.Item().KeyCopy(nil))
	}
	it.Close()
	for _, k := range keys {
		if err := fn(k); err != nil {
			return err
		}
	}
	return nil
}
