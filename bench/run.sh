#!/bin/bash
# bench/run.sh - throughput, latency and Redis cost of the relay against bare
# mod_proxy, in one httpd (event MPM) with the mock upstream in a virtual host
# of its own and a real redis-server, all on free loopback ports.
#
#   A  GET /plain/v1/models            bare ProxyPass (the baseline)
#   B  GET /api/v1/models + x-api-key  the relay, key with concurrency limit 100000
#   C  GET /api/v1/models + x-api-key  the relay, unlimited key (limit 0)
#   D, E  B and C through a second virtual host: Redis over its unix socket,
#         RelayReuseSlots Off (every request of B's key asks Redis)
#   F  GET /api/v1/models + x-api-key  the relay, a key whose concurrency limit
#      is the connection count (BENCH_TIGHT_CONNECTIONS, 8), driven by that many
#      connections: always near its limit, so Redis decides every request and
#      every slot goes back before the answer's last bytes; run with A alone
#
# Every admitted request logs how long the answer's end waited for its slot
# to be back in Redis (the note relay-release-wait-us), reported per case.
#
# Rounds alternate A/B/C at each connection count, so drift on the machine hits
# every case alike. Then, per case, one short run under redis-cli MONITOR
# (top-level commands per request); each script replayed alone with the
# arguments the module sent (what it costs inside Redis, from INFO
# commandstats) and, when perf works here, a CPU profile of the httpd children.
#
# Environment: BENCH_ROUNDS (5), BENCH_SECONDS (10), BENCH_CONNECTIONS ("4 32"),
# BENCH_THREADS (2), BENCH_MONITOR_SECONDS (3), BENCH_PROFILE (1: replay and
# perf phases), BENCH_PROFILE_SECONDS (5), BENCH_REPLAY_CALLS (3000),
# BENCH_RESULTS (bench/results-latest.md), BENCH_CHILDREN (4) and
# BENCH_THREADS_PER_CHILD (25): the httpd's fixed set of children,
# BENCH_CASES ("A B C D E"), BENCH_TIGHT_CONNECTIONS (8; 0 leaves case F out),
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
prof_case=${BENCH_PROFILE_CASE:-B}
replay_n=${BENCH_REPLAY_CALLS:-3000}
results=${BENCH_RESULTS:-$BENCH_SRC/bench/results-latest.md}
tight=${BENCH_TIGHT_CONNECTIONS:-8}
command_line="BENCH_ROUNDS=$rounds BENCH_SECONDS=$secs BENCH_CONNECTIONS=\"$conns_list\" BENCH_TIGHT_CONNECTIONS=$tight bench/run.sh"

command -v wrk >/dev/null || bench_die "wrk is missing: scripts/install-deps --bench"
bench_check_tools
trap bench_cleanup EXIT
bench_stage
bench_start_redis
# a fixed set of children, none reaped during a run; by default as many
# threads as Debian's default ThreadsPerChild and enough children for the
# largest connection count twice over
tpc=${BENCH_THREADS_PER_CHILD:-25}
children=${BENCH_CHILDREN:-4}
# the release wait of every admitted request, tagged with its run (buffered:
# read once httpd has stopped)
wait_log="BufferedLogs On
LogFormat \"%{x-bench-run}i %{relay-release-wait-us}n\" relay_wait
CustomLog $bench_dir/logs/release_wait.log relay_wait \"expr=-n note('relay-release-wait-us')\""
bench_write_conf "$tpc" "$children" "" "$wait_log"
bench_start_httpd
bench_log "httpd on 127.0.0.1:$bench_http_port (mock upstream :$bench_mock_port), redis :$bench_redis_port, in $bench_dir"

read -r _ key_limited < <(bench_create_key "bench limited" 100000)
read -r _ key_unlimited < <(bench_create_key "bench unlimited" 0)
key_tight=""
[ "$tight" -gt 0 ] && read -r _ key_tight < <(bench_create_key "bench tight" "$tight")
base=http://127.0.0.1:$bench_http_port
unix_base=http://127.0.0.1:$bench_unix_port
cases=${BENCH_CASES:-"A B C D E"}
# the script calls replayed alone: those of a key with a limit asking Redis for
# every request (D) when it runs, else B's
replay_case=B
case " $cases " in *" D "*) replay_case=D ;; esac

# case -> request arguments (wrk and curl alike), in the array args
set_args() {
    case $1 in
    A) args=("$base/plain/v1/models") ;;
    B) args=(-H "x-api-key: $key_limited" "$base/api/v1/models") ;;
    C) args=(-H "x-api-key: $key_unlimited" "$base/api/v1/models") ;;
    D) args=(-H "x-api-key: $key_limited" "$unix_base/api/v1/models") ;;
    E) args=(-H "x-api-key: $key_unlimited" "$unix_base/api/v1/models") ;;
    F) args=(-H "x-api-key: $key_tight" "$base/api/v1/models") ;;
    esac
}

# what runs: "connections:cases" pairs, F alone with A at its own count
plan=()
for conns in $conns_list; do plan+=("$conns:$cases"); done
[ "$tight" -gt 0 ] && plan+=("$tight:A F")

# every case answers 200 before anything is measured
for c in $cases $([ "$tight" -gt 0 ] && echo F); do
    set_args "$c"
    code=$(curl -s -o /dev/null -w "%{http_code}" "${args[@]}")
    [ "$code" = 200 ] || bench_die "case $c answers $code, not 200 (see $bench_dir/logs/error.log)"
done

runs=$bench_dir/runs.tsv
monitor_tsv=$bench_dir/monitor.tsv
loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)

# one measured run: wrk, with the CPU of Redis, httpd, wrk and the whole machine
# and Redis's commandstats around it
measure() {
    local round=$1 conns=$2 case=$3 d=$4 out=$bench_dir/wrk-$1-$2-$3.txt
    local cpu0 cpu1 h0 h1 busy0 busy1 t0 t1 TIMEFORMAT='%U %S'
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" stats 127.0.0.1 "$bench_redis_port" > "$bench_dir/st0"
    cpu0=$(bench_redis_cpu)
    h0=$(bench_httpd_cpu)
    busy0=$(bench_machine_busy)
    t0=$(bench_now)
    set_args "$case"
    { time wrk -t"$threads" -c"$conns" -d"${d}s" --timeout 5s --latency \
        -H "x-bench-run: $round-$conns-$case" "${args[@]}" > "$out"; } \
        2> "$bench_dir/wrk-time"
    t1=$(bench_now)
    busy1=$(bench_machine_busy)
    h1=$(bench_httpd_cpu)
    cpu1=$(bench_redis_cpu)
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" stats 127.0.0.1 "$bench_redis_port" > "$bench_dir/st1"
    [ "$round" = 0 ] && return 0
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" record out="$runs" round="$round" conns="$conns" \
        case="$case" wrk="$out" st0="$bench_dir/st0" st1="$bench_dir/st1" \
        redis_cpu="$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {print b - a}')" \
        httpd_cpu="$(awk -v a="$h0" -v b="$h1" 'BEGIN {print b - a}')" \
        wrk_cpu="$(tail -n 1 "$bench_dir/wrk-time" | awk '{print $1 + $2}')" \
        busy="$(awk -v a="$busy0" -v b="$busy1" 'BEGIN {print b - a}')" \
        elapsed="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" ncpu="$(nproc)" \
        clients="$(bench_redis_clients)" rss_kib="$(bench_children_rss_kib)" \
        children="$(bench_children_count)" >&2
}

bench_log "warm-up: 2 s per case and connection count"
runs_per_round=0
for step in "${plan[@]}"; do
    for c in ${step#*:}; do
        measure 0 "${step%%:*}" "$c" 2
        runs_per_round=$((runs_per_round + 1))
    done
done

total=$((rounds * runs_per_round * secs))
bench_log "$rounds rounds of: ${plan[*]} (connections:cases), $secs s each (about $((total / 60 + 1)) min)"
for round in $(seq "$rounds"); do
    for step in "${plan[@]}"; do
        for c in ${step#*:}; do measure "$round" "${step%%:*}" "$c" "$secs"; done
    done
done

# top-level commands per request: MONITOR during one short run of each case
first_conns=${conns_list%% *}
bench_log "MONITOR: $mon_secs s per case at $first_conns connections (F at $tight)"
for c in $cases $([ "$tight" -gt 0 ] && echo F); do
    mon_conns=$first_conns
    [ "$c" = F ] && mon_conns=$tight
    mon=$bench_dir/monitor-$c.txt
    # redis-cli itself in the background (not a shell function): $! is its pid
    redis-cli -h 127.0.0.1 -p "$bench_redis_port" MONITOR > "$mon" 2>/dev/null &
    mon_pid=$!
    bench_bg_pids="$bench_bg_pids $mon_pid"
    sleep 0.5
    set_args "$c"
    wrk -t"$threads" -c"$mon_conns" -d"${mon_secs}s" --timeout 5s "${args[@]}" > "$bench_dir/wrk-monitor-$c.txt"
    sleep 0.5
    kill "$mon_pid" 2>/dev/null || true
    wait "$mon_pid" 2>/dev/null || true
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" monitor "$c" "$bench_dir/wrk-monitor-$c.txt" "$mon" >> "$monitor_tsv"
    [ "$c" = "$replay_case" ] || rm -f "$mon"
done

table=$("$BENCH_PY" "$BENCH_SRC/bench/bench.py" summary "$runs" "$monitor_tsv")

# where the time goes: each script alone, with the module's own arguments
where=""
if [ "$profile" = 1 ]; then
    bench_log "replaying each script $replay_n times alone"
    where=$("$BENCH_PY" "$BENCH_SRC/bench/bench.py" replay 127.0.0.1 "$bench_redis_port" \
        "$bench_dir/monitor-$replay_case.txt" "$replay_n" "$replay_case")

    # the httpd children's CPU: perf with the cpu-clock software event (VMs
    # often have no hardware counters), call graphs by DWARF unwinding
    if command -v perf >/dev/null && perf stat -e cpu-clock true >/dev/null 2>&1; then
        last_conns=${conns_list##* }
        bench_log "perf: $prof_secs s of case $prof_case at $last_conns connections, all httpd children"
        pids=$(pgrep -d, -P "$(bench_httpd_pid)")
        set_args "$prof_case"
        wrk -t"$threads" -c"$last_conns" -d"$((prof_secs + 2))s" --timeout 5s "${args[@]}" > "$bench_dir/wrk-perf.txt" &
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
$prof_secs s of case $prof_case at $last_conns connections; the children also run mod_proxy and the
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
# the buffered release-wait log is complete once httpd has stopped
bench_stop_httpd
waits=$("$BENCH_PY" "$BENCH_SRC/bench/bench.py" waits "$bench_dir/logs/release_wait.log" "$runs")
report="## Relay vs plain mod_proxy ($(date -u '+%Y-%m-%d %H:%M UTC'))

- command: \`$command_line\` (from \`make bench\`)
$(bench_machine)
$bench_build
- load average at start / end: $loadavg_start / $loadavg_end
- httpd: event MPM, $children children x $tpc threads, mock upstream in the same httpd; wrk -t$threads,
  $rounds rounds x $secs s per case, cases alternating; medians over rounds. Case F (key limit
  $tight) runs at $tight connections only, beside a plain run at the same count. × plain and the
  Δ columns are medians of per-round comparisons with the plain run of the same round.
- Redis CPU: used_cpu_user + used_cpu_sys delta around each run / requests. EVALSHA µs:
  \`INFO commandstats\` usec delta of EVALSHA (time inside Redis running the scripts) / requests.
  Top-level commands: \`redis-cli MONITOR\` during one extra ${mon_secs} s run per case at $first_conns
  connections, lines without \`lua]\` (commands inside scripts show as \`[0 lua]\`), per request.
  Commands inside scripts: \`INFO commandstats\` calls delta less EVALSHA/EVAL, per request.
  Redis conns held: \`connected_clients\` less the harness's own, after each run (max). httpd CPU:
  utime + stime of the httpd processes (relay, mod_proxy and the mock upstream) / requests.
  RSS: sum of VmRSS of the httpd children after each run. Other processes' CPU: the machine's
  busy time less Redis, httpd and wrk, in % of all CPUs (others sharing this machine).

$table

### The release at the answer's end

What the answer's last bytes waited for the slot to be back in Redis (the note
\`relay-release-wait-us\`, logged for every measured request that waited): the
part of the relay's added latency that the release costs. A key with a limit
waits for the round trip (or rides on a call under way); a kept slot
(\`RelayReuseSlots\`, case B) and a key without any limit (C, E) do not wait.

$waits
"
if [ -n "$where" ]; then
    report="$report
### Where the time goes

$where
"
fi
echo
echo "$report"
printf '# Benchmark results\n\n%s' "$report" > "$results"
bench_log "written to ${results#"$BENCH_SRC"/}"
