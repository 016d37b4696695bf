#!/usr/bin/env bash
# bench/run.sh (`make bench`): blaster end to end against the physical limit
# of this machine, in one run:
#
#   1. Postfix's smtp-source (the reference client) against smtp-sink on
#      loopback: messages/s at 1 recipient per transaction, recipients/s at
#      100, 10 KB messages, 16 connections;
#   2. blaster on the same sink: a personalized 10 KB campaign to
#      $PERSONALIZED contacts (one transaction per recipient) and a
#      same-for-all one to $SAME contacts (100 recipients per transaction):
#      wall time from `campaign start` to done, recipients/s, the worker's CPU
#      seconds per 1,000 recipients, its RSS (after 10,000 recipients and at
#      its peak), and the CPU of the PostgreSQL backends serving the bench
#      database and of the sink;
#   3. the fan-out alone: how long `campaign start` of the same-for-all
#      campaign takes (no worker is busy meanwhile: the transaction commits
#      before any batch can be fetched).
#
# It prints a table with blaster's figures as ratios of smtp-source's from
# the same run and writes it into BENCHMARKS.md (section "End to end").
#
#   bench/run.sh                                  # 200,000 and 1,000,000
#   PERSONALIZED=20000 SAME=100000 bench/run.sh   # a quick check
#
# Settings (environment):
#   PERSONALIZED, SAME    campaign sizes (200000, 1000000)
#   MSGS, MSGS100         smtp-source messages at 1 and 100 recipients (40000, 4000)
#   WORKERS               the worker's --newsletter-workers and relay max_conns (16)
#   BENCH_PORT            first of the ports used (13000: sink; +60 pprof)
#   PROFILE=DIR           save a CPU profile of the worker while it sends each
#                         campaign (the first PROFILE_SECONDS, default 20) into DIR
#   BENCH_PRIVATE_PG=1    use a private cluster in .bench/pg even when
#                         127.0.0.1:5432 answers
#   WRITE_BENCHMARKS=0    do not touch BENCHMARKS.md
#
# The database is blaster_bench on the server at 127.0.0.1:5432 (user
# postgres, no password), else a private cluster started as `blaster demo`
# does (bench/pgup). Its contacts and lists are kept between runs (built
# once with generate_series: this measures sending, not import); campaigns,
# deliveries and jobs of earlier runs are dropped at the start.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need_postfix

PERSONALIZED=${PERSONALIZED:-200000}
SAME=${SAME:-1000000}
MSGS=${MSGS:-40000}
MSGS100=${MSGS100:-4000}
WORKERS=${WORKERS:-16}
BENCH_PORT=${BENCH_PORT:-13000}
SINK_PORT=$BENCH_PORT
PPROF_PORT=$((BENCH_PORT + 60))
PROFILE=${PROFILE:-}
PROFILE_SECONDS=${PROFILE_SECONDS:-20}
CAMPAIGN_TIMEOUT=${CAMPAIGN_TIMEOUT:-3600}
DBNAME=${BENCH_DB:-blaster_bench}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

mkdir -p .bench
work=$(mktemp -d)
PGUP_PID= WORKER_PID=
cleanup() {
	[ -n "$WORKER_PID" ] && { kill "$WORKER_PID" 2>/dev/null; wait "$WORKER_PID" 2>/dev/null || true; }
	stop_sink
	[ -n "$PGUP_PID" ] && { kill "$PGUP_PID" 2>/dev/null; wait "$PGUP_PID" 2>/dev/null || true; }
	rm -rf "$work"
}
trap cleanup EXIT

"$GO" build -o bin/blaster ./cmd/blaster
BLASTER=$PWD/bin/blaster

# load: the 1-minute load average, recorded with every figure (other work
# on the machine inflates wall times; CPU per recipient less so).
load() { cut -d' ' -f1 /proc/loadavg; }

# --- 1. PostgreSQL ----------------------------------------------------------
unset DATABASE_URL
if [ -z "${BENCH_PRIVATE_PG:-}" ] && pg_isready -q -h 127.0.0.1 -p 5432 &&
	psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; then
	export PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres PGSSLMODE=disable
	pgwhere="the server at 127.0.0.1:5432"
else
	"$GO" build -o "$work/pgup" ./bench/pgup
	rm -f .bench/pg.env
	"$work/pgup" -dir .bench/pg -env .bench/pg.env &
	PGUP_PID=$!
	for _ in $(seq 1200); do
		[ -f .bench/pg.env ] && break
		kill -0 "$PGUP_PID" 2>/dev/null || { echo "starting a private PostgreSQL failed" >&2; exit 1; }
		sleep 0.1
	done
	set -a; . .bench/pg.env; set +a
	pgwhere="a private cluster in .bench/pg"
fi
export PGDATABASE=$DBNAME
psql -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$DBNAME'" | grep -q 1 ||
	psql -d postgres -qc "CREATE DATABASE $DBNAME"
"$BLASTER" migrate >/dev/null

# Contacts 1..N at 50 domains, and a list bench-N of the first N, built
# once. The bench is about sending: these go in with generate_series.
max=$(( PERSONALIZED > SAME ? PERSONALIZED : SAME ))
have=$(psql -Atc "SELECT coalesce(max(id), 0) FROM contacts")
if [ "$have" -lt "$max" ]; then
	echo "creating contacts $((have + 1))..$max"
	psql -qc "
		INSERT INTO contacts (email, name, attrs)
		SELECT format('user%s@d%s.example.test', g, g % 50), format('Contact %s', g),
		       jsonb_build_object('city', (ARRAY['Oslo','Rome','Lima','Kyiv','Bern','Riga','Nice','São Paulo','Zürich'])[1 + g % 9],
		                          'plan', (ARRAY['free','pro','team'])[1 + g % 3])
		FROM generate_series($((have + 1)), $max) g"
fi
for n in "$PERSONALIZED" "$SAME"; do
	members=$(psql -Atc "SELECT count(*) FROM list_members m JOIN lists l ON l.id = m.list_id WHERE l.name = 'bench-$n'")
	if [ "$members" -ne "$n" ]; then
		echo "creating list bench-$n"
		psql -qc "DELETE FROM lists WHERE name = 'bench-$n'" \
			-c "INSERT INTO lists (name) VALUES ('bench-$n')" \
			-c "INSERT INTO list_members (list_id, contact_id)
			    SELECT (SELECT id FROM lists WHERE name = 'bench-$n'), id FROM contacts WHERE id <= $n"
	fi
done
# Earlier runs' campaigns go; the contacts stay.
psql -qc "SET client_min_messages = warning; TRUNCATE deliveries, batches, campaigns, river_job CASCADE" -c "VACUUM ANALYZE"

# --- 2. The sink and the reference client ----------------------------------
start_sink "$SINK_PORT"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); PostgreSQL $(psql -Atc 'SHOW server_version' | cut -d' ' -f1) ($pgwhere)"

c0=$(cpu_ticks "$SINK_PID")
read -r src1_s src1_cpu < <(source_run "$SINK_PORT" "$MSGS" 1)
sink1_cpu=$(( $(cpu_ticks "$SINK_PID") - c0 )) load1=$(load)
c0=$(cpu_ticks "$SINK_PID")
read -r src100_s src100_cpu < <(source_run "$SINK_PORT" "$MSGS100" 100)
sink100_cpu=$(( $(cpu_ticks "$SINK_PID") - c0 )) load100=$(load)
src1_rate=$(rate "$MSGS" "$src1_s")
src100_rate=$(rate $((MSGS100 * 100)) "$src100_s")
echo "smtp-source -s 16 -l 10240 -r 1:   $MSGS messages in ${src1_s}s = $src1_rate messages/s (load $load1)"
echo "smtp-source -s 16 -l 10240 -r 100: $MSGS100 messages in ${src100_s}s = $src100_rate recipients/s (load $load100)"

# --- 3. blaster's campaigns -------------------------------------------------
# Templates: a 10 KB HTML newsletter; the personalized one reads the
# contact's name and city in every paragraph, the other reads nothing.
html() { # $1: "yes" for merge fields
	awk -v p="$1" 'BEGIN {
		who = p == "yes" ? "{{.Name}} in {{.Attrs.city}}" : "our readers"
		printf "<!doctype html><html><body><h1>Hello %s</h1>\n", p == "yes" ? "{{.Name}}" : "reader"
		for (i = 0; len < 10240; i++) {
			line = sprintf("<p class=\"para\">Paragraph %d for %s: Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua.</p>", i, who)
			print line; len += length(line) + 1
		}
		print "</body></html>"
	}'
}
html yes > "$work/personalized.html"
html no > "$work/same.html"

start_worker() {
	local args=(worker --relay "smtp://127.0.0.1:$SINK_PORT?tls=none&max_conns=$WORKERS"
		--newsletter-workers "$WORKERS" --helo bench.blaster.test --log-level info)
	[ -n "$PROFILE" ] && args+=(--pprof-addr "127.0.0.1:$PPROF_PORT")
	"$BLASTER" "${args[@]}" 2> "$work/worker.log" &
	WORKER_PID=$!
	for _ in $(seq 300); do
		grep -q 'worker started' "$work/worker.log" && return 0
		kill -0 "$WORKER_PID" 2>/dev/null || break
		sleep 0.1
	done
	cat "$work/worker.log" >&2
	echo "the worker did not start" >&2
	exit 1
}

stop_worker() {
	kill -TERM "$WORKER_PID"
	wait "$WORKER_PID" || { echo "the worker exited with $?; its log:" >&2; tail -20 "$work/worker.log" >&2; }
	WORKER_PID=
}

# PostgreSQL CPU: the backends of the bench database (their process title
# names it), sampled while a campaign runs; a backend that exits keeps its
# last sample. Background processes shared with other databases (WAL
# writer, checkpointer) are not counted.
declare -A pgcpu
pg_sample() {
	local pid
	for pid in $(pgrep -f "^postgres: .* $DBNAME " || true); do
		pgcpu[$pid]=$(cpu_ticks "$pid")
	done
}
pg_total() {
	local t=0 pid
	for pid in "${!pgcpu[@]}"; do t=$((t + pgcpu[$pid])); done
	echo "$t"
}

# run_campaign NAME LIST SUBJECT HTMLFILE: creates the campaign, starts a
# fresh worker, starts the campaign and follows it to done. Sets R_* results.
run_campaign() {
	local name=$1 list=$2 subject=$3 htmlf=$4
	local id out t0 w0 s0 p0 curl_pid started=0 sent=0 state= i=0 prof=
	id=$("$BLASTER" campaign create --name "$name" --list "$list" --from "Bench <bench@example.test>" \
		--subject "$subject" --html "$htmlf")
	start_worker
	pgcpu=(); pg_sample; p0=$(pg_total)
	w0=$(cpu_ticks "$WORKER_PID") s0=$(cpu_ticks "$SINK_PID")
	R_RSS10K=
	t0=$(now)
	rm -f "$work/start.rc"
	{ "$BLASTER" campaign start "$id" > "$work/start.out" 2>&1; echo $? > "$work/start.rc"; } &
	while :; do
		sleep 0.2
		pg_sample
		if [ "$started" = 0 ] && [ -s "$work/start.rc" ]; then
			[ "$(cat "$work/start.rc")" = 0 ] || { cat "$work/start.out" >&2; echo "campaign start failed" >&2; exit 1; }
			started=1
			R_FANOUT_PG=$(( $(pg_total) - p0 ))
			out=$(cat "$work/start.out")
			if [ -n "$PROFILE" ]; then # the sending, not the fan-out
				mkdir -p "$PROFILE"
				prof="$PROFILE/worker-$name.pprof"
				curl -s -o "$prof" "http://127.0.0.1:$PPROF_PORT/debug/pprof/profile?seconds=$PROFILE_SECONDS" &
				curl_pid=$!
			fi
			# "started campaign 3: N recipients in B batches, 0 suppressed (1.234s)"
			R_FANOUT=$(sed -E 's/.*\(([0-9.]+)(m?s|µs)\)$/\1 \2/' <<<"$out" |
				awk '{ print $2 == "ms" ? $1 / 1000 : ($2 == "µs" ? $1 / 1e6 : $1) }')
		fi
		if [ "$started" = 1 ] && [ $((i++ % 5)) = 0 ]; then
			read -r state sent < <(psql -AtF' ' -c "
				SELECT c.state, coalesce(sum(b.size) FILTER (WHERE b.done), 0)
				FROM campaigns c LEFT JOIN batches b ON b.campaign_id = c.id WHERE c.id = $id GROUP BY c.state")
			if [ -z "$R_RSS10K" ] && [ "$sent" -ge 10000 ]; then R_RSS10K=$(status_kb "$WORKER_PID" VmRSS); fi
			[ "$state" = done ] && break
		fi
		if [ "$(awk -v a="$t0" -v b="$(now)" -v m="$CAMPAIGN_TIMEOUT" 'BEGIN { print (b - a > m) }')" = 1 ]; then
			echo "campaign $id not done after ${CAMPAIGN_TIMEOUT}s ($sent sent)" >&2
			exit 1
		fi
	done
	R_WALL=$(since "$t0")
	R_WORKER_CPU=$(( $(cpu_ticks "$WORKER_PID") - w0 ))
	R_SINK_CPU=$(( $(cpu_ticks "$SINK_PID") - s0 ))
	pg_sample
	R_PG_CPU=$(( $(pg_total) - p0 ))
	R_HWM=$(status_kb "$WORKER_PID" VmHWM)
	R_RSS=$(status_kb "$WORKER_PID" VmRSS)
	R_LOAD=$(load)
	[ -n "$prof" ] && wait "$curl_pid"
	stop_worker
	read -r R_SENT R_TOTAL R_DB_WALL < <(psql -AtF' ' -c "
		SELECT (SELECT count(*) FROM deliveries WHERE campaign_id = $id AND state = 'sent'), total,
		       round(extract(epoch FROM finished_at - started_at)::numeric, 3)
		FROM campaigns WHERE id = $id")
	if [ "$R_SENT" -ne "$R_TOTAL" ]; then
		echo "campaign $id: only $R_SENT of $R_TOTAL recipients sent" >&2
		psql -c "SELECT state, last_text, count(*) FROM deliveries WHERE campaign_id = $id GROUP BY 1, 2" >&2
		exit 1
	fi
	echo "$name: $R_SENT recipients; fan-out ${R_FANOUT}s (postgres $(ticks_s "$R_FANOUT_PG") CPU-s); done after ${R_WALL}s (ledger: ${R_DB_WALL}s);" \
		"worker $(ticks_s "$R_WORKER_CPU") CPU-s, RSS $((R_RSS10K / 1024)) MB at 10k, peak $((R_HWM / 1024)) MB;" \
		"postgres $(ticks_s "$R_PG_CPU") CPU-s; sink $(ticks_s "$R_SINK_CPU") CPU-s (load $R_LOAD)"
}

per_k() { awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN { printf "%.3f", t / hz / n * 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", (b > 0 ? a / b : 0) }'; }

run_campaign personalized "bench-$PERSONALIZED" "{{.Name}}, news from {{.Attrs.city}}" "$work/personalized.html"
P_RATE=$(rate "$R_SENT" "$R_DB_WALL") P_WALL=$R_DB_WALL P_FANOUT=$R_FANOUT P_CPUK=$(per_k "$R_WORKER_CPU" "$R_SENT")
P_PGK=$(per_k "$R_PG_CPU" "$R_SENT") P_SINKK=$(per_k "$R_SINK_CPU" "$R_SENT")
P_RSS10K=$((R_RSS10K / 1024)) P_HWM=$((R_HWM / 1024)) P_LOAD=$R_LOAD P_N=$R_SENT

run_campaign same-for-all "bench-$SAME" "News for our readers" "$work/same.html"
S_RATE=$(rate "$R_SENT" "$R_DB_WALL") S_WALL=$R_DB_WALL S_FANOUT=$R_FANOUT S_FANOUT_PG=$(ticks_s "$R_FANOUT_PG") S_CPUK=$(per_k "$R_WORKER_CPU" "$R_SENT")
S_PGK=$(per_k "$R_PG_CPU" "$R_SENT") S_SINKK=$(per_k "$R_SINK_CPU" "$R_SENT")
S_RSS10K=$((R_RSS10K / 1024)) S_HWM=$((R_HWM / 1024)) S_LOAD=$R_LOAD S_N=$R_SENT
stop_sink

SRC1_CPUK=$(awk -v c="$src1_cpu" -v n="$MSGS" 'BEGIN { printf "%.3f", c / n * 1000 }')
SRC100_CPUK=$(awk -v c="$src100_cpu" -v n="$((MSGS100 * 100))" 'BEGIN { printf "%.3f", c / n * 1000 }')
SINK1_K=$(per_k "$sink1_cpu" "$MSGS") SINK100_K=$(per_k "$sink100_cpu" "$((MSGS100 * 100))")

# --- 4. The table -------------------------------------------------------------
table() {
	printf '| | smtp-source | blaster | ratio | goal |\n'
	printf '| --- | --- | --- | --- | --- |\n'
	printf '| personalized, 1 rcpt/transaction: recipients/s | %s | %s | %s | >= 0.70x |\n' "$src1_rate" "$P_RATE" "$(ratio "$P_RATE" "$src1_rate")"
	printf '| same-for-all, 100 rcpts/transaction: recipients/s | %s | %s | %s | >= 1.00x |\n' "$src100_rate" "$S_RATE" "$(ratio "$S_RATE" "$src100_rate")"
	printf '| personalized: client CPU-s per 1,000 recipients | %s | %s | %s | |\n' "$SRC1_CPUK" "$P_CPUK" "$(ratio "$P_CPUK" "$SRC1_CPUK")"
	printf '| same-for-all: client CPU-s per 1,000 recipients | %s | %s | %s | |\n' "$SRC100_CPUK" "$S_CPUK" "$(ratio "$S_CPUK" "$SRC100_CPUK")"
	printf '| personalized: sink CPU-s per 1,000 recipients | %s | %s | | |\n' "$SINK1_K" "$P_SINKK"
	printf '| same-for-all: sink CPU-s per 1,000 recipients | %s | %s | | |\n' "$SINK100_K" "$S_SINKK"
	printf '| PostgreSQL CPU-s per 1,000 recipients (personalized / same-for-all) | | %s / %s | | |\n' "$P_PGK" "$S_PGK"
	printf '| wall time, start to done (personalized %s / same-for-all %s) | | %ss / %ss | | |\n' "$P_N" "$S_N" "$P_WALL" "$S_WALL"
	printf '| fan-out: `campaign start` of %s recipients, wall | | %ss | | < 15 s (1M) |\n' "$S_N" "$S_FANOUT"
	printf '| fan-out: PostgreSQL CPU-s of that start | | %s | | |\n' "$S_FANOUT_PG"
	printf '| worker RSS after 10,000 / peak, personalized | | %s / %s MB | | < 200 MB, flat |\n' "$P_RSS10K" "$P_HWM"
	printf '| worker RSS after 10,000 / peak, same-for-all | | %s / %s MB | | < 200 MB, flat |\n' "$S_RSS10K" "$S_HWM"
	printf '| load average (1 min) at the end of each measurement | %s / %s | %s / %s | | |\n' "$load1" "$load100" "$P_LOAD" "$S_LOAD"
}
echo
table | tee "$work/table.md"

# --- 5. BENCHMARKS.md -----------------------------------------------------------
if [ "${WRITE_BENCHMARKS:-1}" != 0 ]; then
	{
		echo '<!-- bench/run.sh writes this section; edits inside it are lost -->'
		echo "Command: \`$(env | grep -E '^(PERSONALIZED|SAME|MSGS|MSGS100|WORKERS)=' | sort | tr '\n' ' ')make bench\` (bench/run.sh)."
		echo "Run of $(date -u '+%Y-%m-%d %H:%M UTC'): $(nproc) cores, PostgreSQL on $pgwhere, smtp-sink on loopback,"
		echo "the worker with $WORKERS newsletter workers and $WORKERS connections; 10 KB HTML messages."
		echo
		cat "$work/table.md"
		echo
		echo '<!-- end of bench/run.sh section -->'
	} > "$work/section.md"
	awk -v sect="$work/section.md" '
		function dump() { while ((getline l < sect) > 0) print l }
		/^<!-- bench\/run.sh writes this section/ { dump(); skip = 1; done = 1; next }
		skip && /^<!-- end of bench\/run.sh section -->/ { skip = 0; next }
		skip { next }
		{ print }
		END { if (!done) { print ""; print "## End to end (`make bench`)"; print ""; dump() } }
	' BENCHMARKS.md > "$work/BENCHMARKS.md"
	cp "$work/BENCHMARKS.md" BENCHMARKS.md
	echo "BENCHMARKS.md updated"
fi
