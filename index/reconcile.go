package index

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"mailfs/journal"
	"mailfs/maildir"
)

// HashFile returns the content ID and size of the file at p, streaming it.
//
// The file is opened with O_NOATIME where the caller may (it owns the file
// or has CAP_FOWNER): mailfs's own reads must not change the atime clients
// see, or a stat cached by the kernel before the hash disagrees with one
// taken after it (posixtest FstatDeleted).
func HashFile(p string) (journal.ContentID, int64, error) {
	var id journal.ContentID
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOATIME, 0)
	if errors.Is(err, syscall.EPERM) {
		f, err = os.Open(p)
	}
	if err != nil {
		return id, 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return id, 0, fmt.Errorf("read %s: %w", p, err)
	}
	copy(id[:], h.Sum(nil))
	return id, n, nil
}

// Progress reports how far a reconcile has come.
type Progress struct {
	Files    int64
	Journal  int64 // ops journaled so far
	Elapsed  time.Duration
	Finished bool
}

// ReconcileReport summarises a reconcile pass.
type ReconcileReport struct {
	Files     int64
	Ops       int64
	Missing   int64
	Malformed int64
	Redone    int64 // renames restored to the journal's name after an unclean stop
	Elapsed   time.Duration
}

const reconcileBatch = 256

// StagedUnlinkPrefix starts the name the FUSE layer gives a file while its
// unlink is being committed: <mailbox>/tmp/.mailfs-unlink.<sub>.<name> for
// a message, a sibling .mailfs-unlink.<name> for a plain file.
const StagedUnlinkPrefix = ".mailfs-unlink."

// Reconcile brings the index in line with the Maildir tree at root: files
// and mailboxes added behind mailfs's back are journaled as adds (flag
// renames as flag changes), and what vanished is marked missing, never
// journaled as an expunge. progress (may be nil) is called every few
// thousand files. It must run while nothing else changes the tree.
func (s *Store) Reconcile(ctx context.Context, root string, progress func(Progress)) (ReconcileReport, error) {
	r := &reconciler{s: s, ctx: ctx, root: root, progress: progress, start: time.Now()}
	intents, err := s.intendedAdds()
	if err != nil {
		return r.rep, fmt.Errorf("reconcile: %w", err)
	}
	r.intents = intents
	err = r.walk("")
	if err == nil {
		err = r.flush()
	}
	if err == nil {
		err = r.findMissing()
	}
	if err == nil {
		err = r.findMissingFiles()
	}
	if err == nil {
		err = r.flush()
	}
	r.rep.Elapsed = time.Since(r.start)
	if progress != nil {
		progress(Progress{Files: r.rep.Files, Journal: r.rep.Ops, Elapsed: r.rep.Elapsed, Finished: true})
	}
	return r.rep, err
}

type reconciler struct {
	s        *Store
	ctx      context.Context
	root     string
	progress func(Progress)
	start    time.Time
	pending  []Event
	rep      ReconcileReport
	lastTick time.Time
	// intents are the peers' adds whose files may be in the tree before
	// their index commits (intent.go), by key.
	intents map[string][]*journal.Op
}

// intended returns the peer op that delivered the unknown message file at
// rel (base name key), if an apply intent names it: same key, same bytes.
func (r *reconciler) intended(rel, key string) (*journal.Op, journal.ContentID, error) {
	var id journal.ContentID
	cands := r.intents[key]
	if len(cands) == 0 {
		return nil, id, nil
	}
	id, n, err := HashFile(r.abs(rel))
	if err != nil {
		return nil, id, err
	}
	for _, op := range cands {
		if op.Content == id && op.Size == n {
			return op, id, nil
		}
	}
	return nil, id, nil
}

func (r *reconciler) add(ev Event) error {
	r.pending = append(r.pending, ev)
	if len(r.pending) >= reconcileBatch {
		return r.flush()
	}
	return nil
}

func (r *reconciler) flush() error {
	if len(r.pending) == 0 {
		return nil
	}
	ops, err := r.s.Commit(r.ctx, r.pending...)
	r.pending = r.pending[:0]
	r.rep.Ops += int64(len(ops))
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	if r.progress != nil && time.Since(r.lastTick) > 2*time.Second {
		r.lastTick = time.Now()
		r.progress(Progress{Files: r.rep.Files, Journal: r.rep.Ops, Elapsed: time.Since(r.start)})
	}
	return r.ctx.Err()
}

func (r *reconciler) abs(rel string) string { return filepath.Join(r.root, filepath.FromSlash(rel)) }

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func fileInfo(fi fs.FileInfo) FileInfo {
	st, _ := fi.Sys().(*syscall.Stat_t)
	out := FileInfo{Mode: uint32(fi.Mode().Perm()), Size: fi.Size(), Mtime: fi.ModTime().UnixNano()}
	if st != nil {
		out.Mode = st.Mode & 0o7777
	}
	return out
}

func (r *reconciler) hasher(abs string) func() (journal.ContentID, int64, error) {
	return func() (journal.ContentID, int64, error) { return HashFile(abs) }
}

// walk visits the directory rel: a mailbox's messages first, then its
// other files and subdirectories.
func (r *reconciler) walk(rel string) error {
	entries, err := os.ReadDir(r.abs(rel))
	if err != nil {
		return fmt.Errorf("reconcile: read %s: %w", r.abs(rel), err)
	}
	isMailbox := false
	for _, e := range entries {
		if e.Name() == "cur" && e.IsDir() {
			isMailbox = true
		}
	}
	if rel != "" {
		if c := maildir.Classify(rel, true); c.Kind == maildir.KindPlainDir {
			fi, err := os.Lstat(r.abs(rel))
			if err != nil {
				return err
			}
			if err := r.add(Event{Kind: EvRescan, IsDir: true, Path: rel, File: fileInfo(fi)}); err != nil {
				return err
			}
		}
	}
	if isMailbox {
		if err := r.mailbox(rel); err != nil {
			return err
		}
	}
	for _, e := range entries {
		name := e.Name()
		p := join(rel, name)
		if e.IsDir() {
			c := maildir.Classify(p, true)
			switch c.Kind {
			case maildir.KindTrash, maildir.KindScratch:
				continue
			case maildir.KindMailboxSubdir:
				continue // handled by mailbox()
			}
			if err := r.walk(p); err != nil {
				return err
			}
			continue
		}
		if strings.HasPrefix(name, StagedUnlinkPrefix) {
			if err := r.resolveStagedFile(rel, name); err != nil {
				return fmt.Errorf("reconcile: %w", err)
			}
			name = strings.TrimPrefix(name, StagedUnlinkPrefix)
			p = join(rel, name)
			if _, err := os.Lstat(r.abs(p)); err != nil {
				continue
			}
		}
		c := maildir.Classify(p, false)
		switch c.Kind {
		case maildir.KindPlainFile:
			fi, err := os.Lstat(r.abs(p))
			if err != nil {
				return err
			}
			info := fileInfo(fi)
			if fi.Mode()&fs.ModeSymlink != 0 {
				if info.LinkTarget, err = os.Readlink(r.abs(p)); err != nil {
					return err
				}
			} else if !fi.Mode().IsRegular() {
				continue
			}
			r.rep.Files++
			if err := r.add(Event{Kind: EvRescan, Path: p, File: info, Content: r.hasher(r.abs(p))}); err != nil {
				return err
			}
		case maildir.KindSubscriptions:
			data, err := os.ReadFile(r.abs(p))
			if err != nil {
				return err
			}
			if err := r.add(Event{Kind: EvWrite, Path: p, Data: data}); err != nil {
				return err
			}
		}
	}
	return nil
}

// mailbox reconciles the messages of the mailbox directory rel.
func (r *reconciler) mailbox(rel string) error {
	var guid journal.GUID
	if data, err := os.ReadFile(r.abs(join(rel, "dovecot-uidlist"))); err == nil {
		if g, ok := maildir.UidlistGUID(data); ok {
			guid = g
		}
	}
	kw, err := os.ReadFile(r.abs(join(rel, "dovecot-keywords")))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := r.add(Event{Kind: EvRescan, IsDir: true, Path: join(rel, "cur"), GUID: guid, Data: kw}); err != nil {
		return err
	}
	if err := r.add(Event{Kind: EvWrite, Path: join(rel, "dovecot-keywords"), Data: kw}); err != nil {
		return err
	}
	// The mailbox exists in the index from here on; load what it knows
	// (names only) so files it already has cost no transaction at all.
	if err := r.flush(); err != nil {
		return err
	}
	mb, ok, err := r.s.MailboxByPath(rel)
	if err != nil || !ok {
		return err
	}
	type known struct {
		name    string
		sub     journal.Sub
		missing bool
		seen    bool
		arrived string
		size    int64
	}
	index := map[string]*known{}
	if err := r.s.Messages(mb.GUID, func(m Message) error {
		index[m.Key] = &known{name: m.Name, sub: m.Sub, missing: m.Missing, arrived: m.Arrived, size: m.Size}
		return nil
	}); err != nil {
		return err
	}
	// Unlinks cut short by a crash: restore the file if its expunge was
	// never journaled (the unlink never returned success), else finish it.
	if err := r.resolveStagedMessages(rel, mb.GUID, func(key string) bool { return index[key] != nil }); err != nil {
		return err
	}
	for _, sub := range []string{"new", "cur"} {
		dir := join(rel, sub)
		entries, err := os.ReadDir(r.abs(dir))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reconcile: read %s: %w", r.abs(dir), err)
		}
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			name := e.Name()
			parsed, err := maildir.ParseName(name)
			if err != nil {
				r.rep.Malformed++
				r.s.log.Warn("reconcile: skipping a file whose name is not a Maildir message name",
					"path", r.abs(join(dir, name)), "err", err)
				continue
			}
			r.rep.Files++
			k := index[parsed.Base]
			if k != nil {
				k.seen = true
				if k.name == name && k.sub == subOf(sub) && !k.missing {
					continue
				}
				if !r.s.wasClean && !k.missing {
					// After a crash or power loss the journal holds only
					// acknowledged ops: a name on disk that differs is a
					// rename that was acknowledged but not yet on disk, or
					// one never acknowledged. Either way the journal wins.
					done, err := r.redoRename(join(dir, name), join(join(rel, k.sub.String()), k.name))
					if err != nil {
						return err
					}
					if done {
						continue
					}
				}
			} else if dead, err := r.s.Expunged(mb.GUID, parsed.Base); err != nil {
				return err
			} else if dead {
				// An acknowledged expunge whose unlink did not reach the disk:
				// finish it rather than bring the message back. The file is
				// kept in tmp/ (scratch) so no byte is destroyed here.
				if err := r.retire(rel, join(dir, name)); err != nil {
					return err
				}
				continue
			}
			ev := Event{Kind: EvRescan, Path: join(dir, name), Content: r.hasher(r.abs(join(dir, name)))}
			if fi, err := e.Info(); err == nil {
				ev.File = fileInfo(fi)
			}
			if k == nil {
				op, id, err := r.intended(join(dir, name), parsed.Base)
				if err != nil {
					return fmt.Errorf("reconcile: %w", err)
				}
				if op != nil {
					// Delivered by the applier for a peer whose segment was
					// cut short by the crash: the peer's add, not a local one
					// (no echo); the peer sends the segment again.
					r.s.log.Info("reconcile: a message applied for a peer before a crash is recorded as the peer's",
						"path", r.abs(join(dir, name)), "origin", op.Origin.Short(), "seq", op.Seq)
					ev.Remote, ev.File.Content, ev.File.Size = op, id, op.Size
				}
			}
			if err := r.add(ev); err != nil {
				return err
			}
		}
	}
	// Messages the index knows that are not on disk any more: missing.
	for _, k := range index {
		if k.seen || k.missing {
			continue
		}
		if !r.s.wasClean && k.arrived != "" {
			// An acknowledged delivery whose rename out of tmp/ did not
			// reach the disk before a crash: redo it.
			if fi, err := os.Lstat(r.abs(k.arrived)); err == nil && fi.Mode().IsRegular() && fi.Size() == k.size {
				if _, err := r.redoRename(k.arrived, join(join(rel, k.sub.String()), k.name)); err != nil {
					return err
				}
				continue
			}
		}
		r.rep.Missing++
		r.s.log.Warn("reconcile: message vanished behind mailfs's back; marked missing, not expunged",
			"mailbox", rel, "name", k.name)
		if err := r.add(Event{Kind: EvMissing, Path: path.Join(rel, k.sub.String(), k.name)}); err != nil {
			return err
		}
	}
	return nil
}

func (r *reconciler) resolveStagedMessages(mailbox string, g journal.GUID, known func(key string) bool) error {
	tmp := join(mailbox, "tmp")
	entries, err := os.ReadDir(r.abs(tmp))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reconcile: read %s: %w", r.abs(tmp), err)
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), StagedUnlinkPrefix)
		if !ok {
			continue
		}
		sub, name, ok := strings.Cut(rest, ".")
		parsed, err := maildir.ParseName(name)
		if !ok || (sub != "new" && sub != "cur") || err != nil {
			continue
		}
		staged := join(tmp, e.Name())
		dead, err := r.s.Expunged(g, parsed.Base)
		if err != nil {
			return err
		}
		if dead && !known(parsed.Base) {
			r.s.log.Info("reconcile: removing a file whose expunge was journaled before a crash", "path", r.abs(staged))
			if err := os.Remove(r.abs(staged)); err != nil {
				return fmt.Errorf("reconcile: %w", err)
			}
			continue
		}
		orig := join(join(mailbox, sub), name)
		r.s.log.Warn("reconcile: restoring a message whose unlink was cut short before it was journaled",
			"path", r.abs(orig))
		if err := os.Rename(r.abs(staged), r.abs(orig)); err != nil {
			return fmt.Errorf("reconcile: restore %s: %w", r.abs(orig), err)
		}
	}
	return nil
}

// resolveStagedFile restores or removes a plain file's staged unlink.
func (r *reconciler) resolveStagedFile(dir, stagedName string) error {
	orig := join(dir, strings.TrimPrefix(stagedName, StagedUnlinkPrefix))
	staged := join(dir, stagedName)
	known, err := r.s.FileKnown(orig)
	if err != nil {
		return err
	}
	if !known {
		return os.Remove(r.abs(staged))
	}
	r.s.log.Warn("reconcile: restoring a file whose unlink was cut short before it was journaled", "path", r.abs(orig))
	return os.Rename(r.abs(staged), r.abs(orig))
}

// redoRename renames the file at rel to the name the journal knows, unless
// something already occupies that name.
func (r *reconciler) redoRename(rel, want string) (bool, error) {
	if _, err := os.Lstat(r.abs(want)); err == nil {
		return false, nil
	}
	r.s.log.Warn("reconcile: after an unclean stop, restoring the name the journal acknowledged",
		"path", r.abs(rel), "restored", r.abs(want))
	if err := os.Rename(r.abs(rel), r.abs(want)); err != nil {
		return false, fmt.Errorf("reconcile: rename %s to %s: %w", r.abs(rel), r.abs(want), err)
	}
	r.rep.Redone++
	return true, nil
}

// retire moves a file whose message was expunged into its mailbox's tmp/.
func (r *reconciler) retire(mailbox, rel string) error {
	dst := r.abs(join(mailbox, "tmp/.mailfs-expunged."+path.Base(rel)))
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	r.s.log.Warn("reconcile: finishing an expunge that had not reached the disk",
		"path", r.abs(rel), "moved_to", dst)
	return os.Rename(r.abs(rel), dst)
}

// findMissing marks mailboxes whose directory vanished.
func (r *reconciler) findMissing() error {
	var gone []string
	err := r.s.Mailboxes(func(mb Mailbox) error {
		if mb.Missing {
			return nil
		}
		if fi, err := os.Stat(r.abs(join(mb.Path, "cur"))); err != nil || !fi.IsDir() {
			gone = append(gone, mb.Path)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, p := range gone {
		r.rep.Missing++
		r.s.log.Warn("reconcile: mailbox directory vanished behind mailfs's back; marked missing, not deleted", "mailbox", p)
		if err := r.add(Event{Kind: EvMissing, IsDir: true, Path: p}); err != nil {
			return err
		}
	}
	return nil
}
