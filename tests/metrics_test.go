package tests

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMetricsDuringReplication scrapes `mount --metrics` while node A
// replicates to B: the peer's lag rises while the link is cut and falls to
// zero once it is back; ops applied from B are counted by kind; FUSE
// request latencies are recorded.
func TestMetricsDuringReplication(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	maddr := freeAddr(t)
	a.Stop()
	a.mailfsProc = startMailfsFor(t, t, a.Store, a.Mnt, "--listen", a.Addr, "--metrics", maddr)
	c.waitAllConnected()
	url := "http://" + maddr + "/metrics"
	peer := fmt.Sprintf(`peer="%s"`, b.Name)

	mkMailbox(t, a.Mnt, "example.com/alice/Maildir")
	syncAll(t, a, b)
	m := scrape(t, url)
	if v := metric(t, m, "mailfs_peer_lag_ops", peer); v != 0 {
		t.Fatalf("lag before any cut: %v, want 0", v)
	}
	if v := metric(t, m, "mailfs_peer_connected", peer); v != 1 {
		t.Fatalf("mailfs_peer_connected %v, want 1", v)
	}
	seq0 := metric(t, m, "mailfs_journal_seq", "")

	c.cut(0, 1)
	waitPeer(t, a, b.ID, func(p map[string]any) bool { return p["connected"] == false })
	when := time.Date(2025, 4, 1, 9, 0, 0, 0, time.UTC)
	for i := 0; i < 20; i++ {
		deliverMsg(t, a.Mnt, "example.com/alice/Maildir", "new", fmt.Sprintf("1700000100.M%dP1.metrics", i),
			bytes.Repeat([]byte{'m'}, 2048), when)
	}
	m = scrape(t, url)
	if v := metric(t, m, "mailfs_peer_lag_ops", peer); v != 20 {
		t.Fatalf("lag while cut off after 20 deliveries: %v ops, want 20", v)
	}
	if v := metric(t, m, "mailfs_peer_lag_bytes", peer); v != 20*2048 {
		t.Fatalf("lag bytes %v, want %d", v, 20*2048)
	}
	if v := metric(t, m, "mailfs_peer_connected", peer); v != 0 {
		t.Fatalf("mailfs_peer_connected while cut: %v, want 0", v)
	}
	if v := metric(t, m, "mailfs_journal_seq", ""); v != seq0+20 {
		t.Fatalf("journal seq %v, want %v", v, seq0+20)
	}
	if v := metric(t, m, "mailfs_fuse_request_duration_seconds_count", `op="rename"`); v < 20 {
		t.Fatalf("FUSE rename latency observations: %v, want at least the 20 deliveries", v)
	}

	c.heal(0, 1)
	syncAll(t, a, b)
	m = scrape(t, url)
	if v := metric(t, m, "mailfs_peer_lag_ops", peer); v != 0 {
		t.Fatalf("lag after heal and sync: %v, want 0", v)
	}
	if v := metric(t, m, "mailfs_peer_sent_ops_total", peer); v < 20 {
		t.Fatalf("ops sent to the peer: %v, want at least 20", v)
	}
	if v := metric(t, m, "mailfs_peer_last_fast_sync_timestamp_seconds", peer); time.Since(time.Unix(int64(v), 0)) > time.Minute {
		t.Fatalf("last fast sync at %v, want just now (the sync after the heal)", v)
	}
	// The clock is measured at each push connection: on loopback the skew
	// is about zero.
	waitPeer(t, a, b.ID, func(p map[string]any) bool { return p["clock_skew_ms"] != nil })
	m = scrape(t, url)
	if v := metric(t, m, "mailfs_peer_clock_skew_seconds", peer); v < -1 || v > 1 {
		t.Fatalf("clock skew on loopback %v s, want |skew| < 1 s", v)
	}
	if _, ok := m[fmt.Sprintf("mailfs_peer_last_full_sync_timestamp_seconds{%s,peer_id=%q}", peer, b.ID)]; ok {
		t.Fatal("a last full sync reported before any ran")
	}
	if out, errs, code := runMailfs(t, "sync", "--full", "--store", a.Store, "--timeout", "60s"); code != 0 {
		t.Fatalf("sync --full: exit %d: %s%s", code, out, errs)
	}
	m = scrape(t, url)
	if v := metric(t, m, "mailfs_peer_last_full_sync_timestamp_seconds", peer); time.Since(time.Unix(int64(v), 0)) > time.Minute {
		t.Fatalf("last full sync at %v, want just now", v)
	}
	if v := metric(t, m, "mailfs_peer_last_full_sync_ok", peer); v != 1 {
		t.Fatalf("mailfs_peer_last_full_sync_ok %v, want 1", v)
	}

	for i := 0; i < 3; i++ {
		deliverMsg(t, b.Mnt, "example.com/alice/Maildir", "new", fmt.Sprintf("1700000200.M%dP1.metricsb", i), []byte("from b\n"), when)
	}
	syncAll(t, b, a)
	m = scrape(t, url)
	if v := metric(t, m, "mailfs_applied_ops_total", `kind="MessageAdd"`); v != 3 {
		t.Fatalf("MessageAdd ops applied from the peer: %v, want 3", v)
	}
	if v := metric(t, m, "mailfs_peer_received_bytes_total", peer); v <= 0 {
		t.Fatalf("bytes received from the peer: %v, want > 0", v)
	}

	// The same key delivered with different bytes on both sides while cut
	// off: rule 9 keeps both, and A counts the conflict it resolved.
	c.cut(0, 1)
	waitPeer(t, a, b.ID, func(p map[string]any) bool { return p["connected"] == false })
	deliverMsg(t, a.Mnt, "example.com/alice/Maildir", "new", "1700000300.M1P1.clash", []byte("A's bytes\n"), when)
	deliverMsg(t, b.Mnt, "example.com/alice/Maildir", "new", "1700000300.M1P1.clash", []byte("B's bytes\n"), when)
	c.heal(0, 1)
	syncAll(t, a, b)
	m = scrape(t, url)
	if v := metric(t, m, "mailfs_conflicts_resolved_total", `rule="9-same-key-both-kept"`); v != 1 {
		t.Fatalf("rule 9 conflicts resolved on A: %v, want 1", v)
	}
}

// scrape fetches a Prometheus text exposition: series ("name{labels}") →
// value.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	cl := &http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("scrape %s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("scrape %s: line %q: %v", url, line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// metric is the one series of name whose labels contain label.
func metric(t *testing.T, m map[string]float64, name, label string) float64 {
	t.Helper()
	var found []string
	var v float64
	for s, x := range m {
		n, labels, _ := strings.Cut(s, "{")
		if n == name && strings.Contains(labels, label) {
			found = append(found, s)
			v = x
		}
	}
	if len(found) != 1 {
		t.Fatalf("metric %s{%s}: %d series match (%v)", name, label, len(found), found)
	}
	return v
}
