#!/bin/bash
# bench/streams.sh - many slow SSE streams held through the relay at once: are
# they all admitted and completed, what memory does each cost the relay, and
# how much Redis work does keeping their leases alive take (renewal is
# batched: one script call per child per interval, whatever the number of
# leases)?
#
# For each N in BENCH_STREAM_COUNTS, N connections open (in waves: at most
# BENCH_STREAM_MAX_PENDING wait for their status line at once), each a
# POST /api/v1/messages {"stream":true} with x-mock-hold-ms and x-mock-events,
# with a key whose concurrency limit is above N. The mock upstream runs in an
# httpd of its own (same event MPM, own config, port, pid file and error log),
# so the relay httpd's memory is the relay's alone. Both httpds are started
# fresh for each N, sized for it: one worker thread per stream, a quarter more
# and 200. While all streams are held, a window of BENCH_STREAM_WINDOW seconds
# measures RSS of both and Redis's commandstats.
#
# 10,000 streams need more than a default machine gives: the script raises
# what it can (ulimit -n and -u for itself, Redis and both httpds; as root also
# kernel.pid_max and kernel.threads-max, restored on exit) and stops with a
# sentence when a limit is too low and it cannot raise it.
#
# Environment: BENCH_STREAMS (0: skip), BENCH_STREAM_COUNTS ("1000 5000 10000"),
# BENCH_STREAM_HOLD_MS (default 20000 + 4 × N: long enough that every stream is
# still held when the window closes, admission of 10,000 taking some seconds),
# BENCH_STREAM_EVENTS (10), BENCH_STREAM_WINDOW (10),
# BENCH_STREAM_LEASE_SECONDS (3: leases renewed every second, so a window sees
# renewals; the default RelayLeaseSeconds 300 renews every 100 s),
# BENCH_STREAM_MAX_PENDING (1000, at most somaxconn), BENCH_STREAM_THREADS_PER_CHILD (100),
# BENCH_STREAM_HTTPD_EXTRA / BENCH_STREAM_MOCK_EXTRA (more directives for the
# relay's / the mock's httpd), BENCH_RESULTS (bench/results-latest.md, appended
# to), BENCH_KEEP.
set -euo pipefail

BENCH_SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$BENCH_SRC/bench/lib.sh"

if [ "${BENCH_STREAMS:-1}" = 0 ]; then
    echo "bench/streams.sh: skipped (BENCH_STREAMS=0)"
    exit 0
fi

counts=${BENCH_STREAM_COUNTS:-"1000 5000 10000"}
hold_fixed=${BENCH_STREAM_HOLD_MS:-}
events=${BENCH_STREAM_EVENTS:-10}
window=${BENCH_STREAM_WINDOW:-10}
lease=${BENCH_STREAM_LEASE_SECONDS:-3}
max_pending=${BENCH_STREAM_MAX_PENDING:-1000}
tpc=${BENCH_STREAM_THREADS_PER_CHILD:-100}
results=${BENCH_RESULTS:-$BENCH_SRC/bench/results-latest.md}
command_line="BENCH_STREAM_COUNTS=\"$counts\"${hold_fixed:+ BENCH_STREAM_HOLD_MS=$hold_fixed} BENCH_STREAM_LEASE_SECONDS=$lease bench/streams.sh"

for v in $counts $events $window $lease $max_pending $tpc $hold_fixed; do
    case $v in '' | *[!0-9]*) bench_die "BENCH_STREAM_* values are whole numbers; got \"$v\"" ;; esac
done
[ "$tpc" -ge 1 ] || bench_die "BENCH_STREAM_THREADS_PER_CHILD must be at least 1"
[ -n "$counts" ] || bench_die "BENCH_STREAM_COUNTS is empty"

# How long each stream of a run of N is held, in ms: 20 s and 4 ms per stream
# (10,000 streams: 60 s), so that the last stream has its status line, and the
# window has closed, before the first one ends.
hold_for() {
    if [ -n "$hold_fixed" ]; then echo "$hold_fixed"; else echo $((20000 + 4 * $1)); fi
}

# Children of TPC threads for N streams: a worker per stream in each httpd,
# plus a quarter and 200 (connections do not spread evenly over children).
children_for() { echo $((($1 + $1 / 4 + 200 + tpc - 1) / tpc)); }

max=0
for n in $counts; do [ "$n" -gt "$max" ] && max=$n; done
limit_max=$(children_for "$max")
[ "$limit_max" -lt 2 ] && limit_max=2
workers_max=$((limit_max * tpc))
# tasks both httpds start for the largest N: workers, and per child its main
# thread, listener and the relay's own threads
tasks_max=$((2 * workers_max + 8 * limit_max))
key_limit=$((2 * max + 100))

# --- machine limits ----------------------------------------------------------

limits_note=""
sysctl_restore=""
is_root=0
[ "$(id -u)" = 0 ] && is_root=1

note() { limits_note="$limits_note${limits_note:+; }$*"; }

# Stops what the script started and sets back the kernel settings it raised.
streams_cleanup() {
    local kv
    bench_cleanup
    for kv in $sysctl_restore; do
        sysctl -q -w "$kv" >/dev/null 2>&1 || echo "bench: could not set back $kv" >&2
    done
}
trap streams_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# raise_ulimit FLAG NEED WHAT: soft limit to NEED, and the hard one too as root.
raise_ulimit() {
    local flag=$1 need=$2 what=$3 soft hard
    soft=$(ulimit -S"$flag")
    hard=$(ulimit -H"$flag")
    [ "$soft" = unlimited ] && return 0
    [ "$soft" -ge "$need" ] && return 0
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
        [ "$is_root" = 1 ] ||
            bench_die "$what: ulimit -$flag can only reach $hard and $max streams need $need (run as root, or lower BENCH_STREAM_COUNTS)"
        ulimit -H"$flag" "$need"
        note "ulimit -$flag raised from $soft (hard $hard) to $need"
    else
        note "ulimit -$flag raised from $soft to $need"
    fi
    ulimit -S"$flag" "$need"
}

# raise_sysctl NAME NEED WHAT: as root, raise a kernel setting for this run
# (it is set back on exit); otherwise stop and say what to raise.
raise_sysctl() {
    local name=$1 need=$2 what=$3 file cur
    file=/proc/sys/${name//.//}
    cur=$(cat "$file")
    [ "$cur" -ge "$need" ] && return 0
    [ "$is_root" = 1 ] ||
        bench_die "$name is $cur and $max streams need $need ($what): run as root or raise it (sysctl -w $name=$need)"
    sysctl -q -w "$name=$need" >/dev/null || bench_die "could not raise $name to $need"
    sysctl_restore="$sysctl_restore $name=$cur"
    note "$name raised from $cur to $need for the run ($what; set back after)"
}

# Descriptors: the client holds N sockets; Redis up to one connection per relay
# worker (its maxclients, and 32 more for itself); a relay child two per worker.
redis_maxclients=$((workers_max + 1000))
[ "$redis_maxclients" -lt 10000 ] && redis_maxclients=10000
export BENCH_REDIS_MAXCLIENTS=$redis_maxclients
need_fd=$((redis_maxclients + 100))
[ "$need_fd" -lt $((max + 1000)) ] && need_fd=$((max + 1000))
raise_ulimit n "$need_fd" "open files (client sockets, Redis clients)"

# Tasks: RLIMIT_NPROC counts every thread of the children's user (nobody as
# root: the one other test servers use too); pid_max and threads-max count the
# machine's. Those there now: the total of /proc/loadavg's "running/total".
tasks_now=$(awk '{split($4, a, "/"); print a[2]}' /proc/loadavg)
raise_ulimit u $((tasks_max + tasks_now + 2000)) "threads of both httpds"
raise_sysctl kernel.pid_max $((tasks_max + tasks_now + 4000)) "every thread takes a pid"
raise_sysctl kernel.threads-max $((tasks_max + tasks_now + 4000)) "threads on the machine"
maps=$(cat /proc/sys/vm/max_map_count)
[ "$maps" -ge $((4 * tpc + 1000)) ] ||
    bench_die "vm.max_map_count is $maps; a child of $tpc threads needs about $((4 * tpc + 1000))"

# Listen backlog: connections wait in it until a child accepts them; once full,
# SYNs are dropped and come back after a retransmission timeout. The client
# keeps at most max_pending waiting, below the backlog the kernel allows.
somaxconn=$(cat /proc/sys/net/core/somaxconn)
syn_backlog=$(cat /proc/sys/net/ipv4/tcp_max_syn_backlog)
backlog=4096
[ "$somaxconn" -lt "$backlog" ] && backlog=$somaxconn
if [ "$max_pending" -eq 0 ] || [ "$max_pending" -gt "$backlog" ]; then
    max_pending=$backlog
fi

bench_check_tools
bench_stage
bench_start_redis
# the mock upstream gets an httpd of its own (bench_write_mock_conf)
bench_mock_separate=1

# per N: the hold, admission (about 2,500 streams a second here) and starting
# and stopping both httpds (5000 streams of 30 s took 39 s in all)
est=0
for n in $counts; do est=$((est + $(hold_for "$n") / 1000 + n / 1000 + 5)); done
bench_log "streams: ${counts// /, } (about $((est / 60 + 1)) min); ulimit -n $(ulimit -n), -u $(ulimit -u)${limits_note:+; $limits_note}"

read -r key_id key < <(bench_create_key "bench streams" "$key_limit")

# bench_wait_threads PARENT_PID CHILDREN: every child is up with all its
# workers (ThreadsPerChild and its main thread), or 120 s have gone.
bench_wait_threads() {
    local ppid=$1 want=$2 c t up=0
    for _ in $(seq 1200); do
        up=0
        for c in $(pgrep -P "$ppid" || true); do
            t=$(awk '/^Threads:/ {print $2}' "/proc/$c/status" 2>/dev/null || true)
            [ "${t:-0}" -gt "$tpc" ] && up=$((up + 1))
        done
        [ "$up" -ge "$want" ] && return 0
        sleep 0.1
    done
    bench_log "only $up of $want children of httpd $ppid have all their threads after 120 s"
}

# What an error log got since line FROM: by module and level, with the commonest cause.
log_summary() {
    tail -n +"$(($2 + 1))" "$1" > "$3"
    "$BENCH_PY" - "$3" <<'PY'
import re, sys
tags, causes = {}, {}
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"\[[^]]*\] \[([^]]+)\]", line)
    if not m:
        continue
    tags[m.group(1)] = tags.get(m.group(1), 0) + 1
    msg = re.sub(r"^(\[[^]]*\] )+", "", line.strip())
    msg = re.sub(r"\d+(\.\d+)*(:\d+)?", "N", msg.split("): ")[-1] if "): " in msg else msg)[:90]
    causes[msg] = causes.get(msg, 0) + 1
if not tags:
    print("none")
else:
    top = max(causes.items(), key=lambda kv: kv[1])
    print(", ".join("%d %s" % (v, k) for k, v in sorted(tags.items())) + " (most: %s)" % top[0])
PY
}

log_lines() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }

rows=$bench_dir/streams.jsonl
: > "$rows"
sizes=""

for n in $counts; do
    hold=$(hold_for "$n")
    limit=$(children_for "$n")
    [ "$limit" -lt 2 ] && limit=2
    sizes="$sizes${sizes:+, }N=$n: $limit × $tpc, hold $((hold / 1000)) s"
    # fresh httpds for each N, sized for it: no connections kept alive from the
    # last N, and an idle baseline that is that of a server for N streams
    bench_write_mock_conf "$tpc" "$limit" "${BENCH_STREAM_MOCK_EXTRA:-}"
    bench_write_conf "$tpc" "$limit" "$lease" "${BENCH_STREAM_HTTPD_EXTRA:-}"
    bench_start_mock
    bench_start_httpd
    relay_pid=$(bench_httpd_pid)
    mock_pid=$(bench_mock_pid)
    bench_wait_threads "$mock_pid" "$limit"
    bench_wait_threads "$relay_pid" "$limit"
    bench_log "$n streams of $((hold / 1000)) s; relay and mock httpd: $limit children x $tpc threads each"
    rss0=$(bench_children_rss_kib_of "$relay_pid")
    mrss0=$(bench_children_rss_kib_of "$mock_pid")
    log_at=$(log_lines "$bench_dir/logs/error.log")
    mlog_at=$(log_lines "$bench_dir/logs/mock-error.log")
    ready=$bench_dir/ready-$n.json
    out=$bench_dir/client-$n.json
    t_start=$(bench_now)
    "$BENCH_PY" "$BENCH_SRC/bench/sse_client.py" --port "$bench_http_port" --key "$key" -n "$n" \
        --hold-ms "$hold" --events "$events" --max-pending "$max_pending" \
        --ready-file "$ready" --out "$out" > /dev/null &
    client=$!
    bench_bg_pids="$bench_bg_pids $client"
    # the window starts once every stream has its status line, or at the latest
    # early enough to close before the first stream ends
    wait_ds=$(((hold - window * 1000 - 4000) / 100))
    [ "$wait_ds" -lt 10 ] && wait_ds=10
    for _ in $(seq "$wait_ds"); do
        [ -s "$ready" ] && break
        sleep 0.1
    done
    [ -s "$ready" ] || bench_log "not every stream had its status line after $((wait_ds / 10)) s"
    sleep 1
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" stats 127.0.0.1 "$bench_redis_port" > "$bench_dir/st0"
    cpu0=$(bench_redis_cpu)
    h0=$(bench_httpd_cpu_of "$relay_pid")
    m0=$(bench_httpd_cpu_of "$mock_pid")
    t0=$(bench_now)
    rss_a=$(bench_children_rss_kib_of "$relay_pid")
    mrss_a=$(bench_children_rss_kib_of "$mock_pid")
    sleep "$window"
    rss_b=$(bench_children_rss_kib_of "$relay_pid")
    mrss_b=$(bench_children_rss_kib_of "$mock_pid")
    clients=$(bench_redis_clients)
    children=$(bench_children_count_of "$relay_pid")
    mock_children=$(bench_children_count_of "$mock_pid")
    t1=$(bench_now)
    m1=$(bench_httpd_cpu_of "$mock_pid")
    h1=$(bench_httpd_cpu_of "$relay_pid")
    cpu1=$(bench_redis_cpu)
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" stats 127.0.0.1 "$bench_redis_port" > "$bench_dir/st1"
    wait "$client" || true
    # releases run in the requests' cleanups: give them up to 10 s to land
    for _ in $(seq 100); do
        left=$(rcli ZCARD "concurrency:$key_id")
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    errors=$(log_summary "$bench_dir/logs/error.log" "$log_at" "$bench_dir/errors-$n.log")
    mock_errors=$(log_summary "$bench_dir/logs/mock-error.log" "$mlog_at" "$bench_dir/mock-errors-$n.log")
    read -r evalsha zadd inner hmget zrem < <("$BENCH_PY" "$BENCH_SRC/bench/bench.py" diff \
        "$bench_dir/st0" "$bench_dir/st1" evalsha zadd _inner hmget zrem)
    "$BENCH_PY" - "$rows" "$out" "$ready" n="$n" hold="$hold" t0="$t0" t1="$t1" \
        t_start="$t_start" rss0="$rss0" rss_a="$rss_a" rss_b="$rss_b" mrss0="$mrss0" \
        mrss_a="$mrss_a" mrss_b="$mrss_b" cpu0="$cpu0" cpu1="$cpu1" h0="$h0" h1="$h1" m0="$m0" \
        m1="$m1" evalsha="$evalsha" zadd="$zadd" inner="$inner" hmget="$hmget" zrem="$zrem" \
        clients="$clients" left="${left:-?}" children="$children" mock_children="$mock_children" \
        lease="$lease" errors="$errors" mock_errors="$mock_errors" <<'PY'
import json, os, sys
rows, out, ready = sys.argv[1:4]
v = dict(a.split("=", 1) for a in sys.argv[4:])
f = {}
for k, x in v.items():
    try:
        f[k] = float(x)
    except ValueError:
        pass
r = json.load(open(out))
rd = json.load(open(ready)) if os.path.exists(ready) and os.path.getsize(ready) else {}
el = f["t1"] - f["t0"]
n = int(f["n"])
rss1 = max(f["rss_a"], f["rss_b"])
mrss1 = max(f["mrss_a"], f["mrss_b"])
every = max(f["lease"] / 3, 0.2)
# batch calls in the window (at most one per admission, with its HMGET, or per
# release, with its ZREM); renewal runs neither
other = f["hmget"] + f["zrem"]
renew_s = (f["evalsha"] - other) / el
row = {
    "n": n, "hold_s": f["hold"] / 1000, "admitted": r["admitted"], "completed": r["completed"],
    "refused": r["refused"], "failed": r["failed"], "max_held": r.get("max_held", -1),
    "held_at_ready": rd.get("held", -1), "admit_s": rd.get("t", r.get("all_statuses_s")),
    "rss0": f["rss0"] / 1024, "rss1": rss1 / 1024, "per_stream_kib": (rss1 - f["rss0"]) / n,
    "mrss0": f["mrss0"] / 1024, "mrss1": mrss1 / 1024,
    "children": int(f["children"]), "mock_children": int(f["mock_children"]),
    "evalsha_s": renew_s,
    "per_child": renew_s * every / f["children"] if f["children"] else 0,
    "zadd_s": (f["zadd"] - f["hmget"]) / el, "inner_s": f["inner"] / el, "other": int(other),
    "redis_cpu_pct": (f["cpu1"] - f["cpu0"]) / el * 100,
    "relay_cpu_pct": (f["h1"] - f["h0"]) / el * 100, "mock_cpu_pct": (f["m1"] - f["m0"]) / el * 100,
    "clients": int(f["clients"]), "left": v["left"],
    "first_end": r["first_end_s"], "win_end": f["t1"] - f["t_start"],
    "refusals": ", ".join("%s×%s" % (c, k) for k, c in sorted(r["statuses"].items()) if k != "200"),
    "fail_reasons": ", ".join("%d× %s" % (c, e) for e, c in sorted(r["errors"].items())),
    "errors": v["errors"], "mock_errors": v["mock_errors"],
}
with open(rows, "a") as fo:
    fo.write(json.dumps(row) + "\n")
print("N=%d: %s" % (n, json.dumps(r)), file=sys.stderr)
PY
    bench_stop_httpd
    bench_stop_mock
done

table=$("$BENCH_PY" - "$rows" "$lease" "$window" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
lease, window = float(sys.argv[2]), sys.argv[3]
every = max(lease / 3, 0.2)
print("| streams N | admitted (200) | completed (message_stop) | refused | failed "
      "| held at once (max) | all statuses in (s) | relay httpd RSS before → during (MiB) "
      "| relay RSS per stream (KiB) | mock httpd RSS before → during (MiB) | relay children "
      "| renew EVALSHA/s | renew calls per child per interval | ZADD/s inside renew "
      "| all commands inside scripts/s | Redis CPU % while held | Redis conns held "
      "| leases left after |")
print("|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    admit = "%.2f" % r["admit_s"] if isinstance(r["admit_s"], (int, float)) else "-"
    print("| %d | %d | %d | %s | %d | %d | %s | %.1f → %.1f | %.1f | %.1f → %.1f | %d | %.2f | %.2f "
          "| %.1f | %.1f | %.1f | %d | %s |"
          % (r["n"], r["admitted"], r["completed"],
             "%d%s" % (r["refused"], " (%s)" % r["refusals"] if r["refusals"] else ""),
             r["failed"], r["max_held"], admit, r["rss0"], r["rss1"], r["per_stream_kib"],
             r["mrss0"], r["mrss1"], r["children"], r["evalsha_s"], r["per_child"], r["zadd_s"],
             r["inner_s"], r["redis_cpu_pct"], r["clients"], r["left"]))
print()
print("Renewal runs every %.1f s in each relay child (RelayLeaseSeconds %g / 3): one call per "
      "child per interval is the relay children count / %.1f per second, whatever N is; without "
      "batching it would be N / %.1f. Per-second figures are deltas of `INFO commandstats` over "
      "a %s s window while every stream is held, less the admit and release calls that fell in "
      "it (counted by their HMGET and ZREM; the all-commands column keeps them)."
      % (every, lease, every, every, window))
print()
for r in rows:
    line = ("- N=%d (held %g s): relay httpd CPU %.0f %%, mock httpd CPU %.0f %% (%d children) of one "
            "CPU while held; relay error log meanwhile: %s; mock error log: %s"
            % (r["n"], r["hold_s"], r["relay_cpu_pct"], r["mock_cpu_pct"], r["mock_children"],
               r["errors"], r["mock_errors"]))
    if r["fail_reasons"]:
        line += "; failures: " + r["fail_reasons"]
    print(line)
for r in rows:
    if r["admitted"] != r["n"] or r["completed"] != r["n"]:
        print("\n**N=%d: not every stream was admitted and completed** (%d admitted, %d completed,"
              " %d refused, %d failed)." % (r["n"], r["admitted"], r["completed"], r["refused"],
                                            r["failed"]))
    if r["max_held"] < r["n"]:
        print("\nN=%d: at most %d streams were held at once, not all %d." % (r["n"], r["max_held"], r["n"]))
    if r["first_end"] is not None and r["first_end"] < r["win_end"]:
        print("\nN=%d: a stream ended before the window closed; its figures mix in releases."
              % r["n"])
PY
)

report="
## Concurrent SSE streams through the relay ($(date -u '+%Y-%m-%d %H:%M UTC'))

- command: \`$command_line\` (from \`make bench\`)
$(bench_machine)
$bench_build
- the mock upstream runs in a separate httpd (own config, port and error log; event MPM),
  started with the relay's httpd for each N and sized alike: one worker thread per stream, a
  quarter more and 200 ($sizes); the relay's httpd proxies to it.
  Each stream is \`POST /api/v1/messages\` with \`{\"stream\":true}\`, \`x-mock-hold-ms\` as
  above, \`x-mock-events: $events\`, opened by bench/sse_client.py (one thread, epoll), at most
  $max_pending at a time waiting for their status line; key limit $key_limit.
- limits: ulimit -n $(ulimit -n), ulimit -u $(ulimit -u), kernel.pid_max $(cat /proc/sys/kernel/pid_max),
  kernel.threads-max $(cat /proc/sys/kernel/threads-max), vm.max_map_count $maps, somaxconn
  $somaxconn (ListenBacklog 4096), tcp_max_syn_backlog $syn_backlog, Redis maxclients
  $redis_maxclients${limits_note:+; $limits_note}.
- RSS: sum of VmRSS of the relay httpd's children only, before the streams and while they are
  held (the larger of two samples); relay RSS per stream = (during − before) / N. The mock's
  children are summed the same way in their own column.

$table
"
echo "$report"
if [ -f "$results" ]; then
    printf '%s' "$report" >> "$results"
else
    printf '# Benchmark results\n%s' "$report" > "$results"
fi
bench_log "appended to ${results#"$BENCH_SRC"/}"
