package tests

// A reusable harness that runs a real Dovecot (2.3, as packaged by Debian 12)
// against a Maildir tree, plus minimal IMAP and LMTP clients to drive it.
//
// Every server gets its own configuration, base_dir, state_dir, log file,
// index directory and free TCP ports, so tests using it can run in parallel.
// Dovecot runs as root (it must, to switch users); its mail processes run as
// the unprivileged user returned by dovecotMailUser (nobody:nogroup).

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf16"
)

const (
	// dovecotPassword is the password of every user (static passdb).
	dovecotPassword = "secret"

	dovecotStartTimeout = 20 * time.Second
	dovecotStopTimeout  = 10 * time.Second
	imapCmdTimeout      = 15 * time.Second
	lmtpTimeout         = 15 * time.Second
)

// dovecotOptions tunes startDovecotOpts. The zero value is what startDovecot uses.
type dovecotOptions struct {
	// ExtraConfig is appended to the generated dovecot.conf; a later
	// top-level setting overrides an earlier one, e.g.
	// "mailbox_idle_check_interval = 1s" or a whole new mail_location.
	ExtraConfig string
	// AllowLogErrors disables the check, at cleanup, that the Dovecot log
	// holds no errors (see LogErrors).
	AllowLogErrors bool
}

// dovecotServer is one running Dovecot master process.
type dovecotServer struct {
	dir       string // per-server t.TempDir(): config, logs, state, index
	baseDir   string // short private base_dir (UNIX socket paths are limited to 107 bytes)
	confPath  string
	logPath   string
	errPath   string // the master's stderr
	mailRoot  string
	indexRoot string
	uid, gid  int
	imapAddr  string
	lmtpAddr  string

	cmd      *exec.Cmd
	done     chan struct{} // closed when the master process has been reaped
	waitErr  error
	stopOnce sync.Once
}

// IMAPAddr is the host:port of the IMAP listener.
func (s *dovecotServer) IMAPAddr() string { return s.imapAddr }

// LMTPAddr is the host:port of the LMTP listener.
func (s *dovecotServer) LMTPAddr() string { return s.lmtpAddr }

// LogPath is Dovecot's log file (log_path; info and debug go there too).
func (s *dovecotServer) LogPath() string { return s.logPath }

// ConfigPath is the generated dovecot.conf.
func (s *dovecotServer) ConfigPath() string { return s.confPath }

// MailRoot is the directory given to startDovecot.
func (s *dovecotServer) MailRoot() string { return s.mailRoot }

// IndexRoot is where INDEX= points (%d/%n below it), off the mail tree.
func (s *dovecotServer) IndexRoot() string { return s.indexRoot }

// MailUID and MailGID are the owner of every mail process and mail file.
func (s *dovecotServer) MailUID() int { return s.uid }
func (s *dovecotServer) MailGID() int { return s.gid }

// MasterPID is the pid of the Dovecot master process.
func (s *dovecotServer) MasterPID() int { return s.cmd.Process.Pid }

// Maildir is the Maildir root of user "local@domain" under the mail root.
func (s *dovecotServer) Maildir(address string) string {
	local, domain, _ := strings.Cut(address, "@")
	return filepath.Join(s.mailRoot, domain, local, "Maildir")
}

var dovecotLogErrorRE = regexp.MustCompile(`(^|: )(Error|Fatal|Panic):|UIDVALIDITY changed`)

// LogErrors returns the lines of the Dovecot log (and of the master's stderr)
// that report an error, a fatal error or a panic, and every line mentioning
// "UIDVALIDITY changed". Log lines are written by Dovecot's log process a
// little asynchronously; call Stop first for a complete picture.
func (s *dovecotServer) LogErrors() []string {
	var out []string
	for _, p := range []string{s.logPath, s.errPath} {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if dovecotLogErrorRE.MatchString(line) {
				out = append(out, line)
			}
		}
	}
	return out
}

// LogTail returns the last n lines of the Dovecot log and the master's stderr.
func (s *dovecotServer) LogTail(n int) string {
	var b strings.Builder
	for _, p := range []string{s.errPath, s.logPath} {
		data, _ := os.ReadFile(p)
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		fmt.Fprintf(&b, "--- %s ---\n%s\n", p, strings.Join(lines, "\n"))
	}
	return b.String()
}

// Doveadm runs doveadm against this server's configuration and returns its
// combined output, e.g. s.Doveadm("mailbox", "list", "-u", "alice@example.com").
func (s *dovecotServer) Doveadm(args ...string) (string, error) {
	bin, err := exec.LookPath("doveadm")
	if err != nil {
		bin = "/usr/bin/doveadm"
	}
	cmd := exec.Command(bin, append([]string{"-c", s.confPath}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	errc := make(chan error, 1)
	go func() { errc <- cmd.Wait() }()
	select {
	case err = <-errc:
	case <-time.After(imapCmdTimeout):
		_ = cmd.Process.Kill()
		<-errc
		err = fmt.Errorf("doveadm %s: timed out after %v", strings.Join(args, " "), imapCmdTimeout)
	}
	return out.String(), err
}

// dovecotMailUser returns the unprivileged uid and gid the mail processes run
// as: nobody and nogroup (65534 on Debian), which exist on every Debian
// system, are never used for logins, and sit above Dovecot's
// first_valid_uid default of 500.
func dovecotMailUser(t testing.TB) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("dovecot harness: no user nobody: %v", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	for _, name := range []string{"nogroup", "nobody"} {
		if g, err := user.LookupGroup(name); err == nil {
			gid, _ = strconv.Atoi(g.Gid)
			break
		}
	}
	return uid, gid
}

// dovecotBinary returns the path of the dovecot master binary, failing the
// test when the packages are not installed.
func dovecotBinary(t testing.TB) string {
	t.Helper()
	const hint = "install them with: apt-get install -y dovecot-imapd dovecot-lmtpd"
	bin, err := exec.LookPath("dovecot")
	if err != nil {
		bin = "/usr/sbin/dovecot"
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("dovecot harness: the dovecot binary is not installed (not in PATH, no %s); %s", bin, hint)
		}
	}
	// Debian's libexec_dir; other layouts are left to Dovecot to complain about.
	if _, err := os.Stat("/usr/lib/dovecot"); err == nil {
		for _, svc := range []string{"imap", "lmtp"} {
			if _, err := os.Stat("/usr/lib/dovecot/" + svc); err != nil {
				t.Fatalf("dovecot harness: /usr/lib/dovecot/%s is missing; %s", svc, hint)
			}
		}
	}
	return bin
}

// dovecotMakeTraversable adds the search (o+x) permission to dir and every ancestor
// below the system temp dir that lacks it, so that the unprivileged mail
// processes can reach paths made by t.TempDir (which creates 0700 dirs).
// Outside the temp dir it only checks, and fails the test.
func dovecotMakeTraversable(t testing.TB, dir string, uid int) {
	t.Helper()
	tmp := filepath.Clean(os.TempDir())
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("dovecot harness: %v", err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		ok := fi.Mode().Perm()&0o001 != 0 || int(st.Uid) == uid
		if !ok {
			if strings.HasPrefix(p, tmp+string(filepath.Separator)) {
				if err := os.Chmod(p, fi.Mode().Perm()|0o011); err != nil {
					t.Fatalf("dovecot harness: %v", err)
				}
			} else {
				t.Fatalf("dovecot harness: %s (mode %v) cannot be traversed by the mail uid %d", p, fi.Mode().Perm(), uid)
			}
		}
		if p == filepath.Dir(p) || p == tmp {
			return
		}
	}
}

// dovecotChownTree gives the whole tree below root (root included) to uid:gid.
func dovecotChownTree(root string, uid, gid int) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// dovecotFreePorts returns n distinct free TCP ports on 127.0.0.1. Another process
// may grab one before Dovecot binds it; startDovecotOpts retries then.
func dovecotFreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("dovecot harness: free port: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// startDovecot starts Dovecot serving IMAP and LMTP on free 127.0.0.1 ports
// with mail_location = maildir:<mailRoot>/%d/%n/Maildir:INDEX=<tmp>/index/%d/%n.
// It is stopped by t.Cleanup, which also fails the test if the log holds errors.
func startDovecot(t *testing.T, mailRoot string) *dovecotServer {
	t.Helper()
	return startDovecotOpts(t, mailRoot, dovecotOptions{})
}

// startDovecotOpts is startDovecot with options.
func startDovecotOpts(t *testing.T, mailRoot string, opts dovecotOptions) *dovecotServer {
	t.Helper()
	bin := dovecotBinary(t)
	if os.Geteuid() != 0 {
		t.Fatalf("dovecot harness: must run as root (Dovecot switches its mail processes to an unprivileged uid)")
	}
	mailRoot, err := filepath.Abs(mailRoot)
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := dovecotMailUser(t)

	dir := t.TempDir()
	// base_dir holds UNIX sockets whose paths must stay short, so it does
	// not live under t.TempDir (whose name contains the test name).
	baseDir, err := os.MkdirTemp("", "dovecot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(baseDir) })
	if err := os.Chmod(baseDir, 0o755); err != nil {
		t.Fatal(err)
	}

	s := &dovecotServer{
		dir:       dir,
		baseDir:   baseDir,
		confPath:  filepath.Join(dir, "dovecot.conf"),
		logPath:   filepath.Join(dir, "dovecot.log"),
		errPath:   filepath.Join(dir, "dovecot.stderr"),
		mailRoot:  mailRoot,
		indexRoot: filepath.Join(dir, "index"),
		uid:       uid,
		gid:       gid,
	}
	for _, d := range []string{s.indexRoot, filepath.Join(dir, "home"), filepath.Join(dir, "state")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{s.indexRoot, filepath.Join(dir, "home")} {
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(mailRoot, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := dovecotChownTree(mailRoot, uid, gid); err != nil {
		t.Fatalf("dovecot harness: chown mail root: %v", err)
	}
	dovecotMakeTraversable(t, mailRoot, uid)
	dovecotMakeTraversable(t, dir, uid)

	var lastErr error
	for attempt := 0; attempt < 4; attempt++ {
		ports := dovecotFreePorts(t, 2)
		s.imapAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
		s.lmtpAddr = fmt.Sprintf("127.0.0.1:%d", ports[1])
		if err := os.WriteFile(s.confPath, []byte(s.config(ports[0], ports[1], opts.ExtraConfig)), 0o644); err != nil {
			t.Fatal(err)
		}
		lastErr = s.start(bin)
		if lastErr == nil {
			break
		}
		s.stop()
		if !strings.Contains(s.LogTail(50), "in use") {
			break
		}
		os.Remove(s.logPath)
		os.Remove(s.errPath)
	}
	if lastErr != nil {
		t.Fatalf("dovecot harness: start: %v\n%s", lastErr, s.LogTail(40))
	}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("dovecot harness: stop: %v", err)
		}
		if !opts.AllowLogErrors {
			if errs := s.LogErrors(); len(errs) > 0 {
				t.Errorf("dovecot log %s has errors:\n%s", s.logPath, strings.Join(errs, "\n"))
			}
		}
	})
	return s
}

func (s *dovecotServer) config(imapPort, lmtpPort int, extra string) string {
	return fmt.Sprintf(`# Generated by the mailfs test harness (tests/dovecot_helpers_test.go).
base_dir = %[1]s
state_dir = %[2]s/state
instance_name = dovecot-%[3]s
log_path = %[4]s
log_timestamp = "%%Y-%%m-%%d %%H:%%M:%%S "
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
verbose_proctitle = yes

default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
first_valid_uid = %[5]d
first_valid_gid = %[6]d

mail_location = maildir:%[7]s/%%d/%%n/Maildir:INDEX=%[8]s/%%d/%%n
mail_uid = %[5]d
mail_gid = %[6]d
# Recommended for FUSE and network storage.
mmap_disable = yes
mail_fsync = always
maildir_copy_with_hardlinks = yes

namespace inbox {
  inbox = yes
}

passdb {
  driver = static
  args = password=%[9]s
}
userdb {
  driver = static
  args = uid=%[5]d gid=%[6]d home=%[2]s/home/%%d/%%n allow_all_users=yes
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = %[10]d
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = %[11]d
  }
}
protocol imap {
  mail_max_userip_connections = 1000
}
%[12]s
`, s.baseDir, s.dir, filepath.Base(s.baseDir), s.logPath, s.uid, s.gid,
		s.mailRoot, s.indexRoot, dovecotPassword, imapPort, lmtpPort, extra)
}

// start launches the master in the foreground and waits until both listeners
// answer with a greeting.
func (s *dovecotServer) start(bin string) error {
	errFile, err := os.Create(s.errPath)
	if err != nil {
		return err
	}
	defer errFile.Close()
	s.cmd = exec.Command(bin, "-F", "-c", s.confPath)
	s.cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	s.cmd.Stdout, s.cmd.Stderr = errFile, errFile
	// Own process group: stop can then reap children left behind by the master.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	s.done = make(chan struct{})
	s.stopOnce = sync.Once{}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.done)
	}()

	deadline := time.Now().Add(dovecotStartTimeout)
	for _, probe := range []struct{ addr, greeting string }{{s.imapAddr, "* OK"}, {s.lmtpAddr, "220 "}} {
		for {
			select {
			case <-s.done:
				return fmt.Errorf("dovecot exited during start: %v", s.waitErr)
			default:
			}
			err := dovecotProbeGreeting(probe.addr, probe.greeting)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s not ready after %v: %v", probe.addr, dovecotStartTimeout, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

func dovecotProbeGreeting(addr, prefix string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, prefix) {
		return fmt.Errorf("unexpected greeting %q", line)
	}
	return nil
}

// Stop stops Dovecot (SIGTERM, then SIGKILL of its process group) and waits
// for it. It is idempotent; t.Cleanup calls it too.
func (s *dovecotServer) Stop() error { return s.stop() }

func (s *dovecotServer) stop() error {
	if s.cmd == nil || s.cmd.Process == nil || s.done == nil {
		return nil
	}
	var err error
	s.stopOnce.Do(func() {
		pid := s.cmd.Process.Pid
		select {
		case <-s.done:
		default:
			_ = syscall.Kill(pid, syscall.SIGTERM)
			select {
			case <-s.done:
			case <-time.After(dovecotStopTimeout):
				err = fmt.Errorf("dovecot master %d did not exit within %v of SIGTERM; killed", pid, dovecotStopTimeout)
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				select {
				case <-s.done:
				case <-time.After(dovecotStopTimeout):
					err = fmt.Errorf("dovecot master %d survived SIGKILL", pid)
				}
			}
		}
		// Children the master left behind (it normally kills them itself).
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	})
	return err
}

// ---------------------------------------------------------------------------
// IMAP client

// imapClient is a minimal, synchronous IMAP4rev1 client for tests. Use it
// from one goroutine at a time. Message helpers take UID sets ("1", "1:*",
// "2,4:5") and use the UID variants of the commands.
type imapClient struct {
	conn    net.Conn
	r       *bufio.Reader
	tag     int
	pending []byte // a partial line left by a read timeout
	// Timeout bounds every command (default imapCmdTimeout).
	Timeout time.Duration
	// LastTagged is the text after the tag of the last tagged response,
	// e.g. "OK [APPENDUID 1712 3] Append completed."
	LastTagged string
}

// dialIMAP connects and logs in, failing the test on error. The connection
// is logged out and closed by t.Cleanup.
func dialIMAP(t testing.TB, addr, user, pass string) *imapClient {
	t.Helper()
	c, err := dialIMAPErr(addr, user, pass)
	if err != nil {
		t.Fatalf("imap %s as %s: %v", addr, user, err)
	}
	t.Cleanup(c.Close)
	return c
}

// dialIMAPErr is dialIMAP returning the error (usable outside the test goroutine).
func dialIMAPErr(addr, user, pass string) (*imapClient, error) {
	conn, err := net.DialTimeout("tcp", addr, imapCmdTimeout)
	if err != nil {
		return nil, err
	}
	c := &imapClient{conn: conn, r: bufio.NewReader(conn), Timeout: imapCmdTimeout}
	conn.SetDeadline(time.Now().Add(c.Timeout))
	greeting, err := c.readLine()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if !strings.HasPrefix(greeting, "* OK") {
		conn.Close()
		return nil, fmt.Errorf("greeting: %q", greeting)
	}
	if _, err := c.Cmd("LOGIN %s %s", imapQuote(user), imapQuote(pass)); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Close logs out (best effort, bounded) and closes the connection.
func (c *imapClient) Close() {
	if c.conn == nil {
		return
	}
	saved := c.Timeout
	c.Timeout = 2 * time.Second
	_, _ = c.Cmd("LOGOUT")
	c.Timeout = saved
	c.conn.Close()
	c.conn = nil
}

func (c *imapClient) nextTag() string {
	c.tag++
	return fmt.Sprintf("a%04d", c.tag)
}

// readLine reads one logical response line: literals ({n}) are read and
// kept inline, so the result holds "{n}\r\n" followed by the n bytes. The
// trailing CRLF is removed.
func (c *imapClient) readLine() (string, error) {
	var out []byte
	for {
		b, err := c.r.ReadBytes('\n')
		c.pending = append(c.pending, b...)
		if err != nil {
			if len(out) > 0 {
				// Keep what we have of this logical line for the next call.
				c.pending = append(out, c.pending...)
			}
			return "", err
		}
		line := c.pending
		c.pending = nil
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		out = append(out, line...)
		n, ok := imapLiteralSuffix(line)
		if !ok {
			return string(out), nil
		}
		lit := make([]byte, n)
		if _, err := io.ReadFull(c.r, lit); err != nil {
			return "", fmt.Errorf("reading %d-byte literal: %w", n, err)
		}
		out = append(out, "\r\n"...)
		out = append(out, lit...)
	}
}

var imapLiteralRE = regexp.MustCompile(`\{(\d+)\+?\}$`)

func imapLiteralSuffix(line []byte) (int, bool) {
	m := imapLiteralRE.FindSubmatch(line)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(string(m[1]))
	return n, err == nil
}

func (c *imapClient) write(s string) error {
	if c.conn == nil {
		return errors.New("imap: connection closed")
	}
	_, err := io.WriteString(c.conn, s)
	return err
}

// Cmd sends one command (the tag is added) and returns the untagged
// responses without their "* " prefix. A NO or BAD completion, a BYE-closed
// connection or a timeout is an error.
func (c *imapClient) Cmd(format string, args ...any) (untagged []string, err error) {
	if c.conn == nil {
		return nil, errors.New("imap: connection closed")
	}
	tag := c.nextTag()
	line := fmt.Sprintf(format, args...)
	c.conn.SetDeadline(time.Now().Add(c.Timeout))
	if err := c.write(tag + " " + line + "\r\n"); err != nil {
		return nil, err
	}
	return c.readTagged(tag, imapRedactLogin(line))
}

func imapRedactLogin(line string) string {
	if strings.HasPrefix(strings.ToUpper(line), "LOGIN ") {
		return "LOGIN ..."
	}
	return line
}

// readTagged collects untagged responses until the completion for tag.
func (c *imapClient) readTagged(tag, what string) ([]string, error) {
	var untagged []string
	for {
		l, err := c.readLine()
		if err != nil {
			return untagged, fmt.Errorf("imap %q: %w", what, err)
		}
		switch {
		case strings.HasPrefix(l, "* "):
			untagged = append(untagged, l[2:])
		case strings.HasPrefix(l, tag+" "):
			c.LastTagged = l[len(tag)+1:]
			status, _, _ := strings.Cut(c.LastTagged, " ")
			if strings.EqualFold(status, "OK") {
				return untagged, nil
			}
			return untagged, fmt.Errorf("imap %q: %s", what, c.LastTagged)
		case strings.HasPrefix(l, "+"):
			return untagged, fmt.Errorf("imap %q: unexpected continuation %q", what, l)
		default:
			return untagged, fmt.Errorf("imap %q: unexpected line %q", what, l)
		}
	}
}

// mailboxInfo is what SELECT/EXAMINE report.
type mailboxInfo struct {
	Exists, Recent        uint32
	UIDValidity, UIDNext  uint32
	HighestModSeq         uint64
	Flags, PermanentFlags []string
	ReadOnly              bool
}

// Select selects a mailbox read-write.
func (c *imapClient) Select(mailbox string) (mailboxInfo, error) {
	return c.selectCmd("SELECT", mailbox)
}

// Examine selects a mailbox read-only.
func (c *imapClient) Examine(mailbox string) (mailboxInfo, error) {
	return c.selectCmd("EXAMINE", mailbox)
}

func (c *imapClient) selectCmd(cmd, mailbox string) (mailboxInfo, error) {
	var mi mailboxInfo
	untagged, err := c.Cmd("%s %s", cmd, imapMailbox(mailbox))
	if err != nil {
		return mi, err
	}
	for _, u := range untagged {
		f := strings.Fields(u)
		switch {
		case len(f) >= 2 && f[1] == "EXISTS":
			mi.Exists = imapAtou32(f[0])
		case len(f) >= 2 && f[1] == "RECENT":
			mi.Recent = imapAtou32(f[0])
		case strings.HasPrefix(u, "FLAGS "):
			mi.Flags = imapParseFlagList(u[len("FLAGS "):])
		case strings.HasPrefix(u, "OK [UIDVALIDITY "):
			mi.UIDValidity = imapAtou32(imapRespCodeArg(u))
		case strings.HasPrefix(u, "OK [UIDNEXT "):
			mi.UIDNext = imapAtou32(imapRespCodeArg(u))
		case strings.HasPrefix(u, "OK [HIGHESTMODSEQ "):
			mi.HighestModSeq, _ = strconv.ParseUint(imapRespCodeArg(u), 10, 64)
		case strings.HasPrefix(u, "OK [PERMANENTFLAGS "):
			mi.PermanentFlags = imapParseFlagList(strings.TrimPrefix(u, "OK [PERMANENTFLAGS "))
		}
	}
	mi.ReadOnly = strings.Contains(c.LastTagged, "[READ-ONLY]")
	return mi, nil
}

// imapRespCodeArg returns the first argument of "OK [CODE arg] text".
func imapRespCodeArg(u string) string {
	_, rest, _ := strings.Cut(u, "[")
	rest, _, _ = strings.Cut(rest, "]")
	f := strings.Fields(rest)
	if len(f) < 2 {
		return ""
	}
	return f[1]
}

func imapParseFlagList(s string) []string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, ')'); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimPrefix(s, "(")
	return strings.Fields(s)
}

func imapAtou32(s string) uint32 {
	n, _ := strconv.ParseUint(s, 10, 32)
	return uint32(n)
}

const imapDateLayout = "02-Jan-2006 15:04:05 -0700"

// Append appends msg (use CRLF line endings) to mailbox with the given flags
// and, unless zero, INTERNALDATE. It returns the new UID (APPENDUID).
func (c *imapClient) Append(mailbox string, flags []string, msg []byte, internalDate time.Time) (uint32, error) {
	if c.conn == nil {
		return 0, errors.New("imap: connection closed")
	}
	tag := c.nextTag()
	cmd := "APPEND " + imapMailbox(mailbox)
	if len(flags) > 0 {
		cmd += " (" + strings.Join(flags, " ") + ")"
	}
	if !internalDate.IsZero() {
		cmd += ` "` + internalDate.Format(imapDateLayout) + `"`
	}
	what := cmd
	cmd += fmt.Sprintf(" {%d}", len(msg))
	c.conn.SetDeadline(time.Now().Add(c.Timeout))
	if err := c.write(tag + " " + cmd + "\r\n"); err != nil {
		return 0, err
	}
	for {
		l, err := c.readLine()
		if err != nil {
			return 0, fmt.Errorf("imap %q: %w", what, err)
		}
		if strings.HasPrefix(l, "+") {
			break
		}
		if strings.HasPrefix(l, tag+" ") {
			c.LastTagged = l[len(tag)+1:]
			return 0, fmt.Errorf("imap %q: %s", what, c.LastTagged)
		}
	}
	if err := c.write(string(msg) + "\r\n"); err != nil {
		return 0, err
	}
	if _, err := c.readTagged(tag, what); err != nil {
		return 0, err
	}
	// OK [APPENDUID <uidvalidity> <uid>] ...
	if i := strings.Index(c.LastTagged, "[APPENDUID "); i >= 0 {
		code, _, _ := strings.Cut(c.LastTagged[i+1:], "]")
		if f := strings.Fields(code); len(f) == 3 {
			return imapAtou32(f[2]), nil
		}
	}
	return 0, nil
}

// fetchedMessage is one parsed FETCH response.
type fetchedMessage struct {
	Seq          uint32
	UID          uint32
	Flags        []string
	InternalDate time.Time
	Size         uint32
	ModSeq       uint64
	// Body is the content of BODY[] / RFC822 (BODY.PEEK[] answers as BODY[]).
	Body []byte
	// Sections holds every BODY[...]/BINARY[...]/RFC822.* string item by its name.
	Sections map[string][]byte
}

// HasFlag reports whether the message carries flag (case-insensitive).
func (m fetchedMessage) HasFlag(flag string) bool {
	for _, f := range m.Flags {
		if strings.EqualFold(f, flag) {
			return true
		}
	}
	return false
}

// Fetch runs UID FETCH uidset (items), e.g. Fetch("1:*", "FLAGS BODY.PEEK[]").
// UID is always included.
func (c *imapClient) Fetch(uidset, items string) ([]fetchedMessage, error) {
	items = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(items), "("), ")")
	untagged, err := c.Cmd("UID FETCH %s (%s)", uidset, items)
	if err != nil {
		return nil, err
	}
	return imapParseFetches(untagged)
}

// Store runs UID STORE uidset op (flags); op is FLAGS, +FLAGS or -FLAGS,
// optionally with .SILENT. It returns the FETCH responses.
func (c *imapClient) Store(uidset, op string, flags []string) ([]fetchedMessage, error) {
	untagged, err := c.Cmd("UID STORE %s %s (%s)", uidset, op, strings.Join(flags, " "))
	if err != nil {
		return nil, err
	}
	return imapParseFetches(untagged)
}

// Copy runs UID COPY and returns the destination UIDs (COPYUID), in the
// order of the source UIDs.
func (c *imapClient) Copy(uidset, dest string) ([]uint32, error) {
	if _, err := c.Cmd("UID COPY %s %s", uidset, imapMailbox(dest)); err != nil {
		return nil, err
	}
	return imapParseCopyUID(c.LastTagged), nil
}

// Move runs UID MOVE and returns the destination UIDs (COPYUID).
func (c *imapClient) Move(uidset, dest string) ([]uint32, error) {
	untagged, err := c.Cmd("UID MOVE %s %s", uidset, imapMailbox(dest))
	if err != nil {
		return nil, err
	}
	for _, u := range untagged {
		if uids := imapParseCopyUID(u); uids != nil {
			return uids, nil
		}
	}
	return imapParseCopyUID(c.LastTagged), nil
}

// imapParseCopyUID extracts the destination UIDs of "[COPYUID validity src dst]".
func imapParseCopyUID(s string) []uint32 {
	i := strings.Index(s, "[COPYUID ")
	if i < 0 {
		return nil
	}
	code, _, _ := strings.Cut(s[i+1:], "]")
	f := strings.Fields(code)
	if len(f) != 4 {
		return nil
	}
	return imapExpandUIDSet(f[3])
}

// imapExpandUIDSet expands "1:3,7" to [1 2 3 7] (ranges may be descending).
func imapExpandUIDSet(set string) []uint32 {
	var out []uint32
	for _, part := range strings.Split(set, ",") {
		lo, hi, isRange := strings.Cut(part, ":")
		a := imapAtou32(lo)
		if !isRange {
			out = append(out, a)
			continue
		}
		b := imapAtou32(hi)
		if a <= b {
			for u := a; u <= b; u++ {
				out = append(out, u)
			}
		} else {
			for u := a; u >= b; u-- {
				out = append(out, u)
			}
		}
	}
	return out
}

// Expunge runs EXPUNGE and returns the expunged sequence numbers as reported.
func (c *imapClient) Expunge() ([]uint32, error) {
	untagged, err := c.Cmd("EXPUNGE")
	return imapParseExpunged(untagged), err
}

// ExpungeUIDs runs UID EXPUNGE uidset (UIDPLUS): only those \Deleted messages go.
func (c *imapClient) ExpungeUIDs(uidset string) ([]uint32, error) {
	untagged, err := c.Cmd("UID EXPUNGE %s", uidset)
	return imapParseExpunged(untagged), err
}

func imapParseExpunged(untagged []string) []uint32 {
	var seqs []uint32
	for _, u := range untagged {
		f := strings.Fields(u)
		if len(f) == 2 && f[1] == "EXPUNGE" {
			seqs = append(seqs, imapAtou32(f[0]))
		}
	}
	return seqs
}

// Create creates a mailbox ("." is the hierarchy separator).
func (c *imapClient) Create(mailbox string) error {
	_, err := c.Cmd("CREATE %s", imapMailbox(mailbox))
	return err
}

// Rename renames a mailbox (and its children).
func (c *imapClient) Rename(from, to string) error {
	_, err := c.Cmd("RENAME %s %s", imapMailbox(from), imapMailbox(to))
	return err
}

// Delete deletes a mailbox.
func (c *imapClient) Delete(mailbox string) error {
	_, err := c.Cmd("DELETE %s", imapMailbox(mailbox))
	return err
}

// Subscribe subscribes to a mailbox.
func (c *imapClient) Subscribe(mailbox string) error {
	_, err := c.Cmd("SUBSCRIBE %s", imapMailbox(mailbox))
	return err
}

// Unsubscribe unsubscribes from a mailbox.
func (c *imapClient) Unsubscribe(mailbox string) error {
	_, err := c.Cmd("UNSUBSCRIBE %s", imapMailbox(mailbox))
	return err
}

// listEntry is one LIST or LSUB response; Name is decoded from modified UTF-7.
type listEntry struct {
	Attrs []string
	Delim string
	Name  string
}

// List runs LIST ref pattern.
func (c *imapClient) List(ref, pattern string) ([]listEntry, error) {
	return c.list("LIST", ref, pattern)
}

// Lsub runs LSUB ref pattern (subscribed mailboxes).
func (c *imapClient) Lsub(ref, pattern string) ([]listEntry, error) {
	return c.list("LSUB", ref, pattern)
}

func (c *imapClient) list(cmd, ref, pattern string) ([]listEntry, error) {
	untagged, err := c.Cmd("%s %s %s", cmd, imapMailbox(ref), imapMailbox(pattern))
	if err != nil {
		return nil, err
	}
	var out []listEntry
	for _, u := range untagged {
		if !strings.HasPrefix(u, cmd+" ") {
			continue
		}
		vals, err := imapParseValues(u[len(cmd)+1:])
		if err != nil || len(vals) < 3 {
			return out, fmt.Errorf("bad %s response %q: %v", cmd, u, err)
		}
		var e listEntry
		if attrs, ok := vals[0].([]any); ok {
			for _, a := range attrs {
				e.Attrs = append(e.Attrs, imapString(a))
			}
		}
		if d := imapString(vals[1]); d != "NIL" {
			e.Delim = d
		}
		e.Name = decodeMUTF7(imapString(vals[2]))
		out = append(out, e)
	}
	return out, nil
}

// Status runs STATUS mailbox (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)
// and returns the counters by name.
func (c *imapClient) Status(mailbox string) (map[string]uint32, error) {
	untagged, err := c.Cmd("STATUS %s (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)", imapMailbox(mailbox))
	if err != nil {
		return nil, err
	}
	out := map[string]uint32{}
	for _, u := range untagged {
		if !strings.HasPrefix(u, "STATUS ") {
			continue
		}
		vals, err := imapParseValues(u[len("STATUS "):])
		if err != nil || len(vals) < 2 {
			return nil, fmt.Errorf("bad STATUS response %q: %v", u, err)
		}
		items, _ := vals[1].([]any)
		for i := 0; i+1 < len(items); i += 2 {
			out[strings.ToUpper(imapString(items[i]))] = imapAtou32(imapString(items[i+1]))
		}
	}
	return out, nil
}

// Idle enters IDLE and returns when an untagged EXISTS arrives (gotExists)
// or timeout passes, then sends DONE and waits for the completion. untagged
// holds everything the server sent meanwhile.
func (c *imapClient) Idle(timeout time.Duration) (gotExists bool, untagged []string, err error) {
	if c.conn == nil {
		return false, nil, errors.New("imap: connection closed")
	}
	tag := c.nextTag()
	c.conn.SetDeadline(time.Now().Add(c.Timeout))
	if err := c.write(tag + " IDLE\r\n"); err != nil {
		return false, nil, err
	}
	for {
		l, err := c.readLine()
		if err != nil {
			return false, untagged, fmt.Errorf("imap IDLE: %w", err)
		}
		if strings.HasPrefix(l, "+") {
			break
		}
		if strings.HasPrefix(l, tag+" ") {
			c.LastTagged = l[len(tag)+1:]
			return false, untagged, fmt.Errorf("imap IDLE: %s", c.LastTagged)
		}
		if strings.HasPrefix(l, "* ") {
			untagged = append(untagged, l[2:])
		}
	}
	deadline := time.Now().Add(timeout)
	c.conn.SetReadDeadline(deadline)
	for !gotExists {
		l, err := c.readLine()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			return false, untagged, fmt.Errorf("imap IDLE: %w", err)
		}
		if strings.HasPrefix(l, "* ") {
			untagged = append(untagged, l[2:])
			if f := strings.Fields(l); len(f) == 3 && f[2] == "EXISTS" {
				gotExists = true
			}
		}
	}
	c.conn.SetDeadline(time.Now().Add(c.Timeout))
	if err := c.write("DONE\r\n"); err != nil {
		return gotExists, untagged, err
	}
	more, err := c.readTagged(tag, "IDLE")
	return gotExists, append(untagged, more...), err
}

// imapParseFetches parses the "n FETCH (...)" lines among untagged responses.
func imapParseFetches(untagged []string) ([]fetchedMessage, error) {
	var out []fetchedMessage
	for _, u := range untagged {
		seq, rest, ok := strings.Cut(u, " ")
		if !ok || !strings.HasPrefix(rest, "FETCH ") {
			continue
		}
		vals, err := imapParseValues(rest[len("FETCH "):])
		if err != nil || len(vals) != 1 {
			return out, fmt.Errorf("bad FETCH response %q: %v", u, err)
		}
		items, ok := vals[0].([]any)
		if !ok {
			return out, fmt.Errorf("bad FETCH response %q", u)
		}
		m := fetchedMessage{Seq: imapAtou32(seq), Sections: map[string][]byte{}}
		for i := 0; i+1 < len(items); i += 2 {
			key := strings.ToUpper(imapString(items[i]))
			val := items[i+1]
			switch {
			case key == "UID":
				m.UID = imapAtou32(imapString(val))
			case key == "FLAGS":
				list, _ := val.([]any)
				m.Flags = []string{}
				for _, f := range list {
					m.Flags = append(m.Flags, imapString(f))
				}
			case key == "INTERNALDATE":
				m.InternalDate, _ = time.Parse("_2-Jan-2006 15:04:05 -0700", imapString(val))
			case key == "RFC822.SIZE":
				m.Size = imapAtou32(imapString(val))
			case key == "MODSEQ":
				if l, ok := val.([]any); ok && len(l) == 1 {
					m.ModSeq, _ = strconv.ParseUint(imapString(l[0]), 10, 64)
				}
			default:
				if s, ok := val.(string); ok {
					m.Sections[key] = []byte(s)
					if key == "BODY[]" || key == "RFC822" || key == "BINARY[]" {
						m.Body = []byte(s)
					}
				}
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// imapAtom is an unquoted IMAP atom (NIL, numbers, flags, item names).
type imapAtom string

// imapParseValues parses a sequence of IMAP values: atoms (imapAtom), quoted
// strings and literals (string), and parenthesised lists ([]any).
func imapParseValues(s string) ([]any, error) {
	p := &imapParser{s: s}
	var out []any
	for {
		p.skipSpace()
		if p.i >= len(p.s) {
			return out, nil
		}
		v, err := p.value()
		if err != nil {
			return out, err
		}
		out = append(out, v)
	}
}

type imapParser struct {
	s string
	i int
}

func (p *imapParser) skipSpace() {
	for p.i < len(p.s) && p.s[p.i] == ' ' {
		p.i++
	}
}

func (p *imapParser) value() (any, error) {
	switch p.s[p.i] {
	case '(':
		p.i++
		list := []any{}
		for {
			p.skipSpace()
			if p.i >= len(p.s) {
				return nil, errors.New("unterminated list")
			}
			if p.s[p.i] == ')' {
				p.i++
				return list, nil
			}
			v, err := p.value()
			if err != nil {
				return nil, err
			}
			list = append(list, v)
		}
	case '"':
		p.i++
		var b strings.Builder
		for p.i < len(p.s) {
			ch := p.s[p.i]
			p.i++
			switch ch {
			case '\\':
				if p.i < len(p.s) {
					b.WriteByte(p.s[p.i])
					p.i++
				}
			case '"':
				return b.String(), nil
			default:
				b.WriteByte(ch)
			}
		}
		return nil, errors.New("unterminated quoted string")
	case '{':
		end := strings.Index(p.s[p.i:], "}\r\n")
		if end < 0 {
			return nil, errors.New("bad literal")
		}
		n, err := strconv.Atoi(strings.TrimSuffix(p.s[p.i+1:p.i+end], "+"))
		if err != nil {
			return nil, err
		}
		start := p.i + end + 3
		if start+n > len(p.s) {
			return nil, errors.New("short literal")
		}
		p.i = start + n
		return p.s[start : start+n], nil
	}
	// Atom; a [...] section (which may hold spaces and parens) belongs to it.
	start := p.i
	for p.i < len(p.s) {
		ch := p.s[p.i]
		if ch == '[' {
			end := strings.IndexByte(p.s[p.i:], ']')
			if end < 0 {
				return nil, errors.New("unterminated [")
			}
			p.i += end + 1
			continue
		}
		if ch == ' ' || ch == '(' || ch == ')' {
			break
		}
		p.i++
	}
	if p.i == start {
		return nil, fmt.Errorf("unexpected %q at %d", p.s[p.i], p.i)
	}
	return imapAtom(p.s[start:p.i]), nil
}

// imapString returns the text of an atom or string value.
func imapString(v any) string {
	switch v := v.(type) {
	case imapAtom:
		return string(v)
	case string:
		return v
	}
	return fmt.Sprint(v)
}

// imapQuote returns s as an IMAP quoted string.
func imapQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// imapMailbox encodes a mailbox name (modified UTF-7) and quotes it.
func imapMailbox(name string) string { return imapQuote(encodeMUTF7(name)) }

var imapMUTF7Encoding = base64.NewEncoding("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,").WithPadding(base64.NoPadding)

// encodeMUTF7 encodes a UTF-8 mailbox name in IMAP modified UTF-7 (RFC 3501 5.1.3).
func encodeMUTF7(s string) string {
	var b strings.Builder
	var run []rune
	flush := func() {
		if len(run) == 0 {
			return
		}
		u := utf16.Encode(run)
		buf := make([]byte, 0, 2*len(u))
		for _, r := range u {
			buf = append(buf, byte(r>>8), byte(r))
		}
		b.WriteString("&" + imapMUTF7Encoding.EncodeToString(buf) + "-")
		run = run[:0]
	}
	for _, r := range s {
		if r >= 0x20 && r <= 0x7e {
			flush()
			if r == '&' {
				b.WriteString("&-")
			} else {
				b.WriteRune(r)
			}
			continue
		}
		run = append(run, r)
	}
	flush()
	return b.String()
}

// decodeMUTF7 decodes modified UTF-7; invalid input is returned unchanged.
func decodeMUTF7(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '&' {
			b.WriteByte(s[i])
			continue
		}
		end := strings.IndexByte(s[i:], '-')
		if end < 0 {
			return s
		}
		enc := s[i+1 : i+end]
		i += end
		if enc == "" {
			b.WriteByte('&')
			continue
		}
		raw, err := imapMUTF7Encoding.DecodeString(enc)
		if err != nil || len(raw)%2 != 0 {
			return s
		}
		u := make([]uint16, len(raw)/2)
		for j := range u {
			u[j] = uint16(raw[2*j])<<8 | uint16(raw[2*j+1])
		}
		b.WriteString(string(utf16.Decode(u)))
	}
	return b.String()
}

// ---------------------------------------------------------------------------
// LMTP

// deliverLMTP delivers msg to rcpt over LMTP, failing the test on any error.
// Call it from the test goroutine; use lmtpDeliver elsewhere.
func deliverLMTP(t testing.TB, addr, rcpt string, msg []byte) {
	t.Helper()
	if err := lmtpDeliver(addr, "sender@example.net", []string{rcpt}, msg); err != nil {
		t.Fatalf("lmtp delivery to %s: %v", rcpt, err)
	}
}

// lmtpDeliver delivers msg over LMTP to every recipient; any per-recipient
// failure is an error. Line endings are normalised to CRLF and lines
// starting with "." are dot-stuffed.
func lmtpDeliver(addr, from string, rcpts []string, msg []byte) error {
	conn, err := net.DialTimeout("tcp", addr, lmtpTimeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(lmtpTimeout))
	r := bufio.NewReader(conn)
	reply := func(want string) (string, error) {
		var text []string
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return strings.Join(text, "\n"), err
			}
			l = strings.TrimRight(l, "\r\n")
			text = append(text, l)
			if len(l) < 4 || l[3] != '-' {
				all := strings.Join(text, "\n")
				if !strings.HasPrefix(l, want) {
					return all, fmt.Errorf("lmtp: want %s, got %q", want, all)
				}
				return all, nil
			}
		}
	}
	send := func(line, want string) error {
		if _, err := io.WriteString(conn, line+"\r\n"); err != nil {
			return err
		}
		_, err := reply(want)
		if err != nil {
			return fmt.Errorf("%s: %w", line, err)
		}
		return nil
	}
	if _, err := reply("220"); err != nil {
		return err
	}
	if err := send("LHLO localhost", "250"); err != nil {
		return err
	}
	if err := send("MAIL FROM:<"+from+">", "250"); err != nil {
		return err
	}
	for _, rc := range rcpts {
		if err := send("RCPT TO:<"+rc+">", "250"); err != nil {
			return err
		}
	}
	if err := send("DATA", "354"); err != nil {
		return err
	}
	var data bytes.Buffer
	text := strings.ReplaceAll(string(msg), "\r\n", "\n")
	text = strings.TrimSuffix(text, "\n")
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, ".") {
			data.WriteByte('.')
		}
		data.WriteString(line)
		data.WriteString("\r\n")
	}
	data.WriteString(".\r\n")
	if _, err := conn.Write(data.Bytes()); err != nil {
		return err
	}
	for _, rc := range rcpts {
		if _, err := reply("250"); err != nil {
			return fmt.Errorf("delivery to %s: %w", rc, err)
		}
	}
	_ = send("QUIT", "221")
	return nil
}
