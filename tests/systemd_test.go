package tests

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSystemdUnit checks the shipped unit and Dovecot drop-in with
// systemd-analyze (as installed by setup.sh: the binary and the helper at
// their paths), and that they say what an admin relies on.
func TestSystemdUnit(t *testing.T) {
	t.Parallel()
	unit, err := os.ReadFile("../scripts/mailfs.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "Before=dovecot.service", "RequiresMountsFor=", "Restart=on-failure",
		"ExecStopPost=/usr/local/lib/mailfs/mailfs-clear-mount", "KillMode=mixed"} {
		if !bytes.Contains(unit, []byte(want)) {
			t.Errorf("mailfs.service lacks %q", want)
		}
	}
	helper, err := filepath.Abs("../scripts/mailfs-clear-mount")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	installed := strings.NewReplacer("/usr/local/bin/mailfs", mailfsBin, "/usr/local/lib/mailfs/mailfs-clear-mount", helper).Replace(string(unit))
	if err := os.WriteFile(filepath.Join(dir, "mailfs.service"), []byte(installed), 0o644); err != nil {
		t.Fatal(err)
	}
	dropIn, err := os.ReadFile("../scripts/dovecot-mailfs.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(dropIn, []byte("Requires=mailfs.service")) || !bytes.Contains(dropIn, []byte("After=mailfs.service")) {
		t.Errorf("dovecot-mailfs.conf must require and order after mailfs.service:\n%s", dropIn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "systemd-analyze", "verify", filepath.Join(dir, "mailfs.service")).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify mailfs.service: %v\n%s", err, out)
	}
}

// TestReadinessNotification runs mount as systemd would (NOTIFY_SOCKET):
// READY=1 arrives once the mount answers, and SIGTERM unmounts and exits 0.
func TestReadinessNotification(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	store, mnt := newStoreDirs(t)
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cmd := exec.Command(mailfsBin, "mount", "--store", store, mnt)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	})
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no notification from mailfs mount: %v\n%s", err, logs.String())
	}
	if msg := string(buf[:n]); !strings.Contains(msg, "READY=1") {
		t.Fatalf("notification %q, want READY=1", msg)
	}
	// Ready means serving: the mount answers at once.
	mounted, err := isMounted(mnt)
	if err != nil || !mounted {
		t.Fatalf("READY=1 before the mount was there (mounted %v, %v)", mounted, err)
	}
	if err := os.MkdirAll(filepath.Join(mnt, "example.com", "alice", "Maildir", "cur"), 0o700); err != nil {
		t.Fatalf("the mount does not serve after READY=1: %v", err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("mailfs exited with %v after SIGTERM:\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("mailfs did not exit 30s after SIGTERM:\n%s", logs.String())
	}
	if mounted, _ := isMounted(mnt); mounted {
		t.Fatalf("still mounted after a clean stop")
	}
}

// TestClearStaleMount covers the unit's ExecStartPre/ExecStopPost helper:
// it leaves a live mount alone, clears the mount of a SIGKILLed daemon, and
// mailfs mounts there again.
func TestClearStaleMount(t *testing.T) {
	t.Parallel()
	store, mnt := newStoreDirs(t)
	p := startMailfs(t, store, mnt)
	clear := func() string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "../scripts/mailfs-clear-mount", mnt).CombinedOutput()
		if err != nil {
			t.Fatalf("mailfs-clear-mount %s: %v\n%s", mnt, err, out)
		}
		return string(out)
	}
	if out := clear(); out != "" {
		t.Fatalf("mailfs-clear-mount touched a live mount: %q", out)
	}
	if mounted, _ := isMounted(mnt); !mounted {
		t.Fatalf("mailfs-clear-mount unmounted a live mailfs")
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		clear() // stuck on its own mount: the helper is what frees it
		<-p.done
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != syscall.ENOTCONN {
		t.Fatalf("statfs of the killed daemon's mount: %v, want ENOTCONN (a stale mount)", err)
	}
	if out := clear(); !strings.Contains(out, "cleared") {
		t.Fatalf("mailfs-clear-mount on a stale mount said %q", out)
	}
	if mounted, _ := isMounted(mnt); mounted {
		t.Fatalf("still mounted after mailfs-clear-mount")
	}
	startMailfs(t, store, mnt)
}
