package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/unsubscribe"
	"github.com/blaster-mail/blaster/worker"
)

func newCampaignCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "campaign",
		Short: "Create, start and follow campaigns",
	}
	cmd.AddCommand(newCampaignCreateCmd(a), newCampaignStartCmd(a), newCampaignStatusCmd(a), newCampaignListCmd(a),
		newCampaignReportCmd(a), newCampaignPreviewCmd(a))
	cmd.AddCommand(newLifecycleCmds(a)...)
	for _, sub := range cmd.Commands() {
		if strings.HasPrefix(sub.Use, sub.Name()+" ID") {
			sub.ValidArgsFunction = a.completeCampaignID
		}
	}
	return cmd
}

// completeCampaignID offers the newest campaigns whose id starts with what
// was typed, with their name and state, to shell completion.
func (a *app) completeCampaignID(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
	defer cancel()
	pool, err := a.db(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	rows, err := pool.Query(ctx, `
		SELECT id::text || E'\t' || name || ' (' || state || ')' FROM campaigns
		WHERE id::text LIKE $1 || '%' ORDER BY id DESC LIMIT 50`, prefix)
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	return ids, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveKeepOrder
}

func newCampaignCreateCmd(a *app) *cobra.Command {
	var (
		n                  campaign.New
		kind               string
		textFile, htmlFile string
		retry              string
		maxAge             time.Duration
		unsub              campaign.Unsubscribe
		unsubKeyFile       string
		dkim               campaign.DKIM
		rp                 campaign.ReturnPath
		bounceKeyFile      string
		dsn                dsnFlags
		configFile         string
	)
	cmd := &cobra.Command{
		Use:   "create --name N --list L --from ADDR --subject S --text FILE [--html FILE]",
		Short: "Create a draft campaign and print its id",
		Long: `Create a draft campaign. Subject and bodies are Go templates over the
recipient: {{.Email}}, {{.Name}}, {{.Attrs.COLUMN}} (the other CSV columns);
{{or .Name "friend"}} gives a fallback. A campaign whose templates read no
recipient data goes out as one SMTP transaction per batch of up to 100.

With --return-path its mail goes out with a signed envelope sender, so that
bounces come back to 'blaster bounces': per recipient for a personalized
campaign (or with --return-path-per-recipient), per campaign otherwise. The
key is $BLASTER_BOUNCE_KEY or --bounce-key-file, here and on every worker.

With --attach (repeatable) each message carries the file as an attachment.
Its content is stored with the campaign in the database (at most 25 MiB for
all of a campaign's files), so workers on other machines need no access to
it; the file may change or go once the campaign is created.

--dsn-notify and --dsn-ret ask receiving servers for delivery status
notifications (RFC 3461). Every transaction carries an envelope id naming
the campaign (and the recipient, when it has one) and each recipient's
original address, so 'blaster bounces' can match what comes back.

The new campaign's id is printed alone on stdout.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if n.Text, err = readOptional(textFile); err != nil {
				return err
			}
			if n.HTML, err = readOptional(htmlFile); err != nil {
				return err
			}
			n.Kind = campaign.Kind(kind)
			if err := loadCampaignDefaults(configFile, cmd.Flags(), &n.Settings); err != nil {
				return err
			}
			if retry != "" {
				if n.Settings.RetrySchedule, err = parseSchedule(retry); err != nil {
					return fmt.Errorf("--retry-schedule: %w", err)
				}
			}
			if cmd.Flags().Changed("max-age") {
				n.Settings.MaxAge = campaign.Duration(maxAge)
			}
			if unsub.BaseURL != "" || unsub.Mailto != "" {
				n.Settings.Unsubscribe = &unsub
			}
			if dkim.KeyFile != "" {
				n.Settings.DKIM = &dkim
			}
			if n.Secrets.BounceKey, err = loadBounceKey(rp.Address, bounceKeyFile); err != nil {
				return err
			}
			if rp.Address != "" {
				n.Settings.ReturnPath = &rp
			} else if rp.PerRecipient {
				return errors.New("--return-path-per-recipient needs --return-path")
			}
			if n.Settings.DSN, err = dsn.parse(); err != nil {
				return err
			}
			if unsub.OneClick {
				if n.Secrets.UnsubscribeKey, err = unsubscribe.LoadKey(unsubKeyFile, os.Getenv); err != nil {
					return err
				}
			}
			pool, err := a.db(cmd.Context())
			if err != nil {
				return err
			}
			c, err := campaign.Create(cmd.Context(), pool, n)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, c.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&n.Name, "name", "", "campaign name (required)")
	f.StringVar(&n.List, "list", "", "recipient list (required)")
	f.StringVar(&n.From, "from", "", `From address, e.g. "News <news@example.test>" (required)`)
	f.StringVar(&n.Subject, "subject", "", "subject template (required)")
	f.StringVar(&textFile, "text", "", "text body template file")
	f.StringVar(&htmlFile, "html", "", "HTML body template file")
	f.StringVar(&kind, "kind", "newsletter", "newsletter or alert (alerts overtake newsletters)")
	cmd.RegisterFlagCompletionFunc("kind", cobra.FixedCompletions(
		[]string{string(campaign.Newsletter), string(campaign.Alert)}, cobra.ShellCompDirectiveNoFileComp))
	f.IntVar(&n.Settings.MaxRcpt, "max-rcpt", 0, "recipients per batch and SMTP transaction (default 100)")
	f.BoolVar(&n.Settings.AtLeastOnce, "at-least-once", false, "resend recipients whose outcome is unknown (default at-most-once)")
	f.StringVar(&retry, "retry-schedule", "",
		"waits before retries of deferred recipients, e.g. 1m,5m,15m,1h or 2s,5s for tests; ±20% jitter (default 1m,5m,15m,30m,1h,2h,4h)")
	f.DurationVar(&maxAge, "max-age", 0, "retry deferred recipients until this long after start, then expire them (default 72h)")
	f.StringVar(&configFile, "config", os.Getenv("BLASTER_CONFIG"),
		"TOML config file whose [campaign] table sets defaults for max_rcpt, at_least_once, retry_schedule, max_age; flags win")
	f.StringVar(&unsub.BaseURL, "unsubscribe-url", "", "https base URL of `blaster serve`'s /u endpoint, for List-Unsubscribe")
	f.StringVar(&unsub.Mailto, "unsubscribe-mailto", "", "address for List-Unsubscribe by mail")
	f.BoolVar(&unsub.OneClick, "one-click", false, "per-recipient one-click unsubscribe links (RFC 8058); makes the campaign personalized")
	f.StringVar(&unsubKeyFile, "unsubscribe-key-file", "", "file with the unsubscribe token key (else $BLASTER_UNSUBSCRIBE_KEY)")
	f.StringVar(&dkim.Domain, "dkim-domain", "", "DKIM signing domain (d=)")
	f.StringVar(&dkim.Selector, "dkim-selector", "", "DKIM selector (s=)")
	f.StringVar(&dkim.KeyFile, "dkim-key", "", "PEM file with the DKIM private key (RSA or Ed25519); every worker reads it")
	f.StringVar(&rp.Address, "return-path", "", "signed return path base for bounces, e.g. bounces@bounce.example.test (see 'blaster bounces')")
	f.BoolVar(&rp.PerRecipient, "return-path-per-recipient", false,
		"a return path per recipient for a same-for-all campaign too (one SMTP transaction per recipient)")
	f.StringVar(&bounceKeyFile, bounceKeyFlag, "", bounceKeyUsage)
	f.StringArrayVar(&n.Attachments, "attach", nil, "file attached to every message, stored with the campaign (repeatable; 25 MiB in all)")
	dsn.register(cmd)
	for _, name := range []string{"name", "list", "from", "subject"} {
		cmd.MarkFlagRequired(name)
	}
	return cmd
}

// dsnFlags are the delivery status notification flags of campaign create
// and send.
type dsnFlags struct{ notify, ret string }

func (d *dsnFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&d.notify, "dsn-notify", "",
		"ask for delivery status notifications (RFC 3461): never, or a comma-separated list of success, failure, delay (default: the server's)")
	f.StringVar(&d.ret, "dsn-ret", "", "what a failure notification returns: full (the message) or hdrs (its header) (default: the server's)")
	cmd.RegisterFlagCompletionFunc("dsn-ret", cobra.FixedCompletions([]string{"full", "hdrs"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RegisterFlagCompletionFunc("dsn-notify", cobra.FixedCompletions(
		[]string{"never", "failure", "failure,delay", "success,failure,delay"}, cobra.ShellCompDirectiveNoFileComp))
}

func (d *dsnFlags) parse() (*campaign.DSN, error) {
	dsn, err := campaign.ParseDSN(d.notify, d.ret)
	if err != nil {
		return nil, fmt.Errorf("--dsn-notify/--dsn-ret: %w", err)
	}
	return dsn, nil
}

// campaignDefaults is the [campaign] table of the config file: delivery
// policy for campaigns created without the matching flags.
//
//	[campaign]
//	retry_schedule = ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
//	max_age = "72h"
//	at_least_once = false
//	max_rcpt = 100
type campaignDefaults struct {
	RetrySchedule []string `toml:"retry_schedule"`
	MaxAge        string   `toml:"max_age"`
	AtLeastOnce   *bool    `toml:"at_least_once"`
	MaxRcpt       int      `toml:"max_rcpt"`
}

// loadCampaignDefaults fills the settings whose flags were not given from
// the config file's [campaign] table; errors name the file and the setting.
func loadCampaignDefaults(path string, f *pflag.FlagSet, s *campaign.Settings) error {
	if path == "" {
		return nil
	}
	var cfg transportFile
	md, err := toml.DecodeFile(path, &cfg)
	if err != nil {
		return fmt.Errorf("reading config %s: %w", path, err)
	}
	if undec := md.Undecoded(); len(undec) > 0 {
		return fmt.Errorf("config %s: unknown setting %s", path, undec[0])
	}
	c := cfg.Campaign
	if len(c.RetrySchedule) > 0 && !f.Changed("retry-schedule") {
		if s.RetrySchedule, err = parseSchedule(strings.Join(c.RetrySchedule, ",")); err != nil {
			return fmt.Errorf("config %s: campaign.retry_schedule: %w", path, err)
		}
	}
	if c.MaxAge != "" && !f.Changed("max-age") {
		d, err := time.ParseDuration(c.MaxAge)
		if err != nil || d <= 0 {
			return fmt.Errorf("config %s: campaign.max_age %q: must be a positive duration like \"72h\"", path, c.MaxAge)
		}
		s.MaxAge = campaign.Duration(d)
	}
	if c.AtLeastOnce != nil && !f.Changed("at-least-once") {
		s.AtLeastOnce = *c.AtLeastOnce
	}
	if c.MaxRcpt != 0 && !f.Changed("max-rcpt") {
		s.MaxRcpt = c.MaxRcpt
	}
	return nil
}

// parseSchedule reads a comma-separated list of positive durations.
func parseSchedule(list string) ([]campaign.Duration, error) {
	var out []campaign.Duration
	for i, f := range strings.Split(list, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i+1, err)
		}
		if d <= 0 {
			return nil, fmt.Errorf("entry %d %q: must be positive", i+1, f)
		}
		out = append(out, campaign.Duration(d))
	}
	return out, nil
}

func readOptional(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading template: %w", err)
	}
	return string(b), nil
}

func parseID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("campaign id %q: must be a positive number", s)
	}
	return id, nil
}

// campaignArg parses a command's campaign id argument and opens the
// database.
func (a *app) campaignArg(cmd *cobra.Command, arg string) (int64, *pgxpool.Pool, error) {
	id, err := parseID(arg)
	if err != nil {
		return 0, nil, err
	}
	pool, err := a.db(cmd.Context())
	return id, pool, err
}

func newCampaignStartCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "start ID",
		Short: "Fan a draft campaign out into deliveries, batches and send jobs",
		Long: `Start a draft campaign: in one transaction, a delivery row per list member
(suppressed members recorded as suppressed), batches of up to 100 recipients of
one destination domain, and a send job per batch. Starting twice does nothing
the second time.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, pool, err := a.campaignArg(cmd, args[0])
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			rc, err := worker.InsertClient(pool)
			if err != nil {
				return err
			}
			began := time.Now()
			res, err := campaign.Start(ctx, pool, rc, id)
			if errors.Is(err, campaign.ErrNotDraft) {
				fmt.Fprintf(a.stdout, "%v: nothing done\n", err)
				return nil
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "started campaign %d: %d recipients in %d batches, %d suppressed (%s)\n",
				id, res.Recipients, res.Batches, res.Suppressed, time.Since(began).Round(time.Millisecond))
			return nil
		},
	}
}

func newCampaignStatusCmd(a *app) *cobra.Command {
	var asJSON bool
	var watch watchOpts
	cmd := &cobra.Command{
		Use:   "status ID",
		Short: "Show a campaign's state and a count per delivery state",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, pool, err := a.campaignArg(cmd, args[0])
			if err != nil {
				return err
			}
			if watch.enabled {
				return watch.run(cmd.Context(), a, pool, id, asJSON)
			}
			s, err := campaign.GetStatus(cmd.Context(), pool, id)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, s)
			}
			writeStatus(a.stdout, s)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	watch.addFlags(cmd)
	return cmd
}

func writeStatus(w io.Writer, s *campaign.Status) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "campaign\t%d %s (%s)\n", s.ID, s.Name, s.Kind)
	fmt.Fprintf(tw, "state\t%s\n", s.State)
	fmt.Fprintf(tw, "total\t%d\n", s.Total)
	for _, kv := range []struct {
		k string
		v int
	}{{"queued", s.Queued}, {"sending", s.Sending}, {"sent", s.Sent}, {"deferred", s.Deferred},
		{"bounced", s.Bounced}, {"expired", s.Expired}, {"suppressed", s.Suppressed},
		{"unknown", s.Unknown}, {"cancelled", s.Cancelled}, {"maybe duplicated", s.MaybeDuplicated}} {
		fmt.Fprintf(tw, "%s\t%d\n", kv.k, kv.v)
	}
	if s.StartedAt != nil {
		end := time.Now()
		if s.FinishedAt != nil {
			end = *s.FinishedAt
		}
		fmt.Fprintf(tw, "elapsed\t%s\n", end.Sub(*s.StartedAt).Round(time.Millisecond))
	}
	tw.Flush()
}

func newCampaignListCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List campaigns, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := a.db(cmd.Context())
			if err != nil {
				return err
			}
			cs, err := campaign.List(cmd.Context(), pool)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, cs)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tKIND\tSTATE\tLIST\tTOTAL\tCREATED")
			for _, c := range cs {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\n", c.ID, c.Name, c.Kind, c.State, c.ListName, c.Total,
					c.CreatedAt.Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
