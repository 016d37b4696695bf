package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
)

// servePprof serves net/http/pprof's handlers under /debug/pprof/ on addr
// (a mux of its own: nothing else is served there, and the handlers are not
// added to http.DefaultServeMux). The profiles show code and memory, not
// secrets, but addr belongs on loopback. A CPU profile or trace may last up
// to the server's write timeout (30 s). It returns the server, to be shut
// down, and the address it listens on (addr may name port 0).
func servePprof(ctx context.Context, addr string) (*httpServer, net.Addr, error) {
	ln, err := listenHTTP(addr, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("--pprof-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return startHTTP(context.WithoutCancel(ctx), ln, mux), ln.Addr(), nil
}
