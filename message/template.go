package message

import (
	"bytes"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io"
	"reflect"
	"strings"
	"sync"
	"text/template"
	"text/template/parse"
	"time"

	"github.com/emersion/go-message/mail"
)

// Content is a campaign's message as the operator wrote it.
type Content struct {
	// From is the From header: an address, optionally with a display name
	// ("News <news@example.test>"). Required. Its domain is also the
	// Message-ID's right-hand side.
	From string
	// Subject is a text/template for the Subject header. Required. Its
	// output must be one line: a control character (CR, LF, NUL, ...) from
	// contact data fails that recipient's Render with a *HeaderError.
	Subject string
	// Text is a text/template for the text/plain part; "" for none.
	Text string
	// HTML is an html/template for the text/html part; "" for none. At
	// least one of Text and HTML is required; with both, the message is
	// multipart/alternative (RFC 2046 §5.1.4), text first.
	HTML string
	// Attachments are paths of files attached to every message
	// (multipart/mixed, RFC 2046 §5.1.3), base64-encoded, streamed from the
	// file at each Render and never read whole into memory. Each must be a
	// regular file when Parse runs. Default none.
	Attachments []string
	// Files are attachments with a name and media type of their own (a
	// campaign's stored attachments, materialized by each worker); they
	// follow Attachments. Default none.
	Files []Attachment
	// Unsubscribe configures the List-Unsubscribe header fields. The zero
	// value adds none.
	Unsubscribe Unsubscribe
	// DKIM, if not nil, signs every message (RFC 6376). Default nil: unsigned.
	DKIM *DKIM
}

// Data is what templates see: {{.Email}}, {{.Name}}, {{.Attrs.city}}, and
// {{.UnsubscribeURL}} (the recipient's unsubscribe link).
//
// A field that is missing renders empty: an unknown Attrs key gives "" (the
// templates run with missingkey=zero). For a fallback write
// {{or .Name "friend"}} or {{.Attrs.city | default "your city"}}.
type Data struct {
	Email string
	Name  string
	Attrs map[string]string
	// CampaignID and ContactID identify the recipient in a one-click
	// unsubscribe token; both are required when Unsubscribe.OneClick is set.
	CampaignID int64
	ContactID  int64
}

// view is the value templates execute on: Data's fields plus what blaster
// derives per recipient. It is flat, not embedding Data, because templates
// look fields up by reflection and an embedded struct's fields cost a
// search per lookup.
type view struct {
	Email      string
	Name       string
	Attrs      map[string]string
	CampaignID int64
	ContactID  int64
	// UnsubscribeURL is the one-click HTTPS link with the recipient's
	// token, else the list-level URL or mailto, else "".
	UnsubscribeURL string

	data *Data
	// text and html are the rendered bodies (renderBodies), pooled
	// buffers returned by release.
	text, html *bytes.Buffer
}

// Option adjusts Parse for the environment the messages are built in.
type Option func(*options)

type options struct {
	now          func() time.Time
	spoolDir     string
	spoolOver    int
	sharedMaxAge time.Duration
}

// WithNowFunc sets the clock for the Date header. Default time.Now.
func WithNowFunc(now func() time.Time) Option {
	return func(o *options) { o.now = now }
}

// WithSpool sets where a message is built (Build, Shared, and a DKIM-signed
// one while it is signed): in memory up to over bytes, then in a temporary
// file in dir ("" for os.TempDir). Default: DefaultSpoolOver (1 MiB),
// os.TempDir. over <= 0 keeps the default.
func WithSpool(dir string, over int) Option {
	return func(o *options) {
		o.spoolDir = dir
		if over > 0 {
			o.spoolOver = over
		}
	}
}

// WithSharedMaxAge sets how long Shared reuses a built message before it
// builds a new one (with a fresh Date and Message-ID). Default 1 hour:
// receivers score a Date hours in the past as suspicious.
func WithSharedMaxAge(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.sharedMaxAge = d
		}
	}
}

// Template is a parsed Content, safe for concurrent use.
type Template struct {
	opts         options
	from         *mail.Address
	domain       string // of From, for Message-IDs
	subject      *template.Template
	text         *template.Template
	html         *htmltemplate.Template
	htmlPlan     *htmlPlan // nil: execute html as it is
	attachments  []attachment
	unsub        Unsubscribe
	dkim         *DKIM
	personalized bool

	mu     sync.Mutex
	shared map[string]sharedMessage
}

// funcs are the functions templates may call besides text/template's
// builtins (and, or, not, index, len, printf, ...).
var funcs = map[string]any{
	// default returns def when v is empty ("", 0, nil, empty map): for
	// {{.Name | default "friend"}}. Borrowed from Sprig / Helm.
	"default": func(def, v any) any {
		if v == nil {
			return def
		}
		rv := reflect.ValueOf(v)
		switch rv.Kind() {
		case reflect.Map, reflect.Slice, reflect.String, reflect.Array:
			if rv.Len() == 0 {
				return def
			}
		default:
			if rv.IsZero() {
				return def
			}
		}
		return v
	},
}

// Parse parses c's templates and checks its configuration. A template
// error names the template and line ("template: text:3: unexpected ...").
// Parse does not run the templates: call Validate for that.
func Parse(c Content, opts ...Option) (*Template, error) {
	t := &Template{
		opts:   options{now: time.Now, spoolOver: DefaultSpoolOver, sharedMaxAge: time.Hour},
		unsub:  c.Unsubscribe,
		dkim:   c.DKIM,
		shared: map[string]sharedMessage{},
	}
	for _, o := range opts {
		o(&t.opts)
	}
	if c.From == "" {
		return nil, errors.New("message: From is empty")
	}
	if err := checkHeader("From", c.From); err != nil {
		return nil, err
	}
	from, err := mail.ParseAddress(c.From)
	if err != nil {
		return nil, fmt.Errorf("message: From %q: %w", c.From, err)
	}
	t.from = from
	t.domain = from.Address[strings.LastIndexByte(from.Address, '@')+1:]
	if c.Subject == "" {
		return nil, errors.New("message: subject is empty")
	}
	if c.Text == "" && c.HTML == "" {
		return nil, errors.New("message: no text or HTML body")
	}
	if err := t.unsub.check(); err != nil {
		return nil, err
	}
	if t.dkim != nil {
		if err := t.dkim.check(); err != nil {
			return nil, err
		}
	}
	// A field that is the same for every recipient does not make the
	// message personal.
	static := map[string]bool{"UnsubscribeURL": !t.unsub.OneClick}

	if t.subject, err = template.New("subject").Option("missingkey=zero").Funcs(funcs).Parse(c.Subject); err != nil {
		return nil, fmt.Errorf("parsing subject template: %w", err)
	}
	t.personalized = usesData(t.subject.Tree, static)
	if c.Text != "" {
		if t.text, err = template.New("text").Option("missingkey=zero").Funcs(funcs).Parse(c.Text); err != nil {
			return nil, fmt.Errorf("parsing text template: %w", err)
		}
		t.personalized = t.personalized || usesData(t.text.Tree, static)
	}
	if c.HTML != "" {
		if t.html, err = htmltemplate.New("html").Option("missingkey=zero").Funcs(funcs).Parse(c.HTML); err != nil {
			return nil, fmt.Errorf("parsing HTML template: %w", err)
		}
		t.personalized = t.personalized || usesData(t.html.Tree, static)
		t.htmlPlan = newHTMLPlan(t.html, []string{"missingkey=zero"}, funcs)
	}
	t.personalized = t.personalized || t.unsub.OneClick
	for _, path := range c.Attachments {
		a, err := newAttachment(path)
		if err != nil {
			return nil, err
		}
		t.attachments = append(t.attachments, a)
	}
	for _, f := range c.Files {
		a, err := f.check()
		if err != nil {
			return nil, err
		}
		t.attachments = append(t.attachments, a)
	}
	return t, nil
}

// Personalized reports whether the message differs per recipient: a
// template reads recipient data, or each message carries the recipient's
// one-click unsubscribe token.
func (t *Template) Personalized() bool { return t.personalized }

// DefaultSamples are the contacts Validate renders when given none: a full
// one and an empty one, so a template that only works when a field is set
// fails now, not mid-send.
var DefaultSamples = []Data{
	{Email: "sample@example.test", Name: "Sample Contact", Attrs: map[string]string{"city": "Oslo"}},
	{Email: "empty@example.test"},
}

// Validate renders the whole message (headers, bodies, attachments,
// signature) for each sample to io.Discard, so that an error shows when the
// campaign is created rather than mid-send. The error names the sample, the
// template, the line and the field, e.g.
//
//	sample 1 (sample@example.test): rendering subject: template: subject:1:9:
//	executing "subject" at <.Nmae>: can't evaluate field Nmae in type message.view
//
// Samples without CampaignID or ContactID get 1, so one-click tokens can be
// made. nil samples means DefaultSamples.
func (t *Template) Validate(samples []Data) error {
	if samples == nil {
		samples = DefaultSamples
	}
	for i, d := range samples {
		if d.CampaignID == 0 {
			d.CampaignID = 1
		}
		if d.ContactID == 0 {
			d.ContactID = 1
		}
		to := d.Email
		if !t.personalized {
			to = "undisclosed-recipients:;"
		}
		if err := t.Render(io.Discard, to, &d); err != nil {
			return fmt.Errorf("sample %d (%s): %w", i+1, d.Email, err)
		}
	}
	return nil
}

// usesData reports whether a template tree refers to its data (the dot, a
// field other than a static one, or the $ variable) anywhere.
func usesData(tree *parse.Tree, static map[string]bool) bool {
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
		case *parse.DotNode:
			found = true
		case *parse.FieldNode:
			found = len(n.Ident) == 0 || !static[n.Ident[0]]
		case *parse.VariableNode:
			found = len(n.Ident) > 0 && n.Ident[0] == "$" && (len(n.Ident) == 1 || !static[n.Ident[1]])
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

// Render writes the whole message for one recipient to w. to is the To
// header's value: the recipient's address for a personalized message, a
// group such as "newsletter:;" for one sent to many (RFC 5322 §3.4). d may
// be nil for a message that is not personalized.
//
// An unsigned message is written to w as it is built (bodies and
// attachments are never held whole); a signed one is built into a spool
// (memory, then a temporary file past WithSpool's limit) and written to w
// after its DKIM-Signature. On error w may hold part of a message: discard
// it. A *HeaderError means recipient data would have broken a header.
func (t *Template) Render(w io.Writer, to string, d *Data) error {
	h, v, err := t.prepare(to, d)
	if err != nil {
		return err
	}
	defer v.release()
	if t.dkim == nil {
		return t.writeMIME(w, h, v)
	}
	return t.writeSigned(w, h, v)
}

// Build renders the message for one recipient as Render does, into a Body:
// in memory up to WithSpool's threshold, in a temporary file past it, so a
// large message is never held in memory and can be streamed into several
// transactions. The caller must Release it.
func (t *Template) Build(to string, d *Data) (*Body, error) {
	h, v, err := t.prepare(to, d)
	if err != nil {
		return nil, err
	}
	defer v.release()
	if t.dkim != nil {
		return t.sign(h, v)
	}
	sp := newSpool(t.opts.spoolDir, t.opts.spoolOver)
	if err := t.writeEntity(sp, h, v); err != nil {
		sp.close()
		return nil, err
	}
	return sp.body(nil)
}

// prepare computes the view and the header for one recipient.
func (t *Template) prepare(to string, d *Data) (mail.Header, *view, error) {
	if d == nil {
		d = &Data{}
	}
	v, err := t.view(d)
	if err != nil {
		return mail.Header{}, nil, err
	}
	h, err := t.header(to, v)
	if err != nil {
		v.release()
		return mail.Header{}, nil, err
	}
	return h, v, nil
}

// Shared returns the message for many recipients addressed as the group
// to, built (and signed) once and reused until WithSharedMaxAge passes, so a
// same-for-all campaign pays for rendering and signing once, not per batch.
// Past WithSpool's threshold it lives in a spool file that every
// transaction streams from: concurrent batches share it, none copies it.
// The caller must Release the Body when its transactions are done. It fails
// for a personalized template.
func (t *Template) Shared(to string) (*Body, error) {
	if t.personalized {
		return nil, errors.New("message: Shared called for a personalized template")
	}
	now := t.opts.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.shared == nil {
		return nil, errors.New("message: Shared called after Close")
	}
	if s, ok := t.shared[to]; ok && now.Sub(s.built) < t.opts.sharedMaxAge {
		return s.body.retain(), nil
	}
	b, err := t.Build(to, nil)
	if err != nil {
		return nil, err
	}
	if old, ok := t.shared[to]; ok {
		old.body.Release() // freed when its last transaction releases it
	}
	t.shared[to] = sharedMessage{body: b, built: now}
	return b.retain(), nil
}

// Close releases the messages Shared keeps (their spool files go when the
// last transaction using them releases them). Shared fails after Close.
func (t *Template) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.shared {
		s.body.Release()
	}
	t.shared = nil
}

type sharedMessage struct {
	body  *Body
	built time.Time
}

// view computes what the templates see for d.
func (t *Template) view(d *Data) (*view, error) {
	v := &view{Email: d.Email, Name: d.Name, Attrs: d.Attrs, CampaignID: d.CampaignID, ContactID: d.ContactID, data: d}
	u, err := t.unsub.url(d)
	if err != nil {
		return nil, err
	}
	v.UnsubscribeURL = u
	return v, nil
}
