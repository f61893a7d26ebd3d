package peers

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"mailfs/journal"
)

// Pairing exchange, after a TLS 1.3 handshake negotiated ALPN ProtoPair
// (the joiner pins the inviter's fingerprint from the code; the inviter
// accepts any single ed25519 client certificate, only while an invite is
// open):
//
//	joiner  -> inviter  hello   {"proof", "name", "address"}
//	inviter -> joiner   welcome {"proof", "name", "address"}
//	                 or refuse  {"code", "reason"}
//
// Each message is one frame:
//
//	magic "MFPA" | version u8 (1) | type u8 | length u32 big-endian | JSON
//
// with type 1 hello, 2 welcome, 3 refuse, and length at most maxFrame. The
// proofs are
//
//	HMAC-SHA256(secret, "mailfs-pair-v1\x00" | role | inviter ID | joiner ID | exporter)
//
// with role 'J' (joiner) or 'I' (inviter), the node IDs being the key
// fingerprints that TLS authenticated, and exporter 32 bytes of the TLS
// session's keying material (RFC 8446 §7.5, label
// "EXPORTER-mailfs-pair-v1"). The secret never crosses the wire, and a
// proof is bound to both keys and to this one TLS session: it cannot be
// replayed or relayed to another one. Node IDs are never taken from the
// JSON, only from the certificates.
const (
	frameVersion  = 1
	frameHeader   = 10
	maxFrame      = 4096
	maxNameLen    = 128
	exporterLabel = "EXPORTER-mailfs-pair-v1"
	macLabel      = "mailfs-pair-v1\x00"
	roleJoiner    = 'J'
	roleInviter   = 'I'
)

var frameMagic = [4]byte{'M', 'F', 'P', 'A'}

type frameType uint8

const (
	frameHello   frameType = 1
	frameWelcome frameType = 2
	frameRefuse  frameType = 3
)

// PairingTimeout bounds each step of a pairing exchange: the dial, the
// handshake, and every read and write (a shorter context deadline wins).
const PairingTimeout = 15 * time.Second

// Pairing errors. A refusal received from the inviter wraps the sentinel
// that says why (ErrBadProof, ErrInviteUsed, ErrInviteExpired, ...) or, when
// the reason is not one of those, ErrPairingRefused.
var (
	ErrPairingRefused  = errors.New("pairing refused by the inviter")
	ErrPairingProtocol = errors.New("pairing protocol error")
	ErrInviterProof    = errors.New("inviter did not prove knowledge of the invite secret")
)

// PeerInfo is what pairing tells each side about the other.
type PeerInfo struct {
	// ID is the node ID, always from the TLS certificate.
	ID journal.NodeID
	// Name is the node's self-chosen name (mailfs init --name).
	Name string
	// Address is where the node listens for replication (host:port), or
	// empty when it does not accept connections.
	Address string
}

// Peer is the pinned record of a paired node.
func (p PeerInfo) Peer(pairedAt time.Time) Peer {
	return Peer{ID: p.ID, Name: p.Name, Address: p.Address, PairedAt: pairedAt}
}

// DialFunc opens the TCP connection to the inviter (net.Dialer.DialContext
// has this shape).
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

type helloMsg struct {
	Proof   []byte `json:"proof"`
	Name    string `json:"name"`
	Address string `json:"address,omitempty"`
}

type refuseMsg struct {
	Code   string `json:"code"`
	Reason string `json:"reason"`
}

// Refusal codes on the wire, and the errors they stand for.
var refuseCodes = []struct {
	code string
	err  error
}{
	{"bad-proof", ErrBadProof},
	{"used", ErrInviteUsed},
	{"busy", ErrInviteBusy},
	{"expired", ErrInviteExpired},
	{"no-invite", ErrNoInvite},
}

// ServePairing runs the inviter's side of a pairing exchange on conn, a
// server-side TLS connection made with PairingServerConfig or
// ListenerConfig (the handshake is completed here if it was not). It reads
// the joiner's proof, checks it in constant time against the open invites
// in inv, and holds the matching invite. Only then is accept called with
// the joiner (to pin it durably; nil skips it): when accept fails the
// invite is released and the joiner refused. Otherwise the invite is
// marked used and the welcome sent. A wrong proof pins nothing and leaves
// the invites as they were.
//
// self.Name and self.Address are told to the joiner; self.ID, when set,
// restricts the match to invites issued by that node ID. The joiner's
// Address is its advertised one, with a wildcard host replaced by the host
// it connected from. conn is not closed.
func ServePairing(ctx context.Context, conn *tls.Conn, inv *PendingInvites, self PeerInfo, accept func(PeerInfo) error) (PeerInfo, error) {
	remote := conn.RemoteAddr().String()
	fail := func(who string, err error) (PeerInfo, error) {
		err = withCtx(ctx, err)
		return PeerInfo{}, fmt.Errorf("pairing with %s: %w", who, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if err := stepDeadline(ctx, conn); err != nil {
		return fail(remote, err)
	}
	if err := conn.HandshakeContext(ctx); err != nil {
		return fail(remote, fmt.Errorf("TLS handshake: %w", err))
	}
	cs := conn.ConnectionState()
	if err := checkProto(cs, ProtoPair); err != nil {
		return fail(remote, err)
	}
	joiner, err := PeerID(cs)
	if err != nil {
		return fail(remote, err)
	}
	who := fmt.Sprintf("node %s at %s", FormatID(joiner), remote)
	exporter, err := cs.ExportKeyingMaterial(exporterLabel, nil, 32)
	if err != nil {
		return fail(who, err)
	}

	var hello helloMsg
	if err := readFrame(ctx, conn, frameHello, &hello); err != nil {
		return fail(who, err)
	}
	if err := checkInfo(hello.Name, hello.Address); err != nil {
		refuse(ctx, conn, "malformed", "hello: "+err.Error())
		return fail(who, fmt.Errorf("%w: hello: %w", ErrPairingProtocol, err))
	}
	if len(hello.Proof) != sha256.Size {
		refuse(ctx, conn, "bad-proof", ErrBadProof.Error())
		return fail(who, ErrBadProof)
	}
	if !self.ID.IsZero() && joiner == self.ID {
		refuse(ctx, conn, "self", "a node cannot pair with itself")
		return fail(who, errors.New("joiner presented this node's own key"))
	}
	r, err := inv.reserve(self.ID, joiner, exporter, hello.Proof)
	if err != nil {
		code := "internal"
		reason := "the inviter could not check the invite"
		for _, rc := range refuseCodes {
			if errors.Is(err, rc.err) {
				code, reason = rc.code, rc.err.Error()
			}
		}
		refuse(ctx, conn, code, reason)
		return fail(who, err)
	}
	peer := PeerInfo{ID: joiner, Name: hello.Name, Address: resolveAdvertised(hello.Address, conn.RemoteAddr())}
	if accept != nil {
		if err := accept(peer); err != nil {
			relErr := inv.release(r)
			refuse(ctx, conn, "rejected", "the inviter could not record the pairing")
			return fail(who, errors.Join(fmt.Errorf("record peer: %w", err), relErr))
		}
	}
	if err := inv.commit(r); err != nil {
		refuse(ctx, conn, "internal", "the inviter could not record the pairing")
		return fail(who, fmt.Errorf("mark invite used: %w", err))
	}
	welcome := helloMsg{
		Proof:   pairMAC(r.inv.Secret, roleInviter, r.inv.Inviter, joiner, exporter),
		Name:    self.Name,
		Address: self.Address,
	}
	if err := writeFrame(ctx, conn, frameWelcome, welcome); err != nil {
		return fail(who, fmt.Errorf("send welcome (invite already used; joiner may not have pinned us): %w", err))
	}
	return peer, nil
}

// JoinPairing runs the joiner's side: it parses code (refusing a
// malformed or expired one before any network traffic), dials the
// inviter's address with dial (nil: net.Dialer), completes a TLS handshake
// pinned to the inviter's fingerprint, proves the invite secret, and
// checks the inviter's proof in return. It returns the inviter (Address
// being the one from the code); pin it. self.Name and self.Address are told
// to the inviter (self.ID is ignored: id is used).
//
// On success the inviter has already accepted (and, via its accept
// callback, pinned) this node. If the exchange breaks after the inviter
// accepted, the code is spent and a new one is needed.
func JoinPairing(ctx context.Context, code string, id *Identity, self PeerInfo, dial DialFunc) (PeerInfo, error) {
	inv, err := ParseInvite(code)
	if err != nil {
		return PeerInfo{}, fmt.Errorf("pair: %w", err)
	}
	return joinPairing(ctx, inv, id, self, dial)
}

func joinPairing(ctx context.Context, inv Invite, id *Identity, self PeerInfo, dial DialFunc) (PeerInfo, error) {
	who := fmt.Sprintf("node %s at %s", FormatID(inv.Inviter), inv.Address)
	fail := func(err error) (PeerInfo, error) {
		err = withCtx(ctx, err)
		return PeerInfo{}, fmt.Errorf("pair with %s: %w", who, err)
	}
	if inv.Inviter == id.ID {
		return fail(errors.New("this invite code was issued by this node; run join on the other node"))
	}
	if err := checkInfo(self.Name, self.Address); err != nil {
		return fail(fmt.Errorf("own name or address: %w", err))
	}
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	dctx, cancel := context.WithTimeout(ctx, PairingTimeout)
	raw, err := dial(dctx, "tcp", inv.Address)
	cancel()
	if err != nil {
		return fail(err)
	}
	conn := tls.Client(raw, PairingClientConfig(id, inv.Inviter))
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if err := stepDeadline(ctx, conn); err != nil {
		return fail(err)
	}
	if err := conn.HandshakeContext(ctx); err != nil {
		return fail(explainAlert(fmt.Errorf("TLS handshake: %w", err)))
	}
	cs := conn.ConnectionState()
	if got, err := PeerID(cs); err != nil {
		return fail(err)
	} else if got != inv.Inviter {
		return fail(&UnknownPeerError{ID: got, Want: inv.Inviter}) // VerifyConnection already refused it
	}
	exporter, err := cs.ExportKeyingMaterial(exporterLabel, nil, 32)
	if err != nil {
		return fail(err)
	}
	hello := helloMsg{
		Proof:   pairMAC(inv.Secret, roleJoiner, inv.Inviter, id.ID, exporter),
		Name:    self.Name,
		Address: self.Address,
	}
	if err := writeFrame(ctx, conn, frameHello, hello); err != nil {
		return fail(err)
	}
	var welcome helloMsg
	var refused refuseMsg
	typ, err := readReply(ctx, conn, &welcome, &refused)
	if err != nil {
		return fail(explainAlert(err))
	}
	if typ == frameRefuse {
		why := ErrPairingRefused
		for _, rc := range refuseCodes {
			if rc.code == refused.Code {
				why = rc.err
			}
		}
		if why == ErrPairingRefused && refused.Reason != "" {
			return fail(fmt.Errorf("%w: %.200q", why, refused.Reason))
		}
		return fail(fmt.Errorf("refused: %w", why))
	}
	if !hmac.Equal(welcome.Proof, pairMAC(inv.Secret, roleInviter, inv.Inviter, id.ID, exporter)) {
		return fail(ErrInviterProof)
	}
	if err := checkInfo(welcome.Name, welcome.Address); err != nil {
		return fail(fmt.Errorf("%w: welcome: %w", ErrPairingProtocol, err))
	}
	return PeerInfo{ID: inv.Inviter, Name: welcome.Name, Address: inv.Address}, nil
}

// withCtx attributes a failure to ctx when ctx ended it: canceled, or an
// I/O timeout at or after ctx's deadline (the step deadline was ctx's).
func withCtx(ctx context.Context, err error) error {
	cerr := ctx.Err()
	if cerr == nil {
		var ne net.Error
		if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) && errors.As(err, &ne) && ne.Timeout() {
			cerr = context.DeadlineExceeded
		}
	}
	if cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}

// explainAlert turns the inviter's TLS "bad certificate" alert into
// ErrNoInvite: the joiner's handshake pinned the inviter already, and the
// inviter takes any key while an invite is open, so it had none open.
func explainAlert(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" && op.Err != nil && op.Err.Error() == "tls: bad certificate" {
		return fmt.Errorf("%w on the inviter (the code was used or has expired, or the inviter lost it): %w", ErrNoInvite, err)
	}
	return err
}

// pairMAC is a pairing proof (see the wire format above).
func pairMAC(secret [32]byte, role byte, inviter, joiner journal.NodeID, exporter []byte) []byte {
	m := hmac.New(sha256.New, secret[:])
	m.Write([]byte(macLabel))
	m.Write([]byte{role})
	m.Write(inviter[:])
	m.Write(joiner[:])
	m.Write(exporter)
	return m.Sum(nil)
}

// stepDeadline gives conn the next step's deadline: PairingTimeout from
// now, or ctx's deadline when sooner. A ctx canceled meanwhile wins.
func stepDeadline(ctx context.Context, conn net.Conn) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d := time.Now().Add(PairingTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(d) {
		d = dl
	}
	if err := conn.SetDeadline(d); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil { // canceled between the check and SetDeadline
		conn.SetDeadline(time.Unix(1, 0))
		return err
	}
	return nil
}

func writeFrame(ctx context.Context, conn net.Conn, typ frameType, msg any) error {
	body, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if len(body) > maxFrame {
		return fmt.Errorf("%w: %d-byte message exceeds %d", ErrPairingProtocol, len(body), maxFrame)
	}
	buf := make([]byte, frameHeader, frameHeader+len(body))
	copy(buf, frameMagic[:])
	buf[4] = frameVersion
	buf[5] = byte(typ)
	binary.BigEndian.PutUint32(buf[6:], uint32(len(body)))
	buf = append(buf, body...)
	if err := stepDeadline(ctx, conn); err != nil {
		return err
	}
	if _, err := conn.Write(buf); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return nil
}

// nextFrame reads one frame header and body, checking magic, version and
// size.
func nextFrame(ctx context.Context, conn net.Conn) (frameType, []byte, error) {
	if err := stepDeadline(ctx, conn); err != nil {
		return 0, nil, err
	}
	var h [frameHeader]byte
	if _, err := io.ReadFull(conn, h[:]); err != nil {
		return 0, nil, fmt.Errorf("receive: %w", err)
	}
	if [4]byte(h[:4]) != frameMagic {
		return 0, nil, fmt.Errorf("%w: bad magic %q (not a mailfs pairing peer)", ErrPairingProtocol, h[:4])
	}
	if h[4] != frameVersion {
		return 0, nil, fmt.Errorf("%w: peer speaks pairing version %d, this mailfs %d", ErrPairingProtocol, h[4], frameVersion)
	}
	n := binary.BigEndian.Uint32(h[6:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("%w: %d-byte message exceeds %d", ErrPairingProtocol, n, maxFrame)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(conn, body); err != nil {
		return 0, nil, fmt.Errorf("receive: %w", err)
	}
	return frameType(h[5]), body, nil
}

func readFrame(ctx context.Context, conn net.Conn, want frameType, msg any) error {
	typ, body, err := nextFrame(ctx, conn)
	if err != nil {
		return err
	}
	if typ != want {
		return fmt.Errorf("%w: message type %d, want %d", ErrPairingProtocol, typ, want)
	}
	if err := json.Unmarshal(body, msg); err != nil {
		return fmt.Errorf("%w: message type %d: %w", ErrPairingProtocol, typ, err)
	}
	return nil
}

// readReply reads the inviter's answer: a welcome or a refusal.
func readReply(ctx context.Context, conn net.Conn, welcome *helloMsg, refused *refuseMsg) (frameType, error) {
	typ, body, err := nextFrame(ctx, conn)
	if err != nil {
		return 0, err
	}
	var msg any
	switch typ {
	case frameWelcome:
		msg = welcome
	case frameRefuse:
		msg = refused
	default:
		return 0, fmt.Errorf("%w: message type %d, want welcome or refuse", ErrPairingProtocol, typ)
	}
	if err := json.Unmarshal(body, msg); err != nil {
		return 0, fmt.Errorf("%w: message type %d: %w", ErrPairingProtocol, typ, err)
	}
	return typ, nil
}

// refuse tells the joiner why, best effort (the caller returns the real
// error).
func refuse(ctx context.Context, conn net.Conn, code, reason string) {
	_ = writeFrame(ctx, conn, frameRefuse, refuseMsg{Code: code, Reason: reason})
}

// checkInfo validates a name and an advertised address from the wire (or
// from the caller). An advertised address may have a wildcard host.
func checkInfo(name, addr string) error {
	if len(name) > maxNameLen {
		return fmt.Errorf("name of %d bytes, at most %d", len(name), maxNameLen)
	}
	if err := checkText(name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if addr == "" {
		return nil
	}
	if len(addr) > maxAddrLen {
		return fmt.Errorf("address of %d bytes, at most %d", len(addr), maxAddrLen)
	}
	if err := checkText(addr); err != nil {
		return fmt.Errorf("address: %w", err)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("address %q: port must be a number 1-65535", addr)
	}
	return nil
}

// resolveAdvertised fills a wildcard host in an advertised listen address
// with the host the connection came from.
func resolveAdvertised(adv string, remote net.Addr) string {
	if adv == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(adv)
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return adv
	}
	if ta, ok := remote.(*net.TCPAddr); ok {
		return net.JoinHostPort(ta.IP.String(), port)
	}
	if rh, _, err := net.SplitHostPort(remote.String()); err == nil {
		return net.JoinHostPort(rh, port)
	}
	return ""
}
