package worker_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/internal/dbtest"
	"github.com/blaster-mail/blaster/internal/smtptest"
	"github.com/blaster-mail/blaster/worker"
)

// randomFile writes size random bytes to dir/name and returns them.
func randomFile(t *testing.T, dir, name string, size int) []byte {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// spoolWorker runs a worker whose spool directory is made under spool.
func spoolWorker(t *testing.T, pool *pgxpool.Pool, addr, spool string, over int) *worker.Worker {
	t.Helper()
	w, err := worker.New(worker.Config{Pool: pool, Transport: relayTransport(t, addr), FetchInterval: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), SpoolDir: spool, SpoolOver: over})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return w
}

func stopWorker(t *testing.T, w *worker.Worker) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Stop(ctx); err != nil {
		t.Fatalf("stopping worker: %v", err)
	}
}

// attachments parses msg with go-message and returns its attachments'
// contents by file name, with their media types.
func attachments(t *testing.T, msg string) (map[string][]byte, map[string]string) {
	t.Helper()
	mr, err := mail.CreateReader(strings.NewReader(msg))
	if err != nil {
		t.Fatalf("message does not parse: %v", err)
	}
	files, types := map[string][]byte{}, map[string]string{}
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading part: %v", err)
		}
		ah, ok := p.Header.(*mail.AttachmentHeader)
		if !ok {
			continue
		}
		name, err := ah.Filename()
		if err != nil {
			t.Fatalf("attachment file name: %v", err)
		}
		if files[name], err = io.ReadAll(p.Body); err != nil {
			t.Fatalf("reading attachment %s: %v", name, err)
		}
		types[name], _, _ = ah.ContentType()
	}
	return files, types
}

// TestAttachmentCampaign: a campaign's attachments are stored at create
// time (the operator's files may go away at once), copied into the
// worker's spool directory, and arrive intact at the server, for a
// personalized campaign (each message spooled past a small threshold) and a
// same-for-all one; the spool directory is gone after Stop.
func TestAttachmentCampaign(t *testing.T) {
	for _, personalized := range []bool{true, false} {
		t.Run(map[bool]string{true: "personalized", false: "shared"}[personalized], func(t *testing.T) {
			pool := dbtest.Pool(t)
			emails := seedList(t, pool, "news", 6)
			src := t.TempDir()
			pdf := randomFile(t, src, "Jahresbericht für 2026.pdf", 300<<10)
			data := randomFile(t, src, "data", 5000)
			text := "Hello all\n"
			if personalized {
				text = "Hello {{.Name}}\n"
			}
			c, err := campaign.Create(context.Background(), pool, campaign.New{Name: "attach", List: "news",
				From: "News <news@sender.example.test>", Subject: "Report", Text: text,
				Attachments: []string{filepath.Join(src, "Jahresbericht für 2026.pdf"), filepath.Join(src, "data")}})
			if err != nil {
				t.Fatal(err)
			}
			if err := os.RemoveAll(src); err != nil { // stored: the worker needs no file of the operator's
				t.Fatal(err)
			}
			files, err := campaign.Files(context.Background(), pool, c.ID)
			if err != nil || len(files) != 2 || files[0].MediaType != "application/pdf" || files[1].MediaType != "application/octet-stream" {
				t.Fatalf("stored files %+v, %v", files, err)
			}

			srv := smtptest.StartServer(t, smtptest.Options{})
			spool := t.TempDir()
			w := spoolWorker(t, pool, srv.Addr, spool, 64<<10)
			start(t, pool, c.ID)
			if st := waitDone(t, pool, c.ID); st.Sent != len(emails) {
				t.Fatalf("status %+v, want %d sent", st, len(emails))
			}
			stopWorker(t, w)
			if ents, _ := os.ReadDir(spool); len(ents) != 0 {
				t.Errorf("%d entries left in the spool directory after Stop", len(ents))
			}

			rcpts := 0
			for _, m := range srv.Messages() {
				rcpts += len(m.Rcpts)
				got, types := attachments(t, m.Body)
				if !bytes.Equal(got["Jahresbericht für 2026.pdf"], pdf) || !bytes.Equal(got["data"], data) {
					t.Fatalf("message to %v: attachments %d, %d bytes; want %d, %d bytes, intact",
						m.Rcpts, len(got["Jahresbericht für 2026.pdf"]), len(got["data"]), len(pdf), len(data))
				}
				if types["Jahresbericht für 2026.pdf"] != "application/pdf" {
					t.Errorf("PDF sent as %q", types["Jahresbericht für 2026.pdf"])
				}
				if !strings.Contains(m.Body, "filename*=utf-8''Jahresbericht%20f%C3%BCr%202026.pdf") {
					t.Error("non-ASCII file name not RFC 2231 encoded")
				}
				if m.Size <= 64<<10 {
					t.Errorf("message of %d bytes: the test wants it past the spool threshold", m.Size)
				}
			}
			if rcpts != len(emails) {
				t.Errorf("server got %d recipients, want %d", rcpts, len(emails))
			}
		})
	}
}

// TestAttachmentsChecked: create refuses what no worker could send.
func TestAttachmentsChecked(t *testing.T) {
	pool := dbtest.Pool(t)
	seedList(t, pool, "news", 1)
	dir := t.TempDir()
	big := filepath.Join(dir, "big.bin")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(campaign.MaxAttachmentBytes + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, tc := range []struct{ path, want string }{
		{dir, "not a regular file"},
		{filepath.Join(dir, "missing.pdf"), "no such file"},
		{big, "more than the 26214400 allowed"},
		{"/dev/null", "not a regular file"},
	} {
		_, err := campaign.Create(context.Background(), pool, campaign.New{Name: "x", List: "news",
			From: "a@sender.example.test", Subject: "s", Text: "t", Attachments: []string{tc.path}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("attachment %s: error %v, want %q", tc.path, err, tc.want)
		}
	}
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM campaigns").Scan(&n); err != nil || n != 0 {
		t.Errorf("%d campaigns created by refused attachments (%v)", n, err)
	}
}

// TestAttachmentCampaignMemoryFlat: a same-for-all campaign with a 20 MB
// attachment goes to 16 recipients in 16 batches at once; the message is
// built once into a spool file that every transaction streams from, so the
// worker's live heap grows by less than half a copy of the message, let
// alone 16 (a message held in memory would be one whole copy at least).
// (go test ./worker -run MemoryFlat)
func TestAttachmentCampaignMemoryFlat(t *testing.T) {
	if raceEnabled {
		t.Skip("a memory budget of 430 MiB streamed: not under the race detector")
	}
	const size = 20 << 20
	pool := dbtest.Pool(t)
	emails := seedList(t, pool, "news", 16)
	src := t.TempDir()
	randomFile(t, src, "big.bin", size)
	c, err := campaign.Create(context.Background(), pool, campaign.New{Name: "big", List: "news",
		From: "News <news@sender.example.test>", Subject: "Big", Text: "Same for all\n",
		Settings: campaign.Settings{MaxRcpt: 1}, Attachments: []string{filepath.Join(src, "big.bin")}})
	if err != nil {
		t.Fatal(err)
	}
	srv := smtptest.StartServer(t, smtptest.Options{DiscardBodies: true})

	// Sample the live heap (after a collection) while the campaign goes out.
	var base runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&base)
	peak := base.HeapAlloc
	stop, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			var m runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapAlloc)
		}
	}()
	w := spoolWorker(t, pool, srv.Addr, t.TempDir(), 0)
	start(t, pool, c.ID)
	st := waitDone(t, pool, c.ID)
	close(stop)
	<-sampled
	stopWorker(t, w)
	if st.Sent != len(emails) {
		t.Fatalf("status %+v, want %d sent", st, len(emails))
	}
	msgs := srv.Messages()
	if len(msgs) != len(emails) || msgs[0].Size < size*4/3 {
		t.Fatalf("server got %d messages (the first %d bytes), want %d of at least %d", len(msgs), msgs[0].Size, len(emails), size*4/3)
	}
	growth := int64(peak) - int64(base.HeapAlloc)
	t.Logf("%d transactions of a %d MB message: live heap grew by %d KB at most", len(msgs), msgs[0].Size>>20, growth>>10)
	if growth > msgs[0].Size/2 {
		t.Errorf("live heap grew by %d bytes sending a %d byte message: it is held in memory", growth, msgs[0].Size)
	}
}
