package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/contact"
	"github.com/blaster-mail/blaster/worker"
)

// maxShownBadAddresses is how many invalid addresses send lists on stderr.
const maxShownBadAddresses = 20

// sendFlags are the options of `blaster send`.
type sendFlags struct {
	to                 []string
	list               string
	file               string
	name               string
	from               string
	subject            string
	text               string
	textFile, htmlFile string
	wait               bool
	pollInterval       time.Duration
	stallHint          time.Duration
	returnPath         string
	bounceKeyFile      string
	attach             []string
	dsn                dsnFlags
}

func newSendCmd(a *app) *cobra.Command {
	var sf sendFlags
	cmd := &cobra.Command{
		Use:   "send --from ADDR --subject S (--text T | --text-file F) [--html-file F] (--to ADDR... | --file FILE|- | --list NAME) [--wait]",
		Short: "Send an alert to addresses given on the command line, in a file or in a list",
		Long: `Send an alert blast: a campaign of kind alert, delivered through the alert
queue, which workers serve before newsletters.

Recipients come from --to (repeatable), --file (one address per line; blank
lines and lines starting with # are skipped; - reads stdin) and --list. Every
address is checked first; if any is invalid, each is reported with its
position and nothing is sent. Addresses not yet contacts become contacts.
Without --list they are put in a new list alert-<UTC timestamp>; with --list
they are added to that list (created if missing) and the alert goes to the
whole list. Suppressed addresses are left out, as for any campaign.

Subject and bodies are templates, as in 'campaign create'. --attach and the
--dsn-* flags work as there.

Delivery is done by 'blaster worker' processes. With --wait, send waits until
every recipient has an outcome, prints one line per recipient (address, state,
last SMTP code, enhanced code, text) and exits with status 2 if any recipient
was not sent.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSend(cmd.Context(), a, &sf)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&sf.to, "to", nil, "recipient address, repeatable")
	f.StringVar(&sf.list, "list", "", "recipient list; recipients given with --to/--file are added to it")
	f.StringVar(&sf.file, "file", "", "file of recipient addresses, one per line (- for stdin)")
	f.StringVar(&sf.name, "name", "", "campaign name (default \"alert <UTC time>\")")
	f.StringVar(&sf.from, "from", "", `From address, e.g. "Ops <ops@example.test>" (required)`)
	f.StringVar(&sf.subject, "subject", "", "subject (required)")
	f.StringVar(&sf.text, "text", "", "text body")
	f.StringVar(&sf.textFile, "text-file", "", "file holding the text body")
	f.StringVar(&sf.htmlFile, "html-file", "", "file holding the HTML body")
	f.BoolVar(&sf.wait, "wait", false, "wait for every recipient's outcome, print it, exit 2 if any was not sent")
	f.DurationVar(&sf.pollInterval, "poll-interval", 500*time.Millisecond, "how often --wait reads the campaign's progress")
	f.DurationVar(&sf.stallHint, "stall-hint", 15*time.Second,
		"with --wait, warn on stderr when nothing has moved for this long (is a worker running?); 0 never")
	f.StringVar(&sf.returnPath, "return-path", "", "signed return path base for bounces, e.g. bounces@bounce.example.test")
	f.StringVar(&sf.bounceKeyFile, bounceKeyFlag, "", bounceKeyUsage)
	f.StringArrayVar(&sf.attach, "attach", nil, "file attached to the alert, stored with it (repeatable; 25 MiB in all)")
	sf.dsn.register(cmd)
	cmd.MarkFlagRequired("from")
	cmd.MarkFlagRequired("subject")
	cmd.MarkFlagsMutuallyExclusive("text", "text-file")
	return cmd
}

func runSend(ctx context.Context, a *app, sf *sendFlags) error {
	text := sf.text
	if sf.textFile != "" {
		var err error
		if text, err = readOptional(sf.textFile); err != nil {
			return err
		}
	}
	html, err := readOptional(sf.htmlFile)
	if err != nil {
		return err
	}
	if text == "" && html == "" {
		return errors.New("no body: give --text, --text-file or --html-file")
	}
	addrs, bad := parseToFlags(sf.to)
	if sf.file != "" {
		r, source, closeFile, err := openAddressFile(sf.file, a.stdin)
		if err != nil {
			return err
		}
		fromFile, badInFile, err := readAddresses(r, source)
		closeFile()
		if err != nil {
			return err
		}
		addrs = append(addrs, fromFile...)
		bad = append(bad, badInFile...)
	}
	if len(bad) > 0 {
		for i, e := range bad {
			if i == maxShownBadAddresses {
				fmt.Fprintf(a.stderr, "... and %d more\n", len(bad)-i)
				break
			}
			fmt.Fprintln(a.stderr, e)
		}
		return fmt.Errorf("%d invalid recipient addresses: nothing sent", len(bad))
	}
	addrs = dedupAddresses(addrs)
	if len(addrs) == 0 && sf.list == "" {
		return errors.New("no recipients: give --to, --file or --list")
	}

	dsn, err := sf.dsn.parse()
	if err != nil {
		return err
	}
	pool, err := a.db(ctx)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	name := sf.name
	if name == "" {
		name = "alert " + now.Format(time.RFC3339)
	}
	n := campaign.New{Name: name, Kind: campaign.Alert, From: sf.from, Subject: sf.subject, Text: text, HTML: html,
		Attachments: sf.attach, Settings: campaign.Settings{DSN: dsn}}
	if n.Secrets.BounceKey, err = loadBounceKey(sf.returnPath, sf.bounceKeyFile); err != nil {
		return err
	}
	if sf.returnPath != "" {
		n.Settings.ReturnPath = &campaign.ReturnPath{Address: sf.returnPath}
	}
	c, res, list, err := startAlert(ctx, pool, now, addrs, sf.list, n)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "alert campaign %d started: %d recipients (list %s), %d suppressed\n",
		c.ID, res.Recipients, list, res.Suppressed)
	if !sf.wait {
		fmt.Fprintf(a.stdout, "follow it with: blaster campaign status %d\n", c.ID)
		return nil
	}
	return waitAndReport(ctx, a, pool, c.ID, sf.pollInterval, sf.stallHint)
}

// startAlert records the recipients as contacts in the list, creates the
// alert campaign and starts it, in one transaction: a failure leaves no
// half-made list or campaign behind.
func startAlert(ctx context.Context, pool *pgxpool.Pool, now time.Time, addrs []string, list string, n campaign.New) (*campaign.Campaign, *campaign.StartResult, string, error) {
	rc, err := worker.InsertClient(pool)
	if err != nil {
		return nil, nil, "", err
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, nil, "", fmt.Errorf("starting alert: %w", err)
	}
	defer tx.Rollback(ctx)
	if len(addrs) > 0 {
		if list, err = addRecipients(ctx, tx, now, addrs, list); err != nil {
			return nil, nil, "", err
		}
	}
	n.List = list
	// An alert's list is small against all contacts: with the default
	// random_page_cost (4, for spinning disks) the fan-out scans every
	// contact to join the list's members (0.5 s at 200,000 contacts under
	// load), with SSD costs it probes the primary key per member (40 ms).
	// LOCAL: for this transaction only.
	if _, err := tx.Exec(ctx, "SET LOCAL random_page_cost = 1.1"); err != nil {
		return nil, nil, "", fmt.Errorf("starting alert: %w", err)
	}
	c, err := campaign.Create(ctx, tx, n)
	if err != nil {
		return nil, nil, "", err
	}
	// A pgx.Tx begins nested transactions as savepoints, so Start's fan-out
	// joins this transaction.
	res, err := campaign.Start(ctx, tx, rc, c.ID)
	if err != nil {
		return nil, nil, "", err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, nil, "", fmt.Errorf("committing alert campaign %d: %w", c.ID, err)
	}
	return c, res, list, nil
}

// addRecipients upserts addrs into contacts and into list, or into a new
// list alert-<now> when list is empty, and returns the list's name.
func addRecipients(ctx context.Context, tx pgx.Tx, now time.Time, addrs []string, list string) (string, error) {
	var listID int64
	if list == "" {
		// Nanoseconds keep two alerts of one second apart; a clash is an
		// error (unique name), never a merge into another alert's list.
		list = "alert-" + now.Format("20060102T150405.000000000Z")
		if err := tx.QueryRow(ctx, `INSERT INTO lists (name) VALUES ($1) RETURNING id`, list).Scan(&listID); err != nil {
			return "", fmt.Errorf("creating list %s: %w", list, err)
		}
	} else {
		err := tx.QueryRow(ctx, `
			WITH ins AS (INSERT INTO lists (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id)
			SELECT id FROM ins UNION ALL SELECT id FROM lists WHERE name = $1 LIMIT 1`, list).Scan(&listID)
		if err != nil {
			return "", fmt.Errorf("finding list %q: %w", list, err)
		}
	}
	// lower(email) COLLATE "C" is the contacts key (migration 0004).
	if _, err := tx.Exec(ctx, `
		INSERT INTO contacts (email) SELECT unnest($1::text[])
		ON CONFLICT ((lower(email)) COLLATE "C") DO NOTHING`, addrs); err != nil {
		return "", fmt.Errorf("adding recipients to contacts: %w", err)
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO list_members (list_id, contact_id)
		SELECT $1, id FROM contacts
		WHERE lower(email) COLLATE "C" IN (SELECT lower(a) COLLATE "C" FROM unnest($2::text[]) a)
		ON CONFLICT DO NOTHING`, listID, addrs); err != nil {
		return "", fmt.Errorf("adding recipients to list %s: %w", list, err)
	}
	return list, nil
}

// parseToFlags validates each --to address; errors name the flag's
// position (--to #2).
func parseToFlags(to []string) (addrs []string, bad []error) {
	for i, s := range to {
		addr, err := contact.ParseAddress(s)
		if err != nil {
			bad = append(bad, fmt.Errorf("--to #%d: %w", i+1, err))
			continue
		}
		addrs = append(addrs, addr)
	}
	return addrs, bad
}

// openAddressFile opens path, or stdin for "-".
func openAddressFile(path string, stdin io.Reader) (io.Reader, string, func(), error) {
	if path == "-" {
		return stdin, "stdin", func() {}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, "", nil, fmt.Errorf("opening recipient file: %w", err)
	}
	return f, path, func() { f.Close() }, nil
}

// readAddresses reads one address per line: surrounding white space is
// trimmed, blank lines and lines starting with # are skipped. Invalid
// addresses come back as errors naming source:line; err is for a read
// failure.
func readAddresses(r io.Reader, source string) (addrs []string, bad []error, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if line == 1 {
			s = strings.TrimPrefix(s, "\uFEFF") // a byte order mark from Windows editors
		}
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		addr, perr := contact.ParseAddress(s)
		if perr != nil {
			bad = append(bad, fmt.Errorf("%s:%d: %w", source, line, perr))
			continue
		}
		addrs = append(addrs, addr)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("reading %s after line %d: %w", source, line, err)
	}
	return addrs, bad, nil
}

// dedupAddresses drops repeats, comparing case-insensitively as the
// contacts table does, and keeps the first spelling.
func dedupAddresses(addrs []string) []string {
	seen := make(map[string]bool, len(addrs))
	out := addrs[:0]
	for _, a := range addrs {
		k := strings.ToLower(a)
		if !seen[k] {
			seen[k] = true
			out = append(out, a)
		}
	}
	return out
}

// waitAndReport polls the campaign until it is done (or cancelled), then
// prints every recipient's outcome.
func waitAndReport(ctx context.Context, a *app, pool *pgxpool.Pool, id int64, every, stallHint time.Duration) error {
	if every <= 0 {
		every = 500 * time.Millisecond
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	lastPending, lastMove, hinted := -1, time.Now(), false
	for {
		s, err := campaign.GetStatus(ctx, pool, id)
		if err != nil {
			return err
		}
		if s.State == campaign.Done || s.State == campaign.Cancelled {
			break
		}
		if p := s.Pending(); p != lastPending {
			lastPending, lastMove = p, time.Now()
		} else if stallHint > 0 && !hinted && time.Since(lastMove) > stallHint {
			fmt.Fprintf(a.stderr, "campaign %d: %d recipients pending and nothing moved for %s: is a 'blaster worker' running?\n",
				id, p, stallHint)
			hinted = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped waiting (campaign %d goes on; follow it with 'blaster campaign status %d'): %w",
				id, id, ctx.Err())
		case <-tick.C:
		}
	}
	return reportOutcomes(ctx, a.stdout, pool, id)
}

// reportOutcomes prints one line per recipient and fails with exit status
// 2 if any was not sent.
func reportOutcomes(ctx context.Context, w io.Writer, pool *pgxpool.Pool, id int64) error {
	rows, err := pool.Query(ctx, `
		SELECT email, state, coalesce(last_code::text, '-'), coalesce(last_enhanced, '-'), coalesce(last_text, '')
		FROM deliveries WHERE campaign_id = $1 ORDER BY lower(email)`, id)
	if err != nil {
		return fmt.Errorf("reading outcomes of campaign %d: %w", id, err)
	}
	defer rows.Close()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "EMAIL\tSTATE\tCODE\tENHANCED\tTEXT")
	total, failed := 0, 0
	for rows.Next() {
		var email, state, code, enhanced, text string
		if err := rows.Scan(&email, &state, &code, &enhanced, &text); err != nil {
			return fmt.Errorf("reading outcomes of campaign %d: %w", id, err)
		}
		total++
		if state != campaign.StateSent {
			failed++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", email, state, code, enhanced, singleLine(text))
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading outcomes of campaign %d: %w", id, err)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d of %d recipients sent\n", total-failed, total)
	if failed > 0 {
		return &exitError{code: 2, err: fmt.Errorf("campaign %d: %d of %d recipients not sent", id, failed, total)}
	}
	return nil
}

// singleLine keeps a multi-line SMTP reply text on one output line.
func singleLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
