package message

import (
	"bytes"
	"crypto"
	"fmt"
	"strings"
	"testing"
	"time"
)

// benchHTML is a ~10 KB newsletter with merge fields spread through it.
func benchHTML() string {
	var b strings.Builder
	b.WriteString(`<!doctype html><html><body><h1>Hello {{.Name | default "friend"}}</h1>` + "\n")
	for i := 0; b.Len() < 10<<10; i++ {
		fmt.Fprintf(&b, `<p class="para">Paragraph %d for {{.Name}} in {{.Attrs.city}}: Lorem ipsum dolor sit amet, `+
			`consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua.</p>`+"\n", i)
	}
	b.WriteString(`<p><a href="{{.UnsubscribeURL}}">Unsubscribe</a></p></body></html>`)
	return b.String()
}

// benchRenderSign renders one personalized 10 KB HTML message per
// iteration, the way the send worker does for each recipient, and signs
// it with key unless key is nil.
func benchRenderSign(b *testing.B, key crypto.Signer) {
	c := Content{
		From:        "News <news@example.test>",
		Subject:     "{{.Name}}, your news from {{.Attrs.city}}",
		HTML:        benchHTML(),
		Unsubscribe: Unsubscribe{BaseURL: "https://news.example.test/u", Mailto: "unsub@example.test", OneClick: true, Key: testUnsubKey},
	}
	if key != nil {
		c.DKIM = &DKIM{Domain: "example.test", Selector: "s1", Key: key}
	}
	tmpl, err := Parse(c)
	if err != nil {
		b.Fatal(err)
	}
	d := &Data{Email: "ann@example.test", Name: "Ann Example", Attrs: map[string]string{"city": "Oslo"}, CampaignID: 1, ContactID: 1}
	var buf bytes.Buffer
	if err := tmpl.Render(&buf, d.Email, d); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(buf.Len()))
	b.ReportAllocs()
	n, cpu0 := 0, cpuTime()
	for b.Loop() {
		n++
		buf.Reset()
		d.ContactID = int64(n)
		if err := tmpl.Render(&buf, d.Email, d); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, n, cpuTime()-cpu0)
}

// reportCPU adds the CPU time per message and its inverse, messages per
// CPU-second: the per-core throughput, which wall time overstates when the
// machine is busy with other work.
func reportCPU(b *testing.B, n int, cpu time.Duration) {
	if cpu <= 0 || n == 0 {
		return
	}
	perOp := float64(cpu.Nanoseconds()) / float64(n)
	b.ReportMetric(perOp, "cpu-ns/op")
	b.ReportMetric(1e9/perOp, "msgs/cpu-s")
}

func BenchmarkRenderSignRSA(b *testing.B)     { benchRenderSign(b, testRSAKey(b)) }
func BenchmarkRenderSignEd25519(b *testing.B) { benchRenderSign(b, testEd25519Key(b)) }

// BenchmarkRender is the same message unsigned, to show what signing costs.
func BenchmarkRender(b *testing.B) { benchRenderSign(b, nil) }
