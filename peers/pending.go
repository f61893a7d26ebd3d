package peers

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"mailfs/journal"
)

// Errors of the invite bookkeeping; the joiner sees the same ones (mapped
// from the inviter's refusal).
var (
	ErrNoInvite   = errors.New("no pairing invite is open")
	ErrBadProof   = errors.New("pairing proof matches no open invite (wrong code?)")
	ErrInviteUsed = errors.New("invite code already used")
	ErrInviteBusy = errors.New("invite code is being used by another join right now")
)

// usedGrace is how long a used or expired invite is remembered after its
// expiry, so a late replay is told "used" or "expired", not "wrong code".
const usedGrace = 24 * time.Hour

type inviteState string

const (
	statePending inviteState = "pending"
	stateBusy    inviteState = "busy" // a join is past the proof, not yet finished
	stateUsed    inviteState = "used"
)

// PendingInvites are the invites this node has issued and not yet seen
// used: each one works once (single use, enforced atomically), until it
// expires. NewPendingInvites keeps them in memory; OpenPendingInvites
// keeps them in a directory, so `mailfs pair invite` (one process) can
// issue an invite that the daemon (another) accepts.
type PendingInvites struct {
	mu  sync.Mutex // serialises reserve within the process
	b   inviteBackend
	now func() time.Time
}

// NewPendingInvites is an in-memory set of invites.
func NewPendingInvites() *PendingInvites {
	return &PendingInvites{b: &memInvites{m: map[string]*memInvite{}}, now: time.Now}
}

// OpenPendingInvites keeps invites as files in dir (created 0700):
// NAME.invite holds the code (0600; NAME is a hash of the secret), and the
// one join that passes the proof claims it by creating NAME.claim with
// O_EXCL, which the kernel grants to one process only, then marks it with
// NAME.used. So two processes can never both use one invite.
func OpenPendingInvites(dir string) (*PendingInvites, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("invites dir %s: %w", dir, err)
	}
	return &PendingInvites{b: &dirInvites{dir: dir}, now: time.Now}, nil
}

// Add records an issued invite so a join presenting it is accepted.
func (p *PendingInvites) Add(inv Invite) error {
	now := p.now()
	if !now.Before(inv.Expires) {
		return fmt.Errorf("add invite: %w", ErrInviteExpired)
	}
	p.sweep(now)
	if err := p.b.add(inviteName(inv), inv); err != nil {
		return fmt.Errorf("add invite: %w", err)
	}
	return nil
}

// Open counts the invites that can still be used.
func (p *PendingInvites) Open() (int, error) {
	es, err := p.b.list()
	if err != nil {
		return 0, err
	}
	now := p.now()
	n := 0
	for _, e := range es {
		if e.state == statePending && now.Before(e.inv.Expires) {
			n++
		}
	}
	return n, nil
}

// reservation is an invite held by one join between proof and outcome.
type reservation struct {
	name string
	inv  Invite
}

// reserve finds the invite whose secret produced proof for this pair of
// nodes and TLS session, and claims it (pending -> busy). Every
// candidate's MAC is computed and compared in constant time.
func (p *PendingInvites) reserve(inviter, joiner journal.NodeID, exporter, proof []byte) (reservation, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.sweep(now)
	es, err := p.b.list()
	if err != nil {
		return reservation{}, err
	}
	var match *inviteEntry
	for i := range es {
		e := &es[i]
		if !inviter.IsZero() && e.inv.Inviter != inviter {
			continue
		}
		want := pairMAC(e.inv.Secret, roleJoiner, e.inv.Inviter, joiner, exporter)
		if hmac.Equal(want, proof) && match == nil {
			match = e
		}
	}
	switch {
	case match == nil:
		return reservation{}, ErrBadProof
	case match.state == stateUsed:
		return reservation{}, ErrInviteUsed
	case match.state == stateBusy:
		return reservation{}, ErrInviteBusy
	case !now.Before(match.inv.Expires):
		return reservation{}, ErrInviteExpired
	}
	if err := p.b.claim(match.name); err != nil {
		if errors.Is(err, fs.ErrExist) { // another process claimed it first
			if st, serr := p.b.state(match.name); serr == nil && st == stateUsed {
				return reservation{}, ErrInviteUsed
			}
			return reservation{}, ErrInviteBusy
		}
		return reservation{}, err
	}
	return reservation{name: match.name, inv: match.inv}, nil
}

// commit marks a reserved invite used.
func (p *PendingInvites) commit(r reservation) error { return p.b.commit(r.name) }

// release returns a reserved invite to pending (the join failed after the
// proof, so the same code may be tried again).
func (p *PendingInvites) release(r reservation) error { return p.b.release(r.name) }

// sweep forgets invites that expired more than usedGrace ago. A busy
// invite left by a crash is kept (refusing its code) until then too.
func (p *PendingInvites) sweep(now time.Time) {
	es, err := p.b.list()
	if err != nil {
		return
	}
	for _, e := range es {
		if now.After(e.inv.Expires.Add(usedGrace)) {
			p.b.remove(e.name)
		}
	}
}

// inviteName names an invite by a hash of its secret (not the secret).
func inviteName(inv Invite) string {
	h := sha256.Sum256(append([]byte("mailfs invite name\x00"), inv.Secret[:]...))
	return hex.EncodeToString(h[:8])
}

type inviteEntry struct {
	name  string
	state inviteState
	inv   Invite
}

// inviteBackend stores invites and their state. An invite is claimed at
// most once (claim is atomic and fails with fs.ErrExist after the first);
// release undoes a claim that was not committed.
type inviteBackend interface {
	add(name string, inv Invite) error
	list() ([]inviteEntry, error)
	state(name string) (inviteState, error)
	claim(name string) error
	commit(name string) error
	release(name string) error
	remove(name string)
}

type memInvite struct {
	state inviteState
	inv   Invite
}

type memInvites struct {
	mu sync.Mutex
	m  map[string]*memInvite
}

func (b *memInvites) add(name string, inv Invite) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.m[name]; ok {
		return fmt.Errorf("invite %s: %w", name, fs.ErrExist)
	}
	b.m[name] = &memInvite{state: statePending, inv: inv}
	return nil
}

func (b *memInvites) list() ([]inviteEntry, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	es := make([]inviteEntry, 0, len(b.m))
	for name, e := range b.m {
		es = append(es, inviteEntry{name: name, state: e.state, inv: e.inv})
	}
	sort.Slice(es, func(i, j int) bool { return es[i].name < es[j].name })
	return es, nil
}

func (b *memInvites) state(name string) (inviteState, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.m[name]
	if !ok {
		return "", fmt.Errorf("invite %s: %w", name, fs.ErrNotExist)
	}
	return e.state, nil
}

// to moves name from one state to another.
func (b *memInvites) to(name string, from, to inviteState, errNotFrom error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.m[name]
	if !ok {
		return fmt.Errorf("invite %s: %w", name, fs.ErrNotExist)
	}
	if e.state != from {
		return fmt.Errorf("invite %s is %s: %w", name, e.state, errNotFrom)
	}
	e.state = to
	return nil
}

func (b *memInvites) claim(name string) error {
	return b.to(name, statePending, stateBusy, fs.ErrExist)
}

func (b *memInvites) commit(name string) error {
	return b.to(name, stateBusy, stateUsed, fs.ErrNotExist)
}

func (b *memInvites) release(name string) error {
	return b.to(name, stateBusy, statePending, fs.ErrNotExist)
}

func (b *memInvites) remove(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.m, name)
}

// dirInvites keeps NAME.invite (the code, never moved), NAME.claim
// (created with O_EXCL by the one join that passed the proof; removed only
// by release) and NAME.used (created on commit).
type dirInvites struct {
	dir string
}

const (
	sufInvite = ".invite"
	sufClaim  = ".claim"
	sufUsed   = ".used"
)

func (b *dirInvites) path(name, suffix string) string {
	return filepath.Join(b.dir, name+suffix)
}

func (b *dirInvites) add(name string, inv Invite) error {
	if _, err := os.Lstat(b.path(name, sufInvite)); err == nil {
		return fmt.Errorf("invite %s: %w", name, fs.ErrExist)
	}
	return writeDurably(b.dir, name+sufInvite, []byte(inv.String()+"\n"), 0o600)
}

func (b *dirInvites) list() ([]inviteEntry, error) {
	des, err := os.ReadDir(b.dir)
	if err != nil {
		return nil, fmt.Errorf("invites dir %s: %w", b.dir, err)
	}
	var es []inviteEntry
	for _, de := range des {
		name, ok := strings.CutSuffix(de.Name(), sufInvite)
		if !ok || name == "" || strings.HasPrefix(name, ".") || !de.Type().IsRegular() {
			continue // markers, and temp files (which start with '.')
		}
		data, err := os.ReadFile(filepath.Join(b.dir, de.Name()))
		if err != nil {
			continue // swept meanwhile
		}
		inv, err := decodeInvite(string(data))
		if err != nil || inviteName(inv) != name {
			continue
		}
		st, err := b.state(name)
		if err != nil {
			return nil, err
		}
		es = append(es, inviteEntry{name: name, state: st, inv: inv})
	}
	return es, nil
}

func (b *dirInvites) state(name string) (inviteState, error) {
	for _, m := range []struct {
		suffix string
		st     inviteState
	}{{sufUsed, stateUsed}, {sufClaim, stateBusy}} {
		_, err := os.Lstat(b.path(name, m.suffix))
		if err == nil {
			return m.st, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("invite %s: %w", name, err)
		}
	}
	return statePending, nil
}

func (b *dirInvites) claim(name string) error {
	f, err := os.OpenFile(b.path(name, sufClaim), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("claim invite %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("claim invite %s: %w", name, err)
	}
	return nil
}

func (b *dirInvites) commit(name string) error {
	if err := writeDurably(b.dir, name+sufUsed, nil, 0o600); err != nil {
		return fmt.Errorf("mark invite %s used: %w", name, err)
	}
	return nil
}

func (b *dirInvites) release(name string) error {
	if err := os.Remove(b.path(name, sufClaim)); err != nil {
		return fmt.Errorf("release invite %s: %w", name, err)
	}
	return nil
}

func (b *dirInvites) remove(name string) {
	for _, suffix := range []string{sufInvite, sufClaim, sufUsed} {
		os.Remove(b.path(name, suffix))
	}
}
