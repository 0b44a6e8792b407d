#!/bin/bash
# bench/run.sh - throughput, latency and Redis cost of the relay against bare
# mod_proxy, in one httpd (event MPM) with the mock upstream in a virtual host
# of its own and a real redis-server, all on free loopback ports.
#
#   A  GET /plain/v1/models            bare ProxyPass (the baseline)
#   B  GET /api/v1/models + x-api-key  the relay, key with concurrency limit 100000
#   C  GET /api/v1/models + x-api-key  the relay, unlimited key (limit 0)
#
# Rounds alternate A/B/C at each connection count, so drift on the machine hits
# every case alike. Then, per case, one short run under redis-cli MONITOR
# (top-level commands per request), one under SLOWLOG (what each script costs
# inside Redis) and, when perf works here, a CPU profile of the httpd children.
#
# Environment: BENCH_ROUNDS (5), BENCH_SECONDS (10), BENCH_CONNECTIONS ("4 32"),
# BENCH_THREADS (2), BENCH_MONITOR_SECONDS (3), BENCH_PROFILE (1: SLOWLOG and
# perf phases), BENCH_PROFILE_SECONDS (5), BENCH_RESULTS (bench/results-latest.md),
# BENCH_KEEP (1: keep the temp folder).
set -euo pipefail

BENCH_SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$BENCH_SRC/bench/lib.sh"

rounds=${BENCH_ROUNDS:-5}
secs=${BENCH_SECONDS:-10}
conns_list=${BENCH_CONNECTIONS:-"4 32"}
threads=${BENCH_THREADS:-2}
mon_secs=${BENCH_MONITOR_SECONDS:-3}
profile=${BENCH_PROFILE:-1}
prof_secs=${BENCH_PROFILE_SECONDS:-5}
results=${BENCH_RESULTS:-$BENCH_SRC/bench/results-latest.md}
command_line="BENCH_ROUNDS=$rounds BENCH_SECONDS=$secs BENCH_CONNECTIONS=\"$conns_list\" bench/run.sh"

command -v wrk >/dev/null || bench_die "wrk is missing: scripts/install-deps --bench"
bench_check_tools
trap bench_cleanup EXIT
bench_stage
bench_start_redis
# 64 threads a child, 8 children: 512 workers, far above 2 x 32 connections
bench_write_conf 64 8
bench_start_httpd
bench_log "httpd on 127.0.0.1:$bench_http_port (mock upstream :$bench_mock_port), redis :$bench_redis_port, in $bench_dir"

read -r _ key_limited < <(bench_create_key "bench limited" 100000)
read -r _ key_unlimited < <(bench_create_key "bench unlimited" 0)
base=http://127.0.0.1:$bench_http_port

# case -> wrk arguments
wrk_args() {
    case $1 in
    A) echo "$base/plain/v1/models" ;;
    B) echo "-H x-api-key:$key_limited $base/api/v1/models" ;;
    C) echo "-H x-api-key:$key_unlimited $base/api/v1/models" ;;
    esac
}

# every case answers 200 before anything is measured
for c in A B C; do
    # shellcheck disable=SC2046
    code=$(curl -s -o /dev/null -w "%{http_code}" $(wrk_args "$c"))
    [ "$code" = 200 ] || bench_die "case $c answers $code, not 200 (see $bench_dir/logs/error.log)"
done

runs=$bench_dir/runs.tsv
monitor_tsv=$bench_dir/monitor.tsv
loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)

# one measured run: wrk, with Redis CPU and commandstats around it
measure() {
    local round=$1 conns=$2 case=$3 d=$4 out=$bench_dir/wrk-$1-$2-$3.txt
    local cpu0 cpu1
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" stats 127.0.0.1 "$bench_redis_port" > "$bench_dir/st0"
    cpu0=$(bench_redis_cpu)
    # shellcheck disable=SC2046
    wrk -t"$threads" -c"$conns" -d"${d}s" --timeout 5s --latency $(wrk_args "$case") > "$out"
    cpu1=$(bench_redis_cpu)
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" stats 127.0.0.1 "$bench_redis_port" > "$bench_dir/st1"
    [ "$round" = 0 ] && return 0
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" record "$runs" "$round" "$conns" "$case" "$out" \
        "$bench_dir/st0" "$bench_dir/st1" "$cpu0" "$cpu1" "$(bench_redis_clients)" \
        "$(bench_children_rss_kib)" "$(bench_children_count)" >&2
}

bench_log "warm-up: 2 s per case and connection count"
for conns in $conns_list; do
    for c in A B C; do measure 0 "$conns" "$c" 2; done
done

total=$((rounds * $(wc -w <<<"$conns_list") * 3 * secs))
bench_log "$rounds rounds of A/B/C at ${conns_list// /, } connections, $secs s each (about $((total / 60 + 1)) min)"
for round in $(seq "$rounds"); do
    for conns in $conns_list; do
        for c in A B C; do measure "$round" "$conns" "$c" "$secs"; done
    done
done

# top-level commands per request: MONITOR during one short run of each case
first_conns=${conns_list%% *}
bench_log "MONITOR: $mon_secs s per case at $first_conns connections"
for c in A B C; do
    mon=$bench_dir/monitor-$c.txt
    rcli MONITOR > "$mon" &
    mon_pid=$!
    bench_bg_pids="$bench_bg_pids $mon_pid"
    sleep 0.5
    # shellcheck disable=SC2046
    wrk -t"$threads" -c"$first_conns" -d"${mon_secs}s" --timeout 5s $(wrk_args "$c") > "$bench_dir/wrk-monitor-$c.txt"
    sleep 0.5
    kill "$mon_pid" 2>/dev/null || true
    wait "$mon_pid" 2>/dev/null || true
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" monitor "$c" "$bench_dir/wrk-monitor-$c.txt" "$mon" >> "$monitor_tsv"
    rm -f "$mon"
done

table=$("$BENCH_PY" "$BENCH_SRC/bench/bench.py" summary "$runs" "$monitor_tsv")

# where the time goes: every command in SLOWLOG, and commandstats, during case B
where=""
if [ "$profile" = 1 ]; then
    bench_log "SLOWLOG: $prof_secs s of case B at $first_conns connections"
    rcli CONFIG SET slowlog-max-len 1000000 >/dev/null
    rcli SLOWLOG RESET >/dev/null
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" stats 127.0.0.1 "$bench_redis_port" > "$bench_dir/st0"
    rcli CONFIG SET slowlog-log-slower-than 0 >/dev/null
    # shellcheck disable=SC2046
    wrk -t"$threads" -c"$first_conns" -d"${prof_secs}s" --timeout 5s $(wrk_args B) > "$bench_dir/wrk-slowlog.txt"
    rcli CONFIG SET slowlog-log-slower-than 10000 >/dev/null
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" stats 127.0.0.1 "$bench_redis_port" > "$bench_dir/st1"
    reqs=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$bench_dir/wrk-slowlog.txt")
    where=$("$BENCH_PY" "$BENCH_SRC/bench/bench.py" slowlog 127.0.0.1 "$bench_redis_port" "$reqs" \
        "$bench_dir/st0" "$bench_dir/st1")
    rcli SLOWLOG RESET >/dev/null

    # the httpd children's CPU: perf with the cpu-clock software event (VMs
    # often have no hardware counters), call graphs by DWARF unwinding
    if command -v perf >/dev/null && perf stat -e cpu-clock true >/dev/null 2>&1; then
        last_conns=${conns_list##* }
        bench_log "perf: $prof_secs s of case B at $last_conns connections, all httpd children"
        pids=$(pgrep -d, -P "$(bench_httpd_pid)")
        # shellcheck disable=SC2046
        wrk -t"$threads" -c"$last_conns" -d"$((prof_secs + 2))s" --timeout 5s $(wrk_args B) > "$bench_dir/wrk-perf.txt" &
        wrk_pid=$!
        bench_bg_pids="$bench_bg_pids $wrk_pid"
        sleep 1
        if perf record -q -e cpu-clock -F 997 --call-graph dwarf,16384 -p "$pids" \
            -o "$bench_dir/perf.data" -- sleep "$prof_secs" >/dev/null 2>&1; then
            wait "$wrk_pid" || true
            pr="perf report -i $bench_dir/perf.data --stdio --percent-limit 0.05"
            $pr --no-children --sort dso > "$bench_dir/perf-dso.txt" 2>/dev/null
            $pr --no-children --sort dso,sym -g none > "$bench_dir/perf-sym.txt" 2>/dev/null
            $pr --children --sort dso,sym -g none > "$bench_dir/perf-children.txt" 2>/dev/null
            where="$where

CPU of all httpd children (\`perf record -e cpu-clock --call-graph dwarf -p <children>\`,
$prof_secs s of case B at $last_conns connections; the children also run mod_proxy and the
mock upstream, so 100 % is all of the server's work):

$("$BENCH_PY" "$BENCH_SRC/bench/bench.py" perf "$bench_dir/perf-dso.txt" "$bench_dir/perf-sym.txt" "$bench_dir/perf-children.txt")"
        else
            wait "$wrk_pid" || true
            where="$where

perf record could not attach to the httpd children here."
        fi
    else
        where="$where

perf cannot count cpu-clock on this machine: no CPU profile of the children."
    fi
fi

loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)
report="## Relay vs plain mod_proxy ($(date -u '+%Y-%m-%d %H:%M UTC'))

- command: \`$command_line\` (from \`make bench\`)
$(bench_machine)
- load average at start / end: $loadavg_start / $loadavg_end
- httpd: event MPM, 8 children x 64 threads, mock upstream in the same httpd; wrk -t$threads,
  $rounds rounds x $secs s per case, cases alternating; medians over rounds. × plain and the
  Δ columns are medians of per-round comparisons with the plain run of the same round.
- Redis CPU: used_cpu_user + used_cpu_sys delta around each run / requests.
  Top-level commands: \`redis-cli MONITOR\` during one extra ${mon_secs} s run per case at $first_conns
  connections, lines without \`lua]\`, per request (inside-script commands show as \`[0 lua]\`).
  Commands inside scripts: \`INFO commandstats\` calls delta less EVALSHA/EVAL, per request.
  Redis conns: \`connected_clients\` less the harness's own, after each run (max). RSS: sum of
  VmRSS of the httpd children (both the relay and the mock upstream live in them).

$table
"
if [ -n "$where" ]; then
    report="$report
### Where the time goes (Redis side, case B)

$where
"
fi
echo
echo "$report"
printf '# Benchmark results\n\n%s' "$report" > "$results"
bench_log "written to ${results#"$BENCH_SRC"/}"
