package message

import (
	"bytes"
	htmltemplate "html/template"
	"strings"
	"testing"
)

// planTemplates are HTML bodies in the contexts a newsletter uses, and
// some that must leave the template without a plan.
var planTemplates = []struct {
	src  string
	plan bool
}{
	{benchHTML(), true},
	{`<p>Hello {{.Name}}</p>`, true},
	{`{{.Name}}`, true},
	{`plain text, no action`, true},
	{`<a href="{{.UnsubscribeURL}}">x</a><a href='{{.UnsubscribeURL}}'>y</a><a href={{.UnsubscribeURL}}>z</a>`, true},
	{`<a href="https://news.example.test/r?e={{.Email}}&amp;n={{.Name}}#{{.Attrs.city}}">x</a>`, true},
	{`<a href="https://news.example.test/{{.Attrs.city}}/x">x</a>`, true},
	{`<img alt="{{.Name}}" title='{{.Name}}' data-x={{.Name}}>`, true},
	{`<p>{{.Name | default "friend"}}, {{or .Attrs.city "your city"}} {{index .Attrs "city"}} {{printf "%q" .Name}} {{len .Name}} {{.ContactID}}</p>`, true},
	{`<script>var n = {{.Name}}; var s = "{{.Name}}"; var t = '{{.Attrs.city}}';</script>`, true},
	{`<p onclick="f({{.Name}})" style="color: {{.Attrs.color}}">x</p>`, true},
	{`<style>p { color: {{.Attrs.color}} }</style>`, true},
	{`<!-- a comment {{.Name}} --><p>{{.Name}}</p>`, true},
	{`<p>{{.Name | html}}</p>`, false}, // a predefined escaper: no _html_template_ one to match
	{`<textarea>{{.Name}}</textarea><title>{{.Name}}</title>`, true},
	{"<pre>\n{{.Name}}\n</pre>\n<p>{{.Attrs.city}}</p>\n", true},
	{`{{if .Name}}<p>{{.Name}}</p>{{end}}`, false},
	{`{{range $k, $v := .Attrs}}{{$k}}={{$v}}{{end}}`, false},
	{`{{$n := .Name}}<p>{{$n}}</p>`, false},
	{`{{define "x"}}{{.}}{{end}}<p>{{template "x" .Name}}</p>`, false},
	{`<p {{.Attrs.attr}}="x">`, false},
	{`<p>{{.Nmae}}</p>`, true},
}

var planData = []*Data{
	{},
	{Email: "ann@example.test", Name: "Ann Example", Attrs: map[string]string{"city": "Oslo", "color": "red", "attr": "title"}, CampaignID: 1, ContactID: 2},
	{Email: "\"a&b\"@example.test", Name: `<script>alert("x")</script> & 'q' + é ü 日本 \ / `, Attrs: map[string]string{"city": "javascript:alert(1)", "color": "expression(alert(1))"}, CampaignID: 3, ContactID: 4},
	{Email: "x@example.test", Name: "\x00\r\n\t\u2028\u2029 </p> ]]> --> {{.Name}}", Attrs: map[string]string{"city": "?a=1&b=2#f g", "color": "#fff;background:url(x)"}, CampaignID: 5, ContactID: 6},
}

// renderPlain executes the template the ordinary way: the reference.
func renderPlain(t *testing.T, src string, v *view) (string, error) {
	t.Helper()
	tmpl, err := htmltemplate.New("html").Option("missingkey=zero").Funcs(funcs).Parse(src)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	err = tmpl.Execute(&b, v)
	return b.String(), err
}

// TestHTMLPlanMatchesHTMLTemplate checks that a planned template writes
// exactly what html/template writes, and which templates get a plan.
func TestHTMLPlanMatchesHTMLTemplate(t *testing.T) {
	for _, tc := range planTemplates {
		tmpl, err := Parse(Content{From: "news@example.test", Subject: "s", HTML: tc.src,
			Unsubscribe: Unsubscribe{BaseURL: "https://news.example.test/u", OneClick: true, Key: testUnsubKey}})
		if err != nil {
			t.Fatal(err)
		}
		if got := tmpl.htmlPlan != nil; got != tc.plan {
			t.Errorf("%.60q: plan %v, want %v", tc.src, got, tc.plan)
		}
		for _, d := range planData {
			v, err := tmpl.view(&Data{Email: d.Email + "x", Name: d.Name, Attrs: d.Attrs, CampaignID: 1, ContactID: 1})
			if err != nil {
				t.Fatal(err)
			}
			want, wantErr := renderPlain(t, tc.src, v)
			if err := tmpl.renderBodies(v); (err != nil) != (wantErr != nil) {
				t.Fatalf("%.60q: error %v, want %v", tc.src, err, wantErr)
			} else if err != nil {
				if !strings.Contains(err.Error(), wantErr.Error()) {
					t.Errorf("%.60q: error %v, want %v", tc.src, err, wantErr)
				}
			} else if got := v.html.String(); got != want {
				t.Errorf("%.60q with %q:\n got %q\nwant %q", tc.src, d.Name, got, want)
			}
			v.release()
		}
	}
}

// FuzzHTMLPlan compares the plan's output with html/template's for
// hostile contact data.
func FuzzHTMLPlan(f *testing.F) {
	var tmpls []*Template
	var srcs []string
	for _, tc := range planTemplates {
		if !tc.plan {
			continue
		}
		tmpl, err := Parse(Content{From: "news@example.test", Subject: "s", HTML: tc.src,
			Unsubscribe: Unsubscribe{BaseURL: "https://news.example.test/u", Mailto: "u@example.test"}})
		if err != nil {
			f.Fatal(err)
		}
		tmpls, srcs = append(tmpls, tmpl), append(srcs, tc.src)
	}
	for _, d := range planData {
		f.Add(d.Name, d.Email, d.Attrs["city"], d.Attrs["color"])
	}
	f.Fuzz(func(t *testing.T, name, email, city, color string) {
		d := &Data{Email: email, Name: name, Attrs: map[string]string{"city": city, "color": color}}
		for i, tmpl := range tmpls {
			v, err := tmpl.view(d)
			if err != nil {
				t.Fatal(err)
			}
			want, wantErr := renderPlain(t, srcs[i], v)
			err = tmpl.renderBodies(v)
			if (err != nil) != (wantErr != nil) {
				t.Fatalf("%.60q: error %v, want %v", srcs[i], err, wantErr)
			}
			if err == nil && v.html.String() != want {
				t.Fatalf("%.60q:\n got %q\nwant %q", srcs[i], v.html.String(), want)
			}
			v.release()
		}
	})
}
