package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river/rivertype"

	"github.com/blaster-mail/blaster/smtp"
)

func TestConnectionLost(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"admin shutdown", &pgconn.PgError{Code: "57P01"}, true},
		{"cannot connect now", fmt.Errorf("acquiring: %w", &pgconn.PgError{Code: "57P03"}), true},
		{"connection failure", &pgconn.PgError{Code: "08006"}, true},
		{"network", fmt.Errorf("writing: %w", &net.OpError{Op: "write", Net: "tcp", Err: syscall.ECONNRESET}), true},
		{"refused", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), true},
		{"eof", fmt.Errorf("reading: %w", io.ErrUnexpectedEOF), true},
		{"conn closed", fmt.Errorf("exec: %w", pgconn.ErrConnClosed), true},
		{"unique violation", &pgconn.PgError{Code: "23505"}, false},
		{"cancelled", fmt.Errorf("x: %w", context.Canceled), false},
		{"no rows", pgx.ErrNoRows, false},
		{"job gone", fmt.Errorf("completing job 7: %w", rivertype.ErrNotFound), false},
		{"job not running", errors.New("job 7 is retryable, not running: outcomes of this run discarded"), false},
	} {
		if got := connectionLost(tt.err); got != tt.want {
			t.Errorf("%s: connectionLost(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

// TestRetryDBStatementError: a statement that fails for a reason other than
// a lost database is not retried for DBRetry (recordTx's "job is not
// running" used to hold the batch, its connection slot and a database
// connection for a minute, retrying every second).
func TestRetryDBStatementError(t *testing.T) {
	w := &sendWorker{dbRetry: 3 * time.Second, logger: slog.New(slog.DiscardHandler)}
	calls := 0
	want := errors.New("job 7 is retryable, not running: outcomes of this run discarded")
	began := time.Now()
	err := w.retryDB(context.Background(), func(context.Context) error { calls++; return want })
	if !errors.Is(err, want) || calls != 1 {
		t.Fatalf("retryDB = %v after %d calls in %s, want the error after 1 call", err, calls, time.Since(began))
	}
}

func TestSameOutcome(t *testing.T) {
	t1 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	t2 := t1.Add(time.Second)
	ok250 := &smtp.Reply{Code: 250, Text: "ok"}
	for _, tt := range []struct {
		name string
		outs []outcome
		same bool
	}{
		{"none", nil, true},
		{"one", []outcome{{contactID: 1, state: "sent", reply: ok250}}, true},
		{"one DATA reply", []outcome{{contactID: 1, state: "sent", reply: ok250}, {contactID: 2, state: "sent", reply: ok250}}, true},
		{"equal replies", []outcome{{contactID: 1, state: "sent", reply: ok250}, {contactID: 2, state: "sent", reply: &smtp.Reply{Code: 250, Text: "ok"}}}, true},
		{"reply text", []outcome{{contactID: 1, state: "sent", reply: ok250}, {contactID: 2, state: "sent", reply: &smtp.Reply{Code: 250, Text: "ok2"}}}, false},
		{"state", []outcome{{contactID: 1, state: "sent", reply: ok250}, {contactID: 2, state: "bounced", reply: ok250}}, false},
		{"nil reply", []outcome{{contactID: 1, state: "deferred", reply: ok250}, {contactID: 2, state: "deferred"}}, false},
		{"next equal", []outcome{{contactID: 1, state: "deferred", next: &t1}, {contactID: 2, state: "deferred", next: &t1}}, true},
		{"next differs", []outcome{{contactID: 1, state: "deferred", next: &t1}, {contactID: 2, state: "deferred", next: &t2}}, false},
		{"next nil", []outcome{{contactID: 1, state: "deferred", next: &t1}, {contactID: 2, state: "deferred"}}, false},
		{"ambiguous", []outcome{{contactID: 1, state: "sent", ambiguous: true}, {contactID: 2, state: "sent"}}, false},
		{"errText", []outcome{{contactID: 1, state: "deferred", errText: "a"}, {contactID: 2, state: "deferred", errText: "b"}}, false},
	} {
		if _, got := sameOutcome(tt.outs); got != tt.same {
			t.Errorf("%s: sameOutcome = %v, want %v", tt.name, got, tt.same)
		}
	}
}
