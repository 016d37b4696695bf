package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestTransportConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "blaster.toml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	parse := func(args ...string) (*transportFlags, error) {
		var tf transportFlags
		fs := pflag.NewFlagSet("worker", pflag.ContinueOnError)
		tf.register(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return &tf, tf.loadFile(fs)
	}

	file := write("[transport]\nrelays = [\"smtp://relay1.example.test:2525?tls=none\", \"smtp://relay2.example.test:2525?tls=none\"]\nhelo = \"mailer.example.test\"\n")
	tf, err := parse("--config", file)
	if err != nil {
		t.Fatal(err)
	}
	if len(tf.relays) != 2 || tf.localName != "mailer.example.test" {
		t.Fatalf("from file: relays %q, helo %q", tf.relays, tf.localName)
	}
	tr, err := tf.build(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if r := tr.Route("any.example.test"); !strings.Contains(r, "relay1.example.test") {
		t.Fatalf("route %q, want the first relay of the file", r)
	}

	tf, err = parse("--config", file, "--relay", "smtp://flag.example.test:25?tls=none")
	if err != nil {
		t.Fatal(err)
	}
	if len(tf.relays) != 1 || !strings.Contains(tf.relays[0], "flag.example.test") {
		t.Fatalf("a --relay flag must win over the file, got %q", tf.relays)
	}

	if _, err := parse("--config", write("[transport]\nrelay = \"smtp://typo.example.test\"\n")); err == nil ||
		!strings.Contains(err.Error(), "unknown setting transport.relay") {
		t.Fatalf("a misspelt setting must be an error naming it, got %v", err)
	}
}
