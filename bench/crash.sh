#!/bin/sh
# Crash and fault soak (not in CI): a 200,000-recipient campaign to a
# fault-injecting SMTP server while the worker process is SIGKILLed and
# restarted 20 times at random points; prints the reconciliation of the
# server's record with blaster's ledger. Extra arguments go to bench/crash
# (e.g. -n 50000 -kills 5 -at-least-once -personalized=false -seed 7).
#
#   bench/crash.sh
#
# Needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust), or -admin-url.
set -eu
cd "$(dirname "$0")/.."
go build -o bench/.crash-blaster ./cmd/blaster
trap 'rm -f bench/.crash-blaster' EXIT
echo "load: $(uptime)"
go run ./bench/crash -blaster bench/.crash-blaster "$@"
echo "load: $(uptime)"
