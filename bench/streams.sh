#!/bin/bash
# bench/streams.sh - many slow SSE streams held through the relay at once: are
# they all admitted and completed, what memory does each cost, and how much
# Redis work does keeping their leases alive take (renewal is batched: one
# script call per child per interval, whatever the number of leases)?
#
# For each N in BENCH_STREAM_COUNTS, N connections open at once, each a
# POST /api/v1/messages {"stream":true} with x-mock-hold-ms and x-mock-events,
# with a key whose concurrency limit is above N. While all are held, a window
# of BENCH_STREAM_WINDOW seconds measures RSS and Redis's commandstats.
#
# Environment: BENCH_STREAMS (0: skip), BENCH_STREAM_COUNTS ("500 1000 2000"),
# BENCH_STREAM_HOLD_MS (20000), BENCH_STREAM_EVENTS (10), BENCH_STREAM_WINDOW (10),
# BENCH_STREAM_LEASE_SECONDS (3: leases renewed every second, so a window sees
# renewals; the default RelayLeaseSeconds 300 renews every 100 s),
# BENCH_RESULTS (bench/results-latest.md, appended to), BENCH_KEEP.
set -euo pipefail

BENCH_SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$BENCH_SRC/bench/lib.sh"

if [ "${BENCH_STREAMS:-1}" = 0 ]; then
    echo "bench/streams.sh: skipped (BENCH_STREAMS=0)"
    exit 0
fi

counts=${BENCH_STREAM_COUNTS:-"500 1000 2000"}
hold=${BENCH_STREAM_HOLD_MS:-20000}
events=${BENCH_STREAM_EVENTS:-10}
window=${BENCH_STREAM_WINDOW:-10}
lease=${BENCH_STREAM_LEASE_SECONDS:-3}
results=${BENCH_RESULTS:-$BENCH_SRC/bench/results-latest.md}
command_line="BENCH_STREAM_COUNTS=\"$counts\" BENCH_STREAM_HOLD_MS=$hold BENCH_STREAM_LEASE_SECONDS=$lease bench/streams.sh"

max=0
for n in $counts; do [ "$n" -gt "$max" ] && max=$n; done
# a thread per stream for the relay's proxy and one for the mock upstream
# (same httpd), plus headroom: connections do not spread evenly over children
tpc=100
limit=$(((2 * max + max / 4 + 200 + tpc - 1) / tpc))
[ "$limit" -lt 2 ] && limit=2

# descriptors: the client holds N sockets, Redis up to one connection per thread
need=$((max + 2 * tpc * limit + 200))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
    ulimit -n "$hard"
    [ "$hard" -ge $((max + 500)) ] || bench_die "ulimit -n can only reach $hard; $need wanted"
else
    ulimit -n "$need"
fi

bench_check_tools
trap bench_cleanup EXIT
bench_stage
bench_start_redis
bench_write_conf "$tpc" "$limit" "$lease" "${BENCH_STREAM_HTTPD_EXTRA:-}"
bench_log "httpd: $limit children x $tpc threads, RelayLeaseSeconds $lease; ulimit -n $(ulimit -n)"

read -r key_id key < <(bench_create_key "bench streams" $((2 * max + 100)))

rows=$bench_dir/streams.tsv
printf 'n\tadmitted\tcompleted\trefused\tfailed\tadmit_s\trss0\trss1\tper_stream_kib\tevalsha_s\tzadd_s\tinner_s\tother_scripts\tredis_cpu_pct\tclients\tleft\tchildren\tfirst_end\twin_end\trefusals\terrors\n' > "$rows"

for n in $counts; do
    # a fresh httpd for each N: no backend connections kept alive from the last N
    # (the mock lives in this httpd, so a reused one could wait behind busy workers)
    bench_start_httpd
    # every child has all its threads up
    sleep 3
    bench_log "$n streams of $((hold / 1000)) s"
    rss0=$(bench_children_rss_kib)
    log_at=$(wc -l < "$bench_dir/logs/error.log")
    ready=$bench_dir/ready-$n.json
    out=$bench_dir/client-$n.json
    t_start=$(bench_now)
    "$BENCH_PY" "$BENCH_SRC/bench/sse_client.py" --port "$bench_http_port" --key "$key" -n "$n" \
        --hold-ms "$hold" --events "$events" --ready-file "$ready" --out "$out" > /dev/null &
    client=$!
    bench_bg_pids="$bench_bg_pids $client"
    # the window starts once every stream has its status line, or after a quarter
    # of the hold at the latest, so that it ends before the streams do
    for _ in $(seq $((hold / 400))); do
        [ -s "$ready" ] && break
        sleep 0.1
    done
    [ -s "$ready" ] || bench_log "not every stream had its status line after $((hold / 4000)) s"
    sleep 1
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" stats 127.0.0.1 "$bench_redis_port" > "$bench_dir/st0"
    cpu0=$(bench_redis_cpu)
    t0=$(bench_now)
    rss_a=$(bench_children_rss_kib)
    sleep "$window"
    rss_b=$(bench_children_rss_kib)
    clients=$(bench_redis_clients)
    t1=$(bench_now)
    cpu1=$(bench_redis_cpu)
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" stats 127.0.0.1 "$bench_redis_port" > "$bench_dir/st1"
    wait "$client" || true
    sleep 1
    left=$(rcli ZCARD "concurrency:$key_id")
    # what httpd logged meanwhile, by module and level, with the commonest cause
    tail -n +"$((log_at + 1))" "$bench_dir/logs/error.log" > "$bench_dir/errors-$n.log"
    errors=$("$BENCH_PY" - "$bench_dir/errors-$n.log" <<'PY'
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
)
    read -r evalsha zadd inner hmget zrem < <("$BENCH_PY" "$BENCH_SRC/bench/bench.py" diff \
        "$bench_dir/st0" "$bench_dir/st1" evalsha zadd _inner hmget zrem)
    "$BENCH_PY" - "$rows" "$out" "$ready" n="$n" t0="$t0" t1="$t1" t_start="$t_start" \
        rss0="$rss0" rss_a="$rss_a" rss_b="$rss_b" cpu0="$cpu0" cpu1="$cpu1" evalsha="$evalsha" \
        zadd="$zadd" inner="$inner" hmget="$hmget" zrem="$zrem" clients="$clients" \
        left="${left:-?}" children="$(bench_children_count)" errors="$errors" <<'PY'
import json, os, sys
rows, out, ready = sys.argv[1:4]
v = {k: float(x) if x.replace(".", "", 1).isdigit() and k != "errors" else x
     for k, x in (a.split("=", 1) for a in sys.argv[4:])}
r = json.load(open(out))
rd = json.load(open(ready)) if os.path.exists(ready) and os.path.getsize(ready) else {}
el = v["t1"] - v["t0"]
n = int(v["n"])
rss1 = max(v["rss_a"], v["rss_b"])
# batch calls in the window (at most one per admission, with its HMGET, or per
# release, with its ZREM); renewal runs neither
other = v["hmget"] + v["zrem"]
row = [n, r["admitted"], r["completed"], r["refused"], r["failed"], rd.get("t", -1),
       "%.1f" % (v["rss0"] / 1024), "%.1f" % (rss1 / 1024), "%.1f" % ((rss1 - v["rss0"]) / n),
       "%.2f" % ((v["evalsha"] - other) / el), "%.1f" % ((v["zadd"] - v["hmget"]) / el),
       "%.1f" % (v["inner"] / el), int(other), "%.1f" % ((v["cpu1"] - v["cpu0"]) / el * 100),
       int(v["clients"]), v["left"] if isinstance(v["left"], str) else int(v["left"]),
       int(v["children"]), r["first_end_s"],
       "%.1f" % (v["t1"] - v["t_start"]),
       ", ".join("%s×%s" % (c, k) for k, c in sorted(r["statuses"].items()) if k != "200") or "-",
       v["errors"].replace("\t", " ")]
with open(rows, "a") as f:
    f.write("\t".join(str(x) for x in row) + "\n")
print("N=%d: %s" % (n, json.dumps(r)), file=sys.stderr)
PY
    bench_stop_httpd
done

table=$("$BENCH_PY" - "$rows" "$lease" "$window" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
head, rows = rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]
lease, window = float(sys.argv[2]), sys.argv[3]
every = max(lease / 3, 0.2)
print("| streams N | admitted (200) | completed (message_stop) | refused | failed "
      "| all statuses in (s) | httpd RSS before → during (MiB) | RSS per stream (KiB) "
      "| renew EVALSHA/s | ZADD/s inside renew | all commands inside scripts/s | Redis CPU % while held "
      "| Redis conns held | leases left after |")
print("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print("| %s | %s | %s | %s | %s | %.2f | %s → %s | %s | %s | %s | %s | %s | %s | %s |"
          % (r["n"], r["admitted"], r["completed"],
             r["refused"] + ("" if r["refusals"] == "-" else " (%s)" % r["refusals"]), r["failed"],
             float(r["admit_s"]), r["rss0"], r["rss1"], r["per_stream_kib"], r["evalsha_s"],
             r["zadd_s"], r["inner_s"], r["redis_cpu_pct"], r["clients"], r["left"]))
print()
print("Renewal runs every %.1f s in each child (RelayLeaseSeconds %g / 3); per-second figures "
      "are deltas of `INFO commandstats` over a %s s window while every stream is held, less "
      "the admit and release calls that fell in it (counted by their HMGET and ZREM; the all-commands "
      "column keeps them). Without batching "
      "the renew EVALSHA rate would be N / %.1f per second." % (every, lease, window, every))
print()
for r in rows:
    print("- N=%s: httpd error log meanwhile: %s" % (r["n"], r["errors"]))
for r in rows:
    try:
        if float(r["first_end"]) < float(r["win_end"]):
            print("\nN=%s: a stream ended before the window closed; its figures mix in releases."
                  % r["n"])
    except ValueError:
        pass
PY
)

report="
## Concurrent SSE streams through the relay ($(date -u '+%Y-%m-%d %H:%M UTC'))

- command: \`$command_line\` (from \`make bench\`)
$(bench_machine)
$bench_build
- httpd: event MPM, $limit children x $tpc threads ($((limit * tpc)) workers: each stream takes
  one for the relay's proxy and one for the mock upstream in the same httpd); each stream is
  \`POST /api/v1/messages\` with \`{\"stream\":true}\`, \`x-mock-hold-ms: $hold\`,
  \`x-mock-events: $events\`, all N opened at once by bench/sse_client.py; key limit $((2 * max + 100)).
- RSS: sum of VmRSS of the httpd children before the streams and while they are held (the
  larger of two samples); per stream = (during − before) / N.

$table
"
echo "$report"
if [ -f "$results" ]; then
    printf '%s' "$report" >> "$results"
else
    printf '# Benchmark results\n%s' "$report" > "$results"
fi
bench_log "appended to ${results#"$BENCH_SRC"/}"
