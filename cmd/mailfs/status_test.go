package main

import (
	"strings"
	"testing"
	"time"
)

func TestUserOf(t *testing.T) {
	for _, c := range []struct{ dir, want string }{
		{"example.com/alice/Maildir", "example.com/alice"},
		{"example.com/alice/Maildir/.Sent", "example.com/alice"},
		{"example.com/alice/Maildir/.Lists.go", "example.com/alice"},
		{"alice", "alice"},
		{"alice/.Sent", "alice"},
		{"alice/.Sent/.Old", "alice"},
		{".", "."},
		{"", "."},
	} {
		if got := userOf(c.dir); got != c.want {
			t.Errorf("userOf(%q) = %q, want %q", c.dir, got, c.want)
		}
	}
}

func TestMatchUser(t *testing.T) {
	for _, c := range []struct {
		pattern, user string
		want          bool
	}{
		{"*", "example.com/alice", true},
		{"example.com/*", "example.com/alice", true},
		{"example.com/*", "example.org/alice", false},
		{"*/alice", "example.com/alice", true},
		{"*alice*", "example.com/malice2", true},
		{"a?ice", "alice", true},
		{"a?ice", "alice2", false},
		{"alice", "alice", true},
		{"alice", "alic", false},
		{"", "alice", false},
		{"**", "", true},
	} {
		if got := matchUser(c.pattern, c.user); got != c.want {
			t.Errorf("matchUser(%q, %q) = %v, want %v", c.pattern, c.user, got, c.want)
		}
	}
}

func TestCheckLine(t *testing.T) {
	ok := statusPeer{Name: "mx2", Connected: true}
	lagging := statusPeer{Name: "mx3", Connected: true, LagOps: 7, LagSeconds: 400}
	down := statusPeer{Name: "mx4", LagOps: 2, LagSeconds: 3, LastError: "dial tcp: connection refused"}
	fresh := statusPeer{Name: "mx5", Connected: true, LagOps: 1, LagSeconds: 1}
	ms := func(v int64) *int64 { return &v }
	closeClock := statusPeer{Name: "mx6", Connected: true, ClockSkewMs: ms(-850)}
	edgeClock := statusPeer{Name: "mx7", Connected: true, ClockSkewMs: ms(60_000)}
	fastClock := statusPeer{Name: "mx8", Connected: true, ClockSkewMs: ms(61_500)}
	slowClock := statusPeer{Name: "mx9", Connected: true, ClockSkewMs: ms(-3_600_000)}
	for _, c := range []struct {
		name  string
		peers []statusPeer
		ok    bool
		say   string
	}{
		{"all connected, nothing pending", []statusPeer{ok}, true, "MAILFS OK - 1 of 1 peers connected"},
		{"a young lag is fine", []statusPeer{ok, fresh}, true, "MAILFS OK"},
		{"no peer paired", nil, false, "no peer is paired"},
		{"lag older than max", []statusPeer{ok, lagging}, false, "peer mx3 lacks 7 ops, the oldest 6m40s old (max 5m0s)"},
		{"disconnected", []statusPeer{down}, false, "peer mx4 disconnected (2 ops unacknowledged, oldest 3s): dial tcp: connection refused"},
		{"a small clock skew is fine", []statusPeer{ok, closeClock}, true, "clock skew 850ms (max 1m0s)"},
		{"a skew of exactly the max is fine", []statusPeer{edgeClock}, true, "clock skew 1m0s (max 1m0s)"},
		{"a clock too far ahead", []statusPeer{ok, fastClock}, false, "peer mx8's clock is 1m2s ahead of this node's (max 1m0s): fix NTP"},
		{"a clock an hour behind", []statusPeer{slowClock}, false, "peer mx9's clock is 1h0m0s behind this node's (max 1m0s)"},
		{"skew and disconnection both said", []statusPeer{down, fastClock}, false, "mx4 disconnected (2 ops unacknowledged, oldest 3s): dial tcp: connection refused; peer mx8's clock"},
	} {
		line, healthy := checkLine(statusReply{Peers: c.peers}, 5*60e9)
		if healthy != c.ok || !strings.Contains(line, c.say) || strings.Contains(line, "\n") {
			t.Errorf("%s: checkLine = %q, %v; want %v and a line saying %q", c.name, line, healthy, c.ok, c.say)
		}
	}
}

// The peers' table has the fast sync, full sync and clock skew columns;
// what does not fit (address, last error, the full sync's result, the
// clock's measurement) follows per peer.
func TestPrintPeers(t *testing.T) {
	ago := func(d time.Duration) *string { return rfc3339(time.Now().Add(-d)) }
	skew, rtt := int64(-1234), int64(4)
	ps := []statusPeer{
		{Name: "mx2", ID: "E95B6F3F", Address: "mx2.example.net:7000", Connected: true, AckedSeq: 9,
			LastSuccess: ago(2 * time.Second), LastFastSync: ago(2 * time.Second), LastFullSync: ago(2 * time.Hour),
			LastFullSyncOK: true, LastFullSyncResult: "ok, 3 mailboxes compared, nothing to repair",
			ClockSkewMs: &skew, ClockSkewRTTMs: &rtt, ClockSkewMeasured: ago(time.Minute)},
		{Name: "mx3", ID: "0A1B2C3D", Address: "mx3.example.net:7000", LastFailure: ago(time.Second),
			LastError: "dial mx3.example.net:7000: connection refused", LastFullSync: ago(time.Hour),
			LastFullSyncResult: "failed (unreachable): dial mx3.example.net:7000: connection refused"},
	}
	var b strings.Builder
	printPeers(&b, ps)
	out := b.String()
	lines := strings.Split(out, "\n")
	head := lines[0]
	for _, col := range []string{"FAST SYNC", "FULL SYNC", "LAST SUCCESS", "LAST FAILURE", "CLOCK SKEW", "LAG BYTES"} {
		if !strings.Contains(head, col) {
			t.Errorf("table head %q lacks %s", head, col)
		}
	}
	for _, want := range []string{
		"-1.234s", "2h0m0s ago", "failed 1h0m0s ago",
		"  address      mx2.example.net:7000",
		"  full sync    2h0m0s ago: ok, 3 mailboxes compared, nothing to repair",
		"  clock        1.234s behind this node's (within 3ms, measured 1m0s ago)",
		"  last error   dial mx3.example.net:7000: connection refused",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("peers table lacks %q:\n%s", want, out)
		}
	}
	if !strings.HasPrefix(lines[2], "mx3 ") || !strings.HasSuffix(strings.TrimSpace(lines[2]), " -") {
		t.Errorf("a peer never measured should show '-' for its skew: %q", lines[2])
	}
}
