#!/usr/bin/env bash
# bench/throttle.sh: the throttle end to end, with the real binaries:
# `blaster sink --timeline` as the SMTP server, WORKERS `blaster worker`
# processes against one PostgreSQL database.
#
#   bench/throttle.sh rate     # a relay limited to RATE/s (200) by config, a
#                              # DURATION-second (120) campaign: the rate the
#                              # server saw per second and overall, and the
#                              # verdict (overall within 2% of RATE, no second
#                              # over 110% of it)
#   bench/throttle.sh alert    # an alert of ALERT (1000) recipients sent with
#                              # `blaster send` while a NEWSLETTER (200000)
#                              # recipient newsletter runs: time from `blaster
#                              # send` to its last recipient recorded sent
#                              # (goal: under 2 s)
#
#   bench/throttle.sh smoke    # the shipped default.toml with destination
#                              # limits through the relay (20/s per domain, 16/s
#                              # for newsletters), one worker, SMOKE (5000)
#                              # recipients over 10 domains: the rate reached
#                              # against the 160/s the limits allow; SHARED=1
#                              # for a same-for-all message
#
#   DURATION=20 bench/throttle.sh rate    # a short run
#
# Settings (environment): WORKERS (3), NEWSLETTER_WORKERS per worker (16),
# POLL (the workers' --poll-interval; default theirs, 1s besides LISTEN/NOTIFY),
# RATE, DURATION; for alert: ALERT_RATE (the relay's limit, 2000/s),
# NEWSLETTER, ALERT, ALERT_AFTER (seconds of newsletter before the alert,
# 10). BENCH_ADMIN_URL is the server's maintenance database (default
# postgres://postgres@127.0.0.1:5432/test); the database
# blaster_bench_throttle is dropped and recreated. PORT (12910) is the sink's.
set -euo pipefail

MODE=${1:-rate}
WORKERS=${WORKERS:-$([ "$MODE" = smoke ] && echo 1 || echo 3)}
NEWSLETTER_WORKERS=${NEWSLETTER_WORKERS:-16}
RATE=${RATE:-200}
DURATION=${DURATION:-120}
ALERT_RATE=${ALERT_RATE:-2000}
NEWSLETTER=${NEWSLETTER:-200000}
ALERT=${ALERT:-1000}
ALERT_AFTER=${ALERT_AFTER:-10}
SMOKE=${SMOKE:-5000}
SHARED=${SHARED:-0}
PORT=${PORT:-12910}
ADMIN=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
DBNAME=blaster_bench_throttle
URL=$(printf '%s' "$ADMIN" | sed -E "s#/[^/?]+(\?|$)#/$DBNAME\1#")

cd "$(dirname "$0")/.."
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
blaster() { "$work/blaster" --database-url "$URL" --log-level warn "$@"; }
sql() { psql "$URL" -Atqc "$1"; }

go build -o "$work/blaster" ./cmd/blaster
psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DBNAME" -c "CREATE DATABASE $DBNAME" 2>/dev/null
blaster migrate >/dev/null

# contacts N FIRST DOMAINS: a CSV of N addresses over DOMAINS .example.test
# domains, numbered from FIRST.
contacts() {
	awk -v n="$1" -v first="$2" -v d="$3" 'BEGIN {
		print "email,name"
		for (i = first; i < first + n; i++) printf "user%d@d%d.example.test,User %d\n", i, i % d, i
	}'
}

# start_sink and start_workers run the server and the workers in the
# background; stop_all stops them softly (SIGTERM) and waits.
start_sink() {
	"$work/blaster" --log-level warn sink --addr 127.0.0.1:$PORT --timeline "$work/timeline.csv" \
		--stats-every 1h >"$work/sink.out" 2>&1 &
	pids+=($!)
	for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
}
start_workers() { # $1 throttle config
	for i in $(seq "$WORKERS"); do
		"$work/blaster" --database-url "$URL" --log-level warn worker --relay "smtp://127.0.0.1:$PORT?tls=none" --throttle-config "$1" \
			--newsletter-workers "$NEWSLETTER_WORKERS" ${POLL:+--poll-interval "$POLL"} >"$work/worker$i.log" 2>&1 &
		pids+=($!)
	done
}
stop_all() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	pids=()
}
wait_done() { # $1 campaign id
	until [ "$(sql "SELECT state FROM campaigns WHERE id = $1")" = done ]; do sleep 0.2; done
}
# prepare RATE SETTINGS N BODY: a throttle config limiting the relay to RATE/s
# (burst RATE/10) with SETTINGS at the top, a list "bench" of N contacts
# over 50 domains, and a draft campaign of BODY to it, whose id goes to $id.
prepare() {
	printf '%s\n[route]\nrate = %d\nburst = %d\n' "$2" "$1" $(($1 / 10)) >"$work/throttle.toml"
	contacts "$3" 1 50 >"$work/list.csv"
	blaster import --list bench "$work/list.csv" >/dev/null
	echo "$4" >"$work/body.txt"
	id=$(blaster campaign create --name bench --list bench --from "Bench <bench@example.test>" \
		--subject "bench" --text "$work/body.txt" | grep -o '[0-9]\+' | head -1)
}

# per_second LIMIT TOLERANCE: the server's per-second counts (the timeline)
# against LIMIT/s, and the verdict: overall within TOLERANCE of it, no
# second over 110%. The first and last seconds are partial: the verdict is
# on the full seconds between them.
per_second() {
	awk -F, -v rate="$1" -v tol="$2" 'NR > 1 { s[++k] = $2 }
	END {
		for (i = 2; i < k; i++) {
			sum += s[i]; n++
			if (min == "" || s[i] < min) min = s[i]
			if (s[i] > max) max = s[i]
			if (s[i] > 1.1 * rate) over++
		}
		if (s[1] > max) max = s[1]
		if (s[1] > 1.1 * rate) over++
		printf "per second (%d s): first %d, last %d, full seconds min %d max %d; first 10:", k, s[1], s[k], min, max
		for (i = 1; i <= 10 && i <= k; i++) printf " %d", s[i]
		printf "\n"
		avg = sum / n
		printf "overall (full seconds): %.2f/s = %.2f%% of %d/s; seconds over 110%%: %d\n", avg, 100 * avg / rate, rate, over + 0
		dev = avg / rate - 1; if (dev < 0) dev = -dev
		printf "verdict: %s\n", (dev <= tol && over == 0) ? sprintf("PASS (within %d%%, no second over 110%%)", 100 * tol) : "FAIL"
	}' "$work/timeline.csv"
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $WORKERS workers x $NEWSLETTER_WORKERS newsletter batches"

case "$MODE" in
rate)
	n=$((RATE * DURATION))
	# No share kept for alerts: the newsletter may use all of the limit.
	prepare "$RATE" 'alert_reserve = -1' "$n" 'Hello {{.Name}}, this is the throttle benchmark.'
	start_sink
	start_workers "$work/throttle.toml"
	sleep 1
	t0=$(now)
	blaster campaign start "$id" >/dev/null
	wait_done "$id"
	t1=$(now)
	stop_all
	echo "campaign: $n personalized messages, relay limited to $RATE/s ([route] rate = $RATE, burst = $((RATE / 10)))"
	awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "campaign start to done: %.1f s (%.1f/s)\n", b - a, n / (b - a) }'
	sql "SELECT state, count(*) FROM deliveries WHERE campaign_id = $id GROUP BY 1 ORDER BY 1" | sed 's/^/ledger: /'
	tail -1 "$work/sink.out"
	per_second "$RATE" 0.02
	;;
smoke)
	# default.toml as shipped, but destination limits also through the relay.
	sed 's/^domain_limits_via_relay = false/domain_limits_via_relay = true/' throttle/default.toml >"$work/throttle.toml"
	grep -q '^domain_limits_via_relay = true' "$work/throttle.toml" || { echo "default.toml lacks domain_limits_via_relay" >&2; exit 1; }
	contacts "$SMOKE" 1 10 >"$work/list.csv"
	blaster import --list bench "$work/list.csv" >/dev/null
	body='Hello {{.Name}}, this is the throttle smoke run.'
	[ "$SHARED" = 1 ] && body='Hello all, this is the throttle smoke run.'
	echo "$body" >"$work/body.txt"
	id=$(blaster campaign create --name smoke --list bench --from "Bench <bench@example.test>" \
		--subject "smoke" --text "$work/body.txt" | grep -o '[0-9]\+' | head -1)
	start_sink
	start_workers "$work/throttle.toml"
	sleep 1
	t0=$(now)
	blaster campaign start "$id" >/dev/null
	wait_done "$id"
	t1=$(now)
	stop_all
	limit=$((10 * 16)) # 10 domains x 80% (the newsletter share) of 20/s
	echo "campaign: $SMOKE recipients over 10 domains ($([ "$SHARED" = 1 ] && echo same-for-all || echo personalized)), limits allow $limit/s"
	awk -v n="$SMOKE" -v a="$t0" -v b="$t1" 'BEGIN { printf "campaign start to done: %.1f s (%.1f/s)\n", b - a, n / (b - a) }'
	sql "SELECT state, count(*) FROM deliveries WHERE campaign_id = $id GROUP BY 1 ORDER BY 1" | sed 's/^/ledger: /'
	per_second "$limit" 0.10
	;;
alert)
	# The default alert_reserve (0.2) keeps 20% of the limit for alerts.
	prepare "$ALERT_RATE" '' "$NEWSLETTER" 'Hello all, this is the newsletter.'
	contacts "$ALERT" $((NEWSLETTER + 1)) 10 | tail -n +2 | cut -d, -f1 >"$work/alert.txt"
	start_sink
	start_workers "$work/throttle.toml"
	sleep 1
	blaster campaign start "$id" >/dev/null
	sleep "$ALERT_AFTER"
	before=$(sql "SELECT count(*) FROM deliveries WHERE campaign_id = $id AND state = 'sent'")
	t0=$(now)
	aid=$(blaster send --from "Ops <ops@example.test>" --subject "alert" --text "Something happened." \
		--file "$work/alert.txt" | grep -o 'campaign [0-9]\+' | grep -o '[0-9]\+')
	t1=$(now)
	wait_done "$aid"
	first=$(sql "SELECT extract(epoch FROM min(sent_at)) FROM deliveries WHERE campaign_id = $aid")
	last=$(sql "SELECT extract(epoch FROM max(sent_at)) FROM deliveries WHERE campaign_id = $aid")
	after=$(sql "SELECT count(*) FROM deliveries WHERE campaign_id = $id AND state = 'sent'")
	stop_all
	echo "newsletter: $NEWSLETTER recipients (same for all) through a relay limited to $ALERT_RATE/s; $before sent when the alert started"
	sql "SELECT 'alert ledger: ' || state || ' ' || count(*) FROM deliveries WHERE campaign_id = $aid GROUP BY state"
	awk -v a="$t0" -v b="$t1" -v f="$first" -v l="$last" -v n="$ALERT" -v d="$((after - before))" 'BEGIN {
		printf "blaster send returned after %.2f s; first alert recipient recorded sent after %.2f s\n", b - a, f - a
		printf "alert of %d: blaster send to last recipient sent: %.2f s (newsletter sent %d meanwhile)\n", n, l - a, d
		printf "verdict: %s\n", (l - a < 2) ? "PASS (under 2 s)" : "FAIL (goal: under 2 s)"
	}'
	;;
*)
	echo "usage: bench/throttle.sh rate|smoke|alert" >&2
	exit 2
	;;
esac
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
