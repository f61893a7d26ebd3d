package tests

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailfs/journal"
	"mailfs/peers"
)

// TestHostilePeer plays a hostile or broken peer against a running node
// (issue acceptance: "refused with a logged reason, nothing applied, the
// connection dropped, the node keeps serving its mount and its other
// peers"). Node A is mounted and paired with a real node C and with node M
// ("mallory"), which is never mounted: the test loads M's key and speaks
// the replication protocol to A by hand, one fresh connection per attempt:
// an unpaired key, a future protocol version, replayed, skipped and
// impersonated segments, truncated and corrupt segments, paths with ".."
// and absolute paths, and claims over the limits. After every refusal A
// must have logged why, sent the reason back, closed the connection, left
// its tree, journal, cursor for M and staging area as they were, and still
// answer `mailfs status`. At the end M can still continue its journal
// exactly where A's cursor is, and C's and A's mail still flows both ways.
func TestHostilePeer(t *testing.T) {
	t.Parallel()
	nodes := startNodes(t, 2)
	a, c := nodes[0], nodes[1]

	// M: paired with A (offline join: M has no listen address, so A never
	// dials it), then impersonated by the test with M's own key.
	storeM := filepath.Join(t.TempDir(), "store")
	initNode(t, storeM, "mallory")
	out, errs, code := runMailfs(t, "pair", "invite", "--store", a.Store)
	if code != 0 {
		t.Fatalf("pair invite on A: exit %d: %s", code, errs)
	}
	if out, errs, code := runMailfs(t, "pair", "join", "--store", storeM, strings.TrimSpace(out)); code != 0 {
		t.Fatalf("pair join of M: exit %d: %s%s", code, out, errs)
	}
	identM, err := peers.LoadIdentity(filepath.Join(storeM, "identity"))
	if err != nil {
		t.Fatal(err)
	}
	pinA, err := peers.ParseID(a.ID)
	if err != nil {
		t.Fatal(err)
	}
	idC, err := peers.ParseID(c.ID)
	if err != nil {
		t.Fatal(err)
	}
	h := &hostilePeer{a: a, ident: identM, mID: nodeID(t, statusJSON(t, storeM)), pin: pinA,
		epoch: uint64(time.Now().UnixNano()) | 1}
	checkHasPeer(t, "A", statusJSON(t, a.Store), h.mID, "mallory", "")

	mbM := "mallory.example/m/Maildir"
	guidM := hpGUID(t)
	body1 := []byte("From: m@mallory.example\r\nSubject: first\r\n\r\nhello\r\n")
	key1 := "1700000000.M1P1.mallory"
	first := h.segment(t, h.epoch, 0,
		[]journal.Op{h.mailboxCreate(mbM, guidM), h.messageAdd(mbM, guidM, key1, body1)}, body1)

	// Every attempt below that is not accepted goes through refuse: it
	// must be refused in every way the acceptance names.
	type attempt struct {
		name string
		// version is the hello's protocol version (0: this mailfs's).
		version uint16
		// payload is what follows the hello; closeWrite half-closes after
		// it (a peer that stops mid-segment).
		payload    []byte
		closeWrite bool
		// want is in the reason sent back and in A's log; alsoLog is
		// in A's log too.
		want    string
		alsoLog []string
		// absent must not exist afterwards (paths an escape would create).
		absent []string
	}
	refuse := func(t *testing.T, at attempt) {
		t.Helper()
		before := h.state(t)
		off := len(a.Log())
		conn := h.dial(t)
		defer conn.Close()
		version := at.version
		if version == 0 {
			version = 1
		}
		if _, err := conn.Write(hpHello(version, h.epoch, h.applied)); err != nil {
			t.Fatalf("hello: %v", err)
		}
		if at.version == 0 {
			h.readReply(t, conn)
			if _, err := conn.Write(at.payload); err != nil {
				t.Fatalf("sending the payload: %v", err)
			}
			if at.closeWrite {
				if err := conn.CloseWrite(); err != nil {
					t.Fatalf("close write: %v", err)
				}
			}
		}
		ack, reason, err := hpReadAnswer(conn)
		switch {
		case err != nil:
			t.Fatalf("no refusal sent back: %v\nA's log:\n%s", err, tail(a.Log()[off:], 20))
		case reason == "":
			t.Fatalf("A acknowledged seq %d, want a refusal naming %q\nA's log:\n%s", ack, at.want, tail(a.Log()[off:], 20))
		case !strings.Contains(reason, at.want):
			t.Fatalf("refusal reason %q, want it to name %q", reason, at.want)
		}
		t.Logf("refused: %s", reason)
		hpExpectDropped(t, conn)
		waitLogSince(t, a.mailfsProc, off, 10*time.Second,
			append([]string{"refused a peer's replication data", "level=WARN", at.want}, at.alsoLog...)...)
		h.checkUnchanged(t, before, 1)
		for _, p := range at.absent {
			if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s exists after the refusal (%v)", p, err)
			}
		}
	}

	t.Run("unpaired key", func(t *testing.T) {
		before := h.state(t)
		off := len(a.Log())
		stranger, err := peers.LoadOrCreateIdentity(filepath.Join(t.TempDir(), "identity"))
		if err != nil {
			t.Fatal(err)
		}
		if err := dialSync(a.Addr, stranger, pinA); err == nil || !strings.Contains(err.Error(), "bad certificate") {
			t.Fatalf("an unpaired node's replication connection: %v, want the TLS alert bad certificate", err)
		}
		waitLogSince(t, a.mailfsProc, off, 10*time.Second, "refused connection from an unpaired node",
			peers.FormatID(stranger.ID))
		h.checkUnchanged(t, before, 0)
	})

	t.Run("protocol version from the future", func(t *testing.T) {
		refuse(t, attempt{version: 2, want: "peer speaks version 2, this mailfs 1", alsoLog: []string{"bad hello"}})
	})

	t.Run("valid segment then replay", func(t *testing.T) {
		before := h.state(t)
		conn := h.dial(t)
		defer conn.Close()
		if _, err := conn.Write(hpHello(1, h.epoch, 2)); err != nil {
			t.Fatal(err)
		}
		h.readReply(t, conn)
		if _, err := conn.Write(first); err != nil {
			t.Fatal(err)
		}
		ack, reason, err := hpReadAnswer(conn)
		if err != nil || reason != "" || ack != 2 {
			t.Fatalf("first segment: ack %d, refusal %q, err %v; want ack 2\nA's log:\n%s", ack, reason, err, tail(a.Log(), 30))
		}
		h.applied = 2
		after := snapshot(t, a.Mnt)
		if m, ok := after.Mailboxes[mbM][key1]; !ok || len(after.Mailboxes[mbM]) != 1 || m.Sum != hpSum(body1) {
			t.Fatalf("after M's first segment A has %v in %s, want %s", after.Mailboxes[mbM], mbM, key1)
		}
		if d := diffTrees(before.tree, after, "A before", "A after"); !strings.Contains(d, mbM) {
			t.Fatalf("M's segment changed A's tree unexpectedly:\n%s", d)
		}
		hpWaitCounters(t, a.Store, h.mID, before.applied+2, before.refused)

		// The same segment again on the same connection: a replay.
		before = h.state(t)
		off := len(a.Log())
		if _, err := conn.Write(first); err != nil {
			t.Fatal(err)
		}
		_, reason, err = hpReadAnswer(conn)
		if err != nil || !strings.Contains(reason, "replayed or missing ops") {
			t.Fatalf("replayed segment: refusal %q, err %v; want a refusal naming the replay", reason, err)
		}
		hpExpectDropped(t, conn)
		waitLogSince(t, a.mailfsProc, off, 10*time.Second, "refused a peer's replication data", "replayed or missing ops")
		h.checkUnchanged(t, before, 1)
	})

	// From here on A's cursor for M is (epoch, 2): a segment must follow
	// seq 2 to get past the cursor check to the check under test.
	mbEvil := "mallory.example/m/Maildir/.Evil"
	guidEvil := hpGUID(t)
	// Incompressible, so its one chunk travels as it is and the offsets
	// below reach its bytes.
	body3 := append([]byte("From: m@mallory.example\r\nSubject: third\r\n\r\n"), hpIncompressible(5000)...)
	key3 := "1700000003.M3P1.mallory"
	// seg3 is built once: the offsets below hold for every copy.
	seg3 := h.segment(t, h.epoch, 2, []journal.Op{h.messageAdd(mbM, guidM, key3, body3)}, body3)
	third := func() []byte { return bytes.Clone(seg3) }
	opsLen := int(binary.BigEndian.Uint32(seg3[70:74]))
	bodyAt := 86 + opsLen      // body header
	chunkAt := bodyAt + 44     // chunk header: raw length, stored length, CRC
	dataAt := chunkAt + 12     // chunk data
	trailerAt := len(seg3) - 8 // trailer
	if dataAt+len(body3) != trailerAt || int(binary.BigEndian.Uint32(seg3[chunkAt+4:])) != len(body3) {
		t.Fatalf("segment layout: data at %d + %d bytes, trailer at %d", dataAt, len(body3), trailerAt)
	}
	// withChunk is segment seg of one body, its chunk (at chunkAt) replaced
	// by one of raw length n stored in stored, every CRC right: what a
	// hostile peer that compresses its own way sends.
	withChunk := func(seg []byte, chunkAt, n int, stored []byte) []byte {
		b := bytes.Clone(seg[:chunkAt])
		b = binary.BigEndian.AppendUint32(b, uint32(n))
		b = binary.BigEndian.AppendUint32(b, uint32(len(stored)))
		b = binary.BigEndian.AppendUint32(b, hpCRC(stored))
		b = append(b, stored...)
		b = append(b, "MFSE"...)
		b = binary.BigEndian.AppendUint32(b, 0)
		hpFixTrailerCRC(b)
		return b
	}

	t.Run("replay on a new connection", func(t *testing.T) {
		refuse(t, attempt{payload: first, want: "replayed or missing ops"})
	})
	t.Run("skipped ops", func(t *testing.T) {
		refuse(t, attempt{payload: h.segment(t, h.epoch, 5, []journal.Op{h.mailboxCreate(mbEvil, guidEvil)}),
			want: "replayed or missing ops"})
	})
	t.Run("new epoch not from the start", func(t *testing.T) {
		refuse(t, attempt{payload: h.segment(t, h.epoch+1, 2, []journal.Op{h.mailboxCreate(mbEvil, guidEvil)}),
			want: "new journal epoch must start at seq 1"})
	})
	t.Run("ops of another node", func(t *testing.T) {
		op := h.mailboxCreate(mbEvil, guidEvil)
		refuse(t, attempt{payload: h.segmentOf(t, idC, h.epoch, 0, []journal.Op{op}), want: "on the connection of node"})
	})
	t.Run("garbage instead of a segment", func(t *testing.T) {
		refuse(t, attempt{payload: []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n" + strings.Repeat("z", 100)), want: "bad magic"})
	})
	t.Run("segment format from the future", func(t *testing.T) {
		b := third()
		binary.BigEndian.PutUint16(b[4:], journal.SegmentVersion+1)
		hpFixHeaderCRC(b)
		refuse(t, attempt{payload: b, want: fmt.Sprintf("segment version %d, this mailfs reads 1 to %d",
			journal.SegmentVersion+1, journal.SegmentVersion)})
	})

	t.Run("truncated in the body", func(t *testing.T) {
		refuse(t, attempt{payload: third()[:dataAt+1000], closeWrite: true, want: "truncated in the body chunk"})
	})
	t.Run("truncated in the ops", func(t *testing.T) {
		refuse(t, attempt{payload: third()[:86+opsLen/2], closeWrite: true, want: "truncated in the ops block"})
	})
	t.Run("truncated before the trailer", func(t *testing.T) {
		refuse(t, attempt{payload: third()[:trailerAt+3], closeWrite: true, want: "truncated in the trailer"})
	})

	t.Run("corrupt header", func(t *testing.T) {
		b := third()
		b[50] ^= 0x01 // prev
		refuse(t, attempt{payload: b, want: "header CRC"})
	})
	t.Run("corrupt ops block", func(t *testing.T) {
		b := third()
		b[86+opsLen/2] ^= 0x40
		refuse(t, attempt{payload: b, want: "ops block CRC"})
	})
	t.Run("corrupt ops block with fixed CRCs", func(t *testing.T) {
		b := third()
		b[86+opsLen/2] ^= 0x40
		binary.BigEndian.PutUint32(b[74:], hpCRC(b[86:86+opsLen]))
		hpFixHeaderCRC(b)
		hpFixTrailerCRC(b)
		refuse(t, attempt{payload: b, want: "journal: bad replication segment"})
	})
	t.Run("corrupt body chunk", func(t *testing.T) {
		b := third()
		b[dataAt+2500] ^= 0x01
		refuse(t, attempt{payload: b, want: "chunk CRC"})
	})
	t.Run("body that is not its content with fixed CRCs", func(t *testing.T) {
		b := third()
		b[dataAt+2500] ^= 0x01
		binary.BigEndian.PutUint32(b[chunkAt+8:], hpCRC(b[dataAt:trailerAt]))
		hpFixTrailerCRC(b)
		refuse(t, attempt{payload: b, want: "hash to"})
	})
	// Compressed chunks: text compresses, so its chunk goes as zstd.
	bodyText := []byte("From: m@mallory.example\r\nSubject: text\r\n\r\n" + strings.Repeat("please find the report attached\r\n", 600))
	segText := h.segment(t, h.epoch, 2, []journal.Op{h.messageAdd(mbM, guidM, "1700000006.M6P1.mallory", bodyText)}, bodyText)
	textChunkAt := 86 + int(binary.BigEndian.Uint32(segText[70:74])) + 44
	textStored := segText[textChunkAt+12 : len(segText)-8]
	if n := int(binary.BigEndian.Uint32(segText[textChunkAt+4:])); n != len(textStored) || n >= len(bodyText) {
		t.Fatalf("the text body's chunk is stored in %d bytes of its %d: not compressed", n, len(bodyText))
	}
	t.Run("compressed bomb in a body chunk", func(t *testing.T) {
		// A zstd frame of 8192 RLE blocks of 128 KiB (1 GiB) that
		// declares no size, 32 KiB on the wire, as the chunk of a body of
		// 64 KiB zeros.
		zeros := make([]byte, 64<<10)
		seg := h.segment(t, h.epoch, 2, []journal.Op{h.messageAdd(mbM, guidM, "1700000007.M7P1.mallory", zeros)}, zeros)
		at := 86 + int(binary.BigEndian.Uint32(seg[70:74])) + 44
		bomb := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38}
		for i := range 8192 {
			hdr := uint32(128<<10)<<3 | 1<<1
			if i == 8191 {
				hdr |= 1
			}
			bomb = append(bomb, byte(hdr), byte(hdr>>8), byte(hdr>>16), 0)
		}
		refuse(t, attempt{payload: withChunk(seg, at, len(zeros), bomb), want: "does not decompress to its 65536 bytes"})
	})
	t.Run("corrupt compressed body chunk with fixed CRCs", func(t *testing.T) {
		stored := bytes.Clone(textStored)
		stored[len(stored)/2] ^= 0x01
		refuse(t, attempt{payload: withChunk(segText, textChunkAt, len(bodyText), stored), want: "decompress"})
	})
	t.Run("corrupt trailer", func(t *testing.T) {
		b := third()
		b[len(b)-1] ^= 0x01
		refuse(t, attempt{payload: b, want: "segment CRC"})
	})
	t.Run("body no op names", func(t *testing.T) {
		other := []byte("not announced\r\n")
		refuse(t, attempt{payload: h.segment(t, h.epoch, 2, []journal.Op{h.mailboxCreate(mbEvil, guidEvil)}, other),
			want: "is not named by any op"})
	})

	// Paths: each segment starts with a valid op, so the whole segment is
	// seen to be refused, not just its bad op.
	esc := fmt.Sprintf("hostile-escape-%d", time.Now().UnixNano())
	backingA := filepath.Join(a.Store, "maildir")
	escapes := func(rel string) []string {
		return []string{filepath.Join(a.Mnt, rel), filepath.Join(backingA, rel), filepath.Join(a.Mnt, mbEvil),
			filepath.Join(backingA, mbEvil)}
	}
	pathCases := []struct {
		name string
		op   journal.Op
		rel  string // where an escape would land, relative to the roots
	}{
		{"message add into ../../etc", h.messageAdd("../../etc", guidM, "1700000004.M4P1.mallory", body3), "../../etc"},
		{"mailbox create at ../..", h.mailboxCreate("../../"+esc+"/Maildir", hpGUID(t)), "../../" + esc},
		{"mailbox create with .. inside", h.mailboxCreate("mallory.example/../../../"+esc, hpGUID(t)), "../../" + esc},
		{"mailbox create at an absolute path", h.mailboxCreate("/tmp/"+esc+"/Maildir", hpGUID(t)), "/tmp/" + esc},
		{"mailbox rename out of the store", hpWithNewPath(h.mailboxCreate(mbM, guidM), journal.MailboxRename, "../"+esc), "../" + esc},
		{"directory at ..", hpWithKind(h.mailboxCreate("../"+esc, journal.GUID{}), journal.DirCreate), "../" + esc},
		{"file write at an absolute path", hpFileWrite("/tmp/"+esc, "", body3), "/tmp/" + esc},
		{"file write through ..", hpFileWrite("mallory.example/../../"+esc, "", body3), "../" + esc},
		{"symlink out of the store", hpFileWrite("mallory.example/link-"+esc, "../../../../etc/passwd", nil), "mallory.example/link-" + esc},
		{"absolute symlink", hpFileWrite("mallory.example/link-"+esc, "/etc/passwd", nil), "mallory.example/link-" + esc},
		{"message key with a slash", h.messageAdd(mbM, guidM, "../../../"+esc, body3), "../" + esc},
		{"message size over the limit", hpWithSize(h.messageAdd(mbM, guidM, "1700000005.M5P1.mallory", body3), journal.DefaultMaxBodySize+1), ""},
	}
	for _, pc := range pathCases {
		t.Run(pc.name, func(t *testing.T) {
			var absent []string
			if pc.rel != "" {
				absent = escapes(pc.rel)
				if filepath.IsAbs(pc.rel) {
					absent = append(absent, pc.rel)
				}
			}
			refuse(t, attempt{payload: h.segment(t, h.epoch, 2, []journal.Op{h.mailboxCreate(mbEvil, guidEvil), pc.op}),
				want: "invalid op from peer", absent: absent})
		})
	}

	t.Run("oversized body claim", func(t *testing.T) {
		// A valid op whose body header claims 1 TiB; nothing of the body
		// is sent and the write side stays open: A must refuse on the
		// header alone.
		b := third()[:bodyAt+44]
		binary.BigEndian.PutUint64(b[bodyAt+32:], 1<<40)
		binary.BigEndian.PutUint32(b[bodyAt+40:], hpCRC(b[bodyAt:bodyAt+40]))
		refuse(t, attempt{payload: b, want: fmt.Sprintf("of %d bytes, limit %d", 1<<40, journal.DefaultMaxBodySize)})
	})
	t.Run("oversized ops block claim", func(t *testing.T) {
		b := third()[:86]
		binary.BigEndian.PutUint32(b[70:], 1<<30)
		hpFixHeaderCRC(b)
		refuse(t, attempt{payload: b, want: fmt.Sprintf("compressed ops block of %d bytes, limit %d", 1<<30, journal.DefaultMaxOpsBytes)})
	})
	t.Run("too many bodies claimed", func(t *testing.T) {
		var buf bytes.Buffer
		ops := h.number(h.ident.ID, 2, []journal.Op{h.mailboxCreate(mbEvil, guidEvil)})
		sw := journal.NewSegmentWriter(&buf)
		if err := sw.WriteHeader(journal.SegmentHeader{Origin: h.ident.ID, Epoch: h.epoch, Prev: 2, Last: 3, Bodies: 1 << 20}, ops); err != nil {
			t.Fatal(err)
		}
		refuse(t, attempt{payload: buf.Bytes(), want: fmt.Sprintf("%d bodies, limit %d", 1<<20, journal.DefaultMaxBodies)})
	})

	// After all that, M is still a peer in good standing: the next
	// segment that continues A's cursor exactly is applied.
	t.Run("valid continuation", func(t *testing.T) {
		before := h.state(t)
		conn := h.dial(t)
		defer conn.Close()
		if _, err := conn.Write(hpHello(1, h.epoch, 3)); err != nil {
			t.Fatal(err)
		}
		h.readReply(t, conn)
		if _, err := conn.Write(third()); err != nil {
			t.Fatal(err)
		}
		ack, reason, err := hpReadAnswer(conn)
		if err != nil || reason != "" || ack != 3 {
			t.Fatalf("segment 3: ack %d, refusal %q, err %v; want ack 3\nA's log:\n%s", ack, reason, err, tail(a.Log(), 30))
		}
		h.applied = 3
		conn.Close()
		st := snapshot(t, a.Mnt)
		if m, ok := st.Mailboxes[mbM][key3]; !ok || len(st.Mailboxes[mbM]) != 2 || m.Sum != hpSum(body3) {
			t.Fatalf("after segment 3 A has %v in %s", st.Mailboxes[mbM], mbM)
		}
		if _, ok := st.Mailboxes[mbEvil]; ok {
			t.Fatalf("a refused segment's mailbox %s exists on A", mbEvil)
		}
		hpWaitCounters(t, a.Store, h.mID, before.applied+1, before.refused)
	})

	// Two connections open at once, both told cursor 3: a segment acked on
	// the first is a replay on the second, however old the second's view
	// of the cursor.
	t.Run("replay on a second open connection", func(t *testing.T) {
		body4 := []byte("From: m@mallory.example\r\nSubject: fourth\r\n\r\nfour\r\n")
		seg4 := h.segment(t, h.epoch, 3, []journal.Op{h.messageAdd(mbM, guidM, "1700000004.M4P1.mallory", body4)}, body4)
		c1, c2 := h.dial(t), h.dial(t)
		defer c1.Close()
		defer c2.Close()
		for _, conn := range []*tls.Conn{c1, c2} {
			if _, err := conn.Write(hpHello(1, h.epoch, 4)); err != nil {
				t.Fatal(err)
			}
			h.readReply(t, conn)
		}
		before := h.state(t)
		if _, err := c1.Write(seg4); err != nil {
			t.Fatal(err)
		}
		if ack, reason, err := hpReadAnswer(c1); err != nil || reason != "" || ack != 4 {
			t.Fatalf("segment 4: ack %d, refusal %q, err %v; want ack 4\nA's log:\n%s", ack, reason, err, tail(a.Log(), 30))
		}
		h.applied = 4
		hpWaitCounters(t, a.Store, h.mID, before.applied+1, before.refused)
		before = h.state(t)
		off := len(a.Log())
		if _, err := c2.Write(seg4); err != nil {
			t.Fatal(err)
		}
		ack, reason, err := hpReadAnswer(c2)
		if err != nil || !strings.Contains(reason, "replayed or missing ops") {
			t.Fatalf("segment 4 again on the second connection: ack %d, refusal %q, err %v; want a refusal naming the replay",
				ack, reason, err)
		}
		hpExpectDropped(t, c2)
		waitLogSince(t, a.mailfsProc, off, 10*time.Second, "refused a peer's replication data", "replayed or missing ops")
		h.checkUnchanged(t, before, 1)
		// The first connection carries on.
		body5 := []byte("From: m@mallory.example\r\nSubject: fifth\r\n\r\nfive\r\n")
		if _, err := c1.Write(h.segment(t, h.epoch, 4, []journal.Op{h.messageAdd(mbM, guidM, "1700000005.M5P1.mallory", body5)}, body5)); err != nil {
			t.Fatal(err)
		}
		if ack, reason, err := hpReadAnswer(c1); err != nil || reason != "" || ack != 5 {
			t.Fatalf("segment 5: ack %d, refusal %q, err %v; want ack 5\nA's log:\n%s", ack, reason, err, tail(a.Log(), 30))
		}
		h.applied = 5
		hpWaitCounters(t, a.Store, h.mID, before.applied+1, before.refused+1)
	})

	// A still serves its mount and its other peer, both ways.
	t.Run("A still serves", func(t *testing.T) {
		inbox := "example.com/carol/Maildir"
		mkMailbox(t, c.Mnt, inbox)
		fromC := []byte("From: carol@example.com\r\nSubject: after the attack\r\n\r\nstill here\r\n")
		deliverMsg(t, c.Mnt, inbox, "new", "1700000100.M1P1.gamma", fromC, time.Now())
		syncAll(t, c) // C's only peer is A: A acknowledged it
		sub, name := findMsg(t, a.Mnt, inbox, "1700000100.M1P1.gamma")
		if got, err := os.ReadFile(filepath.Join(a.Mnt, inbox, sub, name)); err != nil || !bytes.Equal(got, fromC) {
			t.Fatalf("C's delivery on A: %q, %v", got, err)
		}
		fromA := []byte("From: alice@example.com\r\nSubject: reply\r\n\r\nfine\r\n")
		deliverMsg(t, a.Mnt, inbox, "cur", "1700000101.M2P1.alpha:2,S", fromA, time.Now())
		if got, err := os.ReadFile(filepath.Join(a.Mnt, inbox, "cur", "1700000101.M2P1.alpha:2,S")); err != nil || !bytes.Equal(got, fromA) {
			t.Fatalf("reading back a delivery on A: %q, %v", got, err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			p := filepath.Join(c.Mnt, inbox, "cur", "1700000101.M2P1.alpha:2,S")
			if got, err := os.ReadFile(p); err == nil && bytes.Equal(got, fromA) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("A's delivery did not reach C in 30s\nA's log:\n%s", tail(a.Log(), 30))
			}
			time.Sleep(50 * time.Millisecond)
		}
		waitConnected(t, "A", a.Store, c.ID, c.Name, c.Addr)
		waitConnected(t, "C", c.Store, a.ID, a.Name, a.Addr)
	})

	if strings.Contains(a.Log(), "level=ERROR") {
		t.Errorf("A logged errors:\n%s", a.Log())
	}
}

// hostilePeer speaks the replication protocol to node a as the paired
// node M, by hand.
type hostilePeer struct {
	a     *node
	ident *peers.Identity
	mID   string // M's ID as status prints it
	pin   journal.NodeID
	epoch uint64
	// applied is A's cursor for M as the test expects it.
	applied uint64
}

func (h *hostilePeer) dial(t *testing.T) *tls.Conn {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", h.a.Addr, peers.ClientConfig(h.ident, h.pin))
	if err != nil {
		t.Fatalf("dial A as M: %v", err)
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	return conn
}

// readReply reads A's answer to the hello: A's cursor for M, which must
// be what the test expects (nothing refused moved it).
func (h *hostilePeer) readReply(t *testing.T, conn *tls.Conn) {
	t.Helper()
	var b [22]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		t.Fatalf("reading the hello reply: %v\nA's log:\n%s", err, tail(h.a.Log(), 20))
	}
	if string(b[:4]) != "MFHR" || binary.BigEndian.Uint16(b[4:]) != 1 {
		t.Fatalf("hello reply %q, want MFHR version 1", b[:])
	}
	epoch, seq := binary.BigEndian.Uint64(b[6:]), binary.BigEndian.Uint64(b[14:])
	wantEpoch := h.epoch
	if h.applied == 0 {
		wantEpoch = 0
	}
	if epoch != wantEpoch || seq != h.applied {
		t.Fatalf("A's cursor for M is (%d, %d), want (%d, %d)", epoch, seq, wantEpoch, h.applied)
	}
}

// number sets the origin and seqs of ops (after prev).
func (h *hostilePeer) number(origin journal.NodeID, prev uint64, ops []journal.Op) []journal.Op {
	for i := range ops {
		ops[i].Origin = origin
		ops[i].Seq = prev + 1 + uint64(i)
	}
	return ops
}

// segment writes a segment of M's ops after prev with bodies, as a
// pusher does.
func (h *hostilePeer) segment(t *testing.T, epoch, prev uint64, ops []journal.Op, bodies ...[]byte) []byte {
	return h.segmentOf(t, h.ident.ID, epoch, prev, ops, bodies...)
}

func (h *hostilePeer) segmentOf(t *testing.T, origin journal.NodeID, epoch, prev uint64, ops []journal.Op, bodies ...[]byte) []byte {
	t.Helper()
	ops = h.number(origin, prev, append([]journal.Op(nil), ops...))
	var buf bytes.Buffer
	sw := journal.NewSegmentWriter(&buf)
	hdr := journal.SegmentHeader{Origin: origin, Epoch: epoch, Prev: prev, Last: prev + uint64(len(ops)), Bodies: uint32(len(bodies))}
	if err := sw.WriteHeader(hdr, ops); err != nil {
		t.Fatalf("segment header: %v", err)
	}
	for _, b := range bodies {
		if err := sw.WriteBody(journal.Body{Content: sha256.Sum256(b), Size: int64(len(b))}, bytes.NewReader(b)); err != nil {
			t.Fatalf("segment body: %v", err)
		}
	}
	if err := sw.Close(); err != nil {
		t.Fatalf("segment: %v", err)
	}
	return buf.Bytes()
}

func (h *hostilePeer) mailboxCreate(p string, g journal.GUID) journal.Op {
	return journal.Op{Kind: journal.MailboxCreate, Time: journal.HLC{WallMs: time.Now().UnixMilli()}, Mailbox: g, Path: p}
}

func (h *hostilePeer) messageAdd(p string, g journal.GUID, key string, body []byte) journal.Op {
	return journal.Op{Kind: journal.MessageAdd, Time: journal.HLC{WallMs: time.Now().UnixMilli()}, Mailbox: g, Path: p,
		Key: key, Sub: journal.SubNew, Mtime: time.Now().UnixNano(), Size: int64(len(body)), Content: sha256.Sum256(body)}
}

func hpFileWrite(p, link string, body []byte) journal.Op {
	op := journal.Op{Kind: journal.FileWrite, Time: journal.HLC{WallMs: time.Now().UnixMilli()}, Path: p, Mode: 0o644,
		Mtime: time.Now().UnixNano(), LinkTarget: link}
	if link == "" {
		op.Size, op.Content = int64(len(body)), sha256.Sum256(body)
	}
	return op
}

func hpWithKind(op journal.Op, k journal.Kind) journal.Op { op.Kind = k; op.Mode = 0o755; return op }

func hpWithNewPath(op journal.Op, k journal.Kind, np string) journal.Op {
	op.Kind = k
	op.NewPath = np
	return op
}

func hpWithSize(op journal.Op, n int64) journal.Op { op.Size = n; return op }

func hpGUID(t *testing.T) journal.GUID {
	var g journal.GUID
	if _, err := rand.Read(g[:]); err != nil {
		t.Fatal(err)
	}
	return g
}

func hpHello(version uint16, epoch, seq uint64) []byte {
	b := []byte("MFHL")
	b = binary.BigEndian.AppendUint16(b, version)
	b = binary.BigEndian.AppendUint64(b, epoch)
	return binary.BigEndian.AppendUint64(b, seq)
}

// hpReadAnswer reads an ack (its seq) or a nack (its reason).
func hpReadAnswer(conn net.Conn) (ack uint64, reason string, err error) {
	var m [4]byte
	if _, err := io.ReadFull(conn, m[:]); err != nil {
		return 0, "", err
	}
	switch string(m[:]) {
	case "MFAK":
		var b [8]byte
		if _, err := io.ReadFull(conn, b[:]); err != nil {
			return 0, "", err
		}
		return binary.BigEndian.Uint64(b[:]), "", nil
	case "MFNK":
		var b [2]byte
		if _, err := io.ReadFull(conn, b[:]); err != nil {
			return 0, "", err
		}
		r := make([]byte, binary.BigEndian.Uint16(b[:]))
		if _, err := io.ReadFull(conn, r); err != nil {
			return 0, "", err
		}
		if len(r) == 0 {
			return 0, "", errors.New("refusal without a reason")
		}
		return 0, string(r), nil
	}
	return 0, "", fmt.Errorf("answer %q is neither an ack nor a nack", m[:])
}

// hpExpectDropped checks that A closed the connection after its answer.
func hpExpectDropped(t *testing.T, conn *tls.Conn) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := conn.Read(make([]byte, 64))
	var ne net.Error
	switch {
	case n > 0:
		t.Fatalf("A sent %d more bytes after its refusal", n)
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("A did not close the connection within 10s of its refusal")
	default:
		t.Fatalf("after the refusal: %v, want the connection closed", err)
	}
}

// hpState is what a refusal must leave as it was.
type hpState struct {
	tree    treeState
	journal int
	applied float64 // ops_applied of M
	refused float64 // segments_refused of M
}

func (h *hostilePeer) state(t *testing.T) hpState {
	t.Helper()
	st := statusJSON(t, h.a.Store)
	p := hpPeerEntry(t, st, h.mID)
	return hpState{tree: snapshot(t, h.a.Mnt), journal: len(journalOps(t, h.a.Store)),
		applied: p["ops_applied"].(float64), refused: p["segments_refused"].(float64)}
}

// checkUnchanged checks that A's tree, journal, cursor for M, counters
// (but segments_refused, which grew by refused) and staging area are as
// before, and that status still answers.
func (h *hostilePeer) checkUnchanged(t *testing.T, before hpState, refused float64) {
	t.Helper()
	hpWaitCounters(t, h.a.Store, h.mID, before.applied, before.refused+refused)
	if d := diffTrees(before.tree, snapshot(t, h.a.Mnt), "A before", "A after"); d != "" {
		t.Fatalf("A's tree changed:\n%s", d)
	}
	if n := len(journalOps(t, h.a.Store)); n != before.journal {
		t.Fatalf("A's journal has %d ops, had %d", n, before.journal)
	}
	if got := hpListDir(t, filepath.Join(h.a.Store, "incoming")); len(got) != 0 {
		t.Fatalf("A's staging area holds %v after a refusal", got)
	}
	// A's cursor for M did not move: a new connection is told the same.
	conn := h.dial(t)
	defer conn.Close()
	if _, err := conn.Write(hpHello(1, h.epoch, h.applied)); err != nil {
		t.Fatalf("hello: %v", err)
	}
	h.readReply(t, conn)
}

func hpPeerEntry(t *testing.T, st map[string]any, id string) map[string]any {
	t.Helper()
	for _, p := range statusPeers(t, st) {
		if p["id"] == id {
			return p
		}
	}
	t.Fatalf("status does not list peer %s: %v", id, st["peers"])
	return nil
}

// hpWaitCounters waits until status shows ops_applied and
// segments_refused of peer id (the counters are updated just after the
// log line).
func hpWaitCounters(t *testing.T, store, id string, applied, refused float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p := hpPeerEntry(t, statusJSON(t, store), id)
		if p["ops_applied"] == applied && p["segments_refused"] == refused {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("peer %s: ops_applied %v, segments_refused %v; want %v and %v", id, p["ops_applied"],
				p["segments_refused"], applied, refused)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func hpListDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

var hpCastagnoli = crc32.MakeTable(crc32.Castagnoli)

func hpCRC(b []byte) uint32 { return crc32.Checksum(b, hpCastagnoli) }

// hpFixHeaderCRC recomputes the CRC of a segment header (bytes 0..81).
func hpFixHeaderCRC(seg []byte) { binary.BigEndian.PutUint32(seg[82:], hpCRC(seg[:82])) }

// hpFixTrailerCRC recomputes the CRC of every segment byte before the trailer.
func hpFixTrailerCRC(seg []byte) {
	binary.BigEndian.PutUint32(seg[len(seg)-4:], hpCRC(seg[:len(seg)-8]))
}

// hpIncompressible is n bytes that do not compress.
func hpIncompressible(n int) []byte {
	var out []byte
	for i := 0; len(out) < n; i++ {
		s := sha256.Sum256(binary.BigEndian.AppendUint64(nil, uint64(i)))
		out = append(out, s[:]...)
	}
	return out[:n]
}

func hpSum(b []byte) string {
	s := sha256.Sum256(b)
	return fmt.Sprintf("%x", s[:8])
}
