// Package journal owns mailfs's operation log vocabulary: the versioned op
// record that describes one mail-level change (delivery, flag change,
// expunge, move, folder create/rename/delete, subscription, plain file), the
// hybrid logical clock that orders ops across nodes, and the binary codec that
// persists and transmits them.
//
// Ops are wire types: they carry mailbox GUIDs, Maildir keys and flag names,
// never host-local facts such as inode numbers or flag letters. Every encoded
// op starts with a magic number and a format version, and the decoder treats
// its input as hostile: it never panics and never allocates more than the
// input it was given.
//
// journal is a leaf package: it imports nothing else from mailfs.
package journal
