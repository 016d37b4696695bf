package main

import (
	"strings"
	"testing"

	"github.com/blaster-mail/blaster/internal/dbtest"
)

func TestSuppressCommand(t *testing.T) {
	url := dbtest.New(t)
	if _, stderr, err := runContactCLI(t, url, "", "suppress", "add", "--reason", "bounced", "--detail", "550 5.1.1", "ann@example.com", "Bob@Example.com"); err != nil {
		t.Fatalf("add: %v\n%s", err, stderr)
	}
	if _, _, err := runContactCLI(t, url, "", "suppress", "add", "--sender", "news@example.org", "--reason", "unsubscribed", "carl@example.com"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runContactCLI(t, url, "", "suppress", "add", "--reason", "spam", "x@example.com"); err == nil {
		t.Error("add with an unknown reason succeeded")
	}
	stdout, _, err := runContactCLI(t, url, "", "suppress", "list")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 4 || lines[0] != "email,sender,reason,detail,campaign_id,created_at" ||
		!strings.HasPrefix(lines[1], "ann@example.com,,bounced,550 5.1.1,,") ||
		!strings.HasPrefix(lines[2], "bob@example.com,,bounced") ||
		!strings.HasPrefix(lines[3], "carl@example.com,news@example.org,unsubscribed") {
		t.Errorf("list:\n%s", stdout)
	}
	stdout, _, _ = runContactCLI(t, url, "", "suppress", "list", "--sender", "")
	if strings.Count(stdout, "\n") != 3 {
		t.Errorf("list --sender '' (the every-sender list):\n%s", stdout)
	}
	stdout, stderr, err := runContactCLI(t, url, "", "suppress", "remove", "bob@example.com", "nobody@example.com")
	if err != nil || !strings.Contains(stdout, "removed 1") || !strings.Contains(stderr, "nobody@example.com was not suppressed") {
		t.Errorf("remove: %v %q %q", err, stdout, stderr)
	}

	// list's output imports into another database unchanged.
	exported, _, _ := runContactCLI(t, url, "", "suppress", "list")
	other := dbtest.New(t)
	stdout, stderr, err = runContactCLI(t, other, exported, "suppress", "import", "-")
	if err != nil || !strings.Contains(stdout, "suppressed 2 (new 2, already 0), rejected 0") {
		t.Errorf("import of list output: %v %q %q", err, stdout, stderr)
	}
	again, _, _ := runContactCLI(t, other, "", "suppress", "list")
	cut := func(s string) string { // drop created_at
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if i := strings.LastIndexByte(l, ','); i >= 0 {
				l = l[:i]
			}
			out = append(out, l)
		}
		return strings.Join(out, "\n")
	}
	if cut(again) != cut(exported) {
		t.Errorf("round trip changed the list:\n%s\nvs\n%s", exported, again)
	}
	stdout, stderr, err = runContactCLI(t, other, "dora@example.com\nnot-an-address\n", "suppress", "import", "--reason", "complained", "-")
	if err != nil || !strings.Contains(stdout, "suppressed 1 (new 1, already 0), rejected 1") || !strings.Contains(stderr, "stdin:2: email: missing @") {
		t.Errorf("import of addresses: %v %q %q", err, stdout, stderr)
	}
}
