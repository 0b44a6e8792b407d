#!/bin/bash
# Runs the Apache::Test suite against the built module in a real httpd with a
# real redis-server, both on free loopback ports.
#
#   t/run-tests.sh [Apache::Test arguments, e.g. t/relay/basic.t]
#
# The tree is staged into a temporary folder readable by the httpd children
# (they run as nobody when this runs as root), because the checkout's parents
# may not be.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=${RELAY_BUILD:-$src/build}
for f in mod_claude_relay.so mod_relay_mock.so relay-keys; do
    [ -e "$build/$f" ] || { echo "run-tests: $build/$f is missing; run make first" >&2; exit 2; }
done

stage=$(mktemp -d /tmp/relay-test.XXXXXX)
redis_pid=""
cleanup() {
    local pids="" pid f
    if [ -n "$redis_pid" ]; then pids="$redis_pid"; fi
    # whatever the tests started and left a pid file for (a restarted Redis,
    # extra httpd servers, sentinels): stop it, so nothing outlives the run
    for f in "$stage"/run/*.pid "$stage"/run/*/*.pid "$stage"/run/*/*/*.pid; do
        [ -s "$f" ] && pids="$pids $(cat "$f")"
    done
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    # our own Redis is reaped (a zombie still answers kill -0)
    if [ -n "$redis_pid" ]; then wait "$redis_pid" 2>/dev/null || true; fi
    # and wait until they are gone: a Redis or httpd still writing its files
    # into the stage would make its removal fail
    for _ in $(seq 100); do
        f=""
        for pid in $pids; do kill -0 "$pid" 2>/dev/null && f=1; done
        [ -z "$f" ] && break
        sleep 0.1
    done
    if [ "${RELAY_KEEP_STAGE:-0}" = 1 ]; then
        echo "run-tests: kept $stage"
    else
        rm -rf "$stage" || echo "run-tests: could not remove $stage" >&2
    fi
}
trap cleanup EXIT

# A free TCP port on 127.0.0.1.
free_port() {
    perl -MIO::Socket::INET -e '
        my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0,
                                      Proto => "tcp", Listen => 1, ReuseAddr => 1) or die $!;
        print $s->sockport, "\n";'
}

# the npm packages of the client tests (hundreds of MB) stay in the source
# tree: the clients run from there, as the user running the tests
tar -C "$src" --exclude=t/clients/node_modules --exclude=t/output -cf - t | tar -C "$stage" -xf -
mkdir -p "$stage/build" "$stage/htdocs" "$stage/run"
cp "$build/mod_claude_relay.so" "$build/mod_relay_mock.so" "$build/relay-keys" "$stage/build/"
[ -d "$src/htdocs" ] && cp -a "$src/htdocs/." "$stage/htdocs/"
rm -rf "$stage/t/logs" "$stage/t/conf/httpd.conf" "$stage/t/conf/extra.conf" "$stage/t/conf/apache_test_config.pm"
chmod -R a+rX "$stage"
chmod 1777 "$stage/run"
chmod 755 "$stage"

mods=/usr/lib/apache2/modules
{
    for m in mpm_event authz_core authn_core authn_file auth_basic authz_user authz_host \
             access_compat proxy proxy_http mime alias headers env setenvif dir rewrite \
             include filter deflate reqtimeout http2 status; do
        echo "LoadModule ${m}_module $mods/mod_${m}.so"
    done
    echo "LoadModule claude_relay_module $stage/build/mod_claude_relay.so"
    echo "LoadModule relay_mock_module $stage/build/mod_relay_mock.so"
} > "$stage/run/inherit.conf"

export RELAY_TEST_REDIS_PORT=$(free_port)
export RELAY_TEST_MOCK_LOG=$stage/run/mock.log
export RELAY_TEST_SECRET=test-secret-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
export RELAY_TEST_UPSTREAM_KEY=sk-ant-upstream-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
export RELAY_TEST_STAGE=$stage
export RELAY_TEST_SRC=$src
export RELAY_TEST_OUTPUT=$src/t/output
mkdir -p "$RELAY_TEST_OUTPUT"
export RELAY_KEYS=$stage/build/relay-keys
export RELAY_REDIS=127.0.0.1:$RELAY_TEST_REDIS_PORT
export RELAY_KEY_HASH_SECRET=$RELAY_TEST_SECRET
export RELAY_TEST_ADMIN_USER=admin
export RELAY_TEST_ADMIN_PASSWORD=pw-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
htpasswd -bc "$stage/run/admin.htpasswd" "$RELAY_TEST_ADMIN_USER" "$RELAY_TEST_ADMIN_PASSWORD" 2>/dev/null
chmod 644 "$stage/run/admin.htpasswd"
: > "$RELAY_TEST_MOCK_LOG"
chmod 666 "$RELAY_TEST_MOCK_LOG"

redis-server --bind 127.0.0.1 --port "$RELAY_TEST_REDIS_PORT" --save '' --appendonly no \
    --dir "$stage/run" --logfile "$stage/run/redis.log" --daemonize no &
redis_pid=$!
for _ in $(seq 50); do
    redis-cli -p "$RELAY_TEST_REDIS_PORT" PING >/dev/null 2>&1 && break
    sleep 0.1
done

httpd=/usr/sbin/apache2
if [ "${RELAY_ASAN:-0}" = 1 ]; then
    # a module built with -fsanitize=address,undefined needs the runtimes
    # loaded first; every report lands in run/sanitizer.* and fails the run
    asan=$(gcc -print-file-name=libasan.so)
    ubsan=$(gcc -print-file-name=libubsan.so)
    mkdir -p "$stage/run/sanitizer"
    chmod 1777 "$stage/run/sanitizer"
    cat > "$stage/run/httpd-sanitized" <<WRAP
#!/bin/sh
export LD_PRELOAD="$asan $ubsan"
export ASAN_OPTIONS="detect_leaks=0:use_sigaltstack=0:log_path=$stage/run/sanitizer/asan:abort_on_error=0"
export UBSAN_OPTIONS="print_stacktrace=1:log_path=$stage/run/sanitizer/ubsan"
exec /usr/sbin/apache2 "\$@"
WRAP
    chmod 755 "$stage/run/httpd-sanitized"
    httpd=$stage/run/httpd-sanitized
fi
export RELAY_HTTPD=$httpd

cd "$stage"
# the flood test holds hundreds of connections
ulimit -n 8192 2>/dev/null || true
user_args=()
if [ "$(id -u)" = 0 ]; then
    user_args=(-user nobody -group nogroup)
fi
set +e
perl t/TEST.PL -httpd "$httpd" -apxs /usr/bin/apxs -httpd_conf "$stage/run/inherit.conf" \
    -port select -servername 127.0.0.1 -maxclients 200 -threadsperchild 25 \
    "${user_args[@]}" "$@" 2>&1 | tee "$stage/run/summary.log"
rc=${PIPESTATUS[0]}
set -e
if [ "${RELAY_ASAN:-0}" = 1 ]; then
    reports=$(ls "$stage"/run/sanitizer/ 2>/dev/null | wc -l)
    # UBSan may write to httpd's stderr, which is the error log
    logged=$(cat "$stage"/t/logs/error_log "$stage"/run/*/logs/error_log 2>/dev/null |
             grep -cE 'runtime error:|ERROR: AddressSanitizer' || true)
    if [ "$reports" -gt 0 ] || [ "$logged" -gt 0 ]; then
        echo "---- sanitizer reports ($reports files, $logged in error logs) ----"
        head -n 80 "$stage"/run/sanitizer/* 2>/dev/null || true
        cat "$stage"/t/logs/error_log "$stage"/run/*/logs/error_log 2>/dev/null |
            grep -E -A3 'runtime error:|ERROR: AddressSanitizer' | head -n 40 || true
        rc=1
    else
        echo "sanitizers: no report from httpd"
    fi
fi
if [ $rc -ne 0 ]; then
    echo "---- last lines of the test httpd's error_log ----"
    tail -n 60 "$stage/t/logs/error_log" 2>/dev/null || true
    # repeat what failed at the very end, where a truncated CI log still shows it
    echo "---- what failed ----"
    # the harness prints a test's first diagnostic line after its progress
    # dots, so diagnostics are matched anywhere on a line
    grep -E '(^not ok|#  +Failed test|^# |t/.*\.t +\(Wstat|  Failed test|  Non-zero|  Parse errors|Bailout|Dubious)' \
        "$stage/run/summary.log" | head -n 80 || true
    sed -n '/^Test Summary Report/,/^Files=/p' "$stage/run/summary.log" | head -n 40 || true
fi
# one closing line: how many checks passed and failed
total=$(sed -n 's/^Files=[0-9]*, Tests=\([0-9]*\),.*/\1/p' "$stage/run/summary.log" | tail -n 1)
failed=$(sed -n 's/.* \([0-9]*\)\/[0-9]* subtests failed.*/\1/p' "$stage/run/summary.log" | tail -n 1)
total=${total:-0}
failed=${failed:-0}
[ $rc -ne 0 ] && [ "$failed" = 0 ] && failed=1
echo "apache-test: $((total - failed)) passed, $failed failed"
exit $rc
