package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
)

// mailText is n bytes that compress like mail text.
func mailText(seed uint64, n int) []byte {
	words := strings.Fields("the of and to in is you that it meeting invoice report please thanks regards attached schedule")
	r := rand.New(rand.NewPCG(seed, 1))
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		b.WriteByte(' ')
	}
	return b.Bytes()[:n]
}

// chunkAt is one encoded chunk: raw length n, the stored bytes, their CRC.
func chunkAt(n int, stored []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(n))
	b = binary.BigEndian.AppendUint32(b, uint32(len(stored)))
	b = binary.BigEndian.AppendUint32(b, crc32c(stored))
	return append(b, stored...)
}

// segWithChunks is a segment of no ops and one body b, carried by the
// given encoded chunks, all CRCs right.
func segWithChunks(t testing.TB, b Body, chunks ...[]byte) []byte {
	comp := compress(t, nil)
	h := SegmentHeader{Version: SegmentVersion, Origin: segOrigin, OpsLen: uint32(len(comp)), OpsCRC: crc32c(comp), Bodies: 1}
	seg := h.appendTo(nil)
	seg = append(seg, comp...)
	seg = b.appendTo(seg)
	for _, c := range chunks {
		seg = append(seg, c...)
	}
	crc := crc32c(seg)
	seg = append(seg, segEndMagic[:]...)
	return binary.BigEndian.AppendUint32(seg, crc)
}

// chunkShapes walks the chunks of a one-body segment: raw and stored
// lengths.
func chunkShapes(t *testing.T, seg []byte) (raw, stored []int) {
	t.Helper()
	be := binary.BigEndian
	p := segHeaderLen + int(be.Uint32(seg[70:])) + bodyHeaderLen
	for left := int(be.Uint64(seg[p-bodyHeaderLen+32:])); left > 0; {
		n, m := int(be.Uint32(seg[p:])), int(be.Uint32(seg[p+4:]))
		raw, stored = append(raw, n), append(stored, m)
		p += chunkHeaderLen + m
		left -= n
	}
	return raw, stored
}

// Text is compressed chunk by chunk; random bytes go as they are; both read
// back intact.
func TestSegmentCompressesBodies(t *testing.T) {
	text := mailText(1, 300<<10)
	random := randomBytes(9, 150<<10)
	for _, c := range []struct {
		name string
		body []byte
		max  float64 // stored / raw
	}{{"text", text, 0.5}, {"random", random, 1}} {
		seg := writeSegment(t, 1, 0, nil, [][]byte{c.body}, 0)
		raw, stored := chunkShapes(t, seg)
		sumRaw, sumStored := 0, 0
		for i := range raw {
			if c.name == "random" && stored[i] != raw[i] {
				t.Errorf("%s: chunk %d stored in %d of its %d bytes", c.name, i, stored[i], raw[i])
			}
			sumRaw += raw[i]
			sumStored += stored[i]
		}
		t.Logf("%s: %d chunks, %d bytes stored in %d (%.3f); segment %d bytes", c.name, len(raw), sumRaw, sumStored,
			float64(sumStored)/float64(sumRaw), len(seg))
		if sumRaw != len(c.body) || float64(sumStored) > c.max*float64(sumRaw) {
			t.Errorf("%s: %d bytes stored in %d", c.name, sumRaw, sumStored)
		}
		_, _, bodies, err := readSegment(bytes.NewReader(seg), Limits{})
		if err != nil || len(bodies) != 1 || !bytes.Equal(bodies[0].data, c.body) {
			t.Fatalf("%s: read back: %v", c.name, err)
		}
	}
}

// A version 1 segment (a peer on an older mailfs) is still read.
func TestSegmentVersion1(t *testing.T) {
	text := mailText(2, 100<<10)
	var buf bytes.Buffer
	sw := NewSegmentWriter(&buf)
	sw.cw.version = 1
	ops := segOps(segOrigin, 0, 2)
	if err := sw.WriteHeader(SegmentHeader{Origin: segOrigin, Last: 2, Bodies: 1}, ops); err != nil {
		t.Fatal(err)
	}
	if err := sw.WriteBody(bodyOf(text), bytes.NewReader(text)); err != nil {
		t.Fatal(err)
	}
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	// Uncompressed: the body's bytes are all there, in two chunks.
	if want := len(text) + 2*chunkHeaderLenV1 + bodyHeaderLen + trailerLen + segHeaderLen + int(sw.Header().OpsLen); buf.Len() != want {
		t.Errorf("version 1 segment of %d bytes, want %d", buf.Len(), want)
	}
	h, got, bodies, err := readSegment(bytes.NewReader(buf.Bytes()), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if h.Version != 1 || len(got) != 2 || len(bodies) != 1 || !bytes.Equal(bodies[0].data, text) {
		t.Errorf("read version %d, %d ops, %d bodies", h.Version, len(got), len(bodies))
	}
	if !bytes.Equal(fixCRCs(buf.Bytes()), buf.Bytes()) {
		t.Error("fixCRCs changed a valid version 1 segment")
	}
}

// Compressed chunks that lie are refused, cost no more than a chunk of
// memory, and hand out nothing.
func TestSegmentHostileCompressedChunks(t *testing.T) {
	zeros := make([]byte, SegmentChunkSize)
	zb := bodyOf(zeros)
	zenc, err := chunkEncoder()
	if err != nil {
		t.Fatal(err)
	}
	good := zenc.EncodeAll(zeros, nil)
	short := zenc.EncodeAll(zeros[:SegmentChunkSize-1], nil)
	twice := zenc.EncodeAll(make([]byte, 2*SegmentChunkSize), nil) // declares its size
	text := mailText(3, 20<<10)
	tb := bodyOf(text)
	ztext := zenc.EncodeAll(text, nil)
	corrupt := bytes.Clone(ztext)
	corrupt[len(corrupt)/2] ^= 0x40
	bomb := rleBomb(8192) // 1 GiB, no declared size, 32 KiB of stored bytes
	if len(bomb) >= SegmentChunkSize {
		t.Fatal("the bomb does not fit a chunk")
	}
	cases := []struct {
		name string
		seg  []byte
	}{
		{"RLE bomb", segWithChunks(t, zb, chunkAt(SegmentChunkSize, bomb))},
		{"decompresses beyond its length", segWithChunks(t, zb, chunkAt(SegmentChunkSize, twice))},
		{"decompresses short of its length", segWithChunks(t, zb, chunkAt(SegmentChunkSize, short))},
		{"concatenated frames beyond its length", segWithChunks(t, zb, chunkAt(SegmentChunkSize, append(bytes.Clone(good), good...)))},
		{"corrupt compressed bytes", segWithChunks(t, tb, chunkAt(len(text), corrupt))},
		{"not zstd", segWithChunks(t, tb, chunkAt(len(text), text[:len(text)-1]))},
		{"stored longer than raw", segWithChunks(t, tb, chunkAt(len(text)-1, text))},
		{"stored in zero bytes", segWithChunks(t, bodyOf([]byte("x")), chunkAt(1, nil))},
		{"compressed other bytes", segWithChunks(t, zb, chunkAt(len(text), ztext), chunkAt(SegmentChunkSize-len(text), zenc.EncodeAll(zeros[len(text):], nil)))},
	}
	// Warm the decoder and the reader's buffers.
	if _, _, _, err := readSegment(bytes.NewReader(segWithChunks(t, zb, chunkAt(SegmentChunkSize, good))), Limits{}); err != nil {
		t.Fatalf("the honest chunk: %v", err)
	}
	for _, c := range cases {
		var err error
		var bodies []readBody
		alloc := heapAllocated(func() { _, _, bodies, err = readSegment(bytes.NewReader(c.seg), Limits{}) })
		t.Logf("%s: %v (allocated %d bytes)", c.name, err, alloc)
		if !errors.Is(err, ErrBadSegment) {
			t.Errorf("%s: %v, want ErrBadSegment", c.name, err)
		}
		if len(bodies) != 0 {
			t.Errorf("%s: %d bodies handed out", c.name, len(bodies))
		}
		if alloc > 2<<20 {
			t.Errorf("%s: allocated %d bytes", c.name, alloc)
		}
	}
}

// Full sync's body stream: bodies back to back, compressed where it pays,
// each read exactly; lies refused.
func TestBodyStream(t *testing.T) {
	bodies := [][]byte{mailText(4, 200<<10), randomBytes(5, 70<<10), nil, []byte("x"), mailText(6, SegmentChunkSize)}
	var stream bytes.Buffer
	raw := 0
	for _, b := range bodies {
		if err := WriteBody(&stream, int64(len(b)), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		raw += len(b)
	}
	const after = "NEXT"
	stream.WriteString(after)
	t.Logf("%d bytes in %d", raw, stream.Len())
	if stream.Len() > raw*7/10 {
		t.Errorf("%d bytes sent for %d", stream.Len(), raw)
	}
	for i, b := range bodies {
		got, err := io.ReadAll(NewBodyReader(&stream, bodyOf(b)))
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("body %d: %v", i, err)
		}
	}
	if stream.String() != after {
		t.Errorf("left %q", stream.String())
	}

	// A body that does not hash to what was asked for is refused before
	// its last chunk is handed out.
	var one bytes.Buffer
	if err := WriteBody(&one, int64(len(bodies[0])), bytes.NewReader(bodies[0])); err != nil {
		t.Fatal(err)
	}
	wrong := bodyOf(bodies[0])
	wrong.Content[0]++
	got, err := io.ReadAll(NewBodyReader(bytes.NewReader(one.Bytes()), wrong))
	if !errors.Is(err, ErrBadSegment) || len(got) >= len(bodies[0]) {
		t.Errorf("wrong content: %v after %d bytes", err, len(got))
	}
	// Cut short: a truncation, not an intact body.
	if _, err := io.ReadAll(NewBodyReader(bytes.NewReader(one.Bytes()[:one.Len()-1]), bodyOf(bodies[0]))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated: %v", err)
	}
	// A bomb.
	zeros := make([]byte, SegmentChunkSize)
	bomb := chunkAt(SegmentChunkSize, rleBomb(8192))
	alloc := heapAllocated(func() { _, err = io.ReadAll(NewBodyReader(bytes.NewReader(bomb), bodyOf(zeros))) })
	if !errors.Is(err, ErrBadSegment) || alloc > 2<<20 {
		t.Errorf("bomb: %v, allocated %d bytes", err, alloc)
	}
	if _, err := NewBodyReader(strings.NewReader(""), Body{Size: -1}).Read(make([]byte, 1)); !errors.Is(err, ErrBadSegment) {
		t.Errorf("negative size: %v", err)
	}
}

// FuzzBodyReader: the body stream reader never panics, refuses bad input
// with ErrBadSegment (or a truncation), and what it accepts is the body. The
// input is the stream; the body it should carry is what the stream's own
// bytes decode to as far as they go, which only a real stream matches.
func FuzzBodyReader(f *testing.F) {
	for i, b := range [][]byte{mailText(7, 100<<10), randomBytes(8, 1000), []byte("hello"), nil} {
		var buf bytes.Buffer
		if err := WriteBody(&buf, int64(len(b)), bytes.NewReader(b)); err != nil {
			f.Fatal(err)
		}
		c, empty := bodyOf(b).Content, bodyOf(nil).Content
		f.Add(buf.Bytes(), int64(len(b)), c[:])
		f.Add(chunkAt(SegmentChunkSize, rleBomb(64+i)), int64(SegmentChunkSize), empty[:])
	}
	f.Fuzz(func(t *testing.T, in []byte, size int64, content []byte) {
		var b Body
		copy(b.Content[:], content)
		b.Size = size % (4 << 20)
		for _, s := range [][]byte{in, fixChunkCRCs(in)} {
			got, err := io.ReadAll(NewBodyReader(bytes.NewReader(s), b))
			if err != nil {
				if !errors.Is(err, ErrBadSegment) {
					t.Fatalf("error of no kind: %v", err)
				}
				continue
			}
			if int64(len(got)) != b.Size || bodyOf(got) != b {
				t.Fatalf("accepted %d bytes as %+v", len(got), b)
			}
		}
	})
}

// fixChunkCRCs repairs the CRCs of a bare chunk stream, as far as it goes.
func fixChunkCRCs(in []byte) []byte {
	b := bytes.Clone(in)
	be := binary.BigEndian
	for p := 0; len(b)-p >= chunkHeaderLen; {
		m := int(be.Uint32(b[p+4:]))
		if m > len(b)-p-chunkHeaderLen {
			break
		}
		be.PutUint32(b[p+8:], crc32c(b[p+chunkHeaderLen:p+chunkHeaderLen+m]))
		p += chunkHeaderLen + m
	}
	return b
}

func ExampleNewBodyReader() {
	body := []byte("Subject: hi\n\nhello\n")
	var wire bytes.Buffer
	WriteBody(&wire, int64(len(body)), bytes.NewReader(body))
	got, err := io.ReadAll(NewBodyReader(&wire, bodyOf(body)))
	fmt.Printf("%q %v\n", got, err)
	// Output: "Subject: hi\n\nhello\n" <nil>
}
