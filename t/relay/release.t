# A slot is always given back: client hang-up mid-stream, upstream down,
# streams longer than a lease keep exactly one slot, a killed child's
# leases expire by themselves, and a key far below its limit gets its slots
# back without waiting for a later request.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use Apache::TestUtil qw(t_cmp);
use RelayTest;
use Time::HiRes qw(time sleep);

plan tests => 14, need_module 'claude_relay', 'relay_mock';

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
my $t = wait_until(5, sub { leases($k->{id}) == 0 });
ok defined $t && $t <= 2, 'after the client hangs up the slot is free within 2 seconds'
    . (defined $t ? sprintf(' (%.2f s)', $t) : ' (never)');
is(http_post('/api/v1/messages', '{}', 'x-api-key' => $k->{apiKey})->code, 200,
         'and the key can be used again');

# 2. the upstream is down: mod_proxy answers 503, the slot comes back
my $r = http_post('/api-dead/v1/messages', '{}', 'x-api-key' => $k->{apiKey});
is($r->code, 503, 'dead upstream: 503 from mod_proxy');
ok defined wait_until(2, sub { leases($k->{id}) == 0 }), 'dead upstream: slot given back';

# 3. a stream that lasts longer than a lease keeps one slot throughout
$s = raw_request('POST', '/api/v1/messages', $stream, 'x-api-key' => $k->{apiKey},
                 'x-mock-hold-ms' => 8000, 'x-mock-events' => 8);
read_until($s, qr/event: message_start/, 5);
my $started = time;
sleep(2 * $lease_seconds - (time - $started));
is(leases($k->{id}), 1, 'after two lease lengths the stream still holds exactly one slot');
is(http_post('/api/v1/messages', '{}', 'x-api-key' => $k->{apiKey})->code, 429,
         'so another request on the limit-1 key is refused');
$got = read_until($s, qr/event: message_stop/, 10);
is($got =~ /event: message_stop/ ? 1 : 0, 1, 'the long stream completed');
close $s;
ok defined wait_until(2, sub { leases($k->{id}) == 0 }), 'and gave its slot back';

# 4. a child killed with SIGKILL runs no cleanup: its lease expires by itself
$s = raw_request('POST', '/api/v1/messages', $stream, 'x-api-key' => $k->{apiKey},
                 'x-mock-hold-ms' => 30000, 'x-mock-events' => 30);
read_until($s, qr/event: message_start/, 5);
# the lease member names the child holding the slot: kill exactly that child
my %holder = lease_pids($k->{id});
my ($victim) = keys %holder;
BAIL_OUT('the stream holds no lease') unless $victim;
kill 'KILL', $victim;
wait_until(5, sub { !kill(0, $victim) || (`ps -o stat= -p $victim` // '') =~ /Z/ });
close $s;
sleep 0.5;
is(leases($k->{id}), 1, 'right after SIGKILL the lease is still there (no cleanup ran)');
$t = wait_until($lease_seconds + 3, sub { leases($k->{id}) == 0 });
ok defined $t, 'the killed child\'s lease expired by itself within the lease length'
    . (defined $t ? sprintf(' (%.2f s)', $t + 0.5) : '');
ok defined wait_until(10, sub {
    http_post('/api/v1/messages', '{}', 'x-api-key' => $k->{apiKey})->code == 200 }),
   'the key is usable again';

# 5. a key far below its limit: the release rides on the child's next call,
# or goes by itself within moments when no call comes. Nothing else carries
# it sooner than the usage write once a second, so eight releases in a row
# that arrive within half a second each show the keeper sent them.
my $roomy = make_key(name => 'room to spare', limit => 10);
my ($ok, $back) = (0, 0);
for (1 .. 8) {
    $ok++ if http_post('/api/v1/messages', '{}', 'x-api-key' => $roomy->{apiKey})->code == 200;
    $back++ if defined wait_until(0.5, sub { redis('ZCARD', "concurrency:$roomy->{id}") == 0 });
}
is("$ok/$back", '8/8', 'a key with room to spare: each of 8 requests was admitted and its slot '
   . 'was back in Redis within 0.5 s, with no later request to carry it');
