# Runs last: after every other test, no log and nothing the upstream saw
# holds a relay key.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;

plan tests => 4, need_module 'claude_relay', 'relay_mock';

my $cfg = Apache::Test::config();
my $logs = $cfg->{vars}->{t_logs};

# make sure at least one key was used and refused in this run
my $k = make_key(name => 'log check', limit => 1);
http_post('/api/v1/messages', '{}', 'x-api-key' => $k->{apiKey});
http_post('/api/v1/messages', '{}', 'x-api-key' => 'cr_' . ('f' x 64));

my $re = qr/cr_[0-9a-f]{64}/;
my $error_log = slurp("$logs/error_log");
ok($error_log ne '' && $error_log !~ $re, 'the error log holds no relay key');
my $access = slurp("$logs/relay_log") . slurp("$logs/access_log");
ok($access ne '' && $access !~ $re, 'the access logs hold no relay key');
my $mock = slurp($ENV{RELAY_TEST_MOCK_LOG});
ok($mock ne '' && $mock !~ /cr_/, 'the upstream never received anything with cr_ in it');

# the httpd servers the tests started and stopped: no child died of a signal
# on its way out (the main test server is stopped after this file)
my @crashed = grep { slurp($_) =~ /exit signal (Segmentation fault|Aborted|Bus error)/ }
              glob("$ENV{RELAY_TEST_STAGE}/run/*/logs/error_log");
is(join(' ', @crashed), '', 'no httpd child of a stopped test server crashed when it exited');
