package peers

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestInviteRoundTrip(t *testing.T) {
	a, _ := testIdentity(t)
	for _, addr := range []string{"127.0.0.1:7000", "[2001:db8::1]:7000", "mx1.example.org:65535", strings.Repeat("h", 249) + ":7000"} {
		inv, err := NewInvite(a.ID, addr, 10*time.Minute)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		code := inv.String()
		if !strings.HasPrefix(code, "mailfs1:") || strings.ContainsAny(code, " \n\t") {
			t.Fatalf("code %q is not one mailfs1: line", code)
		}
		got, err := ParseInvite("  " + code + "\n")
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		if got.Address != inv.Address || got.Inviter != inv.Inviter || got.Secret != inv.Secret || !got.Expires.Equal(inv.Expires) {
			t.Fatalf("round trip: got %+v, want %+v", got, inv)
		}
		if time.Until(got.Expires) > 10*time.Minute || time.Until(got.Expires) < 9*time.Minute {
			t.Errorf("expires %v, want about 10m from now", got.Expires)
		}
	}
	b, err := NewInvite(a.ID, "127.0.0.1:7000", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := NewInvite(a.ID, "127.0.0.1:7000", time.Minute)
	if b.Secret == c.Secret {
		t.Error("two invites share a secret")
	}
}

func TestNewInviteRefuses(t *testing.T) {
	a, _ := testIdentity(t)
	for _, tc := range []struct {
		addr string
		ttl  time.Duration
	}{
		{":7000", time.Minute},
		{"0.0.0.0:7000", time.Minute},
		{"[::]:7000", time.Minute},
		{"host", time.Minute},
		{"host:0", time.Minute},
		{"host:http", time.Minute},
		{"", time.Minute},
		{"ho\nst:7000", time.Minute},
		{strings.Repeat("h", 300) + ":7000", time.Minute},
		{"host:7000", 0},
		{"host:7000", -time.Second},
		{"host:7000", MaxInviteTTL + time.Second},
	} {
		if _, err := NewInvite(a.ID, tc.addr, tc.ttl); err == nil {
			t.Errorf("NewInvite(%q, %v) accepted", tc.addr, tc.ttl)
		}
	}
}

func TestParseInviteExpired(t *testing.T) {
	a, _ := testIdentity(t)
	inv, err := NewInvite(a.ID, "127.0.0.1:7000", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	code := inv.String()
	if _, err := parseInvite(code, inv.Expires.Add(-time.Second)); err != nil {
		t.Fatalf("just before expiry: %v", err)
	}
	for _, now := range []time.Time{inv.Expires, inv.Expires.Add(time.Hour)} {
		_, err := parseInvite(code, now)
		if !errors.Is(err, ErrInviteExpired) {
			t.Fatalf("at %v: err = %v, want ErrInviteExpired", now, err)
		}
	}
	inv.Expires = time.Now().Add(-time.Second).Truncate(time.Second)
	if _, err := ParseInvite(inv.String()); !errors.Is(err, ErrInviteExpired) {
		t.Fatalf("ParseInvite of an expired code: %v", err)
	}
}

func TestParseInviteMalformed(t *testing.T) {
	a, _ := testIdentity(t)
	inv, err := NewInvite(a.ID, "127.0.0.1:7000", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	code := inv.String()
	body := strings.TrimPrefix(code, "mailfs1:")
	raw, _ := base64.RawURLEncoding.DecodeString(body)
	reencode := func(b []byte) string { return "mailfs1:" + base64.RawURLEncoding.EncodeToString(b) }

	for _, tc := range []struct {
		name, code string
		want       error
	}{
		{"empty", "", ErrInviteVersion},
		{"other scheme", "https://example.org/", ErrInviteVersion},
		{"no version", "mailfs:" + body, ErrInviteVersion},
		{"future version", "mailfs2:" + body, ErrInviteVersion},
		{"no colon", "mailfs1" + body, ErrInviteMalformed},
		{"prefix only", "mailfs1:", ErrInviteMalformed},
		{"bad base64", "mailfs1:" + body[:10] + "!" + body[11:], ErrInviteMalformed},
		{"padded", code + "=", ErrInviteMalformed},
		{"truncated", code[:len(code)-6], ErrInviteMalformed},
		{"short", code[:40], ErrInviteMalformed},
		{"extended", code + "AAAA", ErrInviteMalformed},
		{"inner space", code[:30] + " " + code[30:], ErrInviteMalformed},
		{"checksum dropped", reencode(raw[:len(raw)-4]), ErrInviteMalformed},
	} {
		_, err := ParseInvite(tc.code)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
			continue
		}
		if len(body) > 20 && strings.Contains(err.Error(), body[8:20]) {
			t.Errorf("%s: error %q quotes the code", tc.name, err)
		}
	}
}

func TestParseInviteTampered(t *testing.T) {
	a, _ := testIdentity(t)
	inv, err := NewInvite(a.ID, "127.0.0.1:7000", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	code := inv.String()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	// Change every character of the payload in turn: each edit must be
	// refused (the checksum, or strict base64 for the last character's
	// spare bits).
	for i := len("mailfs1:"); i < len(code); i++ {
		repl := alphabet[(strings.IndexByte(alphabet, code[i])+1)%len(alphabet)]
		bad := code[:i] + string(repl) + code[i+1:]
		if _, err := ParseInvite(bad); !errors.Is(err, ErrInviteMalformed) {
			t.Fatalf("edit at %d: err = %v, want ErrInviteMalformed", i, err)
		}
	}
	// A re-encoded code with a different secret is well formed (the
	// checksum is not a MAC); the pairing proof is what refuses it.
	inv.Secret[0] ^= 1
	if _, err := ParseInvite(inv.String()); err != nil {
		t.Fatalf("re-encoded code: %v", err)
	}
}
