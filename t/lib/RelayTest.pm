package RelayTest;
# Helpers for the relay's Apache::Test suite: Redis access through redis-cli,
# keys through relay-keys, the mock upstream's request log, and parallel or
# raw-socket clients.
use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use IO::Socket::INET ();
use JSON::PP ();
use LWP::UserAgent ();
use POSIX ();
use Time::HiRes qw(time sleep);
use Apache::Test ();
use Apache::TestRequest ();

our @EXPORT = qw(monitor_during redis redis_lines make_key relay_keys base_url http_post http_get
                 mock_entries mock_peak mock_clear parallel_posts raw_request
                 wait_until json_decode leases admin admin_json admin_auth
                 free_port mock_port start_httpd stop_httpd httpd_children lease_pids read_until
                 slurp error_log configtest hammer children_rss_kb
                 redis_now_ms lease_scores redis_quiet form_body post_form csrf_of);

my $json = JSON::PP->new->canonical;

sub json_decode { my $t = shift; return eval { $json->decode($t) } }

# A whole file, or '' when it cannot be read.
sub slurp { open my $f, '<', shift or return ''; local $/; my $t = <$f>; close $f; $t // '' }

# The test httpd's error log so far.
sub error_log { return slurp(Apache::Test::config()->{vars}{t_logs} . '/error_log') }

# Run redis-cli against the test Redis; returns the output without the last newline.
sub redis {
    my @args = @_;
    open my $fh, '-|', 'redis-cli', '-h', '127.0.0.1', '-p', $ENV{RELAY_TEST_REDIS_PORT}, @args
        or die "redis-cli: $!";
    my $out = do { local $/; <$fh> };
    close $fh;
    $out = '' unless defined $out;
    chomp $out;
    return $out;
}

sub redis_lines { my $o = redis(@_); return $o eq '' ? () : split /\n/, $o }

# The live leases of a key id (members of concurrency:{id} not yet expired).
sub leases {
    my $id = shift;
    my ($sec, $usec) = redis_lines('TIME');
    my $now_ms = $sec * 1000 + int($usec / 1000);
    my @live = redis_lines('ZRANGEBYSCORE', "concurrency:$id", "($now_ms", '+inf');
    return scalar @live;
}

# `httpd -t` on a configuration holding $body after a relay location (and a
# RelayKeyHashSecret unless $no_secret), in its own folder under the stage;
# returns (exit code, output).
sub configtest {
    my ($body, $no_secret) = @_;
    my $dir = "$ENV{RELAY_TEST_STAGE}/run/configtest";
    mkdir $dir;
    open my $fh, '>', "$dir/httpd.conf" or die $!;
    print $fh "ServerRoot $dir\nServerName 127.0.0.1\nInclude $ENV{RELAY_TEST_STAGE}/run/inherit.conf\n"
            . "Listen 127.0.0.1:1\nPidFile $dir/httpd.pid\nErrorLog $dir/error.log\n"
            . ($no_secret ? '' : "RelayKeyHashSecret configtest-secret-0123456789\n")
            . "<Location /api/>\nRelayEngine On\n</Location>\n$body\n";
    close $fh;
    my $out = `$RelayTest::HTTPD -t -f $dir/httpd.conf 2>&1`;
    return ($? >> 8, $out);
}

# Live leases of a key by the pid of the child holding them (the pid is
# the middle part of a lease member).
sub lease_pids {
    my $id = shift;
    my %by;
    my ($sec, $usec) = redis_lines('TIME');
    my $now_ms = $sec * 1000 + int($usec / 1000);
    for my $m (redis_lines('ZRANGEBYSCORE', "concurrency:$id", "($now_ms", '+inf')) {
        $by{$1}++ if $m =~ /^[0-9a-f]+-(\d+)-\d+$/;
    }
    return %by;
}

# Read from a socket until a pattern shows up (or the timeout); what was read.
sub read_until {
    my ($s, $re, $timeout) = @_;
    my $buf = '';
    my $end = time + $timeout;
    while (time < $end) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        next unless select(my $rout = $rin, undef, undef, 0.1);
        my $n = sysread($s, my $chunk, 65536);
        last unless $n;
        $buf .= $chunk;
        return $buf if $buf =~ $re;
    }
    return $buf;
}

# Run the relay-keys tool; returns (exit code, stdout).
sub relay_keys {
    my @args = @_;
    open my $fh, '-|', $ENV{RELAY_KEYS}, @args or die "relay-keys: $!";
    my $out = do { local $/; <$fh> };
    close $fh;
    my $rc = $? >> 8;
    return ($rc, $out // '');
}

# Create a key; returns the parsed JSON ({id, apiKey, ...}).
sub make_key {
    my %o = @_;
    my @args = ('create', '--json', '--name', $o{name} // 'test key');
    push @args, '--concurrency-limit', $o{limit} if defined $o{limit};
    push @args, '--token-limit', $o{token_limit} if defined $o{token_limit};
    push @args, '--expires', $o{expires} if defined $o{expires};
    push @args, '--description', $o{description} if defined $o{description};
    my ($rc, $out) = relay_keys(@args);
    die "relay-keys create failed ($rc): $out" if $rc != 0;
    my $k = json_decode($out) or die "relay-keys gave no JSON: $out";
    return $k;
}

# The server the helpers talk to: the Apache::Test server unless set.
our $PORT;
# The httpd binary (a wrapper that preloads the sanitizers under make test-asan).
our $HTTPD = $ENV{RELAY_HTTPD} // '/usr/sbin/apache2';

sub base_url {
    my $cfg = Apache::Test::config();
    return "http://127.0.0.1:" . ($PORT // $cfg->{vars}->{port});
}

sub ua { return LWP::UserAgent->new(timeout => 60, keep_alive => 0) }

# POST a JSON body; returns the HTTP::Response.
sub http_post {
    my ($path, $body, @headers) = @_;
    return ua()->post(base_url() . $path, 'Content-Type' => 'application/json',
                      @headers, Content => $body);
}

sub http_get {
    my ($path, @headers) = @_;
    return ua()->get(base_url() . $path, @headers);
}

# The Basic credentials of the test admin user.
sub admin_auth {
    require MIME::Base64;
    return 'Basic ' . MIME::Base64::encode_base64(
        "$ENV{RELAY_TEST_ADMIN_USER}:$ENV{RELAY_TEST_ADMIN_PASSWORD}", '');
}

# A request to the admin as the logged-in admin: (method, path, body, headers...).
sub admin {
    my ($method, $path, $body, @headers) = @_;
    require HTTP::Request;
    my $req = HTTP::Request->new($method => base_url() . $path);
    my %h = @headers;
    $req->header(Authorization => admin_auth()) unless exists $h{Authorization};
    delete $h{Authorization} if exists $h{Authorization} && !defined $h{Authorization};
    $req->header($_ => $h{$_}) for keys %h;
    $req->content($body) if defined $body;
    return ua()->request($req);
}

# A form's fields as application/x-www-form-urlencoded, in a fixed order.
sub form_body {
    my %f = @_;
    require URI::Escape;
    return join '&', map { "$_=" . URI::Escape::uri_escape_utf8($f{$_}) } sort keys %f;
}

# A form posted to the admin as a browser on the same origin sends it.
sub post_form {
    my ($path, %f) = @_;
    return admin('POST', $path, form_body(%f),
                 'Content-Type' => 'application/x-www-form-urlencoded', Origin => base_url());
}

# The CSRF token of an admin page, or ''.
sub csrf_of { my $html = shift // ''; return $html =~ /name="csrf" value="([0-9a-f]{64})"/ ? $1 : '' }

# An admin JSON API call; returns (response, decoded body).
sub admin_json {
    my ($method, $path, $data, @headers) = @_;
    my $body = defined $data ? (ref $data ? $json->encode($data) : $data) : undef;
    my $r = admin($method, $path, $body,
                  (defined $body ? ('Content-Type' => 'application/json') : ()), @headers);
    return ($r, json_decode($r->decoded_content // '') || {});
}

# A free TCP port on 127.0.0.1.
sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp',
                                  Listen => 1, ReuseAddr => 1) or die "no free port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

# The port of the mock upstream's virtual host.
sub mock_port {
    return Apache::Test::config()->{vhosts}{relay_mock}{port};
}

# The pids of an httpd's children (parent pid given).
sub httpd_children {
    my $parent = shift;
    return grep { $_ } map { /(\d+)/ ? $1 : () } `pgrep -P $parent`;
}

# Start one more httpd with the relay at /api/ in front of the test's mock
# upstream. Options: name, redis (directive lines for Redis), extra (more
# config), children (a fixed number of children; default 2 that may grow to 16).
# Returns {port, dir, pid} once it answers.
sub start_httpd {
    my %o = @_;
    my $name = $o{name} // 'second';
    my $dir = "$ENV{RELAY_TEST_STAGE}/run/httpd-$name";
    mkdir $dir;
    mkdir "$dir/logs";
    chmod 0777, "$dir/logs";
    my $port = free_port();
    my $redis = $o{redis} // "RelayRedisServer 127.0.0.1:$ENV{RELAY_TEST_REDIS_PORT}";
    my $user = $> == 0 ? "User nobody\nGroup nogroup\n" : '';
    my $mock = mock_port();
    my $extra = $o{extra} // '';
    my $mpm = $o{children}
        ? "StartServers $o{children}\nServerLimit $o{children}\nThreadsPerChild 25\n"
          . "MinSpareThreads 1\nMaxSpareThreads " . (25 * $o{children}) . "\n"
          . "MaxRequestWorkers " . (25 * $o{children})
        : "StartServers 2\nServerLimit 16\nThreadsPerChild 25\nMaxRequestWorkers 400";
    open my $fh, '>', "$dir/httpd.conf" or die $!;
    print $fh <<"CONF";
ServerRoot $dir
ServerName 127.0.0.1
Include $ENV{RELAY_TEST_STAGE}/run/inherit.conf
TypesConfig /etc/mime.types
Listen 127.0.0.1:$port
PidFile $dir/httpd.pid
ErrorLog $dir/logs/error_log
LogLevel info claude_relay:debug
${user}$mpm
$redis
RelayKeyHashSecret env:RELAY_TEST_SECRET
RelayLeaseSeconds 3
<Location /api/>
    RelayEngine On
    RelayUpstreamApiKey env:RELAY_TEST_UPSTREAM_KEY
    ProxyPass http://127.0.0.1:$mock/ disablereuse=On
</Location>
$extra
CONF
    close $fh;
    system($RelayTest::HTTPD, '-f', "$dir/httpd.conf", '-k', 'start') == 0
        or die "cannot start httpd $name";
    my $ok = wait_until(10, sub {
        -s "$dir/httpd.pid"
            && IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 1) ? 1 : 0 });
    die "httpd $name did not come up" unless defined $ok;
    open my $pf, '<', "$dir/httpd.pid" or die $!;
    chomp(my $pid = <$pf>);
    return {port => $port, dir => $dir, pid => $pid, name => $name};
}

sub stop_httpd {
    my $h = shift;
    system($RelayTest::HTTPD, '-f', "$h->{dir}/httpd.conf", '-k', 'stop');
    wait_until(10, sub { !-e "$h->{dir}/httpd.pid" });
}

# The mock upstream's log entries, optionally only those with a given tag.
sub mock_entries {
    my $tag = shift;
    open my $fh, '<', $ENV{RELAY_TEST_MOCK_LOG} or return ();
    my @e;
    while (my $l = <$fh>) {
        my $d = json_decode($l) or next;
        next if defined $tag && ($d->{tag} // '') ne $tag;
        push @e, $d;
    }
    close $fh;
    return @e;
}

sub mock_clear {
    open my $fh, '>', $ENV{RELAY_TEST_MOCK_LOG} or die $!;
    close $fh;
}

# The most requests with a tag the mock had in flight at once.
sub mock_peak {
    my $tag = shift;
    my ($n, $peak) = (0, 0);
    for my $e (sort { $a->{time} <=> $b->{time} || ($a->{event} eq 'end' ? -1 : 1) }
               mock_entries($tag)) {
        $n += $e->{event} eq 'start' ? 1 : -1;
        $peak = $n if $n > $peak;
    }
    return $peak;
}

# Send n POSTs at once from forked clients; returns [{status, retry_after,
# body, took}, ...], took being the seconds one request took from its write
# to its last byte. The clients start together once every one of them runs.
sub parallel_posts {
    my ($n, $path, $body, @headers) = @_;
    my @pids;
    my $tmp = "/tmp/relay-par.$$." . int(rand(1e9));
    mkdir $tmp or die $!;
    # the gate: each client closes its copy of the write end and waits for
    # end of file, which comes once every client and this process closed theirs
    pipe(my $gate_r, my $gate_w) or die "pipe: $!";
    for my $i (1 .. $n) {
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            close $gate_w;
            my $none = <$gate_r>;
            my $t0 = time;
            my $r = http_post($path, $body, @headers);
            my $took = time - $t0;
            open my $o, '>', "$tmp/$i" or POSIX::_exit(1);
            print $o $r->code, "\n", $r->header('Retry-After') // '', "\n", $took, "\n",
                     $r->decoded_content // '';
            close $o;
            POSIX::_exit(0);
        }
        push @pids, $pid;
    }
    close $gate_r;
    close $gate_w;
    waitpid $_, 0 for @pids;
    my @res;
    for my $i (1 .. $n) {
        open my $f, '<', "$tmp/$i" or do { push @res, {status => 0, body => ''}; next };
        my $status = <$f>; my $retry = <$f>; my $took = <$f>;
        chomp($status, $retry, $took);
        my $b = do { local $/; <$f> } // '';
        close $f;
        unlink "$tmp/$i";
        push @res, {status => $status, retry_after => $retry, took => $took, body => $b};
    }
    rmdir $tmp;
    return @res;
}

# Open a raw connection and send a request; returns the socket (caller reads/closes).
sub raw_request {
    my ($method, $path, $body, %headers) = @_;
    my $cfg = Apache::Test::config();
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $PORT // $cfg->{vars}->{port},
                                  Proto => 'tcp', Timeout => 10) or die "connect: $!";
    my $req = "$method $path HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    $req .= "$_: $headers{$_}\r\n" for sort keys %headers;
    if (defined $body) {
        $req .= "Content-Type: application/json\r\nContent-Length: " . length($body) . "\r\n";
    }
    $req .= "\r\n" . ($body // '');
    print $s $req;
    return $s;
}

# A connection to the test Redis in MONITOR mode.
sub monitor_socket {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $ENV{RELAY_TEST_REDIS_PORT},
                                  Proto => 'tcp') or die "redis: $!";
    print $s "MONITOR\r\n";
    my $ok = <$s>;
    die "MONITOR refused: $ok" unless $ok =~ /^\+OK/;
    return $s;
}

# What Redis's MONITOR shows while $code runs, and in the half second after.
sub monitor_during {
    my $code = shift;
    require IO::Select;
    my $s = monitor_socket();
    $code->();
    # MONITOR never ends: the relay's tracking connections ping every second
    my ($buf, $sel, $end) = ('', IO::Select->new($s), time + 0.5);
    while ((my $left = $end - time) > 0) {
        next unless $sel->can_read($left);
        my $n = sysread($s, my $chunk, 65536);
        last unless $n;
        $buf .= $chunk;
    }
    close $s;
    return $buf;
}

# Poll a condition until it holds or the timeout passes; returns seconds waited or undef.
sub wait_until {
    my ($timeout, $cond) = @_;
    my $start = time;
    while (time - $start < $timeout) {
        return time - $start if $cond->();
        sleep 0.05;
    }
    return $cond->() ? time - $start : undef;
}

# Redis's own clock in milliseconds: the clock lease expiries are scored on.
sub redis_now_ms {
    my ($sec, $usec) = redis_lines('TIME');
    return $sec * 1000 + int($usec / 1000);
}

# Every member of concurrency:{id}, live or expired, with its expiry score
# (milliseconds on Redis's clock), as a list of pairs for a hash.
sub lease_scores {
    my $id = shift;
    return redis_lines('ZRANGE', "concurrency:$id", 0, -1, 'WITHSCORES');
}

# Wait until Redis has seen no script call for $quiet seconds on end: the
# relay's batched work (releases within 100 ms; usage, lastUsedAt and the
# outcome counts once a second; the recheck of changed keys a second after
# the change) has all reached Redis, and nothing is renewed. Returns the
# seconds waited, or undef when Redis was never that quiet within $cap.
sub redis_quiet {
    my ($quiet, $cap) = @_;
    require IO::Select;
    my $s = monitor_socket();
    my ($buf, $sel, $start) = ('', IO::Select->new($s), time);
    my $last = $start;
    while (1) {
        my $now = time;
        if ($now - $last >= $quiet) {
            close $s;
            return $now - $start;
        }
        last if $now - $start >= $cap;
        next unless $sel->can_read($quiet - ($now - $last));
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
        # a whole line: one command, "EVAL" or "EVALSHA" its first word
        while ($buf =~ s/\A([^\n]*)\n//) {
            $last = time if $1 =~ /^\+[\d.]+ \[\d+ [^\]]+\] "(?:EVAL|EVALSHA)"/i;
        }
    }
    close $s;
    return undef;
}

# The summed VmRSS (kB) of an httpd's children (parent pid given).
sub children_rss_kb {
    my $parent = shift;
    my $kb = 0;
    for my $pid (httpd_children($parent)) {
        open my $f, '<', "/proc/$pid/status" or next;
        while (my $l = <$f>) { $kb += $1 if $l =~ /^VmRSS:\s+(\d+)\s+kB/ }
        close $f;
    }
    return $kb;
}

# Keep-alive GETs to one server from several forked clients, as fast as they
# answer. Options: port, path, headers (hashref), seconds, procs, want (the
# body every answer should have). Returns {total, status => {code => n},
# bad_body (answers whose body was not want), slowest (seconds, one request
# from write to last byte, a reconnect included)}.
sub hammer {
    my %o = @_;
    my $procs = $o{procs} // 4;
    my $req = "GET $o{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            . join('', map { "$_: $o{headers}{$_}\r\n" } sort keys %{$o{headers} // {}}) . "\r\n";
    my $tmp = "/tmp/relay-hammer.$$." . int(rand(1e9));
    mkdir $tmp or die $!;
    my $end = time + $o{seconds};
    my @pids;
    for my $i (1 .. $procs) {
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            my (%status, $s, $buf);
            my ($total, $bad, $slowest) = (0, 0, 0);
            local $SIG{PIPE} = 'IGNORE';
            while (time < $end) {
                my $t0 = time;
                if (!$s) {
                    $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $o{port},
                                               Proto => 'tcp', Timeout => 10) or last;
                    $buf = '';
                }
                my ($code, $body, $close);
                if (syswrite($s, $req) == length $req) {
                    my $need;
                    while (1) {
                        if (!defined $need && $buf =~ /\A(.*?)\r\n\r\n/s) {
                            my $head = $1;
                            $buf = substr($buf, length($head) + 4);
                            ($code) = $head =~ m{\AHTTP/1\.\d (\d{3})};
                            $need = $head =~ /^Content-Length:\s*(\d+)/mi ? $1 : 0;
                            $close = $head =~ /^Connection:\s*close/mi;
                        }
                        if (defined $need && length $buf >= $need) {
                            $body = substr($buf, 0, $need, '');
                            last;
                        }
                        my $rin = '';
                        vec($rin, fileno($s), 1) = 1;
                        last unless select(my $rout = $rin, undef, undef, 30);
                        my $n = sysread($s, $buf, 65536, length $buf);
                        last unless $n;
                    }
                }
                if (!defined $body) {
                    # the server closed a kept-alive connection: open a new one
                    close $s;
                    undef $s;
                    next;
                }
                my $took = time - $t0;
                $slowest = $took if $took > $slowest;
                $total++;
                $status{$code // 0}++;
                $bad++ if defined $o{want} && $body ne $o{want};
                if ($close) { close $s; undef $s }
            }
            open my $f, '>', "$tmp/$i" or POSIX::_exit(1);
            print $f join(' ', $total, $bad, $slowest, map { "$_=$status{$_}" } sort keys %status);
            close $f;
            POSIX::_exit(0);
        }
        push @pids, $pid;
    }
    waitpid $_, 0 for @pids;
    my %r = (total => 0, bad_body => 0, slowest => 0, status => {});
    for my $i (1 .. $procs) {
        my $line = slurp("$tmp/$i");
        unlink "$tmp/$i";
        my ($total, $bad, $slowest, @st) = split ' ', $line;
        next unless defined $slowest;
        $r{total} += $total;
        $r{bad_body} += $bad;
        $r{slowest} = $slowest if $slowest > $r{slowest};
        for (@st) { my ($c, $n) = split /=/; $r{status}{$c} += $n }
    }
    rmdir $tmp;
    return \%r;
}

1;
