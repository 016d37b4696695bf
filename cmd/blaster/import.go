package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/blaster-mail/blaster/contact"
)

// maxShownRejects is how many rejected rows `blaster import` lists on
// stderr; the rejects file has them all.
const maxShownRejects = 20

func newImportCmd(a *app) *cobra.Command {
	var (
		list, delimiter, rejectsPath, explainPath string
		mapping                                   map[string]string
		dryRun                                    bool
	)
	cmd := &cobra.Command{
		Use:   "import --list NAME FILE.csv|-",
		Short: "Import contacts from a CSV file (or - for stdin) into a list",
		Long: `Import streams a CSV file into the contacts and onto a list (created if
missing), in one transaction. The header row names the columns: email is
required, name is optional, every other column becomes an attribute that
templates see as .Attrs.NAME.

Accepted input: UTF-8 with or without BOM, CRLF or LF line ends, quoted
fields with line breaks, gzip-compressed files, "-" for stdin. The delimiter
is detected from the header among , ; TAB | unless --delimiter is given.

Bad rows never stop the import. Each is reported as FILE:LINE: REASON and
written, with rows whose address appeared earlier in the file (the first
occurrence is kept), to the rejects file: --rejects, or FILE.rejects.csv
next to the input when there are any.

While the rows read are merged into contacts (after the file has been read),
other writers of contacts (another import, blaster send) wait for the import
to commit; campaign start, workers and the unsubscribe endpoint do not.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if list == "" {
				return fmt.Errorf("--list is required")
			}
			delim, err := parseDelimiter(delimiter)
			if err != nil {
				return err
			}
			path := args[0]
			in, size, source, closeIn, err := openInput(a, path)
			if err != nil {
				return err
			}
			defer closeIn()
			if rejectsPath == "" && path != "-" {
				rejectsPath = path + ".rejects.csv"
			}
			var rejects *lazyFile
			if rejectsPath != "" {
				rejects = &lazyFile{path: rejectsPath}
				defer rejects.Close()
			}

			pool, err := a.db(cmd.Context())
			if err != nil {
				return err
			}
			counted := &countingReader{r: in}
			bar := newProgressBar(a.stderr, size, counted)
			shown := int64(0)
			opts := contact.ImportOptions{
				List:      list,
				Source:    source,
				Delimiter: delim,
				Columns:   mapping,
				DryRun:    dryRun,
				Progress:  bar.update,
				Merging:   bar.merging,
				Logger:    a.logger,
				OnReject: func(r contact.Reject) {
					if r.Duplicate || shown >= maxShownRejects {
						return
					}
					shown++
					bar.clear()
					fmt.Fprintf(a.stderr, "%s:%d: %s\n", source, r.Line, r.Reason)
				},
			}
			if rejects != nil {
				opts.Rejects = rejects
			}
			if explainPath != "" {
				f, err := os.Create(explainPath)
				if err != nil {
					return fmt.Errorf("creating --explain file: %w", err)
				}
				defer f.Close()
				opts.Explain = f
			}
			sum, err := contact.Import(cmd.Context(), pool, counted, opts)
			bar.clear()
			if err != nil {
				return err
			}
			if err := rejects.Close(); err != nil {
				return err
			}
			if more := sum.Rejected - shown; more > 0 {
				where := "(use --rejects FILE to keep them)"
				if rejects != nil {
					where = "in " + rejectsPath
				}
				fmt.Fprintf(a.stderr, "... and %d more %s\n", more, where)
			}
			if rejects.written() {
				fmt.Fprintf(a.stderr, "rejected and duplicate rows written to %s\n", rejectsPath)
			}
			prefix := ""
			if dryRun {
				prefix = "dry run, nothing written: "
			}
			fmt.Fprintf(a.stdout, "%simported %d (inserted %d, updated %d, unchanged %d), rejected %d, duplicates %d; %d joined list %q\n",
				prefix, sum.Imported(), sum.Inserted, sum.Updated, sum.Unchanged, sum.Rejected, sum.Duplicates, sum.Added, list)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&list, "list", "", "name of the list to import into (created if missing; required)")
	f.StringVar(&delimiter, "delimiter", "", `field delimiter: one character, or "tab" (default: detected from the header)`)
	f.StringToStringVar(&mapping, "map", nil, "column mapping when the header differs, e.g. email=E-Mail,name=Full Name")
	f.StringVar(&rejectsPath, "rejects", "", "where to write rejected rows as CSV (default FILE.rejects.csv when there are any)")
	f.BoolVar(&dryRun, "dry-run", false, "validate and count, then roll back: nothing is written")
	f.StringVar(&explainPath, "explain", "", "diagnostics: write EXPLAIN (ANALYZE, BUFFERS, WAL) of the merge to this file (the merge runs twice)")
	f.MarkHidden("explain")
	return cmd
}

// parseDelimiter reads --delimiter: "" (detect), one character, or a name.
func parseDelimiter(s string) (rune, error) {
	switch strings.ToLower(s) {
	case "":
		return 0, nil
	case "tab", `\t`:
		return '\t', nil
	case "comma":
		return ',', nil
	case "semicolon":
		return ';', nil
	case "pipe":
		return '|', nil
	}
	r := []rune(s)
	if len(r) != 1 {
		return 0, fmt.Errorf("--delimiter %q: want one character or tab", s)
	}
	return r[0], nil
}

// openInput opens FILE or stdin ("-") and returns the reader, its size (-1
// when unknown), the name for messages and a closer.
func openInput(a *app, path string) (io.Reader, int64, string, func(), error) {
	if path == "-" {
		return a.stdin, -1, "stdin", func() {}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, "", nil, fmt.Errorf("opening input: %w", err)
	}
	size := int64(-1)
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
		size = st.Size()
	}
	return f, size, path, func() { f.Close() }, nil
}

// lazyFile creates its file on the first write, so that no rejects means no
// rejects file. It is created 0600: rejected rows hold personal data.
type lazyFile struct {
	path   string
	f      *os.File
	closed bool
}

func (l *lazyFile) Write(p []byte) (int, error) {
	if l.f == nil {
		f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return 0, fmt.Errorf("creating rejects file: %w", err)
		}
		l.f = f
	}
	return l.f.Write(p)
}

// written reports whether the file was created.
func (l *lazyFile) written() bool { return l != nil && l.f != nil }

// Close closes the file if it was created; later calls do nothing.
func (l *lazyFile) Close() error {
	if l == nil || l.f == nil || l.closed {
		return nil
	}
	l.closed = true
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("closing rejects file: %w", err)
	}
	return nil
}

// countingReader counts the bytes read through it, for the progress bar.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// progressWidth is the progress bar's width in characters.
const progressWidth = 30

// progressBar draws import progress on a terminal, at most ten times a
// second, and nothing when w is not a terminal.
type progressBar struct {
	w     io.Writer
	tty   bool
	size  int64 // input bytes, -1 when unknown (stdin, pipes)
	read  *countingReader
	last  time.Time
	drawn bool
}

func newProgressBar(w io.Writer, size int64, read *countingReader) *progressBar {
	f, ok := w.(*os.File)
	return &progressBar{w: w, tty: ok && term.IsTerminal(int(f.Fd())), size: size, read: read}
}

func (b *progressBar) update(rows int64) {
	if !b.tty || time.Since(b.last) < 100*time.Millisecond {
		return
	}
	b.last = time.Now()
	b.drawn = true
	if b.size <= 0 {
		fmt.Fprintf(b.w, "\r\033[Kread %d rows", rows)
		return
	}
	frac := float64(b.read.n.Load()) / float64(b.size)
	frac = min(frac, 1)
	fill := int(frac * progressWidth)
	fmt.Fprintf(b.w, "\r\033[K[%s%s] %3.0f%%  %d rows", strings.Repeat("=", fill), strings.Repeat(" ", progressWidth-fill), frac*100, rows)
}

// merging draws the bar full, with a note that the rows read are being
// merged, whatever the time since the last draw.
func (b *progressBar) merging() {
	if !b.tty {
		return
	}
	b.drawn = true
	fmt.Fprintf(b.w, "\r\033[K[%s] 100%%  read; merging into contacts and the list ...", strings.Repeat("=", progressWidth))
}

// clear removes the bar so that other output starts on a clean line.
func (b *progressBar) clear() {
	if b.drawn {
		fmt.Fprint(b.w, "\r\033[K")
		b.drawn = false
	}
}
