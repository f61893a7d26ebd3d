package index

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"slices"

	badger "github.com/dgraph-io/badger/v4"

	"mailfs/journal"
)

// This file holds what the anti-entropy full sync (design §8) reads: the
// digest of each mailbox's present messages and its messages page by page,
// in key order, so that neither side ever holds a whole mailbox.

// MailboxDigest summarises the present messages of a mailbox: how many,
// and a SHA-256 over the sorted (key, content ID, sub, flags) of each. Two
// nodes with the same digest for a GUID hold the same mail in it.
type MailboxDigest struct {
	GUID   journal.GUID
	Path   string
	Count  int64
	Digest [32]byte
}

// DigestEntry adds one message to a mailbox digest. Both sides of a full
// sync compute digests with it, so they agree byte for byte.
func DigestEntry(h interface{ Write([]byte) (int, error) }, key string, content journal.ContentID, sub journal.Sub, flags []string) {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(key)))
	h.Write(n[:])
	h.Write([]byte(key))
	h.Write(content[:])
	h.Write([]byte{byte(sub)})
	sorted := journal.SortFlags(slices.Clone(flags))
	binary.BigEndian.PutUint32(n[:], uint32(len(sorted)))
	h.Write(n[:])
	for _, f := range sorted {
		binary.BigEndian.PutUint32(n[:], uint32(len(f)))
		h.Write(n[:])
		h.Write([]byte(f))
	}
}

// DigestSum finishes a digest over count entries.
func DigestSum(h interface {
	Write([]byte) (int, error)
	Sum([]byte) []byte
}, count int64) [32]byte {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(count))
	h.Write(n[:])
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// present reports whether a message is on disk as the index knows it: not
// marked missing, in a mailbox whose directory is not missing.
func present(mb *mailboxRec, rec *messageRec) bool { return !mb.Missing && !rec.Missing }

// digest computes mailbox mb's digest, streaming its messages.
func (t *tx) digest(mb *mailboxRec) (MailboxDigest, error) {
	h := sha256.New()
	var count int64
	err := t.iterate(messagePrefix(mb.GUID), nil, func(k []byte, rec *messageRec) (bool, error) {
		if present(mb, rec) {
			count++
			DigestEntry(h, string(k[len(messagePrefix(mb.GUID)):]), rec.Content, rec.Sub, rec.Flags)
		}
		return true, nil
	})
	return MailboxDigest{GUID: mb.GUID, Path: mb.Path, Count: count, Digest: DigestSum(h, count)}, err
}

// iterate calls fn for the message records under prefix with keys after
// from (all of them when from is nil), in key order, until fn says stop.
func (t *tx) iterate(prefix, from []byte, fn func(k []byte, rec *messageRec) (bool, error)) error {
	opt := badger.DefaultIteratorOptions
	opt.PrefetchValues = false
	opt.Prefix = prefix
	it := t.txn.NewIterator(opt)
	defer it.Close()
	start := prefix
	if from != nil {
		start = from
	}
	for it.Seek(start); it.Valid(); it.Next() {
		k := it.Item().KeyCopy(nil)
		if from != nil && bytes.Equal(k, from) {
			continue
		}
		var rec messageRec
		if err := it.Item().Value(func(v []byte) error { return decodeRec(v, &rec) }); err != nil {
			return err
		}
		more, err := fn(k, &rec)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// MailboxDigests returns the digests of up to limit live mailboxes with
// GUIDs after after (all from the first when after is zero), in GUID
// order, and whether more follow.
func (s *Store) MailboxDigests(after journal.GUID, limit int) ([]MailboxDigest, bool, error) {
	var out []MailboxDigest
	more := false
	err := s.db.View(func(txn *badger.Txn) error {
		t := &tx{s: s, txn: txn}
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte(pMailbox)
		it := txn.NewIterator(opt)
		var recs []mailboxRec
		start := []byte(pMailbox)
		if !after.IsZero() {
			start = mailboxKey(after)
		}
		for it.Seek(start); it.Valid(); it.Next() {
			if !after.IsZero() && bytes.Equal(it.Item().Key(), mailboxKey(after)) {
				continue
			}
			if len(recs) == limit {
				more = true
				break
			}
			var mb mailboxRec
			if err := it.Item().Value(func(v []byte) error { return decodeRec(v, &mb) }); err != nil {
				it.Close()
				return err
			}
			recs = append(recs, mb)
		}
		it.Close()
		for i := range recs {
			d, err := t.digest(&recs[i])
			if err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	return out, more, err
}

// MailboxDigestOf returns the digest of the live mailbox g (after aliases).
func (s *Store) MailboxDigestOf(g journal.GUID) (MailboxDigest, bool, error) {
	var out MailboxDigest
	var ok bool
	err := s.db.View(func(txn *badger.Txn) error {
		t := &tx{s: s, txn: txn}
		var mb mailboxRec
		var err error
		if ok, err = t.getRec(mailboxKey(t.resolve(g)), &mb); err != nil || !ok {
			return err
		}
		out, err = t.digest(&mb)
		return err
	})
	return out, ok, err
}

// PresentMessages returns up to limit present messages of the live
// mailbox g with keys after after ("" : from the first), in key order, and
// whether more follow. A mailbox that is not here has none.
func (s *Store) PresentMessages(g journal.GUID, after string, limit int) ([]Message, bool, error) {
	var out []Message
	more := false
	err := s.db.View(func(txn *badger.Txn) error {
		t := &tx{s: s, txn: txn}
		g = t.resolve(g)
		var mb mailboxRec
		if ok, err := t.getRec(mailboxKey(g), &mb); err != nil || !ok {
			return err
		}
		var from []byte
		if after != "" {
			from = messageKey(g, after)
		}
		prefix := messagePrefix(g)
		return t.iterate(prefix, from, func(k []byte, rec *messageRec) (bool, error) {
			if !present(&mb, rec) {
				return true, nil
			}
			if len(out) == limit {
				more = true
				return false, nil
			}
			out = append(out, Message{Key: string(k[len(prefix):]), Name: rec.Name, Sub: rec.Sub, Flags: rec.Flags,
				Mtime: rec.Mtime, Size: rec.Size, Content: rec.Content, Added: rec.Added, AddedSeq: rec.AddedSeq,
				FlagStamps: rec.FlagStamps})
			return true, nil
		})
	})
	return out, more, err
}

// MissingFile is a plain file the index knows whose file vanished behind
// mailfs's back.
type MissingFile struct {
	Path string
	File
}

// MissingFiles returns up to limit plain files marked missing with paths
// after after ("" : from the first), in path order, and whether more
// follow.
func (s *Store) MissingFiles(after string, limit int) ([]MissingFile, bool, error) {
	var out []MissingFile
	more := false
	err := s.db.View(func(txn *badger.Txn) error {
		return scanFiles(txn, after, func(p string, f *fileRec) (bool, error) {
			if !f.Missing {
				return true, nil
			}
			if len(out) == limit {
				more = true
				return false, nil
			}
			out = append(out, MissingFile{Path: p, File: fileOf(f)})
			return true, nil
		})
	})
	return out, more, err
}

// scanFiles calls fn with the plain-file records after path after ("":
// from the first), in path order, while fn returns true.
func scanFiles(txn *badger.Txn, after string, fn func(path string, f *fileRec) (bool, error)) error {
	opt := badger.DefaultIteratorOptions
	opt.Prefix = []byte(pFile)
	it := txn.NewIterator(opt)
	defer it.Close()
	start := fileKey(after)
	for it.Seek(start); it.Valid(); it.Next() {
		k := it.Item().Key()
		if after != "" && bytes.Equal(k, start) {
			continue
		}
		var f fileRec
		if err := it.Item().Value(func(v []byte) error { return decodeRec(v, &f) }); err != nil {
			return err
		}
		if next, err := fn(string(k[len(pFile):]), &f); err != nil || !next {
			return err
		}
	}
	return nil
}

// MissingFileAt returns the plain file at path if it is marked missing.
func (s *Store) MissingFileAt(path string) (File, bool, error) {
	var out File
	var ok bool
	err := s.db.View(func(txn *badger.Txn) error {
		t := &tx{s: s, txn: txn}
		var f fileRec
		var err error
		if ok, err = t.getRec(fileKey(path), &f); err != nil || !ok {
			return err
		}
		ok = f.Missing
		out = fileOf(&f)
		return nil
	})
	return out, ok, err
}

// findMissingFiles marks the plain files whose file vanished behind
// mailfs's back missing (journaling nothing), as findMissing does for
// mailboxes: the full sync fetches them back from a peer.
func (r *reconciler) findMissingFiles() error {
	after := ""
	for {
		var paths []string
		more := false
		err := r.s.db.View(func(txn *badger.Txn) error {
			return scanFiles(txn, after, func(p string, f *fileRec) (bool, error) {
				if len(paths) == reconcileBatch {
					more = true
					return false, nil
				}
				after = p
				if !f.Missing {
					if _, err := os.Lstat(r.abs(p)); errors.Is(err, fs.ErrNotExist) {
						paths = append(paths, p)
					}
				}
				return true, nil
			})
		})
		if err != nil {
			return err
		}
		for _, p := range paths {
			r.rep.Missing++
			r.s.log.Warn("reconcile: file vanished behind mailfs's back; marked missing, not deleted", "path", p)
			if err := r.add(Event{Kind: EvMissing, Path: p}); err != nil {
				return err
			}
		}
		if !more {
			return nil
		}
	}
}
