package syncer

import (
	"time"

	"mailfs/journal"
	"mailfs/peers"
)

// catchUpMinOps is the lag at connect from which a push session is a
// catch-up (a first sync to an empty peer, or one back after a long
// outage) whose progress is logged and shown in status.
const catchUpMinOps = 1000

// catchUpLogEvery is how often a catch-up logs its progress.
const catchUpLogEvery = 10 * time.Second

// catchUp is the progress of a push session that started far behind.
type catchUp struct {
	Started    time.Time
	FromSeq    uint64 // the peer had everything up to here at connect
	ToSeq      uint64 // the journal's seq at connect: done when acked
	AckedSeq   uint64
	TotalBytes int64 // message and file bytes of the ops FromSeq+1..ToSeq
	SentBytes  int64 // replication bytes sent since Started
}

// CatchUp is a catch-up's progress, for status.
type CatchUp struct {
	Started    time.Time
	DoneOps    uint64
	TotalOps   uint64
	SentBytes  int64
	TotalBytes int64
	OpsPerSec  float64
	ETA        time.Duration // 0 until a rate is known
}

func (c *catchUp) progress(now time.Time) CatchUp {
	p := CatchUp{Started: c.Started, DoneOps: c.AckedSeq - c.FromSeq, TotalOps: c.ToSeq - c.FromSeq,
		SentBytes: c.SentBytes, TotalBytes: c.TotalBytes}
	if secs := now.Sub(c.Started).Seconds(); secs > 0 && p.DoneOps > 0 {
		p.OpsPerSec = float64(p.DoneOps) / secs
		p.ETA = time.Duration(float64(p.TotalOps-p.DoneOps) / p.OpsPerSec * float64(time.Second))
	}
	return p
}

// startCatchUp begins tracking a session that starts at from with the
// journal at to, when that is far enough behind to be worth it. The bytes
// to send are summed off the push path: the session must not wait for a
// walk of what may be millions of ops.
func (s *Syncer) startCatchUp(p peers.Peer, from, to uint64) {
	if to < from+catchUpMinOps {
		return
	}
	c := &catchUp{Started: time.Now(), FromSeq: from, ToSeq: to, AckedSeq: from}
	s.update(p.ID, func(st *peerState) { st.catchUp = c })
	s.log.Info("catching up a peer that is far behind", "peer", peers.FormatID(p.ID), "peer_name", p.Name, "ops", to-from)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.wg.Add(1) // under mu, as every Add (see Close)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		var total int64
		err := s.cfg.Store.Ops(from+1, func(op *journal.Op) error {
			if op.Seq > to || s.ctx.Err() != nil {
				return errStopWalk
			}
			if op.Kind == journal.MessageAdd || op.Kind == journal.FileWrite {
				total += op.Size
			}
			return nil
		})
		if err != nil && err != errStopWalk {
			s.log.Warn("reading the journal for a catch-up's size failed", "peer", peers.FormatID(p.ID), "err", err)
			return
		}
		s.update(p.ID, func(st *peerState) { c.TotalBytes = total })
		s.log.Info("catch-up size", "peer", peers.FormatID(p.ID), "peer_name", p.Name, "ops", to-from, "bytes", total)
	}()
}

type stopWalk struct{}

func (stopWalk) Error() string { return "stop" }

var errStopWalk error = stopWalk{}

// catchUpAcked records an ack (and the bytes sent since the last) in the
// peer's catch-up, if one runs, and logs its end.
func (s *Syncer) catchUpAcked(p peers.Peer, seq uint64, sent int64) {
	var done *catchUp
	s.update(p.ID, func(st *peerState) {
		c := st.catchUp
		if c == nil {
			return
		}
		c.AckedSeq = min(seq, c.ToSeq)
		c.SentBytes += sent
		if seq >= c.ToSeq {
			done, st.catchUp = c, nil
		}
	})
	if done != nil {
		elapsed := time.Since(done.Started)
		s.log.Info("peer caught up", "peer", peers.FormatID(p.ID), "peer_name", p.Name, "ops", done.ToSeq-done.FromSeq,
			"bytes_sent", done.SentBytes, "elapsed", elapsed.Round(time.Millisecond),
			"ops_per_s", int(float64(done.ToSeq-done.FromSeq)/elapsed.Seconds()))
	}
}

// logCatchUp logs a running catch-up's progress.
func (s *Syncer) logCatchUp(p peers.Peer) {
	s.mu.Lock()
	c := s.state(p.ID).catchUp
	var pr CatchUp
	if c != nil {
		pr = c.progress(time.Now())
	}
	s.mu.Unlock()
	if c == nil {
		return
	}
	s.log.Info("catching up peer", "peer", peers.FormatID(p.ID), "peer_name", p.Name, "ops_done", pr.DoneOps,
		"ops_total", pr.TotalOps, "bytes_sent", pr.SentBytes, "bytes_total", pr.TotalBytes,
		"ops_per_s", int(pr.OpsPerSec), "eta", pr.ETA.Round(time.Second))
}
