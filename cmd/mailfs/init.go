package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/uuid"

	"mailfs/index"
	"mailfs/maildir"
	"mailfs/peers"
	"mailfs/syncer"
)

type initOptions struct {
	store   string
	name    string
	listen  string
	maildir string
}

func runInit(args []string, stdout, stderr io.Writer) error {
	var o initOptions
	fs := newFlags("init [--store DIR] [--name NAME] [--listen HOST:PORT] [--maildir DIR]",
		"Create a mailfs store: its marker, node identity and index. With --maildir DIR the Maildir tree\n"+
			"stays at DIR: a DIR that already holds mail is adopted, indexed in place (no copy) with Dovecot's\n"+
			"mailbox GUIDs kept from dovecot-uidlist; it is counted first, then progress (count, percent, rate,\n"+
			"ETA) is logged. Ctrl-C stops it after the batch in flight (exit 75); running the same init again\n"+
			"resumes without indexing anything twice, also after kill -9. Without --maildir the tree is\n"+
			"STORE/maildir. Exit codes: 0 done; 75 interrupted (run again); 1 refused or failed (the message\n"+
			"names the store or path).",
		"mailfs init --store /var/lib/mailfs --name mx1 --maildir /var/vmail", stderr)
	fs.StringVar(&o.store, "store", defaultStore(), "store directory (default $MAILFS_STORE, /var/lib/mailfs for root)")
	fs.StringVar(&o.name, "name", "", "human name of this node (default: the host name)")
	fs.StringVar(&o.listen, "listen", "", "HOST:PORT peers connect to (saved; mount --listen overrides)")
	fs.StringVar(&o.maildir, "maildir", "", "keep the Maildir tree at DIR instead of STORE/maildir")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	log := newLogger(stderr)
	// SIGINT/SIGTERM stop the indexing after the batch in flight; every
	// batch is durable, so running init again resumes where it stopped.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	st, err := initStore(ctx, o, log)
	if err != nil {
		if ctx.Err() != nil {
			return &exitError{code: exitTemporary, err: fmt.Errorf("interrupted: %w; what was indexed is kept, run the same init again to resume", err)}
		}
		return err
	}
	defer st.Close()
	mb, msgs := st.index.Counts()
	fmt.Fprintf(stdout, "store    %s\nmaildir  %s\nnode     %s (%s)\nmailboxes %d, messages %d, journal seq %d\n",
		st.paths.Dir, st.maildir, peers.FormatID(st.index.Node()), st.index.Name(), mb, msgs, st.index.Seq())
	return nil
}

// openedStore is a store with its index open.
type openedStore struct {
	paths   storePaths
	marker  *marker
	maildir string
	ident   *peers.Identity
	index   *index.Store
	// listen is the peer address in use while mounted (mount --listen
	// overrides init's); empty: the one saved in the index.
	listen string
	// sync replicates while mounted; nil otherwise.
	sync *syncer.Syncer
}

func (s *openedStore) Close() error { return s.index.Close() }

// listenAddr is the address peers dial this node at ("" for none).
func (s *openedStore) listenAddr() string {
	if s.listen != "" {
		return s.listen
	}
	return s.index.Listen()
}

// initStore creates the store when needed, opens it and reconciles the
// Maildir tree with the index.
func initStore(ctx context.Context, o initOptions, log *slog.Logger) (*openedStore, error) {
	dir, err := filepath.Abs(o.store)
	if err != nil {
		return nil, err
	}
	paths := storePaths{Dir: dir}
	m, err := paths.readMarker()
	switch {
	case errors.Is(err, errNoMarker):
		empty, err := isEmptyDir(dir)
		if err != nil {
			return nil, fmt.Errorf("store %s: %w", dir, err)
		}
		if !empty {
			return nil, fmt.Errorf("store %s is not empty and has no %s marker: refusing to use it "+
				"(choose a new or empty directory, or restore the marker if this is a damaged mailfs store)", dir, markerName)
		}
		m = &marker{StoreID: uuid.NewString(), Format: markerFormat}
		if o.maildir != "" {
			if m.Maildir, err = filepath.Abs(o.maildir); err != nil {
				return nil, err
			}
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create store %s: %w", dir, err)
		}
		maildirPath := paths.maildir(m)
		if err := os.MkdirAll(maildirPath, 0o755); err != nil {
			return nil, fmt.Errorf("create maildir %s: %w", maildirPath, err)
		}
		if err := writeFileDurably(paths.marker(), mustJSON(m), 0o644); err != nil {
			return nil, fmt.Errorf("write store marker %s: %w", paths.marker(), err)
		}
		log.Info("store created", "store", dir, "maildir", maildirPath)
	case err != nil:
		return nil, err
	default:
		if o.maildir != "" {
			want, _ := filepath.Abs(o.maildir)
			if want != paths.maildir(m) {
				return nil, fmt.Errorf("store %s already keeps its Maildir tree at %s, not %s", dir, paths.maildir(m), want)
			}
		}
	}
	maildirPath := paths.maildir(m)
	if fi, err := os.Stat(maildirPath); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("store %s: Maildir tree %s is missing (was it unmounted or moved?); refusing to start rather than treat every message as deleted", dir, maildirPath)
	}
	ident, err := peers.LoadOrCreateIdentity(paths.identity())
	if err != nil {
		return nil, fmt.Errorf("store %s: node identity: %w", dir, err)
	}
	name := o.name
	if name == "" {
		name, _ = os.Hostname()
	}
	ix, err := index.Open(paths.index(), index.Options{Node: ident.ID, Name: name, Listen: o.listen, Logger: log})
	if err != nil {
		return nil, explainIndexOpen(err, dir)
	}
	st := &openedStore{paths: paths, marker: m, maildir: maildirPath, ident: ident, index: ix}
	start := time.Now()
	var total int64
	if o.maildir != "" {
		// Adoption: count first (names only, no stat), so progress can say
		// how far it is and when it will be done.
		if total, err = countTree(ctx, maildirPath); err != nil {
			ix.Close()
			return nil, err
		}
		log.Info("Maildir tree counted", "maildir", maildirPath, "files", total, "elapsed", time.Since(start).Round(time.Millisecond))
	}
	rep, err := ix.Reconcile(ctx, maildirPath, func(p index.Progress) {
		if p.Finished {
			return
		}
		rate := float64(p.Files) / p.Elapsed.Seconds()
		args := []any{"files", p.Files, "rate_per_s", int(rate), "journaled", p.Journal}
		if total > 0 {
			pct := min(100, float64(p.Files)*100/float64(total))
			args = append(args, "total", total, "percent", fmt.Sprintf("%.1f", pct))
			if rate > 0 && total > p.Files {
				args = append(args, "eta", (time.Duration(float64(total-p.Files)/rate) * time.Second).Round(time.Second))
			}
		}
		log.Info("indexing Maildir tree", args...)
	})
	if err != nil {
		ix.Close()
		return nil, fmt.Errorf("index %s: %w", maildirPath, err)
	}
	log.Info("Maildir tree indexed", "files", rep.Files, "journaled", rep.Ops, "missing", rep.Missing,
		"malformed_names", rep.Malformed, "elapsed", time.Since(start).Round(time.Millisecond))
	return st, nil
}

// countTree counts the files of the Maildir tree at root that indexing
// counts (messages and plain files), from directory entries alone.
func countTree(ctx context.Context, root string) (int64, error) {
	var n int64
	err := filepath.WalkDir(root, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("count %s: %w", p, err)
		}
		if d.IsDir() {
			if d.Name() == "tmp" && p != root {
				return filepath.SkipDir
			}
			return ctx.Err()
		}
		rel, _ := filepath.Rel(root, p)
		switch maildir.Classify(filepath.ToSlash(rel), false).Kind {
		case maildir.KindMessage, maildir.KindPlainFile:
			n++
		}
		return nil
	})
	return n, err
}

func explainIndexOpen(err error, store string) error {
	if errors.Is(err, index.ErrFormat) {
		return fmt.Errorf("store %s: %w (upgrade mailfs)", store, err)
	}
	msg := err.Error()
	if containsAny(msg, "Cannot acquire directory lock", "resource temporarily unavailable") {
		return fmt.Errorf("store %s is in use by another mailfs process (is it already mounted?): %w", store, err)
	}
	return fmt.Errorf("store %s: %w", store, err)
}
