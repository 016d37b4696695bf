#!/usr/bin/env bash
# bench/import.sh: time `blaster import` of a generated CSV against `psql
# \copy` of the same file into a bare table, on a fresh database, and print
# rows/s and the ratio.
#
#   bench/import.sh                 # 1,000,000 rows
#   ROWS=200000 bench/import.sh
#
# BENCH_ADMIN_URL is the server's maintenance database (default
# postgres://postgres@127.0.0.1:5432/test). The benchmark database
# blaster_bench_import is dropped and recreated.
set -euo pipefail

ROWS=${ROWS:-1000000}
ADMIN=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
DBNAME=blaster_bench_import
URL=$(printf '%s' "$ADMIN" | sed -E "s#/[^/?]+(\?|$)#/$DBNAME\1#")

cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }

go build -o "$work/blaster" ./cmd/blaster
go run ./bench/gencsv -rows "$ROWS" -o "$work/contacts.csv"
echo "input: $ROWS rows, $(du -h "$work/contacts.csv" | cut -f1), $(nproc) cores, $(psql "$ADMIN" -Atc 'SHOW server_version')"

psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DBNAME" -c "CREATE DATABASE $DBNAME"
"$work/blaster" --database-url "$URL" migrate >/dev/null

# psql \copy into a bare table: the floor of what loading this file costs.
psql "$URL" -qc "CREATE TABLE bare (email text, name text, city text, plan text)"
t0=$(now)
psql "$URL" -qc "\\copy bare FROM '$work/contacts.csv' CSV HEADER"
t1=$(now)
copy_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')

t0=$(now)
"$work/blaster" --database-url "$URL" import --list bench "$work/contacts.csv"
t1=$(now)
import_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')

copy_rate=$(rate "$ROWS" "$copy_s")
import_rate=$(rate "$ROWS" "$import_s")
printf 'psql \\copy (bare table):  %8.2f s  %9d rows/s\n' "$copy_s" "$copy_rate"
printf 'blaster import:           %8.2f s  %9d rows/s\n' "$import_s" "$import_rate"
awk -v a="$import_s" -v b="$copy_s" 'BEGIN { printf "ratio import/copy time: %.1fx\n", a / b }'

psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DBNAME"
