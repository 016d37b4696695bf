// Package campaign is blaster's ledger: campaigns, their fan-out into
// per-recipient deliveries and batches, and status. It writes and reads
// PostgreSQL; the send worker (package worker) does the delivering.
package campaign

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/blaster-mail/blaster/message"
)

// Kind is what a campaign is for; alerts overtake newsletters (their own
// River queue).
type Kind string

const (
	Newsletter Kind = "newsletter"
	Alert      Kind = "alert"
)

// Queue is the River queue of a kind's send jobs.
func (k Kind) Queue() string {
	if k == Alert {
		return QueueAlert
	}
	return QueueNewsletter
}

// River queues.
const (
	QueueNewsletter = "newsletter"
	QueueAlert      = "alert"
)

// State is a campaign's lifecycle state.
type State string

const (
	Draft     State = "draft"
	Running   State = "running"
	Paused    State = "paused"
	Done      State = "done"
	Cancelled State = "cancelled"
)

// Campaign is one row of table campaigns.
type Campaign struct {
	ID           int64      `json:"id"`
	Name         string     `json:"name"`
	Kind         Kind       `json:"kind"`
	ListID       *int64     `json:"list_id,omitempty"`
	ListName     string     `json:"list,omitempty"`
	From         string     `json:"from"`
	Subject      string     `json:"subject"`
	Text         string     `json:"text,omitempty"`
	HTML         string     `json:"html,omitempty"`
	Personalized bool       `json:"personalized"`
	State        State      `json:"state"`
	Settings     Settings   `json:"settings"`
	Total        int        `json:"total"`
	CreatedAt    time.Time  `json:"created_at"`
	StartedAt    *time.Time `json:"started_at,omitempty"`
	FinishedAt   *time.Time `json:"finished_at,omitempty"`
}

// Secrets are what a process needs to build a campaign's messages that the
// database never holds.
type Secrets struct {
	// UnsubscribeKey makes one-click unsubscribe tokens
	// (unsubscribe.LoadKey: $BLASTER_UNSUBSCRIBE_KEY or a key file).
	UnsubscribeKey []byte
	// BounceKey signs return paths (returnpath.LoadKey:
	// $BLASTER_BOUNCE_KEY or a key file).
	BounceKey []byte
}

// Content is the campaign's message as message.Content, with its
// unsubscribe and DKIM policy; the DKIM key is read from its file.
func (c *Campaign) Content(sec Secrets) (message.Content, error) {
	return content(c.From, c.Subject, c.Text, c.HTML, c.Settings, sec)
}

func content(from, subject, text, html string, s Settings, sec Secrets) (message.Content, error) {
	mc := message.Content{From: from, Subject: subject, Text: text, HTML: html}
	if u := s.Unsubscribe; u != nil {
		mc.Unsubscribe = message.Unsubscribe{BaseURL: u.BaseURL, Mailto: u.Mailto, OneClick: u.OneClick, Key: sec.UnsubscribeKey}
		if u.OneClick && len(sec.UnsubscribeKey) == 0 {
			return mc, errors.New("one-click unsubscribe needs the token key: set BLASTER_UNSUBSCRIBE_KEY or --unsubscribe-key-file")
		}
	}
	if err := s.ReturnPath.check(sec); err != nil {
		return mc, fmt.Errorf("return path: %w", err)
	}
	if d := s.DKIM; d != nil {
		key, err := message.LoadDKIMKey(d.KeyFile)
		if err != nil {
			return mc, fmt.Errorf("DKIM key: %w", err)
		}
		mc.DKIM = &message.DKIM{Domain: d.Domain, Selector: d.Selector, Key: key}
	}
	return mc, nil
}

// ErrNotFound is returned for a campaign id that does not exist.
var ErrNotFound = errors.New("campaign not found")

// Querier is what reads need: a pool, a connection or a transaction.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// New describes a campaign to create.
type New struct {
	Name     string
	Kind     Kind   // default Newsletter
	List     string // list name; must exist
	From     string
	Subject  string
	Text     string
	HTML     string
	Settings Settings
	// Attachments are paths of files attached to every message. Create
	// checks them (regular files, names fit for Content-Disposition, at
	// most MaxAttachmentBytes together) and stores their content with the
	// campaign, so workers on any machine can send them.
	Attachments []string
	// Secrets are needed to test-render one-click unsubscribe links.
	Secrets Secrets
}

// Create parses and test-renders the templates (so a template error shows
// now, not mid-send), and stores a draft campaign.
func Create(ctx context.Context, q Querier, n New) (*Campaign, error) {
	if n.Kind == "" {
		n.Kind = Newsletter
	}
	if n.Kind != Newsletter && n.Kind != Alert {
		return nil, fmt.Errorf("campaign kind %q: must be newsletter or alert", n.Kind)
	}
	if n.From == "" {
		return nil, errors.New("campaign needs a From address")
	}
	if err := n.Settings.validate(); err != nil {
		return nil, fmt.Errorf("campaign settings: %w", err)
	}
	mc, err := content(n.From, n.Subject, n.Text, n.HTML, n.Settings, n.Secrets)
	if err != nil {
		return nil, err
	}
	files, contents, err := readAttachments(n.Attachments)
	if err != nil {
		return nil, err
	}
	for i, f := range files {
		mc.Files = append(mc.Files, message.Attachment{Path: n.Attachments[i], Name: f.Name, MediaType: f.MediaType})
	}
	tmpl, err := message.Parse(mc)
	if err != nil {
		return nil, err
	}
	if err := tmpl.Validate(nil); err != nil {
		return nil, fmt.Errorf("test-rendering templates: %w", err)
	}
	settings, err := json.Marshal(n.Settings)
	if err != nil {
		return nil, err
	}
	var listID *int64
	if n.List != "" {
		var id int64
		err := q.QueryRow(ctx, "SELECT id FROM lists WHERE name = $1", n.List).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("list %q does not exist (import contacts into it first)", n.List)
		}
		if err != nil {
			return nil, fmt.Errorf("looking up list %q: %w", n.List, err)
		}
		listID = &id
	}
	// One statement, so the campaign never exists without its files.
	pos, names, types, sizes, sums := fileColumns(files)
	var id int64
	err = q.QueryRow(ctx, `
		WITH c AS (
			INSERT INTO campaigns (name, kind, list_id, from_addr, subject, text_body, html_body, personalized, settings)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id),
		f AS (
			INSERT INTO campaign_files (campaign_id, position, name, media_type, size, sha256, content)
			SELECT c.id, u.position, u.name, u.media_type, u.size, u.sha256, u.content
			FROM c, unnest($10::int[], $11::text[], $12::text[], $13::bigint[], $14::bytea[], $15::bytea[])
			     AS u(position, name, media_type, size, sha256, content))
		SELECT id FROM c`,
		n.Name, n.Kind, listID, n.From, n.Subject, n.Text, n.HTML, tmpl.Personalized(), settings,
		pos, names, types, sizes, sums, contents).Scan(&id)
	if err != nil {
		return nil, fmt.Errorf("inserting campaign: %w", err)
	}
	return Get(ctx, q, id)
}

// Get reads one campaign.
func Get(ctx context.Context, q Querier, id int64) (*Campaign, error) {
	rows, err := q.Query(ctx, selectCampaign+" WHERE c.id = $1", id)
	if err != nil {
		return nil, fmt.Errorf("reading campaign %d: %w", id, err)
	}
	c, err := pgx.CollectExactlyOneRow(rows, scanCampaign)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("campaign %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading campaign %d: %w", id, err)
	}
	return c, nil
}

// List reads every campaign, newest first.
func List(ctx context.Context, q Querier) ([]*Campaign, error) {
	rows, err := q.Query(ctx, selectCampaign+" ORDER BY c.id DESC")
	if err != nil {
		return nil, fmt.Errorf("listing campaigns: %w", err)
	}
	cs, err := pgx.CollectRows(rows, scanCampaign)
	if err != nil {
		return nil, fmt.Errorf("listing campaigns: %w", err)
	}
	return cs, nil
}

const selectCampaign = `
	SELECT c.id, c.name, c.kind, c.list_id, coalesce(l.name, ''), c.from_addr, c.subject, c.text_body,
	       c.html_body, c.personalized, c.state, c.settings, c.total, c.created_at, c.started_at, c.finished_at
	FROM campaigns c LEFT JOIN lists l ON l.id = c.list_id`

func scanCampaign(row pgx.CollectableRow) (*Campaign, error) {
	var c Campaign
	var settings []byte
	err := row.Scan(&c.ID, &c.Name, &c.Kind, &c.ListID, &c.ListName, &c.From, &c.Subject, &c.Text,
		&c.HTML, &c.Personalized, &c.State, &settings, &c.Total, &c.CreatedAt, &c.StartedAt, &c.FinishedAt)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(settings, &c.Settings); err != nil {
		return nil, fmt.Errorf("campaign %d settings: %w", c.ID, err)
	}
	return &c, nil
}

// Pool is the type Start needs: it begins the fan-out transaction.
type Pool interface {
	Querier
	Begin(ctx context.Context) (pgx.Tx, error)
}

var _ Pool = (*pgxpool.Pool)(nil)
