# bench/lib.sh: pieces shared by the benchmark scripts (sourced, not run):
# Postfix's smtp-sink and smtp-source, clocks and rates, /proc readings.

SINK=/usr/sbin/smtp-sink
SOURCE=/usr/sbin/smtp-source
CLK_TCK=$(getconf CLK_TCK)

# need_postfix installs Postfix when smtp-sink or smtp-source is missing
# (bench/install-postfix.sh: as root or through sudo), else exits.
need_postfix() {
	[ -x "$SINK" ] && [ -x "$SOURCE" ] && return 0
	bash "$(dirname "${BASH_SOURCE[0]}")/install-postfix.sh" || exit 1
}

now() { date +%s.%N; }

# since T0: seconds from T0 to now, 3 decimals.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

# rate COUNT SECONDS: COUNT per second, rounded.
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }'; }

# start_sink PORT: runs smtp-sink on 127.0.0.1:PORT (backlog 256, as
# root under user nobody) and sets SINK_PID once it accepts connections.
start_sink() {
	local port=$1 user=()
	[ "$(id -u)" -eq 0 ] && user=(-u nobody)
	"$SINK" "${user[@]}" "127.0.0.1:$port" 256 &
	SINK_PID=$!
	for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0; sleep 0.1; done
	echo "smtp-sink did not start on 127.0.0.1:$port" >&2
	return 1
}

stop_sink() {
	[ -n "${SINK_PID:-}" ] || return 0
	kill "$SINK_PID" 2>/dev/null || true
	wait "$SINK_PID" 2>/dev/null || true
	SINK_PID=
}

# source_run PORT MESSAGES RECIPIENTS: smtp-source over 16 connections,
# 10 KB messages; prints the wall seconds it took and its CPU seconds.
source_run() {
	local times
	times=$(mktemp)
	/usr/bin/time -o "$times" -f '%e %U %S' \
		"$SOURCE" -d -s 16 -m "$2" -l 10240 -r "$3" -f bench@example.test -t rcpt@example.test "127.0.0.1:$1"
	awk '{ printf "%s %.2f\n", $1, $2 + $3 }' "$times"
	rm -f "$times"
}

# cpu_ticks PID: user + system CPU of a process so far, in clock ticks
# (fields 14 and 15 of /proc/PID/stat; the name in field 2 may hold spaces).
cpu_ticks() {
	local stat
	read -r stat 2>/dev/null < "/proc/$1/stat" || { echo 0; return; }
	stat=${stat##*) }
	set -- $stat
	echo $(( ${12} + ${13} ))
}

# ticks_s TICKS: clock ticks as seconds.
ticks_s() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }'; }

# status_kb PID FIELD: a /proc/PID/status field (VmRSS, VmHWM) in kB.
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
