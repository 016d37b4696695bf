package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/blaster-mail/blaster/campaign"
)

// watchOpts are the flags of `campaign status ID --watch`.
type watchOpts struct {
	// enabled is --watch: follow the campaign until it is done or
	// cancelled.
	enabled bool
	// interval is --interval: the time between two refreshes. Default 1s.
	interval time.Duration
}

func (o *watchOpts) addFlags(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&o.enabled, "watch", false,
		"follow the campaign until it is done or cancelled: a live progress bar on a terminal, a line per --interval otherwise")
	cmd.Flags().DurationVar(&o.interval, "interval", time.Second, "with --watch: time between refreshes")
}

// run builds a watcher on a's stdout (a progress display when it is a
// terminal) and follows campaign id.
func (o *watchOpts) run(ctx context.Context, a *app, pool *pgxpool.Pool, id int64, asJSON bool) error {
	if o.interval <= 0 {
		return fmt.Errorf("--interval %s: must be positive", o.interval)
	}
	w := &watcher{pool: pool, out: a.stdout, interval: o.interval, json: asJSON, now: time.Now, width: 80}
	if f, ok := a.stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		w.tty = true
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 20 {
			w.width = cols
		}
	}
	return w.watch(ctx, id)
}

// watchTop is how many destination domains and SMTP replies are shown.
const watchTop = 5

// rateWindow is the span over which the current rate is measured: long
// enough to smooth one batch's burst of outcomes, short enough to follow a
// throttle change.
const rateWindow = 10 * time.Second

// watcher follows one campaign's progress.
type watcher struct {
	pool     *pgxpool.Pool
	out      io.Writer
	interval time.Duration
	json     bool // a JSON object per line
	tty      bool // redraw one frame in place (ANSI), rather than append lines
	width    int  // terminal columns
	now      func() time.Time

	meter     rateMeter
	lastLines int // lines of the frame drawn last, to redraw over it
}

// watchSnapshot is one refresh: the campaign's status plus progress. As a
// JSON line its field names are stable: those of campaign status, plus the
// ones below.
type watchSnapshot struct {
	*campaign.Status
	At time.Time `json:"at"`
	// Finished is the recipients with a final outcome (sent, bounced,
	// expired, unknown, suppressed, cancelled): Total minus Pending.
	Finished int `json:"finished"`
	// RatePerSecond is recipients finished per second over the last 10 s.
	RatePerSecond float64 `json:"rate_per_second"`
	// ETASeconds is Pending / RatePerSecond; absent while the rate is 0.
	ETASeconds *float64 `json:"eta_seconds,omitempty"`
	// TopDomains and TopReplies are on every terminal frame and on the last
	// line (they cost a pass over the campaign's deliveries).
	TopDomains []domainCount `json:"top_domains,omitempty"`
	TopReplies []replyCount  `json:"top_replies,omitempty"`
}

type domainCount struct {
	Domain     string `json:"domain"`
	Recipients int    `json:"recipients"`
	Sent       int    `json:"sent"`
	Pending    int    `json:"pending"`
	Failed     int    `json:"failed"` // bounced, expired or unknown
}

// replyCount is the recipients whose last attempt got one reply code and
// enhanced code (RFC 5321 §4.2, RFC 3463). Texts differ per recipient
// (queue ids, the address echoed back), so they are grouped by code and
// Text is the most frequent text among them.
type replyCount struct {
	Code       int    `json:"code"`
	Enhanced   string `json:"enhanced"`
	Text       string `json:"text"`
	Recipients int    `json:"recipients"`
}

func finished(s campaign.State) bool { return s == campaign.Done || s == campaign.Cancelled }

// watch refreshes every interval until the campaign is finished or ctx
// ends (Ctrl-C ends the watch without an error).
func (w *watcher) watch(ctx context.Context, id int64) error {
	ticker := time.NewTicker(w.interval)
	defer ticker.Stop()
	for {
		snap, err := w.snapshot(ctx, id)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		last := finished(snap.State)
		if last || w.tty {
			if err := w.addTop(ctx, snap); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		if err := w.render(snap, last); err != nil {
			return fmt.Errorf("writing progress: %w", err)
		}
		if last {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

func (w *watcher) snapshot(ctx context.Context, id int64) (*watchSnapshot, error) {
	st, err := campaign.GetStatus(ctx, w.pool, id)
	if err != nil {
		return nil, err
	}
	now := w.now()
	snap := &watchSnapshot{Status: st, At: now, Finished: st.Total - st.Pending()}
	snap.RatePerSecond = w.meter.add(now, snap.Finished)
	if snap.RatePerSecond > 0 && st.Pending() > 0 {
		eta := float64(st.Pending()) / snap.RatePerSecond
		snap.ETASeconds = &eta
	}
	return snap, nil
}

// addTop reads the top destination domains (the batch's domain, joined on
// the deliveries' (campaign_id, batch_no) index) and the most frequent
// last replies.
func (w *watcher) addTop(ctx context.Context, snap *watchSnapshot) error {
	rows, err := w.pool.Query(ctx, `
		SELECT b.domain, count(*),
		       count(*) FILTER (WHERE d.state = 'sent'),
		       count(*) FILTER (WHERE d.state IN ('queued', 'sending', 'deferred')),
		       count(*) FILTER (WHERE d.state IN ('bounced', 'expired', 'unknown'))
		FROM deliveries d JOIN batches b ON b.campaign_id = d.campaign_id AND b.batch_no = d.batch_no
		WHERE d.campaign_id = $1
		GROUP BY b.domain ORDER BY count(*) DESC, b.domain LIMIT $2`, snap.ID, watchTop)
	if err != nil {
		return fmt.Errorf("counting destination domains of campaign %d: %w", snap.ID, err)
	}
	snap.TopDomains = []domainCount{}
	for rows.Next() {
		var d domainCount
		if err := rows.Scan(&d.Domain, &d.Recipients, &d.Sent, &d.Pending, &d.Failed); err != nil {
			rows.Close()
			return fmt.Errorf("counting destination domains of campaign %d: %w", snap.ID, err)
		}
		snap.TopDomains = append(snap.TopDomains, d)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("counting destination domains of campaign %d: %w", snap.ID, err)
	}
	rows, err = w.pool.Query(ctx, `
		SELECT last_code, coalesce(last_enhanced, ''), coalesce(mode() WITHIN GROUP (ORDER BY last_text), ''), count(*)
		FROM deliveries WHERE campaign_id = $1 AND last_code IS NOT NULL
		GROUP BY last_code, coalesce(last_enhanced, '') ORDER BY count(*) DESC, last_code LIMIT $2`, snap.ID, watchTop)
	if err != nil {
		return fmt.Errorf("counting SMTP replies of campaign %d: %w", snap.ID, err)
	}
	snap.TopReplies = []replyCount{}
	for rows.Next() {
		var r replyCount
		if err := rows.Scan(&r.Code, &r.Enhanced, &r.Text, &r.Recipients); err != nil {
			rows.Close()
			return fmt.Errorf("counting SMTP replies of campaign %d: %w", snap.ID, err)
		}
		snap.TopReplies = append(snap.TopReplies, r)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("counting SMTP replies of campaign %d: %w", snap.ID, err)
	}
	return nil
}

func (w *watcher) render(snap *watchSnapshot, last bool) error {
	switch {
	case w.json:
		b, err := json.Marshal(snap)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w.out, "%s\n", b)
		return err
	case w.tty:
		frame := formatFrame(snap, w.width)
		var b strings.Builder
		if w.lastLines > 0 {
			// Back to the first line of the previous frame and clear to the
			// end of the screen (ECMA-48 CPL and ED).
			fmt.Fprintf(&b, "\x1b[%dF\x1b[J", w.lastLines)
		}
		b.WriteString(frame)
		w.lastLines = strings.Count(frame, "\n")
		_, err := io.WriteString(w.out, b.String())
		return err
	default:
		if _, err := fmt.Fprintln(w.out, formatLine(snap)); err != nil {
			return err
		}
		if last {
			_, err := io.WriteString(w.out, formatTop(snap))
			return err
		}
		return nil
	}
}

// formatLine is one plain progress line, for logs and pipes.
func formatLine(s *watchSnapshot) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s campaign %d %s %s %d/%d", s.At.UTC().Format(time.RFC3339), s.ID, s.State,
		percent(s.Finished, s.Total), s.Finished, s.Total)
	fmt.Fprintf(&b, " %s", stateCounts(s.Status))
	fmt.Fprintf(&b, " rate %.1f/s eta %s", s.RatePerSecond, eta(s))
	return b.String()
}

// formatFrame is the terminal display: a progress bar with rate and ETA,
// the counts per state, the top domains and replies.
func formatFrame(s *watchSnapshot, width int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "campaign %d %q (%s) %s\n", s.ID, s.Name, s.Kind, s.State)
	tail := fmt.Sprintf(" %s %d/%d %.1f/s ETA %s", percent(s.Finished, s.Total), s.Finished, s.Total, s.RatePerSecond, eta(s))
	barWidth := max(10, min(60, width-len(tail)-2))
	filled := 0
	if s.Total > 0 {
		// Clamped: counts read at different instants may not add up.
		filled = max(0, min(barWidth, int(int64(barWidth)*int64(s.Finished)/int64(s.Total))))
	}
	fmt.Fprintf(&b, "[%s%s]%s\n", strings.Repeat("#", filled), strings.Repeat(".", barWidth-filled), tail)
	fmt.Fprintln(&b, stateCounts(s.Status))
	b.WriteString(formatTop(s))
	return b.String()
}

func formatTop(s *watchSnapshot) string {
	var b strings.Builder
	if len(s.TopDomains) > 0 {
		b.WriteString("top domains:\n")
		for _, d := range s.TopDomains {
			fmt.Fprintf(&b, "  %-30s %d recipients: %d sent, %d pending, %d failed\n", d.Domain, d.Recipients, d.Sent, d.Pending, d.Failed)
		}
	}
	if len(s.TopReplies) > 0 {
		b.WriteString("top replies:\n")
		for _, r := range s.TopReplies {
			fmt.Fprintf(&b, "  %d %-7s %6d  %s\n", r.Code, r.Enhanced, r.Recipients, oneLine(r.Text, 60))
		}
	}
	return b.String()
}

func stateCounts(s *campaign.Status) string {
	return fmt.Sprintf("queued %d sending %d sent %d deferred %d bounced %d expired %d suppressed %d unknown %d cancelled %d",
		s.Queued, s.Sending, s.Sent, s.Deferred, s.Bounced, s.Expired, s.Suppressed, s.Unknown, s.Cancelled)
}

func percent(n, total int) string {
	if total == 0 {
		return "100.0%"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(n)/float64(total))
}

func eta(s *watchSnapshot) string {
	if s.Pending() == 0 {
		return "0s"
	}
	if s.ETASeconds == nil {
		return "-"
	}
	return time.Duration(*s.ETASeconds * float64(time.Second)).Round(time.Second).String()
}

// rateMeter measures a counter's rate over the last rateWindow from the
// samples it is given; the clock is the caller's, so tests drive it.
type rateMeter struct {
	samples []rateSample
}

type rateSample struct {
	at time.Time
	n  int
}

// add records n at t and returns the rate per second between the oldest
// sample still in the window and this one (0 with a single sample).
func (m *rateMeter) add(t time.Time, n int) float64 {
	m.samples = append(m.samples, rateSample{t, n})
	// Keep one sample at or before the window's start, so that the span is
	// the full window once there is enough history.
	for len(m.samples) > 2 && !m.samples[1].at.After(t.Add(-rateWindow)) {
		m.samples = m.samples[1:]
	}
	first := m.samples[0]
	dt := t.Sub(first.at).Seconds()
	if dt <= 0 {
		return 0
	}
	return max(0, float64(n-first.n)/dt)
}
