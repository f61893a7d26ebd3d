package fsbench

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
)

const (
	kib = 1 << 10
	mib = 1 << 20

	// host is the host part of every generated Maildir unique name.
	host = "fsbench"
	// pid is the fixed P field of generated names: names depend on Seed and
	// the message number only, so every target sees the same names.
	pid = 4242
)

// message is one generated mail: its Maildir base name (no info part) and
// its size in bytes.
type message struct {
	name string
	size int64
}

// corpus is a deterministic set of messages plus the text their bodies are
// cut from. It is read-only once built and shared by all goroutines.
type corpus struct {
	msgs    []message
	text    []byte // lines of 76 printable characters; bodies are slices of it
	maxSize int64
	total   int64
}

// drawSize returns one message size from a mixture that looks like a real
// mail spool: ~92% plain messages (log-normal, median ~3.8 KiB), ~7% with
// small attachments (log-normal, median 48 KiB, below 1 MiB) and ~1% with
// large attachments (log-uniform between 1 and 6 MiB). The overall median
// is about 4 KiB and about 1% of messages are over 1 MiB.
func drawSize(r *rand.Rand) int64 {
	u := r.Float64()
	switch {
	case u < 0.01:
		lo, hi := math.Log(mib+1), math.Log(6*mib)
		return int64(math.Exp(lo + r.Float64()*(hi-lo)))
	case u < 0.08:
		return clamp(int64(48*kib*math.Exp(1.0*r.NormFloat64())), 8*kib, mib-1)
	default:
		return clamp(int64(3.8*kib*math.Exp(0.6*r.NormFloat64())), 600, 256*kib)
	}
}

func clamp(v, lo, hi int64) int64 {
	return min(max(v, lo), hi)
}

// newCorpus builds n messages from seed. The same seed always gives the
// same names, sizes and bytes.
func newCorpus(n int, seed int64) *corpus {
	r := rand.New(rand.NewPCG(uint64(seed), 0x6d61696c6673))
	c := &corpus{msgs: make([]message, n)}
	for i := range c.msgs {
		size := drawSize(r)
		c.msgs[i] = message{name: uniqueName(1700000000, i, size), size: size}
		c.maxSize = max(c.maxSize, size)
		c.total += size
	}
	c.text = makeText(r, mib)
	return c
}

// uniqueName returns a Dovecot-style Maildir unique name such as
// "1700000000.M10001P4242Q7.fsbench,S=4096".
func uniqueName(base int64, i int, size int64) string {
	return fmt.Sprintf("%d.M%dP%dQ%d.%s,S=%d", base+int64(i/50), (i%50)*20000+1, pid, i, host, size)
}

// makeText returns about n bytes of base64-looking text in 77-byte lines.
func makeText(r *rand.Rand, n int) []byte {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	const line = 77
	b := make([]byte, n/line*line)
	for i := range b {
		if i%line == line-1 {
			b[i] = '\n'
		} else {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
	}
	return b
}

// content appends message i's bytes to buf[:0] and returns the result: RFC
// 5322 headers unique to the message, then body text, exactly size bytes.
func (c *corpus) content(buf []byte, i int, name string, size int64) []byte {
	buf = buf[:0]
	buf = fmt.Appendf(buf, "Return-Path: <sender%d@example.org>\n"+
		"Delivered-To: bench@example.com\n"+
		"Received: from mx.example.org (mx.example.org [192.0.2.1])\n\tby mail.example.com with ESMTPS id %s\n"+
		"Message-ID: <%s@example.org>\n"+
		"Date: Tue, 14 Nov 2023 22:13:20 +0000\n"+
		"From: Sender %d <sender%d@example.org>\n"+
		"To: Bench <bench@example.com>\n"+
		"Subject: fsbench message %d\n"+
		"MIME-Version: 1.0\n"+
		"Content-Type: text/plain; charset=us-ascii\n\n",
		i%997, name, name, i%997, i%997, i)
	if int64(len(buf)) >= size {
		return buf[:size]
	}
	off := (i * 7919) % len(c.text)
	for int64(len(buf)) < size {
		chunk := c.text[off:]
		if rest := size - int64(len(buf)); int64(len(chunk)) > rest {
			chunk = chunk[:rest]
		}
		buf = append(buf, chunk...)
		off = 0
	}
	return buf
}

// sizeStats summarises the corpus for the report header.
func (c *corpus) sizeStats() string {
	if len(c.msgs) == 0 {
		return "no messages"
	}
	sizes := make([]int64, len(c.msgs))
	over := 0
	for i, m := range c.msgs {
		sizes[i] = m.size
		if m.size > mib {
			over++
		}
	}
	slices.Sort(sizes)
	p := func(q float64) int64 { return sizes[int(q*float64(len(sizes)-1))] }
	return fmt.Sprintf("sizes median %s, p90 %s, p99 %s, max %s, %.1f%% > 1 MiB, total %s",
		human(p(0.5)), human(p(0.9)), human(p(0.99)), human(sizes[len(sizes)-1]),
		100*float64(over)/float64(len(sizes)), human(c.total))
}

// human formats a byte count with a binary unit.
func human(n int64) string {
	switch {
	case n >= mib:
		return strconv.FormatFloat(float64(n)/mib, 'f', 1, 64) + " MiB"
	case n >= kib:
		return strconv.FormatFloat(float64(n)/kib, 'f', 1, 64) + " KiB"
	default:
		return strconv.FormatInt(n, 10) + " B"
	}
}

// listEntry returns the name and size of the i-th message of the pre-filled
// cur/ used by the readdir+stat workload. Sizes are plain-message sizes
// capped at 16 KiB (the workload never reads them); info parts vary like a
// real mailbox.
func listEntry(r *rand.Rand, i int) (string, int64) {
	size := clamp(int64(3.8*kib*math.Exp(0.6*r.NormFloat64())), 600, 16*kib)
	flags := [...]string{"S", "S", "S", "RS", "FS", "", "ST", "PS"}[i%8]
	return uniqueName(1690000000, i, size) + ":2," + flags, size
}
