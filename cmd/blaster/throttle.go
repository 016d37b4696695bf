package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/blaster-mail/blaster/throttle"
)

func newThrottleCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "throttle",
		Short: "Inspect the shared throttle: rates, connections, back-off",
	}
	cmd.AddCommand(newThrottleStatusCmd(a))
	return cmd
}

func newThrottleStatusCmd(a *app) *cobra.Command {
	var (
		configPath string
		asJSON     bool
		within     time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each active scope: configured and current rate, connections, suspension and its cause",
		Long: `Shows every scope (global, route, destination domain or group, campaign) that
worker processes used recently, or that is suspended, slowed or holding
connections: the configured rate (recipients per second), the rate in force
after back-off, connections in flight across all workers, and, when backed
off, until when and the reply that caused it. Read from PostgreSQL.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cfg *throttle.Config
			if configPath != "" {
				c, err := throttle.LoadConfig(configPath)
				if err != nil {
					return err
				}
				cfg = &c
			}
			pool, err := a.db(cmd.Context())
			if err != nil {
				return err
			}
			st, err := throttle.Status(cmd.Context(), pool, cfg, within)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				if st == nil {
					st = []throttle.ScopeStatus{}
				}
				return enc.Encode(st)
			}
			if len(st) == 0 {
				fmt.Fprintln(a.stdout, "no active scopes")
				return nil
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SCOPE\tRATE/S\tCURRENT/S\tCONNS\tSUSPENDED UNTIL\tLAST BACK-OFF")
			for _, s := range st {
				susp := "-"
				if s.SuspendedUntil != nil {
					susp = s.SuspendedUntil.Local().Format(time.DateTime)
				}
				why := "-"
				if s.Rule != "" || s.Reason != "" {
					why = fmt.Sprintf("[%s] %s", s.Rule, s.Reason)
					if s.ReasonAt != nil {
						why += " at " + s.ReasonAt.Local().Format(time.DateTime)
					}
				}
				conns := strconv.Itoa(s.InFlight)
				if s.MaxConns > 0 {
					conns += "/" + strconv.Itoa(s.MaxConns)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Scope, rateText(s.ConfiguredRate),
					rateText(s.CurrentRate), conns, susp, why)
			}
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "throttle configuration file (TOML) for the configured limits; default: what the workers wrote")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	f.DurationVar(&within, "within", 5*time.Minute, "show scopes used within this long")
	return cmd
}

func rateText(r float64) string {
	if r <= 0 {
		return "unlimited"
	}
	return strconv.FormatFloat(r, 'f', -1, 64)
}
