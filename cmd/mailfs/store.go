package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/google/uuid"
)

// The store layout (design §2).
const (
	markerName   = "mailfs.store"
	markerFormat = 1
)

type marker struct {
	StoreID string `json:"store_id"`
	Format  int    `json:"format"`
	// Maildir is where the Maildir tree lives when init was given
	// --maildir; empty means STORE/maildir.
	Maildir string `json:"maildir,omitempty"`
}

type storePaths struct {
	Dir string
}

func (s storePaths) marker() string   { return filepath.Join(s.Dir, markerName) }
func (s storePaths) index() string    { return filepath.Join(s.Dir, "index") }
func (s storePaths) identity() string { return filepath.Join(s.Dir, "identity") }
func (s storePaths) socket() string   { return filepath.Join(s.Dir, "mailfs.sock") }

// staging holds the bodies of a segment being received from a peer.
func (s storePaths) staging() string { return filepath.Join(s.Dir, "incoming") }

func (s storePaths) maildir(m *marker) string {
	if m != nil && m.Maildir != "" {
		return m.Maildir
	}
	return filepath.Join(s.Dir, "maildir")
}

var errNoMarker = errors.New("no mailfs.store marker")

// readMarker returns the store's marker; errNoMarker when absent.
func (s storePaths) readMarker() (*marker, error) {
	data, err := os.ReadFile(s.marker())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNoMarker
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.marker(), err)
	}
	var m marker
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("store marker %s is damaged: %w", s.marker(), err)
	}
	if m.Format > markerFormat {
		return nil, fmt.Errorf("store %s has format %d, this mailfs knows up to %d (upgrade mailfs)", s.Dir, m.Format, markerFormat)
	}
	if _, err := uuid.Parse(m.StoreID); err != nil {
		return nil, fmt.Errorf("store marker %s has no valid store ID", s.marker())
	}
	return &m, nil
}

// isEmptyDir reports whether dir is absent or has no entries.
func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if len(names) == 0 && (err == nil || errors.Is(err, os.ErrNotExist) || err.Error() == "EOF") {
		return true, nil
	}
	return false, nil
}

// writeFileDurably writes data to p by temp file, fsync, rename, fsync dir.
func writeFileDurably(p string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(p)
	f, err := os.CreateTemp(dir, "."+filepath.Base(p)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), p); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
