# Redis over TLS, the README's recipe for real: a redis-server that speaks only
# TLS (no plain port) and wants client certificates and an ACL user, Debian's
# stunnel as the local TLS client in front of it on a unix socket, and a second
# httpd whose relay points at that socket. Keys are made with relay-keys through
# the tunnel; the relay admits, refuses over the limit and counts usage; a
# plain-text client gets nothing from Redis; a server with a certificate from
# another CA, or from our CA for another name, gets no byte of the tunnel's
# traffic (no AUTH, no password); and the relay rides out a Redis restart behind
# stunnel by itself.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use IO::Socket::INET ();
use IO::Socket::UNIX ();
use POSIX ();
use Socket ();
use Time::HiRes qw(time);

my ($stunnel) = grep { -x } map { ("$_/stunnel4", "$_/stunnel") } split /:/, $ENV{PATH} // '';
my ($openssl) = grep { -x } map { "$_/openssl" } split /:/, $ENV{PATH} // '';

plan tests => 37, need 'claude_relay', 'relay_mock',
    {'stunnel4 is not installed (scripts/install-deps --test installs it)' => $stunnel,
     'openssl is not installed (scripts/install-deps --test installs it)' => $openssl};

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $run = "$ENV{RELAY_TEST_STAGE}/run/redis-tls";
mkdir $run;
chmod 0755, $run;    # the relay's children (nobody under root) reach the socket in it

my %pidfiles;        # name => pid file of every daemon this test started
my $httpd;
my $saved_port = $RelayTest::PORT;

END {
    local $?;
    $RelayTest::PORT = $saved_port;
    stop_httpd($httpd) if $httpd;
    for my $pf (values %pidfiles) {
        my $pid = pid_in($pf);
        kill 'TERM', $pid if $pid;
    }
}

# The pid a pid file holds, or undef.
sub pid_in {
    open my $fh, '<', shift or return;
    chomp(my $pid = <$fh> // '');
    return $pid =~ /^\d+$/ ? $pid : undef;
}

# Run a command with stdout and stderr in files; returns (exit code, stdout,
# stderr); a death by signal N reads as 128 + N, as in the shell.
sub run_cmd {
    my ($env, @cmd) = @_;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        $ENV{$_} = $env->{$_} for keys %$env;
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', "$run/cmd.out" or POSIX::_exit(127);
        open STDERR, '>', "$run/cmd.err" or POSIX::_exit(127);
        exec @cmd or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    my $rc = $? & 127 ? 128 + ($? & 127) : $? >> 8;
    my ($out, $err) = (slurp("$run/cmd.out"), slurp("$run/cmd.err"));
    chomp $out;
    return ($rc, $out, $err);
}

sub openssl { my ($rc, undef, $err) = run_cmd({}, $openssl, @_); die "openssl @_[0,1]: $err" if $rc }

# A CA of its own (name.crt, name.key) in the run folder.
sub make_ca {
    my $name = shift;
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
            '-keyout', "$run/$name.key", '-out', "$run/$name.crt", '-days', '2',
            '-subj', "/CN=$name");
}

# A certificate signed by a CA: a server's for a DNS name, or a client's.
sub make_cert {
    my ($name, $ca, $cn, $ext) = @_;
    openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
            '-keyout', "$run/$name.key", '-out', "$run/$name.csr", '-subj', "/CN=$cn");
    open my $fh, '>', "$run/$name.ext" or die $!;
    print $fh "basicConstraints=CA:FALSE\n$ext\n";
    close $fh;
    openssl('x509', '-req', '-in', "$run/$name.csr", '-CA', "$run/$ca.crt", '-CAkey', "$run/$ca.key",
            '-CAcreateserial', '-out', "$run/$name.crt", '-days', '2', '-extfile', "$run/$name.ext");
    chmod 0600, "$run/$name.key";
}

make_ca('ca');
make_cert('redis', 'ca', 'redis.test', "subjectAltName=DNS:redis.test\nextendedKeyUsage=serverAuth");
make_cert('client', 'ca', 'relay', 'extendedKeyUsage=clientAuth');
# the impostors: one with a certificate from another CA for the right name, one
# with a certificate from our CA for another name
make_ca('rogue-ca');
make_cert('rogue', 'rogue-ca', 'redis.test', "subjectAltName=DNS:redis.test\nextendedKeyUsage=serverAuth");
make_cert('other', 'ca', 'cache.test', "subjectAltName=DNS:cache.test\nextendedKeyUsage=serverAuth");

my $pw = 'tls-' . unpack('H*', join '', map { chr int rand 256 } 1 .. 12);
open my $acl, '>', "$run/users.acl" or die $!;
print $acl "user default off\nuser relay on >$pw ~* &* +\@all\n";
close $acl;
open my $pwf, '>', "$run/redis.password" or die $!;
print $pwf "$pw\n";
close $pwf;
chmod 0600, "$run/users.acl", "$run/redis.password";

# Start a redis-server that listens on a TLS port only; waits until it answers.
sub start_tls_redis {
    my ($name, $port, @extra) = @_;
    $pidfiles{$name} = "$run/$name.pid";
    my ($rc, undef, $err) = run_cmd({}, 'redis-server', '--bind', '127.0.0.1', '--port', '0',
        '--tls-port', $port, '--save', '', '--appendonly', 'no', '--dir', $run,
        '--dbfilename', "$name.rdb", '--daemonize', 'yes', '--pidfile', $pidfiles{$name},
        '--logfile', "$run/$name.log", @extra);
    die "cannot start redis-server $name (built without TLS?): $err" if $rc;
}

my @redis_tls = ('--tls-cert-file', "$run/redis.crt", '--tls-key-file', "$run/redis.key",
                 '--tls-ca-cert-file', "$run/ca.crt", '--tls-auth-clients', 'yes',
                 '--aclfile', "$run/users.acl");
my $tport = free_port();

# redis-cli straight to a TLS port (bypassing stunnel), trusting one CA's
# certificates, with the client certificate; the output without the last
# newline. rtls: to our Redis as the relay's ACL user.
sub tls_cli {
    my ($port, $ca, $env, @args) = @_;
    my ($rc, $out) = run_cmd($env, 'redis-cli', '--tls', '--cacert', "$run/$ca.crt",
        '--cert', "$run/client.crt", '--key', "$run/client.key", '--sni', 'redis.test',
        '-h', '127.0.0.1', '-p', $port, @args);
    return $out;
}
sub rtls { return tls_cli($tport, 'ca', {REDISCLI_AUTH => $pw}, '--user', 'relay', @_) }

start_tls_redis('redis', $tport, @redis_tls);
ok defined wait_until(20, sub { rtls('PING') eq 'PONG' }),
   'redis-server answers on its TLS port (client certificate and ACL user)';
is(join(' ', split /\n/, rtls('CONFIG', 'GET', 'port')), 'port 0', 'and has no plain-text port');

# The impostors answer anyone (no client certificate asked), with the default user.
my %imp_port = (rogue => free_port(), other => free_port());
for my $i (sort keys %imp_port) {
    start_tls_redis("impostor-$i", $imp_port{$i}, '--tls-cert-file', "$run/$i.crt",
                    '--tls-key-file', "$run/$i.key", '--tls-auth-clients', 'no');
}

# stunnel as the local TLS client, as in the README: one section for the
# relay's unix socket, one on a loopback port, and two aimed at the impostors.
my $sport = free_port();
my $owner = $> == 0 ? "setuid = nobody\nsetgid = nogroup\n" : '';    # the relay's children
my $section = sub {
    my ($name, $accept, $port) = @_;
    return "[$name]\nclient = yes\naccept = $accept\nconnect = 127.0.0.1:$port\n"
         . "verifyChain = yes\nCAfile = $run/ca.crt\ncheckHost = redis.test\n"
         . "cert = $run/client.crt\nkey = $run/client.key\n";
};
$pidfiles{stunnel} = "$run/stunnel.pid";
open my $sc, '>', "$run/stunnel.conf" or die $!;
print $sc "foreground = no\npid = $run/stunnel.pid\noutput = $run/stunnel.log\nsyslog = no\n\n"
    . $section->('redis', "$run/redis.sock", $tport) . $owner . "\n"
    . $section->('redis-tcp', "127.0.0.1:$sport", $tport) . "\n"
    . $section->('rogue', "$run/rogue.sock", $imp_port{rogue}) . "\n"
    . $section->('other', "$run/other.sock", $imp_port{other});
close $sc;
my ($src, undef, $serr) = run_cmd({}, $stunnel, "$run/stunnel.conf");
die "stunnel did not start: $serr" . slurp("$run/stunnel.log") if $src;
ok defined wait_until(20, sub { -S "$run/redis.sock" && pid_in("$run/stunnel.pid") }),
   'stunnel listens on the unix socket';
my $stunnel_pid = pid_in("$run/stunnel.pid");

# relay-keys through the tunnel, as the README says: RELAY_REDIS, the ACL user
# and its password; returns (exit code, stdout, stderr).
my %keys_env = (RELAY_REDIS => "unix:$run/redis.sock", RELAY_REDIS_USERNAME => 'relay',
                RELAY_REDIS_PASSWORD => $pw);
sub keys_tls { my $env = shift; return run_cmd({%keys_env, %$env}, $ENV{RELAY_KEYS}, @_) }

my ($rc, $out, $err) = keys_tls({}, 'create', '--json', '--name', 'over tls', '--concurrency-limit', 1);
my $k = json_decode($out) || {};
ok $rc == 0 && ($k->{apiKey} // '') =~ /^cr_[0-9a-f]{64}$/, 'relay-keys creates a key through stunnel'
    or diag $err;
$k->{id} //= 'none';
is(rtls('HGET', "apikey:$k->{id}", 'concurrencyLimit'), '1', 'the key is in the TLS Redis');
($rc, $out) = keys_tls({RELAY_REDIS => "127.0.0.1:$sport"}, 'list', '--json');
is($rc . ' ' . ($out =~ /"name":"over tls"/ ? 'listed' : $out), '0 listed',
   'relay-keys also works through the loopback-port form of the tunnel');
($rc, undef, $err) = keys_tls({RELAY_REDIS_PASSWORD => 'wrong'}, 'list');
is($rc . ' ' . ($err =~ /WRONGPASS/ ? 'WRONGPASS' : $err), '1 WRONGPASS',
   'a wrong password is refused by Redis through the tunnel');

# the relay, pointed at the socket, with the ACL user and its password
$httpd = start_httpd(name => 'tls', redis => "RelayRedisServer unix:$run/redis.sock\n"
                     . "RelayRedisUsername relay\nRelayRedisPassword file:$run/redis.password");
$RelayTest::PORT = $httpd->{port};

# The live leases of a key, read from the TLS Redis.
sub tls_leases {
    my $id = shift;
    my ($sec, $usec) = split /\n/, rtls('TIME');
    my $now_ms = $sec * 1000 + int($usec / 1000);
    return scalar grep { length }
        split /\n/, rtls('ZRANGEBYSCORE', "concurrency:$id", "($now_ms", '+inf');
}

my $r = http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey});
is($r->code, 200, 'the relay admits a request, with the key read through stunnel');

my $hold = raw_request('POST', '/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey},
                       'x-mock-hold-ms' => 6000);
ok defined wait_until(20, sub { tls_leases($k->{id}) == 1 }),
   'a held request holds its lease in the TLS Redis';
$r = http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey});
is($r->code . ' ' . ($r->header('Retry-After') // ''), '429 1',
   'a second concurrent request on the limit-1 key is refused');
is($r->decoded_content, '{"error":"Concurrency limit exceeded","message":"Too many concurrent requests. '
   . 'Limit: 1 concurrent requests","currentConcurrency":1,"concurrencyLimit":1}', 'with the exact body');
my $held = read_until($hold, qr/"output_tokens"/, 30);
close $hold;
like($held, qr{^HTTP/1\.1 200 }, 'the held request ends with 200');
ok defined wait_until(20, sub { tls_leases($k->{id}) == 0 }), 'and gives its slot back';
ok defined wait_until(20, sub {
    join(' ', split /\n/, rtls('HMGET', "usage:$k->{id}", 'totalRequests', 'totalInputTokens',
                               'totalOutputTokens')) eq '2 50 20' }),
   'the usage of both admitted requests is counted in the TLS Redis';

# Plain text to the TLS port gets no Redis answer, only a closed connection;
# the same bytes through stunnel get one.
my $cmd = "AUTH relay $pw\r\nPING\r\n";
my $refused = () = slurp("$run/redis.log") =~ /Error accepting a client connection/g;
my $plain = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$tport", Timeout => 10)
    or die "connect: $!";
print $plain $cmd;
my $t0 = time;
my $got = read_until($plain, qr/(?!)/, 20);    # all it sends, until it closes
my $closed = time - $t0 < 19;
close $plain;
is(($got =~ /PONG|OK|ERR|NOAUTH|WRONGPASS/ ? 'answered' : 'no answer') . ($closed ? ', closed' : ''),
   'no answer, closed', 'a plain-text client on the TLS port gets no answer from Redis');
ok defined wait_until(20, sub {
    (() = slurp("$run/redis.log") =~ /Error accepting a client connection/g) > $refused }),
   'Redis logs the refused handshake';
my $tunnel = IO::Socket::UNIX->new(Peer => "$run/redis.sock", Type => Socket::SOCK_STREAM())
    or die "connect: $!";
print $tunnel $cmd;
is(read_until($tunnel, qr/\+PONG\r\n/, 20), "+OK\r\n+PONG\r\n",
   'the same bytes through stunnel are answered');
close $tunnel;

# The impostors: stunnel refuses the handshake, so not even AUTH reaches them.
for my $i (sort keys %imp_port) {
    my $what = $i eq 'rogue' ? 'a certificate from another CA' : 'our CA\'s certificate for another name';
    my $ca = $i eq 'rogue' ? 'rogue-ca' : 'ca';
    ok defined wait_until(20, sub { tls_cli($imp_port{$i}, $ca, {}, 'PING') eq 'PONG' }),
       "an impostor with $what answers anyone who trusts it";
    ($rc, undef, $err) = keys_tls({RELAY_REDIS => "unix:$run/$i.sock"}, 'list');
    isnt($rc, 0, 'relay-keys through stunnel aimed at it fails');
    my @seen = tls_cli($imp_port{$i}, $ca, {}, 'INFO', 'commandstats') =~ /^cmdstat_(\w+):/mg;
    is("@seen", 'ping', 'and it got no command from the tunnel, AUTH included');
    like(slurp("$run/stunnel.log"), $i eq 'rogue'
         ? qr/CERT: Pre-verification error: unable to get local issuer certificate/
         : qr/CERT: Subject checks failed/, 'stunnel logs why it refused');
}

# Redis restarted behind stunnel (with its data: SHUTDOWN SAVE, then the dump
# is read again on the same TLS port): the relay answers 503 while it is
# away and recovers by itself, without an Apache restart.
my $rpid = pid_in($pidfiles{redis});
rtls('SHUTDOWN', 'SAVE');
ok defined wait_until(20, sub { !kill 0, $rpid }), 'redis-server stopped';
$t0 = time;
$r = http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey});
my $took = time - $t0;
is($r->code . ' ' . $r->decoded_content, '503 {"error":"Service temporarily unavailable","message":'
   . '"The relay cannot reach its key store right now; please retry shortly"}',
   'while Redis is away behind stunnel: 503 with the exact body');
ok $took < 10, sprintf('without hanging (%.2f s)', $took);
($rc) = keys_tls({}, 'list');
isnt($rc, 0, 'relay-keys fails while Redis is away');

start_tls_redis('redis', $tport, @redis_tls);
ok defined wait_until(20, sub { rtls('PING') eq 'PONG' }), 'redis-server restarted on the same TLS port';
is(rtls('HGET', "apikey:$k->{id}", 'name'), 'over tls', 'with its data back from the dump');
my $waited = wait_until(30, sub {
    http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey})->code == 200 });
ok defined $waited,
   sprintf('the relay admits again by itself through the same stunnel (%.2f s)', $waited // -1);
ok defined wait_until(20, sub { tls_leases($k->{id}) == 0 }), 'and gives the slot back';
is(pid_in("$run/stunnel.pid") // 0, $stunnel_pid, 'stunnel was not restarted');

($rc, $out, $err) = keys_tls({}, 'create', '--json', '--name', 'after restart', '--concurrency-limit', 2);
my $k2 = json_decode($out) || {};
is($rc, 0, 'relay-keys creates a key through stunnel after the restart') or diag $err;
my @res = parallel_posts(4, '/api/v1/messages', $msg, 'x-api-key' => $k2->{apiKey} // 'none',
                         'x-mock-hold-ms' => 5000);
is(join(' ', sort map { $_->{status} } @res), '200 200 429 429',
   'the new key\'s limit of 2 holds: 2 of 4 overlapping requests admitted');

my $logs = join '', map { slurp($_) } "$httpd->{dir}/logs/error_log", glob("$run/*.log");
ok $logs ne '' && index($logs, $pw) < 0 && $logs !~ /cr_[0-9a-f]{64}/,
   'no log of the relay, stunnel or Redis holds the Redis password or a relay key';
