package main

import (
	"context"
	"net"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/blaster-mail/blaster/unsubscribe"
)

// serveOptions are `blaster serve`'s flags.
type serveOptions struct {
	addr    string
	keyFile string
	// listening, if set, receives the bound address once the server
	// accepts connections (tests use --addr 127.0.0.1:0).
	listening func(net.Addr)
}

func newServeCmd(a *app) *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve one-click unsubscribe (RFC 8058), /healthz and /metrics over HTTP",
		Long: `serve runs the HTTP endpoint that List-Unsubscribe links point at:

  POST /u/{token}  with body List-Unsubscribe=One-Click: unsubscribe (RFC 8058)
  GET  /u/{token}  a page with a button that makes that POST (GET alone
                   never unsubscribes: link scanners follow links)
  GET  /healthz    200 when the database answers
  GET  /metrics    Prometheus metrics

Put it behind a TLS-terminating proxy: RFC 8058 links must be https. The
secret key is read from --key-file, else $BLASTER_UNSUBSCRIBE_KEY; it must be
the key the messages' tokens were made with.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(cmd.Context(), a, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.addr, "addr", "127.0.0.1:8080", "address to listen on (host:port)")
	f.StringVar(&o.keyFile, "key-file", "", "file holding the unsubscribe key (default $"+unsubscribe.KeyEnv+")")
	return cmd
}

func runServe(ctx context.Context, a *app, o *serveOptions) error {
	key, err := unsubscribe.LoadKey(o.keyFile, os.Getenv)
	if err != nil {
		return err
	}
	pool, err := a.db(ctx)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	unsub, err := unsubscribe.NewHandler(unsubscribe.Config{DB: pool, Key: key, Logger: a.logger, Registerer: reg})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(unsubscribe.PathPrefix, unsub)
	mux.HandleFunc("GET /healthz", healthz(pool, a.logger))
	mux.Handle("GET /metrics", metricsHandler(reg))

	ln, err := listenHTTP(o.addr, o.listening)
	if err != nil {
		return err
	}
	a.logger.Info("serving", "addr", ln.Addr().String())
	srv := startHTTP(ctx, ln, mux)
	select {
	case <-srv.Done():
	case <-ctx.Done():
	}
	return srv.Shutdown(ctx)
}
