package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/worker"
)

// newLifecycleCmds are `campaign pause|resume|cancel|retry`.
func newLifecycleCmds(a *app) []*cobra.Command {
	return []*cobra.Command{newCampaignPauseCmd(a), newCampaignResumeCmd(a), newCampaignCancelCmd(a), newCampaignRetryCmd(a)}
}

// campaignRunE is the RunE of a command on one campaign (argument ID): it
// opens the database, runs act and prints the line act returns, unless act
// fails.
func (a *app) campaignRunE(act func(ctx context.Context, pool *pgxpool.Pool, id int64) (string, error)) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		id, pool, err := a.campaignArg(cmd, args[0])
		if err != nil {
			return err
		}
		line, err := act(cmd.Context(), pool, id)
		if err != nil {
			return err
		}
		fmt.Fprintln(a.stdout, line)
		return nil
	}
}

func newCampaignPauseCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "pause ID",
		Short: "Stop a running campaign from starting new SMTP transactions",
		Long: `Pause a running campaign. Workers start no new transaction of it (they look
again every second); transactions already in flight finish and are recorded.
'campaign resume' goes on exactly where it stopped.`,
		Args: cobra.ExactArgs(1),
		RunE: a.campaignRunE(func(ctx context.Context, pool *pgxpool.Pool, id int64) (string, error) {
			return fmt.Sprintf("paused campaign %d", id), campaign.Pause(ctx, pool, id)
		}),
	}
}

func newCampaignResumeCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "resume ID",
		Short: "Let a paused campaign go on where it stopped",
		Args:  cobra.ExactArgs(1),
		RunE: a.campaignRunE(func(ctx context.Context, pool *pgxpool.Pool, id int64) (string, error) {
			if err := campaign.Resume(ctx, pool, id); err != nil {
				return "", err
			}
			c, err := campaign.Get(ctx, pool, id)
			if err != nil {
				return "", err
			}
			if c.State == campaign.Done {
				return fmt.Sprintf("campaign %d had nothing left to send: done", id), nil
			}
			return fmt.Sprintf("resumed campaign %d", id), nil
		}),
	}
}

func newCampaignCancelCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Stop a campaign for good; recipients not yet attempted become cancelled",
		Long: `Cancel a draft, running or paused campaign. Every recipient still queued or
waiting for a retry is marked cancelled and will not be sent; transactions in
flight finish and are recorded. A cancelled campaign cannot be resumed.`,
		Args: cobra.ExactArgs(1),
		RunE: a.campaignRunE(func(ctx context.Context, pool *pgxpool.Pool, id int64) (string, error) {
			res, err := campaign.Cancel(ctx, pool, id)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("cancelled campaign %d: %d recipients not sent", id, res.Cancelled), nil
		}),
	}
}

func newCampaignRetryCmd(a *app) *cobra.Command {
	var (
		states string
		st     []string // states, parsed before the database is opened
	)
	cmd := &cobra.Command{
		Use:   "retry ID [--state deferred,expired,unknown,bounced]",
		Short: "Send again to the recipients in the chosen delivery states, and only to them",
		Long: `Retry puts the campaign's recipients in the chosen delivery states back in the
queue and enqueues their batches; a done campaign runs again. Recipients already
sent are not touched. Recipients suppressed since (a hard bounce, an
unsubscribe) are skipped.

States: deferred, expired, unknown (the outcome was lost after the message
went out: retrying may deliver it twice) and bounced. Default:
deferred,expired,unknown.`,
		Args: cobra.ExactArgs(1),
		PreRunE: func(*cobra.Command, []string) error {
			var err error
			if st, err = campaign.ParseStates(states); err != nil {
				return fmt.Errorf("--state: %w", err)
			}
			return nil
		},
		RunE: a.campaignRunE(func(ctx context.Context, pool *pgxpool.Pool, id int64) (string, error) {
			rc, err := worker.InsertClient(pool)
			if err != nil {
				return "", err
			}
			res, err := campaign.Retry(ctx, pool, rc, id, st)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("campaign %d: %d recipients (%s) queued again in %d batches, %d skipped as suppressed",
				id, res.Recipients, strings.Join(st, ","), res.Batches, res.Skipped), nil
		}),
	}
	cmd.Flags().StringVar(&states, "state", strings.Join(campaign.DefaultRetryStates, ","),
		"delivery states to send again, comma separated: deferred, expired, unknown, bounced")
	cmd.RegisterFlagCompletionFunc("state", cobra.FixedCompletions(
		[]string{campaign.StateDeferred, campaign.StateExpired, campaign.StateUnknown, campaign.StateBounced},
		cobra.ShellCompDirectiveNoFileComp))
	return cmd
}
