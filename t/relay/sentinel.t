# RelayRedisSentinel: the relay finds the Redis master through three
# sentinels, keeps the limit, rides out a failover by itself (the master
# killed, a replica promoted), follows a master demoted under its pooled
# connections (READONLY) to the new one (whose script cache is empty), asks
# sentinels that require a password with RelayRedisSentinelPassword, and
# refuses bad directive values at configtest.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use LWP::UserAgent ();
use POSIX ();
use Time::HiRes qw(time sleep);

plan tests => 34, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $dir = "$ENV{RELAY_TEST_STAGE}/run/sentinel";
mkdir $dir;

my %pidfiles;        # name => pidfile of every redis-server this test started
my $httpd;           # the sentinel-configured httpd
my $loop_pid;        # the background request loop
my $saved_port = $RelayTest::PORT;

END {
    local $?;
    $RelayTest::PORT = $saved_port;
    kill 'KILL', $loop_pid if $loop_pid;
    stop_httpd($httpd) if $httpd;
    for my $pf (values %pidfiles) {
        open my $fh, '<', $pf or next;
        chomp(my $pid = <$fh> // '');
        close $fh;
        kill 'TERM', $pid if $pid =~ /^\d+$/;
    }
}

# redis-cli against one of this test's servers; the output without the last newline.
sub rcli {
    my ($port, @args) = @_;
    # quiet: a server this test killed on purpose makes redis-cli complain
    open my $err, '>&', \*STDERR or die $!;
    open STDERR, '>', '/dev/null' or die $!;
    open my $fh, '-|', 'redis-cli', '-h', '127.0.0.1', '-p', $port, @args or die "redis-cli: $!";
    open STDERR, '>&', $err or die $!;
    my $out = do { local $/; <$fh> } // '';
    close $fh;
    chomp $out;
    return $out;
}

sub pid_of {
    my $name = shift;
    open my $fh, '<', $pidfiles{$name} or return;
    chomp(my $pid = <$fh> // '');
    return $pid;
}

# Start a data redis-server (daemonized) on a port; extra arguments appended.
sub start_redis {
    my ($name, $port, @extra) = @_;
    $pidfiles{$name} = "$dir/$name.pid";
    system('redis-server', '--bind', '127.0.0.1', '--port', $port, '--save', '',
           '--appendonly', 'no', '--dir', $dir, '--dbfilename', "$name.rdb",
           '--daemonize', 'yes', '--pidfile', $pidfiles{$name}, '--logfile', "$dir/$name.log",
           @extra) == 0 or die "cannot start redis-server $name";
    wait_until(5, sub { rcli($port, 'PING') eq 'PONG' }) // die "redis-server $name is not up";
}

# The master address one sentinel gives, as "host:port" (or '' when none).
sub sentinel_master {
    my $port = shift;
    return join ':', split /\n/, rcli($port, 'SENTINEL', 'get-master-addr-by-name', 'mymaster');
}

# One field of SENTINEL MASTER mymaster as seen by one sentinel.
sub sentinel_field {
    my ($port, $field) = @_;
    my %h = split /\n/, rcli($port, 'SENTINEL', 'MASTER', 'mymaster');
    return $h{$field} // '';
}

my $auth;
sub post { return http_post('/api/v1/messages', $msg, 'x-api-key' => $auth, @_) }

# --- one master, one replica, three sentinels ---------------------------------
my $mport = free_port();
my $rport = free_port();
start_redis('master', $mport);
start_redis('replica', $rport, '--replicaof', '127.0.0.1', $mport);
# Start a sentinel (daemonized) on a port, with these lines of sentinel.conf.
sub start_sentinel {
    my ($name, $port, $lines) = @_;
    my $conf = "$dir/$name.conf";
    open my $fh, '>', $conf or die $!;
    print $fh "port $port\nbind 127.0.0.1\ndir $dir\nsentinel resolve-hostnames no\n$lines";
    close $fh;
    $pidfiles{$name} = "$dir/$name.pid";
    system('redis-server', $conf, '--sentinel', '--daemonize', 'yes',
           '--pidfile', $pidfiles{$name}, '--logfile', "$dir/$name.log") == 0
        or die "cannot start $name";
    # daemonized: it answers (PONG, or NOAUTH when it wants a password) once it listens
    wait_until(10, sub { rcli($port, 'PING') ne '' }) // die "$name is not up";
}
my @sports = map { free_port() } 1 .. 3;
for my $i (0 .. 2) {
    start_sentinel("sentinel$i", $sports[$i], "sentinel monitor mymaster 127.0.0.1 $mport 2\n"
                   . "sentinel down-after-milliseconds mymaster 1000\n"
                   . "sentinel failover-timeout mymaster 5000\n");
}
my $ready = wait_until(30, sub {
    rcli($rport, 'INFO', 'replication') =~ /master_link_status:up/ or return 0;
    for my $s (@sports) {
        return 0 unless sentinel_master($s) eq "127.0.0.1:$mport"
            && sentinel_field($s, 'num-slaves') eq '1'
            && sentinel_field($s, 'num-other-sentinels') eq '2';
    }
    return 1;
});
ok defined $ready, sprintf('the sentinels see the master, the replica and each other (%.1f s)',
                           $ready // -1);

# keys live in the master; the replica must have them before the master dies
sub key_in_master {
    my ($name, $limit) = @_;
    my ($rc, $out) = relay_keys('--redis', "127.0.0.1:$mport", 'create', '--json',
                                '--name', $name, '--concurrency-limit', $limit);
    die "relay-keys create failed ($rc): $out" if $rc != 0;
    return json_decode($out) || die "relay-keys gave no JSON: $out";
}
my $k = key_in_master('sentinel limit 2', 2);
my $free = key_in_master('sentinel unlimited', 0);
wait_until(10, sub { rcli($rport, 'EXISTS', "apikey:$k->{id}", "apikey:$free->{id}") eq '2' })
    // die 'the replica never got the keys';

# (Re)start the relay under test with these sentinel directives; requests go to it.
sub relay_via {
    my ($name, $redis) = @_;
    stop_httpd($httpd) if $httpd;
    $httpd = start_httpd(name => $name, redis => "$redis\nRelayRedisTimeout 500", extra => "");
    $RelayTest::PORT = $httpd->{port};
}
relay_via('sentinel', "RelayRedisSentinel 127.0.0.1:$sports[0],127.0.0.1:$sports[1],"
                      . "127.0.0.1:$sports[2] mymaster");

# --- 1. through the sentinels, the limit holds -----------------------------------
$auth = $k->{apiKey};
is(post()->code, 200, 'a request passes through the sentinel-configured relay');
my @res = parallel_posts(6, '/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey},
                         'x-mock-hold-ms' => 1500);
is(scalar(grep { $_->{status} == 200 } @res), 2, '6 held requests on a limit-2 key: 2 pass');
is(scalar(grep { $_->{status} == 429 } @res), 4, 'and 4 get 429');

# --- 2. the master dies ------------------------------------------------------
my $loop_file = "$dir/loop.txt";
my $stop_file = "$dir/loop.stop";
unlink $loop_file, $stop_file;
$loop_pid = fork // die "fork: $!";
if ($loop_pid == 0) {
    # sequential requests until told to stop; one line per request
    my $ua = LWP::UserAgent->new(timeout => 10, keep_alive => 0);
    open my $out, '>', $loop_file or POSIX::_exit(1);
    $out->autoflush(1);
    my $end = time + 60;
    while (!-e $stop_file && time < $end) {
        my $t0 = time;
        my $r = $ua->post("http://127.0.0.1:$httpd->{port}/api/v1/messages",
                          'Content-Type' => 'application/json', 'x-api-key' => $free->{apiKey},
                          Content => $msg);
        my $b = json_decode($r->decoded_content // '') || {};
        printf $out "%.3f %.3f %d %s\n", $t0, time - $t0, $r->code,
               ($b->{error} // '-') =~ s/\s+/_/gr;
        sleep 0.05;    # a pace, not a wait: some twenty requests a second
    }
    close $out;
    POSIX::_exit(0);
}
# the lines the loop wrote so far: [start, seconds, status, error]
sub loop_lines {
    open my $lf, '<', $loop_file or return ();
    my @l = map { [split ' '] } grep { /\n\z/ } <$lf>;
    close $lf;
    return @l;
}
# the loop runs, and gets through, before the master dies
wait_until(20, sub { (grep { $_->[2] == 200 } loop_lines()) >= 3 })
    // die 'the background loop got no answer through the relay';
my $elog = "$httpd->{dir}/logs/error_log";
my $log_at_kill = length slurp($elog);
my $killed_at = time;
kill 'KILL', pid_of('master');
wait_until(10, sub { rcli($mport, 'PING') ne 'PONG' }) // die 'the master did not die';
# how long the sentinels take to agree is theirs (down-after 1 s, an
# election, the promotion), not the relay's: wait for it
my $switched = wait_until(60, sub {
    !grep { sentinel_master($_) ne "127.0.0.1:$rport" } @sports });
ok defined $switched, sprintf('the sentinels promoted the replica %.1f s after the master was '
                              . 'killed', $switched // -1);
$auth = $free->{apiKey};
# from then on the relay's next request finds the new master; the bound is
# the point (a relay that kept its old master would never recover)
my $took = wait_until(30, sub { post()->code == 200 });
ok defined $took && $took < 10,
   sprintf('requests succeed again %.1f s after the sentinels named the new master '
           . '(%.1f s after the kill)', $took // -1, time - $killed_at);
# A child whose connects failed waits out a backoff (up to a second, by
# design: a child tries one connect per window during an outage) before it
# connects again, so another child may still refuse for a moment. Each child
# that refused during the outage admits a request through Redis again.
$auth = $k->{apiKey};
my $all_back = wait_until(30, sub {
    post();
    my %last;    # pid => 1 when its last word was an admission decided in Redis
    for (split /\n/, substr(slurp($elog), $log_at_kill)) {
        my ($pid) = /\[pid (\d+):tid \d+\]/ or next;
        $last{$pid} = 0 if /Redis unavailable/;
        $last{$pid} = 1 if m{admitted key \S+ \(\d+/\d+\)};
    }
    !grep { !$last{$_} && kill(0, $_) } keys %last;
});
ok defined $all_back, sprintf('every child that refused during the outage relays again '
                              . '(%.1f s later)', $all_back // -1);
$auth = $free->{apiKey};
my $recovered_at = time;
# the loop too gets through again before it stops
wait_until(20, sub { grep { $_->[0] >= $recovered_at && $_->[2] == 200 } loop_lines() })
    // diag('the background loop got no 200 after the recovery');
open my $sf, '>', $stop_file or die $!;
close $sf;
waitpid $loop_pid, 0;
$loop_pid = undef;
my @loop = loop_lines();
my @after = grep { $_->[0] >= $killed_at } @loop;
my @bad = grep { $_->[2] != 200 && !($_->[2] == 503
                                      && $_->[3] eq 'Service_temporarily_unavailable') } @loop;
my $n503 = grep { $_->[2] == 503 } @loop;
my ($slowest) = sort { $b <=> $a } map { $_->[1] } @loop;
ok @after > 0 && !@bad,
   sprintf('meanwhile every answer was 200 or the 503 JSON (%d requests, %d with 503)',
           scalar @loop, $n503) or diag(join "\n", map { "@$_" } @bad);
# the bound is the point: RelayRedisTimeout is 500 ms, and a request that
# hung would wait for its client's 10 s
ok defined $slowest && $slowest < 3, sprintf('no request hung (slowest %.2f s)', $slowest // -1);
ok $after[-1] && $after[-1][2] == 200, 'the background loop ended with successes';

# --- 3. on the promoted replica the limit still holds -----------------------------
@res = parallel_posts(6, '/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey},
                      'x-mock-hold-ms' => 1500);
is(scalar(grep { $_->{status} == 200 } @res), 2, 'after the failover: 2 of 6 held requests pass');
is(scalar(grep { $_->{status} == 429 } @res), 4, 'and 4 get 429');
ok defined wait_until(10, sub { rcli($rport, 'ZCARD', "concurrency:$k->{id}") eq '0' }),
   'concurrency:{id} on the new master is empty afterwards';

# --- 4. a master demoted under the relay's pooled connections: READONLY -------------
# The old master comes back as a replica of the new one; then the two swap
# roles by hand (no sentinel failover, so no client is disconnected), and the
# sentinels are pointed at the new master. The relay's pooled connections
# still go to the demoted server, which answers READONLY.
start_redis('master2', $mport, '--replicaof', '127.0.0.1', $rport);
ok defined wait_until(20, sub { rcli($mport, 'INFO', 'replication') =~ /master_link_status:up/ }),
   'the old master is back, as a replica of the new one';
# every sentinel forgets the old view first: one still holding it would
# spread it back (its config epoch is higher than a fresh MONITOR's)
rcli($_, 'SENTINEL', 'REMOVE', 'mymaster') for @sports;
rcli($mport, 'REPLICAOF', 'NO', 'ONE');
rcli($rport, 'REPLICAOF', '127.0.0.1', $mport);
for my $s (@sports) {
    rcli($s, 'SENTINEL', 'MONITOR', 'mymaster', '127.0.0.1', $mport, 2);
    rcli($s, 'SENTINEL', 'SET', 'mymaster', 'down-after-milliseconds', 1000,
         'failover-timeout', 5000);
}
like(rcli($rport, 'ROLE'), qr/^slave/, 'the server the relay is connected to is a replica now');
like(rcli($mport, 'INFO', 'memory'), qr/number_of_cached_scripts:0\r?$/m,
     'and the new master has no script cached');
my @codes = map { post()->code } 1 .. 10;
is("@codes", join(' ', (200) x 10), 'every request after the switch passes, none gets 503');
like(rcli($rport, 'INFO', 'errorstats'), qr/errorstat_READONLY:count=[1-9]/,
     'the demoted server did answer READONLY (and the relay moved on)');
like(rcli($mport, 'INFO', 'errorstats'), qr/errorstat_NOSCRIPT:count=[1-9]/,
     'the new master answered NOSCRIPT, and the scripts were loaded with EVAL');
$auth = $k->{apiKey};
@res = parallel_posts(6, '/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey},
                      'x-mock-hold-ms' => 1500);
is(scalar(grep { $_->{status} == 200 } @res), 2, 'on the new master: 2 of 6 held requests pass');
ok defined wait_until(10, sub { rcli($mport, 'ZCARD', "concurrency:$k->{id}") eq '0' }),
   'and concurrency:{id} there is empty afterwards';
is(join(' ', map { sentinel_master($_) } @sports), join(' ', ("127.0.0.1:$mport") x 3),
   'all the while the sentinels agreed on the new master');

# --- 5. a sentinel that requires a password --------------------------------------
my $spw = 'sentinel-pw-' . join('', map { sprintf '%02x', int rand 256 } 1 .. 6);
my $sport = free_port();
start_sentinel('sentinel-auth', $sport,
               "requirepass $spw\nsentinel monitor mymaster 127.0.0.1 $mport 1\n");
like(rcli($sport, 'SENTINEL', 'get-master-addr-by-name', 'mymaster'), qr/NOAUTH/,
     'the sentinel refuses anyone without its password');
my $pwfile = "$dir/sentinel-pw";
open my $pf, '>', $pwfile or die $!;
print $pf "$spw\n";
close $pf;
chmod 0644, $pwfile;
relay_via('sentinel-auth', "RelayRedisSentinel 127.0.0.1:$sport mymaster\n"
                           . "RelayRedisSentinelPassword file:$pwfile");
$auth = $free->{apiKey};
is(post()->code, 200, 'with RelayRedisSentinelPassword the relay finds the master through it');
my $auth_log = slurp("$httpd->{dir}/logs/error_log");
ok($auth_log ne '' && index($auth_log, $spw) < 0, 'and its error log never shows the password');
relay_via('sentinel-noauth', "RelayRedisSentinel 127.0.0.1:$sport mymaster");
my $refused = post();
is($refused->code . ' ' . $refused->header('Content-Type') . ' ' . $refused->decoded_content,
   '503 application/json {"error":"Service temporarily unavailable","message":"The relay '
   . 'cannot reach its key store right now; please retry shortly"}',
   'without the password: the relay\'s own 503 JSON');
like(slurp("$httpd->{dir}/logs/error_log"), qr/sentinel 127\.0\.0\.1:$sport refused AUTH|NOAUTH/,
     'and the error log says the sentinel wants its password');

$RelayTest::PORT = $saved_port;

# --- 6. configtest ---------------------------------------------------------------
for my $c (
    ['no master name', "RelayRedisSentinel 127.0.0.1:1", 1,
     qr/RelayRedisSentinel: '127\.0\.0\.1:1' needs a master name/],
    ['not host:port', "RelayRedisSentinel nonsense mymaster", 1,
     qr/RelayRedisSentinel: 'nonsense' in the sentinel list is not host:port/],
    ['empty entry', "RelayRedisSentinel 127.0.0.1:1,,127.0.0.1:2 mymaster", 1,
     qr/RelayRedisSentinel: the sentinel list .* empty entry/],
    ['with RelayRedisServer', "RelayRedisServer 127.0.0.1:6379\nRelayRedisSentinel 127.0.0.1:1 m", 1,
     qr/RelayRedisSentinel: cannot be combined with RelayRedisServer .*ambiguous/],
    ['good', "RelayRedisSentinel 127.0.0.1:1,[::1]:2 mymaster", 0, qr/Syntax OK/],
    ['sentinel password without sentinels', "RelayRedisSentinelPassword pw", 1,
     qr/RelayRedisSentinelPassword: there is no RelayRedisSentinel/],
    ['vhost sentinels over main server',
     "RelayRedisServer 127.0.0.1:6379\n<VirtualHost 127.0.0.1:1>\n"
     . "RelayRedisSentinel 127.0.0.1:1 mymaster\n</VirtualHost>", 0, qr/Syntax OK/],
) {
    my ($name, $body, $fails, $re) = @$c;
    my ($rc, $out) = configtest($body);
    ok(($rc != 0) == $fails && $out =~ $re, "configtest, $name: " . ($fails ? 'refused' : 'accepted'))
        or diag($out);
}
