// Command blaster is a bulk mailing engine: it imports recipients, builds
// campaigns and alert blasts, and delivers them over SMTP through River
// workers backed by PostgreSQL. See README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "blaster:", err)
		os.Exit(exitCode(err))
	}
}
