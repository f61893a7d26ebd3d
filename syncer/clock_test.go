package syncer

import (
	"bufio"
	"context"
	"net"
	"testing"
	"time"

	"mailfs/journal"
)

// The NTP estimate over fake round trips: a peer whose clock reads
// half-way is found exactly; one whose clock was read off-centre (an
// asymmetric path) is found within half the round trip; no time, or a round
// trip that ends before it starts, gives no sample.
func TestEstimateSkew(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	rtt := 100 * time.Millisecond
	for _, c := range []struct {
		name string
		// peerRead is when, on this node's clock, the peer read its own.
		peerRead time.Duration
		skew     time.Duration
	}{
		{"same clock", rtt / 2, 0},
		{"peer ahead", rtt / 2, 90 * time.Second},
		{"peer behind", rtt / 2, -3*time.Second - 250*time.Millisecond},
		{"read early on an asymmetric path", 10 * time.Millisecond, 2 * time.Second},
		{"read late on an asymmetric path", 95 * time.Millisecond, -2 * time.Second},
	} {
		peerMs := t0.Add(c.peerRead + c.skew).UnixMilli()
		got, ok := estimateSkew(t0, t0.Add(rtt), peerMs)
		if !ok || got.RTT != rtt || !got.At.Equal(t0.Add(rtt)) {
			t.Fatalf("%s: %+v, %v; want a sample over %s", c.name, got, ok, rtt)
		}
		if c.peerRead == rtt/2 && got.Skew != c.skew {
			t.Errorf("%s: skew %s, want %s", c.name, got.Skew, c.skew)
		}
		if err := (got.Skew - c.skew).Abs(); err > rtt/2 {
			t.Errorf("%s: skew %s, want %s within %s", c.name, got.Skew, c.skew, rtt/2)
		}
	}
	if got, ok := estimateSkew(t0, t0.Add(rtt), 0); ok {
		t.Errorf("a hello without a time gave %+v", got)
	}
	if got, ok := estimateSkew(t0, t0.Add(-time.Millisecond), t0.UnixMilli()); ok {
		t.Errorf("a round trip ending before it began gave %+v", got)
	}
	if got, ok := answerClock(time.Time{}, t0, t0.UnixMilli()); ok {
		t.Errorf("a first hello (nothing answered before it) gave %+v", got)
	}
	// Of several samples the one with the shortest round trip wins.
	var best clockSample
	for _, c := range []clockSample{{Skew: 5, RTT: 30, At: t0}, {Skew: 7, RTT: 10, At: t0}, {Skew: 9, RTT: 20, At: t0}} {
		best = better(best, c)
	}
	if best.Skew != 7 {
		t.Errorf("better kept %+v, want the 10 ns round trip", best)
	}
}

// fakeAnswerer answers hellos on conn as a peer whose clock is off by skew
// (time: false, as a mailfs from before the field).
func fakeAnswerer(conn net.Conn, skew time.Duration, sendTime bool) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	for {
		var req fsRequest
		if err := readFrame(br, frameRequest, maxRequestFrame, &req); err != nil {
			return
		}
		h := fsHello{Version: FullSyncVersion}
		if sendTime {
			h.TimeMs = time.Now().Add(skew).UnixMilli()
		}
		if err := writeFrame(conn, frameAnswer, h); err != nil {
			return
		}
	}
}

// The asking side's hello measures the peer's clock; a peer that sends no
// time leaves it unknown and the hello still succeeds.
func TestHelloMeasuresClock(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name     string
		skew     time.Duration
		sendTime bool
	}{
		{"peer 90 s ahead", 90 * time.Second, true},
		{"peer 2 s behind", -2 * time.Second, true},
		{"peer sends no time", 0, false},
	} {
		c1, c2 := net.Pipe()
		go fakeAnswerer(c2, c.skew, c.sendTime)
		fc := &fullConn{conn: c1, br: bufio.NewReader(c1), timeout: 10 * time.Second}
		got, err := fc.hello()
		c1.Close()
		if err != nil {
			t.Fatalf("%s: hello: %v", c.name, err)
		}
		if got.known() != c.sendTime {
			t.Fatalf("%s: measured %v (%+v), want %v", c.name, got.known(), got, c.sendTime)
		}
		if c.sendTime && (got.Skew-c.skew).Abs() > got.RTT/2+2*time.Millisecond {
			t.Errorf("%s: skew %s over %s, want %s", c.name, got.Skew, got.RTT, c.skew)
		}
	}
}

// Against a real answering side (a mounted node's ServeFullSync) on
// loopback the skew is about zero, on both sides: the asker from the
// answers, the answering side from the hellos that follow its answers. An
// asker whose hellos say its clock is 5 minutes slow is recorded so.
func TestClockBothSides(t *testing.T) {
	t.Parallel()
	a := newFullNode(t, "a")
	asker := journal.NodeID{7}
	clockOf := func(id journal.NodeID) clockSample {
		a.sync.mu.Lock()
		defer a.sync.mu.Unlock()
		return a.sync.state(id).clock
	}
	serve := func() (net.Conn, chan struct{}) {
		c1, c2 := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			a.sync.ServeFullSync(context.Background(), c2, asker)
		}()
		return c1, done
	}

	conn, done := serve()
	fc := &fullConn{conn: conn, br: bufio.NewReader(conn), timeout: 10 * time.Second}
	var best clockSample
	for i := 0; i < clockProbes; i++ {
		c, err := fc.hello()
		if err != nil {
			t.Fatalf("hello %d: %v", i, err)
		}
		best = better(best, c)
	}
	conn.Close()
	<-done
	if !best.known() || best.Skew.Abs() > time.Second {
		t.Fatalf("asker's measurement on loopback: %+v, want a skew under 1 s", best)
	}
	if got := clockOf(asker); !got.known() || got.Skew.Abs() > time.Second {
		t.Fatalf("answering side's measurement on loopback: %+v, want a skew under 1 s", got)
	}

	conn, done = serve()
	br := bufio.NewReader(conn)
	slow := -5 * time.Minute
	for i := 0; i < 3; i++ {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if err := writeFrame(conn, frameRequest, fsRequest{Op: "hello", Version: FullSyncVersion, TimeMs: time.Now().Add(slow).UnixMilli()}); err != nil {
			t.Fatal(err)
		}
		var h fsHello
		if err := readFrame(br, frameAnswer, 1024, &h); err != nil || h.TimeMs == 0 {
			t.Fatalf("hello answer %+v, %v: want one with the answering side's time", h, err)
		}
	}
	conn.Close()
	<-done
	if got := clockOf(asker); (got.Skew - slow).Abs() > time.Second {
		t.Fatalf("an asker 5 minutes slow was measured at %+v", got)
	}
}

// The report's summary says what was repaired, or why it failed.
func TestFullSyncSummary(t *testing.T) {
	for _, c := range []struct {
		rep  FullSyncPeerReport
		want string
	}{
		{FullSyncPeerReport{Compared: 3}, "ok, 3 mailboxes compared, nothing to repair"},
		{FullSyncPeerReport{Compared: 1}, "ok, 1 mailbox compared, nothing to repair"},
		{FullSyncPeerReport{Compared: 3, Differing: 1, Restored: 2, Flagged: 1}, "ok, 3 mailboxes compared, 1 differing, 2 restored, 1 flags taken"},
		{FullSyncPeerReport{Err: errFullUnreachable, Unreachable: true}, "failed (unreachable): peer unreachable"},
		{FullSyncPeerReport{Compared: 2, Added: 1, Err: ErrProtocol}, "failed after 2 mailboxes compared, 1 added: replication protocol violated"},
	} {
		if got := c.rep.Summary(); got != c.want {
			t.Errorf("Summary of %+v = %q, want %q", c.rep, got, c.want)
		}
	}
}
