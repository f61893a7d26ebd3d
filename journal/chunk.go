package journal

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// A body travels as chunks: a segment's bodies (after each body header) and
// full sync's body answers use the same chunk stream, so one reader checks
// both. In segment version 2 (and full sync) a chunk is
//
//	0   4  raw length n (1..SegmentChunkSize)
//	4   4  stored length m (1..n)
//	8   4  CRC-32C of the m stored bytes
//	12  …  m stored bytes: the n bytes as they are when m == n, else one
//	       zstd frame that decompresses to exactly n bytes
//
// and the raw lengths add up to the body's size. A chunk is compressed only
// when that makes it smaller, so m < n says it is and nothing else has to.
// Segment version 1 had no compression: 4 length + 4 CRC + data.
const (
	chunkHeaderLen   = 12
	chunkHeaderLenV1 = 8
)

// The bodies' zstd level. Mail is text (compresses well at any level) plus
// base64 attachments of already compressed files, which compress only by
// entropy coding of the literals (6 bits of 8 per character); SpeedFastest
// skips that for blocks without matches unless told otherwise. Measured on
// the replication benchmark's corpus in 64 KiB chunks, one core: SpeedFastest
// 0.95x of raw at 1.1 GB/s; SpeedFastest with literal entropy coding 0.725x
// at 510 MB/s; SpeedBetterCompression 0.723x at 320 MB/s; SpeedBest 0.721x at
// 86 MB/s. Decompression runs at about 1 GB/s for all of them. The second is
// the one worth its CPU: it is several times faster than a node applies mail.
var chunkEncoder = sync.OnceValues(func() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithAllLitEntropyCompression(true))
})

// chunkWriter cuts bodies into chunks, compressing those that shrink. Its
// buffers are reused from one body to the next.
type chunkWriter struct {
	version uint16 // SegmentVersion; 1 only in tests
	chunk   int    // largest raw chunk: SegmentChunkSize, smaller only in tests
	data    []byte // one raw chunk
	out     []byte // chunk header + stored bytes
	sum     hash.Hash
}

// writeBody reads b.Size bytes from r and writes them as chunks with write.
// With check it makes sure they hash to b.Content before it writes the last
// chunk, so a mismatch leaves the stream incomplete rather than carrying a
// wrong body.
func (cw *chunkWriter) writeBody(write func([]byte) error, b Body, r io.Reader, check bool) error {
	if cw.data == nil {
		cw.data = make([]byte, cw.chunk)
		// Room for a chunk that does not compress: the encoder's output is
		// then a little larger than its input and is not sent.
		cw.out = make([]byte, 0, chunkHeaderLen+cw.chunk+cw.chunk/8+64)
		cw.sum = sha256.New()
	}
	var zenc *zstd.Encoder
	if cw.version >= 2 {
		var err error
		if zenc, err = chunkEncoder(); err != nil {
			return fmt.Errorf("body compressor: %w", err)
		}
	}
	cw.sum.Reset()
	for left := b.Size; left > 0; {
		n := int(min(int64(cw.chunk), left))
		data := cw.data[:n]
		if _, err := io.ReadFull(r, data); err != nil {
			return fmt.Errorf("body %s: reading byte %d of %d: %w", shortContent(b.Content), b.Size-left, b.Size, err)
		}
		left -= int64(n)
		if check {
			cw.sum.Write(data)
			if left == 0 {
				var got ContentID
				cw.sum.Sum(got[:0])
				if got != b.Content {
					return fmt.Errorf("body %s: its %d bytes hash to %s", shortContent(b.Content), b.Size, shortContent(got))
				}
			}
		}
		if err := write(cw.encode(zenc, data)); err != nil {
			return err
		}
	}
	return nil
}

// encode returns data as one chunk: header and stored bytes.
func (cw *chunkWriter) encode(zenc *zstd.Encoder, data []byte) []byte {
	n := len(data)
	be := binary.BigEndian
	if cw.version < 2 {
		out := be.AppendUint32(cw.out[:0], uint32(n))
		out = be.AppendUint32(out, crc32c(data))
		return append(out, data...)
	}
	out := cw.out[:chunkHeaderLen]
	stored := data
	if z := zenc.EncodeAll(data, out); len(z)-chunkHeaderLen < n {
		stored, out = z[chunkHeaderLen:], z
	} else {
		out = append(out, data...)
	}
	cw.out = out[:0] // keep what the encoder grew, if it did
	be.PutUint32(out[0:], uint32(n))
	be.PutUint32(out[4:], uint32(len(stored)))
	be.PutUint32(out[8:], crc32c(stored))
	return out
}

// chunkStream is the reading end of a byte stream that carries chunks: it
// keeps the CRC of every byte read (a segment's trailer covers them all),
// the first error (every error is final) and the buffers of one chunk.
type chunkStream struct {
	r       io.Reader
	version uint16 // format of the chunks
	crc     uint32 // of every byte read so far
	err     error
	stored  []byte // one chunk as it arrived, SegmentChunkSize bytes
	raw     []byte // one decompressed chunk, SegmentChunkSize+1 bytes
	sum     hash.Hash
}

func (cs *chunkStream) fail(err error) error {
	if cs.err == nil {
		cs.err = err
	}
	return cs.err
}

func (cs *chunkStream) readFull(p []byte, what string) error {
	n, err := io.ReadFull(cs.r, p)
	cs.crc = crc32.Update(cs.crc, castagnoli, p[:n])
	if err != nil {
		return cs.fail(readError(err, what))
	}
	return nil
}

// bodyReader streams one body's bytes, chunk by verified chunk.
type bodyReader struct {
	cs    *chunkStream
	sr    *SegmentReader // the segment it belongs to, if any
	name  string         // "body 3" or "body <content>", for errors
	body  Body
	left  int64  // bytes still on the stream
	buf   []byte // verified bytes not yet returned
	done  bool   // the hash matched: io.EOF once buf is empty
	begun bool
}

// NewBodyReader returns a reader of body b sent as chunks on r (by
// WriteBody). Like a segment's body reader it returns only bytes whose
// chunk CRC matched, decompresses each chunk into a buffer of the length the
// chunk declares (never more than SegmentChunkSize), and checks the SHA-256
// of the bytes against b.Content before it returns the last chunk: io.EOF
// says the whole body arrived intact. Damaged or inconsistent chunks give
// an error wrapping ErrBadSegment; a failing r gives r's error. It reads
// exactly the body's chunks from r and never beyond; every error is final.
func NewBodyReader(r io.Reader, b Body) io.Reader {
	cs := &chunkStream{r: r, version: SegmentVersion}
	if b.Size < 0 {
		cs.err = fmt.Errorf("%w: body %s has negative size %d", ErrBadSegment, shortContent(b.Content), b.Size)
	}
	return &bodyReader{cs: cs, name: "body " + shortContent(b.Content), body: b, left: b.Size}
}

func (br *bodyReader) stale() error {
	if br.sr != nil && br.sr.cur != br {
		return fmt.Errorf("journal: segment %s read after NextBody moved on", br.name)
	}
	return nil
}

// Read implements io.Reader.
func (br *bodyReader) Read(p []byte) (int, error) {
	if err := br.stale(); err != nil {
		return 0, err
	}
	for len(br.buf) == 0 {
		if br.done {
			return 0, io.EOF
		}
		if err := br.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, br.buf)
	br.buf = br.buf[n:]
	return n, nil
}

// WriteTo implements io.WriterTo, so io.Copy writes whole chunks.
func (br *bodyReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if err := br.stale(); err != nil {
			return total, err
		}
		for len(br.buf) == 0 {
			if br.done {
				return total, nil
			}
			if err := br.fill(); err != nil {
				return total, err
			}
		}
		n, err := w.Write(br.buf)
		total += int64(n)
		br.buf = br.buf[n:]
		if err != nil {
			return total, err
		}
	}
}

// fill reads and checks the next chunk, and after the last one the hash.
func (br *bodyReader) fill() error {
	cs := br.cs
	if cs.err != nil {
		return cs.err
	}
	if !br.begun {
		br.begun = true
		if cs.stored == nil {
			cs.stored = make([]byte, SegmentChunkSize)
			cs.raw = make([]byte, SegmentChunkSize+1)
			cs.sum = sha256.New()
		}
		cs.sum.Reset()
	}
	if br.left == 0 {
		return br.verify()
	}
	var h [chunkHeaderLen]byte
	hdr := h[:chunkHeaderLen]
	if cs.version < 2 {
		hdr = h[:chunkHeaderLenV1]
	}
	if err := cs.readFull(hdr, "chunk header"); err != nil {
		return err
	}
	be := binary.BigEndian
	off := br.body.Size - br.left
	n := be.Uint32(hdr)
	m, crc := n, be.Uint32(hdr[4:])
	if cs.version >= 2 {
		m, crc = be.Uint32(hdr[4:]), be.Uint32(hdr[8:])
	}
	if n == 0 || n > SegmentChunkSize || int64(n) > br.left {
		return cs.fail(fmt.Errorf("%w: %s: chunk of %d bytes at offset %d, %d left", ErrBadSegment, br.name, n, off, br.left))
	}
	if m == 0 || m > n {
		return cs.fail(fmt.Errorf("%w: %s: chunk of %d bytes at offset %d stored in %d", ErrBadSegment, br.name, n, off, m))
	}
	stored := cs.stored[:m]
	if err := cs.readFull(stored, "body chunk"); err != nil {
		return err
	}
	if got := crc32c(stored); got != crc {
		return cs.fail(fmt.Errorf("%w: %s: chunk CRC %08x at offset %d, chunk says %08x", ErrBadSegment, br.name, got, off, crc))
	}
	data := stored
	if m < n {
		var err error
		if data, err = decompressChunk(cs.raw, stored, int(n)); err != nil {
			return cs.fail(fmt.Errorf("%w: %s: chunk at offset %d: %w", ErrBadSegment, br.name, off, err))
		}
	}
	cs.sum.Write(data)
	br.left -= int64(n)
	if br.left == 0 {
		if err := br.verify(); err != nil {
			return err
		}
	}
	br.buf = data
	return nil
}

// decompressChunk decompresses a chunk's stored bytes into buf, which must
// come out exactly n bytes long. The decoder may write at most n+1 bytes
// into buf and never allocates another (WithDecodeAllCapLimit): a chunk
// that claims to expand beyond that fails within one zstd block.
func decompressChunk(buf, stored []byte, n int) ([]byte, error) {
	zdec, err := zstdDecoder()
	if err != nil {
		return nil, fmt.Errorf("journal: body decompressor: %w", err)
	}
	out, err := zdec.DecodeAll(stored, buf[:0:n+1])
	switch {
	case err != nil:
		return nil, fmt.Errorf("it does not decompress to its %d bytes: %w", n, err)
	case len(out) != n:
		return nil, fmt.Errorf("it decompresses to %d bytes, not its %d", len(out), n)
	case &out[0] != &buf[0]:
		return nil, errors.New("journal: zstd decoder grew its buffer") // a broken bound, not a bad peer
	}
	return out, nil
}

func (br *bodyReader) verify() error {
	var got ContentID
	br.cs.sum.Sum(got[:0])
	if got != br.body.Content {
		return br.cs.fail(fmt.Errorf("%w: %s: its %d bytes hash to %s, announced as %s", ErrBadSegment, br.name, br.body.Size, shortContent(got), shortContent(br.body.Content)))
	}
	br.done = true
	return nil
}

// chunkWriters keeps the buffers of WriteBody from one body to the next.
var chunkWriters = sync.Pool{New: func() any { return &chunkWriter{version: SegmentVersion, chunk: SegmentChunkSize} }}

// WriteBody writes size bytes read from r to w as a chunk stream, for
// NewBodyReader, outside of a segment (full sync's body answers), each chunk
// compressed when that makes it smaller. It does not check their hash (the
// reader does: the sender of a full sync answer serves what it has, and the
// asker judges it). It does not buffer beyond one chunk and does not flush w.
// An error leaves the stream broken.
func WriteBody(w io.Writer, size int64, r io.Reader) error {
	if size < 0 {
		return fmt.Errorf("journal: body of negative size %d", size)
	}
	write := func(p []byte) error {
		n, err := w.Write(p)
		if err == nil && n < len(p) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return fmt.Errorf("writing: %w", err)
		}
		return nil
	}
	cw := chunkWriters.Get().(*chunkWriter)
	defer chunkWriters.Put(cw)
	if err := cw.writeBody(write, Body{Size: size}, r, false); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}
