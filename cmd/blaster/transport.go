package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"

	"github.com/blaster-mail/blaster/transport"
)

// transportFlags choose where a worker's mail goes: relays, or a pickup
// directory.
type transportFlags struct {
	relays       []string
	passwordFile string
	pickup       string
	mx           bool
	mxPort       int
	localName    string
	configFile   string
	// relayConns caps the connections to a relay whose URL gives no
	// max_conns (0: transport.DefaultRelayMaxConns).
	relayConns int
}

// transportFile is the [transport] table of a worker config file (TOML):
//
//	[transport]
//	relays = ["smtp://mailer@relay.example.test:587", "smtp://backup.example.test:587"]
//	# or: mx = true / pickup = "/var/spool/blaster/pickup"
//	helo = "mailer.example.test"
//
// Flags given on the command line win over the file. The file's
// [campaign] table (campaignDefaults) is read by `campaign create`.
type transportFile struct {
	Campaign  campaignDefaults `toml:"campaign"`
	Transport struct {
		Relays []string `toml:"relays"`
		Pickup string   `toml:"pickup"`
		MX     bool     `toml:"mx"`
		MXPort int      `toml:"mx_port"`
		Helo   string   `toml:"helo"`
	} `toml:"transport"`
}

// loadFile fills the settings not given as flags from the config file.
func (tf *transportFlags) loadFile(f *pflag.FlagSet) error {
	if tf.configFile == "" {
		return nil
	}
	var cfg transportFile
	md, err := toml.DecodeFile(tf.configFile, &cfg)
	if err != nil {
		return fmt.Errorf("reading config %s: %w", tf.configFile, err)
	}
	if undec := md.Undecoded(); len(undec) > 0 {
		return fmt.Errorf("config %s: unknown setting %s", tf.configFile, undec[0])
	}
	t := cfg.Transport
	if !f.Changed("relay") && len(t.Relays) > 0 {
		tf.relays = t.Relays
	}
	if !f.Changed("pickup") && t.Pickup != "" {
		tf.pickup = t.Pickup
	}
	if !f.Changed("mx") && t.MX {
		tf.mx = true
	}
	if !f.Changed("mx-port") && t.MXPort != 0 {
		tf.mxPort = t.MXPort
	}
	if !f.Changed("helo") && t.Helo != "" {
		tf.localName = t.Helo
	}
	return nil
}

func (tf *transportFlags) register(f *pflag.FlagSet) {
	f.StringVar(&tf.configFile, "config", os.Getenv("BLASTER_CONFIG"),
		"TOML config file with a [transport] table (relays, mx, pickup, helo); flags win over it")
	f.StringArrayVar(&tf.relays, "relay", nil,
		"relay URL smtp://[user@]host[:port] or smtps://…, repeatable for failover (default $BLASTER_RELAY, comma separated)")
	f.StringVar(&tf.passwordFile, "relay-password-file", "", "file holding the relay password (else $BLASTER_RELAY_PASSWORD)")
	f.StringVar(&tf.pickup, "pickup", "", "write messages as .eml files into this pickup directory instead of SMTP")
	f.BoolVar(&tf.mx, "mx", false, "deliver directly to each domain's MX hosts (STARTTLS opportunistic)")
	f.IntVar(&tf.mxPort, "mx-port", transport.DefaultMXPort, "port for --mx delivery")
	f.StringVar(&tf.localName, "helo", "", "name to send in EHLO (default the host name)")
}

func (tf *transportFlags) relayURLs() []string {
	if len(tf.relays) > 0 {
		return tf.relays
	}
	var out []string
	for _, s := range strings.Split(os.Getenv("BLASTER_RELAY"), ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func (tf *transportFlags) build(a *app) (transport.Transport, error) {
	urls := tf.relayURLs()
	chosen := 0
	for _, set := range []bool{tf.pickup != "", len(urls) > 0, tf.mx} {
		if set {
			chosen++
		}
	}
	switch {
	case chosen > 1:
		return nil, errors.New("give one of --relay, --mx or --pickup")
	case tf.pickup != "":
		return transport.NewPickup(tf.pickup, transport.PickupOptions{})
	case tf.mx:
		return transport.NewMX(transport.MXOptions{Port: tf.mxPort, LocalName: tf.localName}), nil
	case len(urls) == 0:
		return nil, errors.New("no transport: give --relay URL (or $BLASTER_RELAY), --mx, or --pickup DIR")
	}
	cfgs := make([]transport.RelayConfig, len(urls))
	for i, u := range urls {
		c, err := transport.ParseRelayURL(u)
		if err != nil {
			return nil, err
		}
		if tf.passwordFile != "" && c.User != "" && c.PasswordFile == "" {
			c.PasswordFile = tf.passwordFile
		}
		cfgs[i] = c
	}
	return transport.NewRelay(cfgs, transport.RelayOptions{LocalName: tf.localName, MaxConns: tf.relayConns})
}

func (tf *transportFlags) describe() string {
	if tf.pickup != "" {
		return "pickup:" + tf.pickup
	}
	if tf.mx {
		return "mx"
	}
	urls := tf.relayURLs()
	names := make([]string, 0, len(urls))
	for _, u := range urls {
		if c, err := transport.ParseRelayURL(u); err == nil {
			names = append(names, c.Redacted())
		}
	}
	return strings.Join(names, ",")
}
