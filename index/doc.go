// Package index owns mailfs's durable state in badger: the mailboxes with
// their GUIDs, the messages with their keys, flags and content IDs, the
// subscriptions, plain files and tombstones, and the journal of ops itself.
//
// Every change, whether it comes from the FUSE layer or (later) from a peer,
// goes through one path: an Event is submitted to the committer, which turns
// it into zero or more journal ops and the index state they imply, and
// commits both in the same badger transaction. Concurrent events share one
// transaction and one fsync (group commit); Commit returns only once the
// transaction is durable.
package index
