package fsbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// bench holds the state of one Run while the workloads execute.
type bench struct {
	cfg     Config
	corp    *corpus
	targets []*target
	res     map[[2]string]*Result
	bufs    [][]byte // one message buffer per delivery worker, reused
	readBuf []byte
}

// add accumulates one measurement of workload wl on target t.
func (b *bench) add(wl string, t *target, ops int, elapsed time.Duration, bytes int64) {
	k := [2]string{wl, t.name}
	r := b.res[k]
	if r == nil {
		r = &Result{Workload: wl, Target: t.name}
		b.res[k] = r
	}
	r.Ops += ops
	r.Elapsed += elapsed
	r.Bytes += bytes
	slog.Debug("fsbench: measured", "workload", wl, "target", t.name, "ops", ops, "elapsed", elapsed, "bytes", bytes)
}

// perms are all orders of three targets. Taking them in turn puts every
// target in every position, and after every other target, equally often.
var perms = [...][3]int{{0, 1, 2}, {1, 2, 0}, {2, 0, 1}, {0, 2, 1}, {2, 1, 0}, {1, 0, 2}}

// order returns the targets in the order of round.
func (b *bench) order(round int) []*target {
	p := perms[round%len(perms)]
	return []*target{b.targets[p[0]], b.targets[p[1]], b.targets[p[2]]}
}

// chunk returns the message range [lo, hi) of round r.
func (b *bench) chunk(r int) (lo, hi int) {
	n, rounds := len(b.corp.msgs), b.cfg.Rounds
	return r * n / rounds, (r + 1) * n / rounds
}

func (b *bench) run(ctx context.Context) error {
	for _, wl := range []string{WorkListCold, WorkListWarm} {
		if err := b.list(ctx, wl); err != nil {
			return err
		}
	}

	b.bufs = make([][]byte, b.cfg.Workers)
	for i := range b.bufs {
		b.bufs[i] = make([]byte, 0, b.corp.maxSize)
	}
	b.readBuf = make([]byte, 256*kib)
	steps := []struct {
		wl string
		fn func(ctx context.Context, root string, lo, hi int) (int, time.Duration, int64, error)
	}{
		{WorkDeliver, b.deliver},
		{WorkFlags, b.flags},
		{WorkFlagsPar, b.flagsParallel},
		{WorkRead, b.read},
		{WorkDeliverN, b.deliverSpread},
		{WorkFlagsN, b.flagsSpread},
	}
	for _, s := range steps {
		for r := range b.cfg.Rounds {
			lo, hi := b.chunk(r)
			for _, t := range b.order(r) {
				ops, elapsed, bytes, err := s.fn(ctx, t.root, lo, hi)
				if err != nil {
					return fmt.Errorf("fsbench: %s on %s: %w", s.wl, t.name, err)
				}
				b.add(s.wl, t, ops, elapsed, bytes)
			}
		}
	}
	return nil
}

// listChunk is how many entries one target reads and lstats before the
// next target takes its turn in the readdir+stat workload.
const listChunk = 1000

// list runs one readdir+stat pass over the list mailbox's cur/ on every
// target: read listChunk names, lstat each (relative to the open
// directory, as a regular file), and pass to the next target, in permuted
// order, until every directory is exhausted. Each target's time is the sum
// of its turns, including open and close.
func (b *bench) list(ctx context.Context, wl string) error {
	type lister struct {
		dir     string
		d       *os.File
		fd      int
		n       int
		elapsed time.Duration
		done    bool
	}
	ls := map[*target]*lister{}
	defer func() {
		for _, l := range ls {
			if l.d != nil {
				l.d.Close()
			}
		}
	}()
	for _, t := range b.targets {
		l := &lister{dir: filepath.Join(t.root, listBox, "cur")}
		ls[t] = l
		start := time.Now()
		d, err := os.Open(l.dir)
		if err != nil {
			return fmt.Errorf("fsbench: %s on %s: open %s: %w", wl, t.name, l.dir, err)
		}
		l.d, l.fd = d, int(d.Fd())
		l.elapsed += time.Since(start)
	}
	var st unix.Stat_t
	for round, active := 0, true; active; round++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		active = false
		for _, t := range b.order(round) {
			l := ls[t]
			if l.done {
				continue
			}
			active = true
			start := time.Now()
			names, err := l.d.Readdirnames(listChunk)
			if errors.Is(err, io.EOF) {
				l.done = true
				err = l.d.Close()
				l.d = nil
			}
			if err != nil {
				return fmt.Errorf("fsbench: %s on %s: readdir %s: %w", wl, t.name, l.dir, err)
			}
			for _, name := range names {
				if err := ignoringEINTR(func() error {
					return unix.Fstatat(l.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
				}); err != nil {
					return fmt.Errorf("fsbench: %s on %s: lstat %s: %w", wl, t.name, filepath.Join(l.dir, name), err)
				}
				if st.Mode&unix.S_IFMT != unix.S_IFREG {
					return fmt.Errorf("fsbench: %s on %s: lstat %s: mode %#o, want a regular file",
						wl, t.name, filepath.Join(l.dir, name), st.Mode)
				}
			}
			l.elapsed += time.Since(start)
			l.n += len(names)
		}
	}
	for _, t := range b.targets {
		l := ls[t]
		if l.n != b.cfg.ListSize {
			return fmt.Errorf("fsbench: %s on %s: readdir %s: %d entries, want %d", wl, t.name, l.dir, l.n, b.cfg.ListSize)
		}
		b.add(wl, t, l.n, l.elapsed, 0)
	}
	return nil
}

func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// deliver delivers messages [lo, hi) into root's bench mailbox with
// cfg.Workers concurrent writers.
func (b *bench) deliver(ctx context.Context, root string, lo, hi int) (int, time.Duration, int64, error) {
	box := filepath.Join(root, benchBox)
	var (
		next    atomic.Int64
		written atomic.Int64
		failed  atomic.Bool
		mu      sync.Mutex
		first   error
		wg      sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
		failed.Store(true)
	}
	next.Store(int64(lo))
	start := time.Now()
	for w := range min(b.cfg.Workers, hi-lo) {
		wg.Go(func() {
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= hi {
					return
				}
				if err := ctx.Err(); err != nil {
					fail(err)
					return
				}
				n, err := deliverOne(box, b.corp, i, &b.bufs[w])
				if err != nil {
					fail(err)
					return
				}
				written.Add(n)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if first != nil {
		return 0, 0, 0, first
	}
	return hi - lo, elapsed, written.Load(), nil
}

// deliverOne delivers message i the way an MDA does.
func deliverOne(box string, c *corpus, i int, buf *[]byte) (int64, error) {
	m := c.msgs[i]
	*buf = c.content(*buf, i, m.name, m.size)
	tmp := filepath.Join(box, "tmp", m.name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", tmp, err)
	}
	if _, err := f.Write(*buf); err != nil {
		f.Close()
		return 0, fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("close %s: %w", tmp, err)
	}
	newDir := filepath.Join(box, "new")
	dst := filepath.Join(newDir, m.name)
	if err := os.Rename(tmp, dst); err != nil {
		return 0, fmt.Errorf("rename %s to %s: %w", tmp, dst, err)
	}
	if err := fsyncDir(newDir); err != nil {
		return 0, err
	}
	return m.size, nil
}

func fsyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	if err := d.Close(); err != nil {
		return fmt.Errorf("close %s: %w", dir, err)
	}
	return nil
}

// flags moves messages [lo, hi) from new/X to cur/X:2,S, then all of them
// to cur/X:2,FS.
func (b *bench) flags(ctx context.Context, root string, lo, hi int) (int, time.Duration, int64, error) {
	box := filepath.Join(root, benchBox)
	newDir, cur := filepath.Join(box, "new"), filepath.Join(box, "cur")
	msgs := b.corp.msgs[lo:hi]
	start := time.Now()
	for pass := range 2 {
		for i, m := range msgs {
			if i%256 == 0 {
				if err := ctx.Err(); err != nil {
					return 0, 0, 0, err
				}
			}
			from, to := filepath.Join(newDir, m.name), filepath.Join(cur, m.name+":2,S")
			if pass == 1 {
				from, to = to, filepath.Join(cur, m.name+":2,FS")
			}
			if err := os.Rename(from, to); err != nil {
				return 0, 0, 0, fmt.Errorf("rename %s to %s: %w", from, to, err)
			}
		}
	}
	return 2 * len(msgs), time.Since(start), 0, nil
}

// concurrently runs step for every index of [lo, hi) on workers
// goroutines, worker w taking indexes lo+w, lo+w+workers, ..., and returns
// the wall time and the first error. Each worker checks ctx between steps.
func concurrently(ctx context.Context, workers, lo, hi int, step func(w, i int) error) (time.Duration, error) {
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for i := lo + w; i < hi; i += workers {
				if err := ctx.Err(); err != nil {
					errs <- err
					return
				}
				if err := step(w, i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	return elapsed, <-errs
}

func rename(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return fmt.Errorf("rename %s to %s: %w", from, to, err)
	}
	return nil
}

// deliverSpread delivers messages [lo, hi) over spreadBoxes mailboxes, one
// concurrent client per mailbox.
func (b *bench) deliverSpread(ctx context.Context, root string, lo, hi int) (int, time.Duration, int64, error) {
	var written atomic.Int64
	elapsed, err := concurrently(ctx, spreadBoxes, lo, hi, func(w, i int) error {
		n, err := deliverOne(filepath.Join(root, spreadBox(w)), b.corp, i, &b.bufs[w%len(b.bufs)])
		written.Add(n)
		return err
	})
	if err != nil {
		return 0, 0, 0, err
	}
	return hi - lo, elapsed, written.Load(), nil
}

// flagsSpread renames the messages deliverSpread delivered, new/X ->
// cur/X:2,S -> cur/X:2,FS, one concurrent client per mailbox.
func (b *bench) flagsSpread(ctx context.Context, root string, lo, hi int) (int, time.Duration, int64, error) {
	var total time.Duration
	for pass := range 2 {
		elapsed, err := concurrently(ctx, spreadBoxes, lo, hi, func(w, i int) error {
			box, name := filepath.Join(root, spreadBox(w)), b.corp.msgs[i].name
			if pass == 0 {
				return rename(filepath.Join(box, "new", name), filepath.Join(box, "cur", name+":2,S"))
			}
			return rename(filepath.Join(box, "cur", name+":2,S"), filepath.Join(box, "cur", name+":2,FS"))
		})
		if err != nil {
			return 0, 0, 0, err
		}
		total += elapsed
	}
	return 2 * (hi - lo), total, 0, nil
}

// flagsParallel renames messages [lo, hi) cur/X:2,FS -> cur/X:2,FRS and
// back, split over cfg.Workers goroutines: concurrent IMAP sessions
// changing flags in one mailbox.
func (b *bench) flagsParallel(ctx context.Context, root string, lo, hi int) (int, time.Duration, int64, error) {
	cur := filepath.Join(root, benchBox, "cur")
	workers := max(1, min(b.cfg.Workers, hi-lo))
	var total time.Duration
	for pass := range 2 {
		elapsed, err := concurrently(ctx, workers, lo, hi, func(_, i int) error {
			fs, frs := filepath.Join(cur, b.corp.msgs[i].name+":2,FS"), filepath.Join(cur, b.corp.msgs[i].name+":2,FRS")
			if pass == 0 {
				return rename(fs, frs)
			}
			return rename(frs, fs)
		})
		if err != nil {
			return 0, 0, 0, err
		}
		total += elapsed
	}
	return 2 * (hi - lo), total, 0, nil
}

// read reads messages [lo, hi) fully from cur/ and checks their sizes.
func (b *bench) read(ctx context.Context, root string, lo, hi int) (int, time.Duration, int64, error) {
	cur := filepath.Join(root, benchBox, "cur")
	var total int64
	start := time.Now()
	for i, m := range b.corp.msgs[lo:hi] {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return 0, 0, 0, err
			}
		}
		p := filepath.Join(cur, m.name+":2,FS")
		n, err := readAll(p, b.readBuf)
		if err != nil {
			return 0, 0, 0, err
		}
		if n != m.size {
			return 0, 0, 0, fmt.Errorf("read %s: %d bytes, want %d", p, n, m.size)
		}
		total += n
	}
	return hi - lo, time.Since(start), total, nil
}

// readAll reads the file at p to its end through buf and returns its
// length.
func readAll(p string, buf []byte) (int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", p, err)
	}
	defer f.Close()
	var n int64
	for {
		k, err := f.Read(buf)
		n += int64(k)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("read %s: %w", p, err)
		}
	}
}
