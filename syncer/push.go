package syncer

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"mailfs/index"
	"mailfs/journal"
	"mailfs/peers"
)

// pushLoop keeps a push connection to p up, reconnecting with backoff.
func (s *Syncer) pushLoop(p peers.Peer, st *peerState) {
	defer s.wg.Done()
	log := s.log.With("peer", peers.FormatID(p.ID), "peer_name", p.Name, "address", p.Address)
	backoff := s.cfg.RetryMin
	for s.ctx.Err() == nil {
		started := time.Now()
		err := s.pushSession(s.ctx, p, st)
		s.update(p.ID, func(st *peerState) { st.connected, st.catchUp = false, nil })
		if s.ctx.Err() != nil {
			return
		}
		s.update(p.ID, func(st *peerState) {
			st.lastFailure = time.Now()
			st.lastError = err.Error()
		})
		if time.Since(started) > 10*time.Second {
			backoff = s.cfg.RetryMin
		}
		log.Warn("pushing to peer failed; retrying", "err", err, "retry_in", backoff)
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(backoff):
		case <-st.retry:
			backoff = s.cfg.RetryMin
		}
		backoff *= 2
		if backoff > s.cfg.RetryMax {
			backoff = s.cfg.RetryMax
		}
	}
}

// countingWriter counts the bytes sent.
type countingWriter struct {
	w    io.Writer
	n    int64
	conn net.Conn
	idle time.Duration
}

// Write gives every write idle to complete: a slow link is fine as long as
// it moves.
func (c *countingWriter) Write(p []byte) (int, error) {
	if c.conn != nil {
		c.conn.SetWriteDeadline(time.Now().Add(c.idle))
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// pushSession connects to p, learns its cursor and streams segments until
// the connection fails or the syncer stops.
func (s *Syncer) pushSession(ctx context.Context, p peers.Peer, st *peerState) error {
	raw, err := peers.LinkDialer(10*time.Second).DialContext(ctx, "tcp", p.Address)
	if err != nil {
		return fmt.Errorf("dial %s: %w", p.Address, err)
	}
	conn := tls.Client(raw, peers.ClientConfig(s.cfg.Identity, p.ID))
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = conn.HandshakeContext(hctx)
	cancel()
	if err != nil {
		return fmt.Errorf("TLS handshake with %s: %w", p.Address, err)
	}
	// An older peer (ALPN mailfs/1) reads only segment format 1.
	version := peers.SegmentVersion(conn.ConnectionState().NegotiatedProtocol)
	epoch := s.cfg.Store.Epoch()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := writeHello(conn, helloMagic, ProtocolVersion, epoch, s.cfg.Store.Seq()); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	br := bufio.NewReader(conn)
	_, peerEpoch, from, err := readHello(br, replyMagic)
	if err != nil {
		return fmt.Errorf("hello reply: %w", err)
	}
	conn.SetDeadline(time.Time{})
	if peerEpoch != epoch || from > s.cfg.Store.Seq() {
		if from != 0 || peerEpoch != 0 {
			s.log.Warn("peer's cursor is from another journal epoch or ahead of this journal: resending everything",
				"peer", peers.FormatID(p.ID), "peer_cursor_epoch", peerEpoch, "peer_cursor_seq", from, "epoch", epoch)
		}
		from = 0
	}
	upToDate := from == s.cfg.Store.Seq()
	s.update(p.ID, func(st *peerState) {
		st.connected = true
		st.acked, st.ackedEpoch = from, epoch
		st.lastError = ""
		if upToDate {
			st.lastFastSync = time.Now()
		}
	})
	// The peer's clock is measured while the session lasts, on a side
	// connection: the push stream's format stays as it is.
	clockCtx, stopClock := context.WithCancel(ctx)
	clockDone := make(chan struct{})
	go func() {
		defer close(clockDone)
		s.clockLoop(clockCtx, p)
	}()
	defer func() {
		stopClock()
		<-clockDone
	}()
	s.log.Info("pushing to peer", "peer", peers.FormatID(p.ID), "peer_name", p.Name, "from_seq", from+1,
		"journal_seq", s.cfg.Store.Seq())
	s.update(p.ID, func(st *peerState) { st.catchUp = nil })
	s.startCatchUp(p, from, s.cfg.Store.Seq())
	progress := time.NewTicker(catchUpLogEvery)
	defer progress.Stop()

	acks := make(chan uint64, s.cfg.Window+1)
	ackErr := make(chan error, 1)
	go func() {
		for {
			seq, err := readAck(br)
			if err != nil {
				ackErr <- err
				return
			}
			acks <- seq
		}
	}()

	cw := &countingWriter{w: conn, conn: conn, idle: 2 * time.Minute}
	bw := bufio.NewWriterSize(cw, 64<<10)
	sent := from
	var sentAtAck int64
	var inflight []uint64
	heartbeat := time.NewTicker(s.cfg.Heartbeat)
	defer heartbeat.Stop()
	ackTimeout := time.NewTimer(time.Hour)
	defer ackTimeout.Stop()
	armAck := func() { ackTimeout.Reset(4*s.cfg.Heartbeat + time.Minute) }
	// The first segments of a session are small and then grow: the peer
	// applies a segment only once it has all of it, and applies it while
	// it receives the next, so a small first segment starts its work
	// early and a large one later keeps the per-segment costs down.
	segOps := min(firstSegmentOps, s.cfg.MaxSegmentOps)
	for {
		if len(inflight) < s.cfg.Window && sent < s.cfg.Store.Seq() {
			before := cw.n
			last, n, err := s.writeSegment(bw, sent, epoch, segOps, version)
			segOps = min(2*segOps, s.cfg.MaxSegmentOps)
			if err == nil {
				err = bw.Flush()
			}
			s.update(p.ID, func(st *peerState) {
				st.bytesSent += cw.n - before
				st.opsSent += int64(n)
			})
			if err != nil {
				return fmt.Errorf("send segment after seq %d: %w", sent, err)
			}
			if len(inflight) == 0 {
				armAck()
			}
			inflight = append(inflight, last)
			sent = last
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case seq := <-acks:
			if len(inflight) == 0 || seq != inflight[0] {
				return fmt.Errorf("%w: ack for seq %d, expected %v", ErrProtocol, seq, inflight)
			}
			inflight = inflight[1:]
			if len(inflight) > 0 {
				armAck()
			}
			// An ack up to the journal's end is a fast sync: the peer
			// then had every op this node had journaled.
			upToDate := seq >= s.cfg.Store.Seq()
			s.update(p.ID, func(st *peerState) {
				st.acked = seq
				st.lastSuccess = time.Now()
				if upToDate {
					st.lastFastSync = st.lastSuccess
				}
			})
			s.catchUpAcked(p, seq, cw.n-sentAtAck)
			sentAtAck = cw.n
		case err := <-ackErr:
			var re *RefusedError
			if errors.As(err, &re) {
				return err
			}
			return fmt.Errorf("reading acks: %w", err)
		case <-st.kick:
		case <-progress.C:
			s.logCatchUp(p)
		case <-heartbeat.C:
			if len(inflight) > 0 {
				continue
			}
			if _, _, err := s.writeSegment(bw, sent, epoch, 0, version); err != nil {
				return fmt.Errorf("heartbeat: %w", err)
			}
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("heartbeat: %w", err)
			}
			armAck()
			inflight = append(inflight, sent)
		case <-ackTimeout.C:
			if len(inflight) > 0 {
				return fmt.Errorf("no ack for %d segments", len(inflight))
			}
		}
	}
}

var errSegmentFull = errors.New("segment full")

// segmentBytes bounds the encoded ops of one segment; segmentBodyBytes the
// bodies it carries (past the first op): a segment is received and applied
// whole before its ack, so it must cross a slow link well within the ack
// timeout, and a dropped connection should cost at most one segment.
const (
	segmentBytes     = 4 << 20
	segmentBodyBytes = 32 << 20
)

// firstSegmentOps bounds the ops of a session's first segment.
const firstSegmentOps = 64

// writeSegment writes the ops after seq after (up to maxOps) with the
// bodies the peer needs, and returns the last seq written. With no ops
// after it, or maxOps 0, it writes an empty segment (a heartbeat), in
// segment format version.
func (s *Syncer) writeSegment(w io.Writer, after, epoch uint64, maxOps int, version uint16) (last uint64, n int, err error) {
	var ops []journal.Op
	size := 0
	var bodySize int64
	err = s.cfg.Store.Ops(after+1, func(op *journal.Op) error {
		if len(ops) >= maxOps || size > segmentBytes {
			return errSegmentFull
		}
		body := int64(0)
		if !op.Content.IsZero() && op.LinkTarget == "" {
			body = op.Size
		}
		if len(ops) > 0 && bodySize+body > segmentBodyBytes {
			return errSegmentFull
		}
		ops = append(ops, *op)
		size += 128 + len(op.Path) + len(op.NewPath) + len(op.Key)
		bodySize += body
		return nil
	})
	if err != nil && !errors.Is(err, errSegmentFull) {
		return after, 0, fmt.Errorf("read journal: %w", err)
	}
	bodies, files := s.openBodies(ops)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	last = after + uint64(len(ops))
	sw, err := journal.NewSegmentWriterVersion(w, version)
	if err != nil {
		return after, 0, err
	}
	h := journal.SegmentHeader{Origin: s.cfg.Store.Node(), Epoch: epoch, Prev: after, Last: last, Bodies: uint32(len(bodies))}
	if err := sw.WriteHeader(h, ops); err != nil {
		return after, 0, err
	}
	// A message's file is never rewritten, so its bytes are not hashed
	// again here (the peer verifies every body); a plain file's may have
	// been rewritten in place since the index read, and is checked.
	rewritable := map[journal.ContentID]bool{}
	for i := range ops {
		if ops[i].Kind != journal.MessageAdd && ops[i].Kind != journal.MessageMove {
			rewritable[ops[i].Content] = true
		}
	}
	for i, b := range bodies {
		write := sw.WriteBodyUnchecked
		if rewritable[b.Content] {
			write = sw.WriteBody
		}
		if err := write(b, files[i]); err != nil {
			return after, 0, fmt.Errorf("body %s: %w", b.Content.String()[:16], err)
		}
	}
	return last, len(ops), sw.Close()
}

// openBodies opens the files whose content the ops add, once per content.
// A file that is gone (moved or expunged since the op) is left out: a later
// op in the journal says where the message went.
func (s *Syncer) openBodies(ops []journal.Op) ([]journal.Body, []*os.File) {
	var bodies []journal.Body
	var files []*os.File
	seen := map[journal.ContentID]bool{}
	// Where every body is, in one index read: a read per op cost a
	// transaction each, most of a small segment's time to its first byte.
	rels := make([]string, len(ops))
	_ = s.cfg.Store.View(func(v index.PeerView) error {
		mailboxes := map[journal.GUID]string{}
		for i := range ops {
			if op := &ops[i]; !op.Content.IsZero() && op.LinkTarget == "" {
				rels[i] = currentPath(v, op, mailboxes)
			}
		}
		return nil
	})
	for i := range ops {
		op := &ops[i]
		if op.Content.IsZero() || seen[op.Content] || op.LinkTarget != "" {
			continue
		}
		// The message may be renamed (a flag change) between the index
		// read and the open: look again, for as long as the index still
		// has it (the rename's index commit follows the rename on disk; on
		// a loaded machine that can take a while). Only a message that is
		// no longer there at all (expunged, or moved: the move carries it)
		// goes without its body: the peer could never get it otherwise.
		var f *os.File
		if rels[i] != "" {
			f, _ = os.Open(filepath.Join(s.cfg.Root, filepath.FromSlash(rels[i])))
		}
		deadline := time.Now().Add(10 * time.Second)
		for try := 0; f == nil && (try < 20 || time.Now().Before(deadline)); try++ {
			var rel string
			_ = s.cfg.Store.View(func(v index.PeerView) error {
				rel = currentPath(v, op, nil)
				return nil
			})
			if rel == "" {
				break
			}
			var err error
			if f, err = os.Open(filepath.Join(s.cfg.Root, filepath.FromSlash(rel))); err != nil {
				f = nil
				time.Sleep(time.Duration(min(try+1, 20)) * time.Millisecond)
			}
		}
		if f == nil {
			continue
		}
		fi, err := f.Stat()
		if err != nil || !fi.Mode().IsRegular() || fi.Size() != op.Size {
			f.Close()
			continue
		}
		seen[op.Content] = true
		bodies = append(bodies, journal.Body{Content: op.Content, Size: op.Size})
		files = append(files, f)
	}
	return bodies, files
}

// currentPath is where the content op added lives now, if still there.
// mailboxes, if not nil, keeps the paths of the mailboxes looked up in v
// (a segment's adds are mostly to a few).
func currentPath(v index.PeerView, op *journal.Op, mailboxes map[journal.GUID]string) string {
	switch op.Kind {
	case journal.MessageAdd, journal.MessageMove:
		g, key := op.Mailbox, op.Key
		if op.Kind == journal.MessageMove {
			g = op.Target
			if op.NewKey != "" {
				key = op.NewKey
			}
		}
		m, ok, err := v.Message(g, key)
		if err != nil || !ok || m.Content != op.Content || m.Missing {
			return ""
		}
		p, ok := mailboxes[g]
		if !ok {
			mb, ok, err := v.Mailbox(g)
			if err != nil || !ok {
				return ""
			}
			if p = mb.Path; mailboxes != nil {
				mailboxes[g] = p
			}
		}
		return joinRel(p, subName(m.Sub), m.Name)
	case journal.FileWrite:
		// The version is at its path, or kept as a conflict copy when a
		// newer one took the path since (rule 10).
		for _, p := range []string{op.Path, index.ConflictName(op.Path, index.DotOf(op))} {
			if f, ok, err := v.File(p); err == nil && ok && f.Content == op.Content {
				return p
			}
		}
		return ""
	}
	return ""
}

func joinRel(parts ...string) string {
	out := ""
	for _, p := range parts {
		if p == "" {
			continue
		}
		if out != "" {
			out += "/"
		}
		out += p
	}
	return out
}
