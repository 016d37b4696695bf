package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/contact"
	"github.com/blaster-mail/blaster/message"
	"github.com/blaster-mail/blaster/unsubscribe"
)

func newCampaignPreviewCmd(a *app) *cobra.Command {
	var email, unsubKeyFile string
	cmd := &cobra.Command{
		Use:   "preview ID [--contact EMAIL]",
		Short: "Print the exact message a contact of the campaign's list would get",
		Long: `Preview builds the campaign's message for one contact of its list the way a
worker does, and prints it as it would go on the wire: headers and MIME body
with CRLF line ends, DKIM-signed when the campaign signs (the key is read
from its file), with the contact's one-click unsubscribe token when the
campaign has one-click unsubscribe (the key from --unsubscribe-key-file or
$BLASTER_UNSUBSCRIBE_KEY, as for the worker).

The contact is --contact EMAIL, which must be on the list, or else the
list's first member; a sample contact when the list is empty. A campaign
whose message is the same for everyone prints that one message, addressed
to the list as a group. Date and Message-ID are made afresh at each preview,
as they are for each message sent. Nothing is written to the database.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, pool, err := a.campaignArg(cmd, args[0])
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			c, err := campaign.Get(ctx, pool, id)
			if err != nil {
				return err
			}
			var sec campaign.Secrets
			if key, err := unsubscribe.LoadKey(unsubKeyFile, os.Getenv); err == nil {
				sec.UnsubscribeKey = key
			} else if unsubKeyFile != "" {
				return err
			}
			mc, err := c.Content(sec)
			if err != nil {
				return fmt.Errorf("campaign %d: %w", id, err)
			}
			// The attachments, from the database, as a worker gets them.
			dir, err := os.MkdirTemp("", "blaster-preview-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			if mc.Files, err = campaign.Materialize(ctx, pool, id, dir); err != nil {
				return err
			}
			tmpl, err := message.Parse(mc)
			if err != nil {
				return fmt.Errorf("campaign %d: %w", id, err)
			}
			defer tmpl.Close()
			d, sample, err := previewContact(ctx, pool, c, email)
			if err != nil {
				return err
			}
			if sample {
				fmt.Fprintf(a.stderr, "list %q has no members: previewing the sample contact %s\n", c.ListName, d.Email)
			}
			if !tmpl.Personalized() {
				if email != "" {
					fmt.Fprintf(a.stderr, "campaign %d sends the same message to every recipient: this is it\n", id)
				}
				b, err := tmpl.Shared(message.GroupAddress(c.ListName))
				if err != nil {
					return fmt.Errorf("campaign %d: building the message: %w", id, err)
				}
				defer b.Release()
				_, err = b.WriteTo(a.stdout)
				return err
			}
			if err := tmpl.Render(a.stdout, d.Email, d); err != nil {
				return fmt.Errorf("campaign %d: building the message for %s: %w", id, d.Email, err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&email, "contact", "", "address of the list member to preview for (default: the list's first member)")
	f.StringVar(&unsubKeyFile, "unsubscribe-key-file", "", "file with the one-click unsubscribe token key (else $BLASTER_UNSUBSCRIBE_KEY)")
	return cmd
}

// previewContact returns the data a worker would render c's message with for
// the list member email, or for the list's first member when email is "", or
// a sample contact when the list has none (sample true). The sample has
// contact id 1, like message.Template.Validate's: its one-click token binds
// the sample address too, so it unsubscribes nobody.
func previewContact(ctx context.Context, pool *pgxpool.Pool, c *campaign.Campaign, email string) (d *message.Data, sample bool, err error) {
	var listID int64
	if c.ListID != nil {
		listID = *c.ListID
	}
	d = &message.Data{CampaignID: c.ID}
	var attrs map[string]any
	if email != "" {
		addr, perr := contact.ParseAddress(email)
		if perr != nil {
			return nil, false, fmt.Errorf("--contact: %w", perr)
		}
		// lower(email) COLLATE "C" is the contacts key (migration 0004).
		err = pool.QueryRow(ctx, `
			SELECT c.id, c.email, c.name, c.attrs FROM contacts c
			JOIN list_members m ON m.contact_id = c.id AND m.list_id = $1
			WHERE lower(c.email) COLLATE "C" = lower($2) COLLATE "C"`, listID, addr).
			Scan(&d.ContactID, &d.Email, &d.Name, &attrs)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, false, fmt.Errorf("--contact %s: not a member of list %q of campaign %d", email, c.ListName, c.ID)
		}
	} else {
		err = pool.QueryRow(ctx, `
			SELECT c.id, c.email, c.name, c.attrs FROM list_members m
			JOIN contacts c ON c.id = m.contact_id
			WHERE m.list_id = $1 ORDER BY m.contact_id LIMIT 1`, listID).
			Scan(&d.ContactID, &d.Email, &d.Name, &attrs)
		if errors.Is(err, pgx.ErrNoRows) {
			s := message.DefaultSamples[0]
			s.CampaignID, s.ContactID = c.ID, 1
			return &s, true, nil
		}
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading the contact to preview: %w", err)
	}
	d.Attrs = make(map[string]string, len(attrs))
	for k, v := range attrs {
		if s, ok := v.(string); ok {
			d.Attrs[k] = s
		} else {
			d.Attrs[k] = fmt.Sprint(v)
		}
	}
	return d, false, nil
}
