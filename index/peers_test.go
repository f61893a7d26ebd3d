package index

import (
	"crypto/rand"
	"errors"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"mailfs/journal"
	"mailfs/peers"
)

func randomNode(t *testing.T) journal.NodeID {
	t.Helper()
	var id journal.NodeID
	if _, err := rand.Read(id[:]); err != nil {
		t.Fatal(err)
	}
	return id
}

// The index pins peers durably: put, replace, get, list in ID order,
// remove, and the same after a reopen.
func TestPeerStore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openTest(t, dir)
	if ps, err := s.ListPeers(); err != nil || len(ps) != 0 {
		t.Fatalf("fresh store: peers %v, %v; want none", ps, err)
	}
	at := time.Date(2026, 11, 23, 7, 0, 0, 0, time.UTC)
	var ids []journal.NodeID
	for i := 0; i < 5; i++ {
		id := randomNode(t)
		ids = append(ids, id)
		if err := s.PutPeer(peers.Peer{ID: id, Name: "n" + string(rune('a'+i)), Address: "10.0.0.1:7000", PairedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	// Re-pairing replaces name and address.
	if err := s.PutPeer(peers.Peer{ID: ids[2], Name: "renamed", Address: "mx2.example:7001", PairedAt: at.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetPeer(randomNode(t)); !errors.Is(err, peers.ErrUnknownPeer) {
		t.Fatalf("GetPeer of an unknown node: %v, want ErrUnknownPeer", err)
	}
	if err := s.RemovePeer(randomNode(t)); !errors.Is(err, peers.ErrUnknownPeer) {
		t.Fatalf("RemovePeer of an unknown node: %v, want ErrUnknownPeer", err)
	}
	if err := s.PutPeer(peers.Peer{Name: "zero"}); err == nil {
		t.Fatal("PutPeer accepted a zero node ID")
	}
	if err := s.PutPeer(peers.Peer{ID: s.Node(), Name: "self"}); err == nil {
		t.Fatal("PutPeer accepted this node's own ID")
	}
	if err := s.RemovePeer(ids[4]); err != nil {
		t.Fatal(err)
	}
	trusted := peers.Trusted(s)
	if !trusted(ids[0]) || trusted(ids[4]) || trusted(s.Node()) {
		t.Fatal("Trusted(index) disagrees with the pinned peers")
	}
	seq := s.Seq()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.Seq() != seq {
		t.Fatalf("pinning peers journaled ops: seq %d, want %d", s2.Seq(), seq)
	}
	ps, err := s2.ListPeers()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 4 {
		t.Fatalf("after reopen: %d peers, want 4: %v", len(ps), ps)
	}
	for i := 1; i < len(ps); i++ {
		if string(ps[i-1].ID[:]) >= string(ps[i].ID[:]) {
			t.Fatalf("ListPeers not in ID order: %v", ps)
		}
	}
	p, err := s2.GetPeer(ids[2])
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != ids[2] || p.Name != "renamed" || p.Address != "mx2.example:7001" || !p.PairedAt.Equal(at.Add(time.Hour)) {
		t.Fatalf("replaced peer read back as %+v", p)
	}
	if _, err := s2.GetPeer(ids[4]); !errors.Is(err, peers.ErrUnknownPeer) {
		t.Fatalf("removed peer: %v, want ErrUnknownPeer", err)
	}
}

// A store opened with Config (pair join while not mounted) pins peers
// without journaling and leaves the clean-stop marker as it was, so the
// next mount still knows that the last run died.
func TestPeerStoreConfigKeepsCleanMarker(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openTest(t, dir)
	node := s.Node()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Simulate a run that died: the marker says "open".
	c, err := Open(dir, Options{Node: node, Config: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(kClean), []byte{0}) }); err != nil {
		t.Fatal(err)
	}
	c.Close()

	c, err = Open(dir, Options{Node: node, Config: true})
	if err != nil {
		t.Fatal(err)
	}
	peer := randomNode(t)
	if err := c.PutPeer(peers.Peer{ID: peer, Name: "mx2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(Event{Kind: EvMkdir, Path: "x", IsDir: true}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Submit on a config store: %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.WasClean() {
		t.Fatal("a config open marked an unclean store clean")
	}
	if _, err := r.GetPeer(peer); err != nil {
		t.Fatalf("peer pinned through a config open: %v", err)
	}
	if r.Seq() != 0 {
		t.Fatalf("config open journaled: seq %d", r.Seq())
	}
}

// A config open of a directory without an index refuses to create one.
func TestPeerStoreConfigNeedsIndex(t *testing.T) {
	t.Parallel()
	if _, err := Open(t.TempDir(), Options{Node: randomNode(t), Config: true}); !errors.Is(err, ErrNotCreated) {
		t.Fatalf("config open of an empty dir: %v, want ErrNotCreated", err)
	}
}

// The last full sync with a peer survives a reopen and a re-pairing, and
// goes with the peer when it is removed.
func TestPeerSyncState(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openTest(t, dir)
	id, other := randomNode(t), randomNode(t)
	for _, p := range []journal.NodeID{id, other} {
		if err := s.PutPeer(peers.Peer{ID: p, Name: "mx2", Address: "10.0.0.2:7000"}); err != nil {
			t.Fatal(err)
		}
	}
	if ps, err := s.PeerSyncOf(id); err != nil || !ps.LastFullSync.IsZero() || ps.FullSyncResult != "" {
		t.Fatalf("before any full sync: %+v, %v; want the zero record", ps, err)
	}
	at := time.Date(2026, 12, 1, 3, 0, 0, 0, time.FixedZone("CET", 3600))
	want := PeerSync{LastFullSync: at, FullSyncOK: true, FullSyncResult: "ok, 3 mailboxes compared, 1 restored"}
	if err := s.PutPeerSync(id, want); err != nil {
		t.Fatal(err)
	}
	if err := s.PutPeerSync(other, PeerSync{LastFullSync: at, FullSyncResult: "failed: refused"}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutPeer(peers.Peer{ID: id, Name: "renamed", Address: "10.0.0.3:7000"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RemovePeer(other); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.PeerSyncOf(id)
	if err != nil || !got.LastFullSync.Equal(at) || got.FullSyncOK != want.FullSyncOK || got.FullSyncResult != want.FullSyncResult {
		t.Fatalf("after reopen and re-pairing: %+v, %v; want %+v", got, err, want)
	}
	if got, err := s2.PeerSyncOf(other); err != nil || !got.LastFullSync.IsZero() {
		t.Fatalf("a removed peer's full sync: %+v, %v; want none left", got, err)
	}
}
