package syncer

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"mailfs/index"
	"mailfs/journal"
)

// receiver serves one push connection from a peer.
type receiver struct {
	s    *Syncer
	conn *tls.Conn
	peer journal.NodeID
	log  *slog.Logger
}

// stagedSeq numbers staged body files.
var stagedSeq atomic.Uint64

// staged is the bodies of one segment, on disk.
type staged map[journal.ContentID]string

func (b staged) Body(c journal.ContentID) (string, bool) {
	p, ok := b[c]
	return p, ok
}

// stageSyncers bounds the fdatasyncs of staged bodies in flight:
// concurrent ones share the file system's journal commits.
const stageSyncers = 8

// stageSyncMaxBodies is the most bodies a segment's staging fdatasyncs one
// by one (bodySyncs); a segment with more (a catch-up's) is made durable by
// one syncfs when it has arrived: a journal commit per few bodies, for
// thousands, cost more than waiting once for the file system's dirty data.
const stageSyncMaxBodies = 64

// bodySyncs makes a segment's staged bodies durable while the rest of the
// segment is still arriving, so that a delivery made from one needs no
// fsync of its own (applier.deliver on the bulk path): the body's bytes are
// on disk before its rename makes it visible, and before the index commit
// that names it can be. Each body is fdatasynced as soon as it is staged,
// overlapping the network and the next bodies, and wait gathers them at the
// segment's end. (One syncfs at the end, which this replaces, waited for
// every dirty byte of the whole file system, other programs' included: on
// a busy mail server, or beside other tests, that was tens to hundreds of
// ms before a small segment could be applied; a catch-up's large segments
// still take one, see stageSyncMaxBodies.)
type bodySyncs struct {
	wg  sync.WaitGroup
	sem chan struct{}
	mu  sync.Mutex
	err error
}

func newBodySyncs() *bodySyncs { return &bodySyncs{sem: make(chan struct{}, stageSyncers)} }

// start fdatasyncs f, then closes it.
func (bs *bodySyncs) start(f *os.File) {
	bs.sem <- struct{}{}
	bs.wg.Add(1)
	go func() {
		defer bs.wg.Done()
		err := unix.Fdatasync(int(f.Fd()))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		<-bs.sem
		if err != nil {
			bs.mu.Lock()
			if bs.err == nil {
				bs.err = fmt.Errorf("fdatasync staged body %s: %w", f.Name(), err)
			}
			bs.mu.Unlock()
		}
	}()
}

// wait returns once every started body is durable (or failed).
func (bs *bodySyncs) wait() error {
	bs.wg.Wait()
	bs.mu.Lock()
	defer bs.mu.Unlock()
	return bs.err
}

// syncFS makes everything written to the file system holding dir durable
// (syncfs(2), which reports the write-back errors of its files since
// Linux 5.8).
func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}

func (b staged) remove() {
	for _, p := range b {
		os.Remove(p)
	}
}

// countingReader counts the bytes received, and remembers how the
// connection failed, if it did.
type countingReader struct {
	r io.Reader
	n int64
	// err is the first read error other than a clean end (io.EOF, a TLS
	// close_notify): a reset, a timeout, a TCP FIN without close_notify.
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// idleReader pushes conn's read deadline idle into the future before every
// read: a peer is dropped when it sends nothing for idle, not when one large
// segment takes longer than idle to arrive over a slow link.
type idleReader struct {
	conn net.Conn
	idle time.Duration
}

func (r idleReader) Read(p []byte) (int, error) {
	r.conn.SetReadDeadline(time.Now().Add(r.idle))
	return r.conn.Read(p)
}

func (r *receiver) serve(ctx context.Context) {
	s := r.s
	conn := r.conn
	context.AfterFunc(ctx, func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	cr := &countingReader{r: conn}
	br := bufio.NewReaderSize(cr, 64<<10)
	_, epoch, seq, err := readHello(br, helloMagic)
	if err != nil {
		if errors.Is(err, ErrVersion) {
			writeNack(conn, err.Error())
		}
		r.refuse("bad hello", err)
		return
	}
	curEpoch, curSeq, err := s.cfg.Store.Applied(r.peer)
	if err != nil {
		r.log.Error("reading the peer's cursor failed", "err", err)
		return
	}
	if err := writeHello(conn, replyMagic, ProtocolVersion, curEpoch, curSeq); err != nil {
		r.log.Info("peer connection ended", "err", err)
		return
	}
	r.log.Info("peer connected to push its journal", "peer_epoch", epoch, "peer_seq", seq, "applied_seq", curSeq,
		"same_epoch", curEpoch == epoch)
	idle := 4 * s.cfg.Heartbeat
	cr.r = idleReader{conn: conn, idle: idle}
	// The next segment is read, checked and staged (its bodies fsynced)
	// while the current one is applied: at most one segment waits read
	// ahead, its bodies on disk, so memory stays bounded.
	segs := make(chan readSeg, 1)
	done := make(chan struct{})
	defer func() {
		close(done)
		conn.Close() // ends a read in progress
		for rs := range segs {
			rs.bodies.remove()
		}
	}()
	go r.readAhead(br, cr, curEpoch, curSeq, segs, done)
	for rs := range segs {
		h, ops, bodies, err := rs.h, rs.ops, rs.bodies, rs.err
		s.update(r.peer, func(st *peerState) { st.bytesRecv += rs.n })
		if err != nil {
			bodies.remove()
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				r.log.Info("peer push connection closed")
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				r.log.Warn("peer push connection silent too long; dropped", "timeout", idle)
				return
			}
			if rs.netErr != nil {
				// The network failed, not the peer's data: nobody is left
				// to read a refusal, and nothing was refused.
				r.log.Warn("peer push connection lost in the middle of a segment; nothing applied, the peer will resend",
					"first_seq", h.Prev+1, "err", err)
				return
			}
			writeNack(conn, err.Error())
			r.refuse("segment refused", err)
			return
		}
		// The time spent applying is not the peer's silence: a read
		// waiting meanwhile for the segment after the next gets its
		// deadline pushed on.
		stopKeep := keepReading(conn, idle)
		err = r.applySegment(ctx, h, ops, bodies)
		stopKeep()
		if err != nil {
			bodies.remove()
			if errors.Is(err, ErrProtocol) {
				writeNack(conn, err.Error())
				r.refuse("segment refused", err)
				return
			}
			writeNack(conn, "the receiver could not apply the segment; it will be retried")
			r.log.Error("applying a peer's segment failed; nothing acknowledged, the peer will resend", "first_seq", h.Prev+1,
				"last_seq", h.Last, "err", err)
			s.update(r.peer, func(st *peerState) {
				st.lastFailure, st.lastError = time.Now(), err.Error()
			})
			return
		}
		bodies.remove()
		conn.SetWriteDeadline(time.Now().Add(2 * time.Minute))
		if err := writeAck(conn, h.Last); err != nil {
			r.log.Info("peer push connection ended before the ack", "err", err)
			return
		}
		s.update(r.peer, func(st *peerState) {
			st.lastReceive = time.Now()
			st.opsApplied += int64(len(ops))
		})
	}
}

// readSeg is a segment read ahead, or the error that ended reading.
type readSeg struct {
	h      journal.SegmentHeader
	ops    []journal.Op
	bodies staged
	err    error
	netErr error // the connection's own failure, if that is what err is
	n      int64 // bytes received for it
}

// readAhead reads segments one after the other, each continuing the one
// before (applySegment checks the durable cursor again), until an error,
// which it passes on last.
func (r *receiver) readAhead(br *bufio.Reader, cr *countingReader, epoch, seq uint64, segs chan<- readSeg, done <-chan struct{}) {
	defer close(segs)
	for {
		before := cr.n
		h, ops, bodies, err := r.readSegment(br, epoch, seq)
		rs := readSeg{h: h, ops: ops, bodies: bodies, err: err, netErr: cr.err, n: cr.n - before}
		select {
		case segs <- rs:
		case <-done:
			bodies.remove()
			return
		}
		if err != nil {
			return
		}
		epoch, seq = h.Epoch, h.Last
	}
}

// keepReading pushes conn's read deadline idle ahead now and then until
// the returned stop is called.
func keepReading(conn net.Conn, idle time.Duration) (stop func()) {
	quit := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(idle / 4)
		defer t.Stop()
		for {
			conn.SetReadDeadline(time.Now().Add(idle))
			select {
			case <-quit:
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		close(quit)
		<-finished
	}
}

func (r *receiver) refuse(what string, err error) {
	r.log.Warn("refused a peer's replication data; connection dropped, nothing applied", "what", what, "err", err)
	r.s.counts.refused(err)
	r.s.update(r.peer, func(st *peerState) {
		st.refused++
		st.lastFailure, st.lastError = time.Now(), fmt.Sprintf("%s: %v", what, err)
	})
}

// readSegment reads and checks one whole segment, staging its bodies. The
// segment must continue the cursor exactly (a replayed or skipped range is
// refused), name this peer as its origin, and hold only valid ops whose
// bodies it carries.
func (r *receiver) readSegment(br *bufio.Reader, curEpoch, curSeq uint64) (journal.SegmentHeader, []journal.Op, staged, error) {
	bodies := staged{}
	lim := r.s.cfg.Limits
	if lim.MaxBodySize <= 0 {
		lim = journal.DefaultLimits()
	}
	if _, err := br.Peek(1); err != nil {
		return journal.SegmentHeader{}, nil, bodies, err
	}
	sr, err := journal.NewSegmentReader(br, lim)
	if err != nil {
		return journal.SegmentHeader{}, nil, bodies, err
	}
	h := sr.Header()
	if h.Origin != r.peer {
		return h, nil, bodies, fmt.Errorf("%w: segment of node %s on the connection of node %s", ErrProtocol,
			h.Origin.Short(), r.peer.Short())
	}
	if err := checkCursor(h, curEpoch, curSeq); err != nil {
		return h, nil, bodies, err
	}
	ops, err := sr.Ops()
	if err != nil {
		return h, nil, bodies, err
	}
	want := map[journal.ContentID]bool{}
	syncs := newBodySyncs()
	// A failed segment's bodies are removed after their syncs.
	defer syncs.wait()
	// A large segment's bodies are made durable by one syncfs.
	one := h.Bodies > stageSyncMaxBodies
	for i := range ops {
		op := &ops[i]
		if op.Origin != r.peer || op.Seq != h.Prev+uint64(i)+1 {
			return h, nil, bodies, fmt.Errorf("%w: op %d of the segment is not seq %d of node %s", ErrBadOp, i, h.Prev+uint64(i)+1, r.peer.Short())
		}
		if err := validateOp(op, lim); err != nil {
			return h, nil, bodies, err
		}
		if !op.Content.IsZero() {
			want[op.Content] = true
		}
	}
	for {
		b, body, err := sr.NextBody()
		if errors.Is(err, io.EOF) {
			if err := syncs.wait(); err != nil {
				return h, nil, bodies, err
			}
			if one {
				if err := syncFS(r.s.cfg.StagingDir); err != nil {
					return h, nil, bodies, err
				}
			}
			return h, ops, bodies, nil
		}
		if err != nil {
			return h, nil, bodies, err
		}
		if !want[b.Content] {
			return h, nil, bodies, fmt.Errorf("%w: body %s is not named by any op of the segment", ErrProtocol, b.Content.String()[:16])
		}
		if _, dup := bodies[b.Content]; dup {
			return h, nil, bodies, fmt.Errorf("%w: body %s sent twice", ErrProtocol, b.Content.String()[:16])
		}
		// A name of its own: segments of two peers (or of one peer on an
		// old and a new connection) can carry the same body at once, and
		// each removes its own when done.
		p := filepath.Join(r.s.cfg.StagingDir, fmt.Sprintf("%s.%d", b.Content, stagedSeq.Add(1)))
		f, err := stageBody(p, body)
		if err != nil {
			return h, nil, bodies, err
		}
		bodies[b.Content] = p
		if one {
			if err := f.Close(); err != nil {
				return h, nil, bodies, fmt.Errorf("stage body %s: %w", p, err)
			}
		} else {
			syncs.start(f)
		}
	}
}

// checkCursor refuses a segment that does not continue the cursor (epoch,
// seq) exactly: a replayed or skipped range, or a new epoch that does not
// start at seq 1.
func checkCursor(h journal.SegmentHeader, epoch, seq uint64) error {
	switch {
	case h.Epoch == epoch && h.Prev != seq:
		return fmt.Errorf("%w: segment follows seq %d, this node has applied up to %d (replayed or missing ops)",
			ErrProtocol, h.Prev, seq)
	case h.Epoch != epoch && h.Prev != 0:
		return fmt.Errorf("%w: segment of a new journal epoch must start at seq 1, starts after %d",
			ErrProtocol, h.Prev)
	}
	return nil
}

// stageBody writes body to a new file at p, returned open (for its sync).
func stageBody(p string, body io.Reader) (*os.File, error) {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("stage body: %w", err)
	}
	if _, err = io.Copy(f, body); err != nil {
		f.Close()
		os.Remove(p)
		return nil, fmt.Errorf("stage body %s: %w", p, err)
	}
	return f, nil
}

// applySegment merges the ops into this node, then makes the new cursor
// durable: only then is the segment acknowledged. The cursor the connection
// read may be stale (another connection of the same peer may have applied
// since), so the durable one is checked again under applyMu, where cursors
// move; a segment that does not continue it is refused with an error
// wrapping ErrProtocol, and nothing is applied.
//
// The segment is applied in bulk (group commit): message adds and flag
// changes take effect through the mount one after the other, but their
// index commits are submitted without waiting, and are waited for together
// (applier.flush) before the cursor commit; their bodies were fsynced when
// staged, their renames are made durable together (syncDelivered). So the
// ack still follows everything the segment applied being durable. Until
// the flush, a delivered file may be in the tree and not in the index: the
// segment's adds are first committed as an intent (index.IntentOf), which
// a reconcile after a crash consults so that such a file is recorded as
// the peer's op, not journaled as a local add that would echo back. The
// cursor commit drops the intent.
func (r *receiver) applySegment(ctx context.Context, h journal.SegmentHeader, ops []journal.Op, bodies staged) error {
	s := r.s
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	epoch, seq, err := s.cfg.Store.Applied(r.peer)
	if err != nil {
		return err
	}
	if err := checkCursor(h, epoch, seq); err != nil {
		return err
	}
	var adds []journal.Op
	for i := range ops {
		if ops[i].Kind == journal.MessageAdd {
			adds = append(adds, ops[i])
		}
	}
	if len(adds) > 0 {
		if _, err := s.cfg.Store.Commit(ctx, index.IntentOf(r.peer, adds)); err != nil {
			return err
		}
	}
	a := s.applier
	started := time.Now()
	a.bulk = true
	a.behind = len(ops) >= behindSegmentOps
	defer func() {
		a.flush() // on a failure: nothing is left waiting (the segment is not acked)
		a.dropDelivered()
		a.bulk, a.behind = false, false
		a.unlockAll()
	}()
	for i := range ops {
		err := a.apply(ctx, &ops[i], bodies)
		if err == nil {
			s.counts.applied(ops[i].Kind)
		}
		if err != nil {
			return err
		}
		// Dotlocks are held across ops for a short while only: Dovecot
		// waits on them (and counts a dotlock unchanged for 2 minutes as
		// stale), and a mailbox renamed by a client meanwhile must not
		// carry one away for long. The ops that rename or remove a mailbox
		// directory let go of them first (unlockAll).
		if len(a.locks) > 0 && (time.Since(a.lockedSince) > maxLockHold || i+1 == len(ops) ||
			!bulkKind(&ops[i+1]) || ops[i+1].Mailbox != ops[i].Mailbox) {
			if err := a.showHeld(); err != nil {
				return err
			}
			a.unlockAll()
		}
	}
	applied := time.Now()
	if err := a.flush(); err != nil {
		return err
	}
	flushed := time.Now()
	if err := a.syncDelivered(); err != nil {
		return err
	}
	synced := time.Now()
	a.unlockAll()
	_, err = s.cfg.Store.Commit(ctx, index.AppliedOp(r.peer, h.Epoch, h.Last))
	if len(ops) > 0 {
		r.log.Debug("segment applied", "first_seq", h.Prev+1, "last_seq", h.Last, "ops", len(ops),
			"apply", applied.Sub(started), "flush", flushed.Sub(applied), "sync", synced.Sub(flushed),
			"cursor", time.Since(synced))
	}
	return err
}

// behindSegmentOps is the size of a segment from which it is taken for a
// batch: a backlog (the pusher's segments grow from 64 ops when it has
// more to send than that) or a burst (a client flagging a whole folder).
// Its deliveries and flag renames go in behind the kernel's back, all but
// the last of each directory (applier.held): watchers hear of each
// directory once per mailbox and segment, not of each name. Live
// replication's segments, a few ops each, keep an inotify event per name.
const behindSegmentOps = 64

// maxLockHold bounds how long the applier keeps a mailbox's
// dovecot-uidlist.lock across consecutive ops of a segment.
const maxLockHold = 500 * time.Millisecond
