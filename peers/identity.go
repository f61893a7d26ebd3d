package peers

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"mailfs/journal"
)

// Identity is this node's key pair.
type Identity struct {
	Key ed25519.PrivateKey
	ID  journal.NodeID
}

const keyFile = "node.key"

// LoadOrCreateIdentity reads the node key from dir, creating it (0600, in
// a 0700 directory) when absent.
func LoadOrCreateIdentity(dir string) (*Identity, error) {
	id, err := LoadIdentity(dir)
	if !errors.Is(err, fs.ErrNotExist) {
		return id, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create identity dir %s: %w", dir, err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	// The key is the node's identity: a power cut must not lose it.
	if err := writeDurably(dir, keyFile, data, 0o600); err != nil {
		return nil, fmt.Errorf("install node key %s: %w", filepath.Join(dir, keyFile), err)
	}
	return newIdentity(priv), nil
}

// LoadIdentity reads the node key from dir.
func LoadIdentity(dir string) (*Identity, error) {
	p := filepath.Join(dir, keyFile)
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("node key %s: not PEM", p)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("node key %s: %w", p, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("node key %s: not an ed25519 key", p)
	}
	return newIdentity(priv), nil
}

func newIdentity(priv ed25519.PrivateKey) *Identity {
	return &Identity{Key: priv, ID: Fingerprint(priv.Public().(ed25519.PublicKey))}
}

// Fingerprint is the node ID of a public key.
func Fingerprint(pub ed25519.PublicKey) journal.NodeID {
	return journal.NodeID(sha256.Sum256(pub))
}

// FormatID prints a node ID in groups of four hex digits, for humans to
// compare over the phone.
func FormatID(id journal.NodeID) string {
	s := strings.ToUpper(id.String())
	var parts []string
	for i := 0; i < len(s); i += 8 {
		parts = append(parts, s[i:i+8])
	}
	return strings.Join(parts, "-")
}
