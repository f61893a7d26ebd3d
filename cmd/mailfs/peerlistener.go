package main

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"mailfs/journal"
	"mailfs/peers"
	"mailfs/syncer"
)

// maxPeerConns bounds the peer connections served at once (handshakes
// included), so a flood of dials cannot exhaust the daemon.
const maxPeerConns = 64

// peerListener accepts the connections of other nodes on --listen: mutual
// TLS 1.3 with pinned keys (peers.ListenerConfig). A pairing connection
// (ALPN peers.ProtoPair) is served with peers.ServePairing against the
// invites in STORE/identity/invites, pinning the joiner in the index; a
// replication connection (peers.ProtoSync) or full sync connection
// (peers.ProtoFull) from a paired node is handed to the syncer. Certificates of unpaired nodes
// are refused by the TLS config and logged with their fingerprint.
type peerListener struct {
	ln     net.Listener
	st     *openedStore
	inv    *peers.PendingInvites
	self   peers.PeerInfo
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sem    chan struct{}
	// sync receives replication connections once the mount is up.
	sync atomic.Pointer[syncer.Syncer]
}

func (pl *peerListener) setSync(s *syncer.Syncer) { pl.sync.Store(s) }

// invitesDir is where `pair invite` leaves the invites the daemon accepts.
func (s storePaths) invites() string { return filepath.Join(s.identity(), "invites") }

// startPeerListener listens on addr. It returns the address to advertise:
// addr itself, with the port the kernel chose when addr's port is 0.
func startPeerListener(st *openedStore, addr string, log *slog.Logger) (*peerListener, string, error) {
	log = log.With("component", "peers")
	if _, err := st.ident.CertificateAt(st.paths.identity()); err != nil {
		return nil, "", fmt.Errorf("peer listener: %w", err)
	}
	inv, err := peers.OpenPendingInvites(st.paths.invites())
	if err != nil {
		return nil, "", fmt.Errorf("peer listener: %w", err)
	}
	raw, err := peers.ListenLink(addr)
	if err != nil {
		return nil, "", fmt.Errorf("peer listener on %s: %w (choose another --listen HOST:PORT)", addr, err)
	}
	advertised := addr
	if host, port, err := net.SplitHostPort(addr); err == nil && port == "0" {
		if ta, ok := raw.Addr().(*net.TCPAddr); ok {
			advertised = net.JoinHostPort(host, fmt.Sprint(ta.Port))
		}
	}
	cfg := peers.ListenerConfig(st.ident, peers.Trusted(st.index), inv)
	ctx, cancel := context.WithCancel(context.Background())
	pl := &peerListener{
		ln:     tls.NewListener(raw, cfg),
		st:     st,
		inv:    inv,
		self:   peers.PeerInfo{ID: st.ident.ID, Name: st.index.Name(), Address: advertised},
		log:    log,
		ctx:    ctx,
		cancel: cancel,
		sem:    make(chan struct{}, maxPeerConns),
	}
	pl.wg.Add(1)
	go pl.serve()
	log.Info("listening for peers", "listen", advertised, "node", peers.FormatID(st.ident.ID))
	return pl, advertised, nil
}

// Close stops accepting, ends the connections being served and waits for
// them.
func (pl *peerListener) Close() {
	pl.ln.Close()
	pl.cancel()
	pl.wg.Wait()
}

func (pl *peerListener) serve() {
	defer pl.wg.Done()
	for {
		c, err := pl.ln.Accept()
		if err != nil {
			if pl.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			pl.log.Warn("accepting a peer connection failed", "err", err)
			select {
			case <-time.After(100 * time.Millisecond):
			case <-pl.ctx.Done():
				return
			}
			continue
		}
		select {
		case pl.sem <- struct{}{}:
		default:
			pl.log.Warn("too many peer connections: closing a new one", "remote", c.RemoteAddr().String(), "max", maxPeerConns)
			c.Close()
			continue
		}
		pl.wg.Add(1)
		go func() {
			defer pl.wg.Done()
			defer func() { <-pl.sem }()
			pl.serveConn(c.(*tls.Conn))
		}()
	}
}

func (pl *peerListener) serveConn(conn *tls.Conn) {
	defer conn.Close()
	remote := conn.RemoteAddr().String()
	hctx, cancel := context.WithTimeout(pl.ctx, peers.PairingTimeout)
	err := conn.HandshakeContext(hctx)
	cancel()
	if err != nil {
		pl.logHandshakeFailure(conn, remote, err)
		return
	}
	cs := conn.ConnectionState()
	id, err := peers.PeerID(cs)
	if err != nil {
		pl.log.Warn("peer connection refused", "remote", remote, "err", err)
		return
	}
	switch cs.NegotiatedProtocol {
	case peers.ProtoPair:
		accept := func(p peers.PeerInfo) error {
			peer := p.Peer(time.Now())
			if err := pl.st.index.PutPeer(peer); err != nil {
				return err
			}
			if s := pl.sync.Load(); s != nil {
				s.AddPeer(peer)
			}
			return nil
		}
		p, err := peers.ServePairing(pl.ctx, conn, pl.inv, pl.self, accept)
		if err != nil {
			pl.log.Warn("pairing refused", "peer", peers.FormatID(id), "remote", remote, "err", err)
			return
		}
		pl.log.Info("paired with node", "peer_name", p.Name, "peer", peers.FormatID(p.ID), "address", p.Address,
			"remote", remote)
	case peers.ProtoSync, peers.ProtoSync2:
		// The TLS config let it in: it is a paired node.
		s := pl.sync.Load()
		if s == nil {
			pl.log.Info("replication connection before the mount is ready: closed", "peer", peers.FormatID(id), "remote", remote)
			return
		}
		s.ServeConn(pl.ctx, conn, id)
	case peers.ProtoFull:
		s := pl.sync.Load()
		if s == nil {
			pl.log.Info("full sync connection before the mount is ready: closed", "peer", peers.FormatID(id), "remote", remote)
			return
		}
		s.ServeFullSync(pl.ctx, conn, id)
	default:
		pl.log.Warn("peer connection with an unknown protocol refused", "peer", peers.FormatID(id), "remote", remote,
			"protocol", cs.NegotiatedProtocol)
	}
}

// logHandshakeFailure logs a refused or broken handshake, naming the
// fingerprint of the key the other side presented when there was one (the
// only thing read from a refused certificate).
func (pl *peerListener) logHandshakeFailure(conn *tls.Conn, remote string, err error) {
	var upe *peers.UnknownPeerError
	if errors.As(err, &upe) {
		pl.log.Warn("refused connection from an unpaired node (unknown certificate)", "peer", peers.FormatID(upe.ID),
			"remote", remote, "err", err)
		return
	}
	attrs := []any{"remote", remote, "err", err}
	if id, ok := presentedID(conn); ok {
		attrs = append([]any{"peer", peers.FormatID(id)}, attrs...)
	}
	if errors.Is(err, peers.ErrNoInvite) || errors.Is(err, peers.ErrBadPeerCertificate) {
		pl.log.Warn("refused peer connection", attrs...)
		return
	}
	pl.log.Info("peer handshake failed", attrs...)
}

// presentedID is the fingerprint of the single ed25519 certificate the
// client presented, if it got that far.
func presentedID(conn *tls.Conn) (id journal.NodeID, ok bool) {
	certs := conn.ConnectionState().PeerCertificates
	if len(certs) != 1 {
		return id, false
	}
	pub, isEd := certs[0].PublicKey.(ed25519.PublicKey)
	if !isEd || len(pub) != ed25519.PublicKeySize {
		return id, false
	}
	return peers.Fingerprint(pub), true
}
