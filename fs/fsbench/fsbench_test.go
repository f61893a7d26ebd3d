package fsbench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// requireFUSE skips the test when this process cannot mount FUSE.
func requireFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			if _, err := exec.LookPath("fusermount"); err != nil {
				t.Skip("not root and no fusermount")
			}
		}
	}
}

// mountsUnder lists the mountpoints at or below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatalf("open mountinfo: %v", err)
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			out = append(out, fields[4])
		}
	}
	if err := s.Err(); err != nil {
		t.Fatalf("read mountinfo: %v", err)
	}
	return out
}

// trackedMounts wraps MountFuncs so that a test can unmount whatever is
// still mounted in its cleanup, even when Run failed or hung.
type trackedMounts struct {
	mu       sync.Mutex
	unmounts []func() error
}

func (tm *trackedMounts) wrap(mount MountFunc) MountFunc {
	return func(backing, mountpoint string) (func() error, error) {
		u, err := mount(backing, mountpoint)
		if err != nil {
			return nil, err
		}
		tm.mu.Lock()
		tm.unmounts = append(tm.unmounts, u)
		tm.mu.Unlock()
		return u, nil
	}
}

// setup returns the test's temp dir and a tracker whose cleanup unmounts
// everything and then checks that nothing is left mounted under the dir.
// The cleanup is registered after t.TempDir, so it runs before the dir is
// removed.
func setup(t *testing.T) (string, *trackedMounts) {
	dir := t.TempDir()
	tm := &trackedMounts{}
	t.Cleanup(func() {
		tm.mu.Lock()
		defer tm.mu.Unlock()
		for _, u := range tm.unmounts {
			if err := u(); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		// Anything still mounted (Run's own loopback, if Run hung and the
		// test gave up on it) is detached, so that no mount outlives the
		// test process.
		if m := mountsUnder(t, dir); len(m) > 0 {
			t.Errorf("leaked mounts: %v", m)
			for _, p := range slices.Backward(m) {
				if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil {
					t.Errorf("lazy unmount %s: %v", p, err)
				}
			}
		}
	})
	return dir, tm
}

type runResult struct {
	rs  []Result
	out string
	err error
}

// runWithDeadline runs Run in a goroutine and fails the test if it has not
// returned within limit, or well before the test binary's deadline (a hung
// FUSE request cannot be cancelled through ctx; setup's cleanup then
// detaches the mounts).
func runWithDeadline(t *testing.T, limit time.Duration, cfg Config, mount MountFunc) runResult {
	t.Helper()
	if d, ok := t.Deadline(); ok {
		limit = min(limit, time.Until(d)*3/4)
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	done := make(chan runResult, 1)
	go func() {
		var out bytes.Buffer
		rs, err := Run(ctx, cfg, mount, &out)
		done <- runResult{rs, out.String(), err}
	}()
	select {
	case r := <-done:
		return r
	case <-time.After(limit + 5*time.Second):
		t.Fatalf("Run did not return within %s", limit+5*time.Second)
		return runResult{}
	}
}

func TestRunSmall(t *testing.T) {
	requireFUSE(t)
	dir, tm := setup(t)
	cfg := Config{Messages: 50, ListSize: 200, Seed: 7, Dir: dir,
		EntryTimeout: time.Second, AttrTimeout: time.Second}
	r := runWithDeadline(t, time.Minute, cfg, tm.wrap(LoopbackMount(time.Second, time.Second)))
	if r.err != nil {
		t.Fatalf("Run: %v\n%s", r.err, r.out)
	}
	t.Logf("output:\n%s", r.out)

	wantOps := map[string]int{WorkDeliver: 50, WorkFlags: 100, WorkFlagsPar: 100, WorkDeliverN: 50, WorkFlagsN: 100, WorkListCold: 200, WorkListWarm: 200, WorkRead: 50}
	got := map[[2]string]Result{}
	for _, res := range r.rs {
		got[[2]string{res.Workload, res.Target}] = res
	}
	if len(r.rs) != len(Workloads)*len(Targets) {
		t.Errorf("got %d results, want %d", len(r.rs), len(Workloads)*len(Targets))
	}
	var delivered int64
	for _, wl := range Workloads {
		for _, tn := range Targets {
			res, ok := got[[2]string{wl, tn}]
			if !ok {
				t.Errorf("missing result %s/%s", wl, tn)
				continue
			}
			if res.Ops != wantOps[wl] || res.Elapsed <= 0 || res.OpsPerSec() <= 0 {
				t.Errorf("%s/%s: ops %d (want %d), elapsed %s", wl, tn, res.Ops, wantOps[wl], res.Elapsed)
			}
			switch wl {
			case WorkDeliver, WorkDeliverN, WorkRead:
				if res.Bytes <= 0 {
					t.Errorf("%s/%s: bytes %d", wl, tn, res.Bytes)
				}
				if delivered == 0 {
					delivered = res.Bytes
				}
				if res.Bytes != delivered {
					t.Errorf("%s/%s: bytes %d, want %d like the others", wl, tn, res.Bytes, delivered)
				}
			}
		}
	}
	for _, wl := range Workloads {
		if !strings.Contains(r.out, wl) {
			t.Errorf("table lacks workload %q", wl)
		}
	}
	if m := mountsUnder(t, dir); len(m) > 0 {
		t.Errorf("mounts left after Run returned: %v", m)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) > 0 {
		t.Errorf("Run left %v in %s (err %v)", ents, dir, err)
	}
}

// TestRunErrorsUnmount checks that Run unmounts the loopback (and anything
// the caller's MountFunc mounted) when it fails after mounting.
func TestRunErrorsUnmount(t *testing.T) {
	requireFUSE(t)
	errMount := errors.New("mount refused")
	cases := []struct {
		name  string
		mount func(empty string) MountFunc
		want  error
	}{
		{"mount fails", func(string) MountFunc {
			return func(string, string) (func() error, error) { return nil, errMount }
		}, errMount},
		// A mount that does not show the existing files: readdir+stat fails.
		{"files invisible", func(empty string) MountFunc {
			lb := LoopbackMount(time.Second, time.Second)
			return func(_, mountpoint string) (func() error, error) { return lb(empty, mountpoint) }
		}, os.ErrNotExist},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, tm := setup(t)
			empty := t.TempDir()
			cfg := Config{Messages: 4, ListSize: 10, Dir: dir}
			r := runWithDeadline(t, time.Minute, cfg, tm.wrap(tc.mount(empty)))
			if !errors.Is(r.err, tc.want) {
				t.Fatalf("Run error %v, want %v", r.err, tc.want)
			}
			if m := mountsUnder(t, dir); len(m) > 0 {
				t.Errorf("mounts left after Run failed: %v", m)
			}
			if ents, err := os.ReadDir(dir); err != nil || len(ents) > 0 {
				t.Errorf("Run left %v in %s (err %v)", ents, dir, err)
			}
		})
	}
}

func TestCorpus(t *testing.T) {
	c := newCorpus(10000, 1)
	sizes := make([]int64, len(c.msgs))
	over, names := 0, map[string]bool{}
	for i, m := range c.msgs {
		sizes[i] = m.size
		if m.size > mib {
			over++
		}
		if m.size > 6*mib {
			t.Errorf("message %d: size %d over 6 MiB", i, m.size)
		}
		if names[m.name] {
			t.Errorf("duplicate name %s", m.name)
		}
		names[m.name] = true
	}
	slices.Sort(sizes)
	if med := sizes[len(sizes)/2]; med < 3500 || med > 4800 {
		t.Errorf("median size %d, want about 4 KiB", med)
	}
	if over < 50 || over > 150 {
		t.Errorf("%d of 10000 messages over 1 MiB, want about 1%%", over)
	}
	t.Log(c.sizeStats())

	c2 := newCorpus(10000, 1)
	for _, i := range []int{0, 1, 4999, 9999} {
		m := c.msgs[i]
		a := c.content(nil, i, m.name, m.size)
		b := c2.content(make([]byte, 0, 10), i, m.name, m.size)
		if int64(len(a)) != m.size || !bytes.Equal(a, b) {
			t.Errorf("message %d: content length %d (want %d) or not deterministic", i, len(a), m.size)
		}
	}
	if !strings.HasPrefix(c.msgs[0].name, "1700000000.M1P4242Q0.fsbench,S=") {
		t.Errorf("unexpected name %s", c.msgs[0].name)
	}
}

func TestWriteTable(t *testing.T) {
	rs := []Result{
		{Workload: WorkDeliver, Target: TargetNative, Ops: 100, Elapsed: time.Second, Bytes: 4e6},
		{Workload: WorkDeliver, Target: TargetLoopback, Ops: 50, Elapsed: time.Second, Bytes: 2e6},
		{Workload: WorkDeliver, Target: TargetMailfs, Ops: 40, Elapsed: time.Second, Bytes: 1.6e6},
		{Workload: WorkFlags, Target: TargetNative, Ops: 100, Elapsed: time.Second},
		{Workload: WorkFlags, Target: TargetMailfs, Ops: 100, Elapsed: time.Second},
	}
	var b bytes.Buffer
	WriteTable(&b, rs)
	out := b.String()
	t.Logf("\n%s", out)
	for _, want := range []string{
		"deliver              ops/s          100           50           40     0.40x     0.80x     0.50x  mailfs/loopback>=0.90 MISS",
		"deliver              MB/s           4.0          2.0          1.6     0.40x     0.80x     0.50x\n",
		"flags                ops/s          100            -          100     1.00x         -         -  mailfs/loopback>=1.50\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if strings.Contains(out, WorkRead) {
		t.Errorf("table has a row for a workload without results")
	}
}

// TestRunDefault runs the default configuration with a go-fuse loopback
// (60 s TTLs) standing in for mailfs. It takes a few minutes, so it only
// runs with FSBENCH_FULL=1:
//
//	FSBENCH_FULL=1 go test -count=1 -run TestRunDefault -v -timeout 10m ./fs/fsbench/
func TestRunDefault(t *testing.T) {
	if os.Getenv("FSBENCH_FULL") == "" {
		t.Skip("set FSBENCH_FULL=1 to run the full benchmark")
	}
	requireFUSE(t)
	dir, tm := setup(t)
	r := runWithDeadline(t, 8*time.Minute, Config{Dir: dir}, tm.wrap(LoopbackMount(60*time.Second, 60*time.Second)))
	if r.err != nil {
		t.Fatalf("Run: %v\n%s", r.err, r.out)
	}
	t.Logf("output:\n%s", r.out)
}
