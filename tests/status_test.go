package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestStatusMonitoring covers what an admin watches: the status table and
// --json with each peer's lag (ops, bytes, age of the oldest), the PATTERN
// filter with a user's pending ops, and the --check probe failing while a
// peer is cut off and passing once it is back.
func TestStatusMonitoring(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	for _, mb := range []string{"example.com/alice/Maildir", "example.com/alice/Maildir/.Sent", "example.com/bob/Maildir"} {
		mkMailbox(t, a.Mnt, mb)
	}
	syncAll(t, a, b)

	out, errs, code := runMailfs(t, "status", "--store", a.Store, "--check")
	if code != 0 || !strings.HasPrefix(out, "MAILFS OK") || strings.Count(out, "\n") != 1 {
		t.Fatalf("status --check while connected and synced: exit %d, want 0 and one OK line: %q %q", code, out, errs)
	}
	out, _, code = runMailfs(t, "status", "--store", filepath.Join(t.TempDir(), "none"), "--check")
	if code != 2 || !strings.HasPrefix(out, "MAILFS CRITICAL") || !strings.Contains(out, "not running") {
		t.Fatalf("status --check of a store nobody serves: exit %d, want 2 and CRITICAL: %q", code, out)
	}
	if _, errs, code := runMailfs(t, "status", "--store", a.Store, "--check", "--json"); code != 64 {
		t.Fatalf("status --check --json: exit %d, want 64: %s", code, errs)
	}

	c.cut(0, 1)
	waitPeer(t, a, b.ID, func(p map[string]any) bool { return p["connected"] == false })
	when := time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)
	var want int64
	for i, mb := range []string{"example.com/alice/Maildir", "example.com/alice/Maildir", "example.com/alice/Maildir/.Sent", "example.com/bob/Maildir"} {
		body := bytes.Repeat([]byte("x"), 1000*(i+1))
		want += int64(len(body))
		deliverMsg(t, a.Mnt, mb, "new", "1700000000.M"+string(rune('1'+i))+"P1.status", body, when)
	}

	out, _, code = runMailfs(t, "status", "--store", a.Store, "--check")
	if code != 2 || !strings.HasPrefix(out, "MAILFS CRITICAL") || !strings.Contains(out, "disconnected") ||
		!strings.Contains(out, b.Name) || strings.Count(out, "\n") != 1 {
		t.Fatalf("status --check with the peer cut off: exit %d, want 2 and one CRITICAL line naming %s: %q", code, b.Name, out)
	}
	p := peerState(t, a, b.ID)
	if p["lag_ops"] != float64(4) || p["lag_bytes"] != float64(want) || p["oldest_unacked"] == nil {
		t.Fatalf("peer while cut off: lag_ops %v lag_bytes %v oldest_unacked %v, want 4, %d and a time", p["lag_ops"],
			p["lag_bytes"], p["oldest_unacked"], want)
	}
	if s, _ := p["lag_seconds"].(float64); s < 0 || s > 120 {
		t.Fatalf("lag_seconds %v: want the age of the first delivery", p["lag_seconds"])
	}
	out, errs, code = runMailfs(t, "status", "--store", a.Store)
	if code != 0 || !strings.Contains(out, "LAG BYTES") || !strings.Contains(out, b.Name) || !strings.Contains(out, b.ID) {
		t.Fatalf("status table: exit %d: %s%s", code, out, errs)
	}

	out, errs, code = runMailfs(t, "status", "--store", a.Store, "--json", "example.com/a*")
	if code != 0 {
		t.Fatalf("status --json PATTERN: exit %d: %s", code, errs)
	}
	var rep struct {
		Users []struct {
			User      string            `json:"user"`
			Mailboxes int64             `json:"mailboxes"`
			Messages  int64             `json:"messages"`
			Pending   map[string]uint64 `json:"pending"`
		} `json:"users"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status --json PATTERN %q: %v", out, err)
	}
	if len(rep.Users) != 1 || rep.Users[0].User != "example.com/alice" || rep.Users[0].Mailboxes != 2 ||
		rep.Users[0].Messages != 3 || rep.Users[0].Pending[b.ID] != 3 {
		t.Fatalf("status 'example.com/a*': %+v, want alice alone with 2 mailboxes, 3 messages, 3 ops pending for %s", rep.Users, b.Name)
	}
	out, errs, code = runMailfs(t, "status", "--store", a.Store, "*/bob")
	if code != 0 || !strings.Contains(out, "example.com/bob") || strings.Contains(out, "alice") ||
		!strings.Contains(out, "PENDING "+b.Name) {
		t.Fatalf("status '*/bob' table: exit %d: %s%s", code, out, errs)
	}
	if out, _, code = runMailfs(t, "status", "--store", a.Store, "nobody*"); code != 0 || !strings.Contains(out, "no user matches") {
		t.Fatalf("status with a pattern that matches nothing: exit %d: %q", code, out)
	}

	c.heal(0, 1)
	syncAll(t, a, b)
	waitPeer(t, a, b.ID, func(p map[string]any) bool { return p["connected"] == true })
	out, errs, code = runMailfs(t, "status", "--store", a.Store, "--check", "--max-lag", "1m")
	if code != 0 || !strings.HasPrefix(out, "MAILFS OK") {
		t.Fatalf("status --check once the peer is back: exit %d, want 0: %q %q", code, out, errs)
	}
	p = peerState(t, a, b.ID)
	if p["lag_ops"] != float64(0) || p["lag_bytes"] != float64(0) || p["oldest_unacked"] != nil {
		t.Fatalf("peer after sync: %v, want no lag", p)
	}
}

// waitPeer waits until node n's status entry for peer id satisfies ok.
func waitPeer(t *testing.T, n *node, id string, ok func(map[string]any) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		p := peerState(t, n, id)
		if p != nil && ok(p) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: peer %s never reached the expected state: %v\n%s", n.Name, id, p, tail(n.Log(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStatusSyncHistory covers what status says of each peer's sync
// history and clock: the last fast sync (the peer acknowledged every op),
// the last full sync with its result (kept in the store: shown unmounted
// and across a restart), a failed full sync, and the clock skew, which on
// loopback is about zero.
func TestStatusSyncHistory(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	mkMailbox(t, a.Mnt, "example.com/carol/Maildir")
	beforeDelivery := time.Now()
	deliverMsg(t, a.Mnt, "example.com/carol/Maildir", "new", "1700000000.M1P1.history", []byte("Subject: hi\r\n\r\nhi\r\n"),
		time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC))
	syncAll(t, a, b)

	// Fast sync: the ack of the delivery covered the whole journal.
	waitPeer(t, a, b.ID, func(p map[string]any) bool { return !timeField(t, p, "last_fast_sync").Before(beforeDelivery) })
	// The clock is measured once the push connection is up.
	waitPeer(t, a, b.ID, func(p map[string]any) bool { return p["clock_skew_ms"] != nil })
	p := peerState(t, a, b.ID)
	if skew := p["clock_skew_ms"].(float64); skew < -1000 || skew > 1000 {
		t.Fatalf("clock skew on loopback %v ms, want |skew| < 1 s", skew)
	}
	if p["clock_skew_rtt_ms"] == nil || p["clock_skew_measured"] == nil {
		t.Fatalf("clock skew without its round trip and time: %v", p)
	}
	for _, f := range []string{"last_full_sync", "last_full_sync_ok", "last_full_sync_result"} {
		if _, ok := p[f]; !ok {
			t.Fatalf("status --json lacks %s: %v", f, p)
		}
	}
	if p["last_full_sync"] != nil {
		t.Fatalf("a fresh pair has a last full sync: %v", p)
	}

	beforeFull := time.Now()
	if out, errs, code := runMailfs(t, "sync", "--full", "--store", a.Store, "--timeout", "60s"); code != 0 {
		t.Fatalf("sync --full: exit %d: %s%s", code, out, errs)
	}
	p = peerState(t, a, b.ID)
	if timeField(t, p, "last_full_sync").Before(beforeFull) || p["last_full_sync_ok"] != true ||
		!strings.HasPrefix(fmt.Sprint(p["last_full_sync_result"]), "ok, 1 mailbox compared") {
		t.Fatalf("after sync --full: last_full_sync %v ok %v result %q, want a time after %s, ok, 1 mailbox compared",
			p["last_full_sync"], p["last_full_sync_ok"], p["last_full_sync_result"], beforeFull.UTC().Format(time.RFC3339Nano))
	}
	out, errs, code := runMailfs(t, "status", "--store", a.Store)
	for _, want := range []string{"FAST SYNC", "FULL SYNC", "CLOCK SKEW", "full sync    ", "ok, 1 mailbox compared"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("status table lacks %q: exit %d:\n%s%s", want, code, out, errs)
		}
	}
	if !regexp.MustCompile(`\n  clock +\S+ (ahead of|behind) this node's \(within \S+, measured \S+ ago\)\n|\n  clock +the same as this node's`).MatchString(out) {
		t.Fatalf("status table does not say the clock's measurement:\n%s", out)
	}
	if out, _, code := runMailfs(t, "status", "--store", a.Store, "--check"); code != 0 || !strings.Contains(out, "clock skew") {
		t.Fatalf("status --check with the clock measured: exit %d: %q, want OK naming the clock skew", code, out)
	}
	// The peer's side: B measured A's clock too (its own probe, and A's
	// hellos).
	waitPeer(t, b, a.ID, func(p map[string]any) bool { return p["clock_skew_ms"] != nil })

	// A full sync that cannot reach the peer is recorded as failed.
	c.cut(0, 1)
	if out, errs, code := runMailfs(t, "sync", "--full", "--store", a.Store, "--timeout", "30s"); code != 75 {
		t.Fatalf("sync --full with the peer cut off: exit %d, want 75: %s%s", code, out, errs)
	}
	p = peerState(t, a, b.ID)
	if p["last_full_sync_ok"] != false || !strings.HasPrefix(fmt.Sprint(p["last_full_sync_result"]), "failed (unreachable)") {
		t.Fatalf("after a full sync with the peer cut off: ok %v result %q, want a failure", p["last_full_sync_ok"], p["last_full_sync_result"])
	}
	out, _, _ = runMailfs(t, "status", "--store", a.Store)
	if !strings.Contains(out, "failed ") {
		t.Fatalf("status table does not show the failed full sync:\n%s", out)
	}
	c.heal(0, 1)
	if out, errs, code := runMailfs(t, "sync", "--full", "--store", a.Store, "--timeout", "60s"); code != 0 {
		t.Fatalf("sync --full once healed: exit %d: %s%s", code, out, errs)
	}
	want := peerState(t, a, b.ID)

	// Unmounted, and after a restart, the last full sync is read from the
	// store; what is measured live (fast sync, clock) is not known.
	a.Stop()
	p = peerState(t, a, b.ID)
	if p["last_full_sync"] != want["last_full_sync"] || p["last_full_sync_result"] != want["last_full_sync_result"] ||
		p["last_full_sync_ok"] != true {
		t.Fatalf("unmounted: last full sync %v %v %q, want %v ok %q", p["last_full_sync"], p["last_full_sync_ok"],
			p["last_full_sync_result"], want["last_full_sync"], want["last_full_sync_result"])
	}
	if p["clock_skew_ms"] != nil || p["last_fast_sync"] != nil {
		t.Fatalf("unmounted: clock skew %v, last fast sync %v, want null (not measured)", p["clock_skew_ms"], p["last_fast_sync"])
	}
	a.mailfsProc = startMailfsFor(c.t, c.owner, a.Store, a.Mnt, "--listen", a.Addr)
	p = peerState(t, a, b.ID)
	if p["last_full_sync"] != want["last_full_sync"] || p["last_full_sync_result"] != want["last_full_sync_result"] {
		t.Fatalf("after a restart: last full sync %v %q, want %v %q", p["last_full_sync"], p["last_full_sync_result"],
			want["last_full_sync"], want["last_full_sync_result"])
	}
}

// timeField parses an RFC 3339 field of a status entry (the zero time for
// null).
func timeField(t *testing.T, p map[string]any, name string) time.Time {
	t.Helper()
	v, ok := p[name]
	if !ok {
		t.Fatalf("status entry lacks %s: %v", name, p)
	}
	if v == nil {
		return time.Time{}
	}
	ts, err := time.Parse(time.RFC3339Nano, fmt.Sprint(v))
	if err != nil {
		t.Fatalf("%s %v: %v", name, v, err)
	}
	return ts
}
