# RelayOnRedisError allow lets through, while Redis fails, only keys this
# child admitted lately: a well-formed key it never admitted, or one Redis
# had refused, gets the 503 as under deny.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;

plan tests => 12, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $unavailable = '{"error":"Service temporarily unavailable","message":"The relay cannot reach '
                . 'its key store right now; please retry shortly"}';
my @cleanup;
END { local $?; $_->() for reverse @cleanup }

# a Redis of this test's own, so stopping it disturbs no other test
my $port = free_port();
my $pidfile = "$ENV{RELAY_TEST_STAGE}/run/redis-allow.pid";
system('redis-server', '--bind', '127.0.0.1', '--port', $port, '--save', '', '--appendonly', 'no',
       '--dir', "$ENV{RELAY_TEST_STAGE}/run", '--daemonize', 'yes', '--pidfile', $pidfile,
       '--logfile', "$ENV{RELAY_TEST_STAGE}/run/redis-allow.log") == 0 or die 'redis-server';
local $ENV{RELAY_REDIS} = "127.0.0.1:$port";
local $ENV{RELAY_TEST_REDIS_PORT} = $port;    # for redis() and make_key()
ok(defined wait_until(5, sub { redis('PING') eq 'PONG' }), 'a Redis of its own');
push @cleanup, sub { system("redis-cli -p $port shutdown nosave >/dev/null 2>&1") };

# one child, so "this child" is the whole server
my $h = start_httpd(name => 'allow', children => 1,
                    redis => "RelayRedisServer 127.0.0.1:$port\nRelayRedisTimeout 300",
                    extra => "<Location /api-allow/>\n RelayEngine On\n RelayOnRedisError allow\n"
                           . " RelayUpstreamApiKey env:RELAY_TEST_UPSTREAM_KEY\n"
                           . " ProxyPass http://127.0.0.1:" . mock_port() . "/ disablereuse=On\n</Location>");
push @cleanup, sub { stop_httpd($h) };
local $RelayTest::PORT = $h->{port};

my $known = make_key(name => 'admitted before the outage', limit => 2);
my $unused = make_key(name => 'never used', limit => 2);
my $disabled = make_key(name => 'disabled before the outage', limit => 2);
is(http_post('/api-allow/v1/messages', $msg, 'x-api-key' => $known->{apiKey})->code, 200,
   'a key is admitted while Redis is up');
is(http_post('/api-allow/v1/messages', $msg, 'x-api-key' => $disabled->{apiKey})->code, 200,
   'another key too');
redis('HSET', "apikey:$disabled->{id}", 'isActive', 'false');
is(http_post('/api-allow/v1/messages', $msg, 'x-api-key' => $disabled->{apiKey})->code, 401,
   'which is then disabled: 401');

redis('SHUTDOWN', 'NOSAVE');
ok(defined wait_until(5, sub { system("redis-cli -p $port PING >/dev/null 2>&1") != 0 }),
   'Redis stopped');

my $r = http_post('/api-allow/v1/messages', $msg, 'x-api-key' => $known->{apiKey});
is($r->code, 200, 'allow: the key admitted lately passes');
$r = http_post('/api-allow/v1/messages', $msg, 'x-api-key' => $unused->{apiKey});
is($r->code . ' ' . $r->decoded_content, "503 $unavailable", 'a valid key this child never admitted: 503');
$r = http_post('/api-allow/v1/messages', $msg, 'x-api-key' => 'cr_' . ('7' x 64));
is($r->code . ' ' . $r->decoded_content, "503 $unavailable", 'any well-formed string: 503');
$r = http_post('/api-allow/v1/messages', $msg, 'x-api-key' => 'cr_12');
is($r->code, 401, 'a malformed key: 401 as always');
$r = http_post('/api-allow/v1/messages', $msg, 'x-api-key' => $disabled->{apiKey});
is($r->code, 503, 'a key Redis last reported disabled: 503');
$r = http_post('/api/v1/messages', $msg, 'x-api-key' => $known->{apiKey});
is($r->code, 503, 'deny (the default) refuses even the known key');
ok(slurp("$h->{dir}/logs/error_log") =~ /RelayOnRedisError allow: passing key \Q$known->{id}\E/,
   'the pass-through is logged with the key id');
