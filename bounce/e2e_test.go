package bounce_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/smtp"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/blaster-mail/blaster/bounce"
	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/returnpath"
	"github.com/blaster-mail/blaster/transport"
	"github.com/blaster-mail/blaster/worker"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

const base = "bounces@bounce.example.test"

// envelopes is a go-smtp backend that keeps every transaction's envelope.
type envelopes struct {
	mu  sync.Mutex
	txs []transaction
}

type transaction struct {
	from  string
	rcpts []string
}

func (e *envelopes) NewSession(*gosmtp.Conn) (gosmtp.Session, error) { return &envSession{e: e}, nil }

func (e *envelopes) all() []transaction {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]transaction(nil), e.txs...)
}

type envSession struct {
	e  *envelopes
	tx transaction
}

func (s *envSession) Mail(from string, _ *gosmtp.MailOptions) error { s.tx.from = from; return nil }
func (s *envSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	s.tx.rcpts = append(s.tx.rcpts, to)
	return nil
}
func (s *envSession) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	s.e.mu.Lock()
	s.e.txs = append(s.e.txs, s.tx)
	s.e.mu.Unlock()
	return nil
}
func (s *envSession) Reset()        { s.tx = transaction{} }
func (s *envSession) Logout() error { return nil }

// seed inserts n contacts user00..@alpha/beta.example.test into list news
// and returns their ids by address.
func seed(t testing.TB, pool *pgxpool.Pool, n int) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	rows := make([][]any, n)
	for i := range n {
		rows[i] = []any{fmt.Sprintf("user%02d@%s.example.test", i, []string{"alpha", "beta"}[i%2]), fmt.Sprintf("User %d", i)}
	}
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{"contacts"}, []string{"email", "name"}, pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `
		WITH l AS (INSERT INTO lists (name) VALUES ('news') RETURNING id)
		INSERT INTO list_members (list_id, contact_id) SELECT l.id, c.id FROM l, contacts c`); err != nil {
		t.Fatal(err)
	}
	r, err := pool.Query(ctx, "SELECT email, id FROM contacts")
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int64{}
	for r.Next() {
		var e string
		var id int64
		if err := r.Scan(&e, &id); err != nil {
			t.Fatal(err)
		}
		ids[e] = id
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

func newCampaign(t testing.TB, pool *pgxpool.Pool, personalized, perRecipient bool) int64 {
	t.Helper()
	n := campaign.New{Name: fmt.Sprintf("personalized=%v", personalized), List: "news", From: "News <news@sender.example.test>",
		Subject: "Weekly news", Text: "Hello all\n",
		Settings: campaign.Settings{ReturnPath: &campaign.ReturnPath{Address: base, PerRecipient: perRecipient}},
		Secrets:  campaign.Secrets{BounceKey: testKey}}
	if personalized {
		n.Text = "Hello {{.Name}}\n"
	}
	return createAndStart(t, pool, n)
}

// createAndStart creates the campaign n and starts it.
func createAndStart(t testing.TB, pool *pgxpool.Pool, n campaign.New) int64 {
	t.Helper()
	c, err := campaign.Create(context.Background(), pool, n)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := worker.InsertClient(pool)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := campaign.Start(context.Background(), pool, rc, c.ID); err != nil {
		t.Fatal(err)
	}
	return c.ID
}

// startWorker runs a worker with the bounce key, delivering to the
// plaintext SMTP server at addr; stop it with Stop.
func startWorker(t testing.TB, pool *pgxpool.Pool, addr string) *worker.Worker {
	t.Helper()
	rcfg, err := transport.ParseRelayURL("smtp://" + addr + "?tls=none")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := transport.NewRelay([]transport.RelayConfig{rcfg}, transport.RelayOptions{LocalName: "worker.blaster.test"})
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Pool: pool, Transport: tr, FetchInterval: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Secrets: campaign.Secrets{BounceKey: testKey}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return w
}

func waitDone(t *testing.T, pool *pgxpool.Pool, ids ...int64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for _, id := range ids {
		for {
			s, err := campaign.GetStatus(context.Background(), pool, id)
			if err != nil {
				t.Fatal(err)
			}
			if s.State == campaign.Done {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("campaign %d not done by the deadline: %+v", id, s)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// dsn is a testdata sample rewritten for one recipient: sent to returnPath,
// about rcpt, with its own Message-ID.
func dsn(t testing.TB, file, returnPath, rcpt, messageID string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(string(b), "bounces+1-2-aaaaaaaaaaaaaaaa@bounce.example.test", returnPath)
	for _, sample := range []string{"nobody@alpha.example.test", "full@alpha.example.test"} {
		s = strings.ReplaceAll(s, sample, rcpt)
	}
	for _, id := range []string{"20261201101204.4F2B81C0A3@relay.sender.example.test", "E1tHk2Z-000Abc-0R@relay.sender.example.test",
		"6752f0a1.050a0220.2b3c4d.0000.GMR@mx.google.example.test", "20261201141204.9A0B11C0B5@relay.sender.example.test",
		"9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f@EX02.corp.example.test"} {
		s = strings.ReplaceAll(s, id, messageID)
	}
	return []byte(s)
}

// TestEndToEnd: two campaigns with signed return paths go out through the
// worker; the server sees per-recipient return paths on the personalized
// one and one campaign-level return path per batch on the other. Bounces
// for some recipients come back through a Maildir, an mbox and the SMTP
// receiver; the ledger, the suppression list and the reports show exactly
// them, and feeding everything again changes nothing.
func TestEndToEnd(t *testing.T) {
	pool := dbtest.Pool(t)
	ctx := context.Background()
	ids := seed(t, pool, 20)
	signer, err := returnpath.NewSigner(testKey)
	if err != nil {
		t.Fatal(err)
	}

	// Deliver both campaigns.
	env := &envelopes{}
	srv := gosmtp.NewServer(env)
	srv.Domain = "relay.example.test"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	w := startWorker(t, pool, ln.Addr().String())
	pers := newCampaign(t, pool, true, false)
	shared := newCampaign(t, pool, false, false)
	// Same for all, but asking for a return path per recipient.
	sharedVERP := newCampaign(t, pool, false, true)
	waitDone(t, pool, pers, shared, sharedVERP)
	stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := w.Stop(stopCtx); err != nil {
		t.Fatal(err)
	}

	// The envelopes the server saw.
	perTx, sharedTx, sharedRcpts, verpTx := 0, 0, 0, 0
	for _, tx := range env.all() {
		tag, err := signer.Verify(tx.from)
		if err != nil {
			t.Fatalf("MAIL FROM %q is not a signed return path: %v", tx.from, err)
		}
		if !strings.HasPrefix(tx.from, "bounces+") || !strings.HasSuffix(tx.from, "@bounce.example.test") {
			t.Fatalf("MAIL FROM %q is not under %s", tx.from, base)
		}
		switch tag.CampaignID {
		case pers, sharedVERP:
			if tag.CampaignID == pers {
				perTx++
			} else {
				verpTx++
			}
			if len(tx.rcpts) != 1 || tag.ContactID != ids[tx.rcpts[0]] {
				t.Fatalf("personalized transaction from %q to %q: want one recipient, the one the return path names (contact %d)",
					tx.from, tx.rcpts, tag.ContactID)
			}
		case shared:
			sharedTx++
			sharedRcpts += len(tx.rcpts)
			if tag.ContactID != 0 {
				t.Fatalf("same-for-all transaction from %q names contact %d, want the campaign's return path", tx.from, tag.ContactID)
			}
		default:
			t.Fatalf("MAIL FROM %q names campaign %d", tx.from, tag.CampaignID)
		}
	}
	if perTx != 20 || sharedTx != 2 || sharedRcpts != 20 || verpTx != 20 {
		t.Fatalf("server saw %d personalized transactions, %d same-for-all ones with %d recipients, %d per-recipient same-for-all ones; "+
			"want 20, 2 (one per domain), 20, 20", perTx, sharedTx, sharedRcpts, verpTx)
	}

	vp := func(email string) string { // the personalized campaign's return path of a recipient
		a, err := signer.Address(base, pers, ids[email])
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	campaignRP, _ := signer.Address(base, shared, 0)

	// Bounces. Maildir: two hard (Postfix, Exim), one soft (delayed).
	maildir := t.TempDir()
	for _, d := range []string{"new", "cur", "tmp"} {
		os.Mkdir(filepath.Join(maildir, d), 0o755)
	}
	writeMaildir := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(maildir, "new", name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeMaildir("1.a.host", dsn(t, "postfix.eml", vp("user00@alpha.example.test"), "user00@alpha.example.test", "m1@relay.example.test"))
	writeMaildir("2.a.host", dsn(t, "exim.eml", vp("user01@beta.example.test"), "user01@beta.example.test", "m2@relay.example.test"))
	writeMaildir("3.a.host", dsn(t, "postfix-delayed.eml", vp("user02@alpha.example.test"), "user02@alpha.example.test", "m3@relay.example.test"))
	// Not to a signed return path: ignored.
	writeMaildir("4.a.host", dsn(t, "postfix.eml", "bounces+1-2-aaaaaaaaaaaaaaaa@bounce.example.test", "user08@alpha.example.test", "m4@relay.example.test"))

	// mbox: Gmail style hard, qmail's text-only hard, a campaign-level
	// return path naming a recipient and a stranger in one report, and a
	// success notification.
	var mbox strings.Builder
	addMbox := func(b []byte) {
		mbox.WriteString("From MAILER-DAEMON Tue Dec  1 10:12:04 2026\n")
		for _, line := range strings.SplitAfter(string(b), "\n") {
			if strings.HasPrefix(strings.TrimLeft(line, ">"), "From ") {
				line = ">" + line
			}
			mbox.WriteString(line)
		}
		mbox.WriteString("\n")
	}
	addMbox(dsn(t, "gmail.eml", vp("user03@beta.example.test"), "user03@beta.example.test", "m5@relay.example.test"))
	addMbox(dsn(t, "qmail.eml", vp("user05@beta.example.test"), "user05@beta.example.test", "unused"))
	multi, err := os.ReadFile(filepath.Join("testdata", "multi.eml"))
	if err != nil {
		t.Fatal(err)
	}
	// A Postfix report for the campaign-level return path naming a
	// recipient of the campaign and a stranger.
	shareDSN := string(dsn(t, "postfix.eml", campaignRP, "user04@alpha.example.test", "m6@relay.example.test"))
	shareDSN = strings.Replace(shareDSN, "\n--3A9E01C0A1.1764583924/relay.sender.example.test\nContent-Description: Undelivered Message Headers",
		"\nFinal-Recipient: rfc822; stranger@gamma.example.test\nAction: failed\nStatus: 5.1.1\n\n--3A9E01C0A1.1764583924/relay.sender.example.test\nContent-Description: Undelivered Message Headers", 1)
	addMbox([]byte(shareDSN))
	addMbox([]byte(strings.ReplaceAll(string(multi), "bounces+1-aaaaaaaaaaaaaaaa@bounce.example.test", campaignRP)))
	addMbox(dsn(t, "success.eml", vp("user07@beta.example.test"), "user07@beta.example.test", "m7@relay.example.test"))
	mboxFile := filepath.Join(t.TempDir(), "bounces.mbox")
	if err := os.WriteFile(mboxFile, []byte(mbox.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	p := &bounce.Processor{Pool: pool, Signer: signer}
	feed := func() (bounce.Summary, bounce.Summary, bounce.Summary) {
		md, err := p.ProcessMaildir(ctx, maildir)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(mboxFile)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		mb, err := p.ProcessMbox(ctx, f, mboxFile)
		if err != nil {
			t.Fatal(err)
		}
		// The SMTP receiver: Exchange style hard bounce for user06.
		bs, err := bounce.NewServer(bounce.ServerConfig{Processor: p, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := bs.Listen("127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		msg := dsn(t, "exchange.eml", vp("user06@alpha.example.test"), "user06@alpha.example.test", "m8@relay.example.test")
		if err := smtp.SendMail(bs.Addr(), nil, "", []string{vp("user06@alpha.example.test")}, msg); err != nil {
			t.Fatalf("sending a DSN to the receiver: %v", err)
		}
		// A forged return path (the MAC of another recipient) is refused.
		forged := strings.Replace(vp("user09@beta.example.test"), fmt.Sprintf("-%d-", ids["user09@beta.example.test"]),
			fmt.Sprintf("-%d-", ids["user10@alpha.example.test"]), 1)
		err = smtp.SendMail(bs.Addr(), nil, "", []string{forged}, dsn(t, "postfix.eml", forged, "user10@alpha.example.test", "m9@x"))
		if err == nil || !strings.Contains(err.Error(), "550") {
			t.Fatalf("forged return path %s: %v, want 550", forged, err)
		}
		closeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := bs.Close(closeCtx); err != nil {
			t.Fatal(err)
		}
		return md, mb, bs.Summary()
	}

	md, mb, sm := feed()
	if want := (bounce.Summary{Messages: 4, Hard: 2, Soft: 1, Ignored: 1}); md != want {
		t.Errorf("Maildir summary %+v, want %+v", md, want)
	}
	// multi.eml: gone@ and later@ are no recipients of the campaign
	// (unmatched); ok@ was delivered (not a bounce).
	if want := (bounce.Summary{Messages: 5, Hard: 3, Unmatched: 3, Ignored: 1}); mb != want {
		t.Errorf("mbox summary %+v, want %+v", mb, want)
	}
	if want := (bounce.Summary{Messages: 1, Hard: 1}); sm != want {
		t.Errorf("SMTP receiver summary %+v, want %+v", sm, want)
	}

	// The ledger.
	wantBounced := map[int64][]string{
		pers:   {"user00@alpha.example.test", "user01@beta.example.test", "user03@beta.example.test", "user05@beta.example.test", "user06@alpha.example.test"},
		shared: {"user04@alpha.example.test"},
	}
	for id, want := range wantBounced {
		var got []string
		rows, _ := pool.Query(ctx, "SELECT email FROM deliveries WHERE campaign_id = $1 AND state = 'bounced' ORDER BY email", id)
		for rows.Next() {
			var e string
			rows.Scan(&e)
			got = append(got, e)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("campaign %d bounced %q, want %q", id, got, want)
		}
	}
	var code int
	var enhanced, text string
	if err := pool.QueryRow(ctx, `SELECT last_code, last_enhanced, last_text FROM deliveries WHERE campaign_id = $1 AND contact_id = $2`,
		pers, ids["user00@alpha.example.test"]).Scan(&code, &enhanced, &text); err != nil {
		t.Fatal(err)
	}
	if code != 550 || enhanced != "5.1.1" || text != "550 5.1.1 <user00@alpha.example.test>: Recipient address rejected: User unknown in virtual mailbox table" {
		t.Errorf("user00's last reply: %d %s %q", code, enhanced, text)
	}
	var supp []string
	rows, _ := pool.Query(ctx, "SELECT email || ' ' || sender || ' ' || reason || ' ' || campaign_id FROM suppressions ORDER BY email")
	for rows.Next() {
		var s string
		rows.Scan(&s)
		supp = append(supp, s)
	}
	wantSupp := []string{
		fmt.Sprintf("user00@alpha.example.test  bounced %d", pers), fmt.Sprintf("user01@beta.example.test  bounced %d", pers),
		fmt.Sprintf("user03@beta.example.test  bounced %d", pers), fmt.Sprintf("user04@alpha.example.test  bounced %d", shared),
		fmt.Sprintf("user05@beta.example.test  bounced %d", pers), fmt.Sprintf("user06@alpha.example.test  bounced %d", pers),
	}
	if !reflect.DeepEqual(supp, wantSupp) {
		t.Errorf("suppressions\n got %q\nwant %q", supp, wantSupp)
	}

	// The reports.
	rp, err := bounce.GetReport(ctx, pool, pers)
	if err != nil {
		t.Fatal(err)
	}
	if rp.Total != 20 || rp.Sent != 15 || rp.BouncedHard != 5 || rp.BouncedAsync != 5 || rp.BouncedSoft != 1 ||
		rp.BounceRate != 0.25 || rp.SuppressionsAdded != 5 || rp.UnmatchedBounces != 0 {
		t.Errorf("personalized report %+v", rp)
	}
	wantReasons := []bounce.Reason{
		{Class: bounce.Hard, Status: "5.1.1", Diagnostic: "<addr>: recipient address rejected: user unknown in local recipient table", Count: 1},
		{Class: bounce.Hard, Status: "5.1.1", Diagnostic: "<addr>: recipient address rejected: user unknown in virtual mailbox table", Count: 1},
		{Class: bounce.Hard, Status: "5.1.1", Diagnostic: "sorry, no mailbox here by that name. #", Count: 1},
		{Class: bounce.Hard, Status: "5.1.1", Diagnostic: "the email account that you tried to reach does not exist. please try double-checking the recipient's email address for", Count: 1},
		{Class: bounce.Hard, Status: "5.1.10", Diagnostic: "resolver.adr.recipientnotfound; recipient not found by smtp address lookup", Count: 1},
		{Class: bounce.Soft, Status: "4.2.2", Diagnostic: "<addr>: mailbox full", Count: 1},
	}
	if !reflect.DeepEqual(rp.TopReasons, wantReasons) {
		t.Errorf("top reasons\n got %+v\nwant %+v", rp.TopReasons, wantReasons)
	}
	rs, err := bounce.GetReport(ctx, pool, shared)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Sent != 19 || rs.BouncedHard != 1 || rs.BouncedAsync != 1 || rs.BouncedSoft != 0 || rs.BounceRate != 0.05 ||
		rs.SuppressionsAdded != 1 || rs.UnmatchedBounces != 3 {
		t.Errorf("same-for-all report %+v", rs)
	}

	// Everything again, plus a second copy of a DSN already read delivered
	// into the Maildir: nothing changes.
	writeMaildir("5.b.host", dsn(t, "postfix.eml", vp("user00@alpha.example.test"), "user00@alpha.example.test", "m1@relay.example.test"))
	md, mb, sm = feed()
	if want := (bounce.Summary{Messages: 1, Duplicates: 1}); md != want {
		t.Errorf("second Maildir run %+v, want %+v (only the new copy, a duplicate)", md, want)
	}
	if want := (bounce.Summary{Messages: 5, Duplicates: 6, Ignored: 1}); mb != want {
		t.Errorf("second mbox run %+v, want %+v", mb, want)
	}
	if want := (bounce.Summary{Messages: 1, Duplicates: 1}); sm != want {
		t.Errorf("second SMTP run %+v, want %+v", sm, want)
	}
	rp2, _ := bounce.GetReport(ctx, pool, pers)
	rs2, _ := bounce.GetReport(ctx, pool, shared)
	if !reflect.DeepEqual(rp, rp2) || !reflect.DeepEqual(rs, rs2) {
		t.Errorf("reports changed on the second run:\n%+v\n%+v\n%+v\n%+v", rp, rp2, rs, rs2)
	}
	var events, suppressions int
	pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM bounce_events), (SELECT count(*) FROM suppressions)").Scan(&events, &suppressions)
	if events != 10 || suppressions != 6 {
		t.Errorf("after the second run: %d bounce events, %d suppressions; want 10, 6", events, suppressions)
	}
}
