# A key without any limit is admitted by a child from what Redis last said
# of it, for as long as Redis pushes every change to that key to the child
# (client-side caching). Every change an admin makes still applies to the
# very next request, in every child; its leases and usage still reach Redis.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;

plan tests => 17, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $stream = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"stream":true,"messages":[]}';

# n requests, one after the other; their statuses, sorted and counted
sub statuses {
    my ($key, $n) = @_;
    my %by;
    $by{http_post('/api/v1/messages', $msg, 'x-api-key' => $key)->code}++ for 1 .. $n;
    return join ' ', map { "$_ x$by{$_}" } sort keys %by;
}

my $k = make_key(name => 'cached', limit => 0);
my $id = $k->{id};

# every child reads the key once; later requests are admitted without asking
is(statuses($k->{apiKey}, 30), '200 x30', 'a key without any limit: 30 requests pass');
my $t = wait_until(20, sub {
    http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey});
    error_log() =~ /admitted key \Q$id\E \(no limit, unchanged in Redis\)/;
});
ok(defined $t, 'children admit it from what Redis last said of it');

# its usage and its lease still reach Redis
my $before = redis('HGET', "usage:$id", 'totalRequests') || 0;
is(statuses($k->{apiKey}, 10), '200 x10', '10 more requests');
ok(defined wait_until(10, sub { (redis('HGET', "usage:$id", 'totalRequests') || 0) >= $before + 10 }),
   'and every one of them is counted in usage:{id}');
my $hold = raw_request('POST', '/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey},
                       'x-mock-hold-ms' => 3000);
ok(defined wait_until(10, sub { leases($id) >= 1 }),
   'a request in flight shows up as a live lease (the admin\'s in-flight count)');
close $hold;
# gone from the set, not merely expired: its release reached Redis
ok(defined wait_until(15, sub { redis('ZCARD', "concurrency:$id") == 0 }),
   'and is gone once it ends');

# an admin disables the key: the very next request is refused, in every child
my ($r) = admin_json('PUT', "/relay-admin/api/keys/$id", {isActive => JSON::PP::false()});
is($r->code, 200, 'the admin disables the key');
is(statuses($k->{apiKey}, 20), '401 x20', 'the next 20 requests are all refused');
($r) = admin_json('PUT', "/relay-admin/api/keys/$id", {isActive => JSON::PP::true()});
is(statuses($k->{apiKey}, 20), '200 x20', 'enabled again: the next 20 pass');

# a limit set straight in Redis (as claude-relay-service would) holds at once
statuses($k->{apiKey}, 10);
redis('HSET', "apikey:$id", 'concurrencyLimit', '1');
# the children hear of the change and send the releases of the requests
# just before it, which had been waiting to ride on a later call: once they
# are all in Redis no lease is left, and the limit counts only what follows
wait_until(10, sub { redis('ZCARD', "concurrency:$id") == 0 })
    // die 'the releases of the finished requests never reached Redis';
# a stream, so that its hang-up is seen at its next event, not at its end
$hold = raw_request('POST', '/api/v1/messages', $stream, 'x-api-key' => $k->{apiKey},
                    'x-mock-hold-ms' => 20000, 'x-mock-events' => 40);
ok(defined wait_until(10, sub { leases($id) == 1 }), 'limit 1 set in Redis; one request held');
is(statuses($k->{apiKey}, 10), '429 x10', 'the next 10 get 429');
close $hold;
wait_until(15, sub { redis('ZCARD', "concurrency:$id") == 0 })
    // die 'the held stream never gave its slot back';
redis('HSET', "apikey:$id", 'concurrencyLimit', '0');
is(statuses($k->{apiKey}, 10), '200 x10', 'limit back to 0: they pass');

# an expiry in the past, written in Redis
statuses($k->{apiKey}, 10);
redis('HSET', "apikey:$id", 'expiresAt', '2020-01-01T00:00:00.000Z');
is(statuses($k->{apiKey}, 10), '401 x10', 'expired in Redis: the next 10 are refused');
redis('HSET', "apikey:$id", 'expiresAt', '');
is(statuses($k->{apiKey}, 5), '200 x5', 'expiry removed: they pass');

# a token limit is counted per request, so such a key is never admitted alone
redis('HSET', "apikey:$id", 'tokenLimit', '1');
redis('HSET', "usage:$id", 'totalTokens', '5');
is(statuses($k->{apiKey}, 10), '429 x10', 'a token limit already used up: 429 at once');
redis('HSET', "apikey:$id", 'tokenLimit', '0');

# deleted by the admin: unknown from the next request on
statuses($k->{apiKey}, 10);
($r) = admin_json('DELETE', "/relay-admin/api/keys/$id");
is($r->code, 200, 'the admin deletes the key');
is(statuses($k->{apiKey}, 20), '401 x20', 'the next 20 requests get 401');
