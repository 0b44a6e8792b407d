# A slot is always given back: client hang-up mid-stream, upstream down,
# streams longer than a lease keep exactly one slot, a killed child's
# leases expire by themselves, and a key far below its limit gets its slots
# back without waiting for a later request.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use Apache::TestUtil qw(t_cmp);
use RelayTest;
use Time::HiRes qw(time);

plan tests => 15, need_module 'claude_relay', 'relay_mock';

my $stream = '{"model":"claude-sonnet-4-20250514","max_tokens":64,"stream":true,'
           . '"messages":[{"role":"user","content":"hi"}]}';
my $lease_seconds = 3;    # RelayLeaseSeconds in t/conf/extra.conf.in

# 1. a client that hangs up part-way through a slow SSE stream
my $k = make_key(name => 'hang-up', limit => 1);
my $s = raw_request('POST', '/api/v1/messages', $stream, 'x-api-key' => $k->{apiKey},
                    'x-mock-hold-ms' => 20000, 'x-mock-events' => 20, 'x-mock-tag' => 'abort');
my $got = read_until($s, qr/event: content_block_delta/, 10);
is($got =~ /text\/event-stream/ && $got =~ /event: message_start/ ? 1 : 0, 1,
         'the stream started and events arrived one by one');
is(leases($k->{id}), 1, 'the stream holds one slot');
close $s;
# given back: gone from the set. A lease left to expire would stay in it
# (nothing else touches this key's set), and a hang-up nobody noticed would
# keep it renewed until the stream's end, 20 s away. httpd notices the
# hang-up when it writes the stream's next event or the one after (a second
# apart).
my $t = wait_until(10, sub { redis('ZCARD', "concurrency:$k->{id}") == 0 });
ok defined $t, 'after the client hangs up the slot is given back'
    . (defined $t ? sprintf(' (%.2f s)', $t) : ' (not within 10 s)');
is(http_post('/api/v1/messages', '{}', 'x-api-key' => $k->{apiKey})->code, 200,
         'and the key can be used again');

# 2. the upstream is down: mod_proxy answers 503, the slot comes back
my $log_from = length error_log();
$s = raw_request('POST', '/api-dead/v1/messages', '{}', 'x-api-key' => $k->{apiKey},
                 'Connection' => 'close');
my $client_port = $s->sockport;
my ($head, $body) = split /\r\n\r\n/, read_until($s, qr{</html>}i, 10), 2;
close $s;
$body //= '';
like($head, qr{\AHTTP/1\.1 503 }, 'dead upstream: 503');
# mod_proxy's, not the relay's own 503 (Redis unreachable), which is JSON:
# httpd's HTML error page, and mod_proxy's error about this very request
ok($head =~ m{^Content-Type: text/html}mi && $body =~ m{<title>503 Service Unavailable</title>}
       && !defined json_decode($body)
       && substr(error_log(), $log_from)
              =~ /\[proxy(?:_http)?:error\] .*\[client 127\.0\.0\.1:$client_port\]/,
   'the 503 is mod_proxy\'s (an HTML page; mod_proxy logged the failed connection), '
   . 'not the relay\'s JSON') or diag("$head\n\n$body");
ok defined wait_until(10, sub { redis('ZCARD', "concurrency:$k->{id}") == 0 }),
   'dead upstream: slot given back';

# 3. a stream that lasts longer than a lease keeps one slot throughout
$s = raw_request('POST', '/api/v1/messages', $stream, 'x-api-key' => $k->{apiKey},
                 'x-mock-hold-ms' => 12000, 'x-mock-events' => 12);
read_until($s, qr/event: message_start/, 5);
my %first = lease_scores($k->{id});
my ($member) = keys %first;
# The duration is the point: a whole lease past the expiry the lease had at
# first (on Redis's clock, which scores the leases), the lease is still live
# only if it was renewed all along.
wait_until(3 * $lease_seconds + 5,
           sub { redis_now_ms() > ($first{$member} // 0) + 1000 * $lease_seconds })
    // die 'Redis\'s clock did not pass the lease\'s expiry';
my %later = lease_scores($k->{id});
my $now_ms = redis_now_ms();
ok(keys(%first) == 1 && keys(%later) == 1 && defined $later{$member} && $later{$member} > $now_ms,
   'after two lease lengths the stream still holds exactly one slot, its own, renewed');
is(http_post('/api/v1/messages', '{}', 'x-api-key' => $k->{apiKey})->code, 429,
         'so another request on the limit-1 key is refused');
$got = read_until($s, qr/event: message_stop/, 20);
is($got =~ /event: message_stop/ ? 1 : 0, 1, 'the long stream completed');
close $s;
ok defined wait_until(10, sub { redis('ZCARD', "concurrency:$k->{id}") == 0 }),
   'and gave its slot back';

# 4. a child killed with SIGKILL runs no cleanup: its lease expires by itself
$s = raw_request('POST', '/api/v1/messages', $stream, 'x-api-key' => $k->{apiKey},
                 'x-mock-hold-ms' => 30000, 'x-mock-events' => 30);
read_until($s, qr/event: message_start/, 5);
# the lease member names the child holding the slot: kill exactly that child
my %holder = lease_pids($k->{id});
my ($victim) = keys %holder;
BAIL_OUT('the stream holds no lease') unless $victim;
my ($held) = keys %{{lease_scores($k->{id})}};
kill 'KILL', $victim;
# its parent reaps it: gone, or a zombie for a moment
wait_until(10, sub { !kill(0, $victim) || (`ps -o stat= -p $victim` // '') =~ /Z/ })
    // die "child $victim did not die";
close $s;
# still in the set, expired or not: nothing touches this key's set until
# the next admission, so only a release could have taken it out
isnt(redis('ZSCORE', "concurrency:$k->{id}", $held), '',
     'after SIGKILL the lease is still in Redis (no cleanup ran)');
$t = wait_until($lease_seconds + 3, sub { leases($k->{id}) == 0 });
ok defined $t, 'the killed child\'s lease expired by itself within the lease length'
    . (defined $t ? sprintf(' (%.2f s)', $t) : '');
ok defined wait_until(10, sub {
    http_post('/api/v1/messages', '{}', 'x-api-key' => $k->{apiKey})->code == 200 }),
   'the key is usable again';

# 5. a key far below its limit: a release that no answer's end carries
# (here: mod_proxy's 503, an error page that bypasses the relay's filter; the
# request pool's cleanup gives the slot back) rides on the child's next
# call, or the keeper sends it within moments when no call comes. Without
# the keeper it would wait for the usage write, up to a second later, so the
# bound is the point: eight releases in a row, each in Redis within half a
# second of its answer, show the keeper sent them.
my $roomy = make_key(name => 'room to spare', limit => 10);
my ($ok, $back) = (0, 0);
for (1 .. 8) {
    my $res = http_post('/api-dead/v1/messages', '{}', 'x-api-key' => $roomy->{apiKey});
    $ok++ if $res->code == 503 && !defined json_decode($res->decoded_content // '');
    $back++ if defined wait_until(0.5, sub { redis('ZCARD', "concurrency:$roomy->{id}") == 0 });
}
is("$ok/$back", '8/8', 'a key with room to spare: each of 8 requests was admitted (and got '
   . 'mod_proxy\'s 503) and its slot was back in Redis within 0.5 s, with no later request '
   . 'to carry it');
