package peers

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailfs/journal"
)

type serveResult struct {
	peer PeerInfo
	err  error
}

// inviterNode is a node listening on loopback with ListenerConfig and
// running ServePairing on every connection.
type inviterNode struct {
	id         *Identity
	self       PeerInfo
	pending    *PendingInvites
	store      *MemPeerStore
	results    chan serveResult
	failAccept atomic.Bool
	accepted   atomic.Int32
}

func startInviter(t *testing.T, id *Identity, pending *PendingInvites) *inviterNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &inviterNode{id: id, pending: pending, store: NewMemPeerStore(), results: make(chan serveResult, 32)}
	n.self = PeerInfo{ID: id.ID, Name: "alpha", Address: ln.Addr().String()}
	cfg := ListenerConfig(id, Trusted(n.store), pending)
	accept := func(p PeerInfo) error {
		if n.failAccept.Load() {
			return errors.New("disk full")
		}
		n.accepted.Add(1)
		return n.store.PutPeer(p.Peer(time.Now()))
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
				defer cancel()
				p, err := ServePairing(ctx, tls.Server(c, cfg), pending, n.self, accept)
				n.results <- serveResult{p, err}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return n
}

func (n *inviterNode) invite(t *testing.T, ttl time.Duration) Invite {
	t.Helper()
	inv, err := NewInvite(n.id.ID, n.self.Address, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.pending.Add(inv); err != nil {
		t.Fatal(err)
	}
	return inv
}

func (n *inviterNode) result(t *testing.T) serveResult {
	t.Helper()
	select {
	case r := <-n.results:
		return r
	case <-time.After(testTimeout):
		t.Fatal("inviter did not finish")
		return serveResult{}
	}
}

func join(t *testing.T, code string, id *Identity, self PeerInfo) (PeerInfo, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	return JoinPairing(ctx, code, id, self, nil)
}

func openCount(t *testing.T, p *PendingInvites) int {
	t.Helper()
	n, err := p.Open()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPairing(t *testing.T) {
	for _, backend := range []string{"memory", "directory"} {
		t.Run(backend, func(t *testing.T) {
			a, _ := testIdentity(t)
			b, _ := testIdentity(t)
			var serving, issuing *PendingInvites
			if backend == "memory" {
				serving = NewPendingInvites()
				issuing = serving
			} else {
				// Two instances on one directory: `pair invite` issues,
				// the daemon serves.
				dir := filepath.Join(t.TempDir(), "invites")
				var err error
				if serving, err = OpenPendingInvites(dir); err != nil {
					t.Fatal(err)
				}
				if issuing, err = OpenPendingInvites(dir); err != nil {
					t.Fatal(err)
				}
			}
			n := startInviter(t, a, serving)
			inv, err := NewInvite(a.ID, n.self.Address, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if err := issuing.Add(inv); err != nil {
				t.Fatal(err)
			}
			if got := openCount(t, serving); got != 1 {
				t.Fatalf("open invites = %d, want 1", got)
			}

			got, err := join(t, inv.String(), b, PeerInfo{Name: "beta", Address: "0.0.0.0:7001"})
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != a.ID || got.Name != "alpha" || got.Address != n.self.Address {
				t.Fatalf("joiner learned %+v", got)
			}
			r := n.result(t)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.peer.ID != b.ID || r.peer.Name != "beta" || r.peer.Address != "127.0.0.1:7001" {
				t.Fatalf("inviter learned %+v", r.peer)
			}
			if p, err := n.store.GetPeer(b.ID); err != nil || p.Name != "beta" || p.PairedAt.IsZero() {
				t.Fatalf("inviter pinned %+v, %v", p, err)
			}
			if got := openCount(t, serving); got != 0 {
				t.Fatalf("open invites after use = %d, want 0", got)
			}

			// Both sides now pin each other: replication TLS works both ways.
			storeB := NewMemPeerStore()
			if err := storeB.PutPeer(got.Peer(time.Now())); err != nil {
				t.Fatal(err)
			}
			if hr := handshake(t, ServerConfig(a, Trusted(n.store)), ClientConfig(b, got.ID)); hr.server != nil || hr.client != nil {
				t.Fatalf("b -> a: server %v, client %v", hr.server, hr.client)
			}
			if hr := handshake(t, ServerConfig(b, Trusted(storeB)), ClientConfig(a, r.peer.ID)); hr.server != nil || hr.client != nil {
				t.Fatalf("a -> b: server %v, client %v", hr.server, hr.client)
			}
		})
	}
}

func TestPairingWrongSecret(t *testing.T) {
	a, _ := testIdentity(t)
	b, _ := testIdentity(t)
	n := startInviter(t, a, NewPendingInvites())
	inv := n.invite(t, time.Minute)

	bad := inv
	bad.Secret[7] ^= 0x40
	_, err := join(t, bad.String(), b, PeerInfo{Name: "beta"})
	if !errors.Is(err, ErrBadProof) {
		t.Fatalf("joiner: err = %v, want ErrBadProof", err)
	}
	if !strings.Contains(err.Error(), FormatID(a.ID)) || !strings.Contains(err.Error(), n.self.Address) {
		t.Errorf("joiner error %q does not name the inviter", err)
	}
	r := n.result(t)
	if !errors.Is(r.err, ErrBadProof) || !strings.Contains(r.err.Error(), FormatID(b.ID)) {
		t.Fatalf("inviter: err = %v, want ErrBadProof naming the joiner", r.err)
	}
	if ps, _ := n.store.ListPeers(); len(ps) != 0 || n.accepted.Load() != 0 {
		t.Fatalf("a wrong secret pinned %v", ps)
	}
	if got := openCount(t, n.pending); got != 1 {
		t.Fatalf("open invites = %d, want 1 (a wrong proof must not spend the invite)", got)
	}

	// The right code still works afterwards.
	if _, err := join(t, inv.String(), b, PeerInfo{Name: "beta"}); err != nil {
		t.Fatal(err)
	}
	if r := n.result(t); r.err != nil {
		t.Fatal(r.err)
	}
}

func TestPairingReplay(t *testing.T) {
	a, _ := testIdentity(t)
	b, _ := testIdentity(t)
	c, _ := testIdentity(t)
	n := startInviter(t, a, NewPendingInvites())
	inv := n.invite(t, time.Minute)
	code := inv.String()
	if _, err := join(t, code, b, PeerInfo{Name: "beta"}); err != nil {
		t.Fatal(err)
	}
	if r := n.result(t); r.err != nil {
		t.Fatal(r.err)
	}

	// No invite open any more: the pairing handshake itself is refused.
	_, err := join(t, code, b, PeerInfo{Name: "beta"})
	if !errors.Is(err, ErrNoInvite) {
		t.Fatalf("replay, no invite open: joiner err = %v, want ErrNoInvite", err)
	}
	if r := n.result(t); !errors.Is(r.err, ErrNoInvite) {
		t.Fatalf("replay, no invite open: inviter err = %v, want ErrNoInvite", r.err)
	}

	// Another invite is open: the used code is recognised and refused.
	n.invite(t, time.Minute)
	_, err = join(t, code, c, PeerInfo{Name: "gamma"})
	if !errors.Is(err, ErrInviteUsed) {
		t.Fatalf("replay: joiner err = %v, want ErrInviteUsed", err)
	}
	if r := n.result(t); !errors.Is(r.err, ErrInviteUsed) {
		t.Fatalf("replay: inviter err = %v, want ErrInviteUsed", r.err)
	}
	if _, err := n.store.GetPeer(c.ID); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("replayed code pinned its user: %v", err)
	}
	if ps, _ := n.store.ListPeers(); len(ps) != 1 {
		t.Fatalf("peers = %v, want only the first joiner", ps)
	}
	if got := openCount(t, n.pending); got != 1 {
		t.Fatalf("open invites = %d, want the second one still open", got)
	}
}

func TestPairingExpired(t *testing.T) {
	a, _ := testIdentity(t)
	b, _ := testIdentity(t)

	t.Run("joiner side", func(t *testing.T) {
		inv, err := NewInvite(a.ID, "127.0.0.1:1", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		inv.Expires = time.Now().Add(-time.Minute).Truncate(time.Second)
		dialed := false
		dial := func(context.Context, string, string) (net.Conn, error) {
			dialed = true
			return nil, errors.New("must not dial")
		}
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		_, err = JoinPairing(ctx, inv.String(), b, PeerInfo{}, dial)
		if !errors.Is(err, ErrInviteExpired) || dialed {
			t.Fatalf("err = %v, dialed = %v; want ErrInviteExpired without dialing", err, dialed)
		}
	})

	t.Run("inviter side", func(t *testing.T) {
		// The inviter's clock is two minutes ahead: the one-minute code
		// the joiner still holds valid has expired there.
		pending := NewPendingInvites()
		pending.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
		n := startInviter(t, a, pending)
		short, err := NewInvite(a.ID, n.self.Address, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if err := pending.b.add(inviteName(short), short); err != nil {
			t.Fatal(err)
		}
		n.invite(t, time.Hour) // keeps pairing open
		_, err = join(t, short.String(), b, PeerInfo{Name: "beta"})
		if !errors.Is(err, ErrInviteExpired) {
			t.Fatalf("joiner err = %v, want ErrInviteExpired", err)
		}
		if r := n.result(t); !errors.Is(r.err, ErrInviteExpired) {
			t.Fatalf("inviter err = %v, want ErrInviteExpired", r.err)
		}
		if ps, _ := n.store.ListPeers(); len(ps) != 0 {
			t.Fatalf("expired code pinned %v", ps)
		}
	})
}

func TestPairingAcceptFailureReleases(t *testing.T) {
	a, _ := testIdentity(t)
	b, _ := testIdentity(t)
	n := startInviter(t, a, NewPendingInvites())
	inv := n.invite(t, time.Minute)
	n.failAccept.Store(true)
	_, err := join(t, inv.String(), b, PeerInfo{Name: "beta"})
	if !errors.Is(err, ErrPairingRefused) {
		t.Fatalf("joiner err = %v, want ErrPairingRefused", err)
	}
	if r := n.result(t); r.err == nil || !strings.Contains(r.err.Error(), "disk full") {
		t.Fatalf("inviter err = %v", r.err)
	}
	if got := openCount(t, n.pending); got != 1 {
		t.Fatalf("open invites = %d, want 1 (released)", got)
	}
	n.failAccept.Store(false)
	if _, err := join(t, inv.String(), b, PeerInfo{Name: "beta"}); err != nil {
		t.Fatal(err)
	}
	if r := n.result(t); r.err != nil {
		t.Fatal(r.err)
	}
}

func TestPairingConcurrentJoins(t *testing.T) {
	a, _ := testIdentity(t)
	n := startInviter(t, a, NewPendingInvites())
	code := n.invite(t, time.Minute).String()
	const joiners = 6
	var wg sync.WaitGroup
	errs := make([]error, joiners)
	for i := range joiners {
		id, _ := testIdentity(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = join(t, code, id, PeerInfo{Name: "j"})
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrInviteUsed), errors.Is(err, ErrInviteBusy), errors.Is(err, ErrNoInvite):
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	for range joiners {
		n.result(t)
	}
	if ps, _ := n.store.ListPeers(); ok != 1 || len(ps) != 1 {
		t.Fatalf("%d joins succeeded, %d peers pinned; want exactly 1", ok, len(ps))
	}
}

func TestPairingRefusesOwnCode(t *testing.T) {
	a, _ := testIdentity(t)
	inv, err := NewInvite(a.ID, "127.0.0.1:1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(context.Context, string, string) (net.Conn, error) { return nil, errors.New("must not dial") }
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := JoinPairing(ctx, inv.String(), a, PeerInfo{}, dial); err == nil || !strings.Contains(err.Error(), "this node") {
		t.Fatalf("err = %v", err)
	}
}

func TestPairingWrongInviterKey(t *testing.T) {
	// The code names node a, but c answers at the address: the joiner's
	// pin refuses it before sending anything.
	a, _ := testIdentity(t)
	b, _ := testIdentity(t)
	c, _ := testIdentity(t)
	pending := NewPendingInvites()
	n := startInviter(t, c, pending)
	n.invite(t, time.Minute)
	inv, err := NewInvite(a.ID, n.self.Address, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	_, err = join(t, inv.String(), b, PeerInfo{})
	var upe *UnknownPeerError
	if !errors.As(err, &upe) || upe.ID != c.ID || upe.Want != a.ID {
		t.Fatalf("err = %v, want UnknownPeerError naming %s", err, FormatID(c.ID))
	}
	if r := n.result(t); r.err == nil {
		t.Fatal("inviter did not fail")
	}
	if ps, _ := n.store.ListPeers(); len(ps) != 0 {
		t.Fatalf("pinned %v", ps)
	}
}

func TestServePairingDeadline(t *testing.T) {
	a, _ := testIdentity(t)
	b, _ := testIdentity(t)
	pending := NewPendingInvites()
	inv, err := NewInvite(a.ID, "127.0.0.1:1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := pending.Add(inv); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err = ServePairing(ctx, tls.Server(c, PairingServerConfig(a, pending)), pending, PeerInfo{}, nil)
		done <- err
	}()
	// A joiner that completes the handshake, then says nothing.
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	d := tls.Dialer{Config: PairingClientConfig(b, a.ID)}
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want DeadlineExceeded", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("took %v", time.Since(start))
		}
	case <-time.After(testTimeout):
		t.Fatal("ServePairing did not honour its context deadline")
	}
	if openCount(t, pending) != 1 {
		t.Fatal("a silent joiner spent the invite")
	}
}

func TestJoinPairingCancel(t *testing.T) {
	// An inviter that accepts TCP and never answers: the joiner's context
	// ends the wait.
	b, _ := testIdentity(t)
	a, _ := testIdentity(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	inv, err := NewInvite(a.ID, ln.Addr().String(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = JoinPairing(ctx, inv.String(), b, PeerInfo{}, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestFrames(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	header := func(magic string, ver, typ byte, n uint32) []byte {
		b := append([]byte(magic), ver, typ, 0, 0, 0, 0)
		binary.BigEndian.PutUint32(b[6:], n)
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"bad magic", header("HTTP", 1, 1, 2), "magic"},
		{"future version", header("MFPA", 2, 1, 2), "version 2"},
		{"oversized", header("MFPA", 1, 1, maxFrame+1), "exceeds"},
		{"wrong type", append(header("MFPA", 1, 2, 2), "{}"...), "type 2"},
		{"bad json", append(header("MFPA", 1, 1, 2), "{x"...), "type 1"},
		{"short body", append(header("MFPA", 1, 1, 10), "{}"...), "receive"},
	} {
		srv, cli := net.Pipe()
		go func() {
			cli.Write(tc.data)
			cli.Close()
		}()
		var m helloMsg
		err := readFrame(ctx, srv, frameHello, &m)
		srv.Close()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", tc.name, err, tc.want)
		}
		if tc.name != "short body" && !errors.Is(err, ErrPairingProtocol) {
			t.Errorf("%s: err = %v, want ErrPairingProtocol", tc.name, err)
		}
	}

	// Round trip.
	srv, cli := net.Pipe()
	defer srv.Close()
	defer cli.Close()
	want := helloMsg{Proof: bytes.Repeat([]byte{7}, 32), Name: "n", Address: "h:1"}
	go writeFrame(ctx, cli, frameHello, want)
	var got helloMsg
	if err := readFrame(ctx, srv, frameHello, &got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Proof, want.Proof) || got.Name != want.Name || got.Address != want.Address {
		t.Fatalf("got %+v", got)
	}
}

func TestPendingInvitesDirSingleUse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "invites")
	a, _ := testIdentity(t)
	inv, err := NewInvite(a.ID, "127.0.0.1:1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	first, err := OpenPendingInvites(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Add(inv); err != nil {
		t.Fatal(err)
	}
	if err := first.Add(inv); err == nil {
		t.Fatal("the same invite was added twice")
	}
	// Separate instances stand for separate processes.
	const racers = 8
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range racers {
		p, err := OpenPendingInvites(dir)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var joiner journal.NodeID
			joiner[0] = 9
			exporter := []byte("session")
			r, err := p.reserve(a.ID, joiner, exporter, pairMAC(inv.Secret, roleJoiner, a.ID, joiner, exporter))
			switch {
			case err == nil:
				wins.Add(1)
				if err := p.commit(r); err != nil {
					t.Error(err)
				}
			case errors.Is(err, ErrInviteUsed), errors.Is(err, ErrInviteBusy):
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d reservations won, want 1", wins.Load())
	}
	if n := openCount(t, first); n != 0 {
		t.Fatalf("open = %d after use", n)
	}
	// Forgotten once expired for longer than the grace period.
	first.now = func() time.Time { return inv.Expires.Add(usedGrace + time.Second) }
	first.sweep(first.now())
	if es, _ := first.b.list(); len(es) != 0 {
		t.Fatalf("swept store still holds %d invites", len(es))
	}
}

func TestMemPeerStore(t *testing.T) {
	s := NewMemPeerStore()
	var x, y journal.NodeID
	x[0], y[0] = 2, 1
	trusted := Trusted(s)
	if trusted(x) {
		t.Fatal("empty store trusts")
	}
	if err := s.PutPeer(Peer{}); err == nil {
		t.Fatal("zero ID accepted")
	}
	for _, p := range []Peer{{ID: x, Name: "x"}, {ID: y, Name: "y"}, {ID: x, Name: "x2", Address: "h:1"}} {
		if err := s.PutPeer(p); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := s.GetPeer(x); err != nil || p.Name != "x2" || p.Address != "h:1" {
		t.Fatalf("GetPeer = %+v, %v", p, err)
	}
	ps, _ := s.ListPeers()
	if len(ps) != 2 || ps[0].ID != y || ps[1].ID != x {
		t.Fatalf("ListPeers = %+v", ps)
	}
	if !trusted(x) {
		t.Fatal("paired node not trusted")
	}
	if err := s.RemovePeer(x); err != nil {
		t.Fatal(err)
	}
	if err := s.RemovePeer(x); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("second remove: %v", err)
	}
	if _, err := s.GetPeer(x); !errors.Is(err, ErrUnknownPeer) || trusted(x) {
		t.Fatalf("removed peer still there: %v", err)
	}
}
