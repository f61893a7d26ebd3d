// Command mailfs mounts a Maildir tree through FUSE, journals every
// mail-level change durably, and (as replication lands) mirrors it to
// paired peers. See README.md and design §9 for the command-line contract.
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"
)

// Exit codes (design §9). They are an API: never renumber.
const (
	exitOK        = 0
	exitFailure   = 1
	exitRaced     = 2
	exitUsage     = 64
	exitTemporary = 75
)

// exitError carries the exit code a failure maps to.
type exitError struct {
	code int
	err  error
	// silent: the command has said all there is to say on stdout (status
	// --check's one line).
	silent bool
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, a ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, a...)}
}

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"init", "create a store (and index an existing Maildir tree in place)", runInit},
		{"mount", "mount the store's Maildir tree and serve it in the foreground", runMount},
		{"pair", "pair with another node: 'pair invite' prints a code, 'pair join CODE' uses it", runPair},
		{"status", "show this node's state (journal, mailboxes, messages, peers)", runStatus},
		{"sync", "wait until every peer has acknowledged what was journaled (exit 75 on timeout)", runSync},
		{"mailboxes", "list mailboxes with their GUIDs and message counts", runMailboxes},
		{"journal", "print journaled ops (for admins and tests)", runJournal},
		{"bench", "benchmark the mount against the native filesystem and a go-fuse loopback", runBench},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(stdout)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(args[1:], stdout, stderr)
		if err == nil {
			return exitOK
		}
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		var ee *exitError
		code := exitFailure
		if errors.As(err, &ee) {
			code = ee.code
		}
		if ee == nil || !ee.silent {
			fmt.Fprintf(stderr, "mailfs %s: %v\n", c.name, err)
		}
		if code == exitUsage {
			fmt.Fprintf(stderr, "Run 'mailfs %s --help' for usage.\n", c.name)
		}
		return code
	}
	fmt.Fprintf(stderr, "mailfs: unknown command %q\n", args[0])
	printUsage(stderr)
	return exitUsage
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: mailfs COMMAND [flags]")
	fmt.Fprintln(w)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Exit codes: 0 done; 2 done but changes raced, run again; 75 temporary failure;")
	fmt.Fprintln(w, "1 any other failure; 64 usage error. 'mailfs COMMAND --help' describes each command.")
}

// newFlags returns a flag set whose --help prints about, the flags and an
// example.
func newFlags(name, about, example string, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: mailfs %s\n\n%s\n\nFlags:\n%s\nExample:\n  %s\n", name, about, fs.FlagUsages(), example)
	}
	return fs
}

func parseFlags(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageErr("%v", err)
	}
	return nil
}

// defaultStore is $MAILFS_STORE, else /var/lib/mailfs for root, else
// ~/.local/share/mailfs (design §9).
func defaultStore() string {
	if s := os.Getenv("MAILFS_STORE"); s != "" {
		return s
	}
	if os.Geteuid() == 0 {
		return "/var/lib/mailfs"
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".mailfs"
	}
	return filepath.Join(home, ".local", "share", "mailfs")
}

func newLogger(stderr io.Writer) *slog.Logger {
	level := slog.LevelInfo
	switch strings.ToLower(os.Getenv("MAILFS_LOG")) {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
}
