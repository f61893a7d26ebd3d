package tests

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"mailfs/peers"
)

// freeAddr returns a loopback address with a port that was free a moment
// ago, for a daemon to listen on. The port is below the kernel's ephemeral
// range (32768 and up by default), where the outgoing connections of
// parallel tests take their ports: a port the kernel handed out for :0
// could be an outgoing connection's by the time the daemon binds it. No
// port is handed out twice in one test process; test processes run side by
// side (batches of random scenarios) get ranges of their own with
// MAILFS_TEST_PORTS=LOW-HIGH, or a cut link's proxy may find its port
// taken by the other process when the link heals.
func freeAddr(t *testing.T) string {
	t.Helper()
	freePorts.Lock()
	defer freePorts.Unlock()
	low, high := testPorts(t)
	for range 200 {
		port := low + rand.IntN(high-low+1)
		if freePorts.given[port] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // in use
		}
		ln.Close()
		freePorts.given[port] = true
		return ln.Addr().String()
	}
	t.Fatalf("no free loopback port in %d-%d after 200 tries", low, high)
	return ""
}

// testPorts is the range freeAddr draws from: 20000-31999, or
// MAILFS_TEST_PORTS.
func testPorts(t *testing.T) (low, high int) {
	v := os.Getenv("MAILFS_TEST_PORTS")
	if v == "" {
		return 20000, 31999
	}
	if _, err := fmt.Sscanf(v, "%d-%d", &low, &high); err != nil || low < 1024 || high > 65535 || high-low < 100 {
		t.Fatalf("MAILFS_TEST_PORTS=%q: want LOW-HIGH, 1024 <= LOW, LOW+100 <= HIGH <= 65535", v)
	}
	return low, high
}

var freePorts = struct {
	sync.Mutex
	given map[int]bool
}{given: map[int]bool{}}

func initNode(t *testing.T, store, name string, extra ...string) {
	t.Helper()
	args := append([]string{"init", "--store", store, "--name", name}, extra...)
	if _, errs, code := runMailfs(t, args...); code != 0 {
		t.Fatalf("mailfs init %s: exit %d: %s", name, code, errs)
	}
}

func nodeID(t *testing.T, st map[string]any) string {
	t.Helper()
	id, _ := st["node"].(map[string]any)["id"].(string)
	if id == "" {
		t.Fatalf("status without node id: %v", st)
	}
	return id
}

// statusPeers returns status --json's peers.
func statusPeers(t *testing.T, st map[string]any) []map[string]any {
	t.Helper()
	raw, ok := st["peers"].([]any)
	if !ok {
		t.Fatalf("status peers is %T, want a list: %v", st["peers"], st)
	}
	var ps []map[string]any
	for _, p := range raw {
		ps = append(ps, p.(map[string]any))
	}
	return ps
}

// checkPeer checks that status lists exactly one peer, the given one, as
// a node that is not mounted sees it: not connected, nothing acked.
func checkPeer(t *testing.T, who string, st map[string]any, id, name, addr string) {
	t.Helper()
	if ps := statusPeers(t, st); len(ps) != 1 {
		t.Fatalf("%s: status lists %d peers, want 1: %v", who, len(ps), ps)
	}
	checkHasPeer(t, who, st, id, name, addr)
}

// checkHasPeer checks that status lists the given peer among others.
func checkHasPeer(t *testing.T, who string, st map[string]any, id, name, addr string) {
	t.Helper()
	var p map[string]any
	for _, q := range statusPeers(t, st) {
		if q["id"] == id {
			p = q
		}
	}
	if p == nil {
		t.Fatalf("%s: status does not list peer %s: %v", who, id, st["peers"])
	}
	seq := st["node"].(map[string]any)["journal_seq"].(float64)
	if p["id"] != id || p["name"] != name || p["address"] != addr || p["connected"] != false ||
		p["acked_seq"] != float64(0) || p["lag_ops"] != seq || p["last_success"] != nil ||
		p["last_failure"] != nil || p["last_error"] != "" {
		t.Fatalf("%s: peer %v, want id %s name %s address %s, not connected, lag %v", who, p, id, name, addr, seq)
	}
}

func waitLog(t *testing.T, p *mailfsProc, timeout time.Duration, subs ...string) {
	t.Helper()
	waitLogSince(t, p, 0, timeout, subs...)
}

// waitLogSince waits until what p logged after byte offset off mentions
// every one of subs.
func waitLogSince(t *testing.T, p *mailfsProc, off int, timeout time.Duration, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		log := p.Log()[off:]
		all := true
		for _, s := range subs {
			all = all && strings.Contains(log, s)
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon log does not mention %q after %v:\n%s", subs, timeout, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPairEndToEnd pairs two running nodes with `pair invite` and `pair
// join` (design §8, §9), then checks the refusals: a used code, an expired
// code, an unreachable inviter, and a node that was never paired.
func TestPairEndToEnd(t *testing.T) {
	t.Parallel()
	storeA, mntA := newStoreDirs(t)
	storeB, mntB := newStoreDirs(t)
	addrA, addrB := freeAddr(t), freeAddr(t)
	initNode(t, storeA, "alpha")
	initNode(t, storeB, "beta")
	a := startMailfs(t, storeA, mntA, "--listen", addrA)
	startMailfs(t, storeB, mntB, "--listen", addrB)
	idA, idB := nodeID(t, statusJSON(t, storeA)), nodeID(t, statusJSON(t, storeB))

	out, errs, code := runMailfs(t, "pair", "invite", "--store", storeA)
	if code != 0 {
		t.Fatalf("pair invite: exit %d: %s", code, errs)
	}
	if lines := strings.Split(strings.TrimRight(out, "\n"), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "mailfs1:") {
		t.Fatalf("pair invite printed %q, want one line with the code", out)
	}
	inv := strings.TrimSpace(out)

	out, errs, code = runMailfs(t, "pair", "join", "--store", storeB, inv)
	if code != 0 {
		t.Fatalf("pair join: exit %d: %s%s\nA's log:\n%s", code, out, errs, a.Log())
	}
	if !strings.Contains(out, "alpha") || !strings.Contains(out, idA) {
		t.Fatalf("pair join printed %q, want the inviter's name and ID", out)
	}
	waitConnected(t, "A", storeA, idB, "beta", addrB)
	waitConnected(t, "B", storeB, idA, "alpha", addrA)
	waitLog(t, a, 5*time.Second, "paired with node", "peer_name=beta", idB)

	// The code works once.
	if _, errs, code := runMailfs(t, "pair", "join", "--store", storeB, inv); code != 1 {
		t.Fatalf("second join with a used code: exit %d, want 1: %s", code, errs)
	}
	// An expired code is refused.
	out, errs, code = runMailfs(t, "pair", "invite", "--store", storeA, "--ttl", "1s")
	if code != 0 {
		t.Fatalf("pair invite --ttl 1s: exit %d: %s", code, errs)
	}
	time.Sleep(1100 * time.Millisecond)
	if _, errs, code := runMailfs(t, "pair", "join", "--store", storeB, strings.TrimSpace(out)); code != 1 || !strings.Contains(errs, "expired") {
		t.Fatalf("join with an expired code: exit %d, want 1 and a word on expiry: %s", code, errs)
	}

	// A third node: its invite points at an address where nothing
	// listens (exit 75 for the joiner), and never being paired with A, its
	// certificate is refused there and logged by fingerprint.
	storeC := filepath.Join(t.TempDir(), "store")
	initNode(t, storeC, "gamma", "--listen", freeAddr(t))
	out, errs, code = runMailfs(t, "pair", "invite", "--store", storeC)
	if code != 0 {
		t.Fatalf("pair invite of an unmounted node: exit %d: %s", code, errs)
	}
	if _, errs, code := runMailfs(t, "pair", "join", "--store", storeB, strings.TrimSpace(out)); code != 75 {
		t.Fatalf("join of an unreachable inviter: exit %d, want 75: %s", code, errs)
	}
	identC, err := peers.LoadIdentity(filepath.Join(storeC, "identity"))
	if err != nil {
		t.Fatal(err)
	}
	pinA, err := peers.ParseID(idA)
	if err != nil {
		t.Fatal(err)
	}
	if err := dialSync(addrA, identC, pinA); err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Fatalf("an unpaired node's replication connection: %v, want the TLS alert bad certificate", err)
	}
	waitLog(t, a, 5*time.Second, "unpaired node", peers.FormatID(identC.ID))

	// The paired node gets past TLS; a hello that is not the protocol's is
	// refused with a logged reason and the connection closed.
	identB, err := peers.LoadIdentity(filepath.Join(storeB, "identity"))
	if err != nil {
		t.Fatal(err)
	}
	if err := dialSync(addrA, identB, pinA); !errors.Is(err, io.EOF) {
		t.Fatalf("paired node's replication connection with a bad hello: %v, want a close (EOF)", err)
	}
	waitLog(t, a, 5*time.Second, "refused a peer's replication data", "bad hello")
	waitConnected(t, "A after the refusals", storeA, idB, "beta", addrB)

	// A node that is not mounted joins by opening its store itself; it
	// has no listen address, so A pins it without one.
	storeD := filepath.Join(t.TempDir(), "store")
	initNode(t, storeD, "delta")
	out, errs, code = runMailfs(t, "pair", "invite", "--store", storeA)
	if code != 0 {
		t.Fatalf("pair invite: exit %d: %s", code, errs)
	}
	if out, errs, code := runMailfs(t, "pair", "join", "--store", storeD, strings.TrimSpace(out)); code != 0 {
		t.Fatalf("pair join of an unmounted node: exit %d: %s%s", code, out, errs)
	}
	stD := statusJSON(t, storeD)
	checkPeer(t, "D", stD, idA, "alpha", addrA)
	checkHasPeer(t, "A", statusJSON(t, storeA), nodeID(t, stD), "delta", "")

	// Unmounted, status reads the peers from the store.
	a.Stop()
	stA := statusJSON(t, storeA)
	checkHasPeer(t, "A unmounted", stA, idB, "beta", addrB)
	if ps := statusPeers(t, stA); len(ps) != 2 {
		t.Fatalf("A unmounted: %d peers, want beta and delta: %v", len(ps), ps)
	}
	out, errs, code = runMailfs(t, "status", "--store", storeA)
	if code != 0 || !strings.Contains(out, "beta") || !strings.Contains(out, idB) || !strings.Contains(out, "delta") {
		t.Fatalf("status table of A: exit %d: %s%s", code, out, errs)
	}
}

// dialSync opens a replication connection (ALPN mailfs/2) as id to the
// node pinned at addr, sends a hello that is not the protocol's and reads:
// TLS 1.3 reports a refused client certificate on the first read, and a
// paired node closes the connection on the bad hello.
func dialSync(addr string, id *peers.Identity, pin [32]byte) error {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, peers.ClientConfig(id, pin))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("GET / HTTP/1.0\r\nHost: mailfs\r\n\r\n"))
	_, err = io.ReadAll(c)
	if err == nil {
		err = io.EOF
	}
	return err
}

// waitConnected waits until status (of a mounted node) shows the peer
// connected with nothing left to send.
func waitConnected(t *testing.T, who, store, id, name, addr string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := statusJSON(t, store)
		for _, p := range statusPeers(t, st) {
			if p["id"] == id && p["name"] == name && p["address"] == addr && p["connected"] == true && p["lag_ops"] == float64(0) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: peer %s (%s) not connected and caught up after 20s: %v", who, name, id, st["peers"])
		}
		time.Sleep(50 * time.Millisecond)
	}
}
