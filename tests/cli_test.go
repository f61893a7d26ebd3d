package tests

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCLIRefusals checks the command-line contract of design §9: clear
// messages and the documented exit codes for what mount and init refuse.
func TestCLIRefusals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no command", nil, 64, "usage: mailfs COMMAND"},
		{"unknown command", []string{"frobnicate"}, 64, `unknown command "frobnicate"`},
		{"unknown flag", []string{"mount", "--bogus", dir}, 64, "unknown flag: --bogus"},
		{"mount without mountpoint", []string{"mount", "--store", filepath.Join(dir, "s1")}, 64, "need exactly one MOUNTPOINT"},
		{"missing mountpoint", []string{"mount", "--store", filepath.Join(dir, "s2"), filepath.Join(dir, "nope")}, 1, "does not exist"},
		{"mountpoint is a file", []string{"mount", "--store", filepath.Join(dir, "s3"), writeFile(t, dir, "afile")}, 1, "is not a directory"},
		{"unmarked non-empty store", []string{"init", "--store", filepath.Dir(writeFile(t, filepath.Join(dir, "junk"), "x"))}, 1, "has no mailfs.store marker"},
		{"status of a non-store", []string{"status", "--store", filepath.Join(dir, "empty")}, 1, "not a mailfs store"},
		{"metrics address without a port", []string{"mount", "--metrics", "localhost", filepath.Join(dir)}, 64, "want HOST:PORT"},
		{"help", []string{"mount", "--help"}, 0, "Example:"},
	}
	for _, c := range cases {
		out, errs, code := runMailfs(t, c.args...)
		if code != c.code || !strings.Contains(out+errs, c.msg) {
			t.Errorf("%s: mailfs %v: exit %d, want %d; output %q, want it to mention %q", c.name, c.args, code, c.code, out+errs, c.msg)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "junk", "mailfs.store")); err == nil {
		t.Errorf("init wrote a marker into a refused store")
	}
}

func writeFile(t *testing.T, dir, name string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestStaleMountRefused: after a SIGKILL the mountpoint is a dead FUSE
// mount; mount refuses it with instructions, and works once it is cleared.
func TestStaleMountRefused(t *testing.T) {
	t.Parallel()
	store, mnt := newStoreDirs(t)
	p := startMailfs(t, store, mnt)
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(mnt, &sfs); err != syscall.ENOTCONN {
		t.Fatalf("statfs of the dead mount: %v, want ENOTCONN", err)
	}
	_, errs, code := runMailfs(t, "mount", "--store", store, mnt)
	if code != 1 || !strings.Contains(errs, "stale mount") || !strings.Contains(errs, "fusermount3 -u") {
		t.Fatalf("mount over a stale mount: exit %d: %s", code, errs)
	}
	if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
		t.Fatalf("clear stale mount: %v", err)
	}
	p = startMailfs(t, store, mnt)
	// A second mount of the same store is refused while the first runs.
	other := filepath.Join(t.TempDir(), "mnt2")
	os.Mkdir(other, 0o755)
	_, errs, code = runMailfs(t, "mount", "--store", store, other)
	if code != 1 || !strings.Contains(errs, "in use by another mailfs") {
		t.Fatalf("second mount of a store: exit %d: %s", code, errs)
	}
	// The bare mountpoint is read-only while nothing is mounted on it.
	p.Stop()
	fi, err := os.Stat(mnt)
	if err != nil || fi.Mode().Perm() != 0o555 {
		t.Fatalf("bare mountpoint mode %v, %v; want 0555", fi.Mode().Perm(), err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if m, _ := isMounted(mnt); !m {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still mounted after a clean stop", mnt)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func isMounted(mp string) (bool, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == mp {
			return true, nil
		}
	}
	return false, nil
}
