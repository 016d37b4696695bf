package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/blaster-mail/blaster/campaign"
	"github.com/blaster-mail/blaster/internal/dbtest"
)

// TestHelpEverywhere runs --help on every command: each has a short
// description, prints its usage and documents every flag.
func TestHelpEverywhere(t *testing.T) {
	var walk func(path []string, c *cobra.Command)
	walk = func(path []string, c *cobra.Command) {
		if c.Hidden {
			return
		}
		if c.Short == "" {
			t.Errorf("blaster %s: no short description", strings.Join(path, " "))
		}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if strings.TrimSpace(f.Usage) == "" {
				t.Errorf("blaster %s --%s: no usage text", strings.Join(path, " "), f.Name)
			}
		})
		var stdout, stderr bytes.Buffer
		if err := run(context.Background(), append(append([]string{}, path...), "--help"), strings.NewReader(""), &stdout, &stderr); err != nil {
			t.Errorf("blaster %s --help: %v", strings.Join(path, " "), err)
		}
		if !strings.Contains(stdout.String(), "Usage:") {
			t.Errorf("blaster %s --help printed no usage:\n%s", strings.Join(path, " "), stdout.String())
		}
		for _, sub := range c.Commands() {
			walk(append(append([]string{}, path...), sub.Name()), sub)
		}
	}
	walk(nil, newRootCmd(&app{}))
}

// mainArgsEnv, when set, makes the test binary run main() with these
// (newline-separated) arguments: the helper-process pattern of
// TestDemoSinkHelper, to see main's exit status and streams.
const mainArgsEnv = "BLASTER_TEST_MAIN_ARGS"

func TestMainHelper(t *testing.T) {
	args := os.Getenv(mainArgsEnv)
	if args == "" {
		t.Skip("helper process for TestErrorsGoToStderr")
	}
	os.Args = append([]string{"blaster"}, strings.Split(args, "\n")...)
	main()
	os.Exit(0)
}

// TestErrorsGoToStderr: a failing command prints "blaster: ERROR" on
// stderr, nothing on stdout, and exits with status 1.
func TestErrorsGoToStderr(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"queue", "show", "x"}, `blaster: job id "x": must be a positive number`},
		{[]string{"campaign", "status"}, "blaster: accepts 1 arg(s), received 0"},
		{[]string{"bogus"}, `blaster: unknown command "bogus" for "blaster"`},
		{[]string{"--log-level", "loud", "campaign", "list"}, `blaster: --log-level "loud": must be debug, info, warn or error`},
		{[]string{"campaign", "list", "--jsn"}, "blaster: unknown flag: --jsn"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMainHelper$")
		cmd.Env = append(os.Environ(), mainArgsEnv+"="+strings.Join(c.args, "\n"))
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("blaster %s: %v, want exit status 1", strings.Join(c.args, " "), err)
		}
		if got := strings.TrimSpace(stderr.String()); got != c.want {
			t.Errorf("blaster %s: stderr %q, want %q", strings.Join(c.args, " "), got, c.want)
		}
		if stdout.Len() != 0 {
			t.Errorf("blaster %s: stdout %q, want nothing", strings.Join(c.args, " "), stdout.String())
		}
	}
}

// TestCompleteCampaignIDs: <TAB> after a campaign command, or after
// --campaign, offers the campaigns with their names and states.
func TestCompleteCampaignIDs(t *testing.T) {
	url := dbtest.New(t)
	pool := openTestPool(t, url)
	if _, err := pool.Exec(context.Background(), `INSERT INTO lists (name) VALUES ('news')`); err != nil {
		t.Fatal(err)
	}
	ids := map[string]int64{}
	for _, name := range []string{"spring", "summer"} {
		c, err := campaign.Create(context.Background(), pool, campaign.New{Name: name, List: "news",
			From: "news@example.test", Subject: "s", Text: "t"})
		if err != nil {
			t.Fatal(err)
		}
		ids[name] = c.ID
	}
	for _, args := range [][]string{
		{"campaign", "status", ""},
		{"campaign", "retry", ""},
		{"queue", "list", "--campaign", ""},
	} {
		out := cli(t, url, append([]string{"__complete"}, args...)...)
		for name, id := range ids {
			if want := fmt.Sprintf("%d\t%s (draft)\n", id, name); !strings.Contains(out, want) {
				t.Errorf("completing %q: lacks %q:\n%s", args, want, out)
			}
		}
	}
	out := cli(t, url, "__complete", "campaign", "status", fmt.Sprint(ids["summer"]))
	if strings.Contains(out, "spring") {
		t.Errorf("completing the id of summer offers spring too:\n%s", out)
	}
	if out := cli(t, url, "__complete", "campaign", "status", "1", ""); strings.Contains(out, "summer") {
		t.Errorf("completing a second argument offers campaigns:\n%s", out)
	}
}

// TestSuppressListJSON: suppress list --json is an array with stable field
// names, empty or not.
func TestSuppressListJSON(t *testing.T) {
	url := dbtest.New(t)
	if got := strings.TrimSpace(cli(t, url, "suppress", "list", "--json")); got != "[]" {
		t.Errorf("empty list: %q, want []", got)
	}
	cli(t, url, "suppress", "add", "--reason", "bounced", "--detail", "550 5.1.1", "ann@example.test", "bob@example.test")
	got := decode[[]map[string]any](t, cli(t, url, "suppress", "list", "--json"))
	if len(got) != 2 || got[0]["email"] != "ann@example.test" || got[0]["reason"] != "bounced" ||
		got[0]["detail"] != "550 5.1.1" || got[0]["sender"] != "" || got[0]["created_at"] == nil || got[1]["email"] != "bob@example.test" {
		t.Errorf("suppress list --json: %v", got)
	}
}
