#!/usr/bin/env bash
# bench/smtp.sh: blaster's SMTP client against Postfix's smtp-sink, side by
# side in one run with Postfix's smtp-source (the reference client) on the
# same kind of sink: 10 KB messages, 16 connections, messages/s at 1
# recipient per transaction and recipients/s at 100.
#
#   bench/smtp.sh              # MSGS=40000 (1 rcpt) and MSGS100=4000 (100 rcpts)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

need_postfix
MSGS=${MSGS:-40000}
MSGS100=${MSGS100:-4000}
PORT=${PORT:-25253}

start_sink "$PORT"
trap stop_sink EXIT

echo "machine: $(nproc) cores; $(/usr/local/go/bin/go version 2>/dev/null || go version)"
read -r s1 _ < <(source_run "$PORT" "$MSGS" 1)
read -r s100 _ < <(source_run "$PORT" "$MSGS100" 100)
echo "smtp-source -s 16 -l 10240 -r 1:   $MSGS messages in ${s1}s = $(rate "$MSGS" "$s1") messages/s"
echo "smtp-source -s 16 -l 10240 -r 100: $MSGS100 messages in ${s100}s = $(rate $((MSGS100 * 100)) "$s100") recipients/s"
stop_sink
trap - EXIT

echo "blaster (go test ./smtp -bench SendParallel, its own smtp-sink):"
go test ./smtp -run XXX -bench 'SendParallel' -benchtime 3s -count 1 | grep -E 'Benchmark|ok'
