package bounce

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/contact"
	"github.com/blaster-mail/blaster/returnpath"
)

// DefaultMaxMessageBytes is the largest bounce read whole; larger ones are
// cut there (the report comes before the returned message it may carry).
const DefaultMaxMessageBytes = 10 << 20

// Processor applies bounce messages to the ledger.
type Processor struct {
	// Pool is the database; required.
	Pool campaign.Pool
	// Signer verifies return paths; required.
	Signer *returnpath.Signer
	// Logger; default discards.
	Logger *slog.Logger
}

// Result is what one message did. Hard, Soft and Unmatched count bounce
// events recorded now; Duplicates those recorded before (the same message
// seen again).
type Result struct {
	Hard       int
	Soft       int
	Unmatched  int // recorded, but the address is no recipient of the campaign
	Duplicates int
	// Ignored says why the message was not applied ("" when it was).
	Ignored string
	// Later is true when a hard bounce names a delivery whose outcome a
	// worker is still recording (state sending: the bounce overtook the
	// worker's commit). Nothing was recorded; read the message again later.
	Later bool
}

// Summary sums Results over a source. Its JSON field names are stable.
type Summary struct {
	Messages   int `json:"messages"`
	Hard       int `json:"hard"`
	Soft       int `json:"soft"`
	Unmatched  int `json:"unmatched"`
	Duplicates int `json:"duplicates"`
	Ignored    int `json:"ignored"`
	// Later are messages left to be read again (Result.Later).
	Later int `json:"later"`
}

// Add counts r in s.
func (s *Summary) Add(r Result) {
	s.Messages++
	s.Hard += r.Hard
	s.Soft += r.Soft
	s.Unmatched += r.Unmatched
	s.Duplicates += r.Duplicates
	if r.Ignored != "" {
		s.Ignored++
	}
	if r.Later {
		s.Later++
	}
}

// Merge adds o's counts to s.
func (s *Summary) Merge(o Summary) {
	s.Messages += o.Messages
	s.Hard += o.Hard
	s.Soft += o.Soft
	s.Unmatched += o.Unmatched
	s.Duplicates += o.Duplicates
	s.Ignored += o.Ignored
	s.Later += o.Later
}

func (p *Processor) logger() *slog.Logger {
	if p.Logger == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return p.Logger
}

// event is one bounce event to record.
type event struct {
	campaignID int64
	contactID  *int64
	email      string
	class      Class
	rcpt       Recipient
}

// Process parses raw (one message) and applies it, in one transaction.
// envelope are the addresses it was delivered to when known (the SMTP
// receiver's RCPT TO); nil reads them from the message's headers
// (Report.DeliveredTo). Only signed return paths count, or a signed
// envelope id in the report (Original-Envelope-Id): a message with neither
// is ignored, as is anything that is not a bounce. source names where
// the message came from, for the record and the log. The error is for the
// database; processing again after one is safe.
func (p *Processor) Process(ctx context.Context, raw []byte, envelope []string, source string) (Result, error) {
	log := p.logger().With("source", source)
	rep, err := ParseBytes(raw)
	if err != nil {
		log.Warn("ignored: not a mail message", "err", err)
		return Result{Ignored: "not a mail message"}, nil
	}
	if envelope == nil {
		envelope = rep.DeliveredTo
	}
	var tags []returnpath.Tag
	for _, a := range envelope {
		t, err := p.Signer.Verify(a)
		if err == nil && !containsTag(tags, t) {
			tags = append(tags, t)
		}
	}
	tags = p.withEnvelopeID(tags, rep)
	switch {
	case len(tags) == 0:
		log.Warn("ignored: not sent to a signed return path", "to", envelope, "subject", rep.Subject)
		return Result{Ignored: "no signed return path"}, nil
	case rep.AutoReply:
		log.Info("ignored: automatic reply", "subject", rep.Subject)
		return Result{Ignored: "auto-reply"}, nil
	}
	key := dsnKey(rep, raw)

	tx, err := p.Pool.Begin(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("processing bounce from %s: %w", source, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var res Result
	var events []event
	for _, t := range tags {
		evs, why, err := p.events(ctx, tx, t, rep)
		if err != nil {
			return Result{}, fmt.Errorf("processing bounce from %s: %w", source, err)
		}
		if why != "" {
			log.Info("ignored for campaign", "campaign", t.CampaignID, "contact", t.ContactID, "why", why)
		}
		events = append(events, evs...)
	}
	if len(events) == 0 {
		return Result{Ignored: "not a bounce for a recipient of a campaign"}, nil
	}
	for _, ev := range events {
		added, err := p.record(ctx, tx, key, rep.DeliveryStatus, source, ev)
		if errors.Is(err, errInFlight) {
			log.Info("bounce for a delivery still in flight: later", "campaign", ev.campaignID, "email", ev.email)
			return Result{Later: true}, nil
		}
		if err != nil {
			return Result{}, fmt.Errorf("processing bounce from %s: %w", source, err)
		}
		switch {
		case !added:
			res.Duplicates++
		case ev.contactID == nil:
			res.Unmatched++
		case ev.class == Hard:
			res.Hard++
		default:
			res.Soft++
		}
		if added {
			log.Info("bounce", "campaign", ev.campaignID, "email", ev.email, "class", string(ev.class),
				"status", ev.rcpt.Status, "diagnostic", ev.rcpt.Diagnostic, "matched", ev.contactID != nil)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return Result{}, fmt.Errorf("committing bounce from %s: %w", source, err)
	}
	return res, nil
}

// withEnvelopeID adds what the DSN's Original-Envelope-Id says, when it is
// an envelope id signed with this key (the worker's ENVID,
// returnpath.Signer.EnvelopeID): it names the recipient of a
// one-recipient transaction behind a campaign-level return path, so the
// bounce applies to that recipient even when the report's addresses are a
// forwarding target's; and it stands for the return path when the bounce
// reached another address (a campaign without a return path, whose bounces
// go to its From address). An envelope id for another campaign than the
// return path's is not used: one of them is not this message's.
func (p *Processor) withEnvelopeID(tags []returnpath.Tag, rep *Report) []returnpath.Tag {
	if rep.EnvelopeID == "" {
		return tags
	}
	et, err := p.Signer.VerifyEnvelopeID(rep.EnvelopeID)
	if err != nil {
		return tags
	}
	if len(tags) == 0 {
		return []returnpath.Tag{et}
	}
	out := make([]returnpath.Tag, 0, len(tags))
	for _, t := range tags {
		if t.CampaignID == et.CampaignID && t.ContactID == 0 {
			t.ContactID = et.ContactID
		}
		if !containsTag(out, t) {
			out = append(out, t)
		}
	}
	return out
}

func containsTag(tags []returnpath.Tag, t returnpath.Tag) bool {
	for _, x := range tags {
		if x == t {
			return true
		}
	}
	return false
}

// dsnKey identifies a bounce message across reads: its Message-ID, else a
// hash of its bytes.
func dsnKey(rep *Report, raw []byte) string {
	if id := clean(rep.MessageID); id != "" {
		if len(id) <= maxKeyID {
			return "mid:" + id
		}
		sum := sha256.Sum256([]byte(id)) // a key that fits a btree entry
		return "mid-sha256:" + hex.EncodeToString(sum[:])
	}
	sum := sha256.Sum256(raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// maxKeyID is the longest Message-ID used in a key as it is.
const maxKeyID = 200

// maxAddress is the longest address taken from a report (RFC 5321
// §4.5.3.1.3: a path is at most 256 octets); longer ones are no addresses.
const maxAddress = 256

// clean makes text from a message storable: valid UTF-8 without NUL
// bytes, which PostgreSQL's text refuses.
func clean(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "")
}

// events turns the report into events for the campaign (and recipient) of
// tag. why says why there are none.
func (p *Processor) events(ctx context.Context, q campaign.Querier, t returnpath.Tag, rep *Report) ([]event, string, error) {
	var exists bool
	if err := q.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM campaigns WHERE id = $1)", t.CampaignID).Scan(&exists); err != nil {
		return nil, "", fmt.Errorf("reading campaign %d: %w", t.CampaignID, err)
	}
	if !exists {
		return nil, "no such campaign", nil
	}
	var bounces []Recipient
	for _, r := range rep.Recipients {
		if r.Class() != None {
			bounces = append(bounces, r)
		}
	}
	if len(bounces) == 0 && len(rep.Recipients) > 0 {
		return nil, "a success notification", nil
	}

	if t.ContactID != 0 {
		// A per-recipient return path names the recipient: the report's
		// addresses may be a forwarding target's.
		var email string
		err := q.QueryRow(ctx, "SELECT email FROM deliveries WHERE campaign_id = $1 AND contact_id = $2",
			t.CampaignID, t.ContactID).Scan(&email)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, "no delivery for this contact", nil
		}
		if err != nil {
			return nil, "", fmt.Errorf("reading delivery of campaign %d contact %d: %w", t.CampaignID, t.ContactID, err)
		}
		email = strings.ToLower(email)
		r := worst(bounces, email)
		if r == nil {
			// A bounce without a readable status: counted, never
			// suppressed on a guess.
			r = &Recipient{Action: "failed", Diagnostic: truncate("no delivery status in the bounce: "+rep.Subject, 200)}
		}
		id := t.ContactID
		return []event{{campaignID: t.CampaignID, contactID: &id, email: email, class: soft(r.Class()), rcpt: *r}}, "", nil
	}

	// A campaign-level return path: the report names the recipients.
	var evs []event
	at := map[string]int{} // evs' index by address: one event each, hard before soft
	for i := range bounces {
		r := &bounces[i]
		if r.Address() == "" || len(r.Address()) > maxAddress {
			continue
		}
		ev := event{campaignID: t.CampaignID, email: r.Address(), class: soft(r.Class()), rcpt: *r}
		for _, a := range []string{r.OriginalRecipient, r.FinalRecipient} {
			if a == "" {
				continue
			}
			var id int64
			var email string
			err := q.QueryRow(ctx, `
				SELECT d.contact_id, d.email FROM contacts c
				JOIN deliveries d ON d.contact_id = c.id AND d.campaign_id = $1
				WHERE lower(c.email) COLLATE "C" = $2`, t.CampaignID, a).Scan(&id, &email)
			if errors.Is(err, pgx.ErrNoRows) {
				continue
			}
			if err != nil {
				return nil, "", fmt.Errorf("looking up %s in campaign %d: %w", a, t.CampaignID, err)
			}
			ev.contactID, ev.email = &id, strings.ToLower(email)
			break
		}
		// Two blocks may name one recipient (as reported, or as the
		// original recipient of a forwarding target): the worst counts.
		if j, ok := at[ev.email]; ok {
			if ev.class == Hard && evs[j].class != Hard {
				evs[j] = ev
			}
			continue
		}
		at[ev.email] = len(evs)
		evs = append(evs, ev)
	}
	if len(evs) == 0 {
		return nil, "the bounce names no recipient", nil
	}
	return evs, "", nil
}

// soft maps None (not reached for bounces) to Soft.
func soft(c Class) Class {
	if c == Hard {
		return Hard
	}
	return Soft
}

// worst picks the recipient block about email (any block when none is),
// hard before soft.
func worst(rs []Recipient, email string) *Recipient {
	var best *Recipient
	pick := func(match bool) {
		for i := range rs {
			r := &rs[i]
			if match && r.FinalRecipient != email && r.OriginalRecipient != email {
				continue
			}
			if best == nil || (r.Class() == Hard && best.Class() != Hard) {
				best = r
			}
		}
	}
	pick(true)
	if best == nil {
		pick(false)
	}
	return best
}

// errInFlight is record's answer for a delivery still being sent.
var errInFlight = errors.New("delivery still in flight")

// record inserts ev unless this message already reported it, and applies a
// new hard bounce: the delivery becomes bounced (even if it was sent: the
// relay took it and it bounced later) with the status and diagnostic kept,
// and the address is suppressed for every sender. A delivery already
// bounced, expired or cancelled keeps its state. A delivery still sending
// gives errInFlight: the worker's record would overwrite the bounce.
func (p *Processor) record(ctx context.Context, tx pgx.Tx, key string, standard bool, source string, ev event) (bool, error) {
	r := ev.rcpt
	r.Action, r.Status, r.Diagnostic = clean(r.Action), clean(r.Status), clean(r.Diagnostic)
	ev.email, source = clean(ev.email), clean(source)
	var code *int
	if r.Code != 0 {
		code = &r.Code
	}
	var id int64
	err := tx.QueryRow(ctx, `
		INSERT INTO bounce_events (dsn_key, campaign_id, contact_id, email, class, action, status, smtp_code,
		                           diagnostic, reason, standard, source)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
		ON CONFLICT (dsn_key, campaign_id, email) DO NOTHING
		RETURNING id`,
		key, ev.campaignID, ev.contactID, ev.email, string(ev.class), r.Action, r.Status, code,
		r.Diagnostic, NormalizeReason(r.Diagnostic), standard, source).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("recording bounce of %s: %w", ev.email, err)
	}
	if ev.class != Hard || ev.contactID == nil {
		return true, nil
	}
	text := r.Diagnostic
	if text == "" {
		text = "bounced: Action: " + r.Action + ", Status: " + r.Status
	}
	var enhanced *string
	if r.Status != "" {
		enhanced = &r.Status
	}
	var state string
	if err := tx.QueryRow(ctx, `SELECT state FROM deliveries WHERE campaign_id = $1 AND contact_id = $2 FOR UPDATE`,
		ev.campaignID, *ev.contactID).Scan(&state); err != nil {
		return false, fmt.Errorf("reading delivery of %s: %w", ev.email, err)
	}
	switch state {
	case campaign.StateSending:
		// The worker will write its outcome over ours.
		return false, errInFlight
	case campaign.StateSent, campaign.StateUnknown, campaign.StateDeferred, campaign.StateQueued:
		// Accepted and bounced later; or about to be tried again, which a
		// dead address spares (the batch's job closes the batch).
		if _, err := tx.Exec(ctx, `
			UPDATE deliveries SET state = 'bounced', last_code = $3, last_enhanced = $4, last_text = $5,
			       next_attempt_at = NULL, updated_at = now()
			WHERE campaign_id = $1 AND contact_id = $2`,
			ev.campaignID, *ev.contactID, code, enhanced, text); err != nil {
			return false, fmt.Errorf("marking %s bounced: %w", ev.email, err)
		}
	}
	detail := strings.TrimSpace(r.Status + " " + text)
	if err := contact.Suppress(ctx, tx, "", ev.email, contact.ReasonBounced, truncate(detail, 500), ev.campaignID); err != nil {
		return false, err
	}
	return true, nil
}

var (
	addrRe    = regexp.MustCompile(`[^\s<>()\[\]"';,:]+@[^\s<>()\[\]"';,:]+`)
	replyPfx  = regexp.MustCompile(`\b[245][0-9][0-9][ -]([245]\.[0-9]{1,3}\.[0-9]{1,3}\b)?`)
	digitWord = regexp.MustCompile(`\S*[0-9]\S*`)
	hashes    = regexp.MustCompile(`#(\s+#)+`)
)

// maxReason is the longest normalized reason, in bytes.
const maxReason = 120

// NormalizeReason reduces a diagnostic to what bounces of one cause share,
// for grouping: lower case, addresses as "addr", a leading reply code
// dropped (the status is grouped on by itself), words with digits (status
// codes, queue ids, IPs, counts) as "#", spaces collapsed, at most 120 bytes.
func NormalizeReason(diag string) string {
	s := strings.ToLower(diag)
	s = addrRe.ReplaceAllString(s, "addr")
	s = replyPfx.ReplaceAllString(s, " ")
	s = digitWord.ReplaceAllString(s, "#")
	s = strings.TrimSpace(hashes.ReplaceAllString(collapseSpace(s), "#"))
	if len(s) > maxReason {
		s = truncate(s, maxReason)
		if i := strings.LastIndexByte(s, ' '); i > 0 {
			s = s[:i] // a whole word, not a piece of one
		}
	}
	return s
}
