package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// healthz answers GET /healthz: 200 "ok" when the database answers within
// 2 seconds, else 503.
func healthz(pool *pgxpool.Pool, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := pool.Ping(ctx); err != nil {
			logger.Warn("healthz: database unreachable", "err", err)
			http.Error(w, "database unreachable", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}
}

// metricsHandler serves reg's metrics in Prometheus's formats.
func metricsHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

// listenHTTP binds addr for an HTTP server and tells listening, when
// set, the address it got (tests listen on 127.0.0.1:0).
func listenHTTP(addr string, listening func(net.Addr)) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	if listening != nil {
		listening(ln.Addr())
	}
	return ln, nil
}

// httpServer serves h on ln, with timeouts that keep a slow client from
// holding a connection, until Shutdown.
type httpServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{} // closed when Serve has returned
	err  error         // what Serve returned
}

// startHTTP serves h on ln in the background; requests' contexts derive
// from ctx.
func startHTTP(ctx context.Context, ln net.Listener, h http.Handler) *httpServer {
	s := &httpServer{ln: ln, done: make(chan struct{}), srv: &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}}
	go func() {
		defer close(s.done)
		s.err = s.srv.Serve(ln)
	}()
	return s
}

// Done is closed when the server stopped, by Shutdown or by a failure.
func (s *httpServer) Done() <-chan struct{} { return s.done }

// Err is why the server stopped: nil after Shutdown. Read it after Done.
func (s *httpServer) Err() error {
	if errors.Is(s.err, http.ErrServerClosed) {
		return nil
	}
	if s.err != nil {
		return fmt.Errorf("serving on %s: %w", s.ln.Addr(), s.err)
	}
	return nil
}

// Shutdown stops accepting, waits up to 10 s for requests in flight, and
// returns the error that stopped the server, if any.
func (s *httpServer) Shutdown(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("shutting down HTTP on %s: %w", s.ln.Addr(), err)
	}
	<-s.done
	return s.Err()
}
