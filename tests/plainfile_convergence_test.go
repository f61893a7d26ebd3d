package tests

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPlainFileConvergence runs random plain-file scenarios (design §6 rule
// 10) on three nodes: writes (often of the same bytes on two nodes),
// deletes, and edits and deletes of conflict copies, through the mounts,
// with random link cuts; then heals and syncs: every node must show the
// same files with the same bytes. MAILFS_PLAIN_SCENARIOS=N runs N scenarios
// (default 6), MAILFS_PLAIN_SEED=S replays a run, MAILFS_PLAIN_RACY=1 lets
// peers' ops arrive while a node writes.
func TestPlainFileConvergence(t *testing.T) {
	t.Parallel()
	scenarios := 6
	if v := os.Getenv("MAILFS_PLAIN_SCENARIOS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("MAILFS_PLAIN_SCENARIOS=%q: want a number >= 1", v)
		}
		scenarios = n
	}
	seed := time.Now().UnixNano()
	if v := os.Getenv("MAILFS_PLAIN_SEED"); v != "" {
		s, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("MAILFS_PLAIN_SEED=%q: %v", v, err)
		}
		seed = s
	}
	t.Logf("seed %d (replay with MAILFS_PLAIN_SEED=%d MAILFS_PLAIN_SCENARIOS=%d)", seed, seed, scenarios)
	c := newCluster(t, 3)
	for s := 0; s < scenarios; s++ {
		rng := rand.New(rand.NewSource(seed*1000003 + int64(s)))
		ok := t.Run(fmt.Sprintf("scenario %d", s), func(t *testing.T) {
			c.t = t
			runPlainScenario(t, c, fmt.Sprintf("p%d/sieve", s), rng)
		})
		if !ok {
			t.Fatalf("scenario %d failed; replay: MAILFS_PLAIN_SEED=%d", s, seed)
		}
	}
	for _, n := range c.nodes {
		if strings.Contains(n.Log(), "level=ERROR") {
			t.Errorf("%s logged errors:\n%s", n.Name, n.Log())
		}
	}
}

func runPlainScenario(t *testing.T, c *cluster, dir string, rng *rand.Rand) {
	files := []string{dir + "/main.sieve", dir + "/vacation.sieve"}
	writePlain(t, c.nodes[0].Mnt, files[0], "# base\n", 0o644)
	c.converge("scenario setup")
	steps := 6 + rng.Intn(14)
	up := map[[2]int]bool{}
	for i := range c.nodes {
		for j := range c.nodes {
			up[[2]int{i, j}] = true
		}
	}
	racy := os.Getenv("MAILFS_PLAIN_RACY") != ""
	for step := 0; step < steps; step++ {
		if rng.Intn(3) == 0 {
			i, j := rng.Intn(len(c.nodes)), rng.Intn(len(c.nodes))
			if i != j {
				heal := rng.Intn(3) == 0
				up[[2]int{i, j}], up[[2]int{j, i}] = heal, heal
				if heal {
					c.heal(i, j)
				} else {
					c.cut(i, j)
				}
			}
		}
		ni := rng.Intn(len(c.nodes))
		n := c.nodes[ni]
		if !racy {
			// The node changes its files while no peer's op arrives: a
			// peer's version replacing a file a local writer has open is
			// a race of its own (MAILFS_PLAIN_RACY=1 runs with it). A
			// segment received before the cut may still be applying: the
			// pause lets it land first (30 ms was too short under -race).
			for j := range c.nodes {
				if j != ni {
					c.cut(ni, j)
				}
			}
			time.Sleep(150 * time.Millisecond)
		}
		f := files[rng.Intn(len(files))]
		var err error
		switch op := rng.Intn(10); {
		case op < 5: // write: few distinct contents, so nodes often write the same bytes
			content := fmt.Sprintf("# version %d\n", rng.Intn(3))
			err = os.WriteFile(filepath.Join(n.Mnt, f), []byte(content), 0o644)
		case op < 7:
			err = os.Remove(filepath.Join(n.Mnt, f))
		default: // change a conflict copy this node shows
			copies, _ := filepath.Glob(filepath.Join(n.Mnt, dir, "*.mailfs-conflict-*"))
			if len(copies) == 0 {
				continue
			}
			p := copies[rng.Intn(len(copies))]
			if rng.Intn(2) == 0 {
				err = os.Remove(p)
			} else {
				err = os.WriteFile(p, []byte(fmt.Sprintf("# edited on %s\n", n.Name)), 0o644)
			}
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("step %d on %s: %v", step, n.Name, err)
		}
		t.Logf("step %d: %s %s", step, n.Name, f)
		if !racy {
			for j := range c.nodes {
				if j != ni && up[[2]int{ni, j}] {
					c.heal(ni, j)
				}
			}
		}
		time.Sleep(time.Duration(rng.Intn(20)) * time.Millisecond)
	}
	defer func() {
		if !t.Failed() {
			return
		}
		for _, n := range c.nodes {
			out, _, _ := runMailfs(t, "journal", "--store", n.Store, "--json")
			for _, l := range strings.Split(out, "\n") {
				if strings.Contains(l, `"path":"`+dir+"/") {
					t.Logf("%s: %s", n.Name, l)
				}
			}
			for _, l := range strings.Split(n.Log(), "\n") {
				if strings.Contains(l, dir+"/") {
					t.Logf("%s log: %s", n.Name, l)
				}
			}
		}
	}()
	st := c.converge("scenario end")
	for p := range st.Files {
		if !strings.HasPrefix(p, dir+"/") {
			continue
		}
		base := strings.SplitN(strings.TrimPrefix(p, dir+"/"), ".mailfs-conflict-", 2)[0]
		if base != "main.sieve" && base != "vacation.sieve" {
			t.Errorf("unexpected file %s", p)
		}
	}
}
