// Package maildir knows what Maildir and Dovecot names mean, and nothing
// else: it parses message file names (base, info, flag letters), translates
// flag letters to names through a mailbox's dovecot-keywords, reads the
// subscriptions and dovecot-uidlist formats, and classifies any path of the
// mounted tree (design §3) with one pure function. It does no I/O.
package maildir
