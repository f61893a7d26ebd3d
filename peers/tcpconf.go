package peers

import (
	"context"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// LinkTimeout is how soon a peer connection over a path that silently
// drops packets (a cut link, a rebooted NAT or firewall) fails: the kernel
// gives up on data unacknowledged for that long (TCP_USER_TIMEOUT), and an
// idle connection is probed by TCP keepalives. Without it a dead path is
// only noticed by the pusher's ack timeout (2 min) or the kernel's
// retransmission limit (about 15 min), and status says "connected" all the
// while.
const LinkTimeout = 20 * time.Second

var linkKeepAlive = net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: 5 * time.Second, Count: 3}

// setUserTimeout sets TCP_USER_TIMEOUT on a socket being created (accepted
// sockets inherit it from their listener).
func setUserTimeout(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(LinkTimeout/time.Millisecond))
	}); err != nil {
		return err
	}
	return serr
}

// LinkDialer dials peers with dead-path detection (LinkTimeout).
func LinkDialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, KeepAliveConfig: linkKeepAlive, Control: setUserTimeout}
}

// ListenLink listens for peers with dead-path detection (LinkTimeout) on
// every accepted connection.
func ListenLink(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAliveConfig: linkKeepAlive, Control: setUserTimeout}
	return lc.Listen(context.Background(), "tcp", addr)
}
