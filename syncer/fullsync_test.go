package syncer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	mfs "mailfs/fs"
	"mailfs/index"
	"mailfs/journal"
)

// fullNode is a real store, mounted in this process, with its syncer
// (started with no peers: the tests drive the full sync by hand).
type fullNode struct {
	store   *index.Store
	sync    *Syncer
	mnt     string
	backing string
	staging string
}

func newFullNode(t *testing.T, name string) *fullNode {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("cannot mount: /dev/fuse is missing (%v)", err)
	}
	dir := t.TempDir()
	n := &fullNode{mnt: filepath.Join(dir, "mnt"), backing: filepath.Join(dir, "maildir"), staging: filepath.Join(dir, "staging")}
	for _, d := range []string{n.mnt, n.backing} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var id journal.NodeID
	rand.Read(id[:])
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := index.Open(filepath.Join(dir, "index"), index.Options{Node: id, Name: name, Logger: log})
	if err != nil {
		t.Fatalf("open index: %v", err)
	}
	srv, err := mfs.Mount(n.mnt, mfs.Options{Store: st, Root: n.backing, FSName: "mailfs-test", Logger: log})
	if err != nil {
		st.Close()
		t.Fatalf("mount: %v", err)
	}
	n.store = st
	n.sync = New(Config{Store: st, Mount: srv, Root: n.backing, StagingDir: n.staging, Logger: log})
	if err := n.sync.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.sync.Close()
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", n.mnt, err)
		}
		if err := st.Close(); err != nil {
			t.Errorf("close index: %v", err)
		}
	})
	return n
}

const fullTestMailbox = "ex.org/u/Maildir"

func (n *fullNode) deliver(t *testing.T, sub, name string, body []byte, mtime time.Time) {
	t.Helper()
	base := strings.SplitN(name, ":", 2)[0]
	tmp := filepath.Join(n.mnt, fullTestMailbox, "tmp", base)
	if err := os.WriteFile(tmp, body, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(tmp, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(n.mnt, fullTestMailbox, sub, name)); err != nil {
		t.Fatal(err)
	}
}

// backingBodies finds the bodies of a node's ops in its backing tree, as
// the pusher sends them.
type backingBodies struct{ n *fullNode }

func (b backingBodies) Body(c journal.ContentID) (string, bool) {
	var found string
	b.n.store.View(func(v index.PeerView) error {
		return b.n.store.Mailboxes(func(mb index.Mailbox) error {
			return v.Messages(mb.GUID, func(m index.Message) error {
				if m.Content == c && found == "" {
					found = filepath.Join(b.n.backing, mb.Path, subName(m.Sub), m.Name)
				}
				return nil
			})
		})
	})
	return found, found != ""
}

// replicate applies from's journal ops after seq to to, as a segment
// would, skipping the ops skip says are lost.
func replicate(t *testing.T, from, to *fullNode, after uint64, skip func(op *journal.Op) bool) uint64 {
	t.Helper()
	var ops []journal.Op
	if err := from.store.Ops(after+1, func(op *journal.Op) error {
		ops = append(ops, *op)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	to.sync.applyMu.Lock()
	defer to.sync.applyMu.Unlock()
	for i := range ops {
		if skip != nil && skip(&ops[i]) {
			continue
		}
		err := to.sync.applier.apply(context.Background(), &ops[i], backingBodies{from})
		to.sync.applier.unlockAll()
		if err != nil {
			t.Fatalf("apply %s: %v", ops[i].String(), err)
		}
	}
	if len(ops) == 0 {
		return after
	}
	return ops[len(ops)-1].Seq
}

// exchange runs to's full sync against a responder on the other end of a
// pipe.
func exchange(t *testing.T, to *fullNode, serve func(conn net.Conn)) (FullSyncPeerReport, error) {
	t.Helper()
	c1, c2 := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer c2.Close()
		serve(c2)
	}()
	var rep FullSyncPeerReport
	fc := &fullConn{conn: c1, br: bufio.NewReader(c1), timeout: 20 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := to.sync.fullExchange(ctx, fc, journal.GUID{}, &rep, to.sync.fullLog())
	c1.Close()
	<-done
	return rep, err
}

func realPeer(from *fullNode) func(net.Conn) {
	return func(conn net.Conn) { from.sync.ServeFullSync(context.Background(), conn, journal.NodeID{1}) }
}

// treeOf lists every file under root with its size and mtime.
func treeOf(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if strings.Contains(rel, "dovecot-uidlist.lock") {
			return nil
		}
		out = append(out, fmt.Sprintf("%s %d %d %v", rel, fi.Size(), fi.ModTime().UnixNano(), fi.IsDir()))
		return nil
	})
	sort.Strings(out)
	return out
}

func digestOf(t *testing.T, n *fullNode, g journal.GUID) index.MailboxDigest {
	t.Helper()
	d, ok, err := n.store.MailboxDigestOf(g)
	if err != nil || !ok {
		t.Fatalf("digest of %s: ok %v err %v", g, ok, err)
	}
	return d
}

func mailboxGUID(t *testing.T, n *fullNode) journal.GUID {
	t.Helper()
	var g journal.GUID
	err := n.store.View(func(v index.PeerView) error {
		mb, ok, err := v.MailboxAt(fullTestMailbox)
		if !ok {
			return fmt.Errorf("no mailbox at %s", fullTestMailbox)
		}
		g = mb.GUID
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// pair builds A and B: one mailbox, four messages on A, B having applied
// all of A's ops but those lost says.
func pair(t *testing.T, lost func(op *journal.Op) bool) (a, b *fullNode, g journal.GUID) {
	t.Helper()
	a, b = newFullNode(t, "a"), newFullNode(t, "b")
	for _, d := range []string{"", "tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(a.mnt, fullTestMailbox, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	base := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	a.deliver(t, "new", "1700000001.M1P1.a", []byte("Subject: one\r\n\r\n1\r\n"), base)
	a.deliver(t, "cur", "1700000002.M2P1.a:2,S", []byte("Subject: two\r\n\r\n2\r\n"), base.Add(time.Hour))
	a.deliver(t, "cur", "1700000003.M3P1.a:2,", []byte("Subject: three\r\n\r\n3\r\n"), base.Add(2*time.Hour))
	a.deliver(t, "cur", "1700000004.M4P1.a:2,F", []byte("Subject: four\r\n\r\n4\r\n"), base.Add(3*time.Hour))
	replicate(t, a, b, 0, lost)
	return a, b, mailboxGUID(t, a)
}

// TestFullSyncRepairs: B lost A's add of one message and a flag change
// (never applied), a file vanished behind B's back, and B expunged a
// message A still has. The full sync puts the file back, places the lost
// message with A's stamp, takes the newer flags, leaves the expunged
// message expunged, and journals nothing on B.
func TestFullSyncRepairs(t *testing.T) {
	a, b, g := pair(t, func(op *journal.Op) bool { return op.Kind == journal.MessageAdd && op.Key == "1700000003.M3P1.a" })
	// A lost flag change: \Seen and \Answered on message 1 on A.
	seq := a.store.Seq()
	if err := os.Rename(filepath.Join(a.mnt, fullTestMailbox, "new", "1700000001.M1P1.a"),
		filepath.Join(a.mnt, fullTestMailbox, "cur", "1700000001.M1P1.a:2,RS")); err != nil {
		t.Fatal(err)
	}
	if a.store.Seq() != seq+1 {
		t.Fatalf("flag change on A journaled %d ops", a.store.Seq()-seq)
	}
	// A file vanished behind B's back (reconcile marks it missing).
	lostFile := path.Join(fullTestMailbox, "cur", "1700000002.M2P1.a:2,S")
	if err := os.Remove(filepath.Join(b.backing, lostFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Commit(context.Background(), index.Event{Kind: index.EvMissing, Path: lostFile}); err != nil {
		t.Fatal(err)
	}
	// B expunges message 4; A never hears of it (its ops are not pushed).
	if err := os.Remove(filepath.Join(b.mnt, fullTestMailbox, "cur", "1700000004.M4P1.a:2,F")); err != nil {
		t.Fatal(err)
	}
	bSeq := b.store.Seq()

	rep, err := exchange(t, b, realPeer(a))
	if err != nil {
		t.Fatalf("full sync: %v", err)
	}
	if rep.Compared != 1 || rep.Differing != 1 || rep.Restored != 1 || rep.Added != 1 || rep.Flagged != 1 || rep.Raced != 0 {
		t.Fatalf("report %+v, want 1 compared, differing, restored, added, flagged", rep)
	}
	if rep.BytesFetched != int64(len("Subject: two\r\n\r\n2\r\n")+len("Subject: three\r\n\r\n3\r\n")) {
		t.Fatalf("bytes fetched %d", rep.BytesFetched)
	}
	if b.store.Seq() != bSeq {
		t.Fatalf("B journaled %d ops during the full sync", b.store.Seq()-bSeq)
	}
	want := map[string]string{
		"cur/1700000001.M1P1.a:2,RS": "Subject: one\r\n\r\n1\r\n",
		"cur/1700000002.M2P1.a:2,S":  "Subject: two\r\n\r\n2\r\n",
		"cur/1700000003.M3P1.a:2,":   "Subject: three\r\n\r\n3\r\n",
	}
	var got []string
	for _, sub := range []string{"new", "cur"} {
		ents, _ := os.ReadDir(filepath.Join(b.mnt, fullTestMailbox, sub))
		for _, e := range ents {
			got = append(got, sub+"/"+e.Name())
		}
	}
	if len(got) != len(want) {
		t.Fatalf("B has %v, want %v", got, want)
	}
	for rel, body := range want {
		data, err := os.ReadFile(filepath.Join(b.mnt, fullTestMailbox, rel))
		if err != nil || string(data) != body {
			t.Fatalf("%s on B: %q, %v", rel, data, err)
		}
	}
	fi, err := os.Stat(filepath.Join(b.mnt, lostFile))
	if err != nil || !fi.ModTime().Equal(time.Date(2024, 1, 2, 4, 4, 5, 0, time.UTC)) {
		t.Fatalf("restored file: %v, %v", fi, err)
	}
	var m3a, m3b, m1a, m1b index.Message
	a.store.View(func(v index.PeerView) error {
		m3a, _, _ = v.Message(g, "1700000003.M3P1.a")
		m1a, _, _ = v.Message(g, "1700000001.M1P1.a")
		return nil
	})
	b.store.View(func(v index.PeerView) error {
		m3b, _, _ = v.Message(g, "1700000003.M3P1.a")
		m1b, _, _ = v.Message(g, "1700000001.M1P1.a")
		return nil
	})
	if m3b.Added != m3a.Added || m3b.AddedSeq != m3a.AddedSeq {
		t.Fatalf("the lost message is recorded as added by %+v/%d on B, %+v/%d on A", m3b.Added, m3b.AddedSeq, m3a.Added, m3a.AddedSeq)
	}
	for _, f := range []string{`\Seen`, `\Answered`} {
		if m1b.FlagStamps[f] != m1a.FlagStamps[f] {
			t.Fatalf("flag %s stamped %+v on B, %+v on A", f, m1b.FlagStamps[f], m1a.FlagStamps[f])
		}
	}
	// The message B expunged stays expunged: only it differs now.
	ad, bd := digestOf(t, a, g), digestOf(t, b, g)
	if bd.Count != 3 || ad.Count != 4 {
		t.Fatalf("counts after the full sync: A %d, B %d", ad.Count, bd.Count)
	}
	// Run again: nothing left to repair.
	rep, err = exchange(t, b, realPeer(a))
	if err != nil || rep.Restored+rep.Added+rep.Flagged+rep.Raced != 0 {
		t.Fatalf("second full sync: %+v, %v", rep, err)
	}
}

// hostilePeer answers from a real node, except where tamper says: it may
// change an answer before it is sent (nil: as the real node would).
func hostilePeer(t *testing.T, from *fullNode, tamper func(req *fsRequest, w io.Writer) (bool, error)) func(net.Conn) {
	return func(conn net.Conn) {
		br := bufio.NewReader(conn)
		greeted := false
		for {
			var req fsRequest
			if err := readFrame(br, frameRequest, maxRequestFrame, &req); err != nil {
				return
			}
			bw := bufio.NewWriter(conn)
			done, err := tamper(&req, bw)
			if err == nil && !done {
				err = from.sync.answerFull(bw, &req, &greeted)
			}
			if err == nil {
				err = bw.Flush()
			}
			if err != nil {
				return
			}
		}
	}
}

// TestFullSyncRefusesHostileAnswers: each bad answer ends the exchange
// with a reason and changes nothing on B (tree, index, staging).
func TestFullSyncRefusesHostileAnswers(t *testing.T) {
	a, b, g := pair(t, func(op *journal.Op) bool { return op.Kind == journal.MessageAdd && op.Key == "1700000003.M3P1.a" })
	lostFile := path.Join(fullTestMailbox, "cur", "1700000002.M2P1.a:2,S")
	if err := os.Remove(filepath.Join(b.backing, lostFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Commit(context.Background(), index.Event{Kind: index.EvMissing, Path: lostFile}); err != nil {
		t.Fatal(err)
	}
	real := digestOf(t, a, g)
	answer := func(w io.Writer, v any) (bool, error) { return true, writeFrame(w, frameAnswer, v) }
	digestPage := func(d fsDigest) fsDigests { return fsDigests{Mailboxes: []fsDigest{d}} }
	realDigest := fsDigest{GUID: g.String(), Path: real.Path, Count: real.Count, Digest: fmt.Sprintf("%x", real.Digest)}
	msg := func(key string) fsMessage {
		return fsMessage{Key: key, Content: fmt.Sprintf("%x", sha256.Sum256([]byte("x"))), Sub: journal.SubCur, Size: 1,
			Added: journal.Stamp{Origin: journal.NodeID{9}}, AddedSeq: 1}
	}
	bodySize := func(req *fsRequest) int64 {
		var sz int64
		b.store.View(func(v index.PeerView) error {
			m, _, _ := v.Message(g, req.Key)
			sz = m.Size
			return nil
		})
		if sz == 0 {
			sz = int64(len("Subject: three\r\n\r\n3\r\n"))
		}
		return sz
	}
	// chunkedAnswer answers a body of sz bytes as one chunk stored in
	// stored, its CRC right.
	chunkedAnswer := func(w io.Writer, sz int64, stored []byte) (bool, error) {
		if err := writeFrame(w, frameBody, fsBody{Found: true, Size: sz, Chunked: true}); err != nil {
			return true, err
		}
		h := binary.BigEndian.AppendUint32(nil, uint32(sz))
		h = binary.BigEndian.AppendUint32(h, uint32(len(stored)))
		h = binary.BigEndian.AppendUint32(h, crc32.Checksum(stored, crc32.MakeTable(crc32.Castagnoli)))
		_, err := w.Write(append(h, stored...))
		return true, err
	}
	cases := []struct {
		name   string
		tamper func(req *fsRequest, w io.Writer) (bool, error)
		want   string
	}{
		{"path escaping the store", func(req *fsRequest, w io.Writer) (bool, error) {
			if req.Op != "digests" {
				return false, nil
			}
			d := realDigest
			d.Path = "../../etc"
			return answer(w, digestPage(d))
		}, "invalid path"},
		{"absolute path", func(req *fsRequest, w io.Writer) (bool, error) {
			if req.Op != "digests" {
				return false, nil
			}
			d := realDigest
			d.Path = "/etc/Maildir"
			return answer(w, digestPage(d))
		}, "invalid path"},
		{"oversized count", func(req *fsRequest, w io.Writer) (bool, error) {
			if req.Op != "digests" {
				return false, nil
			}
			d := realDigest
			d.Count = 1 << 40
			return answer(w, digestPage(d))
		}, "claims 1099511627776 messages"},
		{"oversized frame", func(req *fsRequest, w io.Writer) (bool, error) {
			if req.Op != "digests" {
				return false, nil
			}
			_, err := w.Write([]byte{frameAnswer, 0x7f, 0xff, 0xff, 0xff})
			return true, err
		}, "frame of 2147483647 bytes"},
		{"page larger than asked", func(req *fsRequest, w io.Writer) (bool, error) {
			if req.Op != "messages" {
				return false, nil
			}
			var p fsMessages
			for i := 0; i < fullPage+1; i++ {
				p.Messages = append(p.Messages, msg(fmt.Sprintf("17000%05d.M1P1.h", i)))
			}
			return answer(w, p)
		}, "in a page of at most"},
		{"more messages than claimed", func(req *fsRequest, w io.Writer) (bool, error) {
			if req.Op != "messages" {
				return false, nil
			}
			var p fsMessages
			for i := 0; i < int(real.Count)+1; i++ {
				p.Messages = append(p.Messages, msg(fmt.Sprintf("17000%05d.M1P1.h", i)))
			}
			return answer(w, p)
		}, "more messages listed than"},
		{"key escaping the mailbox", func(req *fsRequest, w io.Writer) (bool, error) {
			if req.Op != "messages" {
				return false, nil
			}
			return answer(w, fsMessages{Messages: []fsMessage{msg("../../../x")}})
		}, "invalid"},
		{"keys out of order", func(req *fsRequest, w io.Writer) (bool, error) {
			if req.Op != "messages" {
				return false, nil
			}
			return answer(w, fsMessages{Messages: []fsMessage{msg("1700000009.M1P1.h"), msg("1700000001.M1P1.h")}})
		}, "out of order"},
		{"body not matching its content ID", func(req *fsRequest, w io.Writer) (bool, error) {
			if req.Op != "body" {
				return false, nil
			}
			sz := bodySize(req)
			if err := writeFrame(w, frameBody, fsBody{Found: true, Size: sz}); err != nil {
				return true, err
			}
			_, err := w.Write([]byte(strings.Repeat("Z", int(sz))))
			return true, err
		}, "does not match its content ID"},
		{"compressed bomb in a body chunk", func(req *fsRequest, w io.Writer) (bool, error) {
			if req.Op != "body" {
				return false, nil
			}
			// A zstd frame of RLE blocks, 128 KiB each, no size declared.
			bomb := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38}
			for i := range 3 {
				hdr := uint32(128<<10)<<3 | 1<<1
				if i == 2 {
					hdr |= 1
				}
				bomb = append(bomb, byte(hdr), byte(hdr>>8), byte(hdr>>16), 0)
			}
			return chunkedAnswer(w, bodySize(req), bomb)
		}, "decompress"},
		{"corrupt compressed body chunk", func(req *fsRequest, w io.Writer) (bool, error) {
			if req.Op != "body" {
				return false, nil
			}
			sz := bodySize(req)
			enc, err := zstd.NewWriter(nil)
			if err != nil {
				return true, err
			}
			z := enc.EncodeAll(bytes.Repeat([]byte("Z"), int(sz)), nil)
			z[len(z)-3] ^= 0x10
			return chunkedAnswer(w, sz, z)
		}, "decompress"},
		{"body of another size", func(req *fsRequest, w io.Writer) (bool, error) {
			if req.Op != "body" {
				return false, nil
			}
			return true, writeFrame(w, frameBody, fsBody{Found: true, Size: 1 << 20})
		}, "its entry said"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			beforeTree, beforeDigest, beforeSeq := treeOf(t, b.backing), digestOf(t, b, g), b.store.Seq()
			rep, err := exchange(t, b, hostilePeer(t, a, c.tamper))
			if err == nil || !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("hostile answer: err %v, want a protocol error with %q", err, c.want)
			}
			if rep.Restored+rep.Added+rep.Flagged != 0 {
				t.Fatalf("repairs made from a hostile peer: %+v", rep)
			}
			if after := treeOf(t, b.backing); !slices.Equal(after, beforeTree) {
				t.Fatalf("B's tree changed:\nbefore %v\nafter  %v", beforeTree, after)
			}
			if digestOf(t, b, g) != beforeDigest || b.store.Seq() != beforeSeq {
				t.Fatal("B's index changed")
			}
			if ents, _ := os.ReadDir(b.staging); len(ents) != 0 {
				t.Fatalf("staging holds %d files after a refusal", len(ents))
			}
		})
	}
	// And the honest peer still repairs everything.
	rep, err := exchange(t, b, realPeer(a))
	if err != nil || rep.Restored != 1 || rep.Added != 1 {
		t.Fatalf("full sync with the real peer: %+v, %v", rep, err)
	}
	if digestOf(t, b, g) != digestOf(t, a, g) {
		t.Fatal("digests differ after the full sync")
	}
}

// TestFullSyncRaced: a local change made while a repair's body is on its
// way wins; the repair is counted as raced and not made.
func TestFullSyncRaced(t *testing.T) {
	a, b, _ := pair(t, nil)
	lostName := "1700000002.M2P1.a:2,S"
	lostFile := path.Join(fullTestMailbox, "cur", lostName)
	if err := os.Remove(filepath.Join(b.backing, lostFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Commit(context.Background(), index.Event{Kind: index.EvMissing, Path: lostFile}); err != nil {
		t.Fatal(err)
	}
	// While A streams the body, a client on B puts its own copy there
	// under another name (flags changed).
	local := []byte("Subject: two\r\n\r\n2\r\n")
	tamper := func(req *fsRequest, w io.Writer) (bool, error) {
		if req.Op == "body" && req.Key == "1700000002.M2P1.a" {
			b.deliver(t, "cur", "1700000002.M2P1.a:2,FS", local, time.Now())
		}
		return false, nil
	}
	rep, err := exchange(t, b, hostilePeer(t, a, tamper))
	if err != nil || rep.Raced != 1 || rep.Restored != 0 {
		t.Fatalf("full sync racing a local change: %+v, %v", rep, err)
	}
	ents, _ := os.ReadDir(filepath.Join(b.mnt, fullTestMailbox, "cur"))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if slices.Contains(names, lostName) || !slices.Contains(names, "1700000002.M2P1.a:2,FS") {
		t.Fatalf("B's cur/ after the race: %v", names)
	}
	if ents, _ := os.ReadDir(b.staging); len(ents) != 0 {
		t.Fatalf("staging holds %d files after a raced repair", len(ents))
	}
}

// TestFullSyncServeRefusesHostileRequests: the answering side refuses
// requests before hello and paths outside the store, and answers "not
// found" for what its index does not hold; it never reads outside the
// store.
func TestFullSyncServeRefusesHostileRequests(t *testing.T) {
	a := newFullNode(t, "a")
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	sum := fmt.Sprintf("%x", sha256.Sum256([]byte("secret")))
	call := func(conn net.Conn, br *bufio.Reader, req fsRequest, want byte, v any) error {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if err := writeFrame(conn, frameRequest, req); err != nil {
			return err
		}
		return readFrame(br, want, maxFullFrame, v)
	}
	session := func(t *testing.T, hello bool, req fsRequest, want byte, v any) error {
		t.Helper()
		c1, c2 := net.Pipe()
		defer c1.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			a.sync.ServeFullSync(context.Background(), c2, journal.NodeID{2})
		}()
		br := bufio.NewReader(c1)
		if hello {
			var h fsHello
			if err := call(c1, br, fsRequest{Op: "hello", Version: FullSyncVersion}, frameAnswer, &h); err != nil || h.Version != FullSyncVersion {
				t.Fatalf("hello: %+v, %v", h, err)
			}
		}
		err := call(c1, br, req, want, v)
		c1.Close()
		<-done
		return err
	}
	g := journal.GUID{1, 2, 3}
	for _, c := range []struct {
		name  string
		hello bool
		req   fsRequest
		want  string
	}{
		{"before hello", false, fsRequest{Op: "digests"}, "before hello"},
		{"another version", false, fsRequest{Op: "hello", Version: 99}, "version 99 not supported"},
		{"file outside the store", true, fsRequest{Op: "file", Key: "../../../../" + secret, Content: sum}, "invalid file path"},
		{"absolute file path", true, fsRequest{Op: "file", Key: secret, Content: sum}, "invalid file path"},
		{"message key escaping", true, fsRequest{Op: "body", Mailbox: g.String(), Key: "../../x", Content: sum}, "invalid body request"},
		{"bad GUID", true, fsRequest{Op: "messages", Mailbox: "zz"}, "invalid mailbox GUID"},
		{"unknown request", true, fsRequest{Op: "shell"}, "unknown full sync request"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var v fsHello
			err := session(t, c.hello, c.req, frameAnswer, &v)
			if err == nil || !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("hostile request %+v: %v, want a refusal with %q", c.req, err, c.want)
			}
		})
	}
	t.Run("not in the index", func(t *testing.T) {
		for _, req := range []fsRequest{
			{Op: "body", Mailbox: g.String(), Key: "1700000001.M1P1.x", Content: sum},
			{Op: "file", Key: "ex.org/sieve/x.sieve", Content: sum},
		} {
			var b fsBody
			if err := session(t, true, req, frameBody, &b); err != nil || b.Found {
				t.Fatalf("%+v: %+v, %v, want not found", req, b, err)
			}
		}
	})
}

// TestFullSyncRawBodies: a peer on a mailfs from before chunked body
// answers sends raw bytes; they are still fetched and checked.
func TestFullSyncRawBodies(t *testing.T) {
	a, b, _ := pair(t, nil)
	lostFile := path.Join(fullTestMailbox, "cur", "1700000002.M2P1.a:2,S")
	if err := os.Remove(filepath.Join(b.backing, lostFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Commit(context.Background(), index.Event{Kind: index.EvMissing, Path: lostFile}); err != nil {
		t.Fatal(err)
	}
	chunked := 0
	old := func(req *fsRequest, w io.Writer) (bool, error) {
		if req.Chunked {
			chunked++
		}
		req.Chunked = false // as an older mailfs, which does not know the field
		return false, nil
	}
	rep, err := exchange(t, b, hostilePeer(t, a, old))
	if err != nil || rep.Restored != 1 || chunked == 0 {
		t.Fatalf("full sync with a peer answering raw bodies: %+v, %v (%d chunked requests)", rep, err, chunked)
	}
	data, err := os.ReadFile(filepath.Join(b.mnt, lostFile))
	if err != nil || string(data) != "Subject: two\r\n\r\n2\r\n" {
		t.Fatalf("restored %q, %v", data, err)
	}
}
