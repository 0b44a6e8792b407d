# Things break for real: a Redis that never answers, a FLUSHALL under
# traffic, one child killed among several, and graceful and hard restarts
# during long streams. Each time the relay answers within bounds, counts
# stay right, and nothing is left in concurrency:* for longer than a lease.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use IO::Socket::INET ();
use POSIX ();
use Time::HiRes qw(time);
use List::Util qw(max);

plan tests => 29, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $stream = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"stream":true,"messages":[]}';
my $lease = 3;
# the relay's own 503 (README, "Answers the relay gives itself")
my $unavailable = '{"error":"Service temporarily unavailable","message":"The relay cannot reach '
                . 'its key store right now; please retry shortly"}';
my @cleanup;
END { local $?; $_->() for reverse @cleanup }

# live leases of a key, grouped by the pid written into each member
# ---- 1. a Redis that accepts connections and never answers ----------------
my $hole = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 128,
                                 ReuseAddr => 1) or die $!;
my $hole_port = $hole->sockport;
my $hole_pid = fork;
if (!$hole_pid) {
    my @held;
    while (my $c = $hole->accept) { push @held, $c }   # accept, never reply
    POSIX::_exit(0);
}
push @cleanup, sub { kill 'KILL', $hole_pid; waitpid $hole_pid, 0 };
my $bh = start_httpd(name => 'blackhole',
                     redis => "RelayRedisServer 127.0.0.1:$hole_port\nRelayRedisTimeout 500",
                     extra => "<Location /api-allow/>\n RelayEngine On\n RelayOnRedisError allow\n"
                            . " RelayUpstreamApiKey env:RELAY_TEST_UPSTREAM_KEY\n"
                            . " ProxyPass http://127.0.0.1:" . mock_port() . "/ disablereuse=On\n</Location>");
push @cleanup, sub { stop_httpd($bh) };
{
    local $RelayTest::PORT = $bh->{port};
    my $key = 'cr_' . ('a' x 64);
    my $t0 = time;
    my $r = http_post('/api/v1/messages', $msg, 'x-api-key' => $key);
    my $took = time - $t0;
    is($r->code, 503, 'silent Redis, deny: 503');
    is($r->header('Content-Type') . ' ' . $r->decoded_content, "application/json $unavailable",
       'the relay\'s own 503 JSON, not a proxy error page');
    # the bound is the point: without the timeout the request would hang for
    # as long as the client waits (60 s); within it, it takes about 0.5 s
    ok($took < 3, sprintf('answered within the timeout plus a little (%.2f s for 500 ms)', $took));
    my @res = parallel_posts(10, '/api-allow/v1/messages', $msg, 'x-api-key' => $key);
    is(scalar(grep { $_->{status} == 503 && $_->{body} eq $unavailable } @res), 10,
       'silent Redis, allow: a key no child has admitted is refused, all 10 with the 503 JSON');
    # each request on its own clock, from its write to its last byte
    my $slowest = max(map { $_->{took} // 99 } @res);
    ok($slowest < 3, sprintf('and no worker hangs (the slowest of 10 in parallel: %.2f s)',
                             $slowest));
}

# ---- 2. FLUSHALL and SCRIPT FLUSH under traffic ----------------------------
my $k = make_key(name => 'flush', limit => 1);
my %fields = redis_lines('HGETALL', "apikey:$k->{id}");
my $hash = $fields{apiKey};
my $s = raw_request('POST', '/api/v1/messages', $stream, 'x-api-key' => $k->{apiKey},
                    'x-mock-hold-ms' => 5000, 'x-mock-events' => 5);
read_until($s, qr/message_start/, 5);
is(leases($k->{id}), 1, 'a stream holds the only slot');
redis('FLUSHALL');
redis('HSET', "apikey:$k->{id}", %fields);
redis('HSET', 'apikey:hash_map', $hash, $k->{id});
# the keeper's next renewal (a third of a lease away) finds the lease gone
my $renewed = wait_until(15, sub {
    error_log() =~ /gone from Redis when renewed \(first: concurrency:\Q$k->{id}\E\)/ });
ok(defined $renewed, sprintf('the error log says the running stream\'s lease was gone when '
                             . 'renewed (%.1f s after the flush)', $renewed // -1));
is(redis('ZCARD', "concurrency:$k->{id}"), 0, 'renewal does not bring a flushed lease back');
is(http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey})->code, 200,
   'after FLUSHALL (scripts gone too) the key is admitted again');
my $done = read_until($s, qr/message_stop/, 10);
close $s;
like($done, qr/message_stop/, 'the stream in flight during the flush completed');
ok(defined wait_until(10, sub { redis('ZCARD', "concurrency:$k->{id}") == 0 }),
   'and its release left the count at 0, not below');
redis('SCRIPT', 'FLUSH');
is(http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey})->code, 200,
   'after SCRIPT FLUSH the scripts are loaded again (NOSCRIPT handled)');

# ---- 3. one child killed among several -------------------------------------
my $sv = start_httpd(name => 'children', extra => "MaxSpareThreads 200\nMinSpareThreads 50");
push @cleanup, sub { stop_httpd($sv) };
{
    local $RelayTest::PORT = $sv->{port};
    my $kk = make_key(name => 'killed child', limit => 100);
    my @socks;
    my %by;
    for (1 .. 40) {
        push @socks, raw_request('POST', '/api/v1/messages', $stream, 'x-api-key' => $kk->{apiKey},
                                 'x-mock-hold-ms' => 15000, 'x-mock-events' => 15);
        read_until($socks[-1], qr/message_start/, 5);
        %by = lease_pids($kk->{id});
        last if keys %by >= 2 && @socks >= 6;
    }
    my @pids = sort { $by{$b} <=> $by{$a} } keys %by;
    ok(@pids >= 2, 'streams were spread over ' . scalar(@pids) . ' children');
    diag('leases by child pid: ' . join(', ', map { "$_=$by{$_}" } @pids));
    my $victim = $pids[0] or BAIL_OUT('no lease of the test key was found');
    # every lease with its expiry, right before the kill
    my %at_kill = lease_scores($kk->{id});
    my @others = grep { /^[0-9a-f]+-(\d+)-\d+$/ && $1 != $victim } keys %at_kill;
    kill 'KILL', $victim;
    # its parent reaps it: gone, or a zombie for a moment
    wait_until(10, sub { !kill(0, $victim) || (`ps -o stat= -p $victim` // '') =~ /Z/ })
        // die "child $victim did not die";
    my %after = lease_pids($kk->{id});
    is($after{$victim} // 0, $by{$victim}, 'right after SIGKILL the victim\'s leases are still there');
    my $t = wait_until($lease + 3, sub { my %n = lease_pids($kk->{id}); !$n{$victim} });
    ok(defined $t, sprintf('the killed child\'s %d leases expired by themselves (%.1f s)',
                           $by{$victim}, $t // -1));
    # a whole lease past the kill, on Redis's clock: each of the others'
    # leases has outlived the expiry it had then only if it was renewed
    my $latest = max(map { $at_kill{$_} } @others);
    wait_until(2 * $lease + 5, sub { redis_now_ms() > $latest })
        // die 'Redis\'s clock did not pass the leases\' expiry';
    my %still = lease_scores($kk->{id});
    my $now = redis_now_ms();
    my $kept = grep { ($still{$_} // 0) > $now } @others;
    is($kept, scalar(@others), sprintf("the other children's %d leases are untouched: renewed "
                                       . 'past the expiry they had at the kill', scalar @others));
    $_->close for @socks;
    ok(defined wait_until($lease + 3, sub { leases($kk->{id}) == 0 }),
       'afterwards no live lease is left');
}

# ---- 4. graceful restart and hard restart during long streams --------------
{
    local $RelayTest::PORT = $sv->{port};
    my $gk = make_key(name => 'graceful', limit => 10);
    my @socks = map {
        my $x = raw_request('POST', '/api/v1/messages', $stream, 'x-api-key' => $gk->{apiKey},
                            'x-mock-hold-ms' => 4000, 'x-mock-events' => 4);
        read_until($x, qr/message_start/, 5);
        $x
    } 1 .. 4;
    is(leases($gk->{id}), 4, 'four long streams in flight');
    system($RelayTest::HTTPD, '-f', "$sv->{dir}/httpd.conf", '-k', 'graceful');
    my $complete = 0;
    for my $x (@socks) {
        $complete++ if read_until($x, qr/message_stop/, 15) =~ /message_stop/;
        close $x;
    }
    is($complete, 4, 'graceful restart: every stream finished');
    ok(defined wait_until(10, sub { redis('ZCARD', "concurrency:$gk->{id}") == 0 }),
       'graceful restart: every slot was given back');
    ok(defined wait_until(10, sub { http_post('/api/v1/messages', $msg,
                                              'x-api-key' => $gk->{apiKey})->code == 200 }),
       'graceful restart: the new generation relays');

    @socks = map {
        my $x = raw_request('POST', '/api/v1/messages', $stream, 'x-api-key' => $gk->{apiKey},
                            'x-mock-hold-ms' => 30000, 'x-mock-events' => 30);
        read_until($x, qr/message_start/, 5);
        $x
    } 1 .. 4;
    is(leases($gk->{id}), 4, 'four more streams in flight');
    system($RelayTest::HTTPD, '-f', "$sv->{dir}/httpd.conf", '-k', 'restart');
    my $t = wait_until(10 + $lease + 3, sub { redis('ZCARD', "concurrency:$gk->{id}") == 0 });
    ok(defined $t, sprintf('hard restart: slots released or expired (%.1f s)', $t // -1));
    $_->close for @socks;
    ok(defined wait_until(15, sub { http_post('/api/v1/messages', $msg,
                                              'x-api-key' => $gk->{apiKey})->code == 200 }),
       'hard restart: the relay answers again');
    my @left = grep { redis('ZCARD', $_) > 0 } redis_lines('--scan', '--pattern', 'concurrency:*');
    my @stale = grep { my $id = s/^concurrency://r; leases($id) > 0 } @left;
    is(scalar(@stale), 0, 'no live lease left anywhere in concurrency:*');
}

# ---- 5. two Apache servers, one Redis --------------------------------------
{
    my $two = make_key(name => 'two servers', limit => 4);
    mock_clear();
    my $pid = fork;
    if (!$pid) {
        local $RelayTest::PORT = $sv->{port};
        my @r = parallel_posts(10, '/api/v1/messages', $msg, 'x-api-key' => $two->{apiKey},
                               'x-mock-hold-ms' => 2500, 'x-mock-tag' => 'two');
        open my $o, '>', "$ENV{RELAY_TEST_STAGE}/run/two.txt";
        print $o join(',', map { $_->{status} } @r);
        close $o;
        POSIX::_exit(0);
    }
    my @mine = parallel_posts(10, '/api/v1/messages', $msg, 'x-api-key' => $two->{apiKey},
                              'x-mock-hold-ms' => 2500, 'x-mock-tag' => 'two');
    waitpid $pid, 0;
    open my $i, '<', "$ENV{RELAY_TEST_STAGE}/run/two.txt";
    my @theirs = split /,/, (<$i> // '');
    my @all = ((map { $_->{status} } @mine), @theirs);
    is(scalar(grep { $_ == 200 } @all), 4, 'two servers, limit 4: exactly 4 of 20 admitted');
    is(scalar(grep { $_ == 429 } @all), 16, 'and the 16 others refused, adding up to 20');
    ok(mock_peak('two') <= 4, 'the upstream never saw more than 4 in flight (' . mock_peak('two') . ')');
    ok(defined wait_until(10, sub { redis('ZCARD', "concurrency:$two->{id}") == 0 }),
       'nothing left afterwards');
}
