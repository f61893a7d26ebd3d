package peers

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// CertFile is the name of the cached certificate, next to the node key.
const CertFile = "node.crt"

// The certificate is a pure function of the key: fixed validity (RFC 5280
// §4.1.2.5's "no well-defined expiration date" for the end), a serial
// derived from the public key, and ed25519's deterministic signature. Peers
// pin the key fingerprint, never the certificate, so regenerating it (after
// a lost cache or a template change) never breaks a pairing.
var (
	certNotBefore = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	certNotAfter  = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
)

// certMemo holds one built certificate per node ID, so configs and dials
// do not re-sign it.
var certMemo sync.Map // journal.NodeID -> *tls.Certificate

// Certificate returns this node's self-signed X.509 certificate for its
// ed25519 key (CN = FormatID of the node ID). It is built in memory and
// deterministic: the same key always gives the same DER bytes, so it needs
// no disk cache to be stable. CertificateAt also caches it on disk.
func (id *Identity) Certificate() (tls.Certificate, error) {
	if c, ok := certMemo.Load(id.ID); ok {
		if cert := c.(*tls.Certificate); id.Key.Equal(cert.PrivateKey) {
			return *cert, nil
		}
	}
	der, err := buildCertificate(id.Key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("node %s: build certificate: %w", FormatID(id.ID), err)
	}
	cert, err := id.tlsCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	certMemo.Store(id.ID, &cert)
	return cert, nil
}

// CertificateAt is Certificate, cached in dir/node.crt (the identity
// directory, next to node.key; 0600, written durably). A cached certificate
// is used when it parses, carries this node's public key and is currently
// valid; otherwise it is rebuilt and rewritten.
func (id *Identity) CertificateAt(dir string) (tls.Certificate, error) {
	p := filepath.Join(dir, CertFile)
	data, err := os.ReadFile(p)
	switch {
	case err == nil:
		if der, ok := id.usableCert(data); ok {
			cert, err := id.tlsCertificate(der)
			if err == nil {
				certMemo.Store(id.ID, &cert)
				return cert, nil
			}
		}
	case !errors.Is(err, fs.ErrNotExist):
		return tls.Certificate{}, fmt.Errorf("read node certificate %s: %w", p, err)
	}
	cert, err := id.Certificate()
	if err != nil {
		return tls.Certificate{}, err
	}
	pemData := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	if err := writeDurably(dir, CertFile, pemData, 0o600); err != nil {
		return tls.Certificate{}, fmt.Errorf("write node certificate %s: %w", p, err)
	}
	return cert, nil
}

// usableCert reports whether PEM data holds a currently valid certificate
// for id's key, and returns its DER bytes.
func (id *Identity) usableCert(data []byte) ([]byte, bool) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, false
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, false
	}
	pub, ok := c.PublicKey.(ed25519.PublicKey)
	if !ok || !pub.Equal(id.Key.Public()) {
		return nil, false
	}
	now := time.Now()
	if now.Before(c.NotBefore) || now.After(c.NotAfter) {
		return nil, false
	}
	if c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) != nil {
		return nil, false
	}
	return block.Bytes, true
}

func (id *Identity) tlsCertificate(der []byte) (tls.Certificate, error) {
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("node %s: parse own certificate: %w", FormatID(id.ID), err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: id.Key, Leaf: leaf}, nil
}

// buildCertificate makes the deterministic self-signed certificate of key.
func buildCertificate(key ed25519.PrivateKey) ([]byte, error) {
	pub := key.Public().(ed25519.PublicKey)
	nodeID := Fingerprint(pub)
	h := sha256.Sum256(append([]byte("mailfs certificate serial\x00"), pub...))
	h[0] &= 0x7f // positive, at most 20 octets (RFC 5280 §4.1.2.2)
	if h[0] == 0 {
		h[0] = 1 // keep the DER length fixed
	}
	tmpl := &x509.Certificate{
		SerialNumber:          new(big.Int).SetBytes(h[:16]),
		Subject:               pkix.Name{CommonName: FormatID(nodeID), Organization: []string{"mailfs node"}},
		NotBefore:             certNotBefore,
		NotAfter:              certNotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		SubjectKeyId:          nodeID[:20],
		AuthorityKeyId:        nodeID[:20],
	}
	// ed25519 signatures are deterministic; rand is not consulted for them.
	return x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
}

// writeDurably writes data to dir/name: a temp file in dir, fsync, close,
// rename over name, fsync dir. On failure the temp file is removed.
func writeDurably(dir, name string, data []byte, perm fs.FileMode) (err error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir fsyncs a directory so a rename or removal in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
