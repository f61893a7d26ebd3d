package peers

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"mailfs/journal"
)

const testTimeout = 10 * time.Second

func trustOnly(ids ...journal.NodeID) func(journal.NodeID) bool {
	return func(id journal.NodeID) bool {
		for _, t := range ids {
			if t == id {
				return true
			}
		}
		return false
	}
}

type handshakeResult struct {
	server, client       error
	serverSaw, clientSaw journal.NodeID
	proto                string // as the client negotiated it
}

// handshake runs one TLS connection over loopback TCP and returns what
// each side saw. Each side exchanges one byte after its handshake, so a
// refusal by the server (which TLS 1.3 reports after the client's
// handshake returned) reaches the client.
func handshake(t *testing.T, scfg, ccfg *tls.Config) handshakeResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type side struct {
		err error
		id  journal.NodeID
	}
	done := make(chan side, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- side{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(testTimeout))
		tc := tls.Server(c, scfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			done <- side{err: err}
			return
		}
		id, err := PeerID(tc.ConnectionState())
		if err == nil {
			_, err = tc.Write([]byte{1})
		}
		if err == nil {
			_, err = tc.Read(make([]byte, 1))
		}
		done <- side{err: err, id: id}
	}()

	var r handshakeResult
	d := tls.Dialer{Config: ccfg}
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err == nil {
		tc := c.(*tls.Conn)
		tc.SetDeadline(time.Now().Add(testTimeout))
		r.proto = tc.ConnectionState().NegotiatedProtocol
		r.clientSaw, err = PeerID(tc.ConnectionState())
		if err == nil {
			_, err = tc.Read(make([]byte, 1))
		}
		if err == nil {
			_, err = tc.Write([]byte{1})
		}
		c.Close()
	}
	r.client = err
	select {
	case s := <-done:
		r.server, r.serverSaw = s.err, s.id
	case <-ctx.Done():
		t.Fatal("server side did not finish")
	}
	return r
}

func TestMutualTLS(t *testing.T) {
	a, _ := testIdentity(t)
	b, _ := testIdentity(t)
	r := handshake(t, ServerConfig(a, trustOnly(b.ID)), ClientConfig(b, a.ID))
	if r.server != nil || r.client != nil {
		t.Fatalf("server: %v; client: %v", r.server, r.client)
	}
	if r.serverSaw != b.ID || r.clientSaw != a.ID {
		t.Fatalf("server saw %s, client saw %s", FormatID(r.serverSaw), FormatID(r.clientSaw))
	}
}

// TestSyncProtocolVersions checks that a node replicates with a peer from
// before segment format 2 in both directions, in format 1, and with its
// own kind in format 2.
func TestSyncProtocolVersions(t *testing.T) {
	a, _ := testIdentity(t)
	b, _ := testIdentity(t)
	oldServer := ServerConfig(a, trustOnly(b.ID))
	oldServer.NextProtos = []string{ProtoSync, ProtoFull}
	for _, tc := range []struct {
		name     string
		scfg     *tls.Config
		ccfg     *tls.Config
		proto    string
		segments uint16
	}{
		{"both new", ServerConfig(a, trustOnly(b.ID)), ClientConfig(b, a.ID), ProtoSync2, journal.SegmentVersion},
		{"older receiver", oldServer, ClientConfig(b, a.ID), ProtoSync, 1},
		{"older pusher", ServerConfig(a, trustOnly(b.ID)), clientConfig(b, a.ID, ProtoSync), ProtoSync, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := handshake(t, tc.scfg, tc.ccfg)
			if r.server != nil || r.client != nil {
				t.Fatalf("server: %v; client: %v", r.server, r.client)
			}
			if r.proto != tc.proto || SegmentVersion(r.proto) != tc.segments {
				t.Fatalf("negotiated %q (segment format %d); want %q (%d)", r.proto, SegmentVersion(r.proto), tc.proto, tc.segments)
			}
		})
	}
}

func TestMutualTLSRefusals(t *testing.T) {
	a, _ := testIdentity(t)
	b, _ := testIdentity(t)
	c, _ := testIdentity(t)

	t.Run("unknown client", func(t *testing.T) {
		r := handshake(t, ServerConfig(a, trustOnly(b.ID)), ClientConfig(c, a.ID))
		var upe *UnknownPeerError
		if !errors.As(r.server, &upe) || upe.ID != c.ID || !upe.Want.IsZero() {
			t.Fatalf("server error = %v, want UnknownPeerError for %s", r.server, FormatID(c.ID))
		}
		if !strings.Contains(r.server.Error(), FormatID(c.ID)) {
			t.Errorf("server error %q does not name the fingerprint", r.server)
		}
		if r.client == nil {
			t.Error("client was not refused")
		}
	})

	t.Run("unknown server", func(t *testing.T) {
		// b expects a but reached c, a node it has never heard of.
		r := handshake(t, ServerConfig(c, trustOnly(b.ID)), ClientConfig(b, a.ID))
		var upe *UnknownPeerError
		if !errors.As(r.client, &upe) || upe.ID != c.ID || upe.Want != a.ID {
			t.Fatalf("client error = %v, want UnknownPeerError %s != %s", r.client, FormatID(c.ID), FormatID(a.ID))
		}
		if !strings.Contains(r.client.Error(), FormatID(c.ID)) || !strings.Contains(r.client.Error(), FormatID(a.ID)) {
			t.Errorf("client error %q does not name both fingerprints", r.client)
		}
		if r.server == nil {
			t.Error("server handshake succeeded")
		}
	})

	t.Run("client pins a different fingerprint", func(t *testing.T) {
		// a and b trust each other, but b's pin for a has one bit flipped.
		want := a.ID
		want[31] ^= 1
		r := handshake(t, ServerConfig(a, trustOnly(b.ID)), ClientConfig(b, want))
		var upe *UnknownPeerError
		if !errors.As(r.client, &upe) || upe.ID != a.ID || upe.Want != want {
			t.Fatalf("client error = %v, want UnknownPeerError", r.client)
		}
		if !strings.Contains(r.client.Error(), FormatID(a.ID)) {
			t.Errorf("client error %q does not name the fingerprint", r.client)
		}
	})

	t.Run("non-ed25519 client certificate", func(t *testing.T) {
		ccfg := ClientConfig(b, a.ID)
		ec := ecdsaCert(t)
		ccfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &ec, nil }
		r := handshake(t, ServerConfig(a, func(journal.NodeID) bool { return true }), ccfg)
		if !errors.Is(r.server, ErrBadPeerCertificate) {
			t.Fatalf("server error = %v, want ErrBadPeerCertificate", r.server)
		}
	})

	t.Run("no client certificate", func(t *testing.T) {
		ccfg := ClientConfig(b, a.ID)
		ccfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
		r := handshake(t, ServerConfig(a, trustOnly(b.ID)), ccfg)
		if r.server == nil || r.client == nil {
			t.Fatalf("server: %v; client: %v; want both to fail", r.server, r.client)
		}
	})

	t.Run("TLS 1.2 client", func(t *testing.T) {
		ccfg := ClientConfig(b, a.ID)
		ccfg.MinVersion, ccfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		r := handshake(t, ServerConfig(a, trustOnly(b.ID)), ccfg)
		if r.server == nil || r.client == nil {
			t.Fatalf("server: %v; client: %v; want both to fail", r.server, r.client)
		}
	})
}

func TestListenerConfig(t *testing.T) {
	a, _ := testIdentity(t)
	b, _ := testIdentity(t)
	c, _ := testIdentity(t)
	inv := NewPendingInvites()
	lcfg := ListenerConfig(a, trustOnly(b.ID), inv)

	// A paired node gets the sync protocol.
	r := handshake(t, lcfg, ClientConfig(b, a.ID))
	if r.server != nil || r.client != nil {
		t.Fatalf("sync: server: %v; client: %v", r.server, r.client)
	}
	// An unknown node asking for sync is refused.
	r = handshake(t, lcfg, ClientConfig(c, a.ID))
	var upe *UnknownPeerError
	if !errors.As(r.server, &upe) || upe.ID != c.ID {
		t.Fatalf("sync from unknown: server error = %v", r.server)
	}
	// Pairing without an open invite is refused at the handshake.
	r = handshake(t, lcfg, PairingClientConfig(c, a.ID))
	if !errors.Is(r.server, ErrNoInvite) || r.client == nil {
		t.Fatalf("pairing without invite: server: %v; client: %v", r.server, r.client)
	}
	// With an open invite, any ed25519 key may start pairing.
	i, err := NewInvite(a.ID, "127.0.0.1:1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := inv.Add(i); err != nil {
		t.Fatal(err)
	}
	r = handshake(t, lcfg, PairingClientConfig(c, a.ID))
	if r.server != nil || r.client != nil || r.serverSaw != c.ID {
		t.Fatalf("pairing with invite: server: %v; client: %v", r.server, r.client)
	}
	// ListenerConfig without invites refuses pairing too.
	r = handshake(t, ListenerConfig(a, trustOnly(b.ID), nil), PairingClientConfig(c, a.ID))
	if r.server == nil || r.client == nil {
		t.Fatalf("pairing on nil invites: server: %v; client: %v", r.server, r.client)
	}
}

func ecdsaCert(t *testing.T) tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "ecdsa"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}
