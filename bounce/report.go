package bounce

import (
	"context"
	"fmt"
	"sort"

	"github.com/blaster-mail/blaster/campaign"
)

// CampaignReport sums up a campaign's delivery and bounces. Its JSON field
// names are a stable interface.
type CampaignReport struct {
	ID    int64          `json:"id"`
	Name  string         `json:"name"`
	Kind  campaign.Kind  `json:"kind"`
	State campaign.State `json:"state"`
	Total int            `json:"total"`
	// Sent are recipients whose mail was accepted and has not bounced
	// since (deliveries in state sent).
	Sent int `json:"sent"`
	// BouncedHard are recipients who bounced for good: rejected at SMTP
	// time or by a hard bounce later (deliveries in state bounced).
	BouncedHard int `json:"bounced_hard"`
	// BouncedAsync are the recipients with a hard bounce message, the part
	// of BouncedHard that the relay had accepted first.
	BouncedAsync int `json:"bounced_async"`
	// BouncedSoft are recipients with soft bounces (delays, transient
	// failures) only.
	BouncedSoft int `json:"bounced_soft"`
	// BounceRate is BouncedHard / (Sent + BouncedHard); 0 before any.
	BounceRate float64 `json:"bounce_rate"`
	// UnmatchedBounces are bounce recipients that are none of the
	// campaign's (a forwarding address behind a campaign-level return path).
	UnmatchedBounces int `json:"unmatched_bounces"`
	// SuppressionsAdded are the addresses this campaign's bounces put on
	// the suppression list.
	SuppressionsAdded int `json:"suppressions_added"`
	// TopReasons are the most common reasons, hard and soft, most first.
	TopReasons []Reason `json:"top_reasons"`
}

// Reason is one group of bounces: an enhanced status code and a normalized
// diagnostic (NormalizeReason).
type Reason struct {
	Class      Class  `json:"class"`
	Status     string `json:"status"`
	Diagnostic string `json:"diagnostic"`
	Count      int    `json:"count"`
}

// MaxReasons is how many reasons a report lists.
const MaxReasons = 10

// GetReport builds the report of campaign id.
func GetReport(ctx context.Context, q campaign.Querier, id int64) (*CampaignReport, error) {
	st, err := campaign.GetStatus(ctx, q, id)
	if err != nil {
		return nil, err
	}
	r := &CampaignReport{ID: st.ID, Name: st.Name, Kind: st.Kind, State: st.State, Total: st.Total,
		Sent: st.Sent, BouncedHard: st.Bounced, TopReasons: []Reason{}}
	err = q.QueryRow(ctx, `
		WITH per_contact AS (
			SELECT contact_id, bool_or(class = 'hard') AS hard
			FROM bounce_events WHERE campaign_id = $1 AND contact_id IS NOT NULL GROUP BY contact_id
		)
		SELECT (SELECT count(*) FROM per_contact WHERE hard),
		       (SELECT count(*) FROM per_contact p JOIN deliveries d ON d.campaign_id = $1 AND d.contact_id = p.contact_id
		         WHERE NOT p.hard AND d.state <> 'bounced'),
		       (SELECT count(DISTINCT email) FROM bounce_events WHERE campaign_id = $1 AND contact_id IS NULL),
		       (SELECT count(*) FROM suppressions WHERE campaign_id = $1 AND reason = 'bounced')`, id).
		Scan(&r.BouncedAsync, &r.BouncedSoft, &r.UnmatchedBounces, &r.SuppressionsAdded)
	if err != nil {
		return nil, fmt.Errorf("counting bounces of campaign %d: %w", id, err)
	}
	if n := r.Sent + r.BouncedHard; n > 0 {
		r.BounceRate = float64(r.BouncedHard) / float64(n)
	}

	// Reasons: the bounced deliveries' last replies (hard), and the soft
	// bounces of recipients that did not bounce for good. Grouped by
	// status and text in SQL first, then by normalized text here.
	rows, err := q.Query(ctx, `
		SELECT 'hard', coalesce(last_enhanced, ''), coalesce(last_text, ''), count(*)
		FROM deliveries WHERE campaign_id = $1 AND state = 'bounced'
		GROUP BY 2, 3
		UNION ALL
		SELECT 'soft', e.status, e.diagnostic, count(DISTINCT e.contact_id)
		FROM bounce_events e JOIN deliveries d ON d.campaign_id = e.campaign_id AND d.contact_id = e.contact_id
		WHERE e.campaign_id = $1 AND e.class = 'soft' AND d.state <> 'bounced'
		GROUP BY 2, 3`, id)
	if err != nil {
		return nil, fmt.Errorf("reading bounce reasons of campaign %d: %w", id, err)
	}
	defer rows.Close()
	groups := map[Reason]int{}
	for rows.Next() {
		var class, status, text string
		var n int
		if err := rows.Scan(&class, &status, &text, &n); err != nil {
			return nil, fmt.Errorf("reading bounce reasons of campaign %d: %w", id, err)
		}
		groups[Reason{Class: Class(class), Status: status, Diagnostic: NormalizeReason(text)}] += n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading bounce reasons of campaign %d: %w", id, err)
	}
	for g, n := range groups {
		g.Count = n
		r.TopReasons = append(r.TopReasons, g)
	}
	sort.Slice(r.TopReasons, func(i, j int) bool {
		a, b := r.TopReasons[i], r.TopReasons[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		if a.Class != b.Class {
			return a.Class < b.Class
		}
		if a.Status != b.Status {
			return a.Status < b.Status
		}
		return a.Diagnostic < b.Diagnostic
	})
	if len(r.TopReasons) > MaxReasons {
		r.TopReasons = r.TopReasons[:MaxReasons]
	}
	return r, nil
}
