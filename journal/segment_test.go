package journal

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

var segOrigin = NodeID{0xab, 0xcd, 1, 2, 3}

// segOps returns n valid ops of origin with seqs prev+1..prev+n, cycling
// through sampleOps.
func segOps(origin NodeID, prev uint64, n int) []Op {
	samples := sampleOps()
	ops := make([]Op, n)
	for i := range ops {
		ops[i] = samples[i%len(samples)]
		ops[i].Origin = origin
		ops[i].Seq = prev + 1 + uint64(i)
	}
	return ops
}

func bodyOf(b []byte) Body { return Body{Content: sha256.Sum256(b), Size: int64(len(b))} }

// writeSegment writes one segment of ops and bodies, cutting bodies into
// chunks of the given size (0: SegmentChunkSize).
func writeSegment(t testing.TB, epoch, prev uint64, ops []Op, bodies [][]byte, chunk int) []byte {
	t.Helper()
	var buf bytes.Buffer
	sw := NewSegmentWriter(&buf)
	if chunk > 0 {
		sw.cw.chunk = chunk
	}
	h := SegmentHeader{Origin: segOrigin, Epoch: epoch, Prev: prev, Last: prev + uint64(len(ops)), Bodies: uint32(len(bodies))}
	if err := sw.WriteHeader(h, ops); err != nil {
		t.Fatalf("WriteHeader: %v", err)
	}
	for _, b := range bodies {
		if err := sw.WriteBody(bodyOf(b), bytes.NewReader(b)); err != nil {
			t.Fatalf("WriteBody: %v", err)
		}
	}
	if err := sw.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return buf.Bytes()
}

type readBody struct {
	Body
	data []byte
}

// readSegment reads a whole segment the way a receiver does, keeping the
// bodies, and reports the first error.
func readSegment(r io.Reader, lim Limits) (SegmentHeader, []Op, []readBody, error) {
	sr, err := NewSegmentReader(r, lim)
	if err != nil {
		return SegmentHeader{}, nil, nil, err
	}
	ops, err := sr.Ops()
	if err != nil {
		return sr.Header(), nil, nil, err
	}
	var bodies []readBody
	for {
		b, br, err := sr.NextBody()
		if err == io.EOF {
			return sr.Header(), ops, bodies, nil
		}
		if err != nil {
			return sr.Header(), ops, bodies, err
		}
		data, err := io.ReadAll(br)
		if err != nil {
			return sr.Header(), ops, bodies, err
		}
		bodies = append(bodies, readBody{b, data})
	}
}

func normalizeOps(ops []Op) []Op {
	out := append([]Op(nil), ops...)
	for i := range out {
		if len(out[i].Flags) == 0 {
			out[i].Flags = nil
		}
		if len(out[i].Seen) == 0 {
			out[i].Seen = nil
		}
	}
	return out
}

// fixCRCs recomputes every CRC of a segment that it can find by walking the
// layout, so tests and the fuzzer reach the checks behind the CRCs. It
// stops where the bytes stop making structural sense.
func fixCRCs(in []byte) []byte {
	b := bytes.Clone(in)
	be := binary.BigEndian
	if len(b) < segHeaderLen || [4]byte(b[:4]) != segMagic {
		return b
	}
	fixHeader := func() { be.PutUint32(b[segHeaderLen-4:], crc32c(b[:segHeaderLen-4])) }
	v1 := be.Uint16(b[4:]) == 1
	fixHeader()
	opsLen := int(be.Uint32(b[70:]))
	p := segHeaderLen
	if opsLen > len(b)-p {
		return b
	}
	be.PutUint32(b[74:], crc32c(b[p:p+opsLen]))
	fixHeader()
	p += opsLen
	for range be.Uint32(b[78:]) {
		if len(b)-p < bodyHeaderLen {
			return b
		}
		be.PutUint32(b[p+40:], crc32c(b[p:p+40]))
		left := be.Uint64(b[p+32:])
		p += bodyHeaderLen
		for left > 0 {
			hl, crcAt := chunkHeaderLen, 8
			if v1 {
				hl, crcAt = chunkHeaderLenV1, 4
			}
			if len(b)-p < hl {
				return b
			}
			n, m := be.Uint32(b[p:]), be.Uint32(b[p:])
			if !v1 {
				m = be.Uint32(b[p+4:])
			}
			if n == 0 || n > SegmentChunkSize || uint64(n) > left || m == 0 || m > n || int(m) > len(b)-p-hl {
				return b
			}
			be.PutUint32(b[p+crcAt:], crc32c(b[p+hl:p+hl+int(m)]))
			p += hl + int(m)
			left -= uint64(n)
		}
	}
	if len(b)-p >= trailerLen {
		be.PutUint32(b[p+4:], crc32c(b[:p]))
	}
	return b
}

// compressOps reads in as a segment whose ops block is stored
// uncompressed (the ops length field giving its length), and returns the
// real segment: the block compressed, the lengths and CRCs set. It lets the
// fuzzer mutate ops directly, which zstd's own checksum otherwise stops. It
// returns nil when in has no segment header.
func compressOps(t testing.TB, in []byte) []byte {
	if len(in) < segHeaderLen || [4]byte(in[:4]) != segMagic {
		return nil
	}
	raw := in[segHeaderLen:]
	rest := []byte(nil)
	if n := binary.BigEndian.Uint32(in[70:]); uint64(n) < uint64(len(raw)) {
		raw, rest = raw[:n], raw[n:]
	}
	comp := compress(t, raw)
	out := append([]byte(nil), in[:segHeaderLen]...)
	binary.BigEndian.PutUint32(out[66:], uint32(len(raw)))
	binary.BigEndian.PutUint32(out[70:], uint32(len(comp)))
	out = append(out, comp...)
	return fixCRCs(append(out, rest...))
}

// rawOpsForm is the inverse of compressOps: seg with its ops block
// decompressed in place.
func rawOpsForm(t testing.TB, seg []byte) []byte {
	t.Helper()
	n := int(binary.BigEndian.Uint32(seg[70:]))
	zdec, err := zstdDecoder()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := zdec.DecodeAll(seg[segHeaderLen:segHeaderLen+n], make([]byte, 0, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	out := append([]byte(nil), seg[:segHeaderLen]...)
	binary.BigEndian.PutUint32(out[70:], uint32(len(raw)))
	out = append(out, raw...)
	return fixCRCs(append(out, seg[segHeaderLen+n:]...))
}

// packOps builds an uncompressed ops block, unchecked.
func packOps(ops []Op) []byte {
	var raw []byte
	for i := range ops {
		enc := Encode(nil, &ops[i])
		raw = binary.AppendUvarint(raw, uint64(len(enc)))
		raw = append(raw, enc...)
	}
	return raw
}

func compress(t testing.TB, raw []byte) []byte {
	t.Helper()
	zenc, err := zstdEncoder()
	if err != nil {
		t.Fatal(err)
	}
	return zenc.EncodeAll(raw, nil)
}

// assemble builds a segment from a header taken as given (sizes included)
// and a compressed ops block, with no bodies, then fixes its CRCs.
func assemble(h SegmentHeader, comp []byte) []byte {
	h.Version = SegmentVersion
	b := h.appendTo(nil)
	b = append(b, comp...)
	b = append(b, segEndMagic[:]...)
	b = append(b, 0, 0, 0, 0)
	return fixCRCs(b)
}

// hostileOps builds a segment around ops the writer would refuse.
func hostileOps(t testing.TB, prev, last uint64, ops []Op) []byte {
	raw := packOps(ops)
	comp := compress(t, raw)
	return assemble(SegmentHeader{Origin: segOrigin, Prev: prev, Last: last, OpCount: uint32(len(ops)),
		OpsRawLen: uint32(len(raw)), OpsLen: uint32(len(comp)), OpsCRC: crc32c(comp)}, comp)
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestSegmentRoundTrip(t *testing.T) {
	big := randomBytes(1, 5<<20+123)
	bodies := [][]byte{[]byte("Subject: hi\r\n\r\nhello\r\n"), {}, big}
	for nb := 0; nb <= 3; nb++ {
		ops := segOps(segOrigin, 41, 12)
		seg := writeSegment(t, 7, 41, ops, bodies[:nb], 0)
		const after = "NEXT SEGMENT"
		r := bytes.NewReader(append(seg, after...))
		sr, err := NewSegmentReader(r, Limits{})
		if err != nil {
			t.Fatalf("%d bodies: %v", nb, err)
		}
		h := sr.Header()
		want := SegmentHeader{Version: SegmentVersion, Origin: segOrigin, Epoch: 7, Prev: 41, Last: 53, OpCount: 12, Bodies: uint32(nb)}
		h.OpsRawLen, h.OpsLen, h.OpsCRC = 0, 0, 0
		if h != want {
			t.Errorf("%d bodies: header %+v, want %+v", nb, h, want)
		}
		got, err := sr.Ops()
		if err != nil {
			t.Fatalf("%d bodies: Ops: %v", nb, err)
		}
		if !reflect.DeepEqual(normalizeOps(got), normalizeOps(ops)) {
			t.Fatalf("%d bodies: ops differ\n got %+v\nwant %+v", nb, got, ops)
		}
		for i := 0; ; i++ {
			b, br, err := sr.NextBody()
			if err == io.EOF {
				if i != nb {
					t.Fatalf("%d bodies: EOF after %d", nb, i)
				}
				break
			}
			if err != nil {
				t.Fatalf("%d bodies: body %d: %v", nb, i, err)
			}
			if b != bodyOf(bodies[i]) {
				t.Fatalf("%d bodies: body %d announced as %+v", nb, i, b)
			}
			// Stream through a small buffer, hashing as we go; the body is
			// never held whole.
			hsum := sha256.New()
			small := make([]byte, 1000)
			var n int64
			for {
				m, err := br.Read(small)
				hsum.Write(small[:m])
				n += int64(m)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("%d bodies: body %d: read: %v", nb, i, err)
				}
			}
			if n != b.Size || ContentID(hsum.Sum(nil)) != b.Content {
				t.Fatalf("%d bodies: body %d: read %d bytes with another hash", nb, i, n)
			}
		}
		if rest, _ := io.ReadAll(r); string(rest) != after {
			t.Errorf("%d bodies: reader left %q after the segment, want %q", nb, rest, after)
		}
	}
}

// Two segments back to back on one stream, bodies read with io.Copy, the
// second body skipped (NextBody drains and checks it).
func TestSegmentStream(t *testing.T) {
	bodies := [][]byte{randomBytes(2, 200<<10), randomBytes(3, 70<<10)}
	var stream []byte
	stream = append(stream, writeSegment(t, 1, 0, segOps(segOrigin, 0, 3), bodies, 0)...)
	stream = append(stream, writeSegment(t, 1, 3, nil, nil, 0)...)
	stream = append(stream, writeSegment(t, 1, 3, segOps(segOrigin, 3, 1), bodies[1:], 0)...)
	r := bytes.NewReader(stream)
	var seqs []uint64
	for {
		sr, err := NewSegmentReader(r, Limits{})
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ops, err := sr.Ops()
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range ops {
			seqs = append(seqs, op.Seq)
		}
		for i := 0; ; i++ {
			_, br, err := sr.NextBody()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				var out bytes.Buffer
				if _, err := io.Copy(&out, br); err != nil {
					t.Fatal(err)
				}
				if out.Len() == 0 {
					t.Fatal("empty copy")
				}
			}
		}
	}
	if !reflect.DeepEqual(seqs, []uint64{1, 2, 3, 4}) {
		t.Fatalf("seqs %v", seqs)
	}
}

func heapAllocated(f func()) uint64 {
	runtime.GC()
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// Reading a 5 MiB body costs a chunk buffer, not the body.
func TestSegmentBodyMemory(t *testing.T) {
	big := randomBytes(4, 5<<20)
	seg := writeSegment(t, 1, 0, segOps(segOrigin, 0, 1), [][]byte{big}, 0)
	sr, err := NewSegmentReader(bytes.NewReader(seg), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	_, br, err := sr.NextBody()
	if err != nil {
		t.Fatal(err)
	}
	small := make([]byte, 4096)
	alloc := heapAllocated(func() {
		for {
			_, err := br.Read(small)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	})
	if alloc > 512<<10 {
		t.Errorf("streaming a 5 MiB body allocated %d bytes", alloc)
	}
	if _, _, err := sr.NextBody(); err != io.EOF {
		t.Fatalf("after the body: %v", err)
	}
}

func TestSegmentWriterRefuses(t *testing.T) {
	ops := segOps(segOrigin, 10, 3)
	h := SegmentHeader{Origin: segOrigin, Prev: 10, Last: 13}
	try := func(name string, h SegmentHeader, ops []Op) {
		t.Helper()
		var buf bytes.Buffer
		if err := NewSegmentWriter(&buf).WriteHeader(h, ops); err == nil {
			t.Errorf("%s: accepted", name)
		} else if buf.Len() != 0 {
			t.Errorf("%s: refused (%v) but wrote %d bytes", name, err, buf.Len())
		}
	}
	try("no origin", SegmentHeader{Prev: 10, Last: 13}, ops)
	try("last off by one", SegmentHeader{Origin: segOrigin, Prev: 10, Last: 14}, ops)
	try("last below prev", SegmentHeader{Origin: segOrigin, Prev: 10, Last: 9}, nil)
	gap := segOps(segOrigin, 10, 3)
	gap[2].Seq = 14
	try("gap", h, gap)
	foreign := segOps(segOrigin, 10, 3)
	foreign[1].Origin = NodeID{9}
	try("foreign op", h, foreign)
	bad := segOps(segOrigin, 10, 3)
	bad[0].Kind = KindInvalid
	try("undecodable op", h, bad)

	var buf bytes.Buffer
	sw := NewSegmentWriter(&buf)
	if err := sw.WriteBody(bodyOf(nil), bytes.NewReader(nil)); err == nil {
		t.Error("body before header accepted")
	}
	if err := sw.Close(); err == nil {
		t.Error("close before header accepted")
	}
	h.Bodies = 2
	if err := sw.WriteHeader(h, ops); err != nil {
		t.Fatal(err)
	}
	if err := sw.WriteHeader(h, ops); err == nil {
		t.Error("second header accepted")
	}
	if err := sw.WriteBody(Body{Content: ContentID{1}}, bytes.NewReader(nil)); err == nil {
		t.Error("empty body with a wrong content ID accepted")
	}
	if err := sw.WriteBody(Body{Size: -1}, bytes.NewReader(nil)); err == nil {
		t.Error("negative size accepted")
	}
	if err := sw.Close(); err == nil {
		t.Error("close with bodies missing accepted")
	}
	if err := sw.WriteBody(bodyOf([]byte("abc")), strings.NewReader("abc")); err != nil {
		t.Fatal(err)
	}
	// A source shorter than announced breaks the segment for good, and
	// what was written is refused by a reader.
	b := bodyOf([]byte("abcdef"))
	if err := sw.WriteBody(b, strings.NewReader("abc")); err == nil {
		t.Error("short source accepted")
	}
	if err := sw.Close(); err == nil {
		t.Error("close after a failed body accepted")
	}
	if _, _, _, err := readSegment(bytes.NewReader(buf.Bytes()), Limits{}); !errors.Is(err, ErrBadSegment) {
		t.Errorf("reading the broken segment: %v", err)
	}

	// Bytes that do not hash to the announced content: the last chunk is
	// never written.
	buf.Reset()
	sw = NewSegmentWriter(&buf)
	sw.cw.chunk = 4
	h.Bodies = 1
	if err := sw.WriteHeader(h, ops); err != nil {
		t.Fatal(err)
	}
	if err := sw.WriteBody(bodyOf([]byte("0123456789")), strings.NewReader("0123456780")); err == nil {
		t.Error("body with the wrong hash accepted")
	}
	_, _, bodies, err := readSegment(bytes.NewReader(buf.Bytes()), Limits{})
	if !errors.Is(err, ErrBadSegment) || len(bodies) != 0 {
		t.Errorf("reading the segment with a wrong body: %v, %d bodies", err, len(bodies))
	}
	if err := sw.Close(); err == nil {
		t.Error("close after a wrong body accepted")
	}

	// Unchecked, the wrong body is written whole, and the reader refuses it.
	buf.Reset()
	sw = NewSegmentWriter(&buf)
	if err := sw.WriteHeader(h, ops); err != nil {
		t.Fatal(err)
	}
	if err := sw.WriteBodyUnchecked(bodyOf([]byte("0123456789")), strings.NewReader("0123456780")); err != nil {
		t.Fatalf("unchecked body: %v", err)
	}
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	_, _, bodies, err = readSegment(bytes.NewReader(buf.Bytes()), Limits{})
	if !errors.Is(err, ErrBadSegment) || len(bodies) != 0 {
		t.Errorf("reading the segment with an unchecked wrong body: %v, %d bodies", err, len(bodies))
	}
}

// smallSegment is a segment with every part: 3 ops, then bodies of 12 bytes
// in chunks of 7 and 5, 0 bytes, and 1 byte.
func smallSegment(t testing.TB) []byte {
	return writeSegment(t, 5, 0, segOps(segOrigin, 0, 3), [][]byte{[]byte("hello, world"), {}, []byte("x")}, 7)
}

func TestSegmentTruncated(t *testing.T) {
	seg := smallSegment(t)
	if _, _, _, err := readSegment(bytes.NewReader(seg), Limits{}); err != nil {
		t.Fatalf("whole segment: %v", err)
	}
	for cut := 0; cut < len(seg); cut++ {
		_, _, _, err := readSegment(bytes.NewReader(seg[:cut]), Limits{})
		if cut == 0 {
			if err != io.EOF {
				t.Errorf("empty stream: %v, want io.EOF", err)
			}
			continue
		}
		if !errors.Is(err, ErrBadSegment) || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("cut at %d of %d: %v", cut, len(seg), err)
		}
	}
}

// Every single bit flip anywhere in a segment is refused.
func TestSegmentBitFlips(t *testing.T) {
	seg := smallSegment(t)
	for i := range seg {
		for bit := range 8 {
			b := bytes.Clone(seg)
			b[i] ^= 1 << bit
			if _, _, _, err := readSegment(bytes.NewReader(b), Limits{}); err == nil {
				t.Fatalf("flip of bit %d in byte %d accepted", bit, i)
			} else if !errors.Is(err, ErrBadSegment) && !errors.Is(err, ErrSegmentVersion) {
				t.Fatalf("flip of bit %d in byte %d: %v, want ErrBadSegment", bit, i, err)
			}
		}
	}
}

func TestSegmentRefusals(t *testing.T) {
	seg := smallSegment(t)
	be := binary.BigEndian
	opsLen := int(be.Uint32(seg[70:]))
	body1 := segHeaderLen + opsLen // first body header
	chunk2 := body1 + bodyHeaderLen + chunkHeaderLen + 7
	set := func(f func(b []byte)) []byte {
		b := bytes.Clone(seg)
		f(b)
		return b
	}
	ops := segOps(segOrigin, 0, 3)
	cases := []struct {
		name string
		seg  []byte
		lim  Limits
		want error
	}{
		{"bad magic", set(func(b []byte) { copy(b, "MFSX") }), Limits{}, ErrBadSegment},
		{"op codec magic", set(func(b []byte) { copy(b, "MFOP") }), Limits{}, ErrBadSegment},
		{"future version", fixCRCs(set(func(b []byte) { be.PutUint16(b[4:], SegmentVersion+1) })), Limits{}, ErrSegmentVersion},
		{"version zero", set(func(b []byte) { be.PutUint16(b[4:], 0) }), Limits{}, ErrSegmentVersion},
		{"header CRC", set(func(b []byte) { b[40]++ }), Limits{}, ErrBadSegment},
		{"ops CRC", set(func(b []byte) { b[segHeaderLen+opsLen/2]++ }), Limits{}, ErrBadSegment},
		{"body header CRC", set(func(b []byte) { b[body1+33]++ }), Limits{}, ErrBadSegment},
		{"chunk CRC", set(func(b []byte) { b[chunk2+chunkHeaderLen]++ }), Limits{}, ErrBadSegment},
		{"body hash", fixCRCs(set(func(b []byte) { b[chunk2+chunkHeaderLen]++ })), Limits{}, ErrBadSegment},
		{"zero-length chunk", fixCRCs(set(func(b []byte) { be.PutUint32(b[chunk2:], 0) })), Limits{}, ErrBadSegment},
		{"chunk past body", fixCRCs(set(func(b []byte) { be.PutUint32(b[chunk2:], 6) })), Limits{}, ErrBadSegment},
		{"trailer CRC", set(func(b []byte) { b[len(b)-1]++ }), Limits{}, ErrBadSegment},
		{"end marker", set(func(b []byte) { b[len(b)-8]++ }), Limits{}, ErrBadSegment},
		{"fewer bodies than announced", fixCRCs(set(func(b []byte) { be.PutUint32(b[78:], 4) })), Limits{}, ErrBadSegment},
		{"more bodies than announced", fixCRCs(set(func(b []byte) { be.PutUint32(b[78:], 2) })), Limits{}, ErrBadSegment},
		{"no origin", fixCRCs(set(func(b []byte) { clear(b[6:38]) })), Limits{}, ErrBadSegment},
		{"other origin", fixCRCs(set(func(b []byte) { b[6]++ })), Limits{}, ErrBadSegment},
		{"prev shifted", fixCRCs(set(func(b []byte) { be.PutUint64(b[46:], 1); be.PutUint64(b[54:], 4) })), Limits{}, ErrBadSegment},
		{"last beyond ops", fixCRCs(set(func(b []byte) { be.PutUint64(b[54:], 4) })), Limits{}, ErrBadSegment},
		{"count beyond ops", fixCRCs(set(func(b []byte) { be.PutUint32(b[62:], 4); be.PutUint64(b[54:], 4) })), Limits{}, ErrBadSegment},
		{"raw length short", fixCRCs(set(func(b []byte) { be.PutUint32(b[66:], be.Uint32(b[66:])-1) })), Limits{}, ErrBadSegment},
		{"raw length long", fixCRCs(set(func(b []byte) { be.PutUint32(b[66:], be.Uint32(b[66:])+1) })), Limits{}, ErrBadSegment},
		{"more ops than limit", seg, Limits{MaxOps: 2}, ErrSegmentLimit},
		{"ops bytes over limit", seg, Limits{MaxOpsBytes: opsLen - 1}, ErrSegmentLimit},
		{"more bodies than limit", seg, Limits{MaxBodies: 2}, ErrSegmentLimit},
		{"body over limit", seg, Limits{MaxBodySize: 11}, ErrSegmentLimit},
		{"huge op count", fixCRCs(set(func(b []byte) { be.PutUint32(b[62:], math.MaxUint32); be.PutUint64(b[54:], math.MaxUint32) })), Limits{}, ErrSegmentLimit},
		{"huge ops block", fixCRCs(set(func(b []byte) { be.PutUint32(b[70:], math.MaxUint32) })), Limits{}, ErrSegmentLimit},
		{"huge raw ops block", fixCRCs(set(func(b []byte) { be.PutUint32(b[66:], math.MaxUint32) })), Limits{}, ErrSegmentLimit},
		{"huge body count", fixCRCs(set(func(b []byte) { be.PutUint32(b[78:], math.MaxUint32) })), Limits{}, ErrSegmentLimit},
		{"huge body", fixCRCs(set(func(b []byte) { be.PutUint64(b[body1+32:], math.MaxUint64) })), Limits{}, ErrSegmentLimit},
		{"empty ops block", fixCRCs(set(func(b []byte) { be.PutUint32(b[70:], 0) })), Limits{}, ErrBadSegment},
		{"ops cannot fit", fixCRCs(set(func(b []byte) { be.PutUint32(b[66:], 3*minOpRecord-1) })), Limits{}, ErrBadSegment},
		{"gap in seqs", hostileOps(t, 0, 3, []Op{ops[0], ops[1], segOps(segOrigin, 3, 1)[0]}), Limits{}, ErrBadSegment},
		{"seqs out of order", hostileOps(t, 0, 3, []Op{ops[0], ops[2], ops[1]}), Limits{}, ErrBadSegment},
		{"wrong origin op", hostileOps(t, 0, 3, []Op{ops[0], segOps(NodeID{7}, 1, 1)[0], ops[2]}), Limits{}, ErrBadSegment},
		{"op with no origin", hostileOps(t, 0, 1, []Op{{Kind: FileDelete, Seq: 1, Path: strings.Repeat("p", 50)}}), Limits{}, ErrBadSegment},
		{"malformed op", hostileOps(t, 0, 3, []Op{ops[0], {Kind: KindInvalid, Origin: segOrigin, Seq: 2}, ops[2]}), Limits{}, ErrMalformed},
		{"not zstd", func() []byte {
			raw := packOps(ops)
			return assemble(SegmentHeader{Origin: segOrigin, Last: 3, OpCount: 3, OpsRawLen: uint32(len(raw)), OpsLen: uint32(len(raw))}, raw)
		}(), Limits{}, ErrBadSegment},
		{"trailing bytes in ops block", func() []byte {
			raw := append(packOps(ops), 0)
			comp := compress(t, raw)
			return assemble(SegmentHeader{Origin: segOrigin, Last: 3, OpCount: 3, OpsRawLen: uint32(len(raw)), OpsLen: uint32(len(comp))}, comp)
		}(), Limits{}, ErrBadSegment},
		{"op length past block", func() []byte {
			raw := packOps(ops)
			raw = append(raw, 0xff, 0x01)
			comp := compress(t, raw)
			return assemble(SegmentHeader{Origin: segOrigin, Last: 4, OpCount: 4, OpsRawLen: uint32(len(raw)), OpsLen: uint32(len(comp))}, comp)
		}(), Limits{}, ErrBadSegment},
	}
	for _, c := range cases {
		_, _, _, err := readSegment(bytes.NewReader(c.seg), c.lim)
		t.Logf("%s: %v", c.name, err)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		} else if c.want == ErrSegmentVersion && errors.Is(err, ErrBadSegment) {
			t.Errorf("%s: version error %v also claims a bad segment", c.name, err)
		}
	}

	// An op in a newer op format is a version problem too.
	enc := Encode(nil, &ops[0])
	enc[4] = opVersion + 1
	raw := binary.AppendUvarint(nil, uint64(len(enc)))
	raw = append(raw, enc...)
	comp := compress(t, raw)
	newer := assemble(SegmentHeader{Origin: segOrigin, Last: 1, OpCount: 1, OpsRawLen: uint32(len(raw)), OpsLen: uint32(len(comp))}, comp)
	if _, _, _, err := readSegment(bytes.NewReader(newer), Limits{}); !errors.Is(err, ErrSegmentVersion) || !errors.Is(err, ErrUnknownVersion) {
		t.Errorf("newer op format: %v", err)
	}
}

// A body that does not hash to its announcement fails before its last chunk
// is handed out, and the error stays.
func TestSegmentBodyHashMismatch(t *testing.T) {
	seg := smallSegment(t)
	body1 := segHeaderLen + int(binary.BigEndian.Uint32(seg[70:]))
	b := bytes.Clone(seg)
	b[body1+bodyHeaderLen+chunkHeaderLen]++ // first byte of the first chunk
	b = fixCRCs(b)
	sr, err := NewSegmentReader(bytes.NewReader(b), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	_, br, err := sr.NextBody()
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(br)
	if !errors.Is(err, ErrBadSegment) {
		t.Fatalf("read: %v", err)
	}
	if len(data) != 7 {
		t.Errorf("handed out %d bytes before the mismatch, want the first chunk's 7", len(data))
	}
	if _, err := br.Read(make([]byte, 10)); !errors.Is(err, ErrBadSegment) {
		t.Errorf("read again: %v", err)
	}
	if _, _, err := sr.NextBody(); !errors.Is(err, ErrBadSegment) {
		t.Errorf("NextBody after the mismatch: %v", err)
	}

	// Skipping the bad body does not skip its check.
	sr, err = NewSegmentReader(bytes.NewReader(b), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := sr.NextBody(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := sr.NextBody(); !errors.Is(err, ErrBadSegment) {
		t.Errorf("NextBody over an unread bad body: %v", err)
	}
}

func TestSegmentStaleBody(t *testing.T) {
	sr, err := NewSegmentReader(bytes.NewReader(smallSegment(t)), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	_, first, err := sr.NextBody()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := sr.NextBody(); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Read(make([]byte, 1)); err == nil || errors.Is(err, io.EOF) {
		t.Errorf("read of a superseded body: %v", err)
	}
}

// rleBomb is a zstd frame of n RLE blocks of 128 KiB zeros each, declaring
// no content size: 4 bytes per 128 KiB of output.
func rleBomb(n int) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38} // magic, no FCS, window 128 KiB
	for i := range n {
		last := 0
		if i == n-1 {
			last = 1
		}
		hdr := uint32(128<<10)<<3 | 1<<1 | uint32(last)
		b = append(b, byte(hdr), byte(hdr>>8), byte(hdr>>16), 0)
	}
	return b
}

func TestSegmentZstdBomb(t *testing.T) {
	if _, err := zstdDecoder(); err != nil {
		t.Fatal(err)
	}
	// Warm the shared decoder so its own buffers are not counted.
	if _, _, _, err := readSegment(bytes.NewReader(smallSegment(t)), Limits{}); err != nil {
		t.Fatal(err)
	}
	bomb := rleBomb(8192)                         // 1 GiB from 32 KiB
	declared := compress(t, make([]byte, 64<<20)) // states its 64 MiB in the frame
	cases := map[string][]byte{
		"undeclared size": assemble(SegmentHeader{Origin: segOrigin, Last: 1, OpCount: 1, OpsRawLen: 1000, OpsLen: uint32(len(bomb))}, bomb),
		"declared size":   assemble(SegmentHeader{Origin: segOrigin, Last: 1, OpCount: 1, OpsRawLen: 1000, OpsLen: uint32(len(declared))}, declared),
		"zero ops":        assemble(SegmentHeader{Origin: segOrigin, OpsLen: uint32(len(bomb))}, bomb),
	}
	for name, seg := range cases {
		var err error
		alloc := heapAllocated(func() { _, _, _, err = readSegment(bytes.NewReader(seg), Limits{}) })
		t.Logf("%s: %v (allocated %d bytes)", name, err, alloc)
		if !errors.Is(err, ErrBadSegment) {
			t.Errorf("%s: %v", name, err)
		}
		if alloc > 4<<20 {
			t.Errorf("%s: allocated %d bytes", name, alloc)
		}
	}
	// A bomb declared as such is refused by the limit, before decompressing.
	big := assemble(SegmentHeader{Origin: segOrigin, Last: 1, OpCount: 1, OpsRawLen: 1 << 30, OpsLen: uint32(len(bomb))}, bomb)
	if _, _, _, err := readSegment(bytes.NewReader(big), Limits{}); !errors.Is(err, ErrSegmentLimit) {
		t.Errorf("declared bomb: %v", err)
	}
}

// A header that promises large blocks costs only the bytes that arrive.
func TestSegmentHostileClaimsCostLittle(t *testing.T) {
	h := SegmentHeader{Version: SegmentVersion, Origin: segOrigin, Last: 1000, OpCount: 1000,
		OpsRawLen: DefaultMaxOpsBytes, OpsLen: DefaultMaxOpsBytes, Bodies: DefaultMaxBodies}
	seg := h.appendTo(nil)
	seg = append(seg, "a few bytes of the promised 16 MiB"...)
	var err error
	alloc := heapAllocated(func() { _, _, _, err = readSegment(bytes.NewReader(seg), Limits{}) })
	if !errors.Is(err, ErrBadSegment) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("got %v", err)
	}
	if alloc > 256<<10 {
		t.Errorf("allocated %d bytes", alloc)
	}
}

// minOpRecord must stay a lower bound of what an acceptable op takes, or
// the reader refuses valid segments.
func TestMinOpRecord(t *testing.T) {
	op := Op{Kind: FileDelete, Origin: NodeID{1}, Seq: 1}
	if n := len(packOps([]Op{op})); n < minOpRecord {
		t.Fatalf("smallest op takes %d bytes, minOpRecord is %d", n, minOpRecord)
	}
	seg := writeSegment(t, 0, 0, []Op{{Kind: FileDelete, Origin: segOrigin, Seq: 1}}, nil, 0)
	if _, _, _, err := readSegment(bytes.NewReader(seg), Limits{}); err != nil {
		t.Fatal(err)
	}
}

var fuzzLimits = Limits{MaxOps: 64, MaxOpsBytes: 64 << 10, MaxBodySize: 1 << 20, MaxBodies: 8}

// FuzzReadSegment: the reader never panics and refuses bad input with
// ErrBadSegment or ErrSegmentVersion; what it accepts is consistent and
// survives a rewrite. Each input is tried three ways: as it is, with its
// CRCs repaired (to reach the checks behind them), and read as a segment
// with an uncompressed ops block that is compressed first (to reach the ops
// checks behind zstd's checksum). Seeds: testdata/fuzz/FuzzReadSegment.
func FuzzReadSegment(f *testing.F) {
	small := smallSegment(f)
	f.Add(small)
	f.Add(rawOpsForm(f, small))
	f.Add(writeSegment(f, 1, 0, nil, nil, 0))
	f.Add(writeSegment(f, 2, 9, segOps(segOrigin, 9, 8), [][]byte{randomBytes(5, 100)}, 16))
	// Compressed chunks (text), a bomb in a chunk, a compressed chunk
	// that decompresses beyond its length.
	f.Add(writeSegment(f, 3, 0, segOps(segOrigin, 0, 2), [][]byte{mailText(10, 3000), []byte("x")}, 1000))
	f.Add(segWithChunks(f, bodyOf(make([]byte, 4096)), chunkAt(4096, rleBomb(4))))
	f.Add(segWithChunks(f, bodyOf(make([]byte, 100)), chunkAt(100, compress(f, make([]byte, 200)))))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, in := range [][]byte{b, fixCRCs(b), compressOps(t, b)} {
			if in == nil {
				continue
			}
			h, ops, bodies, err := readSegment(bytes.NewReader(in), fuzzLimits)
			if err != nil {
				if !errors.Is(err, ErrBadSegment) && !errors.Is(err, ErrSegmentVersion) && !(err == io.EOF && len(in) == 0) {
					t.Fatalf("error of no kind: %v", err)
				}
				continue
			}
			if h.Origin.IsZero() || h.Last-h.Prev != uint64(len(ops)) || len(ops) > fuzzLimits.MaxOps || len(bodies) != int(h.Bodies) {
				t.Fatalf("accepted an inconsistent segment: %+v with %d ops and %d bodies", h, len(ops), len(bodies))
			}
			data := make([][]byte, len(bodies))
			for i, op := range ops {
				if op.Origin != h.Origin || op.Seq != h.Prev+1+uint64(i) {
					t.Fatalf("accepted op %d: origin %s seq %d in %+v", i, op.Origin.Short(), op.Seq, h)
				}
			}
			for i, bd := range bodies {
				if int64(len(bd.data)) != bd.Size || ContentID(sha256.Sum256(bd.data)) != bd.Content || bd.Size > fuzzLimits.MaxBodySize {
					t.Fatalf("accepted body %d: %d bytes announced as %+v", i, len(bd.data), bd.Body)
				}
				data[i] = bd.data
			}
			// Rewritten in the version it came in and in the current one,
			// it reads the same.
			for _, v := range []uint16{h.Version, SegmentVersion} {
				var buf bytes.Buffer
				sw := NewSegmentWriter(&buf)
				sw.cw.version = v
				if err := sw.WriteHeader(SegmentHeader{Origin: h.Origin, Epoch: h.Epoch, Prev: h.Prev, Last: h.Last, Bodies: h.Bodies}, ops); err != nil {
					t.Fatalf("rewrite: %v", err)
				}
				for i, bd := range bodies {
					if err := sw.WriteBody(bd.Body, bytes.NewReader(data[i])); err != nil {
						t.Fatalf("rewrite body %d: %v", i, err)
					}
				}
				if err := sw.Close(); err != nil {
					t.Fatalf("rewrite: %v", err)
				}
				h2, ops2, bodies2, err := readSegment(&buf, fuzzLimits)
				if err != nil {
					t.Fatalf("rewritten segment (version %d) refused: %v", v, err)
				}
				want := h
				want.Version, want.OpsRawLen, want.OpsLen, want.OpsCRC = v, h2.OpsRawLen, h2.OpsLen, h2.OpsCRC
				if want != h2 || !reflect.DeepEqual(normalizeOps(ops), normalizeOps(ops2)) || !reflect.DeepEqual(bodies, bodies2) {
					t.Fatalf("rewrite (version %d) changed the segment\n%+v\n%+v", v, want, h2)
				}
			}
		}
	})
}

// The fuzz transforms are sound: repairing a valid segment changes nothing,
// and its raw-ops form compresses back to a segment that reads the same.
func TestSegmentFuzzHelpers(t *testing.T) {
	seg := smallSegment(t)
	if !bytes.Equal(fixCRCs(seg), seg) {
		t.Error("fixCRCs changed a valid segment")
	}
	_, ops, bodies, err := readSegment(bytes.NewReader(compressOps(t, rawOpsForm(t, seg))), Limits{})
	if err != nil || len(ops) != 3 || len(bodies) != 3 {
		t.Errorf("raw form round trip: %v, %d ops, %d bodies", err, len(ops), len(bodies))
	}
}

// An ops block larger than the reader's first buffer, and a writer's
// header matching what the reader sees.
func TestSegmentLargeOpsBlock(t *testing.T) {
	ops := segOps(segOrigin, 0, 3000)
	for i := range ops {
		ops[i].Path = hex.EncodeToString(randomBytes(uint64(i), 100))
	}
	var buf bytes.Buffer
	sw := NewSegmentWriter(&buf)
	if err := sw.WriteHeader(SegmentHeader{Origin: segOrigin, Last: 3000}, ops); err != nil {
		t.Fatal(err)
	}
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	if sw.Header().OpsLen <= 64<<10 {
		t.Fatalf("ops block of %d bytes does not test growth", sw.Header().OpsLen)
	}
	h, got, _, err := readSegment(&buf, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if h != sw.Header() {
		t.Errorf("read header %+v, written %+v", h, sw.Header())
	}
	if !reflect.DeepEqual(normalizeOps(got), normalizeOps(ops)) {
		t.Error("ops differ")
	}
}

type failingIO struct {
	n   int // bytes to pass before failing
	err error
	r   io.Reader
}

func (f *failingIO) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	p = p[:min(len(p), f.n)]
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

func (f *failingIO) Write(p []byte) (int, error) {
	if len(p) > f.n {
		n := max(f.n, 0)
		f.n = 0
		return n, f.err
	}
	f.n -= len(p)
	return len(p), nil
}

// A transport failure is reported as such, not as a bad segment, and stays.
func TestSegmentTransportErrors(t *testing.T) {
	errNet := errors.New("connection reset")
	seg := smallSegment(t)
	for _, n := range []int{3, 100, len(seg) - 30, len(seg) - 4} {
		_, _, _, err := readSegment(&failingIO{n: n, err: errNet, r: bytes.NewReader(seg)}, Limits{})
		if !errors.Is(err, errNet) || errors.Is(err, ErrBadSegment) {
			t.Errorf("read failing after %d bytes: %v", n, err)
		}
	}
	write := func(w io.Writer) error {
		sw := NewSegmentWriter(w)
		sw.cw.chunk = 7
		err := sw.WriteHeader(SegmentHeader{Origin: segOrigin, Last: 3, Bodies: 1}, segOps(segOrigin, 0, 3))
		if err == nil {
			err = sw.WriteBody(bodyOf([]byte("hello, world")), strings.NewReader("hello, world"))
		}
		if err == nil {
			err = sw.Close()
		}
		if err2 := sw.Close(); !errors.Is(err2, err) {
			t.Errorf("Close after %v: %v", err, err2)
		}
		return err
	}
	var whole bytes.Buffer
	if err := write(&whole); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 100, whole.Len() - 10, whole.Len() - 4} {
		if err := write(&failingIO{n: n, err: errNet}); !errors.Is(err, errNet) {
			t.Errorf("write failing after %d bytes: %v", n, err)
		}
	}
}
