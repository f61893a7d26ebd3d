package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"syscall"
	"time"

	"mailfs/index"
	"mailfs/peers"
)

const defaultInviteTTL = time.Hour

// joinTimeout bounds a whole `pair join` (dial, handshake, exchange).
const joinTimeout = 2 * time.Minute

func runPair(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		w := stderr
		if len(args) > 0 {
			w = stdout
		}
		fmt.Fprint(w, "usage: mailfs pair invite [--store DIR] [--ttl DUR] [--address HOST:PORT]\n"+
			"       mailfs pair join   [--store DIR] [--address HOST:PORT] CODE\n\n"+
			"Pair two nodes: 'pair invite' on one prints a one-line code (its address, its key\n"+
			"fingerprint and a one-time secret); 'pair join CODE' on the other connects, proves the\n"+
			"secret, and both nodes pin each other's key. 'mailfs pair invite --help' and\n"+
			"'mailfs pair join --help' tell more.\n\n"+
			"Example:\n"+
			"  mx1$ mailfs pair invite --store /var/lib/mailfs\n"+
			"  mx2$ mailfs pair join --store /var/lib/mailfs mailfs1:AbC...\n")
		if len(args) == 0 {
			return usageErr("need a subcommand: invite or join")
		}
		return nil
	}
	switch args[0] {
	case "invite":
		return runPairInvite(args[1:], stdout, stderr)
	case "join":
		return runPairJoin(args[1:], stdout, stderr)
	}
	return usageErr("unknown subcommand %q (want invite or join)", args[0])
}

func runPairInvite(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("pair invite [--store DIR] [--ttl DUR] [--address HOST:PORT]",
		"Print a one-line invite code for another node to join with 'mailfs pair join CODE'. The code holds\n"+
			"this node's listen address (mount --listen, else init --listen), its key fingerprint and a\n"+
			"one-time secret; it works once, until --ttl passes. Treat it like a password. The node must be\n"+
			"mounted (listening) when the other node joins; the invite may be made before or while it runs.\n"+
			"A node without a listen address another machine can dial is refused: give init or mount\n"+
			"--listen HOST:PORT with a host the other node can reach. When the other node reaches this one\n"+
			"at another address (NAT, a proxy), give that with --address.",
		"mailfs pair invite --store /var/lib/mailfs --ttl 30m", stderr)
	store := fs.String("store", defaultStore(), "store directory")
	address := fs.String("address", "", "HOST:PORT the other node dials to reach this one (default: the listen address)")
	ttl := fs.Duration("ttl", defaultInviteTTL, fmt.Sprintf("how long the code works (at most %v)", peers.MaxInviteTTL))
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if *ttl <= 0 || *ttl > peers.MaxInviteTTL {
		return usageErr("--ttl %v is outside (0, %v]", *ttl, peers.MaxInviteTTL)
	}
	paths, ident, err := openIdentity(*store)
	if err != nil {
		return err
	}
	// The address peers dial: the running daemon's (mount --listen wins),
	// else the one saved by init.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var rep statusReply
	running := true
	err = controlCall(ctx, paths, controlRequest{Cmd: "status"}, func(raw json.RawMessage) error {
		return json.Unmarshal(raw, &rep)
	})
	if errors.Is(err, errNotRunning) {
		running = false
		st, oerr := openForQuery(paths, newLogger(stderr))
		if oerr != nil {
			return oerr
		}
		rep.Node = nodeStatus(st)
		st.Close()
	} else if err != nil {
		return err
	}
	if rep.Node.ID != peers.FormatID(ident.ID) {
		return fmt.Errorf("store %s: index belongs to node %s but the identity is %s", paths.Dir, rep.Node.ID, peers.FormatID(ident.ID))
	}
	listen := rep.Node.Listen
	if *address != "" {
		listen = *address
	}
	if listen == "" {
		return fmt.Errorf("this node has no listen address, so no other node can reach it to join: " +
			"pass --listen HOST:PORT (a host the other node can reach) to 'mailfs init' or 'mailfs mount'")
	}
	inv, err := peers.NewInvite(ident.ID, listen, *ttl)
	if err != nil {
		return fmt.Errorf("this node's listen address %q cannot be dialed by another node (%v): "+
			"pass --listen HOST:PORT with a host the other node can reach to 'mailfs init' or 'mailfs mount'", listen, err)
	}
	pending, err := peers.OpenPendingInvites(paths.invites())
	if err != nil {
		return err
	}
	if err := pending.Add(inv); err != nil {
		return err
	}
	fmt.Fprintln(stdout, inv.String())
	fmt.Fprintf(stderr, "invite of node %s (%s) at %s, valid until %s; on the other node run: mailfs pair join CODE\n",
		rep.Node.Name, peers.FormatID(ident.ID), listen, inv.Expires.UTC().Format(time.RFC3339))
	if !running {
		fmt.Fprintf(stderr, "note: mailfs is not running for %s: mount it (listening on %s) before the other node joins\n",
			paths.Dir, listen)
	}
	return nil
}

func runPairJoin(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("pair join [--store DIR] [--address HOST:PORT] CODE",
		"Join the node that printed CODE ('mailfs pair invite' there): connect to it, check its key\n"+
			"against the fingerprint in the code, prove the code's secret, and pin each other. Works whether\n"+
			"this node is mounted or not (a running daemon does it). Exit 0 paired; 75 the inviter could not\n"+
			"be reached (not running, network, timeout: try again); 1 refused (code malformed, expired or\n"+
			"already used, wrong secret, wrong key) or another failure.",
		"mailfs pair join --store /var/lib/mailfs mailfs1:AbC...", stderr)
	store := fs.String("store", defaultStore(), "store directory")
	address := fs.String("address", "", "HOST:PORT the inviter dials to reach this node (default: the listen address)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageErr("need exactly one CODE (printed by 'mailfs pair invite' on the other node)")
	}
	code := fs.Arg(0)
	// Refuse a damaged or expired code before touching anything.
	if _, err := peers.ParseInvite(code); err != nil {
		return &exitError{code: exitFailure, err: err}
	}
	paths, ident, err := openIdentity(*store)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), joinTimeout+10*time.Second)
	defer cancel()
	var got pairedPeer
	err = controlCall(ctx, paths, controlRequest{Cmd: "pair-join", Code: code, Address: *address}, func(raw json.RawMessage) error {
		return json.Unmarshal(raw, &got)
	})
	if errors.Is(err, errNotRunning) {
		got, err = joinOffline(ctx, paths, ident, code, *address, newLogger(stderr))
	}
	if err != nil {
		return err
	}
	if got.ID == "" {
		return errors.New("the daemon did not say whom it paired with")
	}
	fmt.Fprintf(stdout, "paired with %s %s at %s\n", orDash(got.Name), got.ID, orDash(got.Address))
	return nil
}

// pairedPeer is the reply of a pair-join control request.
type pairedPeer struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Address string `json:"address"`
}

// openIdentity checks that dir is a store and loads its node identity.
func openIdentity(store string) (storePaths, *peers.Identity, error) {
	dir, err := filepath.Abs(store)
	if err != nil {
		return storePaths{}, nil, err
	}
	paths := storePaths{Dir: dir}
	if _, err := paths.readMarker(); errors.Is(err, errNoMarker) {
		return paths, nil, fmt.Errorf("%s is not a mailfs store (no %s; run 'mailfs init')", dir, markerName)
	} else if err != nil {
		return paths, nil, err
	}
	ident, err := peers.LoadIdentity(paths.identity())
	if err != nil {
		return paths, nil, fmt.Errorf("store %s: node identity: %w", dir, err)
	}
	return paths, ident, nil
}

// joinOffline pairs a store that is not mounted: it opens the index for
// configuration only (no journal, clean-stop marker untouched).
func joinOffline(ctx context.Context, paths storePaths, ident *peers.Identity, code, address string, log *slog.Logger) (pairedPeer, error) {
	ix, err := index.Open(paths.index(), index.Options{Node: ident.ID, Config: true, Logger: log})
	if err != nil {
		return pairedPeer{}, explainIndexOpen(err, paths.Dir)
	}
	defer ix.Close()
	if address == "" {
		address = ix.Listen()
	}
	return joinAndPin(ctx, ident, ix, peers.PeerInfo{Name: ix.Name(), Address: address}, code, nil)
}

// joinAndPin runs the joiner's side of pairing and pins the inviter in ix.
// Its errors carry the exit code of design §9.
func joinAndPin(ctx context.Context, ident *peers.Identity, ix *index.Store, self peers.PeerInfo, code string, pinned func(peers.Peer)) (pairedPeer, error) {
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	p, err := peers.JoinPairing(ctx, code, ident, self, nil)
	if err != nil {
		return pairedPeer{}, &exitError{code: joinExitCode(err), err: err}
	}
	if err := ix.PutPeer(p.Peer(time.Now())); err != nil {
		return pairedPeer{}, fmt.Errorf("node %s (%s) accepted the pairing, but pinning it here failed: %w; "+
			"ask for a new invite and join again", p.Name, peers.FormatID(p.ID), err)
	}
	if pinned != nil {
		pinned(p.Peer(time.Now()))
	}
	return pairedPeer{ID: peers.FormatID(p.ID), Name: p.Name, Address: p.Address}, nil
}

// joinExitCode maps a failed join to design §9's exit codes: 1 when the
// inviter (or the code) refused, 75 when the inviter could not be reached
// or did not answer in time.
func joinExitCode(err error) int {
	for _, refused := range []error{peers.ErrInviteMalformed, peers.ErrInviteVersion, peers.ErrInviteExpired,
		peers.ErrBadProof, peers.ErrInviteUsed, peers.ErrInviteBusy, peers.ErrNoInvite, peers.ErrPairingRefused,
		peers.ErrInviterProof, peers.ErrPairingProtocol} {
		if errors.Is(err, refused) {
			return exitFailure
		}
	}
	var upe *peers.UnknownPeerError
	if errors.As(err, &upe) {
		return exitFailure
	}
	var alert tls.AlertError
	if errors.As(err, &alert) {
		return exitFailure
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" { // a TLS alert from the inviter
		return exitFailure
	}
	for _, temp := range []error{context.DeadlineExceeded, io.EOF, io.ErrUnexpectedEOF, syscall.ECONNREFUSED,
		syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ETIMEDOUT,
		syscall.EPIPE, net.ErrClosed} {
		if errors.Is(err, temp) {
			return exitTemporary
		}
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return exitTemporary
	}
	return exitFailure
}
