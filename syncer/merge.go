package syncer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"mailfs/index"
	"mailfs/journal"
)

// mergeBatch is how many messages of a merging mailbox are read at once.
const mergeBatch = 512

var errBatchFull = errors.New("batch full")

// errKeptApart: two mailboxes that are one by rule 3 could not be merged
// on disk here (one holds the other's directory), so they stay apart.
var errKeptApart = errors.New("mailboxes kept apart")

// concurrentCreate reports whether op, a peer's create, and the creates
// of mailbox m (its own, and those merged into it) include two made at
// one path by nodes that had not seen each other's: then op's mailbox and
// m are one mailbox (rule 3), wherever renames have taken them since.
func concurrentCreate(op *journal.Op, m index.Mailbox) bool { return concurrentWith(op, m.Creates()) }

// concurrentWith reports whether op, a peer's create, and one of creates
// were made by nodes that had not seen each other's.
func concurrentWith(op *journal.Op, creates []index.CreateRef) bool {
	for _, c := range creates {
		if c.Seq != 0 && !c.Stamp.Origin.IsZero() && !(c.Stamp.Origin == op.Origin && c.Seq == op.Seq) &&
			op.Seen[c.Stamp.Origin] < c.Seq && c.Seen[op.Origin] < op.Seq {
			return true
		}
	}
	return false
}

// deletedConcurrent lists the mailboxes deleted here that were created at
// p concurrently with op: op's mailbox is one with each (rule 3), as on
// the nodes that had op's create before the delete.
func (a *applier) deletedConcurrent(op *journal.Op, p string) (map[journal.GUID]index.Tombstone, error) {
	var out map[journal.GUID]index.Tombstone
	err := a.view(func(v index.PeerView) error {
		dead, err := v.DeletedCreatedAt(p)
		for g, ts := range dead {
			if g != op.Mailbox && concurrentWith(op, ts.Creates) {
				if out == nil {
					out = map[journal.GUID]index.Tombstone{}
				}
				out[g] = ts
			}
		}
		return err
	})
	return out, err
}

// deletedWith finds the mailbox deleted here that op's create went with:
// one created at p concurrently with op (so one with op's, rule 3) and
// deleted by a delete that had seen op. Of several, the highest GUID, as
// rule 3 keeps it. Its GUID may name the mailbox kept since for mail that
// delete had not seen: op's is a name of that one too, as on the deleter.
func (a *applier) deletedWith(op *journal.Op, p string) (journal.GUID, error) {
	var gone journal.GUID
	err := a.view(func(v index.PeerView) error {
		dead, err := v.TombstonesCreatedAt(p)
		for d, ts := range dead {
			if d != op.Mailbox && ts.Seen[op.Origin] >= op.Seq && concurrentWith(op, ts.Creates) &&
				string(d[:]) > string(gone[:]) {
				gone = d
			}
		}
		return err
	})
	return gone, err
}

// concurrentAt finds a live mailbox other than except that was created at
// p concurrently with op (concurrentCreate).
func (a *applier) concurrentAt(op *journal.Op, p string, except journal.GUID) (index.Mailbox, bool, error) {
	var (
		found index.Mailbox
		ok    bool
	)
	err := a.view(func(v index.PeerView) error {
		same, err := v.CreatedAt(p)
		if err != nil {
			return err
		}
		for _, m := range same {
			if m.GUID != except && concurrentCreate(op, m) {
				found, ok = m, true
				return nil
			}
		}
		return nil
	})
	return found, ok, err
}

// mergeOrder picks which of two mailboxes to merge on disk keeps its
// directory: the one that renames took away from the path they were
// created at (where the nodes that merged them before the rename had it
// renamed, and where a create that came later found it); of two renamed
// ones, the newer rename wins (rule 2).
func mergeOrder(x, y index.Mailbox) (keep, gone index.Mailbox) {
	xAway, yAway := x.CreatedPath != "" && x.Path != x.CreatedPath, y.CreatedPath != "" && y.Path != y.CreatedPath
	switch {
	case xAway && !yAway:
		return x, y
	case yAway && !xAway:
		return y, x
	case y.Renamed.Less(x.Renamed):
		return x, y
	}
	return y, x
}

// mergeFolders merges mailbox gone into mailbox keep on disk: two mailboxes
// that are one by rule 3 and both hold mail here, because the create that
// makes them one arrived after both were made. Every message file of gone
// moves into keep's directory through the mount (keeping its key, with
// keep's keyword letters; a key keep has already stays as a conflict copy
// unless the bytes are the same), then gone's emptied directory goes. The
// index moves each record with its file and retires gone when its cur/
// goes (index/merge.go); nothing is journaled: every node merges so from
// the same ops. The merged mailbox has the higher GUID, as rule 3 gives it
// on the nodes that merged the two before either held mail.
func (a *applier) mergeFolders(ctx context.Context, op *journal.Op, keep, gone index.Mailbox) error {
	nested := false
	err := a.store.Mailboxes(func(o index.Mailbox) error {
		for _, pair := range [][2]string{{gone.Path, o.Path}, {gone.Path, keep.Path}, {keep.Path, gone.Path}} {
			if o.GUID != gone.GUID && strings.HasPrefix(pair[1], pair[0]+"/") {
				nested = true
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if nested || gone.Path == "" || keep.Path == "" {
		a.log.Warn("two mailboxes that are one (created at one path concurrently) are nested here; kept apart",
			"path", gone.Path, "mailbox", gone.GUID.String(), "other_path", keep.Path, "other", keep.GUID.String())
		return errKeptApart
	}
	winner, loser := keep.GUID, gone.GUID
	if string(gone.GUID[:]) > string(keep.GUID[:]) {
		winner, loser = gone.GUID, keep.GUID
	}
	a.log.Info("merging two mailboxes created at the same path that both hold mail here (the higher GUID is kept)",
		"path", keep.Path, "merged_path", gone.Path, "kept", winner.String(), "merged", loser.String())
	a.resolved(ruleSamePathMerge)
	if _, err := a.store.Commit(ctx, index.Event{Kind: index.EvMerging, GUID: gone.GUID, NewGUID: keep.GUID, Remote: op}); err != nil {
		return fmt.Errorf("merge mailbox %s into %s: %w", gone.GUID, keep.GUID, err)
	}
	// In batches: each message moved leaves gone's records, so every
	// batch is the first ones left (a mailbox is never read whole).
	for {
		var batch []index.Message
		if err := a.store.Messages(gone.GUID, func(m index.Message) error {
			if len(batch) == mergeBatch {
				return errBatchFull
			}
			if !m.Missing { // no file to move; its record goes along at the end
				batch = append(batch, m)
			}
			return nil
		}); err != nil && !errors.Is(err, errBatchFull) {
			return err
		}
		if len(batch) == 0 {
			break
		}
		for _, m := range batch {
			if err := a.mergeMessage(ctx, op, keep, gone, m); err != nil {
				return fmt.Errorf("merge mailbox %q into %q: message %s: %w", gone.Path, keep.Path, m.Key, err)
			}
		}
	}
	if err := a.removeMerged(op, gone); err != nil {
		return fmt.Errorf("merge mailbox %q into %q: %w", gone.Path, keep.Path, err)
	}
	if err := a.applyEarlyFlags(ctx, winner, loser); err != nil {
		return err
	}
	return nil
}

// mergeMessage moves message m of merging mailbox gone into keep.
func (a *applier) mergeMessage(ctx context.Context, op *journal.Op, keep, gone index.Mailbox, m index.Message) error {
	from := path.Join(gone.Path, subName(m.Sub), m.Name)
	key := m.Key
	if other, there, err := a.message(keep.GUID, key); err != nil {
		return err
	} else if there {
		if other.Content == m.Content {
			// The same message in both (moved between them on some node):
			// one is enough.
			return a.mnt.Apply(op, func() error {
				if err := a.lockMailbox(gone.Path); err != nil {
					return err
				}
				return os.Remove(a.abs(from))
			})
		}
		key = conflictKey(key, op.Origin, op.Seq)
	}
	name, err := a.fileName(ctx, op, keep, key, m.Sub, m.Flags)
	if err != nil {
		return err
	}
	to := path.Join(keep.Path, subName(m.Sub), name)
	return a.mnt.Apply(op, func() error {
		if err := a.lockMailbox(gone.Path); err != nil {
			return err
		}
		if err := a.lockMailbox(keep.Path); err != nil {
			return err
		}
		if err := unix.Renameat2(unix.AT_FDCWD, a.abs(from), unix.AT_FDCWD, a.abs(to), unix.RENAME_NOREPLACE); err != nil {
			return &os.LinkError{Op: "rename", Old: a.abs(from), New: a.abs(to), Err: err}
		}
		return nil
	})
}

// removeMerged removes the directory of merging mailbox gone, emptied of
// mail: tmp/ with its scratch (as a folder delete does: a delivery still
// writing there fails and is retried by its MDA, unacknowledged), new/
// (mail delivered since makes the merge go on with it), then cur/, whose
// removal retires gone in the index, then Dovecot's own files and the
// directory itself.
func (a *applier) removeMerged(op *journal.Op, gone index.Mailbox) error {
	a.unlockAll() // the dotlocks go with the directory
	return a.mnt.Apply(op, func() error {
		for _, sub := range []string{"tmp", "new", "cur"} {
			d := a.abs(path.Join(gone.Path, sub))
			if sub == "tmp" {
				clearDir(d)
			}
			if err := syscall.Rmdir(d); errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
				return fmt.Errorf("%w: %s is not empty", errRace, d)
			} else if err != nil && !errors.Is(err, syscall.ENOENT) {
				return fmt.Errorf("rmdir %s: %w", d, err)
			}
		}
		dir := a.abs(gone.Path)
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("read merged mailbox directory: %w", err)
		}
		for _, e := range ents {
			if e.Type().IsRegular() && (strings.HasPrefix(e.Name(), "dovecot") || e.Name() == "maildirfolder") {
				if err := os.Remove(path.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
			}
		}
		if err := syscall.Rmdir(dir); err != nil && !errors.Is(err, syscall.ENOENT) {
			// Something of the user's own (not mail) is left: the
			// directory stays, no longer a mailbox.
			a.log.Warn("a merged mailbox's directory keeps files that are not mail; left in place", "path", dir, "err", err)
		}
		return nil
	})
}
