package syncer

import (
	"bufio"
	"context"
	"fmt"
	"time"

	"mailfs/journal"
	"mailfs/peers"
)

// Clock skew is estimated the way NTP does it, over the full sync
// protocol's hello, whose request and answer both carry the sender's wall
// clock (unix ms; a peer that does not send it leaves the skew unknown, and
// one that does not know the field ignores it, so neither side needs a new
// protocol version). The asker notes its clock when it sends (t1) and when
// the answer arrives (t4); the peer's clock t2 was read in between, so the
// peer is ahead by t2 - (t1+t4)/2, give or take half the round trip. Of
// several hellos on one connection the one with the shortest round trip is
// kept. The skew is only shown (status, metrics, --check): the HLC stamps
// order ops whatever the clocks say.

// clockProbes is how many hellos one clock probe sends.
const clockProbes = 4

// clockProbeEvery is how often a connected peer's clock is measured again
// (and once at each push connection).
const clockProbeEvery = 10 * time.Minute

// clockSample is one estimate of a peer's clock against this node's.
type clockSample struct {
	// Skew is the peer's wall clock minus this node's.
	Skew time.Duration
	// RTT is the round trip it was measured over: the estimate is good to
	// RTT/2.
	RTT time.Duration
	// At is when it was measured.
	At time.Time
}

func (c clockSample) known() bool { return !c.At.IsZero() }

// estimateSkew is the NTP estimate of one exchange: this node sent at
// sent, the peer's clock read peerMs (unix ms) in between, and the answer
// came back at received. A peer that sent no time (0 or less) gives no
// sample.
func estimateSkew(sent, received time.Time, peerMs int64) (clockSample, bool) {
	if peerMs <= 0 || received.Before(sent) {
		return clockSample{}, false
	}
	rtt := received.Sub(sent) // monotonic: immune to a clock step meanwhile
	mid := sent.Add(rtt / 2).Round(0)
	return clockSample{Skew: time.UnixMilli(peerMs).Sub(mid), RTT: rtt, At: received}, true
}

// better keeps the sample with the shorter round trip (the tighter bound).
func better(best, c clockSample) clockSample {
	if !best.known() || c.RTT < best.RTT {
		return c
	}
	return best
}

func wallMs(t time.Time) int64 { return t.UnixMilli() }

// hello greets the peer on a full sync connection, checks its version and
// measures its clock.
func (fc *fullConn) hello() (clockSample, error) {
	var h fsHello
	sent := time.Now()
	if err := fc.call(fsRequest{Op: "hello", Version: FullSyncVersion, TimeMs: wallMs(sent)}, frameAnswer, 1024, &h); err != nil {
		return clockSample{}, err
	}
	received := time.Now()
	if h.Version != FullSyncVersion {
		return clockSample{}, fmt.Errorf("%w: peer speaks full sync version %d, this mailfs %d", ErrVersion, h.Version, FullSyncVersion)
	}
	c, _ := estimateSkew(sent, received, h.TimeMs)
	return c, nil
}

// probeClock measures p's clock over a full sync connection that does
// nothing else: a few hellos back to back, the best one kept.
func (s *Syncer) probeClock(ctx context.Context, p peers.Peer) (clockSample, error) {
	conn, err := s.dialFull(ctx, p)
	if err != nil {
		return clockSample{}, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	fc := &fullConn{conn: conn, br: bufio.NewReaderSize(conn, 4<<10), timeout: 15 * time.Second}
	var best clockSample
	for i := 0; i < clockProbes; i++ {
		c, err := fc.hello()
		if err != nil {
			return best, err
		}
		if !c.known() {
			return best, nil // a peer that sends no time: one hello says so
		}
		best = better(best, c)
	}
	return best, nil
}

// clockLoop measures p's clock now and every clockProbeEvery until ctx
// ends (the push session's end).
func (s *Syncer) clockLoop(ctx context.Context, p peers.Peer) {
	for {
		c, err := s.probeClock(ctx, p)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.log.Debug("measuring the peer's clock failed", "peer", peers.FormatID(p.ID), "err", err)
		case c.known():
			s.noteClock(p.ID, c)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(clockProbeEvery):
		}
	}
}

// skewWarn is the skew past which a measurement is logged as a warning
// (status --check says CRITICAL past the same).
const skewWarn = time.Minute

// noteClock records a measurement of peer id's clock.
func (s *Syncer) noteClock(id journal.NodeID, c clockSample) {
	var prev clockSample
	s.update(id, func(st *peerState) { prev, st.clock = st.clock, c })
	if c.Skew.Abs() > skewWarn && (!prev.known() || prev.Skew.Abs() <= skewWarn) {
		s.log.Warn("the peer's clock is far from this node's: fix NTP (replication orders ops by HLC and goes on)",
			"peer", peers.FormatID(id), "skew", c.Skew.Round(time.Millisecond), "rtt", c.RTT.Round(time.Millisecond))
	}
}

// answerClock estimates the asker's clock on the answering side: the
// answer to one hello (sent at answered) and the next hello, which the
// asker sends as soon as it has that answer, with its clock read in
// between, received at received, are an NTP exchange the other way round.
func answerClock(answered, received time.Time, askerMs int64) (clockSample, bool) {
	if answered.IsZero() {
		return clockSample{}, false
	}
	return estimateSkew(answered, received, askerMs)
}
