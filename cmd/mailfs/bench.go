package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	mfs "mailfs/fs"
	"mailfs/fs/fsbench"
	"mailfs/index"
	"mailfs/journal"
)

func runBench(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench [--messages N] [--list N] [--seed S] [--dir DIR]",
		"Run the same Maildir workloads, in one process, on the native filesystem, on a plain go-fuse\n"+
			"loopback mount and on a mailfs mount, and print a table of throughputs and ratios: delivery\n"+
			"(tmp/ write, fsync, rename into new/, fsync new/), flag renames, readdir+stat of a large\n"+
			"cur/, and reading every message. Needs /dev/fuse (run as root for direct mounts).",
		"mailfs bench --messages 10000 --list 50000", stderr)
	var cfg fsbench.Config
	fs.IntVar(&cfg.Messages, "messages", 10000, "messages delivered, renamed and read")
	fs.IntVar(&cfg.ListSize, "list", 50000, "messages in the cur/ listed by readdir+stat")
	fs.Int64Var(&cfg.Seed, "seed", 1, "seed of message sizes and bytes")
	fs.StringVar(&cfg.Dir, "dir", os.TempDir(), "where the temporary trees go (use the disk your mail lives on)")
	fs.IntVar(&cfg.Workers, "workers", 4, "concurrent deliveries")
	cacheTimeout := fs.Duration("cache-timeout", 60*time.Second, "kernel cache lifetime for mailfs and the loopback")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	cfg.EntryTimeout, cfg.AttrTimeout = *cacheTimeout, *cacheTimeout
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// Run prints its header and the table of results itself.
	_, err := fsbench.Run(ctx, cfg, benchMountMailfs(log, *cacheTimeout), stdout)
	return err
}

// benchMountMailfs mounts backing through mailfs with a throw-away index,
// after indexing what the tree already holds (as init --maildir would).
func benchMountMailfs(log *slog.Logger, cacheTimeout time.Duration) fsbench.MountFunc {
	return func(backing, mountpoint string) (func() error, error) {
		dir, err := os.MkdirTemp(filepath.Dir(backing), "mailfs-index-")
		if err != nil {
			return nil, err
		}
		var node journal.NodeID
		rand.Read(node[:])
		st, err := index.Open(dir, index.Options{Node: node, Name: "bench", Logger: log})
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		if _, err := st.Reconcile(context.Background(), backing, nil); err != nil {
			st.Close()
			os.RemoveAll(dir)
			return nil, fmt.Errorf("index %s: %w", backing, err)
		}
		srv, err := mfs.Mount(mountpoint, mfs.Options{Store: st, Root: backing, Logger: log, CacheTimeout: cacheTimeout})
		if err != nil {
			st.Close()
			os.RemoveAll(dir)
			return nil, err
		}
		return func() error {
			err := srv.Unmount()
			if cerr := st.Close(); err == nil {
				err = cerr
			}
			os.RemoveAll(dir)
			return err
		}, nil
	}
}
