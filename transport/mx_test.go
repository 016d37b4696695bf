package transport_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/blaster-mail/blaster/internal/fakeclock"
	"github.com/blaster-mail/blaster/internal/smtptest"
	"github.com/blaster-mail/blaster/smtp"
	"github.com/blaster-mail/blaster/transport"
)

// fakeDNS answers MX and address lookups from maps; every MX host resolves
// to a loopback address, so all traffic stays on this machine.
type fakeDNS struct {
	mu      sync.Mutex
	mx      map[string][]*net.MX
	mxErr   map[string]error
	hosts   map[string][]string
	mxCalls int
}

func (d *fakeDNS) LookupMX(_ context.Context, domain string) ([]*net.MX, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mxCalls++
	if err := d.mxErr[domain]; err != nil {
		return nil, err
	}
	if recs, ok := d.mx[domain]; ok {
		return recs, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: domain, IsNotFound: true}
}

func (d *fakeDNS) LookupHost(_ context.Context, host string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a, ok := d.hosts[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (d *fakeDNS) calls() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mxCalls
}

// loopbackServers starts one server per option on 127.0.0.2, 127.0.0.3, …
// all on the same port (the MX transport dials one port on every host).
func loopbackServers(t *testing.T, opts ...smtptest.Options) (port int, servers []*smtptest.Server) {
	t.Helper()
	for try := 0; try < 20; try++ {
		ln, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Fatal(err)
		}
		port = ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		ok := true
		for i := range opts {
			probe, err := net.Listen("tcp", net.JoinHostPort("127.0.0."+strconv.Itoa(i+2), strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			_ = probe.Close()
		}
		if ok {
			break
		}
	}
	for i, o := range opts {
		o.Listen = net.JoinHostPort("127.0.0."+strconv.Itoa(i+2), strconv.Itoa(port))
		servers = append(servers, smtptest.StartServer(t, o))
	}
	return port, servers
}

func newMX(t *testing.T, dns *fakeDNS, port int, mod func(*transport.MXOptions)) *transport.MX {
	t.Helper()
	opts := transport.MXOptions{
		LookupMXFunc: dns.LookupMX, LookupHostFunc: dns.LookupHost,
		Port: port, LocalName: "client.example.test",
	}
	if mod != nil {
		mod(&opts)
	}
	m := transport.NewMX(opts)
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func sendTo(t *testing.T, tr transport.Transport, domain string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := tr.Session(ctx, domain)
	if err != nil {
		return err
	}
	env := &smtp.Envelope{From: "news@example.test", Rcpts: []smtp.Recipient{{Addr: "user@" + domain}}}
	_, err = s.Send(ctx, env, strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))
	s.Release(err)
	return err
}

func TestMXPriorityOrder(t *testing.T) {
	port, srv := loopbackServers(t, smtptest.Options{}, smtptest.Options{})
	dns := &fakeDNS{
		mx: map[string][]*net.MX{"example.test": {
			{Host: "mx-b.example.test.", Pref: 20}, {Host: "mx-a.example.test.", Pref: 10},
		}},
		hosts: map[string][]string{"mx-a.example.test": {"127.0.0.2"}, "mx-b.example.test": {"127.0.0.3"}},
	}
	m := newMX(t, dns, port, nil)
	if got := m.Route("Example.Test"); got != "mx:mx-a.example.test" {
		t.Errorf("Route = %q, want mx:mx-a.example.test (lowest preference first)", got)
	}
	for range 3 {
		if err := sendTo(t, m, "example.test"); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	if a, b := len(srv[0].Messages()), len(srv[1].Messages()); a != 3 || b != 0 {
		t.Errorf("preference 10 got %d, preference 20 got %d; want 3 and 0", a, b)
	}
	if n := srv[0].Connections(); n != 1 {
		t.Errorf("MX saw %d connections for 3 messages, want 1 (pooled)", n)
	}
}

func TestMXNextOnConnectFailure(t *testing.T) {
	// 127.0.0.2 has a server; the preferred MX resolves to 127.0.0.9 where
	// nothing listens on that port.
	port, srv := loopbackServers(t, smtptest.Options{})
	dns := &fakeDNS{
		mx: map[string][]*net.MX{"example.test": {
			{Host: "dead.example.test", Pref: 5}, {Host: "live.example.test", Pref: 10},
		}},
		hosts: map[string][]string{"dead.example.test": {"127.0.0.9"}, "live.example.test": {"127.0.0.2"}},
	}
	clk := fakeclock.New()
	m := newMX(t, dns, port, func(o *transport.MXOptions) { o.NowFunc = clk.Now })
	if err := sendTo(t, m, "example.test"); err != nil {
		t.Fatalf("send: %v", err)
	}
	if n := len(srv[0].Messages()); n != 1 {
		t.Errorf("second MX got %d messages, want 1", n)
	}
}

func TestMXNextOnTemporaryGreeting(t *testing.T) {
	port, srv := loopbackServers(t,
		smtptest.Options{GreetErr: &gosmtp.SMTPError{Code: 421, EnhancedCode: gosmtp.EnhancedCode{4, 7, 0}, Message: "try later"}},
		smtptest.Options{})
	dns := &fakeDNS{
		mx: map[string][]*net.MX{"example.test": {
			{Host: "busy.example.test", Pref: 10}, {Host: "ok.example.test", Pref: 20},
		}},
		hosts: map[string][]string{"busy.example.test": {"127.0.0.2"}, "ok.example.test": {"127.0.0.3"}},
	}
	m := newMX(t, dns, port, nil)
	if err := sendTo(t, m, "example.test"); err != nil {
		t.Fatalf("send: %v", err)
	}
	if n := len(srv[1].Messages()); n != 1 {
		t.Errorf("second MX got %d messages, want 1", n)
	}
	// Every MX failing is one error naming each host, classified as retry.
	dns.mx["other.test"] = []*net.MX{{Host: "busy.example.test", Pref: 10}}
	err := sendTo(t, m, "other.test")
	if err == nil || !strings.Contains(err.Error(), "busy.example.test") {
		t.Fatalf("err = %v, want one naming busy.example.test", err)
	}
	if got := smtp.Classify(err); got != smtp.Retry {
		t.Errorf("Classify = %v, want retry", got)
	}
}

func TestMXEqualPreferencesShuffled(t *testing.T) {
	dns := &fakeDNS{
		mx: map[string][]*net.MX{"example.test": {
			{Host: "mx1.example.test", Pref: 10}, {Host: "mx2.example.test", Pref: 10},
			{Host: "mx3.example.test", Pref: 10}, {Host: "backup.example.test", Pref: 50},
		}},
	}
	clk := fakeclock.New()
	m := newMX(t, dns, 25, func(o *transport.MXOptions) { o.NowFunc = clk.Now; o.CacheTTL = time.Minute })
	firsts := map[string]int{}
	for range 60 {
		firsts[m.Route("example.test")]++
		clk.Advance(2 * time.Minute) // expire the cache: a new lookup, a new shuffle
	}
	if len(firsts) != 3 || firsts["mx:backup.example.test"] != 0 {
		t.Errorf("first hosts over 60 lookups = %v, want each of the three preference-10 hosts, never the backup", firsts)
	}

	// With the shuffle injected, the order is exactly what it makes.
	reverse := func(n int, swap func(i, j int)) {
		for i := 0; i < n/2; i++ {
			swap(i, n-1-i)
		}
	}
	m2 := newMX(t, dns, 25, func(o *transport.MXOptions) { o.Shuffle = reverse })
	if got := m2.Route("example.test"); got != "mx:mx3.example.test" {
		t.Errorf("Route with a reversing shuffle = %q, want mx:mx3.example.test", got)
	}
}

func TestMXImplicit(t *testing.T) {
	port, srv := loopbackServers(t, smtptest.Options{})
	dns := &fakeDNS{hosts: map[string][]string{"example.test": {"127.0.0.2"}}}
	m := newMX(t, dns, port, nil)
	if got := m.Route("example.test"); got != "mx:example.test" {
		t.Errorf("Route = %q, want the domain itself as implicit MX", got)
	}
	if err := sendTo(t, m, "example.test"); err != nil {
		t.Fatalf("send: %v", err)
	}
	if n := len(srv[0].Messages()); n != 1 {
		t.Errorf("implicit MX got %d messages, want 1", n)
	}
}

func TestMXPermanentFailures(t *testing.T) {
	dns := &fakeDNS{
		mx:    map[string][]*net.MX{"nullmx.example.test": {{Host: ".", Pref: 0}}},
		mxErr: map[string]error{"flaky.example.test": &net.DNSError{Err: "server misbehaving", Name: "flaky.example.test", IsTemporary: true}},
	}
	m := newMX(t, dns, 25, nil)
	tests := []struct {
		domain string
		code   int
		want   smtp.Outcome
	}{
		{"nullmx.example.test", 556, smtp.Bounce},
		{"nxdomain.example.test", 550, smtp.Bounce},
		{"flaky.example.test", 0, smtp.Retry},
	}
	for _, tt := range tests {
		_, err := m.Session(context.Background(), tt.domain)
		if err == nil {
			t.Errorf("%s: Session succeeded", tt.domain)
			continue
		}
		if got := smtp.Classify(err); got != tt.want {
			t.Errorf("%s: Classify(%v) = %v, want %v", tt.domain, err, got, tt.want)
		}
		var se *smtp.Error
		if tt.code != 0 && (!errors.As(err, &se) || se.Code != tt.code) {
			t.Errorf("%s: err = %v, want an SMTP %d", tt.domain, err, tt.code)
		}
	}
}

func TestMXCache(t *testing.T) {
	dns := &fakeDNS{
		mx:    map[string][]*net.MX{"example.test": {{Host: "mx.example.test", Pref: 10}}},
		mxErr: map[string]error{},
	}
	clk := fakeclock.New()
	m := newMX(t, dns, 25, func(o *transport.MXOptions) { o.NowFunc = clk.Now; o.CacheTTL = time.Minute })
	m.Route("example.test")
	m.Route("example.test")
	if n := dns.calls(); n != 1 {
		t.Errorf("%d MX lookups within the TTL, want 1", n)
	}
	clk.Advance(61 * time.Second)
	m.Route("example.test")
	if n := dns.calls(); n != 2 {
		t.Errorf("%d MX lookups after the TTL, want 2", n)
	}

	// Transient failures are not cached.
	dns.mu.Lock()
	dns.mxErr["flaky.example.test"] = &net.DNSError{Err: "timeout", IsTimeout: true, IsTemporary: true}
	dns.mu.Unlock()
	m.Route("flaky.example.test")
	m.Route("flaky.example.test")
	if n := dns.calls(); n != 4 {
		t.Errorf("%d MX lookups, want 4: a transient failure is asked again", n)
	}
}

func TestMXOpportunisticSTARTTLS(t *testing.T) {
	ca := smtptest.NewCA(t, "mx.example.test")
	port, srv := loopbackServers(t, smtptest.Options{TLS: ca.ServerConfig()}, smtptest.Options{})
	dns := &fakeDNS{
		mx: map[string][]*net.MX{
			"tls.test":   {{Host: "mx.example.test", Pref: 10}},
			"plain.test": {{Host: "plain.example.test", Pref: 10}},
		},
		hosts: map[string][]string{"mx.example.test": {"127.0.0.2"}, "plain.example.test": {"127.0.0.3"}},
	}
	m := newMX(t, dns, port, func(o *transport.MXOptions) {
		o.TLSConfig = ca.ClientConfig()
	})
	for _, d := range []string{"tls.test", "plain.test"} {
		if err := sendTo(t, m, d); err != nil {
			t.Fatalf("send to %s: %v", d, err)
		}
	}
	if got := srv[0].Messages(); len(got) != 1 || !got[0].TLS {
		t.Errorf("MX offering STARTTLS received %+v, want one message over TLS", got)
	}
	if got := srv[1].Messages(); len(got) != 1 || got[0].TLS {
		t.Errorf("MX without STARTTLS received %+v, want one message in plain text", got)
	}
	if s := m.Stats(); len(s) != 2 {
		t.Errorf("Stats has %d pools, want one per MX host: %v", len(s), s)
	}
}

// FuzzMXOrder feeds arbitrary MX answers (outside input: DNS) through the
// transport and checks the host order it derives: a permutation of the
// distinct non-null hosts, by non-decreasing preference.
func FuzzMXOrder(f *testing.F) {
	f.Add([]byte{10, 'a', 20, 'b', 10, 'c'})
	f.Add([]byte{0, '.'})
	f.Add([]byte{5, 'a', 5, 'a', 0, '.'})
	f.Fuzz(func(t *testing.T, data []byte) {
		var recs []*net.MX
		prefOf := map[string]uint16{}
		for i := 0; i+1 < len(data) && len(recs) < 16; i += 2 {
			host := string(rune('a'+data[i+1]%8)) + ".example.test."
			if data[i+1]%9 == 8 {
				host = "."
			}
			recs = append(recs, &net.MX{Host: host, Pref: uint16(data[i])})
			if h := strings.TrimSuffix(host, "."); h != "" {
				if p, ok := prefOf[h]; !ok || uint16(data[i]) < p {
					prefOf[h] = uint16(data[i])
				}
			}
		}
		dns := &fakeDNS{mx: map[string][]*net.MX{"example.test": recs}, hosts: map[string][]string{}}
		m := transport.NewMX(transport.MXOptions{LookupMXFunc: dns.LookupMX, LookupHostFunc: dns.LookupHost})
		defer m.Close()
		route := m.Route("example.test")
		if len(prefOf) == 0 {
			if route != "mx:example.test" {
				t.Fatalf("no usable MX: Route = %q", route)
			}
			return
		}
		host := strings.TrimPrefix(route, "mx:")
		min := uint16(65535)
		for _, p := range prefOf {
			min = minPref(min, p)
		}
		if p, ok := prefOf[host]; !ok || p != min {
			t.Fatalf("records %v: Route %q is not a most preferred host (pref %d, want %d)", data, route, p, min)
		}
	})
}

func minPref(a, b uint16) uint16 {
	if a < b {
		return a
	}
	return b
}
