package peers

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"mailfs/journal"
)

// ErrUnknownPeer is returned (wrapped) for a node ID that is not paired.
var ErrUnknownPeer = errors.New("not a paired node")

// Peer is a paired node as pinned: its key fingerprint, the name it gave,
// the address it can be dialed at (empty when it only dials us), and when
// the pairing was made.
type Peer struct {
	ID       journal.NodeID
	Name     string
	Address  string
	PairedAt time.Time
}

// PeerStore keeps the paired nodes. The index implements it durably;
// MemPeerStore is the in-memory one for tests. Implementations are safe
// for concurrent use (ServerConfig's trust check calls GetPeer from
// handshake goroutines).
type PeerStore interface {
	// PutPeer adds a peer or replaces the one with the same ID (re-pairing
	// updates name and address).
	PutPeer(p Peer) error
	// GetPeer returns the peer with id, or an error wrapping
	// ErrUnknownPeer.
	GetPeer(id journal.NodeID) (Peer, error)
	// ListPeers returns all peers, ordered by ID.
	ListPeers() ([]Peer, error)
	// RemovePeer unpairs id; an error wrapping ErrUnknownPeer when absent.
	RemovePeer(id journal.NodeID) error
}

// Trusted adapts a PeerStore to the trust check of ServerConfig and
// ListenerConfig: a node is trusted while it is in the store. A store
// error counts as not trusted.
func Trusted(ps PeerStore) func(journal.NodeID) bool {
	return func(id journal.NodeID) bool {
		_, err := ps.GetPeer(id)
		return err == nil
	}
}

// MemPeerStore is an in-memory PeerStore.
type MemPeerStore struct {
	mu sync.Mutex
	m  map[journal.NodeID]Peer
}

var _ PeerStore = (*MemPeerStore)(nil)

// NewMemPeerStore returns an empty MemPeerStore.
func NewMemPeerStore() *MemPeerStore {
	return &MemPeerStore{m: map[journal.NodeID]Peer{}}
}

// PutPeer implements PeerStore.
func (s *MemPeerStore) PutPeer(p Peer) error {
	if p.ID.IsZero() {
		return errors.New("put peer: zero node ID")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[p.ID] = p
	return nil
}

// GetPeer implements PeerStore.
func (s *MemPeerStore) GetPeer(id journal.NodeID) (Peer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.m[id]
	if !ok {
		return Peer{}, fmt.Errorf("node %s: %w", FormatID(id), ErrUnknownPeer)
	}
	return p, nil
}

// ListPeers implements PeerStore.
func (s *MemPeerStore) ListPeers() ([]Peer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ps := make([]Peer, 0, len(s.m))
	for _, p := range s.m {
		ps = append(ps, p)
	}
	slices.SortFunc(ps, func(a, b Peer) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	return ps, nil
}

// RemovePeer implements PeerStore.
func (s *MemPeerStore) RemovePeer(id journal.NodeID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[id]; !ok {
		return fmt.Errorf("node %s: %w", FormatID(id), ErrUnknownPeer)
	}
	delete(s.m, id)
	return nil
}
