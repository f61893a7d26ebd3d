package main

import (
	"strings"
	"testing"
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
	} {
		line, healthy := checkLine(statusReply{Peers: c.peers}, 5*60e9)
		if healthy != c.ok || !strings.Contains(line, c.say) || strings.Contains(line, "\n") {
			t.Errorf("%s: checkLine = %q, %v; want %v and a line saying %q", c.name, line, healthy, c.ok, c.say)
		}
	}
}
