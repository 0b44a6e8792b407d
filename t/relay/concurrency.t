# Per-key concurrency: the limit holds under a burst, the 429 says the limit
# and the count, slots come back, limits apply on the next request, and
# redirects and sub-requests ride on their request's slot.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use Apache::TestUtil qw(t_cmp);
use RelayTest;

plan tests => 22, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}';

# 50 parallel slow requests on a key with limit 5
my $k = make_key(name => 'burst', limit => 5);
my @res = parallel_posts(50, '/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey},
                         'x-mock-hold-ms' => 4000, 'x-mock-tag' => 'burst');
my @ok = grep { $_->{status} == 200 } @res;
my @limited = grep { $_->{status} == 429 } @res;
is(scalar @ok, 5, 'exactly 5 of 50 overlapping requests admitted')
    or diag('statuses: ' . join(' ', sort map { $_->{status} } @res));
is(scalar @limited, 45, 'the other 45 refused with 429');
my $expected = '{"error":"Concurrency limit exceeded","message":"Too many concurrent requests. '
             . 'Limit: 5 concurrent requests","currentConcurrency":5,"concurrencyLimit":5}';
is(scalar(grep { $_->{body} eq $expected } @limited), 45, 'every 429 has the exact body');
is(scalar(grep { $_->{retry_after} eq '1' } @limited), 45, 'every 429 has Retry-After: 1');
is(mock_peak('burst'), 5, 'the upstream saw at most (and exactly) 5 in flight');
is(scalar(grep { $_->{event} eq 'start' } mock_entries('burst')), 5,
         'only admitted requests reached the upstream');
ok defined wait_until(2, sub { redis('ZCARD', "concurrency:$k->{id}") == 0 }),
   'afterwards concurrency:{id} is empty';

# a sequence of requests reuses the same slot: it is given back every time
my $one = make_key(name => 'one at a time', limit => 1);
my $seq_ok = 0;
for (1 .. 10) {
    $seq_ok++ if http_post('/api/v1/messages', $msg, 'x-api-key' => $one->{apiKey})->code == 200;
}
is($seq_ok, 10, '10 sequential requests on a limit-1 key all pass');

# an edited limit applies to the very next request
my $hold = raw_request('POST', '/api/v1/messages', $msg, 'x-api-key' => $one->{apiKey},
                       'x-mock-hold-ms' => 3000);
ok defined wait_until(3, sub { leases($one->{id}) == 1 }), 'one request in flight';
my $r = http_post('/api/v1/messages', $msg, 'x-api-key' => $one->{apiKey});
is($r->code, 429, 'a second one is over the limit of 1');
redis('HSET', "apikey:$one->{id}", 'concurrencyLimit', '2');
$r = http_post('/api/v1/messages', $msg, 'x-api-key' => $one->{apiKey});
is($r->code, 200, 'after raising the limit to 2 in Redis the next request passes');
redis('HSET', "apikey:$one->{id}", 'concurrencyLimit', '');
$r = http_post('/api/v1/messages', $msg, 'x-api-key' => $one->{apiKey});
is($r->code, 200, 'an empty limit means unlimited');
close $hold;

# an unlimited key admits a whole burst
my $free = make_key(name => 'unlimited', limit => 0);
@res = parallel_posts(12, '/api/v1/messages', $msg, 'x-api-key' => $free->{apiKey},
                      'x-mock-hold-ms' => 1000, 'x-mock-tag' => 'unlimited');
is(scalar(grep { $_->{status} == 200 } @res), 12, 'limit 0 admits 12 overlapping requests');
is(mock_peak('unlimited') > 1 ? 1 : 0, 1, 'and they did overlap at the upstream');

# an internal redirect between relayed locations takes no second slot
wait_until(5, sub { leases($one->{id}) == 0 });
redis('HSET', "apikey:$one->{id}", 'concurrencyLimit', '1');
$r = http_post('/redirect/v1/messages', $msg, 'x-api-key' => $one->{apiKey}, 'x-mock-tag' => 'redirect');
is($r->code, 200, 'redirected request on a limit-1 key is admitted once');
is(scalar(grep { $_->{event} eq 'start' } mock_entries('redirect')), 1,
         'and reached the upstream through the redirect');

# a sub-request into a relayed location takes no second slot
$r = http_get('/ssi/page.html', 'x-api-key' => $one->{apiKey});
is($r->code, 200, 'SSI page on a limit-1 key served');
is($r->decoded_content =~ /"has_more"/ ? 1 : 0, 1,
         'its sub-request went through the relay to the upstream');
is($r->decoded_content =~ /Concurrency limit/ ? 1 : 0, 0, 'without a second slot');
ok defined wait_until(2, sub { leases($one->{id}) == 0 }), 'no slot left behind';

# an upstream error still gives the slot back
$r = http_post('/api/v1/messages', $msg, 'x-api-key' => $one->{apiKey}, 'x-mock-status' => 529);
is($r->code, 529, 'upstream 529 is passed through');
ok defined wait_until(2, sub { leases($one->{id}) == 0 }), 'and the slot is given back';
