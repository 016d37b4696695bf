package unsubscribe

import (
	"bytes"
	"context"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/blaster-mail/blaster/internal/dbtest"
)

type fixture struct {
	pool       *pgxpool.Pool
	srv        *httptest.Server
	reg        *prometheus.Registry
	campaignID int64
	contactID  int64
	otherID    int64
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{pool: dbtest.Pool(t), reg: prometheus.NewRegistry()}
	err := f.pool.QueryRow(ctx, `INSERT INTO contacts (email) VALUES ('Ann@Example.test') RETURNING id`).Scan(&f.contactID)
	if err != nil {
		t.Fatal(err)
	}
	err = f.pool.QueryRow(ctx, `INSERT INTO contacts (email) VALUES ('bob@example.test') RETURNING id`).Scan(&f.otherID)
	if err != nil {
		t.Fatal(err)
	}
	err = f.pool.QueryRow(ctx, `
		INSERT INTO campaigns (name, from_addr, subject, personalized)
		VALUES ('n', 'News <News@Example.test>', 's', true) RETURNING id`).Scan(&f.campaignID)
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHandler(Config{DB: f.pool, Key: testKey, Registerer: f.reg})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(h)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) url(contactID int64, email string) string {
	return f.srv.URL + PathPrefix + Token(testKey, Recipient{CampaignID: f.campaignID, ContactID: contactID, Email: email})
}

// suppressions returns "sender email reason campaign" rows.
func (f *fixture) suppressions(t *testing.T) []string {
	t.Helper()
	rows, err := f.pool.Query(context.Background(), `SELECT sender || ' ' || email || ' ' || reason || ' ' || campaign_id FROM suppressions ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		var s string
		rows.Scan(&s)
		out = append(out, s)
	}
	return out
}

func postForm(t *testing.T, u string, form url.Values) (int, string) {
	t.Helper()
	resp, err := http.PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestOneClickPostSuppresses(t *testing.T) {
	f := newFixture(t)
	u := f.url(f.contactID, "ann@example.test")
	code, body := postForm(t, u, url.Values{"List-Unsubscribe": {"One-Click"}})
	if code != http.StatusOK {
		t.Fatalf("POST = %d %s", code, body)
	}
	want := "news@example.test ann@example.test unsubscribed " + itoa(f.campaignID)
	if got := f.suppressions(t); len(got) != 1 || got[0] != want {
		t.Fatalf("suppressions = %q, want [%q]", got, want)
	}
	// Again: idempotent, still one row.
	if code, _ := postForm(t, u, url.Values{"List-Unsubscribe": {"One-Click"}}); code != http.StatusOK {
		t.Fatalf("second POST = %d", code)
	}
	if got := f.suppressions(t); len(got) != 1 {
		t.Fatalf("suppressions after second POST = %q", got)
	}
	if n := counter(t, f, "POST", "done"); n != 1 {
		t.Errorf("done counter = %v", n)
	}
	if n := counter(t, f, "POST", "already"); n != 1 {
		t.Errorf("already counter = %v", n)
	}
}

func TestOneClickMultipart(t *testing.T) {
	f := newFixture(t)
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("List-Unsubscribe", "One-Click")
	mw.Close()
	resp, err := http.Post(f.url(f.contactID, "ann@example.test"), mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(f.suppressions(t)) != 1 {
		t.Fatalf("multipart POST = %d, suppressions %q", resp.StatusCode, f.suppressions(t))
	}
}

func TestGetDoesNotUnsubscribe(t *testing.T) {
	f := newFixture(t)
	resp, err := http.Get(f.url(f.contactID, "ann@example.test"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `name="List-Unsubscribe" value="One-Click"`) {
		t.Fatalf("GET = %d %s", resp.StatusCode, b)
	}
	if got := f.suppressions(t); len(got) != 0 {
		t.Fatalf("GET wrote suppressions %q", got)
	}
	// The page's button posts the form to the same URL.
	code, _ := postForm(t, f.url(f.contactID, "ann@example.test"), url.Values{"List-Unsubscribe": {"One-Click"}, "via": {"page"}})
	if code != http.StatusOK || len(f.suppressions(t)) != 1 {
		t.Fatalf("confirm POST = %d, suppressions %q", code, f.suppressions(t))
	}
}

func TestRejectsForgedAndMalformed(t *testing.T) {
	f := newFixture(t)
	annTok := Token(testKey, Recipient{CampaignID: f.campaignID, ContactID: f.contactID, Email: "ann@example.test"})
	mac := annTok[strings.LastIndexByte(annTok, '.')+1:]
	forged := f.srv.URL + PathPrefix + "1." + itoa(f.campaignID) + "." + itoa(f.otherID) + "." + mac
	for _, tc := range []struct {
		name string
		url  string
		form url.Values
		want int
	}{
		{"Ann's MAC on Bob's id", forged, url.Values{"List-Unsubscribe": {"One-Click"}}, http.StatusNotFound},
		{"token made for another address", f.url(f.otherID, "ann@example.test"), url.Values{"List-Unsubscribe": {"One-Click"}}, http.StatusNotFound},
		{"no such contact", f.url(999999, "x@example.test"), url.Values{"List-Unsubscribe": {"One-Click"}}, http.StatusNotFound},
		{"garbage", f.srv.URL + PathPrefix + "garbage", url.Values{"List-Unsubscribe": {"One-Click"}}, http.StatusNotFound},
		{"missing body", f.url(f.contactID, "ann@example.test"), url.Values{}, http.StatusBadRequest},
		{"wrong value", f.url(f.contactID, "ann@example.test"), url.Values{"List-Unsubscribe": {"one-click"}}, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, body := postForm(t, tc.url, tc.form); code != tc.want {
				t.Errorf("POST = %d %s, want %d", code, body, tc.want)
			}
		})
	}
	if got := f.suppressions(t); len(got) != 0 {
		t.Fatalf("rejected requests wrote suppressions %q", got)
	}
}

func TestKeepsExistingSuppression(t *testing.T) {
	f := newFixture(t)
	_, err := f.pool.Exec(context.Background(), `INSERT INTO suppressions (sender, email, reason) VALUES ('news@example.test', 'ann@example.test', 'complained')`)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := postForm(t, f.url(f.contactID, "ann@example.test"), url.Values{"List-Unsubscribe": {"One-Click"}}); code != http.StatusOK {
		t.Fatalf("POST = %d", code)
	}
	var reason string
	f.pool.QueryRow(context.Background(), `SELECT reason FROM suppressions`).Scan(&reason)
	if reason != "complained" {
		t.Fatalf("reason = %q, want the earlier complained kept", reason)
	}
}

// counter returns blaster_unsubscribe_requests_total{method, result}.
func counter(t *testing.T, f *fixture, method, result string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "blaster_unsubscribe_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["method"] == method && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
