# shellcheck shell=bash
# bench/lib.sh - shared by bench/run.sh, bench/streams.sh and bench/scale.sh
# (sourced, not run).
#
# Starts one redis-server and one httpd (event MPM) on free loopback ports,
# staged in a temp folder under /tmp that httpd's children (nobody, when run
# as root) can read, and stops both when the sourcing script exits. The mock
# upstream is a virtual host of that httpd, or (bench_mock_separate=1, before
# bench_write_conf) an httpd of its own: bench_write_mock_conf, bench_start_mock.

BENCH_SRC=${BENCH_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
BENCH_PY=/usr/bin/python3
BENCH_HTTPD=/usr/sbin/apache2
BENCH_MODS=/usr/lib/apache2/modules
BENCH_SECRET=bench-key-hash-secret-$$
BENCH_UPSTREAM_KEY=sk-ant-bench-upstream

bench_dir=""          # the staged temp folder
# shellcheck disable=SC2034  # read by the scripts that source this file
bench_build=""        # what was staged (bench_build_info)
bench_redis_port=""
bench_http_port=""
bench_mock_port=""
bench_unix_port=""
bench_redis_sock=""
bench_bg_pids=""      # background jobs this script started (wrk, MONITOR, clients)
bench_mock_separate=0 # 1: the mock upstream runs in an httpd of its own
bench_httpd_started="" # parent pids as started, to stop them even if their
bench_mock_started=""  # pid files have gone

bench_log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
bench_die() { echo "bench: $*" >&2; exit 1; }

# Free loopback ports: bound at once so they differ, then let go.
bench_free_ports() {
    "$BENCH_PY" - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

bench_check_tools() {
    local f
    for f in mod_claude_relay.so mod_relay_mock.so relay-keys; do
        [ -e "$BENCH_SRC/build/$f" ] || bench_die "build/$f is missing: run make all"
    done
    command -v redis-server >/dev/null || bench_die "redis-server is missing: scripts/install-deps --bench"
    command -v redis-cli >/dev/null || bench_die "redis-cli is missing: scripts/install-deps --bench"
    [ -x "$BENCH_HTTPD" ] || bench_die "$BENCH_HTTPD is missing: scripts/install-deps --bench"
    [ -x "$BENCH_PY" ] || bench_die "$BENCH_PY is missing"
}

# Stage the modules and the CLI where httpd's children can read them.
bench_stage() {
    bench_dir=$(mktemp -d /tmp/relay-bench.XXXXXX)
    mkdir -p "$bench_dir/logs" "$bench_dir/run"
    cp "$BENCH_SRC/build/mod_claude_relay.so" "$BENCH_SRC/build/mod_relay_mock.so" \
        "$BENCH_SRC/build/relay-keys" "$bench_dir/"
    printf '%s\n' "$BENCH_SECRET" > "$bench_dir/secret"
    chmod -R a+rX "$bench_dir"
    # shellcheck disable=SC2034  # read by the scripts that source this file
    bench_build=$(bench_build_info)
    read -r bench_redis_port bench_http_port bench_mock_port bench_unix_port < <(bench_free_ports 4)
    bench_redis_sock=$bench_dir/redis.sock
}

rcli() { redis-cli -h 127.0.0.1 -p "$bench_redis_port" "$@"; }

# BENCH_REDIS_ARGS: more redis-server options (e.g. "--tcp-backlog 4096");
# BENCH_REDIS_MAXCLIENTS (10000; Redis needs as many descriptors and 32 more)
bench_start_redis() {
    # shellcheck disable=SC2086
    redis-server --bind 127.0.0.1 --port "$bench_redis_port" --save '' --appendonly no \
        --maxclients "${BENCH_REDIS_MAXCLIENTS:-10000}" --dir "$bench_dir" --logfile "$bench_dir/logs/redis.log" \
        --pidfile "$bench_dir/redis.pid" --daemonize yes \
        --unixsocket "$bench_redis_sock" --unixsocketperm 777 ${BENCH_REDIS_ARGS:-}
    for _ in $(seq 100); do
        rcli PING >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    bench_die "redis-server did not start (see $bench_dir/logs/redis.log)"
}

# The User/Group lines: as root, the children run as nobody.
bench_user_lines() {
    [ "$(id -u)" = 0 ] && printf 'User nobody\nGroup nogroup\n'
    return 0
}

# The event MPM's sizing, the same for the relay's and the mock's httpd:
# every child and thread exists from the start, and none is reaped during a
# run; then extra lines and keep-alive (arguments: threads per child,
# children, extra configuration).
bench_mpm_conf() {
    local tpc=$1 limit=$2 extra=${3:-}
    cat <<CONF
StartServers $limit
ServerLimit $limit
ThreadLimit $tpc
ThreadsPerChild $tpc
MaxRequestWorkers $((tpc * limit))
MinSpareThreads $tpc
MaxSpareThreads $((tpc * limit))
MaxConnectionsPerChild 0
ListenBacklog 4096
$extra
Timeout 120

KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 30
CONF
}

# bench_write_conf THREADS_PER_CHILD SERVER_LIMIT [LEASE_SECONDS [EXTRA_DIRECTIVES]]
# The main host: /plain/ (bare mod_proxy, the baseline) and /api/ (the relay),
# both to one explicitly declared worker for the mock upstream, a virtual host
# of this httpd unless bench_mock_separate=1 (then bench_write_mock_conf).
bench_write_conf() {
    local tpc=$1 limit=$2 lease=${3:-} extra=${4:-}
    local user lease_line="" mock_listen="" mock_load="" mock_vhost=""
    user=$(bench_user_lines)
    [ -n "$lease" ] && lease_line="RelayLeaseSeconds $lease"
    if [ "$bench_mock_separate" != 1 ]; then
        mock_listen="Listen 127.0.0.1:$bench_mock_port"
        mock_load="LoadModule relay_mock_module $bench_dir/mod_relay_mock.so"
        mock_vhost="<VirtualHost 127.0.0.1:$bench_mock_port>
    KeepAlive On
    <Location />
        SetHandler claude-relay-mock
    </Location>
</VirtualHost>"
    fi
    cat > "$bench_dir/httpd.conf" <<CONF
# generated by bench/lib.sh
ServerRoot $bench_dir
ServerName 127.0.0.1
Listen 127.0.0.1:$bench_http_port
$mock_listen
PidFile $bench_dir/httpd.pid
DefaultRuntimeDir $bench_dir/run
ErrorLog $bench_dir/logs/error.log
LogLevel warn
$user
LoadModule mpm_event_module $BENCH_MODS/mod_mpm_event.so
LoadModule authz_core_module $BENCH_MODS/mod_authz_core.so
LoadModule proxy_module $BENCH_MODS/mod_proxy.so
LoadModule proxy_http_module $BENCH_MODS/mod_proxy_http.so
LoadModule claude_relay_module $bench_dir/mod_claude_relay.so
$mock_load

$(bench_mpm_conf "$tpc" "$limit" "$extra")

RelayRedisServer 127.0.0.1:$bench_redis_port
RelayKeyHashSecret file:$bench_dir/secret
$lease_line

# The upstream worker, declared once: both locations below share it (and its
# per-child pool of kept-alive backend connections; ttl under the mock's
# KeepAliveTimeout so a reused connection is never one the mock closed).
<Proxy "http://127.0.0.1:$bench_mock_port/">
    ProxySet disablereuse=Off ttl=20 keepalive=On
</Proxy>

<Location /plain/>
    ProxyPass http://127.0.0.1:$bench_mock_port/
</Location>

<Location /api/>
    RelayEngine On
    RelayUpstreamApiKey $BENCH_UPSTREAM_KEY
    ProxyPass http://127.0.0.1:$bench_mock_port/
</Location>

# the same relay with Redis over its unix socket and no slot reuse, so that
# every request of a key with a limit asks Redis (cases D and E)
Listen 127.0.0.1:$bench_unix_port
<VirtualHost 127.0.0.1:$bench_unix_port>
    RelayRedisServer unix:$bench_redis_sock
    RelayKeyHashSecret file:$bench_dir/secret
    RelayReuseSlots Off
    $lease_line
    <Location /api/>
        RelayEngine On
        RelayUpstreamApiKey $BENCH_UPSTREAM_KEY
        ProxyPass http://127.0.0.1:$bench_mock_port/
    </Location>
</VirtualHost>

$mock_vhost
CONF
}

# bench_write_mock_conf THREADS_PER_CHILD SERVER_LIMIT [EXTRA_DIRECTIVES]
# The mock upstream alone, in an httpd of its own (event MPM, its own pid file,
# error log, runtime folder and port), so that what it costs is not counted as
# the relay's. Used with bench_mock_separate=1.
bench_write_mock_conf() {
    local tpc=$1 limit=$2 extra=${3:-} user
    user=$(bench_user_lines)
    mkdir -p "$bench_dir/run-mock"
    cat > "$bench_dir/mock.conf" <<CONF
# generated by bench/lib.sh: the mock upstream's own httpd
ServerRoot $bench_dir
ServerName 127.0.0.1
Listen 127.0.0.1:$bench_mock_port
PidFile $bench_dir/mock.pid
DefaultRuntimeDir $bench_dir/run-mock
ErrorLog $bench_dir/logs/mock-error.log
LogLevel warn
$user
LoadModule mpm_event_module $BENCH_MODS/mod_mpm_event.so
LoadModule authz_core_module $BENCH_MODS/mod_authz_core.so
LoadModule relay_mock_module $bench_dir/mod_relay_mock.so

$(bench_mpm_conf "$tpc" "$limit" "$extra")

<Location />
    SetHandler claude-relay-mock
</Location>
CONF
}

bench_httpd_pid() { cat "$bench_dir/httpd.pid" 2>/dev/null || true; }
bench_mock_pid() { cat "$bench_dir/mock.pid" 2>/dev/null || true; }

# bench_start_conf CONF PID_FILE URL: configtest, start, wait until URL answers.
bench_start_conf() {
    local conf=$1 pidfile=$2 url=$3
    "$BENCH_HTTPD" -t -f "$conf" >/dev/null 2>"$bench_dir/logs/configtest.log" ||
        { cat "$bench_dir/logs/configtest.log" >&2; bench_die "httpd configtest failed ($conf)"; }
    "$BENCH_HTTPD" -f "$conf" -k start
    for _ in $(seq 100); do
        if [ -s "$pidfile" ] && curl -s -o /dev/null "$url"; then
            return 0
        fi
        sleep 0.1
    done
    bench_die "httpd did not start (see $bench_dir/logs/)"
}

bench_start_httpd() {
    bench_start_conf "$bench_dir/httpd.conf" "$bench_dir/httpd.pid" \
        "http://127.0.0.1:$bench_http_port/plain/v1/models"
    bench_httpd_started=$(bench_httpd_pid)
}

bench_start_mock() {
    bench_start_conf "$bench_dir/mock.conf" "$bench_dir/mock.pid" \
        "http://127.0.0.1:$bench_mock_port/v1/models"
    bench_mock_started=$(bench_mock_pid)
}

# bench_stop_conf CONF PID_FILE [PID]: stop that httpd (PID: the parent as
# started, when the pid file has gone); its parent is killed if it has not gone
# after 30 s (its children after it).
bench_stop_conf() {
    local conf=$1 pidfile=$2 pid kids
    pid=$(cat "$pidfile" 2>/dev/null || true)
    # the parent as started, if it is still that httpd (its command line names CONF)
    if [ -z "$pid" ] && [ -n "${3:-}" ] &&
        tr '\0' ' ' 2>/dev/null < "/proc/$3/cmdline" | grep -qF -- "-f $conf "; then
        pid=$3
    fi
    [ -n "$pid" ] || return 0
    "$BENCH_HTTPD" -f "$conf" -k stop 2>/dev/null || kill "$pid" 2>/dev/null || true
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kids=$(pgrep -P "$pid" || true)
        # shellcheck disable=SC2086  # one argument per child
        kill -9 "$pid" $kids 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

bench_stop_httpd() {
    bench_stop_conf "$bench_dir/httpd.conf" "$bench_dir/httpd.pid" "$bench_httpd_started"
    bench_httpd_started=""
}

bench_stop_mock() {
    bench_stop_conf "$bench_dir/mock.conf" "$bench_dir/mock.pid" "$bench_mock_started"
    bench_mock_started=""
}

bench_cleanup() {
    local pid
    for pid in $bench_bg_pids; do
        kill "$pid" 2>/dev/null || true
    done
    [ -n "$bench_dir" ] || return 0
    bench_stop_httpd
    bench_stop_mock
    if [ -n "$bench_redis_port" ]; then
        rcli SHUTDOWN NOSAVE >/dev/null 2>&1 || true
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "bench: kept $bench_dir" >&2
    else
        rm -rf "$bench_dir"
    fi
}

# Create a key; prints "id apiKey".
bench_create_key() {
    "$bench_dir/relay-keys" --redis "127.0.0.1:$bench_redis_port" --secret "$BENCH_SECRET" \
        create --name "$1" --concurrency-limit "$2" --json |
        "$BENCH_PY" -c 'import json,sys; k=json.load(sys.stdin); print(k["id"], k["apiKey"])'
}

# Sum of VmRSS of httpd's children, in KiB.
bench_children_rss_kib() { bench_children_rss_kib_of "$(bench_httpd_pid)"; }

# bench_children_rss_kib_of PARENT_PID: the same for that httpd.
bench_children_rss_kib_of() {
    local ppid=$1 c total=0 v
    for c in $(pgrep -P "$ppid"); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$c/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# CPU time (user + sys) of httpd, parent and children, in seconds.
bench_httpd_cpu() { bench_httpd_cpu_of "$(bench_httpd_pid)"; }

# bench_httpd_cpu_of PARENT_PID: the same for that httpd.
bench_httpd_cpu_of() {
    local ppid=$1
    # fields 14 and 15 of /proc/PID/stat, after the ")" that ends the name
    # shellcheck disable=SC2046  # one path per child
    cat "/proc/$ppid/stat" $(pgrep -P "$ppid" | sed 's|.*|/proc/&/stat|') 2>/dev/null |
        awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); t += $12 + $13} END {printf "%.2f\n", t / hz}'
}

# CPU time the whole machine spent busy (not idle, not waiting for I/O), in seconds.
bench_machine_busy() {
    awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" {printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz}' /proc/stat
}

bench_now() { date +%s.%N; }

bench_children_count() { bench_children_count_of "$(bench_httpd_pid)"; }
bench_children_count_of() { pgrep -P "$1" | wc -l; }

# Redis process CPU (user + sys), in seconds.
bench_redis_cpu() {
    rcli INFO cpu | tr -d '\r' |
        awk -F: '$1 == "used_cpu_sys" || $1 == "used_cpu_user" {s += $2} END {printf "%.6f\n", s}'
}

# Connected clients, less the redis-cli asking.
bench_redis_clients() {
    rcli INFO clients | tr -d '\r' | awk -F: '$1 == "connected_clients" {print $2 - 1}'
}

# What was measured: the staged copy of the module httpd loads (build/ may be
# rebuilt by others while a run goes on) and the commit checked out when staged.
bench_build_info() {
    local sum head dirty=""
    sum=$(sha256sum "$bench_dir/mod_claude_relay.so" | cut -c1-12)
    head=$(git -C "$BENCH_SRC" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ "$head" != unknown ] &&
        [ -n "$(git -C "$BENCH_SRC" status --porcelain --untracked-files=no -- '*.c' '*.h' 2>/dev/null)" ]; then
        dirty=" with uncommitted changes to the sources"
    fi
    echo "- module: build/mod_claude_relay.so as staged (sha256 $sum…), sources at commit $head$dirty${BENCH_REDIS_ARGS:+; redis-server extra options: $BENCH_REDIS_ARGS}"
}

bench_machine() {
    echo "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
        "Linux $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)"
    echo "- software: $("$BENCH_HTTPD" -v | awk -F': ' '/version/ {print $2}'), redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}')"
}
