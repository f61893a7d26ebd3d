package journal

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// A replication segment is one batch of a single origin's ops, dense from
// Prev+1 to Last, followed by the message and file bodies the receiver lacks
// (design §8). All integers are big-endian; every CRC is CRC-32C
// (Castagnoli).
//
//	header    86 bytes
//	  0   4  magic "MFSG"
//	  4   2  version (SegmentVersion)
//	  6  32  origin node ID
//	 38   8  epoch of the origin's journal
//	 46   8  prev: the seq this batch follows (0 = from the start)
//	 54   8  last: the seq of its last op (last - prev = op count)
//	 62   4  op count
//	 66   4  ops raw length (decompressed)
//	 70   4  ops length (compressed)
//	 74   4  CRC of the compressed ops block
//	 78   4  body count
//	 82   4  CRC of header bytes 0..81
//	ops block   ops length bytes of zstd (the writer makes one frame)
//	            whose content is, per op, uvarint(len) + Encode(op)
//	body × body count
//	  0  32  content ID (SHA-256 of the bytes)
//	 32   8  size
//	 40   4  CRC of body header bytes 0..39
//	 44   …  the body's chunks (chunk.go), each at most SegmentChunkSize
//	         bytes before compression, compressed when that makes it
//	         smaller; their raw lengths add up to size
//	trailer     8 bytes
//	  0   4  end marker "MFSE"
//	  4   4  CRC of every segment byte before the trailer
//
// The version is read right after the magic, so a segment from a newer
// mailfs is refused as such (ErrSegmentVersion) rather than misread.
// Version 1 differs only in its chunks, which were never compressed;
// segments are built for the wire and never stored, so version 1 is read
// for a peer that still runs an older mailfs.
var (
	segMagic    = [4]byte{'M', 'F', 'S', 'G'}
	segEndMagic = [4]byte{'M', 'F', 'S', 'E'}
)

// SegmentVersion is the segment format this mailfs writes. It reads it and
// version 1 (minSegmentVersion).
const SegmentVersion uint16 = 2

const minSegmentVersion uint16 = 1

// SegmentChunkSize is the largest chunk a body is cut into on the wire,
// counted before compression; a reader holds at most one chunk of a body in
// memory, as it arrived and decompressed.
const SegmentChunkSize = 64 << 10

const (
	segHeaderLen  = 86
	bodyHeaderLen = 44
	trailerLen    = 8

	// minOpRecord is the fewest bytes one op can take in the ops block: a
	// one-byte length, magic+version+kind (6), the origin field (34, always
	// present as the segment's origin is never zero) and the seq field (at
	// least 3, as seqs start at 1).
	minOpRecord = 1 + 6 + 34 + 3
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Errors returned by SegmentReader. Everything wrong with the bytes wraps
// ErrBadSegment, so the receiver refuses the whole segment with one
// errors.Is check; a segment written in a format this mailfs does not know
// is ErrSegmentVersion instead, so the operator learns to upgrade rather
// than to distrust the peer.
var (
	// ErrBadSegment: the segment's bytes are damaged, truncated or
	// inconsistent.
	ErrBadSegment = errors.New("journal: bad replication segment")
	// ErrSegmentVersion: the segment, or an op in it, is in a format
	// version this mailfs does not read.
	ErrSegmentVersion = errors.New("journal: segment format version unknown (written by a newer mailfs?)")
	// ErrSegmentLimit: the segment claims more than the reader's Limits
	// allow. It wraps ErrBadSegment.
	ErrSegmentLimit = fmt.Errorf("%w: over a limit", ErrBadSegment)
)

// SegmentHeader describes one segment: whose ops it carries, where the batch
// starts and ends, and the sizes and checksum of what follows.
type SegmentHeader struct {
	// Version is the segment format; SegmentWriter sets it.
	Version uint16
	// Origin is the node that made every op in the segment.
	Origin NodeID
	// Epoch identifies the origin's journal; it changes when that journal
	// is reset, and then cursors from before mean nothing (style P5).
	Epoch uint64
	// Prev is the seq the batch follows: the receiver's cursor for Origin
	// must be exactly Prev. Last is the seq of the batch's last op. The
	// ops are Prev+1..Last, so Last == Prev when there are none.
	Prev, Last uint64
	// OpCount is the number of ops, Last-Prev; SegmentWriter sets it.
	OpCount uint32
	// OpsRawLen is the length of the ops block before compression;
	// SegmentWriter sets it.
	OpsRawLen uint32
	// OpsLen is the length of the compressed ops block; SegmentWriter sets
	// it.
	OpsLen uint32
	// OpsCRC is the CRC-32C of the compressed ops block; SegmentWriter sets
	// it.
	OpsCRC uint32
	// Bodies is the number of bodies that follow the ops.
	Bodies uint32
}

func (h *SegmentHeader) appendTo(dst []byte) []byte {
	start := len(dst)
	dst = append(dst, segMagic[:]...)
	dst = binary.BigEndian.AppendUint16(dst, h.Version)
	dst = append(dst, h.Origin[:]...)
	dst = binary.BigEndian.AppendUint64(dst, h.Epoch)
	dst = binary.BigEndian.AppendUint64(dst, h.Prev)
	dst = binary.BigEndian.AppendUint64(dst, h.Last)
	dst = binary.BigEndian.AppendUint32(dst, h.OpCount)
	dst = binary.BigEndian.AppendUint32(dst, h.OpsRawLen)
	dst = binary.BigEndian.AppendUint32(dst, h.OpsLen)
	dst = binary.BigEndian.AppendUint32(dst, h.OpsCRC)
	dst = binary.BigEndian.AppendUint32(dst, h.Bodies)
	return binary.BigEndian.AppendUint32(dst, crc32c(dst[start:]))
}

func parseSegmentHeader(b *[segHeaderLen]byte) SegmentHeader {
	be := binary.BigEndian
	h := SegmentHeader{
		Version:   be.Uint16(b[4:]),
		Epoch:     be.Uint64(b[38:]),
		Prev:      be.Uint64(b[46:]),
		Last:      be.Uint64(b[54:]),
		OpCount:   be.Uint32(b[62:]),
		OpsRawLen: be.Uint32(b[66:]),
		OpsLen:    be.Uint32(b[70:]),
		OpsCRC:    be.Uint32(b[74:]),
		Bodies:    be.Uint32(b[78:]),
	}
	copy(h.Origin[:], b[6:38])
	return h
}

// Body announces one body in a segment: the content it must hash to and its
// length in bytes.
type Body struct {
	Content ContentID
	Size    int64
}

func (b *Body) appendTo(dst []byte) []byte {
	start := len(dst)
	dst = append(dst, b.Content[:]...)
	dst = binary.BigEndian.AppendUint64(dst, uint64(b.Size))
	return binary.BigEndian.AppendUint32(dst, crc32c(dst[start:]))
}

// Limits bound what a SegmentReader accepts, and so what a hostile or broken
// peer can make it allocate. A field that is zero or negative takes its
// value from DefaultLimits.
//
// A reader holds at most the compressed and the decompressed ops block
// (each at most MaxOpsBytes, plus at most one zstd block of 128 KiB while
// decompressing), the decoded ops (at most MaxOps of them, each from at most
// MaxOpSize bytes) and one body chunk (SegmentChunkSize). Bodies are
// streamed, so MaxBodySize bounds disk use, not memory.
type Limits struct {
	// MaxOps is the most ops one segment may carry.
	MaxOps int
	// MaxOpsBytes is the most bytes the ops block may take, both compressed
	// and decompressed.
	MaxOpsBytes int
	// MaxBodySize is the largest body accepted.
	MaxBodySize int64
	// MaxBodies is the most bodies one segment may carry.
	MaxBodies int
}

// Default limits: generous for any real batch (a segment of 65536 ops is
// far above what a sender batches; the largest mail servers accept is tens of
// MiB), small enough that a daemon can hold one segment per peer.
const (
	// DefaultMaxOps is the default Limits.MaxOps: 65536 ops.
	DefaultMaxOps = 1 << 16
	// DefaultMaxOpsBytes is the default Limits.MaxOpsBytes: 16 MiB.
	DefaultMaxOpsBytes = 16 << 20
	// DefaultMaxBodySize is the default Limits.MaxBodySize: 1 GiB.
	DefaultMaxBodySize = 1 << 30
	// DefaultMaxBodies is the default Limits.MaxBodies: 65536 bodies.
	DefaultMaxBodies = 1 << 16
)

// DefaultLimits returns the limits a reader uses when given a zero Limits.
func DefaultLimits() Limits {
	return Limits{
		MaxOps:      DefaultMaxOps,
		MaxOpsBytes: DefaultMaxOpsBytes,
		MaxBodySize: DefaultMaxBodySize,
		MaxBodies:   DefaultMaxBodies,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxOps <= 0 {
		l.MaxOps = d.MaxOps
	}
	if l.MaxOpsBytes <= 0 {
		l.MaxOpsBytes = d.MaxOpsBytes
	}
	if l.MaxBodySize <= 0 {
		l.MaxBodySize = d.MaxBodySize
	}
	if l.MaxBodies <= 0 {
		l.MaxBodies = d.MaxBodies
	}
	return l
}

// check refuses a header that is inconsistent or claims more than l allows.
// It runs before anything the header announces is read.
func (l Limits) check(h *SegmentHeader) error {
	switch {
	case h.Origin.IsZero():
		return fmt.Errorf("%w: header names no origin", ErrBadSegment)
	case h.Last < h.Prev || h.Last-h.Prev != uint64(h.OpCount):
		return fmt.Errorf("%w: seqs %d..%d do not hold the %d ops the header counts", ErrBadSegment, h.Prev+1, h.Last, h.OpCount)
	case uint64(h.OpCount) > uint64(l.MaxOps):
		return fmt.Errorf("%w: %d ops, limit %d", ErrSegmentLimit, h.OpCount, l.MaxOps)
	case uint64(h.OpsLen) > uint64(l.MaxOpsBytes):
		return fmt.Errorf("%w: compressed ops block of %d bytes, limit %d", ErrSegmentLimit, h.OpsLen, l.MaxOpsBytes)
	case uint64(h.OpsRawLen) > uint64(l.MaxOpsBytes):
		return fmt.Errorf("%w: ops block of %d bytes decompressed, limit %d", ErrSegmentLimit, h.OpsRawLen, l.MaxOpsBytes)
	case uint64(h.Bodies) > uint64(l.MaxBodies):
		return fmt.Errorf("%w: %d bodies, limit %d", ErrSegmentLimit, h.Bodies, l.MaxBodies)
	case uint64(h.OpCount)*minOpRecord > uint64(h.OpsRawLen):
		return fmt.Errorf("%w: %d ops cannot fit in %d bytes", ErrBadSegment, h.OpCount, h.OpsRawLen)
	case h.OpsLen == 0:
		return fmt.Errorf("%w: empty ops block", ErrBadSegment)
	}
	return nil
}

// The zstd coders are built once and shared (EncodeAll and DecodeAll are
// safe for concurrent use). The decoder writes into a buffer of exactly the
// length the header declares and never grows it (WithDecodeAllCapLimit), so
// a small block that claims to expand hugely fails after one zstd block.
var (
	zstdEncoder = sync.OnceValues(func() (*zstd.Encoder, error) {
		return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	})
	zstdDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
		return zstd.NewReader(nil,
			zstd.WithDecodeAllCapLimit(true),
			zstd.WithDecoderMaxMemory(math.MaxUint32),
			zstd.WithDecoderLowmem(true))
	})
)

// SegmentWriter writes one segment to an io.Writer: WriteHeader once, then
// WriteBody once per announced body, then Close. It writes the segment's
// bytes and nothing else, does not buffer beyond one chunk, and does not
// close or flush w. It is not safe for concurrent use.
//
// An error from WriteBody or a failed write leaves the segment incomplete on
// w; the writer then refuses further calls, and the stream must be
// abandoned: a reader refuses the truncated segment.
type SegmentWriter struct {
	w      io.Writer
	crc    uint32 // of every byte written so far
	hdr    SegmentHeader
	state  int
	bodies uint32 // bodies begun
	err    error  // sticky: the stream is broken
	cw     chunkWriter
	buf    []byte // body header
}

const (
	segStateHeader = iota // header (writer) or ops (reader) not yet done
	segStateBodies
	segStateDone
)

// NewSegmentWriter returns a writer of one segment to w.
func NewSegmentWriter(w io.Writer) *SegmentWriter {
	return &SegmentWriter{w: w, cw: chunkWriter{version: SegmentVersion, chunk: SegmentChunkSize}}
}

// NewSegmentWriterVersion is NewSegmentWriter writing segment format
// version (from 1, for a peer whose mailfs reads only that, to
// SegmentVersion).
func NewSegmentWriterVersion(w io.Writer, version uint16) (*SegmentWriter, error) {
	if version < minSegmentVersion || version > SegmentVersion {
		return nil, fmt.Errorf("%w: segment version %d, this mailfs writes %d to %d", ErrSegmentVersion, version, minSegmentVersion, SegmentVersion)
	}
	return &SegmentWriter{w: w, cw: chunkWriter{version: version, chunk: SegmentChunkSize}}, nil
}

// Header returns the header as written, with the fields WriteHeader
// computed; it is the zero header before WriteHeader succeeds.
func (sw *SegmentWriter) Header() SegmentHeader { return sw.hdr }

func (sw *SegmentWriter) write(p []byte) error {
	n, err := sw.w.Write(p)
	sw.crc = crc32.Update(sw.crc, castagnoli, p[:n])
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		sw.err = fmt.Errorf("journal: writing segment: %w", err)
		return sw.err
	}
	return nil
}

// WriteHeader writes the header and the ops block. The caller sets
// h.Origin, h.Epoch, h.Prev, h.Last and h.Bodies; the writer sets Version,
// OpCount, OpsRawLen, OpsLen and OpsCRC. ops must be exactly the seqs
// Prev+1..Last of Origin, in order, each one an op Decode accepts. Nothing is
// written when they are not.
func (sw *SegmentWriter) WriteHeader(h SegmentHeader, ops []Op) error {
	if sw.err != nil {
		return sw.err
	}
	if sw.state != segStateHeader {
		return errors.New("journal: segment header written twice")
	}
	if h.Origin.IsZero() {
		return errors.New("journal: segment header names no origin")
	}
	if uint64(len(ops)) > math.MaxUint32 || h.Last < h.Prev || h.Last-h.Prev != uint64(len(ops)) {
		return fmt.Errorf("journal: segment seqs %d..%d do not match its %d ops", h.Prev+1, h.Last, len(ops))
	}
	var raw, enc []byte
	for i := range ops {
		op := &ops[i]
		if op.Origin != h.Origin {
			return fmt.Errorf("journal: segment op %d comes from %s, the segment from %s", i, op.Origin.Short(), h.Origin.Short())
		}
		if want := h.Prev + 1 + uint64(i); op.Seq != want {
			return fmt.Errorf("journal: segment op %d has seq %d, want %d", i, op.Seq, want)
		}
		enc = Encode(enc[:0], op)
		if _, err := Decode(enc); err != nil {
			return fmt.Errorf("journal: segment op seq %d would be refused: %w", op.Seq, err)
		}
		raw = binary.AppendUvarint(raw, uint64(len(enc)))
		raw = append(raw, enc...)
	}
	if len(raw) > math.MaxUint32 {
		return fmt.Errorf("journal: segment ops block of %d bytes is too large", len(raw))
	}
	zenc, err := zstdEncoder()
	if err != nil {
		return fmt.Errorf("journal: segment compressor: %w", err)
	}
	out := make([]byte, segHeaderLen, segHeaderLen+len(raw)/2+64)
	out = zenc.EncodeAll(raw, out)
	comp := out[segHeaderLen:]
	if len(comp) > math.MaxUint32 {
		return fmt.Errorf("journal: segment compressed ops block of %d bytes is too large", len(comp))
	}
	h.Version = sw.cw.version
	h.OpCount = uint32(len(ops))
	h.OpsRawLen = uint32(len(raw))
	h.OpsLen = uint32(len(comp))
	h.OpsCRC = crc32c(comp)
	h.appendTo(out[:0])
	if err := sw.write(out); err != nil {
		return err
	}
	sw.hdr = h
	sw.state = segStateBodies
	return nil
}

// WriteBody writes one body: b, then b.Size bytes read from r, cut into
// chunks. The bytes must hash to b.Content; the writer checks that before it
// writes the last chunk, so a mismatch leaves the segment incomplete rather
// than carrying a wrong body. r must hold at least b.Size bytes; any more
// are left unread.
func (sw *SegmentWriter) WriteBody(b Body, r io.Reader) error { return sw.writeBody(b, r, true) }

// WriteBodyUnchecked is WriteBody without the writer's own hash of the
// bytes, for a body that cannot have changed since it was hashed (a Maildir
// message file, which is never rewritten): the SegmentReader verifies every
// body against its content ID anyway, so a wrong one has the whole segment
// refused there, and nothing of it applied, instead of failing here.
func (sw *SegmentWriter) WriteBodyUnchecked(b Body, r io.Reader) error {
	return sw.writeBody(b, r, false)
}

func (sw *SegmentWriter) writeBody(b Body, r io.Reader, check bool) error {
	if sw.err != nil {
		return sw.err
	}
	switch {
	case sw.state != segStateBodies:
		return errors.New("journal: segment body written outside the body section (before WriteHeader or after Close)")
	case sw.bodies >= sw.hdr.Bodies:
		return fmt.Errorf("journal: segment body %d is more than the %d the header announced", sw.bodies+1, sw.hdr.Bodies)
	case b.Size < 0:
		return fmt.Errorf("journal: segment body %s has negative size %d", shortContent(b.Content), b.Size)
	}
	if b.Size == 0 && ContentID(sha256.Sum256(nil)) != b.Content {
		return fmt.Errorf("journal: segment body %s is empty, whose content is %s", shortContent(b.Content), shortContent(sha256.Sum256(nil)))
	}
	sw.buf = b.appendTo(sw.buf[:0])
	if err := sw.write(sw.buf); err != nil {
		return err
	}
	sw.bodies++
	if err := sw.cw.writeBody(sw.write, b, r, check); err != nil {
		if sw.err == nil {
			sw.err = fmt.Errorf("journal: segment %w", err)
		}
		return sw.err
	}
	return nil
}

// Close writes the trailer once every announced body was written. It does
// not close the underlying writer. Closing again does nothing.
func (sw *SegmentWriter) Close() error {
	if sw.state == segStateDone {
		return nil
	}
	if sw.err != nil {
		return sw.err
	}
	if sw.state != segStateBodies {
		return errors.New("journal: segment closed before its header was written")
	}
	if sw.bodies != sw.hdr.Bodies {
		return fmt.Errorf("journal: segment closed after %d of the %d bodies its header announced", sw.bodies, sw.hdr.Bodies)
	}
	var t [trailerLen]byte
	copy(t[:], segEndMagic[:])
	binary.BigEndian.PutUint32(t[4:], sw.crc)
	if err := sw.write(t[:]); err != nil {
		return err
	}
	sw.state = segStateDone
	return nil
}

// SegmentReader reads one segment from an io.Reader and checks everything
// in it against its header and its Limits. It reads exactly the segment's
// bytes and never beyond, so segments can follow one another on a stream
// (give it a bufio.Reader that outlives it, not a bare connection, for
// speed). It is not safe for concurrent use.
//
// Use: NewSegmentReader (reads the header), Ops, then NextBody until it
// returns io.EOF, reading each body to its io.EOF. Only that final io.EOF
// from NextBody says the whole segment arrived intact; until then nothing
// from it may be committed. Every error is final: later calls return it
// again.
type SegmentReader struct {
	chunkStream // the segment's bytes; crc and err cover the whole segment
	lim         Limits
	hdr         SegmentHeader
	state       int
	ops         []Op
	bodies      uint32      // bodies begun
	cur         *bodyReader // the body being read, if any
}

// NewSegmentReader reads and checks a segment's header from r. A zero
// Limits field takes its default. It returns io.EOF, unwrapped, when r ends
// before the first byte of a segment (the peer finished cleanly), an error
// wrapping ErrSegmentVersion when the segment is in a format this mailfs
// does not know, and one wrapping ErrBadSegment (or ErrSegmentLimit) when
// the header is damaged, inconsistent or over a limit.
func NewSegmentReader(r io.Reader, lim Limits) (*SegmentReader, error) {
	sr := &SegmentReader{chunkStream: chunkStream{r: r}, lim: lim.withDefaults()}
	var b [segHeaderLen]byte
	n, err := io.ReadFull(r, b[:6])
	if n == 0 && err == io.EOF {
		return nil, io.EOF
	}
	sr.crc = crc32.Update(0, castagnoli, b[:n])
	if err != nil {
		return nil, readError(err, "segment header")
	}
	if [4]byte(b[:4]) != segMagic {
		return nil, fmt.Errorf("%w: bad magic %q", ErrBadSegment, b[:4])
	}
	v := binary.BigEndian.Uint16(b[4:])
	if v < minSegmentVersion || v > SegmentVersion {
		return nil, fmt.Errorf("%w: segment version %d, this mailfs reads %d to %d", ErrSegmentVersion, v, minSegmentVersion, SegmentVersion)
	}
	sr.version = v
	if err := sr.readFull(b[6:], "segment header"); err != nil {
		return nil, err
	}
	if got, want := crc32c(b[:segHeaderLen-4]), binary.BigEndian.Uint32(b[segHeaderLen-4:]); got != want {
		return nil, fmt.Errorf("%w: header CRC %08x, header says %08x", ErrBadSegment, got, want)
	}
	sr.hdr = parseSegmentHeader(&b)
	if err := sr.lim.check(&sr.hdr); err != nil {
		return nil, err
	}
	return sr, nil
}

// Header returns the segment's header, as read and checked.
func (sr *SegmentReader) Header() SegmentHeader { return sr.hdr }

// readError names a failed read: running out of bytes is a truncated
// segment; anything else is the transport's failure and wrapped as is.
func readError(err error, what string) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%w: truncated in the %s: %w", ErrBadSegment, what, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("journal: reading the %s: %w", what, err)
}

// readBlock reads n bytes, growing its buffer as they arrive, so a header
// that promises more than the peer sends costs only what was sent.
func (sr *SegmentReader) readBlock(n int, what string) ([]byte, error) {
	buf := make([]byte, 0, min(n, 64<<10))
	for len(buf) < n {
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), min(2*cap(buf), n))
			copy(nb, buf)
			buf = nb
		}
		if err := sr.readFull(buf[len(buf):cap(buf)], what); err != nil {
			return nil, err
		}
		buf = buf[:cap(buf)]
	}
	return buf, nil
}

// Ops reads, checks and decodes the ops block: its CRC, its length before
// and after decompression, and that the ops are exactly the seqs
// Prev+1..Last of the header's origin, each one an op Decode accepts. Later
// calls return the same ops.
func (sr *SegmentReader) Ops() ([]Op, error) {
	if sr.err != nil {
		return nil, sr.err
	}
	if sr.state != segStateHeader {
		return sr.ops, nil
	}
	ops, err := sr.readOps()
	if err != nil {
		return nil, sr.fail(err)
	}
	sr.ops = ops
	sr.state = segStateBodies
	return ops, nil
}

func (sr *SegmentReader) readOps() ([]Op, error) {
	h := &sr.hdr
	comp, err := sr.readBlock(int(h.OpsLen), "ops block")
	if err != nil {
		return nil, err
	}
	if got := crc32c(comp); got != h.OpsCRC {
		return nil, fmt.Errorf("%w: ops block CRC %08x, header says %08x", ErrBadSegment, got, h.OpsCRC)
	}
	zdec, err := zstdDecoder()
	if err != nil {
		return nil, fmt.Errorf("journal: segment decompressor: %w", err)
	}
	// One spare byte of capacity: a block that decompresses to more than
	// declared then fails the length check below instead of filling the
	// buffer exactly; and cap 0 would mean "no limit" to the decoder.
	raw, err := zdec.DecodeAll(comp, make([]byte, 0, int(h.OpsRawLen)+1))
	if err != nil {
		return nil, fmt.Errorf("%w: decompressing the ops block (declared %d bytes): %w", ErrBadSegment, h.OpsRawLen, err)
	}
	if len(raw) > int(h.OpsRawLen) {
		return nil, fmt.Errorf("%w: ops block decompresses to more than the %d bytes the header says", ErrBadSegment, h.OpsRawLen)
	}
	if len(raw) < int(h.OpsRawLen) {
		return nil, fmt.Errorf("%w: ops block decompresses to %d bytes, header says %d", ErrBadSegment, len(raw), h.OpsRawLen)
	}
	ops := make([]Op, 0, h.OpCount)
	rest := raw
	for i := range h.OpCount {
		want := h.Prev + 1 + uint64(i)
		n, w := binary.Uvarint(rest)
		if w <= 0 || n > uint64(len(rest)-w) {
			return nil, fmt.Errorf("%w: op %d of %d (seq %d): bad length", ErrBadSegment, i+1, h.OpCount, want)
		}
		op, err := Decode(rest[w : w+int(n)])
		if err != nil {
			sentinel := ErrBadSegment
			if errors.Is(err, ErrUnknownVersion) {
				sentinel = ErrSegmentVersion
			}
			return nil, fmt.Errorf("%w: op %d of %d (seq %d): %w", sentinel, i+1, h.OpCount, want, err)
		}
		if op.Origin != h.Origin {
			return nil, fmt.Errorf("%w: op seq %d comes from %s, the segment from %s", ErrBadSegment, op.Seq, op.Origin.Short(), h.Origin.Short())
		}
		if op.Seq != want {
			return nil, fmt.Errorf("%w: op %d of %d has seq %d, want %d (gap or disorder)", ErrBadSegment, i+1, h.OpCount, op.Seq, want)
		}
		ops = append(ops, *op)
		rest = rest[w+int(n):]
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last op", ErrBadSegment, len(rest))
	}
	return ops, nil
}

// NextBody finishes the previous body (reading and checking what the caller
// left unread), then returns the next body's announcement and a reader of
// its bytes. Reads return only bytes whose chunk CRC matched; the body's
// SHA-256 is checked against Content before its last chunk is returned, so
// the reader returns io.EOF only after the whole body proved intact, and an
// error wrapping ErrBadSegment otherwise. The reader is valid until the next
// NextBody call.
//
// After the last body NextBody checks the trailer and returns io.EOF: the
// segment is complete and intact. It reads the ops first if Ops was not
// called.
func (sr *SegmentReader) NextBody() (Body, io.Reader, error) {
	if sr.state == segStateHeader {
		if _, err := sr.Ops(); err != nil {
			return Body{}, nil, err
		}
	}
	if sr.err != nil {
		return Body{}, nil, sr.err
	}
	if sr.state == segStateDone {
		return Body{}, nil, io.EOF
	}
	if br := sr.cur; br != nil {
		if _, err := br.WriteTo(io.Discard); err != nil {
			return Body{}, nil, sr.fail(err)
		}
		sr.cur = nil
	}
	if sr.bodies == sr.hdr.Bodies {
		want := sr.crc
		var t [trailerLen]byte
		if err := sr.readFull(t[:], "trailer"); err != nil {
			return Body{}, nil, err
		}
		if [4]byte(t[:4]) != segEndMagic {
			return Body{}, nil, sr.fail(fmt.Errorf("%w: bad end marker %q", ErrBadSegment, t[:4]))
		}
		if got := binary.BigEndian.Uint32(t[4:]); got != want {
			return Body{}, nil, sr.fail(fmt.Errorf("%w: segment CRC %08x, trailer says %08x", ErrBadSegment, want, got))
		}
		sr.state = segStateDone
		return Body{}, nil, io.EOF
	}
	var b [bodyHeaderLen]byte
	if err := sr.readFull(b[:], "body header"); err != nil {
		return Body{}, nil, err
	}
	n := sr.bodies + 1
	if got, want := crc32c(b[:bodyHeaderLen-4]), binary.BigEndian.Uint32(b[bodyHeaderLen-4:]); got != want {
		return Body{}, nil, sr.fail(fmt.Errorf("%w: body %d: header CRC %08x, header says %08x", ErrBadSegment, n, got, want))
	}
	var body Body
	copy(body.Content[:], b[:32])
	size := binary.BigEndian.Uint64(b[32:])
	if size > uint64(sr.lim.MaxBodySize) {
		return Body{}, nil, sr.fail(fmt.Errorf("%w: body %d (%s) of %d bytes, limit %d", ErrSegmentLimit, n, shortContent(body.Content), size, sr.lim.MaxBodySize))
	}
	body.Size = int64(size)
	sr.bodies = n
	sr.cur = &bodyReader{cs: &sr.chunkStream, sr: sr, name: fmt.Sprintf("body %d", n), body: body, left: body.Size}
	return body, sr.cur, nil
}

// shortContent is the first 16 hex digits of a content ID, for errors.
func shortContent(c ContentID) string { return c.String()[:16] }
