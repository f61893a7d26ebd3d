package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	mfs "mailfs/fs"
	"mailfs/syncer"
)

func runMount(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("mount [--store DIR] [--listen HOST:PORT] [--sync-timeout DUR] [--full-sync-interval DUR] [--metrics HOST:PORT] MOUNTPOINT",
		"Mount the store's Maildir tree at MOUNTPOINT and serve it in the foreground until SIGINT or\n"+
			"SIGTERM, which flush, unmount and exit 0. Logs go to stderr. An absent or empty store is\n"+
			"initialised first. Changes made to the tree while unmounted are found and journaled at start.\n"+
			"With --listen (or the address saved by init) it accepts other nodes there: pairing ('mailfs pair')\n"+
			"and, from paired nodes only, replication: each node pushes its journal to every peer and applies\n"+
			"what they push, through this mount. After an unclean stop, and every --full-sync-interval, it runs\n"+
			"the full sync with every peer (as 'mailfs sync --full' does): files deleted behind mailfs's back\n"+
			"come back from a peer. With --metrics it serves Prometheus metrics over HTTP (bind it to loopback\n"+
			"or a management network). Under systemd (Type=notify) it reports ready once the mount answers.\n"+
			"Refused with exit 1 and a message: a missing mountpoint, a stale mount of a dead mailfs, one\n"+
			"already mounted, a store another mailfs has open, a store whose Maildir tree is missing.",
		"mailfs mount --store /var/lib/mailfs --listen mx1.example.net:7000 --metrics 127.0.0.1:9465 /srv/mailfs", stderr)
	store := fs.String("store", defaultStore(), "store directory")
	listen := fs.String("listen", "", "HOST:PORT for peers (overrides the one saved by init)")
	syncTimeout := fs.Duration("sync-timeout", 0, "let a delivery wait up to DUR for peers' acknowledgement (no peers: no wait)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics at http://HOST:PORT/metrics (lag, ops, conflicts, FUSE latency)")
	fullSyncInterval := fs.Duration("full-sync-interval", 24*time.Hour, "run the anti-entropy full sync with every peer this often (0: never)")
	cacheTimeout := fs.Duration("cache-timeout", 60*time.Second, "kernel entry/attribute cache lifetime")
	debug := fs.Bool("debug", false, "log every FUSE request")
	cpuProfile := fs.String("cpu-profile", os.Getenv("MAILFS_CPUPROFILE"),
		"write a pprof CPU profile of the daemon's life to FILE on a clean stop (%p: the pid; default $MAILFS_CPUPROFILE)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageErr("need exactly one MOUNTPOINT")
	}
	if *metricsAddr != "" {
		if _, _, err := net.SplitHostPort(*metricsAddr); err != nil {
			return usageErr("--metrics %q: want HOST:PORT (e.g. 127.0.0.1:9465): %v", *metricsAddr, err)
		}
	}
	if *syncTimeout < 0 {
		return usageErr("--sync-timeout must not be negative")
	}
	if *fullSyncInterval < 0 {
		return usageErr("--full-sync-interval must not be negative")
	}

	mountpoint, err := filepath.Abs(fs.Arg(0))
	if err != nil {
		return err
	}
	if err := checkMountpoint(mountpoint); err != nil {
		return err
	}
	log := newLogger(stderr)
	if *cpuProfile != "" {
		stopProfile, err := startCPUProfile(*cpuProfile, log)
		if err != nil {
			return err
		}
		defer stopProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	st, err := initStore(ctx, initOptions{store: *store}, log)
	if err != nil {
		return err
	}
	defer closeStore(st, log)
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted before mounting")
	}
	if *listen == "" {
		*listen = st.index.Listen()
	}
	var pl *peerListener
	if *listen != "" {
		var advertised string
		pl, advertised, err = startPeerListener(st, *listen, log)
		if err != nil {
			return err
		}
		defer pl.Close()
		st.listen = advertised
	}
	// The bare mountpoint must not be writable: a Dovecot started while
	// mailfs is down would otherwise create fresh empty mailboxes there.
	if err := os.Chmod(mountpoint, 0o555); err != nil {
		log.Warn("could not make the bare mountpoint read-only", "mountpoint", mountpoint, "err", err)
	}
	var mx *metrics
	var observe func(string, time.Duration)
	if *metricsAddr != "" {
		mx = newMetrics(st, log)
		observe = mx.observe
	}
	srv, err := mfs.Mount(mountpoint, mfs.Options{Store: st.index, Root: st.maildir, Logger: log,
		CacheTimeout: *cacheTimeout, Debug: *debug, ObserveRequest: observe})
	if err != nil {
		return err
	}
	st.sync = syncer.New(syncer.Config{Store: st.index, Identity: st.ident, Mount: srv, Root: st.maildir,
		StagingDir: st.paths.staging(), Logger: log, FullSyncAtStart: !st.index.WasClean(), FullSyncInterval: *fullSyncInterval})
	if err := st.sync.Start(); err != nil {
		srv.Unmount()
		return err
	}
	if pl != nil {
		pl.setSync(st.sync)
	}
	if *syncTimeout > 0 {
		srv.SetDeliveryWait(st.sync.WaitSynced, *syncTimeout)
	}
	// The syncer applies peer ops through the mount: it stops before the
	// unmount (defers run last in, first out).
	defer srv.Unmount()
	defer st.sync.Close()
	ctl, err := startControl(st, mountpoint, log)
	if err != nil {
		return err
	}
	defer ctl.Close()
	if mx != nil {
		if err := mx.serve(*metricsAddr); err != nil {
			return err
		}
		defer mx.Close()
	}
	mb, msgs := st.index.Counts()
	log.Info("mailfs ready", "mountpoint", mountpoint, "store", st.paths.Dir, "mailboxes", mb, "messages", msgs,
		"journal_seq", st.index.Seq(), "listen", orDash(st.listenAddr()))
	notifyReady(log)
	served := make(chan struct{})
	go func() {
		srv.Wait()
		close(served)
	}()
	select {
	case <-ctx.Done():
		log.Info("signal received: unmounting", "mountpoint", mountpoint)
		st.sync.Close()
		if err := srv.Unmount(); err != nil {
			return err
		}
		<-served
	case <-served:
		log.Warn("the mount went away (unmounted from outside)", "mountpoint", mountpoint)
	}
	log.Info("unmounted", "mountpoint", mountpoint, "journal_seq", st.index.Seq())
	return nil
}

// startCPUProfile starts a CPU profile written to file (a "%p" in it is
// the pid, so that the daemons of a test or a demo can share one setting);
// stop ends it. A debugging aid: where a daemon's time goes while it serves
// or replicates.
func startCPUProfile(file string, log *slog.Logger) (stop func(), err error) {
	file = strings.ReplaceAll(file, "%p", strconv.Itoa(os.Getpid()))
	f, err := os.Create(file)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile %s: %w", file, err)
	}
	log.Info("writing a CPU profile until the daemon stops", "file", file)
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			log.Error("writing the CPU profile failed", "file", file, "err", err)
		}
	}, nil
}

// checkMountpoint refuses a missing mountpoint, a non-directory, a stale
// FUSE mount of a dead daemon, and one that is already mounted.
func checkMountpoint(mp string) error {
	fi, err := os.Stat(mp)
	switch {
	case errors.Is(err, syscall.ENOTCONN):
		return staleMountError(mp)
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("mountpoint %s does not exist (create it first: mkdir -p %s)", mp, mp)
	case err != nil:
		return fmt.Errorf("mountpoint %s: %w", mp, err)
	case !fi.IsDir():
		return fmt.Errorf("mountpoint %s is not a directory", mp)
	}
	if mounted, err := isMountpoint(mp); err != nil {
		return err
	} else if mounted {
		// The kernel may answer stat from its cache after the daemon died;
		// statfs always asks the daemon, and a dead one gives ENOTCONN.
		var sfs syscall.Statfs_t
		if err := syscall.Statfs(mp, &sfs); errors.Is(err, syscall.ENOTCONN) {
			return staleMountError(mp)
		}
		return fmt.Errorf("mountpoint %s is already a mount point (is mailfs already mounted there?)", mp)
	}
	return nil
}

func staleMountError(mp string) error {
	return fmt.Errorf("mountpoint %s is a stale mount of a mailfs that died (transport endpoint not connected); "+
		"clear it with 'fusermount3 -u %s' (or 'umount -l %s' as root) and mount again", mp, mp, mp)
}

// isMountpoint reads /proc/self/mountinfo.
func isMountpoint(mp string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMount(fields[4]) == mp {
			return true, nil
		}
	}
	return false, sc.Err()
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// closeStore closes the index, but gives up after a while: badger retries
// flushing forever when its disk has died, and SIGTERM must still end the
// process. What was acknowledged is already durable; the next start
// recovers from the journal.
func closeStore(st *openedStore, log *slog.Logger) {
	done := make(chan error, 1)
	go func() { done <- st.Close() }()
	select {
	case err := <-done:
		if err != nil {
			log.Error("closing the index failed", "store", st.paths.Dir, "err", err)
		}
	case <-time.After(30 * time.Second):
		log.Error("closing the index did not finish in 30s (is its disk failing?); exiting without it",
			"store", st.paths.Dir)
	}
}
