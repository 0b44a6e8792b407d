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
use Time::HiRes qw(time sleep);

plan tests => 4, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';

# let the batched work of earlier requests reach Redis first
sleep 1.5;
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
# Redis is asked again only by a child that has not seen the key yet, or
# after the key changed: its lastUsedAt is written at most once a second
my $cfg = Apache::Test::config();
open my $pf, '<', $cfg->{vars}{t_pid_file} or die "pid file: $!";
chomp(my $parent = <$pf>);
close $pf;
my $children = () = httpd_children($parent);
my $asked = () = $seen =~ /\Q$hash\E/g;
my $bound = $children * (int($took) + 2);
ok($asked <= $bound && $asked < 100,
   sprintf('Redis was asked about the key %d times for 100 requests in %.1f s '
           . '(at most %d: %d children)', $asked, $took, $bound, $children));
