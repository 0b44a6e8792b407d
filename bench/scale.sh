#!/bin/bash
# bench/scale.sh - the admin and the metrics location with 10,000 keys in Redis:
# how long a page of the list, a page of the JSON API and a scrape take, and
# how long one script call of the list holds Redis (Redis runs nothing else
# meanwhile, relay requests included).
#
# The keys are written straight into Redis by one script, as
# t/relay/admin_scale.t does (a big installation holds them so): full records
# and hash-map entries, usage for every key, usage today for every tenth, two
# leases in flight for every hundredth, and, as t/relay/metrics.t writes them,
# per-key outcome counts and token totals of one model. One httpd (event MPM,
# 2 children of 25 threads) serves the admin (`RelayAdmin Open`) at
# /relay-admin and `claude-relay-metrics` at /relay-metrics, both to loopback
# only.
#
# Each case: one request to warm up (its answer is checked: 200 and the
# expected content), then BENCH_SCALE_RUNS timed ones, one after another, with
# curl's %{time_total}. Scrapes are spaced by more than a second, so that each
# reads the keys from Redis afresh (a child reuses its read for a second). For
# the timed requests of each case, Redis's INFO commandstats gives the script
# calls per request, and SLOWLOG (every command logged) how long each call ran.
#
# Environment: BENCH_SCALE (0: skip), BENCH_SCALE_KEYS (10000),
# BENCH_SCALE_RUNS (5), BENCH_RESULTS (bench/results-latest.md, appended to),
# BENCH_KEEP (1: keep the temp folder).
set -euo pipefail

BENCH_SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$BENCH_SRC/bench/lib.sh"

if [ "${BENCH_SCALE:-1}" = 0 ]; then
    echo "bench/scale.sh: skipped (BENCH_SCALE=0)"
    exit 0
fi

n=${BENCH_SCALE_KEYS:-10000}
runs=${BENCH_SCALE_RUNS:-5}
results=${BENCH_RESULTS:-$BENCH_SRC/bench/results-latest.md}
command_line="BENCH_SCALE_KEYS=$n BENCH_SCALE_RUNS=$runs bench/scale.sh"
for v in "$n" "$runs"; do
    case $v in '' | *[!0-9]*) bench_die "BENCH_SCALE_KEYS and BENCH_SCALE_RUNS are whole numbers; got \"$v\"" ;; esac
done
[ "$n" -ge 100 ] || bench_die "BENCH_SCALE_KEYS must be at least 100 (a page of 50 keys with leases)"
[ "$runs" -ge 1 ] || bench_die "BENCH_SCALE_RUNS must be at least 1"

# the targets, in ms: a page (list or API), a scrape, one script call of the list
target_page=300
target_scrape=1000
target_call=20

command -v curl >/dev/null || bench_die "curl is missing"
bench_check_tools
trap bench_cleanup EXIT
bench_stage
cp -r "$BENCH_SRC/htdocs" "$bench_dir/htdocs"
chmod -R a+rX "$bench_dir/htdocs"
bench_start_redis

admin_conf="LoadModule authz_host_module $BENCH_MODS/mod_authz_host.so
RelayAdminAssets $bench_dir/htdocs
<Location /relay-admin>
    SetHandler claude-relay-admin
    RelayAdmin Open
    Require ip 127.0.0.1
</Location>
<Location /relay-metrics>
    SetHandler claude-relay-metrics
    Require ip 127.0.0.1
</Location>"
bench_write_conf 25 2 "" "$admin_conf"
bench_start_httpd
bench_log "httpd on 127.0.0.1:$bench_http_port, redis :$bench_redis_port, in $bench_dir"
base=http://127.0.0.1:$bench_http_port

# --- the keys ----------------------------------------------------------------
now_s=$(rcli TIME | head -1)
today=$(date -u -d "@$now_s" +%Y-%m-%d)
bench_log "writing $n keys into Redis"
# the keys as t/relay/admin_scale.t writes them, with the metrics' outcome
# counts and model totals too
rcli EVAL "$(cat "$BENCH_SRC/t/lib/bulk_keys.lua")" 0 "$n" "$today" "$(((now_s + 86400) * 1000))" "" 1 \
    >/dev/null
[ "$(rcli HLEN apikey:hash_map)" = "$n" ] || bench_die "Redis does not hold the $n keys written"

# --- measuring ---------------------------------------------------------------
# every command logged with its duration, for the longest script call
rcli CONFIG SET slowlog-log-slower-than 0 >/dev/null
rcli CONFIG SET slowlog-max-len 100000 >/dev/null

# one GET: "seconds status", the body to $bench_dir/body
get() {
    curl -s -o "$bench_dir/body" -w '%{time_total} %{http_code}\n' "$base$1"
}

# check_body KIND: the warm-up answer holds what the case asks for
check_body() {
    "$BENCH_PY" - "$1" "$n" "$bench_dir/body" <<'PY'
import json, re, sys
kind, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
text = open(path, encoding="utf-8", errors="replace").read()
if kind in ("html", "sorted"):
    ok = text.count("scale key ") >= 50
elif kind == "api":
    doc = json.loads(text)
    ok = len(doc.get("data") or []) == 50 and doc.get("total", 0) >= n
else:
    ok = re.search(r"^claude_relay_keys %d$" % n, text, re.M) is not None
sys.exit(0 if ok else 1)
PY
}

# ms of a curl time_total
ms() { awk -v s="$1" 'BEGIN {printf "%.1f", s * 1000}'; }

# median and max of the numbers in a file, one a line
med_max() {
    sort -g "$1" | awk '{v[NR] = $1} END {
        m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.1f %.1f\n", m, v[NR]}'
}

# met TARGET VALUE
met() { awk -v t="$1" -v v="$2" 'BEGIN {print (v <= t ? "yes" : "**no**")}'; }

# delta ST0 ST1: "cmd calls usec" of what ran between two `bench.py stats`
delta() {
    join -a 2 -e 0 -o 0,1.2,1.3,2.2,2.3 <(sort "$1") <(sort "$2") |
        awk '{print $1, $4 - $2, $5 - $3}'
}

# per CMD...: "calls usec" per request of those commands in $bench_dir/delta
per_request() {
    awk -v r="$runs" -v want=" ${*} " 'index(want, " " $1 " ") {c += $2; u += $3}
        END {printf "%g %.1f\n", c / r, u / r / 1000}' "$bench_dir/delta"
}

rows=""
notes=""
# measure LABEL PATH KIND TARGET SPACING_S: a table row, and a note of what it
# cost Redis; the durations of its script calls go to $bench_dir/calls.KIND
measure() {
    local label=$1 path=$2 kind=$3 target=$4 spacing=$5 t code i med max
    local times=$bench_dir/times calls=$bench_dir/calls.$kind scripts scans hvals one
    read -r t code < <(get "$path")
    [ "$code" = 200 ] || bench_die "$label: GET $path answers $code, not 200 (see $bench_dir/logs/error.log)"
    check_body "$kind" || bench_die "$label: GET $path does not hold what it should ($kind, $n keys)"
    : > "$times"
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" stats 127.0.0.1 "$bench_redis_port" > "$bench_dir/st0"
    rcli SLOWLOG RESET >/dev/null
    for i in $(seq "$runs"); do
        # the spacing lets a child's read of the keys go stale (scrapes)
        [ "$spacing" = 0 ] || sleep "$spacing"
        read -r t code < <(get "$path")
        [ "$code" = 200 ] || bench_die "$label: GET $path answered $code on run $i"
        ms "$t" >> "$times"
        echo >> "$times"
    done
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" slowlog 127.0.0.1 "$bench_redis_port" evalsha eval |
        awk '{printf "%.3f\n", $1 / 1000}' > "$calls"
    "$BENCH_PY" "$BENCH_SRC/bench/bench.py" stats 127.0.0.1 "$bench_redis_port" > "$bench_dir/st1"
    delta "$bench_dir/st0" "$bench_dir/st1" > "$bench_dir/delta"
    read -r med max < <(med_max "$times")
    bench_log "$label: median $med ms, max $max ms ($(tr '\n' ' ' < "$times"))"
    rows+="| $label | $med | $max | ≤ $target ms | $(met "$target" "$med") |
"
    scripts=$(per_request evalsha eval | awk '{printf "%g script calls, %s ms of Redis in them", $1, $2}')
    scans=$(per_request scan | awk '$1 > 0 {printf "; %g SCAN calls, %s ms", $1, $2}')
    hvals=$(per_request hvals | awk '$1 > 0 {printf "; %g HVALS, %s ms", $1, $2}')
    one="none logged"
    [ -s "$calls" ] && one=$(med_max "$calls" | awk '{printf "median %s ms, longest %s ms", $1, $2}')
    notes+="- $label: per request $scripts (one call: $one)$scans$hvals
"
}

# the list's script calls, over every timed request of the three admin cases:
# how long the longest held Redis
call_row() {
    local f=$bench_dir/calls.admin med max
    cat "$bench_dir/calls.html" "$bench_dir/calls.api" "$bench_dir/calls.sorted" > "$f"
    [ -s "$f" ] || bench_die "SLOWLOG logged no script call of the list"
    read -r med max < <(med_max "$f")
    rows+="| one script call of the list (all $(wc -l < "$f") calls of the three admin cases) | $med | $max | ≤ $target_call ms | $(met "$target_call" "$max") |
"
}

# the key count as a reader writes it: 10,000
n_words=$(printf '%s' "$n" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta')
loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)
page2=$((n / 50 / 2))
measure "admin list page, first page (\`/relay-admin/\`)" "/relay-admin/" html "$target_page" 0
measure "JSON API \`GET api/keys?page=1\`" "/relay-admin/api/keys?page=1" api "$target_page" 0
# check_body's "html" kind, with its own file of script calls
measure "admin list page $page2 sorted by in flight (\`?sort=inFlight&page=$page2\`)" \
    "/relay-admin/?sort=inFlight&page=$page2" sorted "$target_page" 0
measure "a /metrics scrape (\`/relay-metrics\`, $n_words keys)" "/relay-metrics" metrics "$target_scrape" 1.2
call_row

metrics_read=$(awk '/^claude_relay_keys_read_seconds / {s = $2} /^claude_relay_keys_read_redis_calls / {c = $2}
    END {printf "%.1f ms in %d Redis round trips", s * 1000, c}' "$bench_dir/body")
scrape_bytes=$(wc -c < "$bench_dir/body")

# --- the report --------------------------------------------------------------
report="
## Admin and metrics with $n_words keys ($(date -u '+%Y-%m-%d %H:%M UTC'))

- command: \`$command_line\` (from \`make bench\`)
$(bench_machine)
$bench_build
- load average at start / end: $loadavg_start / $(cut -d' ' -f1-3 /proc/loadavg)
- httpd: event MPM, 2 children x 25 threads; the admin (\`RelayAdmin Open\`) at /relay-admin,
  \`claude-relay-metrics\` at /relay-metrics. $n_words keys written straight into Redis, as
  t/relay/admin_scale.t does (full records, hash map, usage; usage today for every tenth key,
  2 leases in flight for every hundredth), with per-key outcome counts and one model's tokens.
- each case: one warm-up request (answer checked), then $runs timed ones in a row, curl
  \`%{time_total}\`; scrapes 1.2 s apart, so each reads the keys from Redis afresh (a child
  reuses its read for a second). A page or scrape meets its target by the median; a script
  call by the longest (how long Redis ran nothing else). Script calls: INFO commandstats
  (EVALSHA and EVAL) over the timed requests; their durations: SLOWLOG with every command
  logged.

| what | median ms | max ms | target | met? |
|---|---:|---:|---|---|
$rows
What each request cost Redis:

$notes- the last scrape: $scrape_bytes bytes; its read of the keys $metrics_read.
"
echo "$report"
if [ -f "$results" ]; then
    printf '%s' "$report" >> "$results"
else
    printf '# Benchmark results\n%s' "$report" > "$results"
fi
bench_log "appended to ${results#"$BENCH_SRC"/}"
