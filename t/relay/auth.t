# Authentication: every way a key can be wrong gets the documented 401 JSON,
# and a good key reaches the upstream with the relay key swapped out.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use Apache::TestUtil qw(t_cmp);
use RelayTest;

plan tests => 31, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}';

sub body_is {
    my ($r, $status, $error, $message, $what) = @_;
    is($r->code, $status, "$what: status");
    my $b = json_decode($r->decoded_content) || {};
    is(($r->header('Content-Type') // '') . " $b->{error} / $b->{message}",
             "application/json $error / $message", "$what: JSON body");
}

body_is(http_post('/api/v1/messages', $msg), 401, 'Missing API key',
        'Please provide an API key in the x-api-key header or Authorization header', 'no key');
body_is(http_post('/api/v1/messages', $msg, 'x-api-key' => 'sk-ant-not-a-relay-key'),
        401, 'Invalid API key', 'Invalid API key format', 'foreign key');
body_is(http_post('/api/v1/messages', $msg, 'x-api-key' => 'cr_short'),
        401, 'Invalid API key', 'Invalid API key format', 'too short');
body_is(http_post('/api/v1/messages', $msg, 'x-api-key' => 'cr_' . ('a' x 600)),
        401, 'Invalid API key', 'Invalid API key format', 'too long');
body_is(http_post('/api/v1/messages', $msg, 'x-api-key' => 'cr_' . ('0' x 64)),
        401, 'Invalid API key', 'API key not found', 'unknown');

my $k = make_key(name => 'auth test', limit => 3);
my $r = http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey},
                  'anthropic-version' => '2023-06-01', 'anthropic-beta' => 'tools-2024-04-04',
                  'x-mock-tag' => 'auth-ok');
is($r->code, 200, 'good key: 200');
my $answer = json_decode($r->decoded_content) || {};
is($answer->{type}, 'message', 'the answer is the upstream message');

my ($start) = grep { $_->{event} eq 'start' } mock_entries('auth-ok');
my %h = map { lc($_) => $start->{headers}{$_} } keys %{ $start->{headers} || {} };
is($h{'x-api-key'}, $ENV{RELAY_TEST_UPSTREAM_KEY}, 'upstream got the configured credential');
ok !defined $h{authorization} && !defined $h{'api-key'}, 'no other credential header upstream';
is($h{'anthropic-version'}, '2023-06-01', 'anthropic-version passes through');
is($h{'anthropic-beta'}, 'tools-2024-04-04', 'anthropic-beta passes through');
is($start->{body}, $msg, 'body passes through untouched');
ok !grep({ /cr_/ } values %h), 'the upstream never sees a cr_ key';

# Authorization: Bearer and api-key work too
$r = http_post('/api/v1/messages', $msg, 'Authorization' => "Bearer $k->{apiKey}",
               'x-mock-tag' => 'auth-bearer');
is($r->code, 200, 'Authorization: Bearer key accepted');
($start) = grep { $_->{event} eq 'start' } mock_entries('auth-bearer');
%h = map { lc($_) => $start->{headers}{$_} } keys %{ $start->{headers} || {} };
ok !defined $h{authorization} && $h{'x-api-key'} eq $ENV{RELAY_TEST_UPSTREAM_KEY},
   'Bearer relay key replaced by the upstream x-api-key';
$r = http_post('/api/v1/messages', $msg, 'api-key' => $k->{apiKey});
is($r->code, 200, 'api-key header accepted');

# the bearer location sends the credential as Authorization: Bearer
$r = http_post('/api-bearer/v1/messages', $msg, 'x-api-key' => $k->{apiKey},
               'x-mock-tag' => 'auth-upbearer');
is($r->code, 200, 'RelayUpstreamBearer location works');
($start) = grep { $_->{event} eq 'start' } mock_entries('auth-upbearer');
%h = map { lc($_) => $start->{headers}{$_} } keys %{ $start->{headers} || {} };
is($h{authorization}, "Bearer $ENV{RELAY_TEST_UPSTREAM_KEY}", 'upstream got the bearer credential');

# disabled, then expired
relay_keys('disable', $k->{id});
body_is(http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey}),
        401, 'Invalid API key', 'API key is disabled', 'disabled');
relay_keys('enable', $k->{id});
redis('HSET', "apikey:$k->{id}", 'expiresAt', '2020-01-01T00:00:00.000Z');
body_is(http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey}),
        401, 'Invalid API key', 'API key has expired', 'expired');
redis('HSET', "apikey:$k->{id}", 'expiresAt', '');
is(http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey})->code, 200,
         'usable again once the expiry is cleared');

# nothing anywhere holds the plaintext key
my @all = redis_lines('--scan');
my $leak = 0;
for my $rk (@all) {
    my $type = redis('TYPE', $rk);
    next unless $type eq 'hash';
    $leak++ if grep { index($_, $k->{apiKey}) >= 0 } redis_lines('HGETALL', $rk);
}
is($leak, 0, 'the plaintext key is stored nowhere in Redis');

# a deleted key is refused at once, even where its id was cached
my ($rc) = relay_keys('delete', $k->{id});
is($rc, 0, 'relay-keys delete succeeds');
is(http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey})->code, 401,
         'a deleted key gets 401');
