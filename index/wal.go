package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"syscall"
)

// The journal WAL makes a group commit durable with one fdatasync.
//
// Badger runs without SyncWrites: with it, every commit costs two or three
// flushes (the value log is synced even when nothing was written to it, then
// the memtable's log). Instead each committed transaction's mutations are
// first written as one record to this preallocated file and fdatasynced;
// then the transaction is committed to badger without a sync. At open,
// records newer than badger's commit number are applied again, so badger
// catches up with everything that was acknowledged. When the file is full,
// badger is synced and the file starts a new generation.
//
// Layout: a 4 KiB header (magic, version, generation, CRC-32C), then
// records: magic "MFWR" | generation u64 | commit u64 | payload length u32 |
// CRC-32C of the preceding 24 bytes and the payload | payload. The payload
// is a count u32 and that many mutations: kind u8 (1 set, 2 delete) |
// uvarint key length | key | uvarint value length | value.
const (
	walName       = "mailfs-journal.wal"
	walSize       = 16 << 20
	walHeaderSize = 4096
	walRecHeader  = 4 + 8 + 8 + 4 + 4
	walVersion    = 1
)

var (
	walMagic    = [4]byte{'M', 'F', 'W', 'L'}
	walRecMagic = [4]byte{'M', 'F', 'W', 'R'}
	castagnoli  = crc32.MakeTable(crc32.Castagnoli)
)

type mutation struct {
	del        bool
	key, value []byte
}

type wal struct {
	f   *os.File
	gen uint64
	off int64
	buf []byte
}

// openWAL opens (creating and preallocating) the WAL at path and returns
// the records of its current generation, in order, with their commit
// numbers.
func openWAL(path string, replay func(commit uint64, muts []mutation) error) (*wal, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("journal WAL %s: %w", path, err)
	}
	w := &wal{f: f}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if fi.Size() < walSize {
		// Written zeros, not a sparse file: an fdatasync of an overwrite
		// then flushes data only, no extent metadata.
		if err := preallocate(f, fi.Size()); err != nil {
			// Give the space back: a full disk must not be left fuller.
			f.Close()
			os.Remove(path)
			return nil, fmt.Errorf("journal WAL %s: preallocate %d MiB: %w", path, walSize>>20, err)
		}
		if err := w.reset(1); err != nil {
			f.Close()
			return nil, err
		}
		return w, nil
	}
	hdr := make([]byte, 24)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("journal WAL %s: %w", path, err)
	}
	if [4]byte(hdr[:4]) != walMagic || binary.BigEndian.Uint32(hdr[4:8]) != walVersion ||
		crc32.Checksum(hdr[:20], castagnoli) != binary.BigEndian.Uint32(hdr[20:24]) {
		f.Close()
		return nil, fmt.Errorf("journal WAL %s: damaged or unknown header", path)
	}
	w.gen = binary.BigEndian.Uint64(hdr[8:16])
	w.off = walHeaderSize
	for {
		commit, muts, n, ok := w.readRecord(w.off)
		if !ok {
			break
		}
		if err := replay(commit, muts); err != nil {
			f.Close()
			return nil, err
		}
		w.off += n
	}
	return w, nil
}

func preallocate(f *os.File, from int64) error {
	zero := make([]byte, 1<<20)
	for off := from - from%int64(len(zero)); off < walSize; off += int64(len(zero)) {
		if _, err := f.WriteAt(zero, off); err != nil {
			return err
		}
	}
	return f.Sync()
}

// readRecord reads the record at off of the current generation; ok is false
// at the end of the generation (zeros, an older generation, a torn write).
func (w *wal) readRecord(off int64) (commit uint64, muts []mutation, n int64, ok bool) {
	if off+walRecHeader > walSize {
		return 0, nil, 0, false
	}
	h := make([]byte, walRecHeader)
	if _, err := w.f.ReadAt(h, off); err != nil {
		return 0, nil, 0, false
	}
	if [4]byte(h[:4]) != walRecMagic || binary.BigEndian.Uint64(h[4:12]) != w.gen {
		return 0, nil, 0, false
	}
	commit = binary.BigEndian.Uint64(h[12:20])
	plen := int64(binary.BigEndian.Uint32(h[20:24]))
	if off+walRecHeader+plen > walSize {
		return 0, nil, 0, false
	}
	payload := make([]byte, plen)
	if _, err := w.f.ReadAt(payload, off+walRecHeader); err != nil {
		return 0, nil, 0, false
	}
	c := crc32.Update(crc32.Checksum(h[:24], castagnoli), castagnoli, payload)
	if c != binary.BigEndian.Uint32(h[24:28]) {
		return 0, nil, 0, false
	}
	muts, err := decodeMutations(payload)
	if err != nil {
		return 0, nil, 0, false
	}
	return commit, muts, walRecHeader + plen, true
}

// fits reports whether a record of n payload bytes fits after the current
// offset; a record larger than the whole file never fits.
func (w *wal) fits(n int) bool { return w.off+walRecHeader+int64(n) <= walSize }

func (w *wal) maxPayload() int { return walSize - walHeaderSize - walRecHeader }

// append writes one record and makes it durable.
func (w *wal) append(commit uint64, payload []byte) error {
	w.buf = w.buf[:0]
	w.buf = append(w.buf, walRecMagic[:]...)
	w.buf = binary.BigEndian.AppendUint64(w.buf, w.gen)
	w.buf = binary.BigEndian.AppendUint64(w.buf, commit)
	w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(len(payload)))
	c := crc32.Update(crc32.Checksum(w.buf, castagnoli), castagnoli, payload)
	w.buf = binary.BigEndian.AppendUint32(w.buf, c)
	w.buf = append(w.buf, payload...)
	if _, err := w.f.WriteAt(w.buf, w.off); err != nil {
		return fmt.Errorf("journal WAL write: %w", err)
	}
	if err := syscall.Fdatasync(int(w.f.Fd())); err != nil {
		return fmt.Errorf("journal WAL fdatasync: %w", err)
	}
	w.off += int64(len(w.buf))
	return nil
}

// reset starts generation gen at the start of the file. The caller has
// made everything in the old generation durable elsewhere (badger synced).
func (w *wal) reset(gen uint64) error {
	hdr := make([]byte, 24)
	copy(hdr, walMagic[:])
	binary.BigEndian.PutUint32(hdr[4:8], walVersion)
	binary.BigEndian.PutUint64(hdr[8:16], gen)
	binary.BigEndian.PutUint32(hdr[20:24], crc32.Checksum(hdr[:20], castagnoli))
	if _, err := w.f.WriteAt(hdr, 0); err != nil {
		return fmt.Errorf("journal WAL header: %w", err)
	}
	if err := syscall.Fdatasync(int(w.f.Fd())); err != nil {
		return fmt.Errorf("journal WAL fdatasync: %w", err)
	}
	w.gen, w.off = gen, walHeaderSize
	return nil
}

func (w *wal) close() error { return w.f.Close() }

func encodeMutations(dst []byte, muts []mutation) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(muts)))
	for _, m := range muts {
		kind := byte(1)
		if m.del {
			kind = 2
		}
		dst = append(dst, kind)
		dst = binary.AppendUvarint(dst, uint64(len(m.key)))
		dst = append(dst, m.key...)
		dst = binary.AppendUvarint(dst, uint64(len(m.value)))
		dst = append(dst, m.value...)
	}
	return dst
}

var errBadMutations = errors.New("journal WAL: damaged record")

func decodeMutations(b []byte) ([]mutation, error) {
	if len(b) < 4 {
		return nil, errBadMutations
	}
	n := binary.BigEndian.Uint32(b)
	b = b[4:]
	if uint64(n) > uint64(len(b)) {
		return nil, errBadMutations
	}
	muts := make([]mutation, 0, n)
	field := func() ([]byte, error) {
		l, w := binary.Uvarint(b)
		if w <= 0 || l > uint64(len(b)-w) {
			return nil, errBadMutations
		}
		v := b[w : w+int(l)]
		b = b[w+int(l):]
		return v, nil
	}
	for i := uint32(0); i < n; i++ {
		if len(b) == 0 || (b[0] != 1 && b[0] != 2) {
			return nil, errBadMutations
		}
		del := b[0] == 2
		b = b[1:]
		k, err := field()
		if err != nil {
			return nil, err
		}
		v, err := field()
		if err != nil {
			return nil, err
		}
		muts = append(muts, mutation{del: del, key: k, value: v})
	}
	if len(b) != 0 {
		return nil, errBadMutations
	}
	return muts, nil
}
