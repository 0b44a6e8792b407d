# Redis goes away: deny answers 503 JSON at once, allow refuses keys no
# child knows, and the relay recovers by itself when Redis comes back (scripts
# reloaded after the restart).
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use Apache::TestUtil qw(t_cmp);
use RelayTest;
use Time::HiRes qw(time);

plan tests => 10, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $k = make_key(name => 'redis down', limit => 2);
is(http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey})->code, 200,
         'works while Redis is up');

# a key without any limit, known to every child before Redis goes
my $known = make_key(name => 'known before the restart', limit => 0);
http_post('/api/v1/messages', $msg, 'x-api-key' => $known->{apiKey}) for 1 .. 20;

my $unused = make_key(name => 'never used before the outage', limit => 2);
redis('SHUTDOWN', 'NOSAVE');
ok defined wait_until(5, sub { system("redis-cli -p $ENV{RELAY_TEST_REDIS_PORT} PING >/dev/null 2>&1") != 0 }),
   'redis-server stopped';

my $t0 = time;
my $r = http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey});
my $took = time - $t0;
my $b = json_decode($r->decoded_content) || {};
is($r->code . ' ' . ($b->{error} // ''), '503 Service temporarily unavailable',
         'deny: 503 with a JSON error');
ok $took < 5, sprintf('deny: answered without hanging (%.2f s)', $took);

$r = http_post('/api-allow/v1/messages', $msg, 'x-api-key' => $unused->{apiKey});
is($r->code, 503, 'allow: a key no child admitted before the outage gets 503 (allow_mode.t: the rest)');

system('redis-server', '--bind', '127.0.0.1', '--port', $ENV{RELAY_TEST_REDIS_PORT},
       '--save', '', '--appendonly', 'no', '--dir', "$ENV{RELAY_TEST_STAGE}/run",
       '--logfile', "$ENV{RELAY_TEST_STAGE}/run/redis.log", '--daemonize', 'yes',
       '--pidfile', "$ENV{RELAY_TEST_STAGE}/run/redis-restarted.pid") == 0
    or die "cannot restart redis-server";
ok defined wait_until(5, sub { redis('PING') eq 'PONG' }), 'redis-server restarted (empty)';

# the restarted Redis is empty: a new key, and no script cached yet
my $k2 = make_key(name => 'after restart', limit => 2);
my $t = wait_until(10, sub {
    http_post('/api/v1/messages', $msg, 'x-api-key' => $k2->{apiKey})->code == 200 });
ok defined $t, 'the relay recovers by itself, without an Apache restart';
ok defined wait_until(2, sub { redis('ZCARD', "concurrency:$k2->{id}") == 0 }),
   'and gives slots back again';
my %codes;
$codes{http_post('/api/v1/messages', $msg, 'x-api-key' => $known->{apiKey})->code}++ for 1 .. 20;
is(join(' ', map { "$_ x$codes{$_}" } sort keys %codes), '401 x20',
   'a key known before the restart is unknown to the empty Redis: 401 in every child');

# every pooled connection of every child reconnects: no 503 once Redis is back
my $free = make_key(name => 'after restart, unlimited', limit => 0);
my @res = parallel_posts(30, '/api/v1/messages', $msg, 'x-api-key' => $free->{apiKey},
                         'x-mock-hold-ms' => 300);
is(scalar(grep { $_->{status} == 200 } @res), 30, 'after recovery 30 parallel requests all pass');
