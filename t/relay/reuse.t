# A finished request's slot is kept for the next request of its key
# (RelayReuseSlots): a busy key with a high limit costs Redis almost nothing,
# the kept slot still counts in Redis and goes back when it is not reused,
# any change to the key applies to the very next request, and the limit
# holds under a burst.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use Time::HiRes qw(time sleep);

plan tests => 16, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $stream = '{"model":"claude-sonnet-4-20250514","max_tokens":64,"stream":true,'
           . '"messages":[{"role":"user","content":"hi"}]}';
my $reuse_ms = 3000;

# one child: the request after a change lands where the slot was kept
my $keep = start_httpd(name => 'reuse', extra => "RelayReuseSlots $reuse_ms\nServerLimit 1\n"
                       . "StartServers 1\nThreadLimit 100\nThreadsPerChild 100\n"
                       . "MaxRequestWorkers 100\nMinSpareThreads 1\nMaxSpareThreads 100");
my $off = start_httpd(name => 'noreuse', extra => 'RelayReuseSlots Off');
END { stop_httpd($_) for grep { $_ } $keep, $off }

# Script calls Redis has run so far (every admission or release batch is one).
sub script_calls {
    my ($n, $stats) = (0, redis('INFO', 'commandstats'));
    $n += $1 while $stats =~ /cmdstat_eval(?:sha)?:calls=(\d+)/g;
    return $n;
}

# Send n requests one after another; returns [requests that got 200, script calls].
sub sequential {
    my ($n, $key) = @_;
    my $before = script_calls();
    my $ok = 0;
    $ok += http_post('/api/v1/messages', $msg, 'x-api-key' => $key)->code == 200 for 1 .. $n;
    return ($ok, script_calls() - $before);
}

# One request, then whether its slot is still taken: live leases beyond the
# $running requests in flight.
# Any write to the key (a child records lastUsedAt once a second) gives kept
# slots back, so a few tries are allowed.
sub slot_kept {
    my ($k, $running) = @_;
    for (1 .. 4) {
        http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey});
        return 1 if leases($k->{id}) > ($running // 0);
        sleep 0.2;
    }
    return 0;
}

# 1-3. the same 40 requests with and without reuse
my ($ok, $calls);
{
    local $RelayTest::PORT = $off->{port};
    my $k = make_key(name => 'no reuse', limit => 100);
    ($ok, $calls) = sequential(40, $k->{apiKey});
    ok($ok == 40 && $calls >= 40,
       "RelayReuseSlots Off: 40 requests in a row take $calls script calls (one or more each)");
}
local $RelayTest::PORT = $keep->{port};
my $k = make_key(name => 'reuse', limit => 100);
($ok, $calls) = sequential(40, $k->{apiKey});
ok($ok == 40 && $calls <= 20,
   "RelayReuseSlots $reuse_ms: 40 requests in a row pass with $calls script calls (at most 20)");
my $counted = 0;
wait_until(4, sub { ($counted = redis('HGET', "usage:$k->{id}", 'totalRequests') || 0) == 40 });
is($counted, 40, 'every one of those requests is counted in usage:{id}');

# 4-5. a kept slot counts in Redis, and goes back when no request takes it
ok(slot_kept($k), 'with no request in flight, the kept slot is a live lease in Redis');
my $t = wait_until($reuse_ms / 1000 + 3, sub { leases($k->{id}) == 0 });
ok(defined $t, 'the kept slot goes back by itself'
   . (defined $t ? sprintf(' (%.1f s)', $t) : ' (never)'));

# 6-7. disabling the key applies to the very next request
ok(slot_kept($k), 'a slot is kept again');
redis('HSET', "apikey:$k->{id}", 'isActive', 'false');
my $r = http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey});
is($r->code . ' ' . ($r->decoded_content =~ /disabled/i ? 'disabled' : $r->decoded_content),
   '401 disabled', 'disabled while a slot was kept: the next request gets 401');
redis('HSET', "apikey:$k->{id}", 'isActive', 'true');

# 8-10. lowering the limit gives kept slots back: Redis counts only what runs
my @socks = map {
    my $s = raw_request('POST', '/api/v1/messages', $stream, 'x-api-key' => $k->{apiKey},
                        'x-mock-hold-ms' => 15000, 'x-mock-events' => 15);
    read_until($s, qr/message_start/, 5);
    $s
} 1 .. 2;
ok(slot_kept($k, 2), 'two streams run and a third slot is kept');
redis('HSET', "apikey:$k->{id}", 'concurrencyLimit', 2);
ok(defined wait_until(2, sub { redis('ZCARD', "concurrency:$k->{id}") == 2 }),
   'limit lowered to 2: the set holds the two streams\' leases only');
$r = http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey});
is($r->code . ' ' . $r->decoded_content,
   '429 {"error":"Concurrency limit exceeded","message":"Too many concurrent requests. '
   . 'Limit: 2 concurrent requests","currentConcurrency":2,"concurrencyLimit":2}',
   'the next request gets 429 counting the two streams, not the kept slot');
close $_ for @socks;
redis('HSET', "apikey:$k->{id}", 'concurrencyLimit', 40);
ok(defined wait_until(3, sub { leases($k->{id}) == 0 }), 'after the streams no slot is left');

# 12-15. a burst on a key whose slots are kept: never more than the limit
mock_clear();
sequential(10, $k->{apiKey});
my @res = parallel_posts(60, '/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey},
                         'x-mock-hold-ms' => 4000, 'x-mock-tag' => 'reuse-burst');
my $admitted = grep { $_->{status} == 200 } @res;
my @refused = grep { $_->{status} == 429 } @res;
diag("burst of 60 on limit 40: $admitted admitted, " . scalar(@refused) . ' refused');
ok($admitted <= 40, "at most 40 of 60 admitted ($admitted)");
ok($admitted >= 30, "at least 30 admitted: kept slots hold back at most a quarter ($admitted)");
is($admitted + @refused, 60, 'every other request got 429');
ok(mock_peak('reuse-burst') <= 40, 'the upstream never saw more than 40 at once');

# 16. a kept slot nobody takes goes back after RelayReuseSlots (20 ms by
# default, in the main test server), not only when a write to the key (its
# usage, about a second later) makes the child forget the key: seen as the
# slot back in Redis while the request's usage is not written yet.
{
    local $RelayTest::PORT = undef;
    my $k2 = make_key(name => 'reuse default', limit => 100);
    my $requests = sub { redis('HGET', "usage:$k2->{id}", 'totalRequests') || 0 };
    my ($early, $tries) = (0, 0);
    while (!$early && $tries < 6) {
        $tries++;
        my $before = $requests->();
        http_post('/api/v1/messages', $msg, 'x-api-key' => $k2->{apiKey});
        wait_until(3, sub { leases($k2->{id}) == 0 });
        $early = $requests->() == $before;
        wait_until(3, sub { $requests->() > $before });
    }
    ok($early, "the slot went back before the request's usage was written ($tries tries)");
}
