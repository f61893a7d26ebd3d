package journal

import (
	"fmt"
	"sync"
	"time"
)

// HLC is a hybrid logical clock timestamp: wall-clock milliseconds plus a
// logical counter. Together with the origin node ID of the op that carries it,
// it is a total order that survives clock skew and restarts.
type HLC struct {
	WallMs  int64
	Logical uint32
}

// Less orders timestamps; ties are broken by the caller with the origin ID.
func (h HLC) Less(o HLC) bool {
	if h.WallMs != o.WallMs {
		return h.WallMs < o.WallMs
	}
	return h.Logical < o.Logical
}

// IsZero reports whether h was never set.
func (h HLC) IsZero() bool { return h.WallMs == 0 && h.Logical == 0 }

func (h HLC) String() string {
	return fmt.Sprintf("%s+%d", time.UnixMilli(h.WallMs).UTC().Format("2006-01-02T15:04:05.000Z"), h.Logical)
}

// Clock issues monotonically increasing HLC timestamps. It is safe for
// concurrent use.
type Clock struct {
	mu   sync.Mutex
	last HLC
	now  func() time.Time
}

// NewClock returns a clock that never issues a timestamp at or below last
// (the highest timestamp persisted before a restart).
func NewClock(last HLC) *Clock {
	return &Clock{last: last, now: time.Now}
}

// Now returns a fresh timestamp, strictly greater than every earlier one.
func (c *Clock) Now() HLC {
	c.mu.Lock()
	defer c.mu.Unlock()
	wall := c.now().UnixMilli()
	if wall > c.last.WallMs {
		c.last = HLC{WallMs: wall}
	} else {
		c.last.Logical++
	}
	return c.last
}

// Observe merges a timestamp seen on a peer's op so that later local
// timestamps order after it.
func (c *Clock) Observe(h HLC) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last.Less(h) {
		c.last = h
	}
}

// Last returns the highest timestamp issued or observed.
func (c *Clock) Last() HLC {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// Stamp is when and where a change was made: the total order of design §4
// (HLC, then origin ID), used where the newest change wins.
type Stamp struct {
	Time   HLC    `json:"time"`
	Origin NodeID `json:"origin"`
}

// Less orders stamps by time, ties broken by origin ID, so every node picks
// the same winner.
func (s Stamp) Less(o Stamp) bool {
	if s.Time != o.Time {
		return s.Time.Less(o.Time)
	}
	return string(s.Origin[:]) < string(o.Origin[:])
}

// StampOf returns the stamp of op.
func StampOf(op *Op) Stamp { return Stamp{Time: op.Time, Origin: op.Origin} }
