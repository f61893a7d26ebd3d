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
	var changes []index.FileChange
	if err := a.view(func(v index.PeerView) error {
		var err error
		changes, err = v.PlainFileChanges(op)
		return err
	}); err != nil {
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

// placement puts version head at path to: the op's own bytes (staged body
// or symlink), a rename of the file showing it now (from), or a copy of a
// file with the same bytes (copyFrom: a version that had been hidden as a
// duplicate of one shown).
type placement struct {
	to, from, copyFrom string
	head               index.FileHead
	staged             string // temporary file holding the bytes, once written
}

func (a *applier) showFiles(op *journal.Op, ch index.FileChange, bodies Bodies) error {
	before := map[string]index.FileHead{}
	where := map[index.Dot]string{}
	for _, s := range ch.Before {
		before[s.Path], where[s.Head.Dot] = s.Head, s.Path
	}
	var renames, writes []*placement
	target := map[string]bool{}
	for _, s := range ch.After {
		target[s.Path] = true
		if b, ok := before[s.Path]; ok && (b.Dot == s.Head.Dot || b.SameBytes(s.Head)) {
			continue
		}
		p := &placement{to: s.Path, head: s.Head}
		if q, ok := where[s.Head.Dot]; ok {
			p.from = q
			renames = append(renames, p)
			continue
		}
		for _, b := range ch.Before {
			if b.Head.SameBytes(s.Head) {
				p.copyFrom = b.Path
			}
		}
		if s.Head.Dot != index.DotOf(op) {
			if p.copyFrom == "" {
				a.log.Warn("a version of a plain file is not here to show", "path", s.Path, "origin", s.Head.Origin.Short(), "seq", s.Head.Seq)
				continue
			}
		}
		writes = append(writes, p)
	}
	renamed := map[string]bool{}
	for _, p := range renames {
		renamed[p.from] = true
	}
	var removes []index.ShownFile
	for _, s := range ch.Before {
		if !target[s.Path] && !renamed[s.Path] {
			removes = append(removes, s)
		}
	}
	if len(renames)+len(writes)+len(removes) == 0 {
		return nil
	}
	if op.From != "" && len(writes) == 1 && writes[0].to == op.Path && writes[0].head.Dot == index.DotOf(op) {
		// A peer's rename: the source here holds the same bytes, and no
		// body travels for it.
		if a.holds(op.From, writes[0].head) {
			writes[0].copyFrom = op.From
			writes[0].from = op.From
		}
	}
	if err := a.mkdirAll(path.Dir(ch.Path)); err != nil {
		return err
	}
	if len(renames) > 0 || len(writes) > 0 {
		a.log.Debug("applying a peer's plain-file version", "op", op.String(), "renames", len(renames), "writes", len(writes), "removes", len(removes))
	}
	// Move the version leaving the path out of the way before anything
	// takes its place; stage new bytes before any file they are copied from
	// moves.
	for i := range renames {
		if renames[i].from == ch.Path {
			renames[0], renames[i] = renames[i], renames[0]
		}
	}
	return a.mnt.Apply(op, func() error {
		defer func() {
			for _, p := range writes {
				if p.staged != "" {
					os.Remove(a.abs(p.staged))
				}
			}
		}()
		for _, p := range writes {
			ok, err := a.stage(p, op, bodies)
			if err != nil {
				return err
			}
			if !ok {
				a.log.Debug("peer file write without its body; a later op carries it", "op", op.String(), "path", p.to)
			}
		}
		for _, p := range renames {
			if !a.holds(p.from, p.head) {
				a.log.Warn("a plain file changed here before a peer's version could move; kept", "path", p.from)
				continue
			}
			if err := a.clearFor(p.to, before); err != nil {
				return err
			}
			if err := os.Rename(a.abs(p.from), a.abs(p.to)); err != nil {
				return fmt.Errorf("keep version at %s: %w", p.to, err)
			}
			if p.from == ch.Path {
				delete(before, ch.Path)
			}
		}
		for _, p := range writes {
			if p.staged == "" {
				continue
			}
			if err := a.clearFor(p.to, before); err != nil {
				return err
			}
			if p.from != "" && a.holds(p.from, p.head) {
				// The peer renamed it: the source goes with the rename.
				if err := os.Rename(a.abs(p.from), a.abs(p.to)); err != nil {
					return fmt.Errorf("rename %s: %w", p.from, err)
				}
				continue
			}
			if err := os.Rename(a.abs(p.staged), a.abs(p.to)); err != nil {
				return fmt.Errorf("write %s: %w", p.to, err)
			}
			p.staged = ""
		}
		for _, s := range removes {
			if !a.holds(s.Path, s.Head) {
				continue // not that version any more: a local change, kept
			}
			if err := os.Remove(a.abs(s.Path)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove %s: %w", s.Path, err)
			}
		}
		return nil
	})
}

// holds reports whether the file at rel is version h, as the index knows
// it (its bytes: a version kept under another dot is the same file).
func (a *applier) holds(rel string, h index.FileHead) bool {
	var f index.File
	var ok bool
	if err := a.view(func(v index.PeerView) error {
		var err error
		f, ok, err = v.File(rel)
		return err
	}); err != nil || !ok {
		return false
	}
	if _, err := os.Lstat(a.abs(rel)); err != nil {
		return false
	}
	return f.Content == h.Content && f.LinkTarget == h.LinkTarget
}

// clearFor makes room at rel for a peer's version: a file there that is
// not a version the change accounts for (before) is moved to a conflict
// name of its own rather than overwritten, so no byte is dropped.
func (a *applier) clearFor(rel string, before map[string]index.FileHead) error {
	if _, err := os.Lstat(a.abs(rel)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if b, ok := before[rel]; ok && a.holds(rel, b) {
		return nil // a version this change replaces or moves
	}
	var f index.File
	var known bool
	a.view(func(v index.PeerView) error {
		var err error
		f, known, err = v.File(rel)
		return err
	})
	d := index.Dot{Origin: a.store.Node()}
	if known && !f.Stamp.Origin.IsZero() {
		d = index.Dot{Origin: f.Stamp.Origin, Seq: f.Seq}
	}
	aside := index.ConflictName(rel, d)
	a.log.Warn("a plain file a peer's version replaces is not one the index accounts for; kept", "path", rel, "kept_as", aside)
	if err := os.Rename(a.abs(rel), a.abs(aside)); err != nil {
		return fmt.Errorf("keep %s: %w", rel, err)
	}
	return nil
}

// stage writes the bytes of p into a temporary file beside its target,
// with the version's mode, its directory's owner (a copy: the source's) and
// mtime. false: the bytes are not here (no body came with the op).
func (a *applier) stage(p *placement, op *journal.Op, bodies Bodies) (bool, error) {
	dir := path.Dir(p.to)
	tmp := path.Join(dir, ".mailfs-in-"+path.Base(p.to))
	os.Remove(a.abs(tmp))
	h := p.head
	if h.LinkTarget != "" {
		if err := os.Symlink(h.LinkTarget, a.abs(tmp)); err != nil {
			return false, fmt.Errorf("stage %s: %w", p.to, err)
		}
		p.staged = tmp
		return true, nil
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
			if h.Size != 0 {
				return false, nil
			}
			body = os.DevNull
		}
	}
	src, err := os.Open(body)
	if err != nil {
		return false, fmt.Errorf("stage %s: %w", p.to, err)
	}
	defer src.Close()
	mode := os.FileMode(h.Mode & 0o7777)
	out, err := os.OpenFile(a.abs(tmp), os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return false, fmt.Errorf("stage %s: %w", p.to, err)
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
		return false, fmt.Errorf("stage %s: %w", p.to, err)
	}
	return true, nil
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
