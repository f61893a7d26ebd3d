package syncer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ProtocolVersion is the replication protocol this mailfs speaks. A peer
// that speaks another one is refused with both versions named.
const ProtocolVersion uint16 = 1

var (
	helloMagic = [4]byte{'M', 'F', 'H', 'L'}
	replyMagic = [4]byte{'M', 'F', 'H', 'R'}
	ackMagic   = [4]byte{'M', 'F', 'A', 'K'}
	nackMagic  = [4]byte{'M', 'F', 'N', 'K'}
)

// ErrProtocol marks a peer that does not follow the protocol.
var ErrProtocol = errors.New("replication protocol violated")

// ErrVersion marks a peer speaking another protocol version.
var ErrVersion = errors.New("replication protocol version not supported")

// hello opens a push connection: the pusher's journal epoch and seq.
type hello struct {
	Version uint16
	Epoch   uint64
	Seq     uint64
}

// reply answers a hello: how far the receiver has applied the pusher's
// journal (epoch and seq).
type reply struct {
	Version uint16
	Epoch   uint64
	Seq     uint64
}

const helloLen = 4 + 2 + 8 + 8

func writeHello(w io.Writer, magic [4]byte, version uint16, epoch, seq uint64) error {
	b := make([]byte, 0, helloLen)
	b = append(b, magic[:]...)
	b = binary.BigEndian.AppendUint16(b, version)
	b = binary.BigEndian.AppendUint64(b, epoch)
	b = binary.BigEndian.AppendUint64(b, seq)
	_, err := w.Write(b)
	return err
}

func readHello(r io.Reader, magic [4]byte) (version uint16, epoch, seq uint64, err error) {
	var b [helloLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, 0, 0, err
	}
	if [4]byte(b[:4]) != magic {
		return 0, 0, 0, fmt.Errorf("%w: expected %q, got %q", ErrProtocol, magic[:], b[:4])
	}
	version = binary.BigEndian.Uint16(b[4:])
	if version != ProtocolVersion {
		return version, 0, 0, fmt.Errorf("%w: peer speaks version %d, this mailfs %d", ErrVersion, version, ProtocolVersion)
	}
	return version, binary.BigEndian.Uint64(b[6:]), binary.BigEndian.Uint64(b[14:]), nil
}

// maxReason bounds the refusal reason a receiver sends back.
const maxReason = 1024

// writeAck acknowledges every op up to seq.
func writeAck(w io.Writer, seq uint64) error {
	b := append(ackMagic[:0:0], ackMagic[:]...)
	b = binary.BigEndian.AppendUint64(b, seq)
	_, err := w.Write(b)
	return err
}

// writeNack refuses the last segment, saying why.
func writeNack(w io.Writer, reason string) error {
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	b := append(nackMagic[:0:0], nackMagic[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(reason)))
	b = append(b, reason...)
	_, err := w.Write(b)
	return err
}

// RefusedError is a segment the peer refused, with its reason.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return "peer refused the segment: " + e.Reason }

// readAck reads an ack (its seq) or a nack (a *RefusedError).
func readAck(r io.Reader) (uint64, error) {
	var m [4]byte
	if _, err := io.ReadFull(r, m[:]); err != nil {
		return 0, err
	}
	switch m {
	case ackMagic:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, err
		}
		return binary.BigEndian.Uint64(b[:]), nil
	case nackMagic:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, err
		}
		n := binary.BigEndian.Uint16(b[:])
		if n > maxReason {
			return 0, fmt.Errorf("%w: refusal reason of %d bytes", ErrProtocol, n)
		}
		reason := make([]byte, n)
		if _, err := io.ReadFull(r, reason); err != nil {
			return 0, err
		}
		return 0, &RefusedError{Reason: string(reason)}
	}
	return 0, fmt.Errorf("%w: expected an ack, got %q", ErrProtocol, m[:])
}
