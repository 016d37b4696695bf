#!/usr/bin/env bash
# bench/import.sh: time `blaster import` of a generated CSV against `psql
# \copy` of the same file into a bare table, on a fresh database, and print
# rows/s and the ratio, RUNS times.
#
#   bench/import.sh                          # 1,000,000 rows, 3 runs, the shared server
#   ROWS=200000 RUNS=1 bench/import.sh
#   BENCH_PG=private bench/import.sh         # a throwaway cluster of its own
#   BENCH_PG=private BENCH_PG_SETTINGS="shared_buffers=1GB wal_buffers=64MB max_wal_size=8GB" bench/import.sh
#
# BENCH_PG=shared (the default) uses the server of BENCH_ADMIN_URL (default
# postgres://postgres@127.0.0.1:5432/test): its benchmark database
# blaster_bench_import is dropped and recreated for each run. Other users of
# that server share its WAL and checkpoints, which moves the figures.
#
# BENCH_PG=private initdb's a cluster in a temporary directory (the
# installed PostgreSQL binaries, as the postgres OS user when run as root),
# on 127.0.0.1:$BENCH_PG_PORT (default 12850), with the server's default
# settings plus BENCH_PG_SETTINGS (space-separated name=value), and removes
# it at the end: nothing but this benchmark writes to it.
#
# IMPORT_FLAGS are added to the import command line (e.g. "--log-level
# debug" before the command is not possible here; use BLASTER_LOG_LEVEL=debug
# to see the time of each phase, and IMPORT_FLAGS="--explain FILE" for the
# merge's plan).
set -euo pipefail

ROWS=${ROWS:-1000000}
RUNS=${RUNS:-3}
BENCH_PG=${BENCH_PG:-shared}
DBNAME=blaster_bench_import

cd "$(dirname "$0")/.."
work=$(mktemp -d)
chmod 755 "$work"
pgctl=""
cleanup() {
	if [ -n "$pgctl" ]; then $pgctl stop -m fast >/dev/null 2>&1 || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

case "$BENCH_PG" in
shared)
	ADMIN=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
	;;
private)
	port=${BENCH_PG_PORT:-12850}
	bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
	[ -x "$bindir/initdb" ] || { echo "bench/import.sh: no PostgreSQL binaries under /usr/lib/postgresql" >&2; exit 1; }
	run=()
	if [ "$(id -u)" = 0 ]; then run=(runuser -u postgres --); fi
	mkdir -p "$work/pg"
	[ "$(id -u)" = 0 ] && chown postgres "$work/pg"
	"${run[@]}" "$bindir/initdb" -D "$work/pg/data" -U postgres --auth=trust --locale=C.UTF-8 >/dev/null
	opts="-p $port -c listen_addresses=127.0.0.1 -k $work/pg"
	for s in ${BENCH_PG_SETTINGS:-}; do opts="$opts -c $s"; done
	pgctl="${run[*]} $bindir/pg_ctl -D $work/pg/data -w"
	$pgctl -o "$opts" -l "$work/pg/log" start >/dev/null
	ADMIN="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
	;;
*)
	echo "bench/import.sh: BENCH_PG is shared or private, not $BENCH_PG" >&2
	exit 1
	;;
esac
URL=$(printf '%s' "$ADMIN" | sed -E "s#/[^/?]+(\?|$)#/$DBNAME\1#")

go build -o "$work/blaster" ./cmd/blaster
go run ./bench/gencsv -rows "$ROWS" -o "$work/contacts.csv"
echo "input: $ROWS rows, $(du -h "$work/contacts.csv" | cut -f1), $(nproc) cores, server $BENCH_PG $(psql "$ADMIN" -Atc 'SHOW server_version'), shared_buffers $(psql "$ADMIN" -Atc 'SHOW shared_buffers'), wal_buffers $(psql "$ADMIN" -Atc 'SHOW wal_buffers')${BENCH_PG_SETTINGS:+ ($BENCH_PG_SETTINGS)}"

for i in $(seq 1 "$RUNS"); do
	psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DBNAME" -c "CREATE DATABASE $DBNAME" 2>/dev/null
	"$work/blaster" --database-url "$URL" migrate >/dev/null

	# psql \copy into a bare table: the floor of what loading this file costs.
	psql "$URL" -qc "CREATE TABLE bare (email text, name text, city text, plan text)"
	l0=$(load)
	t0=$(now)
	psql "$URL" -qc "\\copy bare FROM '$work/contacts.csv' CSV HEADER"
	t1=$(now)
	copy_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')

	t0=$(now)
	# shellcheck disable=SC2086
	"$work/blaster" --database-url "$URL" import --list bench ${IMPORT_FLAGS:-} "$work/contacts.csv"
	t1=$(now)
	import_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')

	printf 'run %d (load average before %s, after %s)\n' "$i" "$l0" "$(load)"
	printf '  psql \\copy (bare table):  %8.2f s  %9d rows/s\n' "$copy_s" "$(rate "$ROWS" "$copy_s")"
	printf '  blaster import:           %8.2f s  %9d rows/s\n' "$import_s" "$(rate "$ROWS" "$import_s")"
	awk -v a="$import_s" -v b="$copy_s" 'BEGIN { printf "  ratio import/copy time: %.1fx\n", a / b }'
done

psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DBNAME"
