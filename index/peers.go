package index

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"mailfs/journal"
	"mailfs/peers"
)

// The paired peers are node-local configuration, not journal ops: each
// node pins the others itself (pairing), so they are written directly,
// durably (SyncWrites), outside the committer and never replicated.

var _ peers.PeerStore = (*Store)(nil)

type peerRec struct {
	Name     string    `json:"name"`
	Address  string    `json:"address,omitempty"`
	PairedAt time.Time `json:"paired_at"`
}

func peerKey(id journal.NodeID) []byte { return append([]byte(pPeer), id[:]...) }

// PutPeer implements peers.PeerStore: it pins p (replacing the record of a
// peer with the same ID).
func (s *Store) PutPeer(p peers.Peer) error {
	if p.ID.IsZero() {
		return errors.New("index: put peer: zero node ID")
	}
	if p.ID == s.node {
		return errors.New("index: put peer: a node cannot pair with itself")
	}
	v, err := encodeRec(peerRec{Name: p.Name, Address: p.Address, PairedAt: p.PairedAt.UTC()})
	if err != nil {
		return err
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(peerKey(p.ID), v) }); err != nil {
		return fmt.Errorf("index: put peer %s: %w", peers.FormatID(p.ID), err)
	}
	// badger runs without SyncWrites (the journal WAL covers the
	// committer's writes, not these): a pinned peer must survive a crash.
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("index: put peer %s: %w", peers.FormatID(p.ID), err)
	}
	return nil
}

// GetPeer implements peers.PeerStore.
func (s *Store) GetPeer(id journal.NodeID) (peers.Peer, error) {
	var p peers.Peer
	err := s.db.View(func(txn *badger.Txn) error {
		v, ok, err := get(txn, peerKey(id))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("node %s: %w", peers.FormatID(id), peers.ErrUnknownPeer)
		}
		p, err = decodePeer(id, v)
		return err
	})
	if err != nil {
		return peers.Peer{}, err
	}
	return p, nil
}

// ListPeers implements peers.PeerStore: all pinned peers, ordered by ID.
func (s *Store) ListPeers() ([]peers.Peer, error) {
	ps := []peers.Peer{}
	err := s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte(pPeer)
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			k := item.Key()
			if len(k) != len(pPeer)+len(journal.NodeID{}) {
				return fmt.Errorf("index: peer key %x is damaged", k)
			}
			var id journal.NodeID
			copy(id[:], k[len(pPeer):])
			var p peers.Peer
			err := item.Value(func(v []byte) error {
				var err error
				p, err = decodePeer(id, v)
				return err
			})
			if err != nil {
				return err
			}
			ps = append(ps, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Badger iterates in key order, which is ID order; keep the contract
	// explicit all the same.
	for i := 1; i < len(ps); i++ {
		if bytes.Compare(ps[i-1].ID[:], ps[i].ID[:]) >= 0 {
			return nil, errors.New("index: peers out of order")
		}
	}
	return ps, nil
}

// RemovePeer implements peers.PeerStore.
func (s *Store) RemovePeer(id journal.NodeID) error {
	err := s.db.Update(func(txn *badger.Txn) error {
		_, ok, err := get(txn, peerKey(id))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("node %s: %w", peers.FormatID(id), peers.ErrUnknownPeer)
		}
		if err := txn.Delete(peerSyncKey(id)); err != nil {
			return err
		}
		return txn.Delete(peerKey(id))
	})
	if err != nil {
		return err
	}
	return s.db.Sync()
}

func decodePeer(id journal.NodeID, v []byte) (peers.Peer, error) {
	var r peerRec
	if err := decodeRec(v, &r); err != nil {
		return peers.Peer{}, fmt.Errorf("index: peer %s: %w", peers.FormatID(id), err)
	}
	return peers.Peer{ID: id, Name: r.Name, Address: r.Address, PairedAt: r.PairedAt}, nil
}
