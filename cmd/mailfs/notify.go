package main

import (
	"log/slog"
	"net"
	"os"
)

// notifyReady tells systemd (Type=notify) that the mount is serving.
func notifyReady(log *slog.Logger) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		log.Warn("systemd notify failed", "socket", addr, "err", err)
		return
	}
	defer c.Close()
	if _, err := c.Write([]byte("READY=1")); err != nil {
		log.Warn("systemd notify failed", "socket", addr, "err", err)
	}
}
