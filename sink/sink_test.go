package sink_test

import (
	"net/smtp"
	"testing"

	"github.com/blaster-mail/blaster/sink"
)

// TestTimeline: every accepted recipient is counted in the second it was
// accepted, and the seconds are contiguous.
func TestTimeline(t *testing.T) {
	s := sink.New(sink.Config{Timeline: true})
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	msg := []byte("Subject: t\r\n\r\nbody\r\n")
	for i := range 3 {
		to := []string{"a@example.test", "b@example.test"}[:i%2+1]
		if err := smtp.SendMail(s.Addr(), nil, "from@example.test", to, msg); err != nil {
			t.Fatal(err)
		}
	}
	tl := s.Timeline()
	var total int64
	for i, sec := range tl {
		total += sec.Recipients
		if i > 0 && sec.Unix != tl[i-1].Unix+1 {
			t.Fatalf("timeline not contiguous: %+v", tl)
		}
	}
	if total != 4 || s.Stats().Recipients != 4 {
		t.Fatalf("timeline %+v counts %d recipients, stats %+v; want 4", tl, total, s.Stats())
	}
}
