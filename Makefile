# blaster's everyday commands. `make demo` and `make test` are the two the
# README opens with; .ci/run calls `make test` after starting what it needs.

# Go: the one on PATH, else the official tarball's place (sudo and fresh
# shells often lack /usr/local/go/bin on PATH).
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)

.PHONY: all build demo test vet fmt check-go

all: build

check-go:
	@command -v $(GO) >/dev/null 2>&1 || { \
		echo "Go is not installed: blaster needs Go 1.26 or later (https://go.dev/dl/)" >&2; exit 1; }

build: check-go
	$(GO) build -o bin/blaster ./cmd/blaster

# The demo finds or starts its own PostgreSQL (see `bin/blaster demo --help`)
# and keeps its files in .demo/.
demo: build
	bin/blaster demo

vet: check-go
	$(GO) vet ./...

# Tests use a real PostgreSQL: $$BLASTER_TEST_DATABASE_URL, else
# postgres://postgres@127.0.0.1:5432/test (see internal/dbtest); .ci/run
# installs and starts one on a fresh machine.
test: vet
	$(GO) test ./... -count=1 -timeout 12m

fmt: check-go
	$(GO) fmt ./...

# The benchmark driver is optional: the target exists only with its script.
ifneq ($(wildcard bench/run.sh),)
.PHONY: bench
bench: build
	bash bench/run.sh
endif
