package peers

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testIdentity(t *testing.T) (*Identity, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "identity")
	id, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	return id, dir
}

func TestCertificateDeterministic(t *testing.T) {
	id, _ := testIdentity(t)
	a, err := buildCertificate(id.Key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := buildCertificate(id.Key)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two builds of the certificate differ")
	}
	cert, err := id.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cert.Certificate[0], a) {
		t.Fatal("Certificate() differs from buildCertificate")
	}
	leaf := cert.Leaf
	if leaf.Subject.CommonName != FormatID(id.ID) {
		t.Errorf("CN = %q, want %q", leaf.Subject.CommonName, FormatID(id.ID))
	}
	pub, ok := leaf.PublicKey.(ed25519.PublicKey)
	if !ok || Fingerprint(pub) != id.ID {
		t.Errorf("certificate key %T does not match the node key", leaf.PublicKey)
	}
	if leaf.NotAfter.Year() != 9999 {
		t.Errorf("NotAfter = %v, want the year 9999", leaf.NotAfter)
	}
	if err := leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature); err != nil {
		t.Errorf("self signature: %v", err)
	}
	if leaf.IsCA {
		t.Error("node certificate must not be a CA")
	}
	if leaf.SerialNumber.Sign() <= 0 {
		t.Errorf("serial %v not positive", leaf.SerialNumber)
	}
}

func TestCertificateAtCaches(t *testing.T) {
	id, dir := testIdentity(t)
	p := filepath.Join(dir, CertFile)

	cert, err := id.CertificateAt(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %v, want 0600", p, fi.Mode().Perm())
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" || !bytes.Equal(block.Bytes, cert.Certificate[0]) {
		t.Fatal("node.crt does not hold the certificate")
	}
	// No temp files are left behind.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("leftover %s", e.Name())
		}
	}

	// Round trip: a fresh load of the key reads the cached certificate.
	id2, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert2, err := id2.CertificateAt(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cert2.Certificate[0], cert.Certificate[0]) {
		t.Fatal("reloaded certificate differs")
	}

	// A cache that is used as is: a valid certificate for the key, even
	// one we would not build ourselves, is kept.
	other := selfSigned(t, id.Key, "kept")
	writePEM(t, p, other)
	cert3, err := id.CertificateAt(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cert3.Certificate[0], other) {
		t.Fatal("a valid cached certificate was not used")
	}

	// Corrupt and foreign caches are rebuilt and rewritten.
	foreign, _ := testIdentity(t)
	for name, data := range map[string][]byte{
		"garbage":     []byte("not a certificate\n"),
		"foreign key": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: selfSigned(t, foreign.Key, "x")}),
		"empty":       nil,
	} {
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := id.CertificateAt(dir)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(c.Certificate[0], cert.Certificate[0]) {
			t.Errorf("%s: not rebuilt", name)
		}
		data, _ := os.ReadFile(p)
		if b, _ := pem.Decode(data); b == nil || !bytes.Equal(b.Bytes, cert.Certificate[0]) {
			t.Errorf("%s: node.crt not rewritten", name)
		}
	}
}

func TestParseID(t *testing.T) {
	id, _ := testIdentity(t)
	for _, s := range []string{FormatID(id.ID), id.ID.String(), strings.ToLower(FormatID(id.ID))} {
		got, err := ParseID(s)
		if err != nil || got != id.ID {
			t.Errorf("ParseID(%q) = %v, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "abc", id.ID.String() + "0", "g" + id.ID.String()[1:]} {
		if _, err := ParseID(s); err == nil {
			t.Errorf("ParseID(%q) accepted", s)
		}
	}
}

// selfSigned makes a different (non-deterministic-template) certificate
// for key.
func selfSigned(t *testing.T, key ed25519.PrivateKey, cn string) []byte {
	t.Helper()
	der, err := buildCertificate(key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	c.Subject.CommonName = cn
	c.Subject.Organization = nil
	out, err := x509.CreateCertificate(nil, c, c, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func writePEM(t *testing.T, p string, der []byte) {
	t.Helper()
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
