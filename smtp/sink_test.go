package smtp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/blaster-mail/blaster/internal/smtptest"
)

// startSink runs Postfix's smtp-sink with the given fault-injection flags
// and returns its address.
func startSink(t testing.TB, flags ...string) string {
	t.Helper()
	return smtptest.RunSmtpSink(t, smtptest.SmtpSinkOptions{Flags: flags}).Addr
}

func dialSink(t testing.TB, addr string) (*Client, error) {
	return Dial(context.Background(), addr, Config{LocalName: "client.example.test", TLS: TLSNone})
}

// TestSinkDump sends through smtp-sink with its dump option and reads what
// it received: an independent check of the wire format.
func TestSinkDump(t *testing.T) {
	sink := smtptest.RunSmtpSink(t, smtptest.SmtpSinkOptions{Dump: true})
	addr := sink.Addr
	c, err := dialSink(t, addr)
	if err != nil {
		t.Fatal(err)
	}
	caps := c.Caps()
	if !caps.Pipelining || !caps.DSN || !caps.EightBitMIME {
		t.Errorf("smtp-sink caps = %+v", caps)
	}
	env := &Envelope{From: "news@example.test", EightBit: true, Ret: "HDRS", EnvID: "c1+r2",
		Rcpts: []Recipient{{Addr: "a@example.test", Notify: []string{"FAILURE"}, ORcpt: "a@example.test"}, {Addr: "b@example.test"}}}
	body := "Subject: x\n\n.dot\nsmuggle\n.\nMAIL FROM:<evil@example.test>\r\n.\r\nend"
	res, err := c.Send(context.Background(), env, strings.NewReader(body))
	if err != nil || res.Accepted() != 2 || !res.Data.Positive() {
		t.Fatalf("Send = %+v, %v", res, err)
	}
	if err := c.Quit(context.Background()); err != nil {
		t.Fatalf("Quit: %v", err)
	}
	// smtp-sink writes the dump as the "." arrives; Quit returned after
	// its reply, so the file is complete.
	dump, err := os.ReadFile(sink.Dump)
	if err != nil {
		t.Fatal(err)
	}
	d := string(dump)
	for _, want := range []string{
		"X-Mail-Args: <news@example.test> BODY=8BITMIME RET=HDRS ENVID=c1+2Br2\n",
		"X-Rcpt-Args: <a@example.test> NOTIFY=FAILURE ORCPT=rfc822;a@example.test\n",
		"X-Rcpt-Args: <b@example.test>\n",
		"Subject: x\n\n.dot\nsmuggle\n.\nMAIL FROM:<evil@example.test>\n.\nend\n",
	} {
		if !strings.Contains(d, want) {
			t.Errorf("dump lacks %q:\n%s", want, d)
		}
	}
	if n := strings.Count(d, "X-Mail-Args:"); n != 1 {
		t.Errorf("smtp-sink saw %d transactions, want 1 (smuggling?)", n)
	}
}

// TestSinkFaults drives smtp-sink's fault injection: soft (-r) and hard
// (-f) rejects of each command, 421 and disconnect (-Q, -q), no
// PIPELINING (-p), no ESMTP (-e).
func TestSinkFaults(t *testing.T) {
	tests := []struct {
		flags      []string
		dialOp     string  // Dial fails at this step
		permanent  bool    // ... permanently
		want       Outcome // for each recipient
		broken     bool
		dataReply  int // expected Result.Data code, 0: nil
		pipelining bool
	}{
		{flags: nil, want: Sent, dataReply: 250, pipelining: true},
		{flags: []string{"-p"}, want: Sent, dataReply: 250},
		{flags: []string{"-e"}, want: Sent, dataReply: 250},
		{flags: []string{"-f", "CONNECT"}, dialOp: "greeting", permanent: true},
		{flags: []string{"-r", "CONNECT"}, dialOp: "greeting"},
		{flags: []string{"-Q", "EHLO"}, dialOp: "EHLO"},
		{flags: []string{"-f", "MAIL"}, want: Bounce},
		{flags: []string{"-r", "MAIL"}, want: Retry},
		{flags: []string{"-f", "RCPT"}, want: Bounce},
		{flags: []string{"-r", "RCPT"}, want: Retry},
		{flags: []string{"-f", "DATA"}, want: Bounce},
		{flags: []string{"-r", "DATA"}, want: Retry},
		{flags: []string{"-f", "."}, want: Bounce, dataReply: 500},
		{flags: []string{"-r", "."}, want: Retry, dataReply: 450},
		{flags: []string{"-Q", "MAIL"}, want: Retry, broken: true, pipelining: true},
		{flags: []string{"-Q", "RCPT"}, want: Retry, broken: true, pipelining: true},
		{flags: []string{"-Q", "."}, want: Retry, broken: true, dataReply: 421, pipelining: true},
		{flags: []string{"-q", "MAIL"}, want: Retry, broken: true, pipelining: true},
		{flags: []string{"-q", "DATA"}, want: Retry, broken: true, pipelining: true},
		{flags: []string{"-q", "."}, want: Unknown, broken: true, pipelining: true},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.flags, " "), func(t *testing.T) {
			addr := startSink(t, tt.flags...)
			c, err := dialSink(t, addr)
			if tt.dialOp != "" {
				var re *RouteError
				if !errors.As(err, &re) || re.Op != tt.dialOp || re.Permanent != tt.permanent || Classify(err) != Retry {
					t.Fatalf("Dial err = %v, want RouteError at %s, permanent %v", err, tt.dialOp, tt.permanent)
				}
				return
			}
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer c.Close()
			if c.Caps().Pipelining != tt.pipelining {
				t.Errorf("Pipelining = %v, want %v", c.Caps().Pipelining, tt.pipelining)
			}
			env := &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test", "b@example.test")}
			res, err := c.Send(context.Background(), env, strings.NewReader("Subject: x\r\n\r\nbody\r\n"))
			for i := range env.Rcpts {
				if o, r := res.Outcome(i, err); o != tt.want {
					t.Errorf("recipient %d: %v (%v, err %v), want %v", i, o, r, err, tt.want)
				}
			}
			if c.Broken() != tt.broken {
				t.Errorf("Broken = %v, want %v (err %v)", c.Broken(), tt.broken, err)
			}
			if (res.Data == nil && tt.dataReply != 0) || (res.Data != nil && res.Data.Code != tt.dataReply) {
				t.Errorf("Data = %v, want %d", res.Data, tt.dataReply)
			}
			if !c.Broken() {
				if err := c.Noop(context.Background()); err != nil {
					t.Errorf("connection not reusable: %v", err)
				}
			}
		})
	}
}

// benchBody is a 10 KB message body: 128 lines of 80 octets.
var benchBody = bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n"), 128)

func benchEnvelope(n int) *Envelope {
	env := &Envelope{From: "bench@example.test", Size: int64(len(benchBody))}
	for i := 0; i < n; i++ {
		env.Rcpts = append(env.Rcpts, Recipient{Addr: fmt.Sprintf("r%d@example.test", i)})
	}
	return env
}

// BenchmarkSendParallel is BenchmarkSend over 16 connections at once, the
// setting of the comparison with Postfix's smtp-source (-s 16).
func BenchmarkSendParallel(b *testing.B) {
	const conns = 16
	addr := startSink(b)
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("conns=%d/rcpts=%d", conns, n), func(b *testing.B) {
			procs := runtime.GOMAXPROCS(0)
			b.SetParallelism((conns + procs - 1) / procs)
			b.SetBytes(int64(len(benchBody)))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				c, err := dialSink(b, addr)
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Quit(context.Background())
				env := benchEnvelope(n)
				rd := bytes.NewReader(benchBody)
				for pb.Next() {
					rd.Reset(benchBody)
					if res, err := c.Send(context.Background(), env, rd); err != nil || res.Accepted() != n {
						b.Errorf("Send: %v", err)
						return
					}
				}
			})
			s := b.Elapsed().Seconds()
			b.ReportMetric(float64(b.N)/s, "msgs/s")
			b.ReportMetric(float64(b.N*n)/s, "rcpts/s")
		})
	}
}

// BenchmarkSend measures transactions against smtp-sink on loopback with
// a 10 KB message over one connection: messages/s at 1 recipient and
// recipients/s at 100 (where pipelining pays).
func BenchmarkSend(b *testing.B) {
	addr := startSink(b)
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("rcpts=%d", n), func(b *testing.B) {
			c, err := dialSink(b, addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Quit(context.Background())
			env := benchEnvelope(n)
			ctx := context.Background()
			rd := bytes.NewReader(benchBody)
			b.SetBytes(int64(len(benchBody)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				rd.Reset(benchBody)
				res, err := c.Send(ctx, env, rd)
				if err != nil || res.Accepted() != n {
					b.Fatalf("Send: %v", err)
				}
			}
			b.StopTimer()
			s := b.Elapsed().Seconds()
			b.ReportMetric(float64(b.N)/s, "msgs/s")
			b.ReportMetric(float64(b.N*n)/s, "rcpts/s")
		})
	}
}

// TestSinkAbortDuringData: smtp-sink -A 0 answers DATA with 354, then at
// once 550 and closes while the client is still writing a 5 MB body. The
// client reports the server's 550, not the bare write error.
func TestSinkAbortDuringData(t *testing.T) {
	addr := startSink(t, "-A", "0")
	c, err := dialSink(t, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	env := &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test")}
	res, err := c.Send(context.Background(), env, newLineSource(5<<20))
	var se *Error
	if !errors.As(err, &se) || se.Code != 550 || res.Data == nil || res.Data.Code != 550 {
		t.Fatalf("Send = %+v, %v; want the server's 550", res, err)
	}
	if o, _ := res.Outcome(0, err); o != Bounce || !c.Broken() {
		t.Errorf("outcome %v, broken %v; want bounce, broken", o, c.Broken())
	}
}

// TestSinkMemoryFlat sends 1 MB and 50 MB bodies to smtp-sink (another
// process, so every allocation counted here is the client's) and checks
// the client allocates no more for the larger one: memory stays flat as
// the message grows.
func TestSinkMemoryFlat(t *testing.T) {
	addr := startSink(t)
	c, err := dialSink(t, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	env := &Envelope{From: "n@example.test", Rcpts: rcpts("a@example.test")}
	if _, err := c.Send(context.Background(), env, strings.NewReader("warm up")); err != nil {
		t.Fatal(err)
	}
	const limit = 64 << 10 // far below either body
	for _, size := range []int64{1 << 20, 50 << 20} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		if _, err := c.Send(context.Background(), env, newLineSource(size)); err != nil {
			t.Fatalf("Send %d octets: %v", size, err)
		}
		runtime.ReadMemStats(&after)
		alloc := after.TotalAlloc - before.TotalAlloc
		t.Logf("%d MB body: %d octets allocated", size>>20, alloc)
		if alloc > limit {
			t.Errorf("%d MB body: %d octets allocated, want at most %d", size>>20, alloc, limit)
		}
	}
}
