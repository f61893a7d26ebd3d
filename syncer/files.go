package syncer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"syscall"
	"time"

	"mailfs/index"
	"mailfs/journal"
)

// plainFile carries out a peer's FileWrite or FileDelete (design §6 rule
// 10). The index decides what the tree shows afterwards (the newest version
// at the path, every concurrent older one at its conflict name, see
// index/files.go); this makes the tree show it, through the mount, and then
// records the op's versions. Nothing here is journaled (rule 11): every
// node derives the same files from the same ops.
func (a *applier) plainFile(ctx context.Context, op *journal.Op, bodies Bodies) error {
	changes, err := a.fileChanges(op)
	if err != nil {
		return err
	}
	// The op's own path first: a rename's source may be what it copies.
	slices.SortStableFunc(changes, func(x, y index.FileChange) int {
		return cmpBool(y.Path == op.Path, x.Path == op.Path)
	})
	for _, ch := range changes {
		if err := a.showFiles(op, ch, bodies); err != nil {
			return fmt.Errorf("plain file %q: %w", ch.Path, err)
		}
	}
	return a.meta(ctx, op)
}

func (a *applier) fileChanges(op *journal.Op) ([]index.FileChange, error) {
	var changes []index.FileChange
	err := a.view(func(v index.PeerView) error {
		var err error
		changes, err = v.PlainFileChanges(op)
		return err
	})
	return changes, err
}

// stillPlanned reports errRace when a local change made since ch was
// computed changed what the register shows: the op is decided again.
func (a *applier) stillPlanned(op *journal.Op, ch index.FileChange) error {
	fresh, err := a.fileChanges(op)
	if err != nil {
		return err
	}
	for _, f := range fresh {
		if f.Path == ch.Path && slices.EqualFunc(f.Before, ch.Before, func(x, y index.ShownFile) bool {
			return x.Path == y.Path && x.Head.Dot == y.Head.Dot
		}) {
			return nil
		}
	}
	return fmt.Errorf("%w: plain file %s changed here meanwhile", errRace, ch.Path)
}

// placement puts version head at path to: a rename of a file here that
// holds its bytes (from), a copy of one (copyFrom), or the op's staged body.
type placement struct {
	to, from, copyFrom string
	head               index.FileHead
	staged             string // temporary file holding the bytes, once written
}

// showFiles makes the files of one register what ch.After says, from what
// the tree holds now (not what the register showed: a try cut short by a
// crash or a racing local change left the tree somewhere in between).
func (a *applier) showFiles(op *journal.Op, ch index.FileChange, bodies Bodies) error {
	// A write to a conflict copy puts its version there, in the copy's own
	// register: the original's register leaves that file alone.
	foreign := ""
	if op.Kind == journal.FileWrite && op.Path != ch.Path {
		foreign = op.Path
	}
	candidates := []string{}
	for _, s := range append(slices.Clone(ch.Before), ch.After...) {
		if !slices.Contains(candidates, s.Path) && s.Path != foreign {
			candidates = append(candidates, s.Path)
		}
	}
	if !slices.Contains(candidates, ch.Path) {
		candidates = append(candidates, ch.Path)
	}
	actual := map[string]index.File{}
	for _, p := range candidates {
		if f, ok := a.fileAt(p); ok {
			actual[p] = f
		}
	}
	bytesOf := func(f index.File, h index.FileHead) bool {
		return f.Content == h.Content && f.LinkTarget == h.LinkTarget
	}
	desired := map[string]index.FileHead{}
	for _, s := range ch.After {
		desired[s.Path] = s.Head
	}
	var renames, writes []*placement
	source := map[string]bool{}   // actual files renamed away
	unplaced := map[string]bool{} // desired, but the bytes are not here
	for _, s := range ch.After {
		if f, ok := actual[s.Path]; ok && bytesOf(f, s.Head) {
			continue
		}
		p := &placement{to: s.Path, head: s.Head}
		for _, q := range candidates {
			f, ok := actual[q]
			if !ok || q == s.Path || !bytesOf(f, s.Head) {
				continue
			}
			if d, keep := desired[q]; (!keep || !bytesOf(f, d)) && !source[q] {
				p.from = q
			} else if p.copyFrom == "" {
				p.copyFrom = q
			}
		}
		if p.from != "" {
			source[p.from] = true
			renames = append(renames, p)
			continue
		}
		if p.copyFrom == "" && op.From != "" {
			// A peer's rename: the source here may hold the bytes, and no
			// body travels for it.
			if f, ok := a.fileAt(op.From); ok && bytesOf(f, s.Head) {
				p.copyFrom = op.From
			}
		}
		if _, ok := bodies.Body(s.Head.Content); !ok && p.copyFrom == "" && s.Head.LinkTarget == "" && s.Head.Size != 0 {
			if s.Head.Dot == index.DotOf(op) {
				// The peer no longer had the bytes when it sent the op: a
				// later op of it replaced them and says what comes instead.
				a.log.Debug("peer file write without its body; a later op carries it", "op", op.String(), "path", s.Path)
			} else {
				a.log.Warn("a version of a plain file is not here to show", "path", s.Path, "origin", s.Head.Origin.Short(), "seq", s.Head.Seq)
			}
			unplaced[s.Path] = true
			continue
		}
		writes = append(writes, p)
	}
	before := map[string]index.FileHead{}
	for _, s := range ch.Before {
		before[s.Path] = s.Head
	}
	var removes []string
	for _, q := range candidates {
		f, ok := actual[q]
		if !ok || source[q] {
			continue
		}
		if d, keep := desired[q]; keep && (!unplaced[q] || bytesOf(f, d)) {
			continue
		}
		// Remove only a version the register accounts for: one it showed
		// there, the bytes of one of its versions at its own path, or there
		// a version it no longer has (replaced, its successor's bytes not
		// here yet).
		if b, ok := before[q]; ok && bytesOf(f, b) {
			removes = append(removes, q)
			continue
		}
		if q == ch.Path && (f.Seq != 0 || slices.ContainsFunc(append(slices.Clone(ch.Before), ch.After...),
			func(s index.ShownFile) bool { return bytesOf(f, s.Head) })) {
			removes = append(removes, q)
		}
	}
	if len(renames)+len(writes)+len(removes) == 0 {
		return nil
	}
	if err := a.mkdirAll(path.Dir(ch.Path)); err != nil {
		return err
	}
	a.log.Debug("applying a peer's plain-file version", "op", op.String(), "register", ch.Path, "renames", len(renames),
		"writes", len(writes), "removes", len(removes))
	return a.mnt.Apply(op, func() error {
		if err := a.stillPlanned(op, ch); err != nil {
			return err
		}
		defer func() {
			for _, p := range writes {
				if p.staged != "" {
					os.Remove(a.abs(p.staged))
				}
			}
		}()
		// Bytes are staged before any file they are copied from moves.
		for _, p := range writes {
			if err := a.stage(p, bodies); err != nil {
				return err
			}
		}
		// A file leaving a path goes before another takes it.
		for len(renames) > 0 {
			i := slices.IndexFunc(renames, func(p *placement) bool {
				return !slices.ContainsFunc(renames, func(o *placement) bool { return o != p && o.from == p.to })
			})
			if i < 0 {
				i = 0
			}
			p := renames[i]
			renames = slices.Delete(renames, i, i+1)
			if err := a.clearFor(op, p.to, before, source); err != nil {
				return err
			}
			if err := os.Rename(a.abs(p.from), a.abs(p.to)); err != nil {
				return fmt.Errorf("keep version at %s: %w", p.to, err)
			}
		}
		for _, p := range writes {
			if p.staged == "" {
				continue
			}
			if err := a.clearFor(op, p.to, before, source); err != nil {
				return err
			}
			if err := os.Rename(a.abs(p.staged), a.abs(p.to)); err != nil {
				return fmt.Errorf("write %s: %w", p.to, err)
			}
			p.staged = ""
		}
		for _, q := range removes {
			if err := a.take(q, actual[q].Content, actual[q].LinkTarget); err != nil {
				return err
			}
		}
		// A local change that slipped in meanwhile: decide again, from
		// what the tree holds now.
		return a.stillPlanned(op, ch)
	})
}

// fileAt is the plain file at rel as the index knows it, if it is there.
func (a *applier) fileAt(rel string) (index.File, bool) {
	var f index.File
	var ok bool
	if err := a.view(func(v index.PeerView) error {
		var err error
		f, ok, err = v.File(rel)
		return err
	}); err != nil || !ok {
		return index.File{}, false
	}
	if _, err := os.Lstat(a.abs(rel)); err != nil {
		return index.File{}, false
	}
	return f, true
}

// clearFor makes room at rel for a peer's version, never overwriting a file
// the change does not account for (before, or the version the op
// replaced): one changed or being written here since the plan makes the op
// be decided again (errRace); one from before mailfs kept versions is moved
// to a conflict name of its own.
func (a *applier) clearFor(op *journal.Op, rel string, before map[string]index.FileHead, moving map[string]bool) error {
	if _, err := os.Lstat(a.abs(rel)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if b, ok := before[rel]; ok && !moving[rel] {
		return a.take(rel, b.Content, b.LinkTarget) // a version this change replaces
	}
	f, known := a.fileAt(rel)
	if known && f.Seq != 0 {
		if slices.Contains(index.ReplacedDots(op), index.Dot{Origin: f.Stamp.Origin, Seq: f.Seq}) {
			return a.take(rel, f.Content, f.LinkTarget) // the very version the peer's op replaced
		}
		return fmt.Errorf("%w: %s changed here while a peer's version was planned", errRace, rel)
	}
	if !known {
		// Being written here (the index learns of a write at close): the
		// op waits for it rather than overwriting it.
		return fmt.Errorf("%w: %s is being written here", errRace, rel)
	}
	// A file from before mailfs kept versions of plain files.
	d := index.Dot{Origin: a.store.Node()}
	if !f.Stamp.Origin.IsZero() {
		d.Origin = f.Stamp.Origin
	}
	aside := index.ConflictName(rel, d)
	a.log.Warn("a plain file a peer's version replaces is not one the index accounts for; kept", "path", rel, "kept_as", aside)
	if err := os.Rename(a.abs(rel), a.abs(aside)); err != nil {
		return fmt.Errorf("keep %s: %w", rel, err)
	}
	return nil
}

// take removes the file at rel if it holds the given bytes. It moves the
// file aside first and checks the bytes it moved, so a local write that
// committed since the plan (the index said the old bytes) is put back, not
// lost, and the op is decided again.
func (a *applier) take(rel string, content journal.ContentID, link string) error {
	grab := path.Join(path.Dir(rel), ".mailfs-out-"+path.Base(rel))
	os.Remove(a.abs(grab))
	if err := os.Rename(a.abs(rel), a.abs(grab)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("replace %s: %w", rel, err)
	}
	same := false
	if link != "" {
		t, err := os.Readlink(a.abs(grab))
		same = err == nil && t == link
	} else if id, _, err := index.HashFile(a.abs(grab)); err == nil {
		same = id == content
	}
	if !same {
		if err := os.Rename(a.abs(grab), a.abs(rel)); err != nil {
			return fmt.Errorf("put back %s: %w", rel, err)
		}
		return fmt.Errorf("%w: %s changed here meanwhile", errRace, rel)
	}
	if err := os.Remove(a.abs(grab)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replace %s: %w", rel, err)
	}
	return nil
}

// stage writes the bytes of p into a temporary file beside its target,
// with the version's mode, its directory's owner (a copy: the source's) and
// mtime.
func (a *applier) stage(p *placement, bodies Bodies) error {
	dir := path.Dir(p.to)
	tmp := path.Join(dir, ".mailfs-in-"+path.Base(p.to))
	os.Remove(a.abs(tmp))
	h := p.head
	if h.LinkTarget != "" {
		if err := os.Symlink(h.LinkTarget, a.abs(tmp)); err != nil {
			return fmt.Errorf("stage %s: %w", p.to, err)
		}
		p.staged = tmp
		return nil
	}
	var body string
	uid, gid, _ := a.owner(dir)
	switch {
	case p.copyFrom != "":
		body = a.abs(p.copyFrom)
		var st syscall.Stat_t
		if err := syscall.Lstat(body, &st); err == nil {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	default:
		var ok bool
		if body, ok = bodies.Body(h.Content); !ok {
			body = os.DevNull // empty (showFiles left out versions without their bytes)
		}
	}
	src, err := os.Open(body)
	if err != nil {
		return fmt.Errorf("stage %s: %w", p.to, err)
	}
	defer src.Close()
	mode := os.FileMode(h.Mode & 0o7777)
	out, err := os.OpenFile(a.abs(tmp), os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("stage %s: %w", p.to, err)
	}
	p.staged = tmp
	_, err = io.Copy(out, src)
	if err == nil {
		err = out.Chmod(mode)
	}
	if err == nil && uid >= 0 {
		err = out.Chown(uid, gid)
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && h.Mtime != 0 {
		t := time.Unix(0, h.Mtime)
		err = os.Chtimes(a.abs(tmp), t, t)
	}
	if err != nil {
		return fmt.Errorf("stage %s: %w", p.to, err)
	}
	return nil
}

func cmpBool(x, y bool) int {
	switch {
	case x == y:
		return 0
	case x:
		return 1
	}
	return -1
}

// tidyLoop removes the conflict copies that local writes made redundant
// (index.PeerView.RedundantConflictCopies): every node that applies such a
// write drops the copy, so this node does too, as a local delete that
// replicates like any other.
func (s *Syncer) tidyLoop() {
	defer s.wg.Done()
	ch := make(chan uint64, 1)
	s.cfg.Store.Subscribe(ch)
	last := s.cfg.Store.Seq()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-ch:
		}
		seq := s.cfg.Store.Seq()
		var paths []string
		err := s.cfg.Store.Ops(last+1, func(op *journal.Op) error {
			if op.Kind == journal.FileWrite && !slices.Contains(paths, op.Path) {
				paths = append(paths, op.Path)
			}
			return nil
		})
		if err != nil {
			s.log.Warn("reading the journal for redundant conflict copies failed", "err", err)
			continue
		}
		last = seq
		for _, p := range paths {
			s.removeRedundantCopies(p)
		}
	}
}

func (s *Syncer) removeRedundantCopies(p string) {
	s.applyMu.Lock() // not while a peer's op is being carried out
	defer s.applyMu.Unlock()
	var copies []string
	if err := s.cfg.Store.View(func(v index.PeerView) error {
		var err error
		copies, err = v.RedundantConflictCopies(p)
		return err
	}); err != nil {
		s.log.Warn("finding redundant conflict copies failed", "path", p, "err", err)
		return
	}
	for _, c := range copies {
		s.log.Info("removing a conflict copy whose bytes a local write put back at its path", "path", c)
		if err := os.Remove(s.applier.abs(c)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("removing a redundant conflict copy failed", "path", c, "err", err)
		}
	}
}
