package peers

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"

	"mailfs/journal"
)

// ALPN protocol names. A node listens on one address for both: the
// replication stream (ProtoSync, paired peers only) and pairing (ProtoPair,
// any key, then a proof of the invite secret). The protocol negotiated in
// the handshake says which one a connection is; each config refuses the
// other.
const (
	// ProtoSync2 is the replication stream with segment format 2 (body
	// chunks compressed); ProtoSync the same stream with format 1, which a
	// mailfs from before format 2 speaks. Both ends offer both, the newer
	// first, so a node upgraded before its peer still replicates.
	ProtoSync2 = "mailfs/2"
	ProtoSync  = "mailfs/1"
	ProtoPair  = "mailfs-pair/1"
	// ProtoFull is the anti-entropy full sync (digests, key lists, bodies
	// on request), between paired peers only, like ProtoSync.
	ProtoFull = "mailfs-full/1"
)

// UnknownPeerError refuses a TLS peer by the fingerprint of the ed25519 key
// in its certificate. That key is the only thing read from a refused
// certificate; log the error to tell the user which node knocked.
type UnknownPeerError struct {
	// ID is the fingerprint the peer presented.
	ID journal.NodeID
	// Want is the pinned fingerprint on the dialing side, zero on the
	// accepting side (where ID is simply not a paired node).
	Want journal.NodeID
}

// Error names the presented fingerprint (and the pinned one, if any).
func (e *UnknownPeerError) Error() string {
	if e.Want.IsZero() {
		return fmt.Sprintf("refused certificate of unpaired node %s", FormatID(e.ID))
	}
	return fmt.Sprintf("certificate of node %s does not match pinned node %s", FormatID(e.ID), FormatID(e.Want))
}

// ErrBadPeerCertificate is wrapped by refusals of certificates that are not
// a single ed25519 leaf.
var ErrBadPeerCertificate = errors.New("peer certificate is not a single ed25519 certificate")

// ServerConfig is the TLS config that accepts replication connections: TLS
// 1.3 only, a client certificate required, chain verification replaced by
// a pin: the client must present exactly one ed25519 certificate whose key
// fingerprint trusted accepts. trusted is called from handshake goroutines
// and must be safe for concurrent use. Session tickets are off, so every
// connection is checked afresh. A nil trusted trusts nobody.
func ServerConfig(id *Identity, trusted func(journal.NodeID) bool) *tls.Config {
	if trusted == nil {
		trusted = func(journal.NodeID) bool { return false }
	}
	cfg := baseConfig(id, ProtoSync)
	cfg.NextProtos = []string{ProtoSync2, ProtoSync, ProtoFull}
	cfg.ClientAuth = tls.RequireAnyClientCert // any: the pin below replaces chain checks
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		peer, err := leafID(cs)
		if err != nil {
			return err
		}
		if !trusted(peer) {
			return &UnknownPeerError{ID: peer}
		}
		return checkProto(cs, ProtoSync2, ProtoSync, ProtoFull)
	}
	return cfg
}

// ClientConfig is the TLS config for dialing the paired node want: TLS 1.3
// only, this node's certificate offered, and the server accepted only if it
// presents exactly one ed25519 certificate whose key fingerprint is want.
// Pass it to tls.Client or tls.Dialer unchanged (ServerName is not used).
func ClientConfig(id *Identity, want journal.NodeID) *tls.Config {
	return clientConfig(id, want, ProtoSync2, ProtoSync) // an older peer speaks only ProtoSync
}

// SegmentVersion is the segment format to write on a replication
// connection that negotiated proto.
func SegmentVersion(proto string) uint16 {
	if proto == ProtoSync {
		return 1
	}
	return journal.SegmentVersion
}

// FullSyncClientConfig is ClientConfig for the full sync protocol.
func FullSyncClientConfig(id *Identity, want journal.NodeID) *tls.Config {
	return clientConfig(id, want, ProtoFull)
}

// PairingClientConfig is ClientConfig for the pairing protocol: the joiner
// pins the inviter's fingerprint from the invite code.
func PairingClientConfig(id *Identity, inviter journal.NodeID) *tls.Config {
	return clientConfig(id, inviter, ProtoPair)
}

// clientConfig offers protos, in that order of preference, and accepts a
// server that chose one of them.
func clientConfig(id *Identity, want journal.NodeID, protos ...string) *tls.Config {
	cfg := baseConfig(id, protos[0])
	cfg.NextProtos = protos
	// Chain and host name checks are replaced by the fingerprint pin in
	// VerifyConnection, which runs on every handshake.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		peer, err := leafID(cs)
		if err != nil {
			return err
		}
		if peer != want {
			return &UnknownPeerError{ID: peer, Want: want}
		}
		return checkProto(cs, protos...)
	}
	return cfg
}

// PairingServerConfig is the TLS config of a pairing handshake: it accepts
// any client presenting exactly one ed25519 certificate, but only while inv
// holds an invite that is still open; ServePairing then demands the proof
// of the invite secret before anything is pinned.
func PairingServerConfig(id *Identity, inv *PendingInvites) *tls.Config {
	cfg := baseConfig(id, ProtoPair)
	cfg.ClientAuth = tls.RequireAnyClientCert
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		peer, err := leafID(cs)
		if err != nil {
			return err
		}
		if err := checkProto(cs, ProtoPair); err != nil {
			return err
		}
		if n, err := inv.Open(); err != nil {
			return fmt.Errorf("pairing: %w", err)
		} else if n == 0 {
			return fmt.Errorf("%w: refused node %s", ErrNoInvite, FormatID(peer))
		}
		return nil
	}
	return cfg
}

// ListenerConfig serves both protocols on one listener: a client that
// offers ProtoPair (and not ProtoSync) gets PairingServerConfig, any other
// gets ServerConfig. After the handshake, dispatch on
// ConnectionState().NegotiatedProtocol. inv may be nil: pairing is then
// refused.
func ListenerConfig(id *Identity, trusted func(journal.NodeID) bool, inv *PendingInvites) *tls.Config {
	syncCfg := ServerConfig(id, trusted)
	var pair *tls.Config
	if inv != nil {
		pair = PairingServerConfig(id, inv)
	}
	cfg := syncCfg.Clone()
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if slices.Contains(hello.SupportedProtos, ProtoPair) && !slices.Contains(hello.SupportedProtos, ProtoSync) {
			if pair == nil {
				return nil, ErrNoInvite
			}
			return pair, nil
		}
		return syncCfg, nil
	}
	return cfg
}

// PeerID is the node ID of the peer of a completed TLS 1.3 handshake made
// with one of this package's configs.
func PeerID(cs tls.ConnectionState) (journal.NodeID, error) {
	if !cs.HandshakeComplete {
		return journal.NodeID{}, errors.New("TLS handshake not complete")
	}
	if cs.Version != tls.VersionTLS13 {
		return journal.NodeID{}, fmt.Errorf("TLS version %#x, want 1.3", cs.Version)
	}
	return leafID(cs)
}

func baseConfig(id *Identity, proto string) *tls.Config {
	cfg := &tls.Config{
		MinVersion:             tls.VersionTLS13,
		NextProtos:             []string{proto},
		SessionTicketsDisabled: true,
	}
	cert, err := id.Certificate()
	if err != nil {
		fail := func() error { return fmt.Errorf("node certificate: %w", err) }
		cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, fail() }
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return nil, fail() }
		return cfg
	}
	cfg.Certificates = []tls.Certificate{cert}
	// Always send our certificate when asked, whatever the request says.
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	return cfg
}

// leafID checks that the peer sent exactly one certificate with an ed25519
// key and returns that key's fingerprint. Nothing else in it is used.
func leafID(cs tls.ConnectionState) (journal.NodeID, error) {
	if len(cs.PeerCertificates) != 1 {
		return journal.NodeID{}, fmt.Errorf("%w: got %d certificates", ErrBadPeerCertificate, len(cs.PeerCertificates))
	}
	c := cs.PeerCertificates[0]
	pub, ok := c.PublicKey.(ed25519.PublicKey)
	if !ok || len(pub) != ed25519.PublicKeySize {
		return journal.NodeID{}, fmt.Errorf("%w: %T key in certificate sha256 %x", ErrBadPeerCertificate, c.PublicKey, sha256.Sum256(c.Raw))
	}
	return Fingerprint(pub), nil
}

// checkProto accepts a connection that negotiated one of want.
func checkProto(cs tls.ConnectionState, want ...string) error {
	if !slices.Contains(want, cs.NegotiatedProtocol) {
		return fmt.Errorf("negotiated protocol %q, want one of %q", cs.NegotiatedProtocol, want)
	}
	return nil
}
