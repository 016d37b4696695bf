#!/usr/bin/env bash
# bench/smtp.sh: blaster's SMTP client against Postfix's smtp-sink, side by
# side in one run with Postfix's smtp-source (the reference client) on the
# same kind of sink: 10 KB messages, 16 connections, messages/s at 1
# recipient per transaction and recipients/s at 100.
#
#   bench/smtp.sh              # MSGS=40000 (1 rcpt) and MSGS100=4000 (100 rcpts)
set -euo pipefail
cd "$(dirname "$0")/.."

SINK=/usr/sbin/smtp-sink SOURCE=/usr/sbin/smtp-source
[ -x "$SINK" ] && [ -x "$SOURCE" ] || { echo "needs Postfix's smtp-sink and smtp-source (apt-get install postfix)" >&2; exit 1; }
MSGS=${MSGS:-40000}
MSGS100=${MSGS100:-4000}
PORT=${PORT:-25253}
user=(); [ "$(id -u)" -eq 0 ] && user=(-u nobody)

"$SINK" "${user[@]}" 127.0.0.1:$PORT 256 &
sink=$!
trap 'kill $sink 2>/dev/null; wait $sink 2>/dev/null || true' EXIT
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

rate() { # $1 count, $2 seconds
	awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'
}
source_run() { # $1 messages, $2 recipients per message
	local t0 t1
	t0=$(date +%s.%N)
	"$SOURCE" -d -s 16 -m "$1" -l 10240 -r "$2" -f bench@example.test -t rcpt@example.test 127.0.0.1:$PORT
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

echo "machine: $(nproc) cores; $(/usr/local/go/bin/go version 2>/dev/null || go version)"
s1=$(source_run "$MSGS" 1)
s100=$(source_run "$MSGS100" 100)
echo "smtp-source -s 16 -l 10240 -r 1:   $MSGS messages in ${s1}s = $(rate "$MSGS" "$s1") messages/s"
echo "smtp-source -s 16 -l 10240 -r 100: $MSGS100 messages in ${s100}s = $(rate $((MSGS100 * 100)) "$s100") recipients/s"
kill $sink; wait $sink 2>/dev/null || true
trap - EXIT

echo "blaster (go test ./smtp -bench SendParallel, its own smtp-sink):"
go test ./smtp -run XXX -bench 'SendParallel' -benchtime 3s -count 1 | grep -E 'Benchmark|ok'
