package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// cluster is a full mesh of mailfs nodes whose peer links each go through
// their own fault-injecting proxy (Shopify's toxiproxy, as a library): node
// i reaches node j at proxy [i][j], so one link can be cut, slowed or
// restored without touching the others or restarting anything.
type cluster struct {
	t     *testing.T // the (sub)test running now: failures go there
	owner *testing.T // the test the cluster lives as long as

	nodes   []*node
	proxies map[[2]int]*toxiproxy.Proxy
	srv     *toxiproxy.ApiServer
}

func newCluster(t *testing.T, n int) *cluster {
	t.Helper()
	c := &cluster{t: t, owner: t, proxies: map[[2]int]*toxiproxy.Proxy{},
		srv: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())}
	for i := 0; i < n; i++ {
		store, mnt := newStoreDirs(t)
		name := fmt.Sprintf("node%c", 'a'+i)
		addr := freeAddr(t)
		initNode(t, store, name)
		p := startMailfs(t, store, mnt, "--listen", addr)
		c.nodes = append(c.nodes, &node{mailfsProc: p, Name: name, Addr: addr, ID: nodeID(t, statusJSON(t, store))})
	}
	for i := 0; i < n; i++ {
		for j := 0; j < n; j++ {
			if i == j {
				continue
			}
			px := toxiproxy.NewProxy(c.srv, fmt.Sprintf("%d-%d", i, j), freeAddr(t), c.nodes[j].Addr)
			if err := px.Start(); err != nil {
				t.Fatalf("proxy %d->%d: %v", i, j, err)
			}
			c.proxies[[2]int{i, j}] = px
			t.Cleanup(px.Stop)
		}
	}
	for i := 0; i < n; i++ {
		for j := i + 1; j < n; j++ {
			c.pair(i, j)
		}
	}
	c.waitAllConnected()
	return c
}

// pair pairs nodes i (inviter) and j, each dialing the other through its
// own proxy.
func (c *cluster) pair(i, j int) {
	t := c.t
	t.Helper()
	out, errs, code := runMailfs(t, "pair", "invite", "--store", c.nodes[i].Store, "--address", c.proxies[[2]int{j, i}].Listen)
	if code != 0 {
		t.Fatalf("pair invite: exit %d: %s", code, errs)
	}
	out, errs, code = runMailfs(t, "pair", "join", "--store", c.nodes[j].Store, "--address", c.proxies[[2]int{i, j}].Listen,
		strings.TrimSpace(out))
	if code != 0 {
		t.Fatalf("pair join: exit %d: %s%s", code, out, errs)
	}
}

// peerState returns status's entry for peer id on node n.
func peerState(t *testing.T, n *node, id string) map[string]any {
	for _, p := range statusPeers(t, statusJSON(t, n.Store)) {
		if p["id"] == id {
			return p
		}
	}
	return nil
}

// waitAllConnected waits until every node shows every peer connected.
func (c *cluster) waitAllConnected() {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for i, n := range c.nodes {
		for j, m := range c.nodes {
			if i == j {
				continue
			}
			for {
				p := peerState(c.t, n, m.ID)
				if p != nil && p["connected"] == true {
					break
				}
				if time.Now().After(deadline) {
					c.t.Fatalf("%s does not show %s connected: %v\n%s", n.Name, m.Name, p, tail(n.Log(), 30))
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
}

// cut severs the link between i and j both ways (open connections reset).
func (c *cluster) cut(i, j int) {
	c.proxies[[2]int{i, j}].Stop()
	c.proxies[[2]int{j, i}].Stop()
}

// heal restores the link between i and j.
func (c *cluster) heal(i, j int) {
	for _, k := range [][2]int{{i, j}, {j, i}} {
		if px := c.proxies[k]; !px.Enabled {
			if err := px.Start(); err != nil {
				c.t.Fatalf("restart proxy %v: %v", k, err)
			}
		}
	}
}

// healFrom restores the link from i to j only: i's pushes reach j, j's
// do not reach i.
func (c *cluster) healFrom(i, j int) {
	if px := c.proxies[[2]int{i, j}]; !px.Enabled {
		if err := px.Start(); err != nil {
			c.t.Fatalf("restart proxy %d->%d: %v", i, j, err)
		}
	}
}

// pushed waits until node j has acknowledged every op node i journaled
// (the link between them healed), whatever the other links are.
func (c *cluster) pushed(i, j int) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		p := peerState(c.t, c.nodes[i], c.nodes[j].ID)
		if p != nil && p["connected"] == true && p["lag_ops"] == float64(0) {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s did not get all of %s's ops within 30s: %v", c.nodes[j].Name, c.nodes[i].Name, p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// partition cuts every link; healAll restores them.
func (c *cluster) partition() {
	for i := range c.nodes {
		for j := i + 1; j < len(c.nodes); j++ {
			c.cut(i, j)
		}
	}
}

func (c *cluster) healAll() {
	for i := range c.nodes {
		for j := i + 1; j < len(c.nodes); j++ {
			c.heal(i, j)
		}
	}
}

// restart stops node i (SIGKILL when kill, else SIGTERM) and mounts it
// again.
func (c *cluster) restart(i int, kill bool) {
	c.t.Helper()
	n := c.nodes[i]
	if kill {
		n.Kill()
	} else {
		n.Stop()
	}
	n.mailfsProc = startMailfsFor(c.t, c.owner, n.Store, n.Mnt, "--listen", n.Addr)
}

// converge heals everything, syncs every node and checks all trees equal.
func (c *cluster) converge(step string) treeState {
	c.t.Helper()
	c.healAll()
	return checkConverged(c.t, step, c.nodes...)
}

// convergeUnder is converge comparing only the subtree sub of every node.
func (c *cluster) convergeUnder(step, sub string) treeState {
	c.t.Helper()
	c.healAll()
	return checkConvergedUnder(c.t, step, sub, c.nodes...)
}
