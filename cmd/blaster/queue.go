package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/spf13/cobra"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/metrics"
	"github.com/blaster-mail/blaster/worker"
)

// The queue commands are blaster's stand-in for River UI and the river CLI
// (neither is available here), built on River's Go API: JobList, JobGet,
// JobRetry, JobCancel, QueuePause, QueueResume. Only the per-state counts
// of `queue stats` are plain SQL over river_job, as River has no count API.

func newQueueCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "queue",
		Short: "Inspect and steer River's send jobs and queues",
		Long: `Inspect and steer the River jobs that carry campaigns: one send_batch job
per batch, in queue "alert" or "newsletter". These commands act on jobs, not
on the per-recipient ledger: to stop a campaign, use the campaign commands.`,
	}
	cmd.AddCommand(newQueueStatsCmd(a), newQueueListCmd(a), newQueueShowCmd(a),
		newQueueRetryCmd(a), newQueueCancelCmd(a), newQueuePauseCmd(a, true), newQueuePauseCmd(a, false))
	for _, sub := range cmd.Commands() {
		if sub.Flags().Lookup("campaign") != nil {
			sub.RegisterFlagCompletionFunc("campaign", func(c *cobra.Command, _ []string, prefix string) ([]string, cobra.ShellCompDirective) {
				return a.completeCampaignID(c, nil, prefix)
			})
		}
	}
	return cmd
}

// riverClient opens the database and an insert-only River client (no
// queues of its own), which is all River's Go API needs for inspection.
func (a *app) riverClient(ctx context.Context) (*pgxpool.Pool, *river.Client[pgx.Tx], error) {
	pool, err := a.db(ctx)
	if err != nil {
		return nil, nil, err
	}
	rc, err := worker.InsertClient(pool)
	if err != nil {
		return nil, nil, err
	}
	return pool, rc, nil
}

// parseJobState checks a --state value against River's job states.
func parseJobState(s string) (rivertype.JobState, error) {
	st := rivertype.JobState(strings.ToLower(strings.TrimSpace(s)))
	if !slices.Contains(rivertype.JobStates(), st) {
		names := make([]string, 0, 8)
		for _, v := range rivertype.JobStates() {
			names = append(names, string(v))
		}
		return "", fmt.Errorf("--state %q: must be one of %s", s, strings.Join(names, ", "))
	}
	return st, nil
}

func parseJobID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("job id %q: must be a positive number", s)
	}
	return id, nil
}

// --- stats ---

// queueStats is the JSON of `queue stats`; its field names are stable.
type queueStats struct {
	Queues []queueStat `json:"queues"`
}

type queueStat struct {
	Queue  string `json:"queue"`
	Paused bool   `json:"paused"`
	// States has an entry for every River job state, zero or not.
	States map[string]stateStat `json:"states"`
	// CompletedLastMinute is the jobs that completed in the last 60 s;
	// PerSecond is the same divided by 60.
	CompletedLastMinute int     `json:"completed_last_minute"`
	PerSecond           float64 `json:"per_second"`
}

type stateStat struct {
	Count int `json:"count"`
	// OldestAgeSeconds is how long ago the oldest job in this state was
	// created; 0 when there is none.
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
}

// readQueueStats counts river_job per queue and state. The age and the
// last minute are measured on the database's clock, the one that wrote
// created_at and finalized_at.
func readQueueStats(ctx context.Context, pool *pgxpool.Pool) (*queueStats, error) {
	byQueue := map[string]*queueStat{}
	get := func(name string) *queueStat {
		q := byQueue[name]
		if q == nil {
			q = &queueStat{Queue: name, States: map[string]stateStat{}}
			for _, st := range rivertype.JobStates() {
				q.States[string(st)] = stateStat{}
			}
			byQueue[name] = q
		}
		return q
	}
	counts, err := metrics.QueueCounts(ctx, pool)
	if err != nil {
		return nil, err
	}
	for _, c := range counts {
		get(c.Queue).States[c.State] = stateStat{Count: c.Jobs, OldestAgeSeconds: c.OldestSeconds}
	}
	rows, err := pool.Query(ctx, `
		SELECT queue, count(*) FROM river_job
		WHERE state = 'completed' AND finalized_at > now() - interval '60 seconds'
		GROUP BY queue`)
	if err != nil {
		return nil, fmt.Errorf("counting jobs completed in the last minute: %w", err)
	}
	for rows.Next() {
		var queue string
		var n int
		if err := rows.Scan(&queue, &n); err != nil {
			rows.Close()
			return nil, fmt.Errorf("counting jobs completed in the last minute: %w", err)
		}
		q := get(queue)
		q.CompletedLastMinute = n
		q.PerSecond = float64(n) / 60
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("counting jobs completed in the last minute: %w", err)
	}
	// Queues a worker has run (river_queue) show even when empty, with
	// their pause state.
	rows, err = pool.Query(ctx, `SELECT name, paused_at IS NOT NULL FROM river_queue`)
	if err != nil {
		return nil, fmt.Errorf("reading river_queue: %w", err)
	}
	for rows.Next() {
		var name string
		var paused bool
		if err := rows.Scan(&name, &paused); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading river_queue: %w", err)
		}
		get(name).Paused = paused
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading river_queue: %w", err)
	}
	out := &queueStats{Queues: []queueStat{}}
	for _, q := range byQueue {
		out.Queues = append(out.Queues, *q)
	}
	slices.SortFunc(out.Queues, func(x, y queueStat) int { return strings.Compare(x.Queue, y.Queue) })
	return out, nil
}

func newQueueStatsCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Count jobs per queue and state, with the oldest job's age and the last minute's throughput",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := a.db(cmd.Context())
			if err != nil {
				return err
			}
			st, err := readQueueStats(cmd.Context(), pool)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, st)
			}
			return writeQueueStats(a.stdout, st)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return cmd
}

func writeQueueStats(w io.Writer, st *queueStats) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tSTATE\tJOBS\tOLDEST")
	for _, q := range st.Queues {
		name := q.Queue
		if q.Paused {
			name += " (paused)"
		}
		for _, s := range rivertype.JobStates() {
			v := q.States[string(s)]
			if v.Count == 0 {
				continue
			}
			age := time.Duration(v.OldestAgeSeconds * float64(time.Second)).Round(time.Second)
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", name, s, v.Count, age)
		}
		fmt.Fprintf(tw, "%s\tcompleted last 60s\t%d\t%.1f/s\n", name, q.CompletedLastMinute, q.PerSecond)
	}
	return tw.Flush()
}

// --- list and show ---

// jobView is one job in the JSON of `queue list` and `queue show`; its
// field names are stable.
type jobView struct {
	ID          int64           `json:"id"`
	Kind        string          `json:"kind"`
	Queue       string          `json:"queue"`
	State       string          `json:"state"`
	Priority    int             `json:"priority"`
	CampaignID  *int64          `json:"campaign_id,omitempty"`
	BatchNo     *int            `json:"batch_no,omitempty"`
	Attempt     int             `json:"attempt"`
	MaxAttempts int             `json:"max_attempts"`
	CreatedAt   time.Time       `json:"created_at"`
	ScheduledAt time.Time       `json:"scheduled_at"`
	AttemptedAt *time.Time      `json:"attempted_at,omitempty"`
	FinalizedAt *time.Time      `json:"finalized_at,omitempty"`
	AttemptedBy []string        `json:"attempted_by,omitempty"`
	Args        json.RawMessage `json:"args"`
	Errors      []jobError      `json:"errors"`
}

type jobError struct {
	At      time.Time `json:"at"`
	Attempt int       `json:"attempt"`
	Error   string    `json:"error"`
	Trace   string    `json:"trace,omitempty"`
}

func newJobView(j *rivertype.JobRow) jobView {
	v := jobView{ID: j.ID, Kind: j.Kind, Queue: j.Queue, State: string(j.State), Priority: j.Priority,
		Attempt: j.Attempt, MaxAttempts: j.MaxAttempts, CreatedAt: j.CreatedAt, ScheduledAt: j.ScheduledAt,
		AttemptedAt: j.AttemptedAt, FinalizedAt: j.FinalizedAt, AttemptedBy: j.AttemptedBy,
		Args: json.RawMessage(j.EncodedArgs), Errors: []jobError{}}
	if len(v.Args) == 0 {
		v.Args = json.RawMessage("null")
	}
	if j.Kind == (campaign.SendBatchArgs{}).Kind() {
		var args campaign.SendBatchArgs
		if json.Unmarshal(j.EncodedArgs, &args) == nil {
			v.CampaignID, v.BatchNo = &args.CampaignID, &args.BatchNo
		}
	}
	for _, e := range j.Errors {
		v.Errors = append(v.Errors, jobError{At: e.At, Attempt: e.Attempt, Error: e.Error, Trace: e.Trace})
	}
	return v
}

// jobFilter selects jobs for list, retry and cancel.
type jobFilter struct {
	states     []rivertype.JobState
	queue      string
	campaignID int64
}

// params builds River's list parameters. The campaign is matched in the
// job's args (send_batch carries campaign_id) through JobListParams.Where.
func (f jobFilter) params() *river.JobListParams {
	p := river.NewJobListParams().OrderBy(river.JobListOrderByID, river.SortOrderAsc)
	if len(f.states) > 0 {
		p = p.States(f.states...)
	}
	if f.queue != "" {
		p = p.Queues(f.queue)
	}
	if f.campaignID > 0 {
		p = p.Where("args->>'campaign_id' = @campaign_id",
			river.NamedArgs{"campaign_id": strconv.FormatInt(f.campaignID, 10)})
	}
	return p
}

// listJobs pages through River's JobList until limit jobs (0: all).
func listJobs(ctx context.Context, rc *river.Client[pgx.Tx], f jobFilter, limit int) ([]*rivertype.JobRow, error) {
	const page = 1000
	var out []*rivertype.JobRow
	p := f.params()
	for {
		n := page
		if limit > 0 {
			n = min(page, limit-len(out))
		}
		res, err := rc.JobList(ctx, p.First(n))
		if err != nil {
			return nil, fmt.Errorf("listing jobs: %w", err)
		}
		out = append(out, res.Jobs...)
		if len(res.Jobs) < n || (limit > 0 && len(out) >= limit) {
			return out, nil
		}
		p = p.After(res.LastCursor)
	}
}

func newQueueListCmd(a *app) *cobra.Command {
	var (
		asJSON     bool
		states     []string
		f          jobFilter
		limit      int
		campaignID int64
	)
	cmd := &cobra.Command{
		Use:   "list [--state S] [--queue Q] [--campaign ID] [--limit N]",
		Short: "List jobs, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, s := range states {
				st, err := parseJobState(s)
				if err != nil {
					return err
				}
				f.states = append(f.states, st)
			}
			if limit < 1 {
				return fmt.Errorf("--limit %d: must be at least 1", limit)
			}
			f.campaignID = campaignID
			_, rc, err := a.riverClient(cmd.Context())
			if err != nil {
				return err
			}
			jobs, err := listJobs(cmd.Context(), rc, f, limit)
			if err != nil {
				return err
			}
			views := make([]jobView, 0, len(jobs))
			for _, j := range jobs {
				views = append(views, newJobView(j))
			}
			if asJSON {
				return writeJSON(a.stdout, views)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tQUEUE\tSTATE\tKIND\tCAMPAIGN\tBATCH\tATTEMPT\tSCHEDULED\tLAST ERROR")
			for _, v := range views {
				camp, batch := "-", "-"
				if v.CampaignID != nil {
					camp, batch = strconv.FormatInt(*v.CampaignID, 10), strconv.Itoa(*v.BatchNo)
				}
				lastErr := ""
				if n := len(v.Errors); n > 0 {
					lastErr = oneLine(v.Errors[n-1].Error, 60)
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", v.ID, v.Queue, v.State, v.Kind, camp, batch,
					v.Attempt, v.MaxAttempts, v.ScheduledAt.Local().Format(time.DateTime), lastErr)
			}
			return tw.Flush()
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&asJSON, "json", false, "print a JSON array")
	fl.StringSliceVar(&states, "state", nil, "job states to list, repeatable or comma-separated (default all): "+
		"available, scheduled, pending, running, retryable, completed, cancelled, discarded")
	fl.StringVar(&f.queue, "queue", "", "only this queue (alert or newsletter)")
	fl.Int64Var(&campaignID, "campaign", 0, "only the jobs of this campaign")
	fl.IntVar(&limit, "limit", 100, "at most this many jobs")
	completeJobFlags(cmd)
	return cmd
}

// completeJobFlags offers River's job states and blaster's queues to shell
// completion for --state and --queue.
func completeJobFlags(cmd *cobra.Command) {
	cmd.RegisterFlagCompletionFunc("state", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		names := make([]string, 0, 8)
		for _, st := range rivertype.JobStates() {
			names = append(names, string(st))
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	})
	if cmd.Flags().Lookup("queue") != nil {
		cmd.RegisterFlagCompletionFunc("queue", cobra.FixedCompletions(
			[]string{campaign.QueueAlert, campaign.QueueNewsletter}, cobra.ShellCompDirectiveNoFileComp))
	}
}

// oneLine shortens s to one line of at most n runes, for tables.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func getJob(ctx context.Context, rc *river.Client[pgx.Tx], id int64) (*rivertype.JobRow, error) {
	j, err := rc.JobGet(ctx, id)
	if errors.Is(err, river.ErrNotFound) {
		return nil, fmt.Errorf("job %d: not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("reading job %d: %w", id, err)
	}
	return j, nil
}

func newQueueShowCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show JOB",
		Short: "Show one job: args, attempts, errors with their times, state and times",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseJobID(args[0])
			if err != nil {
				return err
			}
			_, rc, err := a.riverClient(cmd.Context())
			if err != nil {
				return err
			}
			j, err := getJob(cmd.Context(), rc, id)
			if err != nil {
				return err
			}
			v := newJobView(j)
			if asJSON {
				return writeJSON(a.stdout, v)
			}
			return writeJob(a.stdout, v)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return cmd
}

func writeJob(w io.Writer, v jobView) error {
	ts := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.Local().Format(time.RFC3339)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "job\t%d\n", v.ID)
	fmt.Fprintf(tw, "kind\t%s\n", v.Kind)
	fmt.Fprintf(tw, "queue\t%s\n", v.Queue)
	fmt.Fprintf(tw, "state\t%s\n", v.State)
	fmt.Fprintf(tw, "priority\t%d\n", v.Priority)
	fmt.Fprintf(tw, "args\t%s\n", v.Args)
	fmt.Fprintf(tw, "attempts\t%d of %d\n", v.Attempt, v.MaxAttempts)
	fmt.Fprintf(tw, "created\t%s\n", ts(&v.CreatedAt))
	fmt.Fprintf(tw, "scheduled\t%s\n", ts(&v.ScheduledAt))
	fmt.Fprintf(tw, "attempted\t%s\n", ts(v.AttemptedAt))
	fmt.Fprintf(tw, "finalized\t%s\n", ts(v.FinalizedAt))
	if len(v.AttemptedBy) > 0 {
		fmt.Fprintf(tw, "attempted by\t%s\n", strings.Join(v.AttemptedBy, ", "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(v.Errors) == 0 {
		_, err := fmt.Fprintln(w, "errors: none")
		return err
	}
	fmt.Fprintln(w, "errors:")
	for _, e := range v.Errors {
		fmt.Fprintf(w, "  attempt %d at %s: %s\n", e.Attempt, e.At.Local().Format(time.RFC3339), e.Error)
	}
	return nil
}

// --- retry and cancel ---

// jobTargets is the jobs a retry or cancel acts on: the one given as an
// argument, or those of --campaign (in --state).
func jobTargets(ctx context.Context, rc *river.Client[pgx.Tx], args []string, campaignID int64, states []rivertype.JobState) ([]int64, error) {
	switch {
	case len(args) == 1 && campaignID > 0:
		return nil, errors.New("give either a job id or --campaign, not both")
	case len(args) == 1:
		id, err := parseJobID(args[0])
		if err != nil {
			return nil, err
		}
		return []int64{id}, nil
	case campaignID > 0:
		jobs, err := listJobs(ctx, rc, jobFilter{campaignID: campaignID, states: states}, 0)
		if err != nil {
			return nil, err
		}
		ids := make([]int64, len(jobs))
		for i, j := range jobs {
			ids[i] = j.ID
		}
		return ids, nil
	default:
		return nil, errors.New("give a job id or --campaign ID")
	}
}

func newQueueRetryCmd(a *app) *cobra.Command {
	var (
		campaignID int64
		state      string
	)
	cmd := &cobra.Command{
		Use:   "retry JOB | --campaign ID --state S",
		Short: "Make jobs available to run again now",
		Long: `Make a job, or every job of a campaign in one state, available to run now
(River's JobRetry). Running jobs are left alone; a job that used up its
attempts gets one more. The send worker skips recipients the ledger already
has an outcome for, so retrying a completed batch sends nothing twice.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var states []rivertype.JobState
			if campaignID > 0 {
				if state == "" {
					return errors.New("--campaign needs --state (e.g. discarded, retryable, cancelled)")
				}
				st, err := parseJobState(state)
				if err != nil {
					return err
				}
				if st == rivertype.JobStateRunning {
					return errors.New("--state running: running jobs cannot be retried")
				}
				states = []rivertype.JobState{st}
			} else if state != "" {
				return errors.New("--state goes with --campaign")
			}
			return a.eachJob(cmd.Context(), args, campaignID, states, "retrying", "retried",
				func(ctx context.Context, rc *river.Client[pgx.Tx], id int64) error {
					_, err := rc.JobRetry(ctx, id)
					return err
				})
		},
	}
	cmd.Flags().Int64Var(&campaignID, "campaign", 0, "retry this campaign's jobs (with --state)")
	cmd.Flags().StringVar(&state, "state", "", "with --campaign: the state of the jobs to retry")
	completeJobFlags(cmd)
	return cmd
}

func newQueueCancelCmd(a *app) *cobra.Command {
	var (
		campaignID int64
		state      string
	)
	cmd := &cobra.Command{
		Use:   "cancel JOB | --campaign ID [--state S]",
		Short: "Cancel jobs so that they do not run (again)",
		Long: `Cancel a job, or the unfinished jobs of a campaign (available, scheduled,
pending, retryable, running; or only those in --state), with River's
JobCancel. A running job's context is cancelled; finished jobs are left as
they are. The ledger is not touched: the cancelled batches' recipients stay
queued until their jobs are retried.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			states := []rivertype.JobState{rivertype.JobStateAvailable, rivertype.JobStateScheduled,
				rivertype.JobStatePending, rivertype.JobStateRetryable, rivertype.JobStateRunning}
			if state != "" {
				if campaignID == 0 {
					return errors.New("--state goes with --campaign")
				}
				st, err := parseJobState(state)
				if err != nil {
					return err
				}
				states = []rivertype.JobState{st}
			}
			return a.eachJob(cmd.Context(), args, campaignID, states, "cancelling", "cancelled",
				func(ctx context.Context, rc *river.Client[pgx.Tx], id int64) error {
					_, err := rc.JobCancel(ctx, id)
					return err
				})
		},
	}
	cmd.Flags().Int64Var(&campaignID, "campaign", 0, "cancel this campaign's unfinished jobs")
	cmd.Flags().StringVar(&state, "state", "", "with --campaign: only jobs in this state")
	completeJobFlags(cmd)
	return cmd
}

// eachJob is the body of queue retry and queue cancel: it runs op on the
// jobs named by args or by --campaign and states (jobTargets), stopping at
// the first error, which names the job ("cancelling job 7: not found"),
// and reports how many it did ("cancelled 3 jobs").
func (a *app) eachJob(ctx context.Context, args []string, campaignID int64, states []rivertype.JobState,
	doing, done string, op func(ctx context.Context, rc *river.Client[pgx.Tx], id int64) error) error {
	_, rc, err := a.riverClient(ctx)
	if err != nil {
		return err
	}
	ids, err := jobTargets(ctx, rc, args, campaignID, states)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := op(ctx, rc, id); err != nil {
			if errors.Is(err, river.ErrNotFound) {
				return fmt.Errorf("%s job %d: not found", doing, id)
			}
			return fmt.Errorf("%s job %d: %w", doing, id, err)
		}
	}
	fmt.Fprintf(a.stdout, "%s %d %s\n", done, len(ids), plural(len(ids), "job", "jobs"))
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// --- pause and resume ---

func newQueuePauseCmd(a *app, pause bool) *cobra.Command {
	use, short := "resume QUEUE", "Let workers fetch jobs from a paused queue again"
	if pause {
		use, short = "pause QUEUE", `Stop workers from fetching jobs from a queue ("*" for all)`
	}
	return &cobra.Command{
		Use:       use,
		Short:     short,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{campaign.QueueAlert, campaign.QueueNewsletter, "*"},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			pool, rc, err := a.riverClient(ctx)
			if err != nil {
				return err
			}
			name := args[0]
			if pause {
				err = rc.QueuePause(ctx, name, nil)
				if errors.Is(err, river.ErrNotFound) && (name == campaign.QueueAlert || name == campaign.QueueNewsletter) {
					err = createPausedQueue(ctx, pool, name)
				}
			} else {
				err = rc.QueueResume(ctx, name, nil)
			}
			verb := map[bool]string{true: "pausing", false: "resuming"}[pause]
			if errors.Is(err, river.ErrNotFound) {
				return fmt.Errorf("%s queue %q: no such queue (no worker has run it)", verb, name)
			}
			if err != nil {
				return fmt.Errorf("%s queue %q: %w", verb, name, err)
			}
			fmt.Fprintf(a.stdout, "queue %s %s\n", name, map[bool]string{true: "paused", false: "resumed"}[pause])
			return nil
		},
	}
}

// createPausedQueue records one of blaster's queues as paused before any
// worker has run it (River only pauses queues it has a river_queue row
// for), so that workers starting later start it paused. The row is the one
// River's producer would insert; River keeps paused_at when it upserts.
func createPausedQueue(ctx context.Context, pool *pgxpool.Pool, name string) error {
	_, err := pool.Exec(ctx, `
		INSERT INTO river_queue (name, created_at, metadata, paused_at, updated_at)
		VALUES ($1, now(), '{}', now(), now())
		ON CONFLICT (name) DO UPDATE SET paused_at = coalesce(river_queue.paused_at, now())`, name)
	if err != nil {
		return fmt.Errorf("recording queue %q as paused: %w", name, err)
	}
	return nil
}
