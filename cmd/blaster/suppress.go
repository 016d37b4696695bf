package main

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blaster-mail/blaster/contact"
)

func newSuppressCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "suppress",
		Short: "Manage suppression lists (addresses campaigns leave out)",
		Long: `Each sender (a campaign's From address) has a suppression list; the list
of sender "" (the default of --sender) applies to every sender. Campaign
start leaves suppressed addresses out and counts them as suppressed.
Reasons: unsubscribed, bounced, complained, manual.`,
	}
	cmd.AddCommand(newSuppressAddCmd(a), newSuppressRemoveCmd(a), newSuppressListCmd(a), newSuppressImportCmd(a))
	return cmd
}

func newSuppressAddCmd(a *app) *cobra.Command {
	var sender, reason, detail string
	cmd := &cobra.Command{
		Use:   "add EMAIL...",
		Short: "Suppress addresses",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pool, err := a.db(cmd.Context())
			if err != nil {
				return err
			}
			for _, email := range args {
				if err := contact.Suppress(cmd.Context(), pool, sender, email, reason, detail, 0); err != nil {
					return err
				}
			}
			fmt.Fprintf(a.stdout, "suppressed %d for %s\n", len(args), senderLabel(sender))
			return nil
		},
	}
	cmd.Flags().StringVar(&sender, "sender", "", `sender whose list to change ("" = every sender)`)
	cmd.Flags().StringVar(&reason, "reason", contact.ReasonManual, "reason: "+strings.Join(contact.Reasons, ", "))
	cmd.Flags().StringVar(&detail, "detail", "", "a note kept with the entry")
	return cmd
}

func newSuppressRemoveCmd(a *app) *cobra.Command {
	var sender string
	cmd := &cobra.Command{
		Use:   "remove EMAIL...",
		Short: "Remove addresses from a suppression list",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pool, err := a.db(cmd.Context())
			if err != nil {
				return err
			}
			removed := 0
			for _, email := range args {
				ok, err := contact.Unsuppress(cmd.Context(), pool, sender, email)
				if err != nil {
					return err
				}
				if ok {
					removed++
				} else {
					fmt.Fprintf(a.stderr, "%s was not suppressed for %s\n", email, senderLabel(sender))
				}
			}
			fmt.Fprintf(a.stdout, "removed %d from %s\n", removed, senderLabel(sender))
			return nil
		},
	}
	cmd.Flags().StringVar(&sender, "sender", "", `sender whose list to change ("" = every sender)`)
	return cmd
}

// suppressionView is one suppression in the JSON of `suppress list`; its
// field names are stable.
type suppressionView struct {
	Email      string    `json:"email"`
	Sender     string    `json:"sender"` // "" = every sender
	Reason     string    `json:"reason"`
	Detail     string    `json:"detail"`
	CampaignID int64     `json:"campaign_id,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
}

func newSuppressListCmd(a *app) *cobra.Command {
	var (
		f      contact.ListFilter
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Print suppressions as CSV (the format suppress import reads), or JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f.BySender = cmd.Flags().Changed("sender")
			pool, err := a.db(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				// A JSON array, streamed: the list may be millions long.
				bw := bufio.NewWriter(a.stdout)
				enc := json.NewEncoder(bw)
				sep := "["
				err := contact.ListSuppressions(cmd.Context(), pool, f, func(s contact.Suppression) error {
					bw.WriteString(sep)
					sep = ","
					return enc.Encode(suppressionView{Email: s.Email, Sender: s.Sender, Reason: s.Reason,
						Detail: s.Detail, CampaignID: s.CampaignID, CreatedAt: s.CreatedAt.UTC()})
				})
				if err != nil {
					return err
				}
				if sep == "[" {
					bw.WriteString("[")
				}
				bw.WriteString("]\n")
				if err := bw.Flush(); err != nil {
					return fmt.Errorf("writing suppressions: %w", err)
				}
				return nil
			}
			w := csv.NewWriter(a.stdout)
			w.Write([]string{"email", "sender", "reason", "detail", "campaign_id", "created_at"})
			err = contact.ListSuppressions(cmd.Context(), pool, f, func(s contact.Suppression) error {
				campaign := ""
				if s.CampaignID != 0 {
					campaign = strconv.FormatInt(s.CampaignID, 10)
				}
				return w.Write([]string{s.Email, s.Sender, s.Reason, s.Detail, campaign, s.CreatedAt.UTC().Format(time.RFC3339)})
			})
			w.Flush()
			if err != nil {
				return err
			}
			if err := w.Error(); err != nil {
				return fmt.Errorf("writing suppressions: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&f.Sender, "sender", "", `only this sender's list ("" = the list for every sender; default: all lists)`)
	cmd.Flags().StringVar(&f.Reason, "reason", "", "only this reason")
	cmd.Flags().StringVar(&f.Email, "email", "", "only this address")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	cmd.RegisterFlagCompletionFunc("reason", cobra.FixedCompletions(contact.Reasons, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func newSuppressImportCmd(a *app) *cobra.Command {
	var (
		opts                   contact.SuppressImportOptions
		delimiter, rejectsPath string
	)
	cmd := &cobra.Command{
		Use:   "import FILE|-",
		Short: "Suppress every address of a file (CSV with an email column, or one address per line)",
		Long: `Import streams a file onto suppression lists in one transaction. The file
is a CSV whose header has an email column (and optionally sender, reason and
detail columns: the format suppress list prints), or one address per line.
Bad rows are reported as FILE:LINE: REASON and written to the rejects file.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			delim, err := parseDelimiter(delimiter)
			if err != nil {
				return err
			}
			in, _, source, closeIn, err := openInput(a, args[0])
			if err != nil {
				return err
			}
			defer closeIn()
			if rejectsPath == "" && args[0] != "-" {
				rejectsPath = args[0] + ".rejects.csv"
			}
			var rejects *lazyFile
			if rejectsPath != "" {
				rejects = &lazyFile{path: rejectsPath}
				defer rejects.Close()
				opts.Rejects = rejects
			}
			pool, err := a.db(cmd.Context())
			if err != nil {
				return err
			}
			opts.Source, opts.Delimiter = source, delim
			shown := int64(0)
			opts.OnReject = func(r contact.Reject) {
				if shown < maxShownRejects {
					shown++
					fmt.Fprintf(a.stderr, "%s:%d: %s\n", source, r.Line, r.Reason)
				}
			}
			sum, err := contact.ImportSuppressions(cmd.Context(), pool, in, opts)
			if err != nil {
				return err
			}
			if err := rejects.Close(); err != nil {
				return err
			}
			if more := sum.Rejected - shown; more > 0 {
				fmt.Fprintf(a.stderr, "... and %d more in %s\n", more, rejectsPath)
			}
			if rejects.written() {
				fmt.Fprintf(a.stderr, "rejected rows written to %s\n", rejectsPath)
			}
			fmt.Fprintf(a.stdout, "suppressed %d (new %d, already %d), rejected %d, duplicates %d\n",
				sum.Added+sum.Existing, sum.Added, sum.Existing, sum.Rejected, sum.Duplicates)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Sender, "sender", "", `sender whose list to add to ("" = every sender); a sender column overrides it`)
	f.StringVar(&opts.Reason, "reason", contact.ReasonManual, "reason for rows without one: "+strings.Join(contact.Reasons, ", "))
	f.StringVar(&opts.Detail, "detail", "", "note for rows without a detail column")
	f.StringVar(&delimiter, "delimiter", "", `field delimiter: one character, or "tab" (default: detected)`)
	f.StringVar(&rejectsPath, "rejects", "", "where to write rejected rows as CSV (default FILE.rejects.csv when there are any)")
	return cmd
}

func senderLabel(sender string) string {
	if strings.TrimSpace(sender) == "" {
		return "every sender"
	}
	return "sender " + strings.ToLower(strings.TrimSpace(sender))
}
