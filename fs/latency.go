package fs

import (
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// timedFS reports how long each FUSE request took to answer, by operation,
// for the latency histograms of `mount --metrics`. go-fuse's own latency
// recording is gone (RecordLatencies is a no-op), so the raw file system
// is wrapped; requests it does not time pass straight through.
type timedFS struct {
	fuse.RawFileSystem
	observe func(op string, d time.Duration)
}

func (t *timedFS) done(op string, start time.Time) { t.observe(op, time.Since(start)) }

func (t *timedFS) Lookup(c <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	defer t.done("lookup", time.Now())
	return t.RawFileSystem.Lookup(c, h, name, out)
}

func (t *timedFS) GetAttr(c <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	defer t.done("getattr", time.Now())
	return t.RawFileSystem.GetAttr(c, in, out)
}

func (t *timedFS) SetAttr(c <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	defer t.done("setattr", time.Now())
	return t.RawFileSystem.SetAttr(c, in, out)
}

func (t *timedFS) Mknod(c <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	defer t.done("mknod", time.Now())
	return t.RawFileSystem.Mknod(c, in, name, out)
}

func (t *timedFS) Mkdir(c <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	defer t.done("mkdir", time.Now())
	return t.RawFileSystem.Mkdir(c, in, name, out)
}

func (t *timedFS) Unlink(c <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	defer t.done("unlink", time.Now())
	return t.RawFileSystem.Unlink(c, h, name)
}

func (t *timedFS) Rmdir(c <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	defer t.done("rmdir", time.Now())
	return t.RawFileSystem.Rmdir(c, h, name)
}

func (t *timedFS) Rename(c <-chan struct{}, in *fuse.RenameIn, from, to string) fuse.Status {
	defer t.done("rename", time.Now())
	return t.RawFileSystem.Rename(c, in, from, to)
}

func (t *timedFS) Link(c <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	defer t.done("link", time.Now())
	return t.RawFileSystem.Link(c, in, name, out)
}

func (t *timedFS) Symlink(c <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	defer t.done("symlink", time.Now())
	return t.RawFileSystem.Symlink(c, h, target, name, out)
}

func (t *timedFS) Create(c <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	defer t.done("create", time.Now())
	return t.RawFileSystem.Create(c, in, name, out)
}

func (t *timedFS) Open(c <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	defer t.done("open", time.Now())
	return t.RawFileSystem.Open(c, in, out)
}

func (t *timedFS) Read(c <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	defer t.done("read", time.Now())
	return t.RawFileSystem.Read(c, in, buf)
}

func (t *timedFS) Write(c <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	defer t.done("write", time.Now())
	return t.RawFileSystem.Write(c, in, data)
}

func (t *timedFS) Flush(c <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	defer t.done("flush", time.Now())
	return t.RawFileSystem.Flush(c, in)
}

func (t *timedFS) Release(c <-chan struct{}, in *fuse.ReleaseIn) {
	defer t.done("release", time.Now())
	t.RawFileSystem.Release(c, in)
}

func (t *timedFS) Fsync(c <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	defer t.done("fsync", time.Now())
	return t.RawFileSystem.Fsync(c, in)
}

func (t *timedFS) OpenDir(c <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	defer t.done("opendir", time.Now())
	return t.RawFileSystem.OpenDir(c, in, out)
}

func (t *timedFS) ReadDir(c <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	defer t.done("readdir", time.Now())
	return t.RawFileSystem.ReadDir(c, in, out)
}

func (t *timedFS) ReadDirPlus(c <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	defer t.done("readdirplus", time.Now())
	return t.RawFileSystem.ReadDirPlus(c, in, out)
}
