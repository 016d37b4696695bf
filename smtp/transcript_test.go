package smtp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// scriptConn is the transcript tests' fake server, after emersion/go-smtp's
// client tests: the server's whole side is a script read in order, and
// every client Write is recorded as one chunk, so a test can say both what
// went on the wire and in how many writes. When the script runs out, reads
// see EOF: the server dropped the connection.
type scriptConn struct {
	r io.Reader

	mu        sync.Mutex
	writes    []string
	closed    bool
	failAfter int // writes fail once this many octets went out; 0: never
	written   int
}

func (s *scriptConn) Read(p []byte) (int, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return 0, net.ErrClosed
	}
	return s.r.Read(p)
}

func (s *scriptConn) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, net.ErrClosed
	}
	if s.failAfter > 0 && s.written+len(p) > s.failAfter {
		n := s.failAfter - s.written
		s.writes = append(s.writes, string(p[:n]))
		s.written += n
		return n, errors.New("connection reset by peer")
	}
	s.writes = append(s.writes, string(p))
	s.written += len(p)
	return len(p), nil
}

func (s *scriptConn) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

func (s *scriptConn) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// wire is everything the client wrote, in one string.
func (s *scriptConn) wire() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.writes, "")
}

func (s *scriptConn) chunks() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.writes...)
}

func (s *scriptConn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (s *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 25} }
func (s *scriptConn) SetDeadline(time.Time) error      { return nil }
func (s *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (s *scriptConn) SetWriteDeadline(time.Time) error { return nil }

const (
	greeting = "220 mx.example.test ESMTP\r\n"
	ehloPipe = "250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n" +
		"250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n"
	ehloPlain = "250-mx.example.test\r\n250 ENHANCEDSTATUSCODES\r\n"
	ehloLine  = "EHLO client.example.test\r\n"
	queued    = "250 2.0.0 Ok: queued as 1A2B\r\n"
)

// dialScript dials a scripted server; the script is the server's side.
func dialScript(t *testing.T, script string, cfg Config) (*Client, *scriptConn, error) {
	t.Helper()
	sc := &scriptConn{r: strings.NewReader(script)}
	cfg.LocalName = "client.example.test"
	cfg.DialFunc = func(context.Context, string, string) (net.Conn, error) { return sc, nil }
	c, err := Dial(context.Background(), "mx.example.test:25", cfg)
	return c, sc, err
}

func mustDial(t *testing.T, script string) (*Client, *scriptConn) {
	t.Helper()
	c, sc, err := dialScript(t, script, Config{})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	return c, sc
}

func rcpts(addrs ...string) []Recipient {
	var rs []Recipient
	for _, a := range addrs {
		rs = append(rs, Recipient{Addr: a})
	}
	return rs
}

func TestSendPipelinedOneWrite(t *testing.T) {
	c, sc := mustDial(t, greeting+ehloPipe+
		"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data\r\n"+queued)
	env := &Envelope{From: "news@example.test", Rcpts: rcpts("a@example.test", "b@example.test", "c@example.test"), Size: 12}
	res, err := c.Send(context.Background(), env, strings.NewReader("Subject: x\n\nHi\n"))
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	want := []string{
		ehloLine,
		"MAIL FROM:<news@example.test> SIZE=12\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n" +
			"RCPT TO:<c@example.test>\r\nDATA\r\n",
		"Subject: x\r\n\r\nHi\r\n.\r\n",
	}
	got := sc.chunks()
	if len(got) != len(want) {
		t.Fatalf("writes = %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("write %d = %q, want %q", i, got[i], want[i])
		}
	}
	for i := range env.Rcpts {
		if o, r := res.Outcome(i, err); o != Sent || r.Code != 250 {
			t.Errorf("recipient %d: outcome %v reply %v, want sent 250", i, o, r)
		}
	}
	if res.Data.Text != "Ok: queued as 1A2B" || res.Data.Enhanced != (EnhancedCode{2, 0, 0}) {
		t.Errorf("Data = %+v", res.Data)
	}
	if c.Broken() {
		t.Error("Broken after a good transaction")
	}
}

func TestSendPartialRejection(t *testing.T) {
	c, sc := mustDial(t, greeting+ehloPipe+
		"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <b@example.test>: no such user\r\n250 2.1.5 Ok\r\n354 go\r\n"+queued)
	env := &Envelope{From: "news@example.test", Rcpts: rcpts("a@example.test", "b@example.test", "c@example.test")}
	res, err := c.Send(context.Background(), env, strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	wantOutcomes := []Outcome{Sent, Bounce, Sent}
	for i, w := range wantOutcomes {
		if o, _ := res.Outcome(i, err); o != w {
			t.Errorf("recipient %d: %v, want %v", i, o, w)
		}
	}
	if r := res.Rcpts[1]; r.Code != 550 || r.Enhanced != (EnhancedCode{5, 1, 1}) || r.Text != "<b@example.test>: no such user" {
		t.Errorf("rejected reply = %+v", r)
	}
	if !strings.HasSuffix(sc.wire(), "DATA\r\nx\r\n.\r\n") {
		t.Errorf("body not sent: %q", sc.wire())
	}
}

func TestSendAllRejected(t *testing.T) {
	tests := []struct {
		name, dataReply, wantTail string
	}{
		// The usual answer: DATA refused, the client resets.
		{"DATA refused", "554 5.5.1 No valid recipients\r\n250 2.0.0 Ok\r\n", "DATA\r\nRSET\r\n"},
		// RFC 2920 §3.1: DATA accepted anyway; a single dot ends it, then RSET.
		{"DATA accepted", "354 go\r\n554 5.5.1 No valid recipients\r\n250 2.0.0 Ok\r\n", "DATA\r\n.\r\nRSET\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, sc := mustDial(t, greeting+ehloPipe+"250 2.1.0 Ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n"+tt.dataReply)
			env := &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test", "b@example.test")}
			res, err := c.Send(context.Background(), env, strings.NewReader("body must not be sent\r\n"))
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			if !strings.HasSuffix(sc.wire(), tt.wantTail) || strings.Contains(sc.wire(), "body must not") {
				t.Errorf("wire = %q, want it to end %q and hold no body", sc.wire(), tt.wantTail)
			}
			if res.Data != nil {
				t.Errorf("Data = %v, want nil", res.Data)
			}
			for i := range env.Rcpts {
				if o, _ := res.Outcome(i, err); o != Bounce {
					t.Errorf("recipient %d: %v, want bounce", i, o)
				}
			}
			if c.Broken() {
				t.Error("connection broken; it should be reusable")
			}
		})
	}
}

func TestSend452(t *testing.T) {
	t.Run("lockstep stops at 452", func(t *testing.T) {
		c, sc := mustDial(t, greeting+ehloPlain+
			"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Too many recipients\r\n354 go\r\n"+queued)
		env := &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test", "b@example.test", "c@example.test")}
		res, err := c.Send(context.Background(), env, strings.NewReader("x"))
		if err != nil {
			t.Fatalf("Send: %v", err)
		}
		if strings.Contains(sc.wire(), "c@example.test") {
			t.Errorf("RCPT sent after a 452: %q", sc.wire())
		}
		if r := res.Rcpts[2]; r == nil || r.Code != 452 {
			t.Errorf("recipient 2 reply = %v, want the 452 that stopped the RCPTs", r)
		}
		want := []Outcome{Sent, Retry, Retry}
		for i, w := range want {
			if o, _ := res.Outcome(i, err); o != w {
				t.Errorf("recipient %d: %v, want %v", i, o, w)
			}
		}
		if want := "MAIL FROM:<n@example.test>\r\n"; sc.chunks()[1] != want {
			t.Errorf("lock step: write 1 = %q, want %q", sc.chunks()[1], want)
		}
	})
	t.Run("pipelined records 452", func(t *testing.T) {
		c, _ := mustDial(t, greeting+ehloPipe+
			"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Too many\r\n452 4.5.3 Too many\r\n354 go\r\n"+queued)
		env := &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test", "b@example.test", "c@example.test")}
		res, err := c.Send(context.Background(), env, strings.NewReader("x"))
		if err != nil {
			t.Fatalf("Send: %v", err)
		}
		want := []Outcome{Sent, Retry, Retry}
		for i, w := range want {
			if o, r := res.Outcome(i, err); o != w || (i > 0 && r.Code != 452) {
				t.Errorf("recipient %d: %v %v, want %v", i, o, r, w)
			}
		}
	})
}

func TestSendRejectAfterData(t *testing.T) {
	c, _ := mustDial(t, greeting+ehloPipe+
		"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no\r\n354 go\r\n554 5.7.1 Message rejected: spam\r\n")
	env := &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test", "b@example.test")}
	res, err := c.Send(context.Background(), env, strings.NewReader("x"))
	var se *Error
	if !errors.As(err, &se) || se.Command != "." || se.Code != 554 || se.Server != "mx.example.test:25" {
		t.Fatalf("err = %v, want the 554 to the final dot naming the server", err)
	}
	if Classify(err) != Bounce || res.Data == nil || res.Data.Code != 554 {
		t.Errorf("Classify = %v, Data = %v", Classify(err), res.Data)
	}
	if o, r := res.Outcome(0, err); o != Bounce || r.Code != 554 {
		t.Errorf("accepted recipient: %v %v, want the data reply", o, r)
	}
	if o, r := res.Outcome(1, err); o != Bounce || r.Code != 550 {
		t.Errorf("rejected recipient: %v %v, want its own reply", o, r)
	}
	if !strings.Contains(err.Error(), "mx.example.test:25") || !strings.Contains(err.Error(), "spam") {
		t.Errorf("error text %q lacks server or reply", err)
	}
}

// TestDroppedConnection drops the connection at each step.
func TestDroppedConnection(t *testing.T) {
	ok := "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"
	tests := []struct {
		name      string
		script    string
		failAfter int // fail client writes after this many octets
		dialFails bool
		want      Outcome
	}{
		{name: "greeting", script: "", dialFails: true, want: Retry},
		{name: "mid greeting", script: "220-mx.example.test\r\n", dialFails: true, want: Retry},
		{name: "EHLO", script: greeting, dialFails: true, want: Retry},
		{name: "MAIL", script: greeting + ehloPipe, want: Retry},
		{name: "RCPT", script: greeting + ehloPipe + "250 2.1.0 Ok\r\n", want: Retry},
		{name: "DATA", script: greeting + ehloPipe + "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", want: Retry},
		{name: "body", script: greeting + ehloPipe + ok, failAfter: 200, want: Retry},
		{name: "after final dot", script: greeting + ehloPipe + ok, want: Unknown},
		{name: "mid final reply", script: greeting + ehloPipe + ok + "250-2.0.0 Ok\r\n", want: Unknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := &scriptConn{r: strings.NewReader(tt.script), failAfter: tt.failAfter}
			cfg := Config{LocalName: "client.example.test",
				DialFunc: func(context.Context, string, string) (net.Conn, error) { return sc, nil }}
			c, err := Dial(context.Background(), "mx.example.test:25", cfg)
			if tt.dialFails {
				var re *RouteError
				if !errors.As(err, &re) || re.Permanent || Classify(err) != tt.want {
					t.Fatalf("Dial err = %v (%v), want a transient RouteError", err, Classify(err))
				}
				if !sc.isClosed() {
					t.Error("connection left open")
				}
				return
			}
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			env := &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test")}
			body := strings.Repeat("line of the body\r\n", 50)
			res, err := c.Send(context.Background(), env, strings.NewReader(body))
			if err == nil {
				t.Fatal("Send succeeded on a dropped connection")
			}
			if got := Classify(err); got != tt.want {
				t.Errorf("Classify(%v) = %v, want %v", err, got, tt.want)
			}
			if o, _ := res.Outcome(0, err); o != tt.want {
				t.Errorf("Outcome = %v, want %v", o, tt.want)
			}
			if !c.Broken() || !sc.isClosed() {
				t.Errorf("Broken = %v, closed = %v; want both", c.Broken(), sc.isClosed())
			}
			if !strings.Contains(err.Error(), "mx.example.test:25") {
				t.Errorf("error %q does not name the server", err)
			}
			if _, err := c.Send(context.Background(), env, strings.NewReader("x")); err == nil {
				t.Error("Send on a broken connection succeeded")
			}
		})
	}
}

func TestSend421(t *testing.T) {
	c, sc := mustDial(t, greeting+ehloPipe+
		"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n421 4.7.0 mx.example.test closing: too many errors\r\n")
	env := &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test", "b@example.test")}
	res, err := c.Send(context.Background(), env, strings.NewReader("x"))
	var se *Error
	if !errors.As(err, &se) || se.Code != 421 || !se.Temporary() {
		t.Fatalf("err = %v, want the 421", err)
	}
	if !c.Broken() || !sc.isClosed() {
		t.Error("a 421 must break and close the connection")
	}
	for i := range env.Rcpts {
		if o, _ := res.Outcome(i, err); o != Retry {
			t.Errorf("recipient %d: %v, want retry", i, o)
		}
	}
}

func TestMailRejected(t *testing.T) {
	c, sc := mustDial(t, greeting+ehloPipe+
		"553 5.7.1 <n@example.test>: sender rejected\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n250 2.0.0 Ok\r\n")
	env := &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test")}
	res, err := c.Send(context.Background(), env, strings.NewReader("x"))
	var se *Error
	if !errors.As(err, &se) || se.Command != "MAIL" || se.Code != 553 {
		t.Fatalf("err = %v, want the MAIL 553", err)
	}
	if res.Rcpts[0] != nil {
		t.Errorf("RCPT reply after a refused MAIL recorded: %v", res.Rcpts[0])
	}
	if o, _ := res.Outcome(0, err); o != Bounce {
		t.Errorf("outcome %v, want bounce", o)
	}
	if !strings.HasSuffix(sc.wire(), "DATA\r\nRSET\r\n") {
		t.Errorf("wire = %q", sc.wire())
	}
}

func TestDataRefused(t *testing.T) {
	c, sc := mustDial(t, greeting+ehloPipe+"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n451 4.3.0 try later\r\n250 2.0.0 Ok\r\n")
	env := &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test")}
	res, err := c.Send(context.Background(), env, strings.NewReader("never sent"))
	var se *Error
	if !errors.As(err, &se) || se.Command != "DATA" || !se.Temporary() {
		t.Fatalf("err = %v, want the DATA 451", err)
	}
	if o, _ := res.Outcome(0, err); o != Retry {
		t.Errorf("outcome %v, want retry", o)
	}
	if strings.Contains(sc.wire(), "never sent") || !strings.HasSuffix(sc.wire(), "RSET\r\n") {
		t.Errorf("wire = %q", sc.wire())
	}
}

func TestMailParameters(t *testing.T) {
	c, sc := mustDial(t, greeting+ehloPipe+"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"+queued)
	env := &Envelope{
		From: "bounce+x=y@example.test", Size: 5000, EightBit: true, Ret: "hdrs", EnvID: "id+1=2 x",
		Rcpts: []Recipient{
			{Addr: "jörg@example.test", Notify: []string{"failure", "delay"}, ORcpt: "jörg+tag@example.test"},
			{Addr: "b@example.test", Notify: []string{"NEVER"}},
			{Addr: "evil@example.test>\r\nRCPT TO:<x@example.test"},
		},
	}
	res, err := c.Send(context.Background(), env, strings.NewReader("x"))
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	want := "MAIL FROM:<bounce+x=y@example.test> SIZE=5000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+3D2+20x\r\n" +
		"RCPT TO:<jörg@example.test> NOTIFY=FAILURE,DELAY ORCPT=utf-8;j\\x{F6}rg\\x{2B}tag@example.test\r\n" +
		"RCPT TO:<b@example.test> NOTIFY=NEVER\r\nDATA\r\n"
	if got := sc.chunks()[1]; got != want {
		t.Errorf("envelope =\n%q\nwant\n%q", got, want)
	}
	if o, r := res.Outcome(2, err); o != Bounce || r.Code != 553 {
		t.Errorf("injection attempt: %v %v, want a local 553 bounce", o, r)
	}
	if o, _ := res.Outcome(0, err); o != Sent {
		t.Errorf("recipient 0: %v", o)
	}
}

// TestORcpt: the ORCPT parameter on the wire (RFC 3461 §4.2): rfc822 and
// xtext for an ASCII address, as before; utf-8 and utf-8-addr-xtext (RFC
// 6533 §3) for any other, ASCII on the wire; none for an address that has
// no utf-8 form, nor when the server does not offer DSN.
func TestORcpt(t *testing.T) {
	for _, tt := range []struct {
		name, addr, orcpt string
		noDSN             bool
		want              string // the RCPT line after "RCPT TO:<addr>"
	}{
		{name: "ASCII", addr: "a@example.test", orcpt: "a@example.test", want: " ORCPT=rfc822;a@example.test"},
		{name: "ASCII xtext", addr: "a+b=c@example.test", orcpt: "a+b=c\\d@example.test",
			want: " ORCPT=rfc822;a+2Bb+3Dc\\d@example.test"},
		{name: "UTF-8", addr: "jörg@例え.test", orcpt: "jörg@例え.test",
			want: ` ORCPT=utf-8;j\x{F6}rg@\x{4F8B}\x{3048}.test`},
		{name: "xtext specials", addr: "jörg@example.test", orcpt: "jörg+a=b\\c@example.test",
			want: ` ORCPT=utf-8;j\x{F6}rg\x{2B}a\x{3D}b\x{5C}c@example.test`},
		{name: "quoted space", addr: `"jö rg"@example.test`, orcpt: `"jö rg"@example.test`,
			want: ` ORCPT=utf-8;"j\x{F6}\x{20}rg"@example.test`},
		{name: "3, 5 and 6 hex digits", addr: "ā😀\U00100000@example.test", orcpt: "ā😀\U00100000@example.test",
			want: ` ORCPT=utf-8;\x{101}\x{1F600}\x{100000}@example.test`},
		{name: "ASCII address, UTF-8 ORCPT", addr: "fwd@example.test", orcpt: "jörg@example.test",
			want: ` ORCPT=utf-8;j\x{F6}rg@example.test`},
		{name: "invalid UTF-8", addr: "jörg@example.test", orcpt: "j\xf6rg@example.test"},
		{name: "control character", addr: "jörg@example.test", orcpt: "jö\trg@example.test"},
		{name: "no DSN", addr: "jörg@example.test", orcpt: "jörg@example.test", noDSN: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ehlo := ehloPipe
			if tt.noDSN {
				ehlo = strings.Replace(ehlo, "250-DSN\r\n", "", 1)
			}
			c, sc := mustDial(t, greeting+ehlo+"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"+queued)
			env := &Envelope{From: "n@example.test", Rcpts: []Recipient{{Addr: tt.addr, ORcpt: tt.orcpt}}}
			if _, err := c.Send(context.Background(), env, strings.NewReader("x")); err != nil {
				t.Fatalf("Send: %v", err)
			}
			want := "RCPT TO:<" + tt.addr + ">" + tt.want + "\r\n"
			if _, rcpt, _ := strings.Cut(sc.chunks()[1], "\r\n"); !strings.HasPrefix(rcpt, want) {
				t.Errorf("RCPT =\n%q\nwant\n%q", rcpt, want)
			}
		})
	}
}

// TestAppendRcptAllocs: with the buffer grown by earlier transactions,
// a RCPT line with a utf-8 ORCPT costs no allocation, as an rfc822 one.
func TestAppendRcptAllocs(t *testing.T) {
	c := &Client{caps: Caps{DSN: true}}
	buf := make([]byte, 0, 512)
	for _, orcpt := range []string{"a+b@example.test", "jörg+a@例え.test"} {
		r := Recipient{Addr: orcpt, Notify: []string{"FAILURE"}, ORcpt: orcpt}
		if n := testing.AllocsPerRun(100, func() {
			if _, err := c.appendRcpt(buf[:0], r); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("ORCPT %q: %v allocations per RCPT line, want 0", orcpt, n)
		}
	}
}

// embeddedUnicodeChar is "\x{" HEXPOINT "}" of RFC 6533 §3, for the
// decoding FuzzORcpt checks against.
var embeddedUnicodeChar = regexp.MustCompile(`\\x\{([0-9A-F]{2,6})\}`)

// FuzzORcpt: whatever the address, the RCPT line stays one line of
// printable ASCII after the path (no space, CR or LF smuggled in through
// ORCPT), a utf-8 ORCPT uses only QCHARs and HEXPOINTs without extra
// leading zeros, and it decodes back to the address.
func FuzzORcpt(f *testing.F) {
	for _, s := range []string{"a@example.test", "jörg@例え.test", "a+b=c\\d@example.test", "j\xf6rg@x", "\"jö rg\"@x", "😀\r\nQUIT"} {
		f.Add(s)
	}
	c := &Client{caps: Caps{DSN: true}}
	f.Fuzz(func(t *testing.T, orcpt string) {
		line, err := c.appendRcpt(nil, Recipient{Addr: "a@example.test", ORcpt: orcpt})
		if err != nil {
			t.Fatal(err)
		}
		params := strings.TrimPrefix(string(line), "RCPT TO:<a@example.test>")
		if params == "" {
			if orcpt != "" && utf8.ValidString(orcpt) && strings.IndexFunc(orcpt, func(r rune) bool { return r < 0x20 || r == 0x7f }) < 0 {
				t.Fatalf("no ORCPT for %q", orcpt)
			}
			return
		}
		for i := 1; i < len(params); i++ {
			if params[i] <= ' ' || params[i] > '~' {
				t.Fatalf("ORCPT for %q: octet %#x in %q", orcpt, params[i], params)
			}
		}
		v, ok := strings.CutPrefix(params, " ORCPT=utf-8;")
		if !ok {
			if !strings.HasPrefix(params, " ORCPT=rfc822;") || !isASCII(orcpt) {
				t.Fatalf("ORCPT for %q: %q", orcpt, params)
			}
			return
		}
		var bad bool
		decoded := embeddedUnicodeChar.ReplaceAllStringFunc(v, func(m string) string {
			hex := m[3 : len(m)-1]
			if len(hex) > 2 && hex[0] == '0' {
				bad = true
			}
			n, _ := strconv.ParseUint(hex, 16, 32)
			return string(rune(n))
		})
		if bad || strings.ContainsAny(embeddedUnicodeChar.ReplaceAllString(v, ""), "+=\\") || decoded != orcpt {
			t.Fatalf("ORCPT for %q: %q decodes to %q", orcpt, v, decoded)
		}
	})
}

func TestEnvelopeChecks(t *testing.T) {
	tests := []struct {
		name string
		ehlo string
		env  Envelope
		want error
	}{
		{"SMTPUTF8 not offered", ehloPlain, Envelope{From: "n@example.test", Rcpts: rcpts("jörg@example.test")}, ErrSMTPUTF8Unsupported},
		{"too large", ehloPipe, Envelope{From: "n@example.test", Size: 2000000, Rcpts: rcpts("a@example.test")}, ErrMessageTooLarge},
		{"bad sender", ehloPipe, Envelope{From: "n@example.test>\r\nRSET", Rcpts: rcpts("a@example.test")}, ErrInvalidEnvelope},
		{"no recipients", ehloPipe, Envelope{From: "n@example.test"}, ErrInvalidEnvelope},
		{"bad RET", ehloPipe, Envelope{From: "n@example.test", Ret: "ALL", Rcpts: rcpts("a@example.test")}, ErrInvalidEnvelope},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, sc := mustDial(t, greeting+tt.ehlo)
			_, err := c.Send(context.Background(), &tt.env, strings.NewReader("x"))
			if !errors.Is(err, tt.want) || Classify(err) != Bounce {
				t.Fatalf("err = %v (%v), want %v, bounce", err, Classify(err), tt.want)
			}
			if len(sc.chunks()) != 1 || c.Broken() {
				t.Errorf("something was sent (%q) or the connection broke", sc.chunks())
			}
		})
	}
}

func TestHELOFallback(t *testing.T) {
	c, sc := mustDial(t, greeting+"502 5.5.2 EHLO not implemented\r\n250 mx.example.test\r\n"+
		"250 Ok\r\n250 Ok\r\n354 go\r\n"+queued)
	if c.Caps().ESMTP || c.Caps().Pipelining {
		t.Errorf("Caps after HELO = %+v", c.Caps())
	}
	env := &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test")}
	if _, err := c.Send(context.Background(), env, strings.NewReader("x")); err != nil {
		t.Fatalf("Send: %v", err)
	}
	want := []string{ehloLine, "HELO client.example.test\r\n", "MAIL FROM:<n@example.test>\r\n",
		"RCPT TO:<a@example.test>\r\n", "DATA\r\n", "x\r\n.\r\n"}
	if got := sc.chunks(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("writes = %q, want %q", got, want)
	}
}

func TestTLSRequiredNotOffered(t *testing.T) {
	_, sc, err := dialScript(t, greeting+ehloPipe, Config{TLS: TLSRequired})
	var re *RouteError
	if !errors.As(err, &re) || !re.Permanent || re.Op != "STARTTLS" {
		t.Fatalf("err = %v, want a permanent STARTTLS RouteError", err)
	}
	if strings.Contains(sc.wire(), "MAIL") {
		t.Error("went on without TLS")
	}
}

func TestSTARTTLSReplyInjection(t *testing.T) {
	// A server (or a man in the middle) that appends a reply after its 220
	// to STARTTLS: the extra bytes came before TLS and must not be read as
	// if protected by it.
	_, _, err := dialScript(t, greeting+"250-mx.example.test\r\n250 STARTTLS\r\n220 go ahead\r\n250 injected\r\n", Config{})
	if err == nil || !strings.Contains(err.Error(), "after its STARTTLS reply") {
		t.Fatalf("err = %v, want the injection refused", err)
	}
}

func TestAuthNeverInClear(t *testing.T) {
	_, sc, err := dialScript(t, greeting+"250-mx.example.test\r\n250 AUTH PLAIN LOGIN\r\n",
		Config{Auth: NewAuth("", "user", "secret")})
	var re *RouteError
	if !errors.As(err, &re) || !re.Permanent || re.Op != "AUTH" {
		t.Fatalf("err = %v, want a permanent AUTH RouteError", err)
	}
	if strings.Contains(sc.wire(), "AUTH") {
		t.Errorf("credentials sent without TLS: %q", sc.wire())
	}
}

func TestAuthTranscript(t *testing.T) {
	tests := []struct {
		name, mech, offer, server, wantWire string
		user, secret                        string
		wantErr                             bool
	}{
		{name: "PLAIN", mech: "", offer: "PLAIN LOGIN CRAM-MD5", server: "235 2.7.0 ok\r\n",
			wantWire: "AUTH PLAIN AHVzZXIAc2VjcmV0\r\n"},
		{name: "LOGIN", mech: "login", offer: "PLAIN LOGIN", server: "334 UGFzc3dvcmQ6\r\n235 2.7.0 ok\r\n",
			wantWire: "AUTH LOGIN dXNlcg==\r\nc2VjcmV0\r\n"},
		// RFC 2195 §2's example: the challenge, key and digest from the RFC.
		{name: "CRAM-MD5 only", mech: "", offer: "CRAM-MD5", user: "tim", secret: "tanstaaftanstaaf",
			server:   "334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+\r\n235 2.7.0 ok\r\n",
			wantWire: "AUTH CRAM-MD5\r\ndGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n"},
		{name: "XOAUTH2", mech: "xoauth2", offer: "XOAUTH2", server: "235 2.7.0 ok\r\n",
			wantWire: "AUTH XOAUTH2 dXNlcj11c2VyAWF1dGg9QmVhcmVyIHNlY3JldAEB\r\n"},
		{name: "OAUTHBEARER", mech: "oauthbearer", offer: "OAUTHBEARER XOAUTH2", server: "235 2.7.0 ok\r\n",
			wantWire: "AUTH OAUTHBEARER bixhPXVzZXIsAWF1dGg9QmVhcmVyIHNlY3JldAEB\r\n"},
		// RFC 7628 §3.2.3: a failure is a 334 with a JSON error; the
		// client cancels and the server ends with 535.
		{name: "OAUTHBEARER refused", mech: "oauthbearer", offer: "OAUTHBEARER",
			server:   "334 eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0=\r\n535 5.7.8 invalid token\r\n",
			wantWire: "AUTH OAUTHBEARER bixhPXVzZXIsAWF1dGg9QmVhcmVyIHNlY3JldAEB\r\n*\r\n", wantErr: true},
		{name: "bad password", mech: "plain", offer: "PLAIN", server: "535 5.7.8 Authentication credentials invalid\r\n",
			wantWire: "AUTH PLAIN AHVzZXIAc2VjcmV0\r\n", wantErr: true},
		{name: "mechanism not offered", mech: "cram-md5", offer: "PLAIN", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var trace bytes.Buffer
			if tt.user == "" {
				tt.user, tt.secret = "user", "secret"
			}
			_, sc, err := dialScript(t, greeting+"250-mx.example.test\r\n250 AUTH "+tt.offer+"\r\n"+tt.server,
				Config{TLS: TLSNone, AllowInsecureAuth: true, Auth: NewAuth(tt.mech, tt.user, tt.secret), Trace: &trace})
			if tt.wantErr {
				var re *RouteError
				if !errors.As(err, &re) || !re.Permanent || !strings.Contains(err.Error(), "mx.example.test:25") {
					t.Fatalf("err = %v, want a permanent RouteError naming the server", err)
				}
				if Classify(err) != Retry {
					t.Errorf("Classify(auth failure) = %v; recipients must not bounce", Classify(err))
				}
			} else if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			if got := strings.TrimPrefix(sc.wire(), "EHLO client.example.test\r\n"); got != tt.wantWire {
				t.Errorf("wire = %q, want %q", got, tt.wantWire)
			}
			for _, secret := range []string{"AHVzZXIAc2VjcmV0", "c2VjcmV0", "dXNlcj11c2Vy", "dGltIGI5MTNh", "bixhPXVzZXIsAWF1dGg9"} {
				if strings.Contains(trace.String(), secret) {
					t.Errorf("trace shows a credential:\n%s", trace.String())
				}
			}
		})
	}
}

// stallServer accepts one connection, greets, answers EHLO with
// PIPELINING, reads the envelope, signals on gotMail and then says nothing.
func stallServer(t *testing.T) (addr string, gotMail <-chan struct{}) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		io.WriteString(conn, greeting)
		buf := make([]byte, 4096)
		conn.Read(buf) // EHLO
		io.WriteString(conn, ehloPipe)
		conn.Read(buf) // the pipelined envelope; then silence
		close(got)
		for {
			if _, err := conn.Read(buf); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return l.Addr().String(), got
}

func TestCloseDuringSend(t *testing.T) {
	addr, gotMail := stallServer(t)
	c, err := Dial(context.Background(), addr, Config{LocalName: "client.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		<-gotMail
		c.Close()
	}()
	_, err = c.Send(context.Background(), &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test")}, strings.NewReader("x"))
	if err == nil || Classify(err) != Retry || !c.Broken() {
		t.Fatalf("err = %v, broken %v; want a retryable error and a broken client", err, c.Broken())
	}
}

func TestContextCancel(t *testing.T) {
	addr, gotMail := stallServer(t)
	c, err := Dial(context.Background(), addr, Config{LocalName: "client.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-gotMail
		cancel()
	}()
	_, err = c.Send(ctx, &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test")}, strings.NewReader("x"))
	if !errors.Is(err, context.Canceled) || Classify(err) != Retry {
		t.Fatalf("err = %v, want context.Canceled, retry", err)
	}
	if !c.Broken() {
		t.Error("connection not broken after a cancelled step")
	}
}

func TestContextDeadline(t *testing.T) {
	addr, _ := stallServer(t)
	c, err := Dial(context.Background(), addr, Config{LocalName: "client.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The step timeouts are minutes; the ctx deadline must cut them short.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err = c.Send(ctx, &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test")}, strings.NewReader("x"))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || Classify(err) != Retry || !c.Broken() {
		t.Fatalf("err = %v, want a timeout, retry, broken", err)
	}
}

func TestTimeout(t *testing.T) {
	addr, _ := stallServer(t)
	c, err := Dial(context.Background(), addr,
		Config{LocalName: "client.example.test", Timeouts: Timeouts{Mail: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Send(context.Background(), &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test")}, strings.NewReader("x"))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !c.Broken() {
		t.Fatalf("err = %v, want a timeout and a broken connection", err)
	}
	c.Close()
}

func TestLineTooLong(t *testing.T) {
	c, sc := mustDial(t, greeting+ehloPipe+"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"+queued)
	body := "Subject: x\r\n\r\n" + strings.Repeat("a", 998) + "\r\n" + strings.Repeat("b", 999) + "\r\nend\r\n"
	_, err := c.Send(context.Background(), &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test")}, strings.NewReader(body))
	if !errors.Is(err, ErrLineTooLong) || Classify(err) != Bounce || !strings.Contains(err.Error(), "line 4") {
		t.Fatalf("err = %v (%v), want ErrLineTooLong on line 4, bounce", err, Classify(err))
	}
	if !sc.isClosed() || !c.Broken() {
		t.Error("connection not closed")
	}
	if w := sc.wire(); strings.Contains(w, "\r\n.\r\n") || strings.Contains(w, "end") {
		t.Errorf("the data was ended or went on: %q", w[len(w)-20:])
	}
}

func TestResetNoopQuit(t *testing.T) {
	c, sc := mustDial(t, greeting+ehloPipe+"250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n")
	ctx := context.Background()
	if err := c.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Noop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := sc.wire(); got != ehloLine+"RSET\r\nNOOP\r\nQUIT\r\n" || !sc.isClosed() {
		t.Errorf("wire = %q, closed %v", got, sc.isClosed())
	}
	if err := c.Noop(ctx); err == nil {
		t.Error("Noop after Quit succeeded")
	}
}

func TestCapsParsing(t *testing.T) {
	c, _ := mustDial(t, greeting+"250-mx.example.test Hello\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n"+
		"250-AUTH LOGIN PLAIN XOAUTH2\r\n250-AUTH=LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n"+
		"250-CHUNKING\r\n250-DSN\r\n250 SMTPUTF8\r\n")
	caps := c.Caps()
	if caps.Domain != "mx.example.test" || caps.Size != 35882577 || !caps.EightBitMIME || !caps.Pipelining ||
		!caps.Chunking || !caps.DSN || !caps.SMTPUTF8 || !caps.EnhancedStatusCodes || caps.StartTLS {
		t.Errorf("caps = %+v", caps)
	}
	if strings.Join(caps.Auth, " ") != "LOGIN PLAIN XOAUTH2" {
		t.Errorf("Auth = %q", caps.Auth)
	}
	if p, ok := caps.Extension("size"); !ok || p != "35882577" {
		t.Errorf("Extension(size) = %q, %v", p, ok)
	}
}

func TestTraceMasksAndSummarizes(t *testing.T) {
	var trace bytes.Buffer
	c, _, err := dialScript(t, greeting+ehloPipe+"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"+queued, Config{Trace: &trace})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Send(context.Background(), &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test")},
		strings.NewReader("secret body\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	tr := trace.String()
	for _, want := range []string{"S: 220 mx.example.test ESMTP\n", "C: EHLO client.example.test\n",
		"C: RCPT TO:<a@example.test>\n", "C: (message data: 13 octets, 1 lines)\n", "S: 250 2.0.0 Ok: queued as 1A2B\n"} {
		if !strings.Contains(tr, want) {
			t.Errorf("trace lacks %q:\n%s", want, tr)
		}
	}
	if strings.Contains(tr, "secret body") {
		t.Error("trace copies the message body")
	}
}
