package bounce_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/blaster-mail/blaster/bounce"
	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/internal/smtptest"
	"github.com/blaster-mail/blaster/returnpath"
)

// hardDSN is a minimal RFC 3464 report sent to to, about finalRcpt, with
// an Original-Envelope-Id when envID is not "".
func hardDSN(to, messageID, envID, origRcpt, finalRcpt string) []byte {
	perMessage := "Reporting-MTA: dns; mx.elsewhere.example.test\r\n"
	if envID != "" {
		perMessage += "Original-Envelope-Id: " + envID + "\r\n"
	}
	perRcpt := ""
	if origRcpt != "" {
		perRcpt = "Original-Recipient: rfc822;" + origRcpt + "\r\n"
	}
	return []byte("From: MAILER-DAEMON@mx.elsewhere.example.test\r\n" +
		"To: " + to + "\r\nDelivered-To: " + to + "\r\n" +
		"Subject: Undelivered Mail Returned to Sender\r\nMessage-Id: <" + messageID + ">\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n" +
		"--b\r\nContent-Type: text/plain\r\n\r\nUndeliverable.\r\n" +
		"--b\r\nContent-Type: message/delivery-status\r\n\r\n" + perMessage + "\r\n" + perRcpt +
		"Final-Recipient: rfc822; " + finalRcpt + "\r\nAction: failed\r\nStatus: 5.1.1\r\n" +
		"Diagnostic-Code: smtp; 550 5.1.1 mailbox unknown\r\n\r\n--b--\r\n")
}

// TestDSNEnvelopeID: a same-for-all campaign with a campaign-level return
// path and DSN settings goes out through the worker; the server sees RET,
// NOTIFY, ORCPT per recipient and a signed ENVID naming the campaign, and
// the recipient where the transaction has one. A bounce that names only a
// forwarding target is matched to its recipient through
// Original-Envelope-Id (without it, it is unmatched), and one that reached
// the From address, not a return path, counts through its envelope id and
// Original-Recipient.
func TestDSNEnvelopeID(t *testing.T) {
	pool := dbtest.Pool(t)
	ctx := context.Background()
	ids := seed(t, pool, 3) // user00, user02 @alpha (one transaction of two); user01 @beta (alone)
	signer, err := returnpath.NewSigner(testKey)
	if err != nil {
		t.Fatal(err)
	}
	srv := smtptest.StartServer(t, smtptest.Options{DiscardBodies: true}) // offers DSN
	dsnSettings, err := campaign.ParseDSN("failure,delay", "hdrs")
	if err != nil {
		t.Fatal(err)
	}
	id := sendAll(t, pool, srv.Addr, campaign.New{Name: "dsn", List: "news", From: "News <news@sender.example.test>",
		Subject: "Weekly news", Text: "Hello all\n",
		Settings: campaign.Settings{ReturnPath: &campaign.ReturnPath{Address: base}, DSN: dsnSettings},
		Secrets:  campaign.Secrets{BounceKey: testKey}})

	envIDs := map[int]string{} // by recipients in the transaction
	msgs := srv.Messages()
	if len(msgs) != 2 {
		t.Fatalf("server saw %d transactions, want 2 (one per domain)", len(msgs))
	}
	for _, m := range msgs {
		if m.Opts.Return != gosmtp.DSNReturnHeaders {
			t.Errorf("RET = %q, want HDRS", m.Opts.Return)
		}
		for i, r := range m.Rcpts {
			o := m.RcptOpts[i]
			if want := []gosmtp.DSNNotify{gosmtp.DSNNotifyFailure, gosmtp.DSNNotifyDelayed}; !slices.Equal(o.Notify, want) {
				t.Errorf("RCPT %s NOTIFY = %v, want %v", r, o.Notify, want)
			}
			if o.OriginalRecipientType != gosmtp.DSNAddressTypeRFC822 || o.OriginalRecipient != r {
				t.Errorf("RCPT %s ORCPT = %s;%s, want rfc822;%s", r, o.OriginalRecipientType, o.OriginalRecipient, r)
			}
		}
		tag, err := signer.VerifyEnvelopeID(m.Opts.EnvelopeID)
		if err != nil {
			t.Fatalf("ENVID %q: %v", m.Opts.EnvelopeID, err)
		}
		want := returnpath.Tag{CampaignID: id}
		if len(m.Rcpts) == 1 {
			want.ContactID = ids[m.Rcpts[0]]
		}
		if tag != want {
			t.Errorf("transaction to %v: ENVID says %+v, want %+v", m.Rcpts, tag, want)
		}
		envIDs[len(m.Rcpts)] = m.Opts.EnvelopeID
	}
	campaignRP, err := signer.Address(base, id, 0)
	if err != nil {
		t.Fatal(err)
	}

	p := &bounce.Processor{Pool: pool, Signer: signer}
	state := func(email string) string {
		var s string
		if err := pool.QueryRow(ctx, "SELECT state FROM deliveries WHERE campaign_id = $1 AND contact_id = $2",
			id, ids[email]).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	// Forwarded: the report names only the forwarding target.
	res, err := p.Process(ctx, hardDSN(campaignRP, "1@mx.elsewhere.example.test", "", "", "fwd@elsewhere.example.test"), nil, "test")
	if err != nil || res.Unmatched != 1 || res.Hard != 0 {
		t.Fatalf("without an envelope id: %+v, %v; want one unmatched", res, err)
	}
	res, err = p.Process(ctx, hardDSN(campaignRP, "2@mx.elsewhere.example.test", envIDs[1], "", "fwd@elsewhere.example.test"), nil, "test")
	if err != nil || res.Hard != 1 {
		t.Fatalf("with the envelope id: %+v, %v; want one hard bounce", res, err)
	}
	if s := state("user01@beta.example.test"); s != campaign.StateBounced {
		t.Errorf("user01 is %s, want bounced (named by the envelope id)", s)
	}
	// To the From address, no return path: the signed envelope id counts,
	// and Original-Recipient names the recipient of a shared transaction.
	res, err = p.Process(ctx, hardDSN("news@sender.example.test", "3@mx.elsewhere.example.test", envIDs[2],
		"user02@alpha.example.test", "user02@alpha.example.test"), nil, "test")
	if err != nil || res.Hard != 1 {
		t.Fatalf("to the From address with an envelope id: %+v, %v; want one hard bounce", res, err)
	}
	if s := state("user02@alpha.example.test"); s != campaign.StateBounced {
		t.Errorf("user02 is %s, want bounced", s)
	}
	if s := state("user00@alpha.example.test"); s != campaign.StateSent {
		t.Errorf("user00 is %s, want sent", s)
	}
	// A forged envelope id (another contact, no valid MAC) counts nothing.
	forged := fmt.Sprintf("blaster.%d.%d.aaaaaaaaaaaaaaaa", id, ids["user00@alpha.example.test"])
	res, err = p.Process(ctx, hardDSN("news@sender.example.test", "4@mx.elsewhere.example.test", forged,
		"user00@alpha.example.test", "user00@alpha.example.test"), nil, "test")
	if err != nil || res.Ignored == "" {
		t.Fatalf("forged envelope id: %+v, %v; want ignored", res, err)
	}
}

// globalDSN is an RFC 6533 report (message/global-delivery-status) sent
// to to about a forwarding target, whose Original-Recipient field has the
// value origRcpt, its address type included.
func globalDSN(to, messageID, origRcpt string) []byte {
	return []byte("From: MAILER-DAEMON@mx.elsewhere.example.test\r\n" +
		"To: " + to + "\r\nSubject: Undelivered Mail Returned to Sender\r\nMessage-Id: <" + messageID + ">\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=global-delivery-status; boundary=b\r\n\r\n" +
		"--b\r\nContent-Type: text/plain\r\n\r\nUndeliverable.\r\n" +
		"--b\r\nContent-Type: message/global-delivery-status\r\n\r\n" +
		"Reporting-MTA: dns; mx.elsewhere.example.test\r\n\r\n" +
		"Original-Recipient: " + origRcpt + "\r\n" +
		"Final-Recipient: rfc822; fwd@elsewhere.example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n" +
		"Diagnostic-Code: smtp; 550 5.1.1 mailbox unknown\r\n\r\n--b--\r\n")
}

// TestDSNUTF8OriginalRecipient: an internationalized recipient goes out
// through the worker with an ORCPT of RFC 6533's utf-8 type, which the
// server reads back as the address; a global DSN that names it only in
// Original-Recipient, in the utf-8-addr-xtext form or in raw UTF-8,
// matches its delivery.
func TestDSNUTF8OriginalRecipient(t *testing.T) {
	pool := dbtest.Pool(t)
	ctx := context.Background()
	const jorg, jana = "jörg@alpha.example.test", "jana.ø@alpha.example.test"
	if _, err := pool.Exec(ctx, "INSERT INTO contacts (email, name) VALUES ($1, 'Jörg'), ($2, 'Jana')", jorg, jana); err != nil {
		t.Fatal(err)
	}
	ids := seed(t, pool, 1)                                               // user00@alpha, in the one transaction with both
	srv := smtptest.StartServer(t, smtptest.Options{DiscardBodies: true}) // offers DSN and SMTPUTF8
	id := sendAll(t, pool, srv.Addr, campaign.New{Name: "utf8", List: "news", From: "News <news@sender.example.test>",
		Subject: "Weekly news", Text: "Hello all\n",
		Settings: campaign.Settings{ReturnPath: &campaign.ReturnPath{Address: base}},
		Secrets:  campaign.Secrets{BounceKey: testKey}})

	msgs := srv.Messages()
	if len(msgs) != 1 || len(msgs[0].Rcpts) != 3 {
		t.Fatalf("server saw %+v, want one transaction to 3 recipients", msgs)
	}
	for i, r := range msgs[0].Rcpts {
		want := gosmtp.DSNAddressTypeUTF8
		if r == "user00@alpha.example.test" {
			want = gosmtp.DSNAddressTypeRFC822
		}
		if o := msgs[0].RcptOpts[i]; o.OriginalRecipientType != want || o.OriginalRecipient != r {
			t.Errorf("RCPT %s: ORCPT %s;%s, want %s;%s", r, o.OriginalRecipientType, o.OriginalRecipient, want, r)
		}
	}

	signer, err := returnpath.NewSigner(testKey)
	if err != nil {
		t.Fatal(err)
	}
	campaignRP, err := signer.Address(base, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := &bounce.Processor{Pool: pool, Signer: signer}
	for i, tc := range []struct{ email, origRcpt string }{
		{jorg, `utf-8; j\x{F6}rg@alpha.example.test`},
		{jana, "utf-8;" + jana},
	} {
		res, err := p.Process(ctx, globalDSN(campaignRP, fmt.Sprintf("utf8.%d@mx.elsewhere.example.test", i), tc.origRcpt), nil, "test")
		if err != nil || res.Hard != 1 {
			t.Fatalf("Original-Recipient: %s: %+v, %v; want one hard bounce", tc.origRcpt, res, err)
		}
		var state string
		if err := pool.QueryRow(ctx, `SELECT d.state FROM deliveries d JOIN contacts c ON c.id = d.contact_id
			WHERE d.campaign_id = $1 AND c.email = $2`, id, tc.email).Scan(&state); err != nil {
			t.Fatal(err)
		}
		if state != campaign.StateBounced {
			t.Errorf("%s is %s, want bounced", tc.email, state)
		}
	}
	var state string
	if err := pool.QueryRow(ctx, "SELECT state FROM deliveries WHERE campaign_id = $1 AND contact_id = $2",
		id, ids["user00@alpha.example.test"]).Scan(&state); err != nil {
		t.Fatal(err)
	}
	if state != campaign.StateSent {
		t.Errorf("user00 is %s, want sent", state)
	}
}

// sendAll creates and starts campaign n, sends it all through a worker on
// the server at addr, and stops the worker (QUIT), so that the server's
// record is complete. It returns the campaign's id.
func sendAll(t *testing.T, pool *pgxpool.Pool, addr string, n campaign.New) int64 {
	t.Helper()
	w := startWorker(t, pool, addr)
	id := createAndStart(t, pool, n)
	waitDone(t, pool, id)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	return id
}
