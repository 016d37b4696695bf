package bounce_test

import (
	"context"
	"errors"
	"net/smtp"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/blaster-mail/blaster/bounce"
	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/returnpath"
)

// oneRecipient creates a started campaign with one recipient, sent, and
// returns its id, the contact's id and a processor.
func oneRecipient(t *testing.T) (int64, int64, *bounce.Processor) {
	t.Helper()
	pool := dbtest.Pool(t)
	ctx := context.Background()
	ids := seed(t, pool, 1)
	id := newCampaign(t, pool, true, false)
	if _, err := pool.Exec(ctx, "UPDATE deliveries SET state = 'sent'"); err != nil {
		t.Fatal(err)
	}
	s, _ := returnpath.NewSigner(testKey)
	return id, ids["user00@alpha.example.test"], &bounce.Processor{Pool: pool, Signer: s}
}

// TestServerRefuses: the receiver takes mail only for signed return paths,
// refuses what is too big, and answers 451 when the bounce cannot be
// recorded, so the sending MTA keeps it and tries again.
func TestServerRefuses(t *testing.T) {
	id, contactID, p := oneRecipient(t)
	rp, _ := p.Signer.Address(base, id, contactID)
	srv, err := bounce.NewServer(bounce.ServerConfig{Processor: p, MaxMessageBytes: 64 << 10, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(context.Background()) })
	code := func(err error) int {
		var pe *textproto.Error
		if errors.As(err, &pe) {
			return pe.Code
		}
		return 0
	}
	msg := dsn(t, "postfix.eml", rp, "user00@alpha.example.test", "s1@relay.example.test")
	for _, to := range []string{"bounces@bounce.example.test", "postmaster@bounce.example.test", strings.Replace(rp, "bounces+", "bounces+9", 1)} {
		if err := smtp.SendMail(srv.Addr(), nil, "", []string{to}, msg); code(err) != 550 {
			t.Errorf("RCPT %s: %v, want 550", to, err)
		}
	}
	// A message announced bigger than the limit (RFC 1870 SIZE) is refused
	// at MAIL.
	c, err := textproto.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c.ReadResponse(220)
	c.Cmd("EHLO mta.example.test")
	if _, ext, err := c.ReadResponse(250); err != nil || !strings.Contains(ext, "SIZE 65536") {
		t.Errorf("EHLO: %q, %v; want SIZE 65536 announced", ext, err)
	}
	c.Cmd("MAIL FROM:<> SIZE=200000")
	if _, _, err := c.ReadResponse(250); code(err) != 552 {
		t.Errorf("MAIL with SIZE over the limit: %v, want 552", err)
	}
	c.Close()
	p.Pool.(interface{ Close() }).Close() // the database goes away
	if err := smtp.SendMail(srv.Addr(), nil, "", []string{rp}, msg); code(err) != 451 {
		t.Errorf("with the database gone: %v, want 451", err)
	}
	if s := srv.Summary(); s.Messages != 0 {
		t.Errorf("summary %+v, want nothing processed", s)
	}
}

// TestMaildirFlags: messages a reader already marked seen are left alone;
// processed ones keep their flags and gain S.
func TestMaildirFlags(t *testing.T) {
	id, contactID, p := oneRecipient(t)
	rp, _ := p.Signer.Address(base, id, contactID)
	dir := t.TempDir()
	if _, err := p.ProcessMaildir(context.Background(), dir); err == nil || !strings.Contains(err.Error(), "not a Maildir") {
		t.Fatalf("ProcessMaildir of an empty directory: %v, want 'not a Maildir'", err)
	}
	for _, d := range []string{"new", "cur", "tmp"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
	}
	msg := dsn(t, "postfix.eml", rp, "user00@alpha.example.test", "f1@relay.example.test")
	os.WriteFile(filepath.Join(dir, "cur", "1.x.host:2,S"), msg, 0o644)
	os.WriteFile(filepath.Join(dir, "cur", "2.x.host:2,F"), dsn(t, "postfix-delayed.eml", rp, "user00@alpha.example.test", "f2@x"), 0o644)
	sum, err := p.ProcessMaildir(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if sum != (bounce.Summary{Messages: 1, Soft: 1}) {
		t.Errorf("summary %+v, want the unseen message only", sum)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "cur"))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "1.x.host:2,S 2.x.host:2,FS" {
		t.Errorf("cur/ holds %q", names)
	}
}

// TestMbox: ">From " lines are unescaped, messages split on "From " lines,
// and a file that is no mbox is refused with its line.
func TestMbox(t *testing.T) {
	id, contactID, p := oneRecipient(t)
	rp, _ := p.Signer.Address(base, id, contactID)
	msg := strings.Replace(string(dsn(t, "qmail.eml", rp, "user00@alpha.example.test", "")),
		"Sorry, no mailbox", ">From here: Sorry, no mailbox", 1)
	mbox := "From MAILER-DAEMON Tue Dec  1 10:12:04 2026\n" + strings.Replace(msg, ">From here", ">>From here", 1) + "\n"
	sum, err := p.ProcessMbox(context.Background(), strings.NewReader(mbox), "test.mbox")
	if err != nil || sum != (bounce.Summary{Messages: 1, Hard: 1}) {
		t.Fatalf("ProcessMbox = %+v, %v", sum, err)
	}
	var diag string
	p.Pool.QueryRow(context.Background(), "SELECT diagnostic FROM bounce_events").Scan(&diag)
	if diag != ">From here: Sorry, no mailbox here by that name. (#5.1.1)" {
		t.Errorf("diagnostic %q: the >From line was not unescaped once", diag)
	}
	// The same message on stdin has the same bytes: one event, no new one.
	sum, err = p.ProcessReader(context.Background(), strings.NewReader(msg), "stdin")
	if err != nil || sum != (bounce.Summary{Messages: 1, Duplicates: 1}) {
		t.Errorf("the mbox's message again on stdin: %+v, %v; want a duplicate", sum, err)
	}
	if _, err := p.ProcessMbox(context.Background(), strings.NewReader("\nReturn-Path: <>\n"), "x.mbox"); err == nil ||
		!strings.Contains(err.Error(), "x.mbox:2:") {
		t.Errorf("a file that is no mbox: %v, want an error at x.mbox:2", err)
	}
}

// TestHostileBounce: a NUL byte and invalid UTF-8 in a diagnostic, a
// Message-ID of 5000 bytes and a 1000-byte "address": recorded, not a
// database error that would stop a Maildir run for good.
func TestHostileBounce(t *testing.T) {
	id, contactID, p := oneRecipient(t)
	rp, _ := p.Signer.Address(base, id, contactID)
	msg := string(dsn(t, "postfix.eml", rp, "user00@alpha.example.test", strings.Repeat("x", 5000)+"@relay.example.test"))
	msg = strings.Replace(msg, "Recipient address\n    rejected", "Recipient\x00 address \xff\xfe\n    rejected", 1)
	msg = strings.Replace(msg, "Final-Recipient: rfc822; user00@alpha.example.test",
		"Final-Recipient: rfc822; user00@alpha.example.test\n\nFinal-Recipient: rfc822; "+strings.Repeat("y", 1000)+"@x\nAction: failed\nStatus: 5.1.1", 1)
	for want := range 2 {
		sum, err := p.ProcessReader(context.Background(), strings.NewReader(msg), "stdin")
		if err != nil {
			t.Fatal(err)
		}
		if sum.Hard+sum.Duplicates != 1 || sum.Duplicates != want {
			t.Fatalf("run %d: %+v, want one hard bounce, then a duplicate", want+1, sum)
		}
	}
	var diag string
	p.Pool.QueryRow(context.Background(), "SELECT diagnostic FROM bounce_events").Scan(&diag)
	if !strings.Contains(diag, "Recipient address \uFFFD") {
		t.Errorf("diagnostic %q", diag)
	}
}

// TestInFlight: a hard bounce that overtakes the worker's record (the
// delivery is still sending) is left for the next run, then applied.
func TestInFlight(t *testing.T) {
	id, contactID, p := oneRecipient(t)
	ctx := context.Background()
	rp, _ := p.Signer.Address(base, id, contactID)
	dir := t.TempDir()
	for _, d := range []string{"new", "cur", "tmp"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
	}
	os.WriteFile(filepath.Join(dir, "new", "1.x.host"), dsn(t, "postfix.eml", rp, "user00@alpha.example.test", "i1@x"), 0o644)
	p.Pool.Exec(ctx, "UPDATE deliveries SET state = 'sending'")
	sum, err := p.ProcessMaildir(ctx, dir)
	if err != nil || sum != (bounce.Summary{Messages: 1, Later: 1}) {
		t.Fatalf("while sending: %+v, %v; want the message left for later", sum, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "new", "1.x.host")); err != nil {
		t.Fatalf("the message left for later was moved: %v", err)
	}
	var events int
	p.Pool.QueryRow(ctx, "SELECT count(*) FROM bounce_events").Scan(&events)
	if events != 0 {
		t.Fatalf("%d events recorded for a bounce left for later", events)
	}
	p.Pool.Exec(ctx, "UPDATE deliveries SET state = 'sent'") // the worker's record
	sum, err = p.ProcessMaildir(ctx, dir)
	if err != nil || sum != (bounce.Summary{Messages: 1, Hard: 1}) {
		t.Fatalf("after the record: %+v, %v; want it applied", sum, err)
	}
	var state string
	p.Pool.QueryRow(ctx, "SELECT state FROM deliveries").Scan(&state)
	if state != "bounced" {
		t.Fatalf("delivery %s, want bounced", state)
	}
}

// TestMboxLongLine: a line longer than the scanner's buffer (a hostile or
// broken message anyone can send to a return path) is one message's
// problem: the run goes on to the next message instead of stopping there,
// which would stop every later run at the same line too.
func TestMboxLongLine(t *testing.T) {
	id, contactID, p := oneRecipient(t)
	rp, _ := p.Signer.Address(base, id, contactID)
	junk := "From: spam@example.test\nTo: " + rp + "\nSubject: hi\n\n" + strings.Repeat("A", 3<<20) + "\n"
	msg := string(dsn(t, "postfix.eml", rp, "user00@alpha.example.test", "long1@relay.example.test"))
	mbox := "From spam@example.test Tue Dec  1 10:12:04 2026\n" + junk + "\n" +
		"From MAILER-DAEMON Tue Dec  1 10:12:05 2026\n" + msg + "\n"
	sum, err := p.ProcessMbox(context.Background(), strings.NewReader(mbox), "long.mbox")
	if err != nil {
		t.Fatalf("ProcessMbox: %v", err)
	}
	if sum.Messages != 2 || sum.Hard != 1 {
		t.Errorf("summary %+v, want 2 messages, the DSN after the long line applied", sum)
	}
}

// TestServerMaxConnections: connections past MaxConnections are answered
// 421 and closed, so a peer cannot open enough of them (each able to hold
// a message of MaxMessageBytes in memory) to exhaust the receiver's
// memory; a slot freed is taken again.
func TestServerMaxConnections(t *testing.T) {
	_, _, p := oneRecipient(t)
	srv, err := bounce.NewServer(bounce.ServerConfig{Processor: p, MaxConnections: 2, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(context.Background()) })
	greet := func() (*textproto.Conn, int) {
		c, err := textproto.Dial("tcp", srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		code, _, _ := c.ReadResponse(220)
		return c, code
	}
	var open []*textproto.Conn
	for i := 0; i < 2; i++ {
		c, code := greet()
		if code != 220 {
			t.Fatalf("connection %d: %d, want 220", i+1, code)
		}
		open = append(open, c)
	}
	c, code := greet()
	c.Close()
	if code != 421 {
		t.Fatalf("connection past MaxConnections: %d, want 421", code)
	}
	open[0].Cmd("QUIT")
	open[0].ReadResponse(221)
	open[0].Close()
	for deadline := time.Now().Add(5 * time.Second); ; {
		c, code := greet()
		c.Close()
		if code == 220 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a connection closed: %d, want 220", code)
		}
	}
	open[1].Close()
}

// TestCampaignLevelSameRecipientTwice: a report behind a campaign-level
// return path that names one recipient in two blocks (a delay for the
// address, then a failure reported with it as the original recipient of a
// forwarding target) applies the failure: the second event is not dropped
// as a duplicate of the first.
func TestCampaignLevelSameRecipientTwice(t *testing.T) {
	pool := dbtest.Pool(t)
	ctx := context.Background()
	seed(t, pool, 1)
	id := newCampaign(t, pool, false, false)
	if _, err := pool.Exec(ctx, "UPDATE deliveries SET state = 'sent'"); err != nil {
		t.Fatal(err)
	}
	s, _ := returnpath.NewSigner(testKey)
	p := &bounce.Processor{Pool: pool, Signer: s}
	rp, _ := s.Address(base, id, 0)
	msg := "From: MAILER-DAEMON@relay.example.test\nTo: " + rp + "\nSubject: failure notice\n" +
		"Message-Id: <twice.1@relay.example.test>\nMIME-Version: 1.0\n" +
		"Content-Type: multipart/report; report-type=delivery-status; boundary=XX\n\n" +
		"--XX\nContent-Type: message/delivery-status\n\n" +
		"Reporting-MTA: dns; relay.example.test\n\n" +
		"Final-Recipient: rfc822; user00@alpha.example.test\nAction: delayed\nStatus: 4.4.1\n\n" +
		"Original-Recipient: rfc822; user00@alpha.example.test\nFinal-Recipient: rfc822; fwd@gamma.example.test\n" +
		"Action: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\n\n--XX--\n"
	sum, err := p.ProcessReader(ctx, strings.NewReader(msg), "stdin")
	if err != nil {
		t.Fatal(err)
	}
	if sum != (bounce.Summary{Messages: 1, Hard: 1}) {
		t.Errorf("summary %+v, want one hard bounce", sum)
	}
	var state string
	pool.QueryRow(ctx, "SELECT state FROM deliveries").Scan(&state)
	if state != "bounced" {
		t.Errorf("delivery %s, want bounced", state)
	}
}

// takingPool is a pool whose first Begin lets another reader take a
// Maildir message first (move it to cur/ as seen), as a second run or a
// mail reader can between ProcessMaildir's read and its rename.
type takingPool struct {
	campaign.Pool
	from, to string
	once     sync.Once
}

func (p *takingPool) Begin(ctx context.Context) (pgx.Tx, error) {
	p.once.Do(func() { os.Rename(p.from, p.to) })
	return p.Pool.Begin(ctx)
}

// TestMaildirTakenMeanwhile: a message another reader moved away while it
// was processed is that reader's now; the run goes on with the next
// message rather than stopping with an error.
func TestMaildirTakenMeanwhile(t *testing.T) {
	id, contactID, p := oneRecipient(t)
	rp, _ := p.Signer.Address(base, id, contactID)
	dir := t.TempDir()
	for _, d := range []string{"new", "cur", "tmp"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
	}
	os.WriteFile(filepath.Join(dir, "new", "1.x.host"), dsn(t, "postfix-delayed.eml", rp, "user00@alpha.example.test", "t1@x"), 0o644)
	os.WriteFile(filepath.Join(dir, "new", "2.x.host"), dsn(t, "postfix.eml", rp, "user00@alpha.example.test", "t2@x"), 0o644)
	p.Pool = &takingPool{Pool: p.Pool, from: filepath.Join(dir, "new", "1.x.host"), to: filepath.Join(dir, "cur", "1.x.host:2,S")}
	sum, err := p.ProcessMaildir(context.Background(), dir)
	if err != nil {
		t.Fatalf("ProcessMaildir: %v", err)
	}
	if sum != (bounce.Summary{Messages: 2, Soft: 1, Hard: 1}) {
		t.Errorf("summary %+v, want both messages applied", sum)
	}
	if _, err := os.Stat(filepath.Join(dir, "cur", "2.x.host:2,S")); err != nil {
		t.Errorf("the second message was not marked processed: %v", err)
	}
}
