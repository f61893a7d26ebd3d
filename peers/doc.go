// Package peers owns node identity (an ed25519 key whose SHA-256
// fingerprint is the node ID), and, as replication lands, pairing and the
// mutual-TLS transport between nodes.
package peers
