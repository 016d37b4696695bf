package unsubscribe

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/mail"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
)

// PathPrefix is where the handler serves: GET and POST PathPrefix+token.
// A campaign's unsubscribe base URL is "https://<host>" + PathPrefix
// without the trailing slash, e.g. "https://news.example.test/u".
const PathPrefix = "/u/"

// maxBody bounds a POST body: the RFC 8058 body is 26 bytes.
const maxBody = 4 << 10

// DB is what the handler needs from the database: a *pgxpool.Pool.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Config configures a Handler.
type Config struct {
	// DB holds the contacts, campaigns and suppressions tables. Required.
	DB DB
	// Key is the secret the tokens were made with; at least MinKeyLen
	// bytes. Required.
	Key []byte
	// Logger receives one line per request outcome; never the token.
	// Default: discard.
	Logger *slog.Logger
	// Registerer receives the blaster_unsubscribe_requests_total counter.
	// Default nil: no metrics.
	Registerer prometheus.Registerer
}

// Handler serves the unsubscribe endpoint:
//
//   - POST PathPrefix+token with the form field List-Unsubscribe=One-Click
//     (RFC 8058 §3.2, as application/x-www-form-urlencoded or
//     multipart/form-data) writes the suppression and answers 200. No
//     cookies, no redirect, no confirmation (RFC 8058 §3.2).
//   - GET PathPrefix+token shows a page with a confirm button that makes
//     that same POST. GET never unsubscribes: mail scanners and link
//     previewers follow links (RFC 8058 §1).
//
// The suppression is for the campaign's sender (its lower-cased From
// address) and the contact's lower-cased address, reason 'unsubscribed'. An
// existing suppression (an earlier unsubscribe, a bounce) is kept as it is.
type Handler struct {
	db       DB
	key      []byte
	log      *slog.Logger
	requests *prometheus.CounterVec
	mux      *http.ServeMux
}

// NewHandler checks cfg and returns the handler.
func NewHandler(cfg Config) (*Handler, error) {
	if cfg.DB == nil {
		return nil, errors.New("unsubscribe handler: no database")
	}
	if len(cfg.Key) < MinKeyLen {
		return nil, fmt.Errorf("unsubscribe handler: key is %d bytes, need at least %d", len(cfg.Key), MinKeyLen)
	}
	h := &Handler{
		db:  cfg.DB,
		key: cfg.Key,
		log: cfg.Logger,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "blaster_unsubscribe_requests_total",
			Help: "Unsubscribe endpoint requests by method and result (done, already, page, invalid, bad_request, error).",
		}, []string{"method", "result"}),
		mux: http.NewServeMux(),
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(h.requests); err != nil {
			return nil, fmt.Errorf("registering unsubscribe metrics: %w", err)
		}
	}
	h.mux.HandleFunc("GET "+PathPrefix+"{token}", h.confirmPage)
	h.mux.HandleFunc("POST "+PathPrefix+"{token}", h.unsubscribe)
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'")
	w.Header().Set("Referrer-Policy", "no-referrer") // the token is in the URL
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	h.mux.ServeHTTP(w, r)
}

// target is a verified token's recipient and its sender.
type target struct {
	Recipient
	sender string
}

// lookup finds the token's contact and campaign and verifies the MAC.
// A token for a deleted contact or campaign is invalid like a forged one.
func (h *Handler) lookup(ctx context.Context, token string) (target, error) {
	campaignID, contactID, err := Parse(token)
	if err != nil {
		return target{}, err
	}
	var email, from string
	err = h.db.QueryRow(ctx, `
		SELECT ct.email, cp.from_addr FROM contacts ct, campaigns cp
		WHERE ct.id = $1 AND cp.id = $2`, contactID, campaignID).Scan(&email, &from)
	if errors.Is(err, pgx.ErrNoRows) {
		return target{}, fmt.Errorf("%w: no contact %d or campaign %d", ErrInvalid, contactID, campaignID)
	}
	if err != nil {
		return target{}, fmt.Errorf("looking up contact %d, campaign %d: %w", contactID, campaignID, err)
	}
	rcpt, err := Verify(h.key, token, email)
	if err != nil {
		return target{}, err
	}
	return target{Recipient: rcpt, sender: Sender(from)}, nil
}

// Sender returns the suppression list a From header belongs to: its
// lower-cased address ("News <News@Example.test>" -> "news@example.test").
func Sender(from string) string {
	if a, err := mail.ParseAddress(from); err == nil {
		return strings.ToLower(a.Address)
	}
	return strings.ToLower(strings.TrimSpace(from))
}

func (h *Handler) confirmPage(w http.ResponseWriter, r *http.Request) {
	t, err := h.lookup(r.Context(), r.PathValue("token"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.requests.WithLabelValues(r.Method, "page").Inc()
	h.page(w, http.StatusOK, pageData{Confirm: true, Email: t.Email, Sender: t.sender})
}

func (h *Handler) unsubscribe(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	// PostFormValue parses both form encodings RFC 8058 §3.2 allows.
	if r.PostFormValue("List-Unsubscribe") != "One-Click" {
		h.requests.WithLabelValues(r.Method, "bad_request").Inc()
		h.page(w, http.StatusBadRequest, pageData{Message: "This address only accepts List-Unsubscribe=One-Click."})
		return
	}
	t, err := h.lookup(r.Context(), r.PathValue("token"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	detail := "one-click (RFC 8058)"
	if r.PostFormValue("via") == "page" {
		detail = "confirmation page"
	}
	tag, err := h.db.Exec(r.Context(), `
		INSERT INTO suppressions (sender, email, reason, detail, campaign_id)
		VALUES ($1, lower($2), 'unsubscribed', $3, $4)
		ON CONFLICT (sender, email) DO NOTHING`, t.sender, t.Email, detail, t.CampaignID)
	if err != nil {
		h.fail(w, r, fmt.Errorf("writing suppression for contact %d, campaign %d: %w", t.ContactID, t.CampaignID, err))
		return
	}
	result := "done"
	if tag.RowsAffected() == 0 {
		result = "already"
	}
	h.requests.WithLabelValues(r.Method, result).Inc()
	h.log.Info("unsubscribed", "campaign", t.CampaignID, "contact", t.ContactID, "sender", t.sender, "result", result)
	h.page(w, http.StatusOK, pageData{Done: true, Email: t.Email, Sender: t.sender})
}

// fail answers an invalid token with 404 and anything else with 500,
// keeping the detail in the log.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, ErrInvalid) {
		h.requests.WithLabelValues(r.Method, "invalid").Inc()
		h.log.Warn("unsubscribe: invalid token", "err", err)
		h.page(w, http.StatusNotFound, pageData{Message: "This unsubscribe link is not valid."})
		return
	}
	h.requests.WithLabelValues(r.Method, "error").Inc()
	h.log.Error("unsubscribe failed", "err", err)
	h.page(w, http.StatusInternalServerError, pageData{Message: "Something went wrong; please try again later."})
}

type pageData struct {
	Confirm, Done bool
	Email, Sender string
	Message       string
}

var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Unsubscribe</title>
<style>body{font-family:sans-serif;max-width:32em;margin:4em auto;padding:0 1em}</style></head>
<body>
{{- if .Confirm}}
<h1>Unsubscribe</h1>
<p>Stop mail from {{.Sender}} to {{.Email}}?</p>
<form method="post">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<input type="hidden" name="via" value="page">
<button type="submit">Unsubscribe</button>
</form>
{{- else if .Done}}
<h1>Unsubscribed</h1>
<p>{{.Email}} will get no more mail from {{.Sender}}.</p>
{{- else}}
<h1>Unsubscribe</h1>
<p>{{.Message}}</p>
{{- end}}
</body></html>
`))

func (h *Handler) page(w http.ResponseWriter, status int, d pageData) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := pageTmpl.Execute(w, d); err != nil {
		h.log.Warn("writing unsubscribe page", "err", err)
	}
}
