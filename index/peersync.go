package index

import (
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"mailfs/journal"
	"mailfs/peers"
)

// PeerSync is what this node last did with a peer that outlives a restart:
// its last full sync and how it went. Node-local, never journaled, and kept
// apart from the peer's pairing record so re-pairing does not erase it.
type PeerSync struct {
	LastFullSync   time.Time `json:"last_full_sync"`
	FullSyncOK     bool      `json:"full_sync_ok"`
	FullSyncResult string    `json:"full_sync_result"`
}

func peerSyncKey(id journal.NodeID) []byte { return append([]byte(pPeerSync), id[:]...) }

// PutPeerSync records what this node last did with peer id. It is not
// synced to disk on its own: losing the last record to a crash costs only
// a status line, and the next full sync writes it again.
func (s *Store) PutPeerSync(id journal.NodeID, ps PeerSync) error {
	ps.LastFullSync = ps.LastFullSync.UTC()
	v, err := encodeRec(ps)
	if err != nil {
		return err
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(peerSyncKey(id), v) }); err != nil {
		return fmt.Errorf("index: put sync state of peer %s: %w", peers.FormatID(id), err)
	}
	return nil
}

// PeerSyncOf is what PutPeerSync last recorded for peer id (the zero
// PeerSync when nothing was).
func (s *Store) PeerSyncOf(id journal.NodeID) (PeerSync, error) {
	var ps PeerSync
	err := s.db.View(func(txn *badger.Txn) error {
		v, ok, err := get(txn, peerSyncKey(id))
		if err != nil || !ok {
			return err
		}
		return decodeRec(v, &ps)
	})
	if err != nil {
		return PeerSync{}, fmt.Errorf("index: sync state of peer %s: %w", peers.FormatID(id), err)
	}
	return ps, nil
}
