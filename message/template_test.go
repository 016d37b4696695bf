package message

import (
	"bytes"
	"strings"
	"testing"

	"github.com/emersion/go-message/mail"
)

func TestPersonalized(t *testing.T) {
	for _, tc := range []struct {
		subject, text string
		want          bool
	}{
		{"Hello", "Same for all", false},
		{"Hello {{.Name}}", "x", true},
		{"Hello", "{{if .Attrs.vip}}VIP{{end}}", true},
		{"Hello", `{{with $x := "a"}}{{$x}}{{end}}`, false},
		{"Hello", "{{$.Email}}", true},
		{"Hello", "{{ . }}", true},
	} {
		tmpl, err := Parse(Content{From: "a@example.test", Subject: tc.subject, Text: tc.text})
		if err != nil {
			t.Fatalf("Parse(%q, %q): %v", tc.subject, tc.text, err)
		}
		if got := tmpl.Personalized(); got != tc.want {
			t.Errorf("Personalized(%q, %q) = %v, want %v", tc.subject, tc.text, got, tc.want)
		}
	}
}

func TestRenderReadsBack(t *testing.T) {
	tmpl, err := Parse(Content{
		From:    "News <news@example.test>",
		Subject: "Hi {{.Name}} – news",
		Text:    "Dear {{or .Name \"friend\"}} from {{.Attrs.city}}",
		HTML:    "<p>Dear {{.Name}}</p>",
	})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tmpl.Render(&buf, "ann@example.test", &Data{Email: "ann@example.test", Name: "Ann <b>", Attrs: map[string]string{"city": "Oslo"}}); err != nil {
		t.Fatal(err)
	}
	mr, err := mail.CreateReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	subj, _ := mr.Header.Subject()
	if subj != "Hi Ann <b> – news" {
		t.Errorf("subject = %q", subj)
	}
	var parts []string
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		b := new(bytes.Buffer)
		b.ReadFrom(p.Body)
		parts = append(parts, b.String())
	}
	if len(parts) != 2 || !strings.Contains(parts[0], "Dear Ann <b> from Oslo") || !strings.Contains(parts[1], "Dear Ann &lt;b&gt;") {
		t.Errorf("parts = %q", parts)
	}
}

func TestRenderRejectsHeaderInjection(t *testing.T) {
	tmpl, err := Parse(Content{From: "a@example.test", Subject: "Hi {{.Name}}", Text: "x"})
	if err != nil {
		t.Fatal(err)
	}
	err = tmpl.Render(new(bytes.Buffer), "b@example.test", &Data{Email: "b@example.test", Name: "x\r\nBcc: victim@example.test"})
	if err == nil {
		t.Fatal("Render passed a CR LF from contact data into a header")
	}
}
