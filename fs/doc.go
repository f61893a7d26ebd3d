// Package fs is mailfs's FUSE layer. It presents the store's real Maildir
// tree through a loopback filesystem (go-fuse) and, for every mutating
// syscall, reports what changed to the index as an Event, then answers the
// kernel only after the index has made the resulting ops durable.
//
// The order of a mutation is: validate names, do the syscall on the backing
// tree, submit the event (under one lock, so the journal order is the order
// of the changes), release the lock, wait for the group commit. If the
// commit fails the syscall is undone where that is possible (rename back,
// unlink a new link, restore a staged unlink), so a full disk never leaves a
// change on disk that the journal does not know.
//
// fs never imports the network: replication reaches it only through the
// index and the mountpoint.
package fs
