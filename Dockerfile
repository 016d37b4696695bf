# syntax=docker/dockerfile:1
# blaster's image: a static binary on distroless, run as a non-root user.
# Used by docker-compose.yml; `docker build -t blaster .` builds it alone.

# --- build ---------------------------------------------------------------
FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# CGO_ENABLED=0: a static binary for the distroless static base (Go's own
# DNS resolver; no libc needed).
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/blaster ./cmd/blaster

# --- run -----------------------------------------------------------------
# distroless/static: CA certificates (for verified TLS to relays and
# PostgreSQL), /etc/passwd with the nonroot user (uid 65532), no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/blaster /usr/local/bin/blaster
USER nonroot:nonroot
# The sink's default port; workers need no listening port.
EXPOSE 2525
ENTRYPOINT ["/usr/local/bin/blaster"]
CMD ["--help"]
