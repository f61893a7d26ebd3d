package syncer

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"mailfs/index"
	"mailfs/journal"
	"mailfs/peers"
)

// Config configures a Syncer.
type Config struct {
	Store    *index.Store
	Identity *peers.Identity
	// Mount is the running mount the applier carries peer ops out through.
	Mount Mount
	// Root is the backing Maildir tree, where bodies are read to be sent.
	Root string
	// StagingDir holds the bodies of a segment being received; it is on
	// the store's disk and emptied at start.
	StagingDir string
	Logger     *slog.Logger
	// Limits bound what a peer's segment may claim; zero fields take
	// journal.DefaultLimits.
	Limits journal.Limits
	// Heartbeat is how often an idle push connection proves it is alive
	// (default 15 s); a receiver drops a connection silent for 4 of them.
	Heartbeat time.Duration
	// MaxSegmentOps bounds the ops one pushed segment carries (default 512).
	MaxSegmentOps int
	// Window is how many segments may await their ack (default 4).
	Window int
	// RetryMin and RetryMax bound the backoff between connection attempts
	// (defaults 250 ms and 30 s).
	RetryMin, RetryMax time.Duration
	// FullSyncAtStart runs the full sync with every peer once Start is
	// done (after an unclean stop), retrying until every peer answered.
	FullSyncAtStart bool
	// FullSyncInterval runs it periodically (0: never).
	FullSyncInterval time.Duration
}

// Syncer pushes this node's journal to its peers and applies theirs.
type Syncer struct {
	cfg     Config
	log     *slog.Logger
	applier *applier
	counts  *counters
	// applyMu lets one segment at a time be applied (from any peer).
	applyMu sync.Mutex
	// fullRun lets one full sync run at a time (a token, so that a caller
	// can give up waiting).
	fullRun chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool // Close began: no goroutine may join wg any more
	peers  map[journal.NodeID]*peerState
	change chan struct{} // closed and replaced whenever an ack or state changes
	notify chan uint64
}

// peerState is what is known about one peer's replication.
type peerState struct {
	peer    peers.Peer
	kick    chan struct{}
	retry   chan struct{} // ends a reconnect backoff early
	started bool

	connected   bool
	inbound     int
	acked       uint64
	ackedEpoch  uint64
	lastSuccess time.Time
	// lastFastSync is when an ack last covered every op journaled at that
	// moment: the peer was fully up to date.
	lastFastSync time.Time
	lastFailure  time.Time
	lastError    string
	lastReceive  time.Time
	bytesSent    int64
	bytesRecv    int64
	opsSent      int64
	opsApplied   int64
	refused      int64
	// clock is the last measurement of the peer's clock (clock.go).
	clock clockSample
	// catchUp tracks a session that started far behind (nil: none).
	catchUp *catchUp
}

// PeerStatus is one peer's replication state, for `mailfs status`.
type PeerStatus struct {
	ID          journal.NodeID
	Name        string
	Address     string
	Connected   bool
	Inbound     bool
	AckedSeq    uint64
	LagOps      uint64
	LastSuccess time.Time
	// LastFastSync is when the peer last acknowledged every op journaled
	// at that moment (zero: not since this node started).
	LastFastSync time.Time
	LastFailure  time.Time
	LastError    string
	LastReceive  time.Time
	// ClockSkew is the peer's wall clock minus this node's, measured at
	// ClockMeasured (zero: never since this node started) over a round trip
	// of ClockRTT, which bounds its error to ClockRTT/2.
	ClockSkew     time.Duration
	ClockRTT      time.Duration
	ClockMeasured time.Time
	BytesSent     int64
	BytesRecv     int64
	OpsSent       int64
	OpsApplied    int64
	Refused       int64
	// CatchUp is the progress of a catch-up running now (a first sync to
	// an empty peer, or one back from a long outage), nil if none.
	CatchUp *CatchUp
}

// New returns a Syncer; Start begins pushing.
func New(cfg Config) *Syncer {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 15 * time.Second
	}
	if cfg.MaxSegmentOps <= 0 {
		cfg.MaxSegmentOps = 512
	}
	if cfg.Window <= 0 {
		cfg.Window = 4
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 250 * time.Millisecond
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 30 * time.Second
	}
	log := cfg.Logger.With("component", "sync")
	ctx, cancel := context.WithCancel(context.Background())
	counts := newCounters()
	ap := newApplier(cfg.Store, cfg.Mount, cfg.Root, log)
	ap.resolved = counts.conflict
	return &Syncer{
		cfg:     cfg,
		log:     log,
		counts:  counts,
		applier: ap,
		ctx:     ctx,
		cancel:  cancel,
		peers:   map[journal.NodeID]*peerState{},
		change:  make(chan struct{}),
		notify:  make(chan uint64, 1),
		fullRun: make(chan struct{}, 1),
	}
}

// Start empties the staging directory and starts a pusher per paired peer.
func (s *Syncer) Start() error {
	if err := os.RemoveAll(s.cfg.StagingDir); err != nil {
		return fmt.Errorf("sync: clear staging %s: %w", s.cfg.StagingDir, err)
	}
	if err := os.MkdirAll(s.cfg.StagingDir, 0o700); err != nil {
		return fmt.Errorf("sync: staging %s: %w", s.cfg.StagingDir, err)
	}
	list, err := s.cfg.Store.ListPeers()
	if err != nil {
		return fmt.Errorf("sync: list peers: %w", err)
	}
	s.cfg.Store.Subscribe(s.notify)
	s.wg.Add(2)
	go s.fanOut()
	go s.tidyLoop()
	for _, p := range list {
		s.AddPeer(p)
	}
	if s.cfg.FullSyncAtStart || s.cfg.FullSyncInterval > 0 {
		s.wg.Add(1)
		go s.fullSyncLoop(s.cfg.FullSyncAtStart, s.cfg.FullSyncInterval)
	}
	return nil
}

// fanOut wakes every pusher after each commit.
func (s *Syncer) fanOut() {
	defer s.wg.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.notify:
		}
		s.mu.Lock()
		for _, st := range s.peers {
			select {
			case st.kick <- struct{}{}:
			default:
			}
		}
		s.mu.Unlock()
		s.changed()
	}
}

// AddPeer starts pushing to p (a peer paired while running, or at Start).
func (s *Syncer) AddPeer(p peers.Peer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state(p.ID)
	st.peer = p
	if st.started || s.closed || s.ctx.Err() != nil {
		return
	}
	if p.Address == "" {
		s.log.Warn("peer has no address to push to; it must dial this node", "peer", peers.FormatID(p.ID), "peer_name", p.Name)
		return
	}
	st.started = true
	s.wg.Add(1)
	go s.pushLoop(p, st)
}

// state returns the state of peer id; s.mu must be held.
func (s *Syncer) state(id journal.NodeID) *peerState {
	st := s.peers[id]
	if st == nil {
		st = &peerState{peer: peers.Peer{ID: id}, kick: make(chan struct{}, 1), retry: make(chan struct{}, 1)}
		s.peers[id] = st
	}
	return st
}

// changed wakes everything waiting for a state change (WaitSynced).
func (s *Syncer) changed() {
	s.mu.Lock()
	close(s.change)
	s.change = make(chan struct{})
	s.mu.Unlock()
}

func (s *Syncer) update(id journal.NodeID, fn func(st *peerState)) {
	s.mu.Lock()
	fn(s.state(id))
	close(s.change)
	s.change = make(chan struct{})
	s.mu.Unlock()
}

// Close stops pushing and receiving and waits for the goroutines.
func (s *Syncer) Close() {
	// wg.Add must not race wg.Wait: every Add happens under mu while
	// closed is false.
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// Status lists the peers' replication state, ordered by ID.
func (s *Syncer) Status() []PeerStatus {
	seq := s.cfg.Store.Seq()
	list, _ := s.cfg.Store.ListPeers()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]PeerStatus, 0, len(list))
	for _, p := range list {
		st := s.state(p.ID)
		ps := PeerStatus{ID: p.ID, Name: p.Name, Address: p.Address, Connected: st.connected, Inbound: st.inbound > 0,
			AckedSeq: st.acked, LastSuccess: st.lastSuccess, LastFailure: st.lastFailure, LastError: st.lastError,
			LastReceive: st.lastReceive, BytesSent: st.bytesSent, BytesRecv: st.bytesRecv, OpsSent: st.opsSent,
			OpsApplied: st.opsApplied, Refused: st.refused, LastFastSync: st.lastFastSync,
			ClockSkew: st.clock.Skew, ClockRTT: st.clock.RTT, ClockMeasured: st.clock.At}
		if st.catchUp != nil {
			pr := st.catchUp.progress(time.Now())
			ps.CatchUp = &pr
		}
		if st.ackedEpoch == s.cfg.Store.Epoch() && seq > st.acked {
			ps.LagOps = seq - st.acked
		} else if st.ackedEpoch != s.cfg.Store.Epoch() {
			ps.LagOps = seq
			ps.AckedSeq = 0
		}
		out = append(out, ps)
	}
	return out
}

// WaitSynced returns once every paired peer has acknowledged the ops up to
// seq, or ctx's error. A peer waiting out a reconnect backoff is retried at
// once: whoever waits for a sync wants it now.
func (s *Syncer) WaitSynced(ctx context.Context, seq uint64) error {
	s.mu.Lock()
	for _, st := range s.peers {
		select {
		case st.retry <- struct{}{}:
		default:
		}
	}
	s.mu.Unlock()
	for {
		list, err := s.cfg.Store.ListPeers()
		if err != nil {
			return err
		}
		s.mu.Lock()
		done := true
		for _, p := range list {
			st := s.state(p.ID)
			if st.ackedEpoch != s.cfg.Store.Epoch() || st.acked < seq {
				done = false
			}
		}
		ch := s.change
		s.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case <-time.After(time.Second): // peers paired meanwhile
		}
	}
}

// ServeConn serves a push connection from paired peer id (ALPN
// peers.ProtoSync, handshake done): it receives and applies its segments
// until the connection ends.
func (s *Syncer) ServeConn(ctx context.Context, conn *tls.Conn, id journal.NodeID) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return // shutting down: the caller closes conn
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	s.update(id, func(st *peerState) { st.inbound++ })
	defer s.update(id, func(st *peerState) { st.inbound-- })
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	r := &receiver{s: s, conn: conn, peer: id, log: s.log.With("peer", peers.FormatID(id), "remote", conn.RemoteAddr().String())}
	r.serve(ctx)
}
