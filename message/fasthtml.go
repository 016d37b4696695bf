package message

import (
	"bytes"
	"errors"
	htmltemplate "html/template"
	"io"
	"strings"
	"text/template/parse"
)

// htmlPlan executes an HTML template whose body is only text and actions
// (no if, range, with or template calls) with a few html/template runs per
// message instead of one run of the whole template.
//
// A 10 KB newsletter has about 120 merge fields but only a handful of
// distinct ones ({{.Name}} in text, {{.UnsubscribeURL}} in an href, ...).
// html/template executes each of the 120 actions, calling its escapers by
// reflection each time; that was half the send worker's CPU. The plan runs
// each distinct action once per message, and writes the constant text in
// between.
//
// The escaping stays html/template's. At Parse the whole template is
// escaped by html/template; each of its actions, now a pipeline ending in
// html/template's escapers, is matched with a one-action html/template (a
// slot) that puts the same pipeline in a context where html/template
// chooses exactly the same escapers: the slot's escaped pipeline must equal
// the action's, or there is no plan and the template runs as it is. The
// text between actions is taken from the escaped tree, as html/template
// writes it. So the output is byte for byte what html/template writes.
// When a slot fails (an error in the data), the message is rendered again
// the ordinary way, so errors read as they always did.
type htmlPlan struct {
	segs  []planSeg
	slots []planSlot
}

// planSeg is constant text, or the output of slot when slot >= 0.
type planSeg struct {
	text []byte
	slot int
}

// planSlot is one distinct action in its context: tmpl writes prefix, the
// action's output, then suffix.
type planSlot struct {
	tmpl           *htmltemplate.Template
	prefix, suffix string
}

// slotContexts are where a slot may put its action: text, attribute
// values, URLs in their parts, script and style. A context that matches
// none of them leaves the template without a plan.
var slotContexts = [][2]string{
	{"", ""},
	{`<a href="`, `">`},
	{`<a href="/x?`, `">`},
	{`<a href="/`, `">`},
	{`<a href="/x#`, `">`},
	{`<p title="`, `">`},
	{`<p title='`, `'>`},
	{`<p title=`, `>`},
	{`<a href=`, `>`},
	{`<a href=/x?`, `>`},
	{`<img srcset="`, `">`},
	{`<script>x=`, `</script>`},
	{`<script>x="`, `"</script>`},
	{`<script>x='`, `'</script>`},
	{`<p onclick="x=`, `">`},
	{`<p onclick="x='`, `'">`},
	{`<style>p{color:`, `}</style>`},
	{`<p style="color:`, `">`},
	{`<textarea>`, `</textarea>`},
	{`<title>`, `</title>`},
	{`<!--`, `-->`},
}

// newHTMLPlan escapes t (by running it once on an empty view) and plans
// it; nil when t does not qualify or any of its actions finds no slot.
func newHTMLPlan(t *htmltemplate.Template, options []string, funcs map[string]any) *htmlPlan {
	if err := t.Execute(io.Discard, &view{Attrs: map[string]string{}}); err != nil {
		var escErr *htmltemplate.Error
		if errors.As(err, &escErr) {
			return nil // unsafe or ambiguous: Render reports it
		}
	}
	if t.Tree == nil || t.Tree.Root == nil || len(t.Templates()) != 1 {
		return nil
	}
	p := &htmlPlan{}
	slotOf := map[string]int{}
	for _, n := range t.Tree.Root.Nodes {
		switch n := n.(type) {
		case *parse.TextNode:
			p.segs = append(p.segs, planSeg{text: n.Text, slot: -1})
		case *parse.ActionNode:
			key := n.Pipe.String()
			i, ok := slotOf[key]
			if !ok {
				s, ok := newSlot(n.Pipe, options, funcs)
				if !ok {
					return nil
				}
				i = len(p.slots)
				p.slots = append(p.slots, s)
				slotOf[key] = i
			}
			p.segs = append(p.segs, planSeg{slot: i})
		default:
			return nil
		}
	}
	return p
}

// newSlot finds a context in which html/template escapes the user's part
// of pipe exactly as pipe is escaped.
func newSlot(pipe *parse.PipeNode, options []string, funcs map[string]any) (planSlot, bool) {
	if pipe == nil || len(pipe.Decl) > 0 || pipe.IsAssign {
		return planSlot{}, false
	}
	user := len(pipe.Cmds)
	for user > 0 {
		id, ok := pipe.Cmds[user-1].Args[0].(*parse.IdentifierNode)
		if !ok || !strings.HasPrefix(id.Ident, "_html_template_") || len(pipe.Cmds[user-1].Args) != 1 {
			break
		}
		user--
	}
	if user == 0 || user == len(pipe.Cmds) {
		return planSlot{}, false
	}
	userPipe := &parse.PipeNode{NodeType: parse.NodePipe, Cmds: pipe.Cmds[:user]}
	src := userPipe.String()
	if strings.Contains(src, "_html_template_") || strings.Contains(src, "_eval_args_") || strings.Contains(src, "{{") || strings.Contains(src, "}}") {
		return planSlot{}, false
	}
	want := pipe.String()
	for _, c := range slotContexts {
		tmpl, err := htmltemplate.New("slot").Option(options...).Funcs(funcs).Parse(c[0] + "{{" + src + "}}" + c[1])
		if err != nil {
			return planSlot{}, false // e.g. a variable declared elsewhere
		}
		if err := tmpl.Execute(io.Discard, &view{Attrs: map[string]string{}}); err != nil {
			var escErr *htmltemplate.Error
			if errors.As(err, &escErr) {
				continue
			}
		}
		if tmpl.Tree == nil || tmpl.Tree.Root == nil {
			continue
		}
		var prefix, suffix strings.Builder
		var action *parse.ActionNode
		ok := true
		for _, n := range tmpl.Tree.Root.Nodes {
			switch n := n.(type) {
			case *parse.TextNode:
				if action == nil {
					prefix.Write(n.Text)
				} else {
					suffix.Write(n.Text)
				}
			case *parse.ActionNode:
				if action != nil {
					ok = false
				}
				action = n
			default:
				ok = false
			}
		}
		if ok && action != nil && action.Pipe.String() == want {
			return planSlot{tmpl: tmpl, prefix: prefix.String(), suffix: suffix.String()}, true
		}
	}
	return planSlot{}, false
}

// errPlan reports a slot whose output is not framed by its context's text:
// it cannot happen; the caller renders the ordinary way.
var errPlan = errors.New("message: HTML plan slot output out of frame")

// execute appends the template's output for v to w. On error w holds part
// of it.
func (p *htmlPlan) execute(w *bytes.Buffer, v *view) error {
	scratch := bufPool.Get().(*bytes.Buffer)
	defer putBuf(scratch)
	var fixed [16][2]int
	offs := fixed[:0]
	if len(p.slots) > len(fixed) {
		offs = make([][2]int, 0, len(p.slots))
	}
	for _, s := range p.slots {
		start := scratch.Len()
		if err := s.tmpl.Execute(scratch, v); err != nil {
			return err
		}
		out := scratch.Bytes()[start:]
		if !bytes.HasPrefix(out, []byte(s.prefix)) || !bytes.HasSuffix(out[len(s.prefix):], []byte(s.suffix)) {
			return errPlan
		}
		offs = append(offs, [2]int{start + len(s.prefix), scratch.Len() - len(s.suffix)})
	}
	out := scratch.Bytes()
	for _, seg := range p.segs {
		if seg.slot < 0 {
			w.Write(seg.text)
		} else {
			o := offs[seg.slot]
			w.Write(out[o[0]:o[1]])
		}
	}
	return nil
}
