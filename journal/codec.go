package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"unicode/utf8"
)

// opMagic starts every encoded op; opVersion is the format of what follows.
var opMagic = [4]byte{'M', 'F', 'O', 'P'}

const opVersion uint8 = 1

// Bounds on decoded values. Anything larger is malformed: no mail path,
// flag list or version vector legitimately comes near them.
const (
	MaxStringLen = 4096
	MaxFlags     = 64
	MaxVVEntries = 4096
	MaxOpSize    = 1 << 20
)

// Errors returned by Decode. They wrap ErrMalformed where the bytes are bad,
// so callers can refuse a whole batch with one errors.Is check.
var (
	ErrMalformed      = errors.New("journal: malformed op")
	ErrUnknownVersion = errors.New("journal: op format version unknown (written by a newer mailfs?)")
	ErrBadMagic       = fmt.Errorf("%w: bad magic", ErrMalformed)
)

// Field tags. Numbers are part of the wire format: append only.
const (
	tagOrigin     = 1
	tagSeq        = 2
	tagWall       = 3
	tagLogical    = 4
	tagMailbox    = 5
	tagTarget     = 6
	tagPath       = 7
	tagNewPath    = 8
	tagFrom       = 9
	tagKey        = 10
	tagReplaced   = 11
	tagName       = 12
	tagLinkTarget = 13
	tagSub        = 14
	tagFlag       = 15 // repeated
	tagMode       = 16
	tagMtime      = 17
	tagSize       = 18
	tagContent    = 19
	tagSeen       = 20 // repeated: 32-byte node ID + uvarint seq
	tagNewKey     = 21
	tagChanged    = 22 // repeated: a flag whose presence this op changed
)

// Encode appends the binary form of op to dst.
func Encode(dst []byte, op *Op) []byte {
	dst = append(dst, opMagic[:]...)
	dst = append(dst, opVersion, byte(op.Kind))
	bytesField := func(tag byte, v []byte) {
		dst = append(dst, tag)
		dst = binary.AppendUvarint(dst, uint64(len(v)))
		dst = append(dst, v...)
	}
	strField := func(tag byte, v string) {
		if v != "" {
			dst = append(dst, tag)
			dst = binary.AppendUvarint(dst, uint64(len(v)))
			dst = append(dst, v...)
		}
	}
	uintField := func(tag byte, v uint64) {
		if v != 0 {
			var tmp [binary.MaxVarintLen64]byte
			bytesField(tag, tmp[:binary.PutUvarint(tmp[:], v)])
		}
	}
	intField := func(tag byte, v int64) {
		if v != 0 {
			var tmp [binary.MaxVarintLen64]byte
			bytesField(tag, tmp[:binary.PutVarint(tmp[:], v)])
		}
	}
	if !op.Origin.IsZero() {
		bytesField(tagOrigin, op.Origin[:])
	}
	uintField(tagSeq, op.Seq)
	intField(tagWall, op.Time.WallMs)
	uintField(tagLogical, uint64(op.Time.Logical))
	if !op.Mailbox.IsZero() {
		bytesField(tagMailbox, op.Mailbox[:])
	}
	if !op.Target.IsZero() {
		bytesField(tagTarget, op.Target[:])
	}
	strField(tagPath, op.Path)
	strField(tagNewPath, op.NewPath)
	strField(tagFrom, op.From)
	strField(tagKey, op.Key)
	strField(tagNewKey, op.NewKey)
	strField(tagReplaced, op.Replaced)
	strField(tagName, op.Name)
	strField(tagLinkTarget, op.LinkTarget)
	uintField(tagSub, uint64(op.Sub))
	for _, f := range op.Flags {
		bytesField(tagFlag, []byte(f))
	}
	for _, f := range op.Changed {
		bytesField(tagChanged, []byte(f))
	}
	uintField(tagMode, uint64(op.Mode))
	intField(tagMtime, op.Mtime)
	intField(tagSize, op.Size)
	if !op.Content.IsZero() {
		bytesField(tagContent, op.Content[:])
	}
	if len(op.Seen) > 0 {
		ids := make([]NodeID, 0, len(op.Seen))
		for id := range op.Seen {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return string(ids[i][:]) < string(ids[j][:]) })
		for _, id := range ids {
			v := append([]byte(nil), id[:]...)
			v = binary.AppendUvarint(v, op.Seen[id])
			bytesField(tagSeen, v)
		}
	}
	return dst
}

// Decode parses one op. It never panics, and allocates at most in
// proportion to len(b).
func Decode(b []byte) (*Op, error) {
	if len(b) > MaxOpSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds the %d byte limit", ErrMalformed, len(b), MaxOpSize)
	}
	if len(b) < 6 {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrMalformed, len(b))
	}
	if [4]byte(b[:4]) != opMagic {
		return nil, ErrBadMagic
	}
	if b[4] != opVersion {
		return nil, fmt.Errorf("%w: version %d, this mailfs reads %d", ErrUnknownVersion, b[4], opVersion)
	}
	op := &Op{Kind: Kind(b[5])}
	if !op.Kind.Valid() {
		return nil, fmt.Errorf("%w: unknown kind %d", ErrMalformed, b[5])
	}
	rest := b[6:]
	for len(rest) > 0 {
		tag := rest[0]
		n, w := binary.Uvarint(rest[1:])
		if w <= 0 {
			return nil, fmt.Errorf("%w: bad length of field %d", ErrMalformed, tag)
		}
		rest = rest[1+w:]
		if n > uint64(len(rest)) {
			return nil, fmt.Errorf("%w: field %d claims %d bytes, %d left", ErrMalformed, tag, n, len(rest))
		}
		v := rest[:n]
		rest = rest[n:]
		if err := op.setField(tag, v); err != nil {
			return nil, err
		}
	}
	return op, nil
}

func (op *Op) setField(tag byte, v []byte) error {
	str := func(dst *string) error {
		if len(v) > MaxStringLen {
			return fmt.Errorf("%w: field %d is %d bytes long", ErrMalformed, tag, len(v))
		}
		if !utf8.Valid(v) {
			return fmt.Errorf("%w: field %d is not UTF-8", ErrMalformed, tag)
		}
		*dst = string(v)
		return nil
	}
	uvar := func() (uint64, error) {
		x, w := binary.Uvarint(v)
		if w <= 0 || w != len(v) {
			return 0, fmt.Errorf("%w: field %d is not a varint", ErrMalformed, tag)
		}
		return x, nil
	}
	svar := func() (int64, error) {
		x, w := binary.Varint(v)
		if w <= 0 || w != len(v) {
			return 0, fmt.Errorf("%w: field %d is not a varint", ErrMalformed, tag)
		}
		return x, nil
	}
	fixed := func(dst []byte) error {
		if len(v) != len(dst) {
			return fmt.Errorf("%w: field %d is %d bytes, want %d", ErrMalformed, tag, len(v), len(dst))
		}
		copy(dst, v)
		return nil
	}
	var err error
	var x uint64
	switch tag {
	case tagOrigin:
		return fixed(op.Origin[:])
	case tagSeq:
		op.Seq, err = uvar()
	case tagWall:
		op.Time.WallMs, err = svar()
	case tagLogical:
		x, err = uvar()
		if err == nil && x > 1<<32-1 {
			err = fmt.Errorf("%w: logical clock %d out of range", ErrMalformed, x)
		}
		op.Time.Logical = uint32(x)
	case tagMailbox:
		return fixed(op.Mailbox[:])
	case tagTarget:
		return fixed(op.Target[:])
	case tagPath:
		return str(&op.Path)
	case tagNewPath:
		return str(&op.NewPath)
	case tagFrom:
		return str(&op.From)
	case tagKey:
		return str(&op.Key)
	case tagNewKey:
		return str(&op.NewKey)
	case tagReplaced:
		return str(&op.Replaced)
	case tagName:
		return str(&op.Name)
	case tagLinkTarget:
		return str(&op.LinkTarget)
	case tagSub:
		x, err = uvar()
		if err == nil && x > uint64(SubCur) {
			err = fmt.Errorf("%w: unknown subdirectory %d", ErrMalformed, x)
		}
		op.Sub = Sub(x)
	case tagFlag:
		if len(op.Flags) >= MaxFlags {
			return fmt.Errorf("%w: more than %d flags", ErrMalformed, MaxFlags)
		}
		var f string
		if err := str(&f); err != nil {
			return err
		}
		op.Flags = append(op.Flags, f)
	case tagChanged:
		if len(op.Changed) >= MaxFlags {
			return fmt.Errorf("%w: more than %d changed flags", ErrMalformed, MaxFlags)
		}
		var f string
		if err := str(&f); err != nil {
			return err
		}
		op.Changed = append(op.Changed, f)
	case tagMode:
		x, err = uvar()
		if err == nil && x > 1<<32-1 {
			err = fmt.Errorf("%w: mode %d out of range", ErrMalformed, x)
		}
		op.Mode = uint32(x)
	case tagMtime:
		op.Mtime, err = svar()
	case tagSize:
		op.Size, err = svar()
		if err == nil && op.Size < 0 {
			err = fmt.Errorf("%w: negative size", ErrMalformed)
		}
	case tagContent:
		return fixed(op.Content[:])
	case tagSeen:
		if len(v) < 33 {
			return fmt.Errorf("%w: version vector entry of %d bytes", ErrMalformed, len(v))
		}
		if len(op.Seen) >= MaxVVEntries {
			return fmt.Errorf("%w: version vector over %d entries", ErrMalformed, MaxVVEntries)
		}
		var id NodeID
		copy(id[:], v[:32])
		seq, w := binary.Uvarint(v[32:])
		if w <= 0 || 32+w != len(v) {
			return fmt.Errorf("%w: version vector entry is not a varint", ErrMalformed)
		}
		if op.Seen == nil {
			op.Seen = VersionVector{}
		}
		if _, dup := op.Seen[id]; dup {
			return fmt.Errorf("%w: version vector names %s twice", ErrMalformed, id.Short())
		}
		op.Seen[id] = seq
	default:
		return fmt.Errorf("%w: unknown field %d", ErrMalformed, tag)
	}
	return err
}
