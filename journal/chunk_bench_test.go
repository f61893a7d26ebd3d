package journal

import (
	"bytes"
	"encoding/base64"
	"io"
	"testing"
)

// benchBodies is mail like the replication benchmark's: text, and text with
// a base64 attachment of random bytes (what compressed files look like).
func benchBodies() [][]byte {
	var out [][]byte
	for i := range 40 {
		b := mailText(uint64(i), 4<<10)
		if i%4 == 0 {
			att := randomBytes(uint64(i), 300<<10)
			enc := base64.StdEncoding.EncodeToString(att)
			for len(enc) > 76 {
				b = append(b, enc[:76]...)
				b = append(b, '\n')
				enc = enc[76:]
			}
		}
		out = append(out, b)
	}
	return out
}

// BenchmarkSegmentBodies: the CPU a body costs to send and to receive, in
// segment version 1 (raw) and 2 (compressed where it pays). Bytes/s are of
// raw bodies; "wire/raw" is what the chunks take.
func BenchmarkSegmentBodies(b *testing.B) {
	bodies := benchBodies()
	raw := 0
	for _, x := range bodies {
		raw += len(x)
	}
	for _, v := range []uint16{1, 2} {
		var seg []byte
		write := func() {
			var buf bytes.Buffer
			buf.Grow(raw + raw/10)
			sw := NewSegmentWriter(&buf)
			sw.cw.version = v
			if err := sw.WriteHeader(SegmentHeader{Origin: segOrigin, Bodies: uint32(len(bodies))}, nil); err != nil {
				b.Fatal(err)
			}
			for _, x := range bodies {
				if err := sw.WriteBody(bodyOf(x), bytes.NewReader(x)); err != nil {
					b.Fatal(err)
				}
			}
			if err := sw.Close(); err != nil {
				b.Fatal(err)
			}
			seg = buf.Bytes()
		}
		write()
		name := map[uint16]string{1: "v1-raw", 2: "v2-zstd"}[v]
		b.Run(name+"/send", func(b *testing.B) {
			b.SetBytes(int64(raw))
			for range b.N {
				write()
			}
			b.ReportMetric(float64(len(seg))/float64(raw), "wire/raw")
		})
		b.Run(name+"/receive", func(b *testing.B) {
			b.SetBytes(int64(raw))
			for range b.N {
				sr, err := NewSegmentReader(bytes.NewReader(seg), Limits{})
				if err != nil {
					b.Fatal(err)
				}
				for {
					_, br, err := sr.NextBody()
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					if _, err := io.Copy(io.Discard, br); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
