package tests

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// wanNet is the test's network: two network namespaces, each holding one
// node, joined to the root namespace by a veth pair each. The namespaces
// have no route to each other (no default route, no forwarding between
// them): the only way from one node to the other is a toxiproxy proxy that
// the test process runs in the root namespace, listening on the root side
// of the dialing node's veth and dialing the other node over the other
// veth.
//
//	nsA: vethA 10.X.Y.2/30 ── 10.X.Y.1/30 root  [proxy A→B on 10.X.Y.1:P]  ─┐
//	nsB: vethB 10.X.Y.6/30 ── 10.X.Y.5/30 root  [proxy B→A on 10.X.Y.5:Q]  ─┘
type wanNet struct {
	ns       [2]string // namespace names
	nodeIP   [2]string // each node's address, inside its namespace
	rootIP   [2]string // the root side of each node's veth
	rootLink [2]string // the root side's interface name
}

// wanRun runs a command (ip), failing t with its output.
func wanRun(t testing.TB, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// newWANNet creates the namespaces and veths; t's cleanup removes them
// (after the daemons registered later have stopped).
func newWANNet(t *testing.T) *wanNet {
	t.Helper()
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("this test needs %q (Debian: apt-get install iproute2 util-linux): %v", tool, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Fatalf("this test needs root to create network namespaces (euid %d)", os.Geteuid())
	}
	suffix := fmt.Sprintf("%06x", rand.Uint32()&0xffffff)
	x, y := 64+rand.IntN(64), rand.IntN(256)
	w := &wanNet{
		ns:       [2]string{"mfsA-" + suffix, "mfsB-" + suffix},
		nodeIP:   [2]string{fmt.Sprintf("10.%d.%d.2", x, y), fmt.Sprintf("10.%d.%d.6", x, y)},
		rootIP:   [2]string{fmt.Sprintf("10.%d.%d.1", x, y), fmt.Sprintf("10.%d.%d.5", x, y)},
		rootLink: [2]string{"mfa" + suffix, "mfb" + suffix},
	}
	t.Cleanup(func() {
		for i := range 2 {
			// Deleting one end of a veth deletes both; the namespace goes
			// once its last process (a daemon, stopped by now) is gone.
			exec.Command("ip", "link", "del", w.rootLink[i]).Run()
			if out, err := exec.Command("ip", "netns", "del", w.ns[i]).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", w.ns[i], err, out)
			}
		}
	})
	for i := range 2 {
		inner := "mfv" + suffix + string(rune('a'+i))
		wanRun(t, "ip", "netns", "add", w.ns[i])
		wanRun(t, "ip", "link", "add", w.rootLink[i], "type", "veth", "peer", "name", inner)
		wanRun(t, "ip", "link", "set", inner, "netns", w.ns[i])
		wanRun(t, "ip", "addr", "add", w.rootIP[i]+"/30", "dev", w.rootLink[i])
		wanRun(t, "ip", "link", "set", w.rootLink[i], "up")
		wanRun(t, "ip", "-n", w.ns[i], "link", "set", "lo", "up")
		wanRun(t, "ip", "-n", w.ns[i], "addr", "add", w.nodeIP[i]+"/30", "dev", inner)
		wanRun(t, "ip", "-n", w.ns[i], "link", "set", inner, "up")
	}
	return w
}

// startMailfsNetns is startMailfs with the daemon in network namespace ns.
// nsenter (unlike `ip netns exec`) enters only the network namespace, so
// the FUSE mount stays in the test's mount namespace; it execs mailfs in
// place, so signals reach the daemon itself and Stop/Kill work as usual.
func startMailfsNetns(t *testing.T, ns, store, mnt string, extra ...string) *mailfsProc {
	t.Helper()
	return startMailfsWrapped(t, t, []string{"nsenter", "--net=" + filepath.Join("/var/run/netns", ns), "--"}, store, mnt, extra...)
}

// wanBody is a message of about size bytes whose text is random (so it
// does not compress), with its snapshot checksum.
func wanBody(rng *rand.Rand, subject string, size int) ([]byte, string) {
	var b strings.Builder
	fmt.Fprintf(&b, "From: wan@example.org\r\nSubject: %s\r\n\r\n", subject)
	raw := make([]byte, 57)
	for b.Len() < size {
		for i := range raw {
			raw[i] = byte(rng.Uint32())
		}
		b.WriteString(base64.StdEncoding.EncodeToString(raw))
		b.WriteString("\r\n")
	}
	data := []byte(b.String())
	sum := sha256.Sum256(data)
	return data, hex.EncodeToString(sum[:8])
}

// wanLogCount counts the lines of log (from offset on) holding every one
// of subs.
func wanLogCount(log string, from int, subs ...string) int {
	n := 0
	for _, l := range strings.Split(log[from:], "\n") {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(l, s)
		}
		if all {
			n++
		}
	}
	return n
}

// wanLogLines returns the lines of log from offset on holding sub.
func wanLogLines(log string, from int, sub string) string {
	var out []string
	for _, l := range strings.Split(log[from:], "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return tail(strings.Join(out, "\n"), 10)
}

// TestWANNamespaces runs replication over a real network path (issue
// acceptance): nodes A and B each in their own network namespace, their
// only path to each other a toxiproxy proxy per direction adding 100 ms
// (±20 ms jitter) each way, so a 200 ms RTT. 1000 deliveries (500 on
// each node at once) converge; the link is cut for 30 s while both nodes
// keep delivering and changing flags, `status` shows each the other
// disconnected meanwhile, and once restored both converge with no daemon
// restarted (MAILFS_WAN_SILENT_CUT=1 cuts the veths instead of stopping
// the proxies: a path that drops packets silently); then, while 200
// messages of 100-300 KiB are delivered, every A→B connection ends (FIN)
// after 1 MiB and every B→A connection is reset (RST) after 1.5 MiB, in
// the middle of a segment: after the faults are lifted every message is
// on both nodes exactly once with its content.
func TestWANNamespaces(t *testing.T) {
	t.Parallel()
	start := time.Now()
	w := newWANNet(t)

	// Nodes: A in ns[0], B in ns[1], each listening inside its namespace.
	nodes := make([]*node, 2)
	for i := range nodes {
		store, mnt := newStoreDirs(t)
		name := fmt.Sprintf("wan%c", 'a'+i)
		addr := w.nodeIP[i] + ":7100"
		initNode(t, store, name)
		p := startMailfsNetns(t, w.ns[i], store, mnt, "--listen", addr)
		nodes[i] = &node{mailfsProc: p, Name: name, Addr: addr, ID: nodeID(t, statusJSON(t, store))}
	}
	a, b := nodes[0], nodes[1]
	pids := [2]int{a.cmd.Process.Pid, b.cmd.Process.Pid}

	// Proxies, in the root namespace: px[0] carries A's connections to B
	// (listening where nsA reaches the root namespace), px[1] B's to A.
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	var px [2]*toxiproxy.Proxy
	for i := range px {
		px[i] = toxiproxy.NewProxy(srv, fmt.Sprintf("wan-%d", i), w.rootIP[i]+":0", nodes[1-i].Addr)
		if err := px[i].Start(); err != nil {
			t.Fatalf("proxy %d: %v", i, err)
		}
		t.Cleanup(px[i].Stop)
		for _, dir := range []string{"upstream", "downstream"} {
			if _, err := px[i].Toxics.AddToxicJson(strings.NewReader(fmt.Sprintf(
				`{"name":"lat_%s","type":"latency","stream":"%s","attributes":{"latency":100,"jitter":20}}`, dir, dir))); err != nil {
				t.Fatalf("latency toxic: %v", err)
			}
		}
	}
	addToxic := func(p *toxiproxy.Proxy, js string) {
		t.Helper()
		if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			t.Fatalf("toxic %s: %v", js, err)
		}
	}
	removeToxic := func(p *toxiproxy.Proxy, name string) {
		t.Helper()
		if err := p.Toxics.RemoveToxic(context.Background(), name); err != nil {
			t.Fatalf("remove toxic %s: %v", name, err)
		}
	}

	// Pair through the proxies: the invite tells B to dial A at px[1],
	// the join tells A to dial B at px[0]. Each daemon does its dialing
	// from inside its own namespace.
	out, errs, code := runMailfs(t, "pair", "invite", "--store", a.Store, "--address", px[1].Listen)
	if code != 0 {
		t.Fatalf("pair invite: exit %d: %s", code, errs)
	}
	if out, errs, code := runMailfs(t, "pair", "join", "--store", b.Store, "--address", px[0].Listen, strings.TrimSpace(out)); code != 0 {
		t.Fatalf("pair join: exit %d: %s%s\nA:\n%s\nB:\n%s", code, out, errs, tail(a.Log(), 20), tail(b.Log(), 20))
	}
	waitWANConnected := func(step string, timeout time.Duration) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for _, pr := range [][2]*node{{a, b}, {b, a}} {
			for {
				p := peerState(t, pr[0], pr[1].ID)
				if p != nil && p["connected"] == true {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: %s does not show %s connected after %v: %v\n%s", step, pr[0].Name, pr[1].Name, timeout, p,
						tail(pr[0].Log(), 30))
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	waitWANConnected("after pairing", 30*time.Second)
	if p := peerState(t, a, b.ID); p["address"] != px[0].Listen {
		t.Fatalf("A dials B at %v, want the proxy %s", p["address"], px[0].Listen)
	}
	if p := peerState(t, b, a.ID); p["address"] != px[1].Listen {
		t.Fatalf("B dials A at %v, want the proxy %s", p["address"], px[1].Listen)
	}
	t.Logf("setup (netns, daemons, proxies, pairing): %v", time.Since(start).Round(time.Millisecond))

	when := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	small := func(s string) []byte {
		return []byte("From: wan@example.org\r\nSubject: " + s + "\r\n\r\n" + strings.Repeat(s+" ", 40) + "\r\n")
	}

	// The path really is a WAN one: one op can be acknowledged no sooner
	// than one round trip through both latency toxics.
	mkMailbox(t, a.Mnt, "rtt/Maildir")
	syncAll(t, a)
	t0 := time.Now()
	deliverMsg(t, a.Mnt, "rtt/Maildir", "new", "1700000000.M1P1.wana", small("rtt"), when)
	syncAll(t, a)
	if rtt := time.Since(t0); rtt < 150*time.Millisecond {
		t.Fatalf("a delivery was acknowledged %v after it was made: the path has no 200 ms RTT", rtt)
	} else {
		t.Logf("one delivery acknowledged over the WAN path in %v", rtt.Round(time.Millisecond))
	}

	// 1. 1000 deliveries, 500 on each node at once, converge.
	key := func(n *node, i int) string { return fmt.Sprintf("%d.M%dP7.%s", 1700001000+i, i, n.Name) }
	mbOf := map[*node]string{a: "u1/Maildir", b: "u2/Maildir"}
	mkMailbox(t, a.Mnt, mbOf[a])
	mkMailbox(t, b.Mnt, mbOf[b])
	phase := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	for _, n := range []*node{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				if err := deliverErr(n.Mnt, mbOf[n], "new", key(n, i), small(key(n, i)), when.Add(time.Duration(i)*time.Second)); err != nil {
					errc <- fmt.Errorf("deliver %d on %s: %w", i, n.Name, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	delivered := time.Since(phase)
	st := checkConverged(t, "1000 deliveries", a, b)
	for _, n := range []*node{a, b} {
		if got := len(st.Mailboxes[mbOf[n]]); got != 500 {
			t.Fatalf("%s holds %d messages, want 500", mbOf[n], got)
		}
	}
	t.Logf("1000 deliveries: delivered in %v, converged %v after the start", delivered.Round(time.Millisecond),
		time.Since(phase).Round(time.Millisecond))

	// 2. The link is cut for 30 s while both nodes keep changing: the
	// proxies stop (their connections end and nothing is accepted), or,
	// with MAILFS_WAN_SILENT_CUT=1, the veths go down under open
	// connections, so packets are dropped without a FIN or RST.
	phase = time.Now()
	silent := os.Getenv("MAILFS_WAN_SILENT_CUT") != ""
	if silent {
		for _, l := range w.rootLink {
			wanRun(t, "ip", "link", "set", l, "down")
		}
	} else {
		for _, p := range px {
			p.Stop()
		}
	}
	cutStart := time.Now()
	sawDown := map[*node]bool{}
	sawLag := map[*node]bool{}
	cutKey := func(n *node, i int) string { return fmt.Sprintf("%d.M%dP8.%s", 1700005000+i, i, n.Name) }
	rounds := 0
	for time.Since(cutStart) < 30*time.Second {
		i := rounds
		// New mail on both sides, and a flag change on each side of the
		// same message of A's: \Seen on A, \Answered on B.
		deliverMsg(t, a.Mnt, mbOf[a], "cur", cutKey(a, i)+":2,", small(cutKey(a, i)), when.Add(time.Hour))
		deliverMsg(t, b.Mnt, mbOf[b], "cur", cutKey(b, i)+":2,", small(cutKey(b, i)), when.Add(time.Hour))
		setFlags(t, a.Mnt, mbOf[a], key(a, i), "S")
		setFlags(t, b.Mnt, mbOf[a], key(a, i), "R")
		// And B flags some of its own mail, A some of B's.
		setFlags(t, b.Mnt, mbOf[b], key(b, 2*i), "F")
		setFlags(t, a.Mnt, mbOf[b], key(b, 2*i+1), "S")
		for _, pr := range [][2]*node{{a, b}, {b, a}} {
			p := peerState(t, pr[0], pr[1].ID)
			if p == nil {
				t.Fatalf("%s's status does not list %s", pr[0].Name, pr[1].Name)
			}
			if p["connected"] == false && !sawDown[pr[0]] {
				sawDown[pr[0]] = true
				t.Logf("%s's status shows %s disconnected %v into the cut", pr[0].Name, pr[1].Name,
					time.Since(cutStart).Round(time.Millisecond))
			}
			if lag, _ := p["lag_ops"].(float64); lag > 0 {
				sawLag[pr[0]] = true
			}
		}
		rounds++
		time.Sleep(200 * time.Millisecond)
	}
	// Nothing crossed the cut link, and status said so.
	for _, pr := range [][2]*node{{a, b}, {b, a}} {
		if !sawDown[pr[0]] || !sawLag[pr[0]] {
			t.Fatalf("while the link was cut, %s's status never showed %s disconnected with ops pending (down %v, lag %v): %v",
				pr[0].Name, pr[1].Name, sawDown[pr[0]], sawLag[pr[0]], peerState(t, pr[0], pr[1].ID))
		}
		ents, err := os.ReadDir(filepath.Join(pr[1].Mnt, mbOf[pr[0]], "cur"))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if strings.Contains(e.Name(), "P8.") {
				t.Fatalf("%s's change %s reached %s across the cut link", pr[0].Name, e.Name(), pr[1].Name)
			}
		}
	}
	cutFor := time.Since(cutStart)
	if silent {
		for _, l := range w.rootLink {
			wanRun(t, "ip", "link", "set", l, "up")
		}
	} else {
		for _, p := range px {
			if err := p.Start(); err != nil {
				t.Fatalf("restore proxy: %v", err)
			}
		}
	}
	restored := time.Now()
	st = checkConverged(t, "after the 30 s cut", a, b)
	waitWANConnected("after the cut", 30*time.Second)
	for i := range rounds {
		if m := st.Mailboxes[mbOf[a]][key(a, i)]; m.Flags != `\Answered \Seen` || m.Sub != "cur" {
			t.Fatalf("%s: flags %+v after \\Seen on A and \\Answered on B while cut; want both, in cur", key(a, i), m)
		}
		for _, n := range []*node{a, b} {
			if _, ok := st.Mailboxes[mbOf[n]][cutKey(n, i)]; !ok {
				t.Fatalf("%s's delivery %s during the cut is missing after it", n.Name, cutKey(n, i))
			}
		}
	}
	for i, n := range []*node{a, b} {
		select {
		case <-n.done:
			t.Fatalf("%s's daemon exited: %v\n%s", n.Name, n.err, tail(n.Log(), 30))
		default:
		}
		if n.cmd.Process.Pid != pids[i] {
			t.Fatalf("%s's daemon was restarted", n.Name)
		}
	}
	t.Logf("cut: %v with %d rounds of changes on each side; converged %v after the link came back (phase %v)",
		cutFor.Round(time.Millisecond), rounds, time.Since(restored).Round(time.Millisecond), time.Since(phase).Round(time.Millisecond))

	// 3. Connections cut and reset in the middle of segments: A→B
	// connections end (FIN) after 1 MiB, B→A connections are reset (RST)
	// after 1.5 MiB, while 200 messages of 100-300 KiB make segments of
	// several MiB.
	phase = time.Now()
	bigMb := map[*node]string{a: "big/a/Maildir", b: "big/b/Maildir"}
	mkMailbox(t, a.Mnt, bigMb[a])
	mkMailbox(t, b.Mnt, bigMb[b])
	checkConverged(t, "big mailboxes", a, b)
	logFrom := map[*node]int{a: len(a.Log()), b: len(b.Log())}
	addToxic(px[0], `{"name":"cut","type":"limit_data","stream":"upstream","attributes":{"bytes":1048576}}`)
	// toxiproxy's reset_peer toxic swallows the data, so B→A gets the
	// same byte limit, and a reset_peer that never fires (toxicity 0)
	// only to make the proxy close both sockets with SO_LINGER 0: the
	// cut reaches both nodes as a TCP RST.
	addToxic(px[1], `{"name":"rst","type":"reset_peer","stream":"downstream","toxicity":0,"attributes":{"timeout":0}}`)
	addToxic(px[1], `{"name":"cut","type":"limit_data","stream":"upstream","attributes":{"bytes":1572864}}`)
	want := map[*node]map[string]string{a: {}, b: {}} // key → checksum
	count := map[*node]int{a: 120, b: 80}
	var mu sync.Mutex
	errc = make(chan error, 2)
	for ni, n := range []*node{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(ni), 42))
			for i := range count[n] {
				k := fmt.Sprintf("%d.M%dP9.%s", 1700009000+i, i, n.Name)
				body, sum := wanBody(rng, k, 100<<10+rng.IntN(200<<10))
				if err := deliverErr(n.Mnt, bigMb[n], "new", k, body, when.Add(2*time.Hour)); err != nil {
					errc <- fmt.Errorf("deliver %s on %s: %w", k, n.Name, err)
					return
				}
				mu.Lock()
				want[n][k] = sum
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	// Let the faults bite: at least three broken pushes each way.
	deadline := time.Now().Add(90 * time.Second)
	for {
		fa := wanLogCount(a.Log(), logFrom[a], "pushing to peer failed")
		fb := wanLogCount(b.Log(), logFrom[b], "pushing to peer failed")
		if fa >= 3 && fb >= 3 {
			t.Logf("broken pushes while faulty: A→B %d, B→A %d", fa, fb)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d broken pushes A→B and %d B→A in 90 s of faults:\nA:\n%s\nB:\n%s", fa, fb,
				tail(a.Log()[logFrom[a]:], 20), tail(b.Log()[logFrom[b]:], 20))
		}
		time.Sleep(500 * time.Millisecond)
	}
	removeToxic(px[0], "cut")
	removeToxic(px[1], "cut")
	removeToxic(px[1], "rst")
	faultsFor := time.Since(phase)
	st = checkConverged(t, "after mid-segment resets", a, b)
	for _, n := range []*node{a, b} {
		got := st.Mailboxes[bigMb[n]]
		if len(got) != len(want[n]) {
			t.Errorf("%s holds %d messages, want the %d delivered", bigMb[n], len(got), len(want[n]))
		}
		for k, sum := range want[n] {
			if m, ok := got[k]; !ok {
				t.Errorf("%s: %s lost", bigMb[n], k)
			} else if m.Sum != sum {
				t.Errorf("%s: %s has checksum %s, delivered %s", bigMb[n], k, m.Sum, sum)
			}
		}
		for k := range got {
			if _, ok := want[n][k]; !ok {
				t.Errorf("%s: %s was never delivered (a duplicate?)", bigMb[n], k)
			}
		}
	}
	// The faults did hit segments in flight: B read a truncated segment
	// of A's (the connection ended by FIN inside it), A had one of B's
	// cut by a reset.
	if wanLogCount(b.Log(), logFrom[b], "remote=", "unexpected EOF") == 0 {
		t.Errorf("no A→B segment was cut midway:\n%s", wanLogLines(b.Log(), logFrom[b], "level=WARN"))
	}
	if wanLogCount(a.Log(), logFrom[a], "remote=", "reset by peer") == 0 {
		t.Errorf("no B→A segment was reset midway:\n%s", wanLogLines(a.Log(), logFrom[a], "level=WARN"))
	}
	t.Logf("segments cut midway: B read %d truncated ones of A's, A had %d of B's reset, B's pusher failed %d times writing one",
		wanLogCount(b.Log(), logFrom[b], "remote=", "unexpected EOF"), wanLogCount(a.Log(), logFrom[a], "remote=", "reset by peer"),
		wanLogCount(b.Log(), logFrom[b], "pushing to peer failed", "send segment"))
	t.Logf("mid-segment faults: %d+%d messages of 100-300 KiB, faults for %v, converged %v after they were lifted",
		count[a], count[b], faultsFor.Round(time.Millisecond), (time.Since(phase) - faultsFor).Round(time.Millisecond))
	for _, pr := range [][2]*node{{a, b}, {b, a}} {
		p := peerState(t, pr[0], pr[1].ID)
		t.Logf("%s's status of %s: connected %v, bytes_sent %v, ops_sent %v, segments_refused %v", pr[0].Name, pr[1].Name,
			p["connected"], p["bytes_sent"], p["ops_sent"], p["segments_refused"])
	}
	t.Logf("total: %v", time.Since(start).Round(time.Millisecond))
}
