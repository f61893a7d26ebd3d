package syncer

import (
	"errors"
	"sync"

	"mailfs/journal"
)

// Counters are the syncer's cumulative figures since start, for metrics:
// peer ops applied by kind, segments refused by reason, and merge
// conflicts resolved by rule of design §6.
type Counters struct {
	Applied   map[string]int64
	Refused   map[string]int64
	Conflicts map[string]int64
}

// The rules a resolved conflict is counted under.
const (
	ruleSamePathMerge = "3-same-path-merge"
	ruleUnseenKept    = "4-unseen-mail-kept"
	ruleKeyConflict   = "9-same-key-both-kept"
)

type counters struct {
	mu sync.Mutex
	c  Counters
}

func newCounters() *counters {
	return &counters{c: Counters{Applied: map[string]int64{}, Refused: map[string]int64{}, Conflicts: map[string]int64{}}}
}

func (c *counters) applied(k journal.Kind) {
	c.mu.Lock()
	c.c.Applied[k.String()]++
	c.mu.Unlock()
}

func (c *counters) refused(err error) {
	c.mu.Lock()
	c.c.Refused[refusalReason(err)]++
	c.mu.Unlock()
}

func (c *counters) conflict(rule string) {
	c.mu.Lock()
	c.c.Conflicts[rule]++
	c.mu.Unlock()
}

func (c *counters) snapshot() Counters {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := Counters{Applied: map[string]int64{}, Refused: map[string]int64{}, Conflicts: map[string]int64{}}
	for k, v := range c.c.Applied {
		out.Applied[k] = v
	}
	for k, v := range c.c.Refused {
		out.Refused[k] = v
	}
	for k, v := range c.c.Conflicts {
		out.Conflicts[k] = v
	}
	return out
}

// refusalReason classes why a peer's data was refused.
func refusalReason(err error) string {
	switch {
	case errors.Is(err, ErrVersion), errors.Is(err, journal.ErrSegmentVersion), errors.Is(err, journal.ErrUnknownVersion):
		return "version"
	case errors.Is(err, journal.ErrSegmentLimit):
		return "limit"
	case errors.Is(err, ErrBadOp):
		return "bad_op"
	case errors.Is(err, journal.ErrBadSegment), errors.Is(err, journal.ErrMalformed):
		return "corrupt"
	case errors.Is(err, ErrProtocol):
		return "protocol"
	}
	return "other"
}

// Counters returns the syncer's cumulative figures.
func (s *Syncer) Counters() Counters { return s.counts.snapshot() }
