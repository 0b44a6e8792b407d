#!/bin/bash
#
# test_concurrency_tool.sh - run the test-concurrency tool against a fake relay.
#
# Usage: t/unit/test_concurrency_tool.sh /path/to/built/test-concurrency
#
# Starts a small Perl HTTP server on 127.0.0.1 (a free port) that enforces a
# concurrency limit like mod_claude_relay: an in-flight counter in a file
# guarded by flock, the relay's 429 body past the limit, and answers held for
# x-mock-hold-ms. Knobs in its environment make it misbehave (admit more than
# it claims, report too many in flight, answer 500, end streams with an error
# event). Checks the tool's exit status, report and JSON, what it sent, and
# that the full API key never shows. Needs bash, perl (IO::Socket::INET,
# JSON::PP), grep and sed. Prints "ok"/"not ok" lines, then
# "N passed, N failed"; exits non-zero when anything failed. The fake server
# is always stopped on exit.

set -u
export LC_ALL=C

TOOL=${1:-}
if [ -z "$TOOL" ] || [ ! -x "$TOOL" ]; then
    echo "usage: $0 /path/to/test-concurrency" >&2
    exit 2
fi
case $TOOL in
    /*) ;;
    *) TOOL=$PWD/$TOOL ;;
esac
for prog in perl grep sed; do
    if ! command -v "$prog" >/dev/null 2>&1; then
        echo "$0: $prog is needed" >&2
        exit 2
    fi
done
if ! perl -MIO::Socket::INET -MJSON::PP -e 1 2>/dev/null; then
    echo "$0: perl with IO::Socket::INET and JSON::PP is needed" >&2
    exit 2
fi

# the tool must see only what each test passes it
unset SERVER_URL

TMP=$(mktemp -d "${TMPDIR:-/tmp}/test-concurrency-test.XXXXXX") || exit 2
SERVER_PID=
URL=
PORT=

# Stop the fake server (it stops the connections it is still serving).
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
        SERVER_PID=
    fi
}

cleanup() {
    stop_server
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The fake relay. Arguments: port file, counter file, peak file, request log.
# Environment: FAKE_LIMIT (limit in the 429 body, default 3), FAKE_ADMIT (how
# many it really admits, default FAKE_LIMIT), FAKE_CURRENT (currentConcurrency
# in the 429 body, default FAKE_LIMIT), FAKE_MODE (limit, error500 or
# stream_error), FAKE_SERIAL=1 (serve one connection after the other, no
# fork) with FAKE_TOTAL_ADMIT (admit that many in all, then answer 429).
cat >"$TMP/fake.pl" <<'PERL'
use strict;
use warnings;
use Fcntl qw(:flock SEEK_SET);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h :signal_h);
use Time::HiRes ();

my ($port_file, $count_file, $peak_file, $log_file) = @ARGV;
my $limit = $ENV{FAKE_LIMIT} // 3;
my $admit = $ENV{FAKE_ADMIT} // $limit;
my $current = $ENV{FAKE_CURRENT} // $limit;
my $mode = $ENV{FAKE_MODE} // 'limit';
my $serial = $ENV{FAKE_SERIAL} // 0;
my $total_admit = $ENV{FAKE_TOTAL_ADMIT};
my $served = 0;

my $server = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp',
                                   Listen => 128, ReuseAddr => 1)
    or die "listen: $!\n";
open my $pf, '>', "$port_file.tmp" or die "$port_file.tmp: $!\n";
print $pf $server->sockport, "\n";
close $pf;
rename "$port_file.tmp", $port_file or die "rename: $!\n";

# Run code with the file locked; it gets the handle and returns the result.
sub locked {
    my ($file, $code) = @_;
    open my $fh, '+<', $file or die "$file: $!\n";
    flock $fh, LOCK_EX or die "flock $file: $!\n";
    my $result = $code->($fh);
    close $fh;
    return $result;
}

# Add d to the in-flight counter and return the new count.
sub bump {
    my ($d) = @_;
    return locked($count_file, sub {
        my ($fh) = @_;
        my $n = <$fh> // 0;
        chomp $n;
        $n = ($n || 0) + $d;
        seek $fh, 0, SEEK_SET;
        truncate $fh, 0;
        print $fh "$n\n";
        return $n;
    });
}

# Remember the highest number of requests admitted at once.
sub note_peak {
    my ($n) = @_;
    locked($peak_file, sub {
        my ($fh) = @_;
        my $peak = <$fh> // 0;
        chomp $peak;
        if ($n > ($peak || 0)) {
            seek $fh, 0, SEEK_SET;
            truncate $fh, 0;
            print $fh "$n\n";
        }
        return;
    });
}

sub respond {
    my ($c, $status, $type, $body) = @_;
    my %reason = (200 => 'OK', 404 => 'Not Found', 429 => 'Too Many Requests',
                  500 => 'Internal Server Error');
    print $c "HTTP/1.1 $status $reason{$status}\r\nContent-Type: $type\r\n"
        . "Content-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body";
}

sub sse {
    my ($name, $data) = @_;
    return "event: $name\ndata: $data\n\n";
}

sub handle {
    my ($c) = @_;
    binmode $c;
    local $/ = "\r\n";
    my $request_line = <$c>;
    return unless defined $request_line;
    my %h;
    while (my $line = <$c>) {
        $line =~ s/\r\n\z//;
        last if $line eq '';
        my ($k, $v) = split /:\s*/, $line, 2;
        $h{lc $k} = $v // '';
    }
    my $body = '';
    read($c, $body, $h{'content-length'}) if $h{'content-length'};
    my $record = join('|', map { "$_=" . ($h{$_} // '-') }
                      qw(x-api-key anthropic-version content-type x-mock-hold-ms expect))
        . "|line=" . ($request_line =~ s/\r\n\z//r) . "|body=$body\n";
    locked($log_file, sub { my ($fh) = @_; seek $fh, 0, 2; print $fh $record; return; });

    if ($request_line ne "POST /api/v1/messages HTTP/1.1\r\n") {
        respond($c, 404, 'application/json', '{"error":"Not found"}');
        return;
    }
    if ($mode eq 'error500') {
        respond($c, 500, 'application/json',
                qq({"error":"upstream exploded\\nfor key $h{'x-api-key'}"}));
        return;
    }
    my $n = bump(1);
    if ($n > $admit || (defined $total_admit && $served >= $total_admit)) {
        bump(-1);
        respond($c, 429, 'application/json',
                qq({"error":"Concurrency limit exceeded","message":"Too many concurrent )
                . qq(requests. Limit: $limit concurrent requests",)
                . qq("currentConcurrency":$current,"concurrencyLimit":$limit}));
        return;
    }
    note_peak($n);
    $served++;
    Time::HiRes::sleep(($h{'x-mock-hold-ms'} // 0) / 1000);
    bump(-1);
    if ($body =~ /"stream":true/) {
        my $events = sse('message_start', '{"type":"message_start"}')
            . sse('content_block_start', '{"type":"content_block_start","index":0}')
            . sse('content_block_delta', '{"type":"content_block_delta","index":0}');
        if ($mode eq 'stream_error') {
            $events .= sse('error', '{"type":"error","error":{"type":"overloaded_error",'
                                    . '"message":"Overloaded"}}');
        } else {
            $events .= sse('content_block_stop', '{"type":"content_block_stop","index":0}')
                . sse('message_delta', '{"type":"message_delta"}')
                . sse('message_stop', '{"type":"message_stop"}');
        }
        respond($c, 200, 'text/event-stream', $events);
    } else {
        respond($c, 200, 'application/json',
                '{"type":"message","usage":{"input_tokens":1,"output_tokens":1}}');
    }
}

my %kids;
$SIG{CHLD} = sub {
    while ((my $pid = waitpid(-1, WNOHANG)) > 0) {
        delete $kids{$pid};
    }
};
$SIG{TERM} = sub {
    kill 'TERM', keys %kids;
    exit 0;
};
my $chld = POSIX::SigSet->new(SIGCHLD);
while (1) {
    my $c = $server->accept;
    if (!$c) {
        next if $!{EINTR};
        die "accept: $!\n";
    }
    if ($serial) {
        handle($c);
        close $c;
        next;
    }
    sigprocmask(SIG_BLOCK, $chld);
    my $pid = fork;
    if (defined $pid && $pid == 0) {
        $SIG{TERM} = 'DEFAULT';
        $SIG{CHLD} = 'DEFAULT';
        sigprocmask(SIG_UNBLOCK, $chld);
        close $server;
        handle($c);
        close $c;
        POSIX::_exit(0);
    }
    $kids{$pid} = 1 if defined $pid;
    sigprocmask(SIG_UNBLOCK, $chld);
    close $c;
}
PERL

# start_server [VAR=VALUE...]: start a fresh fake server with those knobs; sets URL.
start_server() {
    stop_server
    rm -f "$TMP/port" "$TMP/log"
    : >"$TMP/log"
    echo 0 >"$TMP/count"
    echo 0 >"$TMP/peak"
    env "$@" perl "$TMP/fake.pl" "$TMP/port" "$TMP/count" "$TMP/peak" "$TMP/log" \
        2>>"$TMP/server.err" &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        [ -s "$TMP/port" ] && break
        sleep 0.05
    done
    if [ ! -s "$TMP/port" ]; then
        echo "$0: the fake server did not start:" >&2
        cat "$TMP/server.err" >&2
        exit 2
    fi
    PORT=$(cat "$TMP/port")
    URL=http://127.0.0.1:$PORT
}

# reset_server: clear the request log and the peak before another run.
reset_server() {
    : >"$TMP/log"
    echo 0 >"$TMP/peak"
}

PASSED=0
FAILED=0
N=0
KEY=cr_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
MASKED='cr_0123…cdef'
OUT=
ERR=
RC=0

# Record a result: report DESCRIPTION STATUS [DETAIL].
report() {
    N=$((N + 1))
    if [ "$2" -eq 0 ]; then
        PASSED=$((PASSED + 1))
        echo "ok $N - $1"
    else
        FAILED=$((FAILED + 1))
        echo "not ok $N - $1"
        if [ -n "${3:-}" ]; then
            printf '#   %s\n' "$3"
        fi
    fi
}

# check_eq DESCRIPTION GOT WANT
check_eq() {
    if [ "$2" = "$3" ]; then
        report "$1" 0
    else
        report "$1" 1 "expected '$3', got '$2'"
    fi
}

# check_rc DESCRIPTION WANT: the exit status of the last run.
check_rc() {
    if [ "$RC" -eq "$2" ]; then
        report "$1" 0
    else
        report "$1" 1 "exit status $RC, expected $2; stdout: $OUT; stderr: $ERR"
    fi
}

# check_out DESCRIPTION FIXED-STRING: the last run's stdout contains it.
check_out() {
    if printf '%s\n' "$OUT" | grep -qF -- "$2"; then
        report "$1" 0
    else
        report "$1" 1 "'$2' not in: $OUT"
    fi
}

# check_count DESCRIPTION REGEX WANT: how many stdout lines match the extended regex.
check_count() {
    local got
    got=$(printf '%s\n' "$OUT" | grep -cE -- "$2")
    check_eq "$1" "$got" "$3"
}

# check_count_log DESCRIPTION REGEX WANT: how many logged requests match the extended regex.
check_count_log() {
    local got
    got=$(grep -cE -- "$2" "$TMP/log")
    check_eq "$1" "$got" "$3"
}

# run ARGS...: run the tool against $URL, capturing stdout, stderr and status.
run() {
    OUT=$(SERVER_URL=$URL "$TOOL" "$@" 2>"$TMP/stderr")
    RC=$?
    ERR=$(cat "$TMP/stderr")
    printf '%s\n%s\n' "$OUT" "$ERR" >>"$TMP/all-output"
}

# run_env VAR=VALUE ARGS...: run with SERVER_URL (or another variable) as given.
run_env() {
    local assignment=$1
    shift
    OUT=$(env "$assignment" "$TOOL" "$@" 2>"$TMP/stderr")
    RC=$?
    ERR=$(cat "$TMP/stderr")
    printf '%s\n%s\n' "$OUT" "$ERR" >>"$TMP/all-output"
}

# json_fields: the last stdout as JSON, flattened to name=value lines (exit 3 if not JSON).
json_fields() {
    printf '%s' "$OUT" | perl -MJSON::PP -e '
        my $j = eval { JSON::PP->new->decode(do { local $/; <STDIN> }) };
        exit 3 unless ref $j eq "HASH";
        sub show { my ($v) = @_; return "null" unless defined $v;
                   return JSON::PP::is_bool($v) ? ($v ? "true" : "false") : $v }
        for my $k (sort keys %$j) {
            next if ref $j->{$k} eq "ARRAY";
            print "$k=", show($j->{$k}), "\n";
        }
        my @r = @{ $j->{results} || [] };
        print "results=", scalar(@r), "\n";
        print "indexes=", join(",", sort { $a <=> $b } map { $_->{index} } @r), "\n";
        for my $o (qw(ok limited failed)) {
            print "results_$o=", scalar(grep { $_->{outcome} eq $o } @r), "\n";
        }
        my %m = map { ($_->{message} // "null") => 1 } grep { $_->{outcome} eq "limited" } @r;
        print "limited_messages=", join(" / ", sort keys %m), "\n";
        print "ok_status=", join(",", sort keys %{{ map { $_->{status} => 1 }
                                                   grep { $_->{outcome} eq "ok" } @r }}), "\n";
    '
}

# jval NAME: one value from json_fields output in $JSON.
jval() {
    printf '%s\n' "$JSON" | sed -n "s/^$1=//p"
}

# ---- usage errors: no server needed
URL=http://127.0.0.1:9

run
check_rc "no arguments: exit 2" 2
check_eq "no arguments: nothing on stdout" "$OUT" ""
if printf '%s\n' "$ERR" | grep -q '^Usage: test-concurrency'; then
    report "no arguments: usage on stderr" 0
else
    report "no arguments: usage on stderr" 1 "stderr: $ERR"
fi

run "$KEY" abc
check_rc "N=abc: exit 2" 2
run "$KEY" 0
check_rc "N=0: exit 2" 2
run "$KEY" 1001
check_rc "N=1001: exit 2" 2
run "$KEY" 3 4
check_rc "three positional arguments: exit 2" 2
run --bogus "$KEY"
check_rc "unknown option: exit 2" 2
run "$KEY" --hold-ms
check_rc "--hold-ms without a value: exit 2" 2
run --hold-ms x "$KEY"
check_rc "--hold-ms x: exit 2" 2
run --timeout 0 "$KEY"
check_rc "--timeout 0: exit 2" 2
run_env SERVER_URL=ftp://127.0.0.1/ "$KEY" 2
check_rc "SERVER_URL that is not http(s): exit 2" 2

run --help
check_rc "--help: exit 0" 0
check_out "--help: usage on stdout" "Usage: test-concurrency [--stream] [--hold-ms MS]"
check_eq "--help: nothing on stderr" "$ERR" ""

# ---- a relay with limit 3, 8 requests held 800 ms
start_server FAKE_LIMIT=3
run --hold-ms 800 "$KEY" 8
check_rc "limit 3, N=8: exit 0" 0
check_out "limit 3: header line with the masked key" \
    "Testing $MASKED against $URL/api/v1/messages with 8 parallel requests"
check_out "limit 3: totals" "succeeded: 3  limited (429): 5  failed: 0"
check_out "limit 3: limit from the 429 bodies" "concurrency limit: 3  highest currentConcurrency: 3"
check_out "limit 3: verdict good" "verdict: GOOD - 3 succeeded = min(N, limit)"
check_out "limit 3: requests overlapped" "requests overlapped"
check_count "limit 3: 3 lines '200 ok'" '^#[1-8]  200 ok +[0-9]+ ms$' 3
LIMITED_LINE='^#[1-8]  429 limited +[0-9]+ ms  '
LIMITED_LINE+='Too many concurrent requests\. Limit: 3 concurrent requests$'
check_count "limit 3: 5 lines '429 limited' with the server's message" "$LIMITED_LINE" 5
SLOW=$(printf '%s\n' "$OUT" | sed -n 's/^#[0-9]*  200 ok *\([0-9]*\) ms$/\1/p' |
       awk '$1 >= 790' | wc -l)
check_eq "limit 3: the successes were held for 800 ms" "$SLOW" 3
check_eq "limit 3: the server admitted 3 at once" "$(cat "$TMP/peak")" 3
check_eq "limit 3: the server got 8 requests" "$(wc -l <"$TMP/log")" 8
HEADERS="^x-api-key=$KEY\\|anthropic-version=2023-06-01\\|content-type=application/json"
HEADERS+='\|x-mock-hold-ms=800\|expect=-\|line=POST /api/v1/messages HTTP/1\.1\|'
check_count_log "requests: POST /api/v1/messages over HTTP/1.1 with the headers" "$HEADERS" 8
BODY='\|body=\{"model":"claude-sonnet-4-20250514","max_tokens":32,'
BODY+='"messages":\[\{"role":"user","content":"concurrency test [1-8]"\}\]\}$'
check_count_log "requests: the body" "$BODY" 8
check_eq "requests: each has its own number" \
    "$(sed -n 's/.*concurrency test \([0-9]*\).*/\1/p' "$TMP/log" | sort -n | tr '\n' ' ')" \
    "1 2 3 4 5 6 7 8 "

# options after the positional arguments, --json, SERVER_URL with a trailing slash
reset_server
run_env "SERVER_URL=$URL/" "$KEY" 8 --json --hold-ms 800
check_rc "--json: exit 0" 0
JSON=$(json_fields)
report "--json: stdout is one valid JSON object" $? "$OUT"
check_eq "--json: verdict" "$(jval verdict)" good
check_eq "--json: server without the trailing slash" "$(jval server)" "$URL"
check_eq "--json: requests" "$(jval requests)" 8
check_eq "--json: succeeded" "$(jval succeeded)" 3
check_eq "--json: limited" "$(jval limited)" 5
check_eq "--json: failed" "$(jval failed)" 0
check_eq "--json: concurrencyLimit" "$(jval concurrencyLimit)" 3
check_eq "--json: maxCurrentConcurrency" "$(jval maxCurrentConcurrency)" 3
check_eq "--json: overlapped" "$(jval overlapped)" true
check_eq "--json: a result for each request" "$(jval indexes)" "1,2,3,4,5,6,7,8"
check_eq "--json: outcomes" "$(jval results_ok) $(jval results_limited) $(jval results_failed)" \
    "3 5 0"
check_eq "--json: the 429 message" "$(jval limited_messages)" \
    "Too many concurrent requests. Limit: 3 concurrent requests"
check_eq "--json: ok status" "$(jval ok_status)" 200
check_eq "--json: the masked key" "$(jval key)" "$MASKED"
check_eq "--json: the header was sent" "$(grep -c 'x-mock-hold-ms=800' "$TMP/log")" 8

# no limit hit: everything admitted, and really at the same time
start_server FAKE_LIMIT=100
run "$KEY" 6 --hold-ms 300
check_rc "no limit hit: exit 0" 0
check_out "no limit hit: totals" "succeeded: 6  limited (429): 0  failed: 0"
check_out "no limit hit: limit unknown" "concurrency limit: unknown"
check_out "no limit hit: verdict" \
    "verdict: GOOD - no limit was hit: 6 requests all succeeded; the key's limit is above 6"
check_eq "no limit hit: the server had all 6 in flight at once" "$(cat "$TMP/peak")" 6

# streams
start_server FAKE_LIMIT=2
run --stream --hold-ms 300 "$KEY" 5
check_rc "--stream, limit 2: exit 0" 0
check_count "--stream: 2 successes with 6 events each" '^#[1-5]  200 ok +[0-9]+ ms  6 events$' 2
check_out "--stream: totals" "succeeded: 2  limited (429): 3  failed: 0"
check_eq "--stream: the bodies ask for a stream" "$(grep -c ',"stream":true}$' "$TMP/log")" 5

start_server FAKE_LIMIT=10 FAKE_MODE=stream_error
run --stream "$KEY" 2
check_rc "stream ending in an error event: exit 1" 1
check_count "stream error: reported with its message" \
    '^#[12]  200 failed +[0-9]+ ms  error event after 3 events: Overloaded$' 2
check_out "stream error: verdict" "verdict: BAD - 2 requests failed"

# a broken limiter: admits 5 but says its limit is 3
start_server FAKE_LIMIT=3 FAKE_ADMIT=5
run --hold-ms 800 "$KEY" 8
check_rc "broken limiter: exit 1" 1
check_out "broken limiter: totals" "succeeded: 5  limited (429): 3  failed: 0"
check_out "broken limiter: verdict" \
    "verdict: BAD - expected 3 successes (min(N, limit)) but got 5; requests overlapped"
reset_server
run --json --hold-ms 800 "$KEY" 8
check_rc "broken limiter, --json: exit 1" 1
JSON=$(json_fields)
report "broken limiter, --json: valid JSON" $? "$OUT"
check_eq "broken limiter, --json: verdict" "$(jval verdict)" bad

# a limiter whose 429s report more in flight than the limit
start_server FAKE_LIMIT=3 FAKE_CURRENT=6
run --hold-ms 800 "$KEY" 8
check_rc "429 reporting 6 in flight with limit 3: exit 1" 1
check_out "429 reporting 6 in flight: verdict" \
    "verdict: BAD - a 429 reported 6 in flight with limit 3"

# a server that takes one request after the other: the successes do not overlap
start_server FAKE_SERIAL=1 FAKE_TOTAL_ADMIT=5 FAKE_LIMIT=3
run --hold-ms 200 "$KEY" 8
check_rc "serial server, 5 successes with limit 3: exit 0 (not held against it)" 0
check_out "serial server: totals" "succeeded: 5  limited (429): 3  failed: 0"
check_out "serial server: the overlap warning" \
    "warning: requests did not all overlap; use --hold-ms or --stream to make them longer"
check_eq "serial server: one request at a time" "$(cat "$TMP/peak")" 1
start_server FAKE_SERIAL=1 FAKE_TOTAL_ADMIT=5 FAKE_LIMIT=3
run --json --hold-ms 200 "$KEY" 8
JSON=$(json_fields)
report "serial server, --json: valid JSON" $? "$OUT"
check_eq "serial server, --json: overlapped" "$(jval overlapped)" false
check_eq "serial server, --json: verdict" "$(jval verdict)" good

start_server FAKE_SERIAL=1 FAKE_TOTAL_ADMIT=2 FAKE_LIMIT=3
run --hold-ms 200 "$KEY" 8
check_rc "serial server, 2 successes with limit 3: exit 1" 1
check_out "serial server, too few successes: verdict" \
    "verdict: BAD - expected 3 successes (min(N, limit)) but got 2"

# a server answering 500 (and echoing the key)
start_server FAKE_MODE=error500
run "$KEY" 4
check_rc "500s: exit 1" 1
check_out "500s: totals" "succeeded: 0  limited (429): 0  failed: 4"
check_out "500s: verdict" "verdict: BAD - 4 requests failed"
check_count "500s: the body on one line, the echoed key masked" \
    "^#[1-4]  500 failed +[0-9]+ ms  \\{\"error\":\"upstream exploded\\\\nfor key $MASKED\"\\}$" 4

# timeouts
start_server FAKE_LIMIT=10
run --timeout 1 --hold-ms 3000 "$KEY" 2
check_rc "--timeout 1 against 3 s answers: exit 1" 1
check_count "--timeout: both requests time out" '^#[12]  --- failed +[0-9]+ ms  .*[Tt]imed out' 2

# nobody listening
stop_server
run "$KEY" 3
check_rc "connection refused: exit 1" 1
check_count "connection refused: transport errors" '^#[1-3]  --- failed +[0-9]+ ms  .+' 3
check_out "connection refused: verdict" "verdict: BAD - 3 requests failed"

# the key
if grep -qF -- "$KEY" "$TMP/all-output"; then
    report "the full key never appears in the output" 1 \
        "$(grep -F -- "$KEY" "$TMP/all-output" | head -3)"
else
    report "the full key never appears in the output" 0
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
