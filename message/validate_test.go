package message

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestFallbacks(t *testing.T) {
	for _, tc := range []struct {
		tmpl string
		d    Data
		want string
	}{
		{`{{or .Name "friend"}}`, Data{}, "friend"},
		{`{{or .Name "friend"}}`, Data{Name: "Ann"}, "Ann"},
		{`{{.Name | default "friend"}}`, Data{}, "friend"},
		{`{{.Name | default "friend"}}`, Data{Name: "Ann"}, "Ann"},
		{`{{.Attrs.city | default "your city"}}`, Data{}, "your city"},
		{`{{.Attrs.city | default "your city"}}`, Data{Attrs: map[string]string{"city": "Oslo"}}, "Oslo"},
		{`[{{.Attrs.missing}}]`, Data{Attrs: map[string]string{"city": "Oslo"}}, "[]"},
		{`{{index .Attrs "plan" | default "free"}}`, Data{}, "free"},
		{`{{.ContactID | default 7}}`, Data{}, "7"},
	} {
		tmpl, err := Parse(Content{From: "a@example.test", Subject: "s", Text: tc.tmpl})
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.tmpl, err)
		}
		var b strings.Builder
		if err := tmpl.text.Execute(&b, mustView(t, tmpl, &tc.d)); err != nil {
			t.Fatalf("%q: %v", tc.tmpl, err)
		}
		if b.String() != tc.want {
			t.Errorf("%q with %+v = %q, want %q", tc.tmpl, tc.d, b.String(), tc.want)
		}
	}
}

// TestValidateNamesTheProblem: errors found by Validate name the template,
// the line and the field or function, so the operator can fix them at
// campaign creation.
func TestValidateNamesTheProblem(t *testing.T) {
	for _, tc := range []struct {
		name     string
		c        Content
		parseErr bool
		want     []string
	}{
		{"unknown field in subject", Content{Subject: "Hi {{.Nmae}}", Text: "x"}, false,
			[]string{"subject:1:", ".Nmae", "sample 1"}},
		{"unknown field on line 3 of HTML", Content{Subject: "s", HTML: "<p>\n<b>\n{{.Emial}}</b>"}, false,
			[]string{"html:3:", ".Emial"}},
		{"fails only for an empty contact", Content{Subject: "s", Text: "{{index .Attrs \"city\" | len | printf \"%d\"}} {{slice .Name 0 1}}"}, false,
			[]string{"text:1:", "sample 2", "empty@example.test"}},
		{"syntax error", Content{Subject: "s", Text: "line1\n{{if .Name}}unclosed"}, true,
			[]string{"text:2:", "unexpected EOF"}},
		{"unknown function", Content{Subject: "{{upcase .Name}}", Text: "x"}, true,
			[]string{"subject:1:", "upcase"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.From = "news@example.test"
			tmpl, err := Parse(tc.c)
			if tc.parseErr {
				if err == nil {
					t.Fatal("Parse succeeded")
				}
			} else {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				err = tmpl.Validate(nil)
				if err == nil {
					t.Fatal("Validate succeeded")
				}
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestValidateAcceptsGoodTemplates(t *testing.T) {
	tmpl, err := Parse(Content{From: "news@example.test", Subject: "Hi {{.Name | default \"friend\"}}",
		Text: "{{with .Attrs.city}}From {{.}}{{end}}", HTML: `<a href="{{.UnsubscribeURL}}">unsubscribe</a>`,
		Unsubscribe: Unsubscribe{BaseURL: "https://news.example.test/u", OneClick: true, Key: testUnsubKey}})
	if err != nil {
		t.Fatal(err)
	}
	if err := tmpl.Validate([]Data{{Email: "ann@example.test", Name: "Ann"}, {Email: "x@example.test"}}); err != nil {
		t.Fatal(err)
	}
}

func TestPersonalizedByUnsubscribe(t *testing.T) {
	for _, tc := range []struct {
		name string
		text string
		u    Unsubscribe
		want bool
	}{
		{"list-level link in body", "{{.UnsubscribeURL}}", Unsubscribe{Mailto: "u@example.test"}, false},
		{"list-level link via $", "{{$.UnsubscribeURL}}", Unsubscribe{Mailto: "u@example.test"}, false},
		{"one-click, no data in templates", "same", Unsubscribe{BaseURL: "https://n.example.test/u", OneClick: true, Key: testUnsubKey}, true},
		{"list-level plus a field", "{{.UnsubscribeURL}} {{.Name}}", Unsubscribe{Mailto: "u@example.test"}, true},
	} {
		tmpl, err := Parse(Content{From: "a@example.test", Subject: "s", Text: tc.text, Unsubscribe: tc.u})
		if err != nil {
			t.Fatal(err)
		}
		if got := tmpl.Personalized(); got != tc.want {
			t.Errorf("%s: Personalized() = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestSharedBuildsOnce(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tmpl, err := Parse(Content{From: "a@example.test", Subject: "Alert", Text: "Same for all",
		DKIM: &DKIM{Domain: "example.test", Selector: "s1", Key: testEd25519Key(t)}},
		WithNowFunc(func() time.Time { return now }), WithSharedMaxAge(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	first, err := tmpl.Shared("alerts:;")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Release()
	again, _ := tmpl.Shared("alerts:;")
	defer again.Release()
	if first != again {
		t.Error("second Shared call built a new message")
	}
	now = now.Add(time.Hour)
	later, _ := tmpl.Shared("alerts:;")
	defer later.Release()
	a, _ := first.Bytes()
	b, _ := later.Bytes()
	if bytes.Equal(a, b) {
		t.Error("Shared reused a message past its max age")
	}
	if _, err := tmpl.Shared("bad group\r\n:;"); err == nil {
		t.Error("Shared accepted a group name with CR LF")
	}
	p, _ := Parse(Content{From: "a@example.test", Subject: "Hi {{.Name}}", Text: "x"})
	if _, err := p.Shared("all:;"); err == nil {
		t.Error("Shared accepted a personalized template")
	}
}

func mustView(t *testing.T, tmpl *Template, d *Data) *view {
	t.Helper()
	v, err := tmpl.view(d)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
