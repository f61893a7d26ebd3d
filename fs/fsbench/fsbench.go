// Package fsbench runs the same Maildir workloads, in one process and one
// run, against three targets and reports their throughput side by side:
//
//   - native: a plain directory on the local file system;
//   - loopback: a plain go-fuse loopback mount (fs.NewLoopbackRoot) of another
//     directory, with the kernel entry and attribute timeouts of the Config;
//   - mailfs: a directory mounted by a caller-supplied MountFunc.
//
// Ratios between targets measured in the same run are what design.md §10
// sets its targets on; absolute numbers depend on the machine.
//
// Workloads (see Run): deliver, flags, readdir+stat (cold and warm) and read.
// Deliver, flags and read are split into rounds (readdir+stat into chunks of
// entries), and the order of the targets is permuted from round to round,
// so slow drift of the machine (page cache, ext4 journal, GC, CPU
// frequency) is spread evenly over all targets.
package fsbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Target names, in the order they are reported.
const (
	TargetNative   = "native"
	TargetLoopback = "loopback"
	TargetMailfs   = "mailfs"
)

// Workload names, in the order they are reported.
const (
	WorkDeliver  = "deliver"
	WorkFlags    = "flags"
	WorkFlagsPar = "flags, 4 clients"
	WorkDeliverN = "deliver, 4 mailboxes"
	WorkFlagsN   = "flags, 4 mailboxes"
	WorkListCold = "readdir+stat cold"
	WorkListWarm = "readdir+stat warm"
	WorkRead     = "read"
)

// Targets lists the target names in report order.
var Targets = []string{TargetNative, TargetLoopback, TargetMailfs}

// Workloads lists the workload names in report order.
var Workloads = []string{WorkDeliver, WorkDeliverN, WorkFlags, WorkFlagsPar, WorkFlagsN, WorkListCold, WorkListWarm, WorkRead}

// Mailbox paths relative to the root of every target. The benchmark
// mailbox receives deliveries; the list mailbox holds the pre-filled cur/.
const (
	benchBox = "example.com/bench/Maildir"
	listBox  = "example.com/list/Maildir"
)

// spreadBoxes is how many users' mailboxes the "4 mailboxes" workloads
// spread over: one per concurrent client, as an MTA delivering to several
// recipients at once (the kernel serialises renames within one directory,
// so only changes to different mailboxes can share a journal commit).
const spreadBoxes = 4

func spreadBox(i int) string { return fmt.Sprintf("example.com/user%d/Maildir", i%spreadBoxes) }

const (
	_ = iota
)

// MountFunc mounts backingDir (a Maildir tree that may already hold mail)
// on mountpoint, both existing directories, and returns a function that
// unmounts it. Once it returns, every file in backingDir must be visible
// through mountpoint. unmount is called exactly once by Run, after all
// files under mountpoint are closed.
type MountFunc func(backingDir, mountpoint string) (unmount func() error, err error)

// Config sizes a run. Zero fields take their defaults.
type Config struct {
	Messages int    // deliveries and flag renames; default 10000
	ListSize int    // messages in the cur/ for the readdir+stat workload; default 50000
	Seed     int64  // seeds message sizes, names and bytes
	Dir      string // where the temporary directories go; default os.TempDir()

	// EntryTimeout and AttrTimeout are the kernel cache timeouts of the
	// loopback mount; pass the ones mailfs mounts with. Default 60s.
	EntryTimeout, AttrTimeout time.Duration

	Workers int // concurrent delivery goroutines; default 4
	Rounds  int // rounds that deliver, flags and read are split into; default 30
}

func (c Config) withDefaults() (Config, error) {
	if c.Messages < 0 || c.ListSize < 0 || c.Workers < 0 || c.Rounds < 0 ||
		c.EntryTimeout < 0 || c.AttrTimeout < 0 {
		return c, fmt.Errorf("fsbench: negative value in config %+v", c)
	}
	if c.Messages == 0 {
		c.Messages = 10000
	}
	if c.ListSize == 0 {
		c.ListSize = 50000
	}
	if c.Dir == "" {
		c.Dir = os.TempDir()
	}
	if c.EntryTimeout == 0 {
		c.EntryTimeout = 60 * time.Second
	}
	if c.AttrTimeout == 0 {
		c.AttrTimeout = 60 * time.Second
	}
	if c.Workers == 0 {
		c.Workers = 4
	}
	if c.Rounds == 0 {
		c.Rounds = 30
	}
	c.Rounds = min(c.Rounds, c.Messages)
	return c, nil
}

// Result is the total of one workload on one target over all its rounds.
type Result struct {
	Workload, Target string
	Ops              int
	Elapsed          time.Duration
	Bytes            int64 // bytes written (deliver) or read (read); else 0
}

// OpsPerSec returns r's throughput in operations per second.
func (r Result) OpsPerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Elapsed.Seconds()
}

// MBPerSec returns r's throughput in 10^6 bytes per second.
func (r Result) MBPerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes) / 1e6 / r.Elapsed.Seconds()
}

// target is one of the three file systems under test.
type target struct {
	name    string
	backing string // the real directory holding the files
	root    string // where the workloads run: backing for native, else the mountpoint
	unmount func() error
	mounted time.Duration
}

// LoopbackMount returns a MountFunc that mounts a plain go-fuse loopback
// file system (fs.NewLoopbackRoot) with the given kernel entry and
// attribute timeouts, mounting directly (without fusermount) when run as
// root. The mount's file system type is "fuse.fsbench".
func LoopbackMount(entryTimeout, attrTimeout time.Duration) MountFunc {
	return func(backingDir, mountpoint string) (func() error, error) {
		root, err := fs.NewLoopbackRoot(backingDir)
		if err != nil {
			return nil, fmt.Errorf("fsbench: loopback root %s: %w", backingDir, err)
		}
		et, at := entryTimeout, attrTimeout
		opts := &fs.Options{EntryTimeout: &et, AttrTimeout: &at}
		opts.MountOptions = fuse.MountOptions{
			FsName:      "fsbench-loopback",
			Name:        "fsbench",
			DirectMount: os.Geteuid() == 0,
		}
		srv, err := fuse.NewServer(fs.NewNodeFS(root, opts), mountpoint, &opts.MountOptions)
		if err != nil {
			return nil, fmt.Errorf("fsbench: mount loopback of %s on %s: %w", backingDir, mountpoint, err)
		}
		go srv.Serve()
		unmount := unmounter(srv, mountpoint)
		if err := srv.WaitMount(); err != nil {
			// fs.Mount would drop the server here and leak the mount.
			return nil, errors.Join(fmt.Errorf("fsbench: wait for loopback mount on %s: %w", mountpoint, err), unmount())
		}
		return unmount, nil
	}
}

// unmounter returns an idempotent unmount for srv. If a clean unmount
// fails (busy), it detaches the mount lazily as root so that nothing is
// left mounted, and still reports the failure.
func unmounter(srv *fuse.Server, mountpoint string) func() error {
	var mu sync.Mutex
	done := false
	return func() error {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return nil
		}
		err := srv.Unmount()
		if err == nil {
			done = true
			return nil
		}
		err = fmt.Errorf("fsbench: unmount %s: %w", mountpoint, err)
		if os.Geteuid() == 0 {
			if derr := syscall.Unmount(mountpoint, syscall.MNT_DETACH); derr != nil {
				return errors.Join(err, fmt.Errorf("fsbench: lazy unmount %s: %w", mountpoint, derr))
			}
			done = true
			slog.Warn("fsbench: unmount failed; detached lazily", "mountpoint", mountpoint, "err", err)
		}
		return err
	}
}

// Run builds the three targets under a new temporary directory in cfg.Dir,
// runs every workload on each of them, writes a description of the run and
// the table (see WriteTable) to w, and returns one Result per workload and
// target. Everything it mounts is unmounted and everything it created is
// removed before it returns, on success or error (if an unmount fails, the
// temporary directory is left in place and the error says so).
//
// Workloads, in the order they run:
//
//   - readdir+stat: before mounting, ListSize messages are written into the
//     cur/ of a mailbox in each target's backing directory (mailfs indexes
//     them in its MountFunc). Each target then reads the whole directory
//     and lstats every entry, twice: "cold" is the first pass through a
//     fresh mount (FUSE caches empty; the backing file system's caches are
//     warm, as they are for native), "warm" repeats it at once. The three
//     targets take turns every listChunk entries. One op is one entry.
//   - deliver: Messages deliveries by Workers concurrent goroutines, each
//     as an MDA does it: create tmp/<unique> with O_EXCL, write, fsync,
//     close, rename to new/<unique>, open and fsync new/. Names are
//     Dovecot-style ("1700000000.M10001P4242Q7.fsbench,S=4096"). Sizes are
//     drawn from Seed (median ~4 KiB, ~1% between 1 and 6 MiB).
//   - flags: for every delivered message, rename new/X to cur/X:2,S, then
//     cur/X:2,S to cur/X:2,FS, sequentially. One op is one rename.
//   - read: open every delivered message, read it fully with a 256 KiB
//     buffer and check the byte count, sequentially.
func Run(ctx context.Context, cfg Config, mountMailfs MountFunc, w io.Writer) (results []Result, err error) {
	if mountMailfs == nil {
		return nil, errors.New("fsbench: nil MountFunc for mailfs")
	}
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if w == nil {
		w = io.Discard
	}
	start := time.Now()

	dir, err := os.MkdirTemp(cfg.Dir, "fsbench-")
	if err != nil {
		return nil, fmt.Errorf("fsbench: temp dir in %s: %w", cfg.Dir, err)
	}
	var targets []*target
	defer func() {
		// Unmount in reverse order, then remove the tree, unless something
		// may still be mounted in it.
		var errs []error
		t0 := time.Now()
		for i := len(targets) - 1; i >= 0; i-- {
			t := targets[i]
			if t.unmount == nil {
				continue
			}
			if uerr := t.unmount(); uerr != nil {
				errs = append(errs, fmt.Errorf("fsbench: unmount %s target at %s: %w", t.name, t.root, uerr))
			}
		}
		if len(errs) == 0 {
			if rerr := removeTree(dir); rerr != nil {
				errs = append(errs, rerr)
			}
			if err == nil {
				fmt.Fprintf(w, "cleanup %s\n", time.Since(t0).Round(100*time.Millisecond))
			}
		} else {
			slog.Warn("fsbench: leaving temp dir behind after unmount failure", "dir", dir)
		}
		err = errors.Join(append([]error{err}, errs...)...)
	}()

	for _, name := range Targets {
		t := &target{name: name, backing: filepath.Join(dir, name, "maildir")}
		t.root = t.backing
		if name != TargetNative {
			t.root = filepath.Join(dir, name, "mnt")
		}
		targets = append(targets, t)
		if err := os.MkdirAll(t.root, 0o755); err != nil {
			return nil, fmt.Errorf("fsbench: mkdir %s: %w", t.root, err)
		}
	}
	setupErrs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() { setupErrs[i] = setupBacking(ctx, t.backing, cfg) })
	}
	wg.Wait()
	if err := errors.Join(setupErrs...); err != nil {
		return nil, err
	}
	// Flush the pre-filled trees so that their writeback does not land in
	// the middle of a measurement.
	if err := syncfs(dir); err != nil {
		return nil, err
	}
	setupTime := time.Since(start)

	mounts := map[string]MountFunc{
		TargetLoopback: LoopbackMount(cfg.EntryTimeout, cfg.AttrTimeout),
		TargetMailfs:   mountMailfs,
	}
	for _, t := range targets[1:] {
		t0 := time.Now()
		unmount, err := mounts[t.name](t.backing, t.root)
		if err != nil {
			return nil, fmt.Errorf("fsbench: mount %s target %s on %s: %w", t.name, t.backing, t.root, err)
		}
		if unmount == nil {
			return nil, fmt.Errorf("fsbench: mount %s target on %s returned a nil unmount", t.name, t.root)
		}
		t.unmount = unmount
		t.mounted = time.Since(t0)
		slog.Debug("fsbench: mounted", "target", t.name, "mountpoint", t.root, "elapsed", t.mounted)
	}

	corp := newCorpus(cfg.Messages, cfg.Seed)
	writeHeader(w, cfg, corp, targets, setupTime)

	b := &bench{cfg: cfg, corp: corp, targets: targets, res: map[[2]string]*Result{}}
	if err := b.run(ctx); err != nil {
		return nil, err
	}
	for _, wl := range Workloads {
		for _, tn := range Targets {
			if r, ok := b.res[[2]string{wl, tn}]; ok {
				results = append(results, *r)
			}
		}
	}
	WriteTable(w, results)
	fmt.Fprintf(w, "total run time %s\n", time.Since(start).Round(100*time.Millisecond))
	return results, nil
}

// setupBacking creates the two mailboxes under root and fills the list
// mailbox's cur/ with cfg.ListSize messages.
func setupBacking(ctx context.Context, root string, cfg Config) error {
	boxes := []string{benchBox, listBox}
	for i := range spreadBoxes {
		boxes = append(boxes, spreadBox(i))
	}
	for _, box := range boxes {
		for _, sub := range []string{"cur", "new", "tmp"} {
			p := filepath.Join(root, box, sub)
			if err := os.MkdirAll(p, 0o700); err != nil {
				return fmt.Errorf("fsbench: mkdir %s: %w", p, err)
			}
		}
	}
	cur := filepath.Join(root, listBox, "cur")
	r := rand.New(rand.NewPCG(uint64(cfg.Seed), 0x6c697374))
	text := makeText(r, 64*kib)
	for i := range cfg.ListSize {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		name, size := listEntry(r, i)
		p := filepath.Join(cur, name)
		if err := writeFile(p, text, size); err != nil {
			return err
		}
	}
	return nil
}

// writeFile creates p holding size bytes cut from text.
func writeFile(p string, text []byte, size int64) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("fsbench: create %s: %w", p, err)
	}
	for rest := size; rest > 0; {
		n := min(rest, int64(len(text)))
		if _, err := f.Write(text[:n]); err != nil {
			f.Close()
			return fmt.Errorf("fsbench: write %s: %w", p, err)
		}
		rest -= n
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("fsbench: close %s: %w", p, err)
	}
	return nil
}

// removeTree removes dir and everything below it, unlinking files from
// several goroutines: on a file system mounted with discard, unlinking many
// small files one at a time is slow (12 s for 50k on the reference VM).
func removeTree(dir string) error {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("fsbench: walk %s: %w", dir, err)
	}
	const workers = 8
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(files); i += workers {
				if err := os.Remove(files[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs[w] = fmt.Errorf("fsbench: remove %s: %w", files[i], err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("fsbench: remove %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

// syncfs flushes the file system holding dir.
func syncfs(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsbench: open %s: %w", dir, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("fsbench: syncfs %s: %w", dir, err)
	}
	return nil
}

func writeHeader(w io.Writer, cfg Config, corp *corpus, targets []*target, setup time.Duration) {
	fmt.Fprintf(w, "fsbench: Maildir workloads, one process, targets native / go-fuse loopback / mailfs, GOMAXPROCS %d\n", runtime.GOMAXPROCS(0))
	fmt.Fprintf(w, "  deliver: %d messages by %d concurrent writers (O_EXCL create in tmp/, write, fsync, close, rename to new/, fsync new/)\n",
		cfg.Messages, cfg.Workers)
	fmt.Fprintf(w, "           %s\n", corp.sizeStats())
	fmt.Fprintf(w, "  flags: 2 renames per message (new/X -> cur/X:2,S -> cur/X:2,FS), sequential\n")
	fmt.Fprintf(w, "  readdir+stat: readdir + lstat of every entry of a %d-message cur/, cold (fresh mount) then warm,\n", cfg.ListSize)
	fmt.Fprintf(w, "           the targets interleaved every %d entries\n", listChunk)
	fmt.Fprintf(w, "  read: every delivered message read fully, sequential\n")
	fmt.Fprintf(w, "  loopback kernel timeouts: entry %s, attr %s; %d rounds, target order permuted each round\n",
		cfg.EntryTimeout, cfg.AttrTimeout, cfg.Rounds)
	fmt.Fprintf(w, "  setup: %d-message cur/ written into each backing dir and synced in %s\n",
		cfg.ListSize, setup.Round(100*time.Millisecond))
	for _, t := range targets {
		if t.unmount != nil {
			fmt.Fprintf(w, "  mount %s: ready in %s with %d messages present\n", t.name, t.mounted.Round(time.Millisecond), cfg.ListSize)
		}
	}
}
