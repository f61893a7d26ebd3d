package index

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"mailfs/journal"
)

// Plain files (design §6 rule 10) are multi-value registers, one per path.
// Every FileWrite and FileDelete is a version of its path, named by its dot
// (origin, seq), and names the versions it replaced (op.Seen, by origin:
// the version the writer had at the path, and those with the same bytes the
// tree showed as that one file). The register keeps its heads: the
// versions no op known here replaced. What the tree shows is a function of
// the heads alone, so every node that applied the same ops shows the same
// files, in any order of arrival:
//   - the newest head (by HLC, then origin) is at the path, or nothing when
//     it is a delete;
//   - every other write head is kept at ConflictName(path, its dot), unless
//     its bytes are those of a version already shown (the same content
//     written on two nodes needs no copy).
//
// A write replaces only what its writer had: versions written concurrently
// elsewhere stay, as conflict copies, so no byte is dropped. A delete is a
// head too (a tombstone): newer than a concurrent write it had not seen, it
// empties the path and the write is kept as a conflict copy; older, the
// write stays at the path. A change to a conflict copy (an edit, a delete)
// replaces that version in the register of the original path, so the copy
// is not made again anywhere; an edited copy is a plain file of its own. A
// local write that puts a conflict copy's bytes back at the path hides the
// copy: the syncer removes that file, as a local delete.
//
// An op that replaced a version not yet here (a third node's, still in
// flight) is remembered as pending, and that version is dropped on arrival:
// each origin's ops arrive in seq order, so Ctx (the highest seq of each
// origin applied to the register) says which versions have arrived.

// Dot names one version of a plain file: the op that wrote or deleted it.
type Dot struct {
	Origin journal.NodeID `json:"origin"`
	Seq    uint64         `json:"seq"`
}

// IsZero reports whether d names no version.
func (d Dot) IsZero() bool { return d.Seq == 0 }

// DotOf is the version op makes.
func DotOf(op *journal.Op) Dot { return Dot{Origin: op.Origin, Seq: op.Seq} }

// ReplacedDots are the versions a FileWrite or FileDelete replaced (carried
// in op.Seen, one entry per origin): the one its writer had at the path and
// those with the same bytes hidden behind it. Sorted, for determinism.
func ReplacedDots(op *journal.Op) []Dot {
	out := make([]Dot, 0, len(op.Seen))
	for o, s := range op.Seen {
		if s != 0 {
			out = append(out, Dot{Origin: o, Seq: s})
		}
	}
	slices.SortFunc(out, func(a, b Dot) int { return strings.Compare(string(a.Origin[:]), string(b.Origin[:])) })
	return out
}

// ConflictName is where version d of the plain file at path is kept while a
// newer version holds the path (the name rule 9 gives messages).
func ConflictName(path string, d Dot) string {
	return path + conflictSuffix(d)
}

func conflictSuffix(d Dot) string {
	return ".mailfs-conflict-" + d.Origin.Short() + "-" + strconv.FormatUint(d.Seq, 10)
}

// conflictBase is the path whose version d the conflict copy at path keeps.
func conflictBase(path string, d Dot) (string, bool) {
	if d.IsZero() {
		return "", false
	}
	suf := conflictSuffix(d)
	if len(path) > len(suf) && strings.HasSuffix(path, suf) && !strings.HasSuffix(path, "/"+suf) {
		return strings.TrimSuffix(path, suf), true
	}
	return "", false
}

// FileHead is a version of a plain file that no op applied here replaced.
type FileHead struct {
	Dot
	Time       journal.HLC       `json:"time"`
	Deleted    bool              `json:"deleted,omitempty"`
	Mode       uint32            `json:"mode,omitempty"`
	Mtime      int64             `json:"mtime,omitempty"`
	Size       int64             `json:"size,omitempty"`
	Content    journal.ContentID `json:"content"`
	LinkTarget string            `json:"link,omitempty"`
}

// Stamp orders heads: the newest is at the path.
func (h FileHead) Stamp() journal.Stamp { return journal.Stamp{Time: h.Time, Origin: h.Origin} }

// SameBytes reports whether h and o are writes of the same file.
func (h FileHead) SameBytes(o FileHead) bool {
	return !h.Deleted && !o.Deleted && h.Content == o.Content && h.LinkTarget == o.LinkTarget && h.Mode&0o7777 == o.Mode&0o7777
}

func headOf(op *journal.Op) FileHead {
	return FileHead{Dot: DotOf(op), Time: op.Time, Deleted: op.Kind == journal.FileDelete, Mode: op.Mode,
		Mtime: op.Mtime, Size: op.Size, Content: op.Content, LinkTarget: op.LinkTarget}
}

// fileRegRec is the register of one plain-file path.
type fileRegRec struct {
	Heads   []FileHead            `json:"heads,omitempty"`
	Ctx     journal.VersionVector `json:"ctx,omitempty"`
	Pending []Dot                 `json:"pending,omitempty"`
}

func (r *fileRegRec) clone() fileRegRec {
	c := fileRegRec{Heads: slices.Clone(r.Heads), Pending: slices.Clone(r.Pending), Ctx: journal.VersionVector{}}
	for o, s := range r.Ctx {
		c.Ctx[o] = s
	}
	return c
}

// replace drops version d: a head now, or, when d has not arrived yet, on
// arrival. self's versions have always arrived.
func (r *fileRegRec) replace(d Dot, self journal.NodeID) {
	if d.IsZero() {
		return
	}
	if i := slices.IndexFunc(r.Heads, func(h FileHead) bool { return h.Dot == d }); i >= 0 {
		r.Heads = slices.Delete(r.Heads, i, i+1)
		return
	}
	if d.Origin != self && d.Seq > r.Ctx[d.Origin] && !slices.Contains(r.Pending, d) {
		r.Pending = append(r.Pending, d)
	}
}

// add makes h a head, unless it arrived before or was replaced already.
func (r *fileRegRec) add(h FileHead) {
	if r.Ctx == nil {
		r.Ctx = journal.VersionVector{}
	}
	if r.Ctx[h.Origin] >= h.Seq {
		return // applied before: ops are idempotent
	}
	r.Ctx[h.Origin] = h.Seq
	if i := slices.Index(r.Pending, h.Dot); i >= 0 {
		r.Pending = slices.Delete(r.Pending, i, i+1)
		return
	}
	// An earlier pending version of the same origin would have arrived
	// before this one: it was no version of this path.
	r.Pending = slices.DeleteFunc(r.Pending, func(d Dot) bool { return d.Origin == h.Origin && d.Seq < h.Seq })
	r.Heads = append(r.Heads, h)
	r.prune()
}

// prune drops the delete heads that are not the newest: a later version
// replaces something newer than them, so they can never be the newest
// again, and a delete that is not the newest shows nothing.
func (r *fileRegRec) prune() {
	newest := r.newest()
	r.Heads = slices.DeleteFunc(r.Heads, func(h FileHead) bool { return h.Deleted && h.Dot != newest.Dot })
}

func (r *fileRegRec) newest() FileHead {
	var n FileHead
	for i, h := range r.Heads {
		if i == 0 || n.Stamp().Less(h.Stamp()) {
			n = h
		}
	}
	return n
}

// ShownFile is one version of a plain file and where the tree shows it.
type ShownFile struct {
	Path string
	Head FileHead
}

// view is what the register of path shows: the newest head at path, the
// other write heads at their conflict names, newest first, skipping those
// with the bytes of a version already shown.
func (r *fileRegRec) view(path string) []ShownFile {
	heads := slices.Clone(r.Heads)
	slices.SortFunc(heads, func(a, b FileHead) int {
		if b.Stamp().Less(a.Stamp()) {
			return -1
		}
		if a.Stamp().Less(b.Stamp()) {
			return 1
		}
		return 0
	})
	var out []ShownFile
	for i, h := range heads {
		if h.Deleted {
			continue
		}
		if slices.ContainsFunc(out, func(s ShownFile) bool { return s.Head.SameBytes(h) }) {
			continue
		}
		p := path
		if i > 0 {
			p = ConflictName(path, h.Dot)
		}
		out = append(out, ShownFile{Path: p, Head: h})
	}
	return out
}

// FileChange is what a plain-file op does to the files of one register.
type FileChange struct {
	Path          string
	Before, After []ShownFile
}

type regStep struct {
	path          string
	before, after fileRegRec
}

func (t *tx) fileReg(path string) (fileRegRec, error) {
	var r fileRegRec
	_, err := t.getRec(fileRegKey(path), &r)
	return r, err
}

// fileSteps computes what the plain-file op does to the registers it
// touches: the replaced version leaves its register (the original path's,
// when op changes a conflict copy of it), the op's own version joins the
// register of op.Path, and a rename's source gets a delete.
func (t *tx) fileSteps(op *journal.Op) ([]regStep, error) {
	return fileSteps(t.fileReg, t.s.node, op)
}

// fileSteps is tx.fileSteps on the registers load returns (self: this node).
func fileSteps(load func(path string) (fileRegRec, error), self journal.NodeID, op *journal.Op) ([]regStep, error) {
	var steps []regStep
	get := func(path string) (*regStep, error) {
		for i := range steps {
			if steps[i].path == path {
				return &steps[i], nil
			}
		}
		r, err := load(path)
		if err != nil {
			return nil, err
		}
		steps = append(steps, regStep{path: path, before: r, after: r.clone()})
		return &steps[len(steps)-1], nil
	}
	if replaced := ReplacedDots(op); len(replaced) == 0 && op.Seq != 0 {
		// No version named: its writer's register had none, so a version
		// of that same writer still here was replaced there, by an op on
		// its way here too; or the op was journaled before ops named what
		// they replace. Either way it replaces its writer's last version.
		st, err := get(op.Path)
		if err != nil {
			return nil, err
		}
		var own Dot
		for _, h := range st.after.Heads {
			if h.Origin == op.Origin && h.Seq < op.Seq && h.Seq > own.Seq {
				own = h.Dot
			}
		}
		st.after.replace(own, self)
	} else if len(replaced) > 0 {
		// The replaced versions are of one register: the original path's
		// when op.Path is the conflict copy of one of them.
		at := op.Path
		for _, r := range replaced {
			if base, ok := conflictBase(op.Path, r); ok {
				at = base
			}
		}
		st, err := get(at)
		if err != nil {
			return nil, err
		}
		for _, r := range replaced {
			st.after.replace(r, self)
		}
	}
	if op.From != "" && op.From != op.Path {
		// The renamed version leaves its source: the source's newest write
		// with those bytes, and a delete takes its place.
		st, err := get(op.From)
		if err != nil {
			return nil, err
		}
		moved := headOf(op)
		if n := st.after.newest(); n.SameBytes(moved) {
			st.after.replace(n.Dot, self)
		}
		del := moved
		del.Deleted = true
		st.after.add(del)
	}
	st, err := get(op.Path)
	if err != nil {
		return nil, err
	}
	st.after.add(headOf(op))
	return steps, nil
}

// recordFileOp stores the registers op changes and gives every file the
// new views show the dot of the version it holds. Runs for local ops after
// they are journaled and for peer ops once carried out.
func (t *tx) recordFileOp(op *journal.Op) error {
	steps, err := t.fileSteps(op)
	if err != nil {
		return err
	}
	restore := op.Seq == 0 // a version put back (a full sync's restore), not a change
	if restore {
		if steps, err = t.showingRegister(op); err != nil {
			return err
		}
	}
	for _, st := range steps {
		if restore {
			// Registers stay as they are; the file only gets its dot.
		} else if err := t.putRec(fileRegKey(st.path), &st.after); err != nil {
			return err
		}
		for _, s := range st.after.view(st.path) {
			var f fileRec
			ok, err := t.getRec(fileKey(s.Path), &f)
			if err != nil {
				return err
			}
			if !ok || (f.Stamp.Origin == s.Head.Origin && f.Seq == s.Head.Seq) {
				continue
			}
			if f.Content != s.Head.Content || f.LinkTarget != s.Head.LinkTarget {
				continue // not that version (a local change raced): its own dot stays
			}
			f.Stamp, f.Seq = s.Head.Stamp(), s.Head.Seq
			if err := t.putRec(fileKey(s.Path), &f); err != nil {
				return err
			}
		}
	}
	return nil
}

// showingRegister is the register whose view has a file at op.Path,
// unchanged: the path's own, or, for a conflict copy, the original's. A file
// no register has (from before mailfs kept versions) is shown as op says.
func (t *tx) showingRegister(op *journal.Op) ([]regStep, error) {
	path := op.Path
	for p := path; ; {
		r, err := t.fileReg(p)
		if err != nil {
			return nil, err
		}
		if slices.ContainsFunc(r.view(p), func(s ShownFile) bool { return s.Path == path }) {
			return []regStep{{path: p, before: r, after: r}}, nil
		}
		i := strings.LastIndex(p, ".mailfs-conflict-")
		if i <= 0 {
			r := fileRegRec{Heads: []FileHead{headOf(op)}}
			return []regStep{{path: path, before: r, after: r}}, nil
		}
		p = p[:i]
	}
}

// shownDots are the versions a local change at path replaces, as op.Seen:
// the file there (or, when there is none, the newest version its register
// has: a delete, or a write not carried out here) and the versions with the
// same bytes that the tree does not show twice. The user saw those bytes,
// so all of them are replaced; left behind, one would reappear as a
// conflict copy on every node.
func (t *tx) shownDots(path string, old *fileRec) (journal.VersionVector, error) {
	var shown Dot
	if old != nil && !old.Missing && old.Seq != 0 {
		shown = Dot{Origin: old.Stamp.Origin, Seq: old.Seq}
	}
	reg := path
	if !shown.IsZero() {
		if b, ok := conflictBase(path, shown); ok {
			reg = b // a conflict copy: its version is of the original's register
		}
	}
	r, err := t.fileReg(reg)
	if err != nil {
		return nil, err
	}
	if shown.IsZero() {
		if len(r.Heads) == 0 {
			return nil, nil
		}
		shown = r.newest().Dot
	}
	vv := journal.VersionVector{shown.Origin: shown.Seq}
	i := slices.IndexFunc(r.Heads, func(h FileHead) bool { return h.Dot == shown })
	if i < 0 {
		return vv, nil
	}
	// Hidden behind it: the older heads with its bytes (one per origin:
	// op.Seen holds no more).
	for _, h := range r.Heads {
		if _, taken := vv[h.Origin]; !taken && h.SameBytes(r.Heads[i]) && h.Stamp().Less(r.Heads[i].Stamp()) {
			vv[h.Origin] = h.Seq
		}
	}
	return vv, nil
}

// PlainFileChanges is what applying the peer's plain-file op changes in the
// tree: per register it touches, the files shown before and after.
func (v PeerView) PlainFileChanges(op *journal.Op) ([]FileChange, error) {
	if op.Kind != journal.FileWrite && op.Kind != journal.FileDelete {
		return nil, fmt.Errorf("index: %s is not a plain-file op", op.Kind)
	}
	steps, err := v.t.fileSteps(op)
	if op.Seq == 0 && err == nil {
		// A version put back (a full sync's restore) changes no register:
		// the tree shows again what the register of the file shows.
		steps, err = v.t.showingRegister(op)
	}
	if err != nil {
		return nil, err
	}
	out := make([]FileChange, 0, len(steps))
	for _, st := range steps {
		out = append(out, FileChange{Path: st.path, Before: st.before.view(st.path), After: st.after.view(st.path)})
	}
	return out, nil
}

// RedundantConflictCopies lists the conflict copies of the plain file at
// path that the tree no longer shows although they are there: a local
// write gave a newer version the same bytes (the user copied a conflict
// copy back, say). Only this node has them; removing them is a local
// change like any other.
func (v PeerView) RedundantConflictCopies(path string) ([]string, error) {
	r, err := v.t.fileReg(path)
	if err != nil || len(r.Heads) < 2 {
		return nil, err
	}
	shown := map[Dot]bool{}
	for _, s := range r.view(path) {
		shown[s.Head.Dot] = true
	}
	var out []string
	for _, h := range r.Heads {
		if h.Deleted || shown[h.Dot] {
			continue
		}
		c := ConflictName(path, h.Dot)
		var f fileRec
		ok, err := v.t.getRec(fileKey(c), &f)
		if err != nil {
			return nil, err
		}
		if ok && !f.Missing && f.Content == h.Content && f.LinkTarget == h.LinkTarget {
			out = append(out, c)
		}
	}
	return out, nil
}
