// Package tests holds mailfs's end-to-end tests: they build the mailfs
// binary once, run it as a child process on real FUSE mounts, and drive it
// with real clients (plain syscalls, Dovecot).
package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mailfsBin is the binary under test, built by TestMain.
var mailfsBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mailfs-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mailfsBin = filepath.Join(dir, "mailfs")
	build := exec.Command("go", "build", "-race", "-o", mailfsBin, "mailfs/cmd/mailfs")
	if os.Getenv("MAILFS_TEST_NORACE") != "" {
		build = exec.Command("go", "build", "-o", mailfsBin, "mailfs/cmd/mailfs")
	}
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building mailfs:", err)
		os.Exit(1)
	}
	// A -race binary sleeps a second at exit by default; the tests start
	// and stop mailfs many times.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	mountFusectl()
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// mountFusectl mounts the FUSE control filesystem when it is not (a fresh
// boot may not have it): Kill aborts a dead daemon's connection through it.
func mountFusectl() {
	const dir = "/sys/fs/fuse/connections"
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil || strings.Contains(string(mounts), " "+dir+" ") {
		return
	}
	if err := syscall.Mount("fusectl", dir, "fusectl", 0, ""); err != nil && err != syscall.EBUSY {
		fmt.Fprintf(os.Stderr, "mount fusectl on %s: %v (a SIGKILLed daemon stuck on its own mount cannot be cleared)\n", dir, err)
	}
}

// mailfsProc is a `mailfs mount` child process.
type mailfsProc struct {
	t     testing.TB
	Store string
	Mnt   string
	cmd   *exec.Cmd
	log   *syncBuffer
	done  chan struct{}
	err   error
	// fuseConn is the mount's connection number, under
	// /sys/fs/fuse/connections: a SIGKILLed daemon whose own thread waits
	// on its own mount (the syncer's applier) cannot exit until the
	// connection is aborted.
	fuseConn uint32
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func requireFUSE(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("cannot mount: /dev/fuse is missing (%v); mailfs tests need FUSE", err)
	}
}

// newStoreDirs returns a fresh store dir and mountpoint under t's temp dir.
func newStoreDirs(t testing.TB) (store, mnt string) {
	dir := t.TempDir()
	store, mnt = filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	return store, mnt
}

// startMailfs runs `mailfs mount` and waits until the mount answers. It is
// stopped (SIGTERM, then SIGKILL and a lazy unmount) when t ends.
func startMailfs(t testing.TB, store, mnt string, extra ...string) *mailfsProc {
	t.Helper()
	return startMailfsFor(t, t, store, mnt, extra...)
}

// startMailfsFor is startMailfs for a daemon that outlives t: owner stops
// it when owner ends.
func startMailfsFor(t, owner testing.TB, store, mnt string, extra ...string) *mailfsProc {
	t.Helper()
	return startMailfsWrapped(t, owner, nil, store, mnt, extra...)
}

// startMailfsWrapped is startMailfsFor with the daemon started through
// wrapper (a command that execs its arguments, such as nsenter).
func startMailfsWrapped(t, owner testing.TB, wrapper []string, store, mnt string, extra ...string) *mailfsProc {
	t.Helper()
	requireFUSE(t)
	p := &mailfsProc{t: owner, Store: store, Mnt: mnt, log: &syncBuffer{}, done: make(chan struct{})}
	args := append(append(append([]string{}, wrapper...), mailfsBin, "mount", "--store", store), extra...)
	args = append(args, mnt)
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	level := "info"
	if v := os.Getenv("MAILFS_TEST_LOG"); v != "" {
		level = v // MAILFS_TEST_LOG=debug when chasing a failure
	}
	p.cmd.Env = append(os.Environ(), "MAILFS_LOG="+level)
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start mailfs: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	owner.Cleanup(func() { p.Stop() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		if strings.Contains(p.log.String(), "mailfs ready") {
			var st syscall.Stat_t
			if err := syscall.Stat(mnt, &st); err == nil {
				p.fuseConn = unix.Minor(st.Dev)
			}
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("mailfs exited before it was ready: %v\n%s", p.err, p.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mailfs not ready after 60s:\n%s", p.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop sends SIGTERM and waits for a clean exit (exit 0, mount gone).
func (p *mailfsProc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			p.t.Errorf("mailfs exited with %v after SIGTERM:\n%s", p.err, p.log.String())
		}
	case <-time.After(30 * time.Second):
		p.t.Errorf("mailfs did not exit 30s after SIGTERM:\n%s", p.log.String())
		p.Kill()
	}
}

// Kill SIGKILLs the daemon and clears the dead mount, as an admin would.
func (p *mailfsProc) Kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
		// Stuck on a request to its own mount: abort the connection, as
		// an admin would (echo 1 > /sys/fs/fuse/connections/N/abort).
		abort := fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", p.fuseConn)
		if err := os.WriteFile(abort, []byte("1"), 0); err != nil {
			p.t.Errorf("abort the FUSE connection of a killed mailfs: %v", err)
		}
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			p.t.Fatalf("a SIGKILLed mailfs did not exit 30s after its FUSE connection was aborted (%s)", abort)
		}
	}
	for i := 0; i < 50; i++ {
		if err := syscall.Unmount(p.Mnt, syscall.MNT_DETACH); err == nil || err == syscall.EINVAL || err == syscall.ENOENT {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Log returns what the daemon logged.
func (p *mailfsProc) Log() string { return p.log.String() }

// runMailfs runs a mailfs command and returns stdout, stderr and the exit code.
func runMailfs(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, mailfsBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run mailfs %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// jop is one journaled op as `mailfs journal --json` prints it.
type jop struct {
	Seq     uint64   `json:"seq"`
	Kind    string   `json:"kind"`
	Mailbox string   `json:"mailbox"`
	Target  string   `json:"target"`
	Path    string   `json:"path"`
	NewPath string   `json:"new_path"`
	From    string   `json:"from"`
	Key     string   `json:"key"`
	NewKey  string   `json:"new_key"`
	Name    string   `json:"name"`
	Sub     string   `json:"sub"`
	Flags   []string `json:"flags"`
	Mtime   int64    `json:"mtime"`
	Size    int64    `json:"size"`
	Content string   `json:"content"`
}

// journalOps reads the store's journal (through the daemon when mounted).
func journalOps(t testing.TB, store string) []jop {
	t.Helper()
	out, errs, code := runMailfs(t, "journal", "--store", store, "--json")
	if code != 0 {
		t.Fatalf("mailfs journal: exit %d: %s", code, errs)
	}
	var ops []jop
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var op jop
		if err := json.Unmarshal(sc.Bytes(), &op); err != nil {
			t.Fatalf("journal line %q: %v", sc.Text(), err)
		}
		ops = append(ops, op)
	}
	return ops
}

// statusJSON returns `mailfs status --json`.
func statusJSON(t testing.TB, store string) map[string]any {
	t.Helper()
	out, errs, code := runMailfs(t, "status", "--store", store, "--json")
	if code != 0 {
		t.Fatalf("mailfs status: exit %d: %s", code, errs)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("status json %q: %v", out, err)
	}
	return m
}
