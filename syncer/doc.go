// Package syncer replicates the journal between paired nodes (design §8):
// it pushes the ops this node originated to every peer over mutual TLS,
// and merges the ops peers push to it by the rules of design §6, carrying
// them out through the mount so local readers (and Dovecot's IDLE) see
// them at once. (A segment's many deliveries into one directory go in
// behind the kernel's back but the last, which goes through the mount
// before the mailbox's dotlock is let go: the kernel then drops what it
// cached of the directory, and inotify hears of its change.)
//
// A node dials each peer and pushes; the peer's listener receives. One
// connection carries one direction: hello (version, epoch), the
// receiver's cursor, then segments (journal.SegmentWriter) answered one by
// one with acks. The receiver validates a whole segment, stages its bodies,
// applies its ops, makes its cursor durable, and only then acknowledges.
// Anything wrong with a segment refuses it whole, with a reason sent back
// and logged, and drops the connection; the pusher retries with backoff.
package syncer
