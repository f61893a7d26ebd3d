package index

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"

	badger "github.com/dgraph-io/badger/v4"

	"mailfs/journal"
)

// Sentinel errors.
var (
	ErrClosed     = errors.New("index: store is closed")
	ErrNotCreated = errors.New("index: store has no node identity (run mailfs init)")
	ErrFormat     = errors.New("index: format written by a newer mailfs")
	// ErrFailed wraps the error of a failed commit: the store accepts no
	// more changes until it is reopened.
	ErrFailed = errors.New("index: a commit failed; no more changes until mailfs restarts")
	// ErrChanged is an event whose decision was made from state a change
	// committed since then has altered (Event.Expect): nothing of it is
	// applied, and its maker decides again.
	ErrChanged = errors.New("index: changed since the event was decided")
)

// errCommit marks an error of badger's Txn.Commit, after which the batch
// may sit in badger's memtable although it is not durable.
var errCommit = errors.New("badger commit")

// errAfterWAL marks a badger failure after the batch was made durable in
// the journal WAL.
var errAfterWAL = errors.New("index write after the journal WAL")

// Failed returns the error that stopped the store (wrapping ErrFailed), or
// nil while it accepts changes.
func (s *Store) Failed() error {
	if p := s.failed.Load(); p != nil {
		return fmt.Errorf("%w: %w", ErrFailed, *p)
	}
	return nil
}

// maxBatch bounds how many events share one transaction.
const maxBatch = 128

// Options configure Open.
type Options struct {
	// Node is this node's ID; required when the index is created.
	Node journal.NodeID
	// Name is this node's human name, saved at creation.
	Name string
	// Listen is the peer address saved at creation.
	Listen string
	// Logger receives index logs; nil means slog.Default().
	Logger *slog.Logger
	// ReadOnly opens without the committer (for status and tooling).
	ReadOnly bool
	// Config opens a store that is not mounted only to change its
	// node-local configuration (PutPeer, RemovePeer): writable, but
	// without the committer (nothing is journaled), and the clean-stop
	// marker is left as the last run left it, so the next mount still
	// knows whether that run stopped cleanly.
	Config bool
}

// Store is the open index.
type Store struct {
	db     *badger.DB
	log    *slog.Logger
	node   journal.NodeID
	name   string
	listen string
	epoch  uint64
	clock  *journal.Clock

	reqs    chan *commitReq
	stop    chan struct{}
	stopped chan struct{}
	closeMu sync.RWMutex
	closed  bool
	// failed holds the first error of a badger commit. Badger has by then
	// put the batch into its memtable (only the WAL sync failed), so reads
	// would see ops and state the caller was told are not durable: the
	// store refuses every later change (fail-stop) until it is reopened,
	// which replays only what reached the disk.
	failed   atomic.Pointer[error]
	seq      atomic.Uint64
	counts   counts
	countsMu sync.Mutex

	subsMu sync.Mutex
	subs   []chan<- uint64

	// wal makes group commits durable; commit numbers its batches.
	wal    *wal
	commit uint64

	// wasClean says whether the previous run closed the index cleanly;
	// after an unclean stop the journal is authoritative for the names of
	// the messages it knows (see Reconcile).
	wasClean bool
}

type commitReq struct {
	events []Event
	done   chan commitResult
}

type commitResult struct {
	ops []journal.Op
	err error
}

// Open opens (creating if needed) the badger index in dir.
func Open(dir string, opt Options) (*Store, error) {
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	bo := badger.DefaultOptions(dir).
		WithSyncWrites(false). // durability comes from the journal WAL (wal.go)
		WithLogger(badgerLogger{log.With("component", "badger")}).
		WithMemTableSize(32 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(4).
		WithNumLevelZeroTablesStall(8).
		WithBlockCacheSize(32 << 20).
		WithIndexCacheSize(16 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2).
		WithDetectConflicts(false).
		WithReadOnly(opt.ReadOnly)
	db, err := badger.Open(bo)
	if err != nil {
		return nil, fmt.Errorf("open index %s: %w", dir, err)
	}
	s := &Store{db: db, log: log, reqs: make(chan *commitReq, maxBatch), stop: make(chan struct{}), stopped: make(chan struct{})}
	if err := s.loadMeta(opt); err != nil {
		db.Close()
		return nil, fmt.Errorf("open index %s: %w", dir, err)
	}
	if opt.ReadOnly || opt.Config {
		close(s.stopped)
		return s, nil
	}
	if err := s.openWAL(dir, opt); err != nil {
		db.Close()
		return nil, fmt.Errorf("open index %s: %w", dir, err)
	}
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(kClean), []byte{0}) }); err == nil {
		err = db.Sync()
	}
	if err != nil {
		s.wal.close()
		db.Close()
		return nil, fmt.Errorf("open index %s: %w", dir, err)
	}
	go s.committer()
	return s, nil
}

func (s *Store) loadMeta(opt Options) error {
	return s.db.Update(func(txn *badger.Txn) error {
		v, ok, err := get(txn, []byte(kVersion))
		if err != nil {
			return err
		}
		if !ok {
			if opt.ReadOnly || opt.Config {
				return ErrNotCreated
			}
			if opt.Node.IsZero() {
				return ErrNotCreated
			}
			var e [8]byte
			if _, err := rand.Read(e[:]); err != nil {
				return err
			}
			for _, kv := range [][2][]byte{
				{[]byte(kVersion), u64(formatVersion)},
				{[]byte(kNode), opt.Node[:]},
				{[]byte(kName), []byte(opt.Name)},
				{[]byte(kListen), []byte(opt.Listen)},
				{[]byte(kEpoch), e[:]},
				{[]byte(kSeq), u64(0)},
			} {
				if err := txn.Set(kv[0], kv[1]); err != nil {
					return err
				}
			}
			v = u64(formatVersion)
		}
		if len(v) != 8 || binary.BigEndian.Uint64(v) > formatVersion {
			return ErrFormat
		}
		read := func(k string) []byte {
			b, _, e := get(txn, []byte(k))
			if e != nil && err == nil {
				err = e
			}
			return b
		}
		node := read(kNode)
		if len(node) != 32 {
			return fmt.Errorf("index: node identity record is damaged")
		}
		copy(s.node[:], node)
		if !opt.Node.IsZero() && opt.Node != s.node {
			return fmt.Errorf("index: belongs to node %s, identity is %s", s.node.Short(), opt.Node.Short())
		}
		s.name = string(read(kName))
		s.listen = string(read(kListen))
		if e := read(kEpoch); len(e) == 8 {
			s.epoch = binary.BigEndian.Uint64(e)
		}
		if q := read(kSeq); len(q) == 8 {
			s.seq.Store(binary.BigEndian.Uint64(q))
		}
		var last journal.HLC
		if h := read(kHLC); len(h) == 12 {
			last.WallMs = int64(binary.BigEndian.Uint64(h))
			last.Logical = binary.BigEndian.Uint32(h[8:])
		}
		s.clock = journal.NewClock(last)
		if v := read(kCommit); len(v) == 8 {
			s.commit = binary.BigEndian.Uint64(v)
		}
		c := read(kClean)
		s.wasClean = c == nil || (len(c) == 1 && c[0] == 1)
		if c := read(kCounts); c != nil {
			if err := decodeRec(c, &s.counts); err != nil {
				return err
			}
		}
		return err
	})
}

// openWAL opens the journal WAL and applies to badger every record it holds
// beyond badger's own commit number: batches acknowledged before a crash
// whose badger write had not reached the disk.
func (s *Store) openWAL(dir string, opt Options) error {
	replayed := 0
	w, err := openWAL(filepath.Join(dir, walName), func(commit uint64, muts []mutation) error {
		if commit <= s.commit {
			return nil
		}
		if commit != s.commit+1 {
			return fmt.Errorf("journal WAL: batch %d follows %d: a batch is missing", commit, s.commit)
		}
		wb := s.db.NewWriteBatch()
		defer wb.Cancel()
		for _, m := range muts {
			var err error
			if m.del {
				err = wb.Delete(m.key)
			} else {
				err = wb.Set(m.key, m.value)
			}
			if err != nil {
				return fmt.Errorf("journal WAL replay: %w", err)
			}
		}
		if err := wb.Flush(); err != nil {
			return fmt.Errorf("journal WAL replay: %w", err)
		}
		s.commit = commit
		replayed++
		return nil
	})
	if err != nil {
		return err
	}
	s.wal = w
	if replayed > 0 {
		s.log.Warn("index: replayed acknowledged batches from the journal WAL after an unclean stop", "batches", replayed)
		s.wasClean = false
		if err := s.loadMeta(opt); err != nil {
			return err
		}
	}
	return s.checkpoint()
}

// checkpoint syncs badger and starts a new WAL generation.
func (s *Store) checkpoint() error {
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("sync index: %w", err)
	}
	return s.wal.reset(s.wal.gen + 1)
}

// Close stops the committer and closes badger. Pending commits finish first.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	s.closeMu.Unlock()
	select {
	case <-s.stopped:
		return s.db.Close() // read-only or config: no committer, clean marker untouched
	default:
		close(s.stop)
		<-s.stopped
	}
	// A store stopped by a failed commit is not clean: its memtable may
	// hold the failed batch.
	err := s.Failed()
	if err == nil {
		err = s.db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(kClean), []byte{1}) })
	}
	if cerr := s.db.Close(); err == nil {
		err = cerr
	}
	if cerr := s.wal.close(); err == nil {
		err = cerr
	}
	return err
}

// WasClean reports whether the previous run closed the index cleanly.
func (s *Store) WasClean() bool { return s.wasClean }

// Node returns this node's ID.
func (s *Store) Node() journal.NodeID { return s.node }

// Name returns this node's human name.
func (s *Store) Name() string { return s.name }

// Listen returns the peer address saved at init.
func (s *Store) Listen() string { return s.listen }

// Epoch identifies this journal's incarnation (for peer cursors).
func (s *Store) Epoch() uint64 { return s.epoch }

// Seq returns the highest committed journal seq.
func (s *Store) Seq() uint64 { return s.seq.Load() }

// Counts returns the number of live mailboxes and messages.
func (s *Store) Counts() (mailboxes, messages int64) {
	s.countsMu.Lock()
	defer s.countsMu.Unlock()
	return s.counts.Mailboxes, s.counts.Messages
}

// Subscribe registers ch to receive the journal seq after every commit
// that journaled ops. Sends never block: a full channel misses a value, and
// the receiver reads Seq() instead.
func (s *Store) Subscribe(ch chan<- uint64) {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	s.subs = append(s.subs, ch)
}

// Pending is a submitted commit; Wait blocks until it is durable.
type Pending struct{ done chan commitResult }

// Wait returns the ops journaled for the submitted events, once they are
// durable, or the error that kept them from being committed.
func (p *Pending) Wait() ([]journal.Op, error) {
	r := <-p.done
	p.done <- r // Wait may be called again
	return r.ops, r.err
}

// Submit queues events for the committer without waiting. Events are
// applied in submission order, so a caller that serialises its filesystem
// change and its Submit keeps the journal in the order of the changes.
func (s *Store) Submit(events ...Event) (*Pending, error) {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	if err := s.Failed(); err != nil {
		return nil, err
	}
	req := &commitReq{events: events, done: make(chan commitResult, 1)}
	select {
	case <-s.stopped: // no committer (read-only or config store, or closing)
		return nil, ErrClosed
	default:
	}
	select {
	case s.reqs <- req:
	case <-s.stopped:
		return nil, ErrClosed
	}
	return &Pending{done: req.done}, nil
}

// Commit turns events into ops and index state in one durable transaction
// and returns the ops journaled, in order. Once queued, a commit is never
// abandoned: an interrupted syscall must not lose its op.
func (s *Store) Commit(_ context.Context, events ...Event) ([]journal.Op, error) {
	p, err := s.Submit(events...)
	if err != nil {
		return nil, err
	}
	return p.Wait()
}

func (s *Store) committer() {
	defer close(s.stopped)
	for {
		var first *commitReq
		select {
		case first = <-s.reqs:
		case <-s.stop:
			// Drain what was queued before Close.
			for {
				select {
				case r := <-s.reqs:
					s.runBatch([]*commitReq{r})
				default:
					return
				}
			}
		}
		batch := []*commitReq{first}
	drain:
		for len(batch) < maxBatch {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		s.runBatch(batch)
	}
}

// runBatch commits batch in one transaction. A request whose events fail to
// apply is answered with its error and the rest retried without it, so one
// bad request never poisons its neighbours.
func (s *Store) runBatch(batch []*commitReq) {
	for len(batch) > 0 {
		if err := s.Failed(); err != nil {
			for _, r := range batch {
				r.done <- commitResult{err: err}
			}
			return
		}
		tx := s.newTx()
		results := make([][]journal.Op, len(batch))
		failed := -1
		var failErr error
		for i, r := range batch {
			start := len(tx.ops)
			for _, ev := range r.events {
				if err := tx.apply(ev); err != nil {
					failed, failErr = i, err
					break
				}
			}
			if failed >= 0 {
				break
			}
			results[i] = tx.ops[start:]
		}
		if failed >= 0 {
			tx.txn.Discard()
			batch[failed].done <- commitResult{err: failErr}
			batch = append(batch[:failed:failed], batch[failed+1:]...)
			continue
		}
		err := tx.finish()
		if errors.Is(err, badger.ErrTxnTooBig) && len(batch) > 1 {
			half := len(batch) / 2
			s.runBatch(batch[:half])
			batch = batch[half:]
			continue
		}
		if errors.Is(err, errAfterWAL) {
			// Durable in the WAL, so acknowledged; but badger refused it, so
			// stop taking changes until a restart replays the WAL.
			err = fmt.Errorf("commit to index: %w", err)
			s.failed.CompareAndSwap(nil, &err)
			s.log.Error("index commit failed after the journal WAL made it durable; no more changes until restart", "err", err)
			err = nil
		}
		if err != nil {
			err = fmt.Errorf("commit to index: %w", err)
			if errors.Is(err, errCommit) {
				s.failed.CompareAndSwap(nil, &err)
				err = s.Failed()
			}
			s.log.Error("index commit failed", "err", err, "requests", len(batch))
			for _, r := range batch {
				r.done <- commitResult{err: err}
			}
			return
		}
		s.seq.Store(tx.seq)
		s.countsMu.Lock()
		s.counts = tx.counts
		s.countsMu.Unlock()
		if len(tx.ops) > 0 {
			s.notify(tx.seq)
		}
		for i, r := range batch {
			r.done <- commitResult{ops: results[i]}
		}
		return
	}
}

func (s *Store) notify(seq uint64) {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	for _, ch := range s.subs {
		select {
		case ch <- seq:
		default:
		}
	}
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func get(txn *badger.Txn, key []byte) ([]byte, bool, error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	v, err := item.ValueCopy(nil)
	return v, err == nil, err
}

type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Infof(f string, a ...any)    { b.l.Debug(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Debugf(f string, a ...any)   {}
