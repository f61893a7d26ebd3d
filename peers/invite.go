package peers

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"mailfs/journal"
)

// An invite code is one line:
//
//	mailfs1:BASE64URL(inviter[32] | secret[32] | expires[8] | address | check[4])
//
// inviter is the inviter's node ID (the joiner pins it), secret 32 random
// bytes, expires Unix seconds (big-endian), address the inviter's
// host:port (1-255 bytes, the rest of the payload), and check the first 4
// bytes of SHA-256("mailfs1:" | the bytes before it), which catches
// copy-paste damage. The base64 is unpadded. Security does not rest on the
// check: a changed fingerprint fails the TLS pin, a changed secret fails
// the proof.
const (
	invitePrefix  = "mailfs"
	inviteVersion = 1
	inviteFixed   = 32 + 32 + 8
	inviteCheck   = 4
	maxAddrLen    = 255
)

// MaxInviteTTL bounds how long an invite stays valid.
const MaxInviteTTL = 7 * 24 * time.Hour

// Invite code errors.
var (
	ErrInviteMalformed = errors.New("malformed invite code")
	ErrInviteVersion   = errors.New("unsupported invite code")
	ErrInviteExpired   = errors.New("invite code expired")
)

// Invite is what an invite code carries. Its String is the code; it holds
// the secret, so never log it.
type Invite struct {
	// Address is where the inviter listens (host:port).
	Address string
	// Inviter is the inviter's node ID; the joiner pins it.
	Inviter journal.NodeID
	// Secret is the one-time secret the joiner proves knowledge of.
	Secret [32]byte
	// Expires is when the code stops working (whole seconds).
	Expires time.Time
}

// NewInvite makes an invite for the node inviter reachable at addr, valid
// for ttl (at most MaxInviteTTL). addr must name a host the joiner can
// reach: a wildcard listen address such as ":7000" or "0.0.0.0:7000" is
// refused.
func NewInvite(inviter journal.NodeID, addr string, ttl time.Duration) (Invite, error) {
	if inviter.IsZero() {
		return Invite{}, errors.New("new invite: no inviter node ID")
	}
	if ttl <= 0 || ttl > MaxInviteTTL {
		return Invite{}, fmt.Errorf("new invite: lifetime %v outside (0, %v]", ttl, MaxInviteTTL)
	}
	if err := checkDialAddress(addr); err != nil {
		return Invite{}, fmt.Errorf("new invite: %w", err)
	}
	inv := Invite{Address: addr, Inviter: inviter, Expires: time.Unix(time.Now().Add(ttl).Unix(), 0)}
	if _, err := rand.Read(inv.Secret[:]); err != nil {
		return Invite{}, fmt.Errorf("new invite: %w", err)
	}
	return inv, nil
}

// String is the one-line invite code.
func (inv Invite) String() string {
	b := make([]byte, 0, inviteFixed+len(inv.Address)+inviteCheck)
	b = append(b, inv.Inviter[:]...)
	b = append(b, inv.Secret[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(inv.Expires.Unix()))
	b = append(b, inv.Address...)
	b = append(b, inviteChecksum(b)...)
	return codePrefix() + base64.RawURLEncoding.EncodeToString(b)
}

// ParseInvite reads an invite code (surrounding white space is ignored)
// and refuses it when malformed, of another version, or expired. Its
// errors wrap ErrInviteMalformed, ErrInviteVersion or ErrInviteExpired and
// never quote the code.
func ParseInvite(code string) (Invite, error) {
	return parseInvite(code, time.Now())
}

func parseInvite(code string, now time.Time) (Invite, error) {
	inv, err := decodeInvite(code)
	if err != nil {
		return Invite{}, err
	}
	if !now.Before(inv.Expires) {
		return Invite{}, fmt.Errorf("%w at %s; ask the inviter for a new one (mailfs pair invite)",
			ErrInviteExpired, inv.Expires.UTC().Format(time.RFC3339))
	}
	return inv, nil
}

// decodeInvite is ParseInvite without the expiry check.
func decodeInvite(code string) (Invite, error) {
	code = strings.TrimSpace(code)
	rest, ok := strings.CutPrefix(code, invitePrefix)
	if !ok {
		return Invite{}, fmt.Errorf("%w: not a mailfs invite (it starts with %q)", ErrInviteVersion, codePrefix())
	}
	ver, body, ok := strings.Cut(rest, ":")
	if !ok {
		return Invite{}, fmt.Errorf("%w: no ':' after the %q prefix", ErrInviteMalformed, invitePrefix)
	}
	if n, err := strconv.Atoi(ver); err != nil || n != inviteVersion {
		return Invite{}, fmt.Errorf("%w: version %.8q; this mailfs reads version %d", ErrInviteVersion, ver, inviteVersion)
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(body)
	if err != nil {
		return Invite{}, fmt.Errorf("%w: bad base64 at byte %d (copied in full?)", ErrInviteMalformed, base64Offset(err))
	}
	if len(b) < inviteFixed+1+inviteCheck || len(b) > inviteFixed+maxAddrLen+inviteCheck {
		return Invite{}, fmt.Errorf("%w: %d bytes (copied in full?)", ErrInviteMalformed, len(b))
	}
	payload, sum := b[:len(b)-inviteCheck], b[len(b)-inviteCheck:]
	if !bytes.Equal(sum, inviteChecksum(payload)) {
		return Invite{}, fmt.Errorf("%w: checksum mismatch (damaged or edited)", ErrInviteMalformed)
	}
	var inv Invite
	copy(inv.Inviter[:], payload[0:32])
	copy(inv.Secret[:], payload[32:64])
	exp := binary.BigEndian.Uint64(payload[64:72])
	if exp > 1<<62 {
		return Invite{}, fmt.Errorf("%w: expiry out of range", ErrInviteMalformed)
	}
	inv.Expires = time.Unix(int64(exp), 0)
	inv.Address = string(payload[inviteFixed:])
	if inv.Inviter.IsZero() {
		return Invite{}, fmt.Errorf("%w: no inviter node ID", ErrInviteMalformed)
	}
	if err := checkDialAddress(inv.Address); err != nil {
		return Invite{}, fmt.Errorf("%w: %w", ErrInviteMalformed, err)
	}
	return inv, nil
}

func codePrefix() string { return invitePrefix + strconv.Itoa(inviteVersion) + ":" }

func inviteChecksum(payload []byte) []byte {
	h := sha256.New()
	h.Write([]byte(codePrefix()))
	h.Write(payload)
	return h.Sum(nil)[:inviteCheck]
}

func base64Offset(err error) int64 {
	var ce base64.CorruptInputError
	if errors.As(err, &ce) {
		return int64(ce)
	}
	return -1
}

// checkDialAddress accepts host:port with a host another machine can dial.
func checkDialAddress(addr string) error {
	if len(addr) == 0 || len(addr) > maxAddrLen {
		return fmt.Errorf("address of %d bytes, want 1-%d", len(addr), maxAddrLen)
	}
	if err := checkText(addr); err != nil {
		return fmt.Errorf("address: %w", err)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("address %q: port must be a number 1-65535", addr)
	}
	if host == "" {
		return fmt.Errorf("address %q has no host; give the address the other node can reach", addr)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("address %q is a wildcard; give the address the other node can reach", addr)
	}
	return nil
}

// checkText refuses strings that are not UTF-8 or hold control or
// formatting characters (anything that could garble a terminal or log).
func checkText(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return fmt.Errorf("control character %U", r)
		}
	}
	return nil
}
