// Package message builds the RFC 5322 messages blaster sends from a
// campaign's templates: subject and text body are text/template, the HTML
// body html/template, over one recipient's Data.
package message

import (
	"bytes"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io"
	"text/template"
	"text/template/parse"
)

// Content is a campaign's message as the operator wrote it.
type Content struct {
	// From is the From header: an address, optionally with a display name
	// ("News <news@example.test>").
	From string
	// Subject is a text/template for the Subject header.
	Subject string
	// Text is a text/template for the text/plain part; "" for none.
	Text string
	// HTML is an html/template for the text/html part; "" for none.
	HTML string
}

// Data is what templates see: {{.Email}}, {{.Name}} and {{.Attrs.city}}.
type Data struct {
	Email string
	Name  string
	Attrs map[string]string
}

// Template is a parsed Content, safe for concurrent Render calls.
type Template struct {
	from         string
	subject      *template.Template
	text         *template.Template
	html         *htmltemplate.Template
	personalized bool
}

// Parse parses c's templates. A missing field renders empty rather than
// failing ("missingkey=zero"); use {{or .Name "friend"}} for a fallback.
func Parse(c Content) (*Template, error) {
	if c.Subject == "" {
		return nil, errors.New("message: subject is empty")
	}
	if c.Text == "" && c.HTML == "" {
		return nil, errors.New("message: no text or HTML body")
	}
	t := &Template{from: c.From}
	var err error
	if t.subject, err = template.New("subject").Option("missingkey=zero").Parse(c.Subject); err != nil {
		return nil, fmt.Errorf("parsing subject template: %w", err)
	}
	t.personalized = usesData(t.subject.Tree)
	if c.Text != "" {
		if t.text, err = template.New("text").Option("missingkey=zero").Parse(c.Text); err != nil {
			return nil, fmt.Errorf("parsing text template: %w", err)
		}
		t.personalized = t.personalized || usesData(t.text.Tree)
	}
	if c.HTML != "" {
		if t.html, err = htmltemplate.New("html").Option("missingkey=zero").Parse(c.HTML); err != nil {
			return nil, fmt.Errorf("parsing HTML template: %w", err)
		}
		t.personalized = t.personalized || usesData(t.html.Tree)
	}
	return t, nil
}

// Personalized reports whether any template reads recipient data, so that
// the message differs per recipient.
func (t *Template) Personalized() bool { return t.personalized }

// usesData reports whether a template tree refers to its data (the dot, a
// field, or the $ variable) anywhere.
func usesData(tree *parse.Tree) bool {
	if tree == nil || tree.Root == nil {
		return false
	}
	found := false
	var walk func(n parse.Node)
	walk = func(n parse.Node) {
		if found || n == nil {
			return
		}
		switch n := n.(type) {
		case *parse.DotNode, *parse.FieldNode:
			found = true
		case *parse.VariableNode:
			found = len(n.Ident) > 0 && n.Ident[0] == "$"
		case *parse.ChainNode:
			walk(n.Node)
		case *parse.ListNode:
			if n == nil {
				return
			}
			for _, c := range n.Nodes {
				walk(c)
			}
		case *parse.ActionNode:
			walk(n.Pipe)
		case *parse.PipeNode:
			if n == nil {
				return
			}
			for _, d := range n.Decl {
				walk(d)
			}
			for _, c := range n.Cmds {
				walk(c)
			}
		case *parse.CommandNode:
			for _, a := range n.Args {
				walk(a)
			}
		case *parse.IfNode:
			walk(n.Pipe)
			walk(n.List)
			walk(n.ElseList)
		case *parse.RangeNode:
			walk(n.Pipe)
			walk(n.List)
			walk(n.ElseList)
		case *parse.WithNode:
			walk(n.Pipe)
			walk(n.List)
			walk(n.ElseList)
		case *parse.TemplateNode:
			walk(n.Pipe)
		}
	}
	walk(tree.Root)
	return found
}

// renderText executes a text template into a string.
func renderText(t *template.Template, d *Data) (string, error) {
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		return "", err
	}
	return b.String(), nil
}

// Render writes the whole message for one recipient to w. to is the To
// header's value: the recipient's address for a personalized message, a
// group such as "newsletter:;" for one sent to many (RFC 5322 §3.4).
func (t *Template) Render(w io.Writer, to string, d *Data) error {
	subject, err := renderText(t.subject, d)
	if err != nil {
		return fmt.Errorf("rendering subject for %s: %w", d.Email, err)
	}
	var text, html bytes.Buffer
	if t.text != nil {
		if err := t.text.Execute(&text, d); err != nil {
			return fmt.Errorf("rendering text body for %s: %w", d.Email, err)
		}
	}
	if t.html != nil {
		if err := t.html.Execute(&html, d); err != nil {
			return fmt.Errorf("rendering HTML body for %s: %w", d.Email, err)
		}
	}
	return writeMIME(w, header{from: t.from, to: to, subject: subject}, text.Bytes(), html.Bytes(), t.text != nil, t.html != nil)
}
