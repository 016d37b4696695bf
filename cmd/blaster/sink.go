package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blaster-mail/blaster/sink"
)

func newSinkCmd(a *app) *cobra.Command {
	var (
		addr     string
		cfg      sink.Config
		every    time.Duration
		timeline string
	)
	cmd := &cobra.Command{
		Use:   "sink",
		Short: "Run a local SMTP server that accepts and counts mail (for trials)",
		Long: `Run a local SMTP server that accepts every message, counts messages and
recipients, and optionally writes each message to --dir. It relays nothing.
Stop it with SIGINT or SIGTERM; it prints its counts on the way out.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Timeline = timeline != ""
			s := sink.New(cfg)
			if err := s.Listen(addr); err != nil {
				return err
			}
			a.logger.Info("sink listening", "addr", s.Addr(), "dir", cfg.Dir)
			tick := time.NewTicker(every)
			defer tick.Stop()
			var last sink.Stats
			for {
				select {
				case <-cmd.Context().Done():
					err := s.Close()
					st := s.Stats()
					fmt.Fprintf(a.stdout, "sink: %d connections, %d messages, %d recipients, %d bytes\n",
						st.Connections, st.Messages, st.Recipients, st.Bytes)
					if timeline != "" {
						err = errors.Join(err, writeTimeline(timeline, s.Timeline()))
					}
					return err
				case <-tick.C:
					if st := s.Stats(); st != last {
						a.logger.Info("sink", "messages", st.Messages, "recipients", st.Recipients, "connections", st.Connections)
						last = st
					}
				}
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "127.0.0.1:2525", "listen address")
	f.StringVar(&cfg.Dir, "dir", "", "write each message to this directory as .eml")
	f.DurationVar(&every, "stats-every", 5*time.Second, "log counts this often")
	f.StringVar(&timeline, "timeline", "", "on exit, write the recipients accepted per second to this CSV file (unix_second,recipients)")
	return cmd
}

// writeTimeline writes the sink's per-second counts as CSV.
func writeTimeline(path string, secs []sink.Second) error {
	var b strings.Builder
	b.WriteString("unix_second,recipients\n")
	for _, s := range secs {
		fmt.Fprintf(&b, "%d,%d\n", s.Unix, s.Recipients)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("writing timeline: %w", err)
	}
	return nil
}
