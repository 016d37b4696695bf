package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/blaster-mail/blaster/bounce"
	"github.com/blaster-mail/blaster/returnpath"
)

// bounceKeyFlag is the --bounce-key-file flag of the commands that sign or
// verify return paths; the key itself comes from the file or
// $BLASTER_BOUNCE_KEY, never from the command line.
const bounceKeyFlag = "bounce-key-file"

const bounceKeyUsage = "file with the return path signing key (else $" + returnpath.KeyEnv + ")"

func newBouncesCmd(a *app) *cobra.Command {
	var (
		maildirs, mboxes []string
		listen, hostname string
		keyFile          string
		tlsCert, tlsKey  string
		asJSON           bool
		stopTimeout      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "bounces [--maildir DIR]... [--mbox FILE]... [--listen ADDR [--tls-cert FILE --tls-key FILE]]",
		Short: "Feed bounces (RFC 3464 delivery status notifications) back into the ledger",
		Long: `Read bounces sent to campaigns' signed return paths (campaign create
--return-path) and apply them: a hard bounce (Action: failed, Status 5.x.x)
marks the recipient's delivery bounced, keeping the status and the remote
server's reply, and suppresses the address for every sender; a soft one
(4.x.x, Action: delayed) is counted. Every bounce is recorded once per bounce
message and recipient, so reading the same message again changes nothing.

Sources: --maildir DIR (new/ and cur/; processed messages are moved to cur/
and flagged seen), --mbox FILE (read whole, left as it is), --listen ADDR (a
small SMTP server for the return-path domain that takes mail only for validly
signed return paths and processes it as it arrives, until SIGINT/SIGTERM),
and with none of these one message on stdin. With --tls-cert and --tls-key
(PEM files, read once at start: restart after renewing) the receiver offers
STARTTLS, TLS 1.2 or later, which sending MTAs use when it is offered;
without them it offers none and bounces arrive in clear. A message not sent
to a signed return path (Delivered-To, X-Original-To, Envelope-To or To in
files; RCPT TO when listening) is ignored.

The signing key is the workers': $` + returnpath.KeyEnv + ` or --bounce-key-file.
Prints what was read: messages, hard and soft bounces recorded, bounces of
addresses that are no recipient of the campaign (unmatched), duplicates (seen
before), ignored messages, and those left for a later run (later: a hard
bounce for a delivery a worker is still recording; a Maildir keeps them in
new/, an mbox is read again whole).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			// Before anything is read: a bad certificate must not leave
			// a Maildir half processed.
			tlsConfig, err := listenTLSConfig(listen, tlsCert, tlsKey)
			if err != nil {
				return err
			}
			key, err := returnpath.LoadKey(keyFile, os.Getenv)
			if err != nil {
				return err
			}
			signer, err := returnpath.NewSigner(key)
			if err != nil {
				return err
			}
			pool, err := a.db(ctx)
			if err != nil {
				return err
			}
			p := &bounce.Processor{Pool: pool, Signer: signer, Logger: a.logger}
			var sum bounce.Summary
			report := func() error {
				if asJSON {
					return writeJSON(a.stdout, sum)
				}
				writeBounceSummary(a.stdout, sum)
				return nil
			}
			for _, dir := range maildirs {
				s, err := p.ProcessMaildir(ctx, dir)
				sum.Merge(s)
				if err != nil {
					report()
					return err
				}
			}
			for _, name := range mboxes {
				s, err := processMboxFile(ctx, p, name)
				sum.Merge(s)
				if err != nil {
					report()
					return err
				}
			}
			if len(maildirs) == 0 && len(mboxes) == 0 && listen == "" {
				s, err := p.ProcessReader(ctx, a.stdin, "stdin")
				sum.Merge(s)
				if err != nil {
					return err
				}
			}
			if listen != "" {
				srv, err := bounce.NewServer(bounce.ServerConfig{Processor: p, Domain: hostname, TLSConfig: tlsConfig})
				if err != nil {
					return err
				}
				if err := srv.Listen(listen); err != nil {
					return err
				}
				a.logger.Info("receiving bounces", "addr", srv.Addr(), "starttls", tlsConfig != nil)
				<-ctx.Done()
				stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
				defer cancel()
				err = srv.Close(stopCtx)
				sum.Merge(srv.Summary())
				if err != nil {
					report()
					return fmt.Errorf("stopping the bounce receiver: %w", err)
				}
			}
			return report()
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&maildirs, "maildir", nil, "Maildir to read bounces from (repeatable)")
	f.StringArrayVar(&mboxes, "mbox", nil, "mbox file to read bounces from (repeatable; - for stdin)")
	f.StringVar(&listen, "listen", "", "receive bounces over SMTP on this address (e.g. :25) until SIGINT/SIGTERM")
	f.StringVar(&tlsCert, "tls-cert", "", "PEM certificate chain for STARTTLS on --listen (with --tls-key)")
	f.StringVar(&tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	f.StringVar(&hostname, "hostname", "", "name in the SMTP greeting (default bounces.blaster.test)")
	f.DurationVar(&stopTimeout, "stop-timeout", 30*time.Second, "how long to let SMTP transactions in flight finish on SIGINT/SIGTERM")
	f.StringVar(&keyFile, bounceKeyFlag, "", bounceKeyUsage)
	f.BoolVar(&asJSON, "json", false, "print the summary as one JSON object")
	return cmd
}

// listenTLSConfig loads the receiver's certificate for STARTTLS from
// --tls-cert and --tls-key; with neither it returns nil: no STARTTLS.
func listenTLSConfig(listen, certFile, keyFile string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, errors.New("--tls-cert and --tls-key go together: give both or neither")
	}
	if listen == "" {
		return nil, errors.New("--tls-cert and --tls-key given without --listen")
	}
	// The key stays in the returned config; errors and the log name only
	// the files (LoadX509KeyPair's errors quote no PEM content).
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading --tls-cert %s and --tls-key %s: %w", certFile, keyFile, err)
	}
	// TLS 1.0 and 1.1 are deprecated (RFC 8996); Go's server default is
	// 1.2 already, but stated here it does not hang on a GODEBUG setting.
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

func processMboxFile(ctx context.Context, p *bounce.Processor, name string) (bounce.Summary, error) {
	var r io.Reader = os.Stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return bounce.Summary{}, fmt.Errorf("reading mbox: %w", err)
		}
		defer f.Close()
		r = f
	}
	return p.ProcessMbox(ctx, r, name)
}

func writeBounceSummary(w io.Writer, s bounce.Summary) {
	fmt.Fprintf(w, "messages %d: hard %d, soft %d, unmatched %d, duplicates %d, ignored %d, later %d\n",
		s.Messages, s.Hard, s.Soft, s.Unmatched, s.Duplicates, s.Ignored, s.Later)
}

func newCampaignReportCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "report ID",
		Short: "Show a campaign's delivery and bounce figures: bounce rate, top reasons",
		Long: `Show how a campaign went: recipients sent (accepted and not bounced since),
bounced for good (rejected at SMTP time or hard-bounced later, and of those the
ones that bounced later), soft-bounced only, the bounce rate (bounced /
(sent + bounced)), suppressions its bounces added, and the top reasons grouped
by enhanced status code and normalized diagnostic. --json prints one object
with stable field names.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, pool, err := a.campaignArg(cmd, args[0])
			if err != nil {
				return err
			}
			r, err := bounce.GetReport(cmd.Context(), pool, id)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, r)
			}
			return writeReport(a.stdout, r)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return cmd
}

func writeReport(w io.Writer, r *bounce.CampaignReport) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "campaign\t%d %s (%s)\n", r.ID, r.Name, r.Kind)
	fmt.Fprintf(tw, "state\t%s\n", r.State)
	fmt.Fprintf(tw, "total\t%d\n", r.Total)
	fmt.Fprintf(tw, "sent\t%d\n", r.Sent)
	fmt.Fprintf(tw, "bounced (hard)\t%d (%d after acceptance)\n", r.BouncedHard, r.BouncedAsync)
	fmt.Fprintf(tw, "bounced (soft only)\t%d\n", r.BouncedSoft)
	fmt.Fprintf(tw, "bounce rate\t%.2f%%\n", 100*r.BounceRate)
	fmt.Fprintf(tw, "unmatched bounces\t%d\n", r.UnmatchedBounces)
	fmt.Fprintf(tw, "suppressions added\t%d\n", r.SuppressionsAdded)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.TopReasons) == 0 {
		return nil
	}
	fmt.Fprintln(w, "top reasons:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  COUNT\tCLASS\tSTATUS\tDIAGNOSTIC")
	for _, x := range r.TopReasons {
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\n", x.Count, x.Class, orDash(x.Status), orDash(x.Diagnostic))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// loadBounceKey loads the return path key when a return path is asked for.
func loadBounceKey(returnPath, file string) ([]byte, error) {
	if returnPath == "" {
		if file != "" {
			return nil, errors.New("--" + bounceKeyFlag + " given without --return-path")
		}
		return nil, nil
	}
	return returnpath.LoadKey(file, os.Getenv)
}
