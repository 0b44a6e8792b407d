# Redis hears from the relay only where it is needed: a location without
# RelayEngine On sends it nothing, and a key without any limit, once a child
# knows it, is admitted without a command of its own.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use IO::Socket::INET;
use IO::Select;
use Digest::SHA qw(sha256_hex);
use RelayTest;
use Time::HiRes qw(time);

plan tests => 5, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';

# the batched work of earlier requests (earlier test files too) reaches Redis
# first: Redis sees no script call for two seconds on end, twice the longest
# the relay lets such work wait
my $waited = redis_quiet(2, 30);
ok(defined $waited, sprintf('Redis is quiet before the test (%.1f s)', $waited // -1));
my $seen = monitor_during(sub { http_get('/plain/v1/models') for 1 .. 20 });
is(scalar(() = $seen =~ /"(?:EVALSHA|EVAL)"/gi), 0,
   'a location without RelayEngine: 20 requests, no script call in Redis');

my $k = make_key(name => 'quiet', limit => 0);
my $hash = sha256_hex($k->{apiKey} . $ENV{RELAY_TEST_SECRET});
my $ok = 0;
$seen = monitor_during(sub {
    $ok += http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey})->code == 200
        for 1 .. 40;
});
ok($ok == 40 && $seen =~ /\Q$hash\E/,
   'a key without any limit: 40 requests pass, the first ones checked in Redis');

$ok = 0;
my $t0 = time;
$seen = monitor_during(sub {
    $ok += http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey})->code == 200
        for 1 .. 100;
});
my $took = time - $t0;
is($ok, 100, '100 more requests pass');
# A child asks Redis to admit the key only when it has not seen it yet, or
# after the key changed; a change is pushed to every child, and the only
# change here is lastUsedAt, written at most once a second (the script
# leaves it alone within the same second). So each child asks at most once
# at first and once after each write, and the writes are few.
my $cfg = Apache::Test::config();
open my $pf, '<', $cfg->{vars}{t_pid_file} or die "pid file: $!";
chomp(my $parent = <$pf>);
close $pf;
my $children = () = httpd_children($parent);
# an admission in a batch: the key's hash, its id (or "" when the child has
# not cached it) and the new lease member; the recheck of a changed key
# names the hash too, but admits nothing and is not counted
my $asked = () = $seen =~ /"\Q$hash\E" "(?:\Q$k->{id}\E)?" "[0-9a-f]+-\d+-\d+"/g;
# the writes, as the script made them (MONITOR shows a script's commands)
my $writes = () = $seen =~ /\[\d+ lua\] "HSET" "apikey:\Q$k->{id}\E" "lastUsedAt"/g;
my $bound = $children * (1 + $writes);
ok($asked <= $bound && $asked < 100 && $writes <= int($took) + 2,
   sprintf('Redis was asked to admit the key %d times for 100 requests in %.1f s (at most %d: '
           . '%d children, once at first and once after each of %d lastUsedAt writes, '
           . 'at most %d in that time)', $asked, $took, $bound, $children, $writes,
           int($took) + 2));
