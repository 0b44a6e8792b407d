# A Redis that cannot be reached, under load: first an address whose accept
# queue is full (connects hang until RelayRedisTimeout), then one that closes
# every connection at once, then one that refuses. Every request gets the 503
# JSON within the timeout and a little, the child does not try one connect per
# request, and its memory does not grow with the refusals.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use IO::Socket::INET ();
use POSIX ();
use Time::HiRes qw(time sleep);

plan tests => 18, need_module 'claude_relay';

my $unavailable = '{"error":"Service temporarily unavailable","message":"The relay cannot reach '
                . 'its key store right now; please retry shortly"}';
my $key = 'cr_' . ('5' x 64);     # well-formed: the relay asks Redis about it
my %headers = ('x-api-key' => $key);
my $timeout = 0.5;                # RelayRedisTimeout 500
my @cleanup;
END { local $?; $_->() for reverse @cleanup }

# ---- an address that takes no more connections ------------------------------
# a backlog of one that is never accepted: once it holds its connections the
# kernel drops further SYNs, so a connect hangs until the client gives up
my $hole = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1,
                                 ReuseAddr => 1) or die "listen: $!";
my $port = $hole->sockport;
my @queued;
for (1 .. 8) {
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 0.3) or last;
    push @queued, $s;
}
my $t0 = time;
my $probe = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 1);
my $hung = time - $t0;
ok(!$probe && $hung >= 0.9,
   sprintf('a connect to the full accept queue hangs (%d queued, gave up after %.2f s)',
           scalar @queued, $hung));
undef $probe;

my $h = start_httpd(name => 'stall', children => 1,
                    redis => "RelayRedisServer 127.0.0.1:$port\nRelayRedisTimeout 500");
push @cleanup, sub { stop_httpd($h) };

# One GET per forked client, all started together; [{status, body, took}].
sub timed_parallel {
    my ($n, $path) = @_;
    my $tmp = "/tmp/relay-stall.$$." . int(rand(1e9));
    mkdir $tmp or die $!;
    # every client waits at a gate the parent opens once all are forked
    pipe(my $gate_r, my $gate_w) or die "pipe: $!";
    my @pids;
    for my $i (1 .. $n) {
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            close $gate_w;
            sysread($gate_r, my $x, 1);
            close $gate_r;
            my $start = time;
            my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $h->{port},
                                          Proto => 'tcp', Timeout => 10);
            my $resp = '';
            if ($s) {
                print $s "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                       . "x-api-key: $key\r\n\r\n";
                $resp = read_until($s, qr/\r\n\r\n.*\}/s, 30);
            }
            my $took = time - $start;
            open my $o, '>', "$tmp/$i" or POSIX::_exit(1);
            print $o "$took\n$resp";
            close $o;
            POSIX::_exit(0);
        }
        push @pids, $pid;
    }
    close $gate_r;
    close $gate_w;    # the gate opens: every client reads end-of-file and goes
    waitpid $_, 0 for @pids;
    my @res;
    for my $i (1 .. $n) {
        my ($took, $resp) = split /\n/, slurp("$tmp/$i"), 2;
        unlink "$tmp/$i";
        $resp //= '';
        my ($status) = $resp =~ m{\AHTTP/1\.\d (\d{3})};
        my ($body) = $resp =~ /\r\n\r\n(.*)\z/s;
        push @res, {status => $status // 0, body => $body // '', took => $took // 99};
    }
    rmdir $tmp;
    return @res;
}

# (a) 20 requests at once, the first the child gets since it started
my @res = timed_parallel(20, '/api/v1/models');
is(scalar(grep { $_->{status} == 503 && $_->{body} eq $unavailable } @res), 20,
   'connects hang: all 20 parallel requests get the 503 JSON');
my ($slowest) = sort { $b <=> $a } map { $_->{took} } @res;
ok($slowest < $timeout + 0.5,
   sprintf('each within RelayRedisTimeout + 0.5 s of its own start (slowest %.2f s)', $slowest));

# continuous load: one connect per child per second at most, the rest answered at once
my $r = hammer(port => $h->{port}, path => '/api/v1/models', headers => \%headers,
               seconds => 5, procs => 4, want => $unavailable);
is(join(' ', sort keys %{$r->{status}}), '503', 'under load: every answer is a 503');
is($r->{bad_body}, 0, 'with the JSON body');
ok($r->{slowest} < $timeout + 0.5,
   sprintf('no request waits longer than RelayRedisTimeout + 0.5 s (slowest %.2f s)',
           $r->{slowest}));
ok($r->{total} >= 500,
   "not one hanging connect per request: $r->{total} answers in 5 s from 4 clients");
like(slurp("$h->{dir}/logs/error_log"),
     qr/Redis unavailable, refusing \(503\): cannot connect to Redis at 127\.0\.0\.1:$port: /,
     'the refusals log why Redis is unavailable');

# ---- the same address taking connections and closing them at once -------------
# (a Redis at maxclients, or a TLS tunnel whose Redis is down): the child must
# not open a connection per request either
close $_ for @queued;
close $hole;
my $closer = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port, Listen => 128,
                                   ReuseAddr => 1) or die "listen again on $port: $!";
pipe(my $count_r, my $count_w) or die $!;
my $closer_pid = fork;
die "fork: $!" unless defined $closer_pid;
if (!$closer_pid) {
    close $count_r;
    $count_w->autoflush(1);
    while (my $c = $closer->accept) {
        close $c;
        print $count_w "1\n";
    }
    POSIX::_exit(0);
}
push @cleanup, sub { if ($closer_pid) { kill 'KILL', $closer_pid; waitpid $closer_pid, 0 } };
close $closer;
close $count_w;
# Connections the closer took so far.
my $accepted = 0;
sub accepts {
    my $rin = '';
    vec($rin, fileno($count_r), 1) = 1;
    while (select(my $rout = $rin, undef, undef, 0)) {
        sysread($count_r, my $buf, 65536) or last;
        $accepted += () = $buf =~ /\n/g;
    }
    return $accepted;
}
accepts();
my $accepts_before = $accepted;
$r = hammer(port => $h->{port}, path => '/api/v1/models', headers => \%headers,
            seconds => 5, procs => 4, want => $unavailable);
my $opened = accepts() - $accepts_before;
is(join(' ', sort keys %{$r->{status}}) . " bad bodies $r->{bad_body}", '503 bad bodies 0',
   'connections closed at once: every answer is the 503 JSON');
ok($r->{total} >= 500 && $opened <= 60,
   "a connect per window, not per request: $opened connections for $r->{total} requests in 5 s "
   . '(with the tracking connection retrying twice a second)');

# ---- the same address refusing connections ------------------------------------
kill 'KILL', $closer_pid;
waitpid $closer_pid, 0;
$closer_pid = 0;
$t0 = time;
$probe = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 2);
ok(!$probe && time - $t0 < 1, 'the Redis address now refuses connections');

# warm-up: every thread of the child has served refusals, its heap has its working size
$r = hammer(port => $h->{port}, path => '/api/v1/models', headers => \%headers,
            seconds => 8, procs => 4, want => $unavailable);
ok($r->{total} >= 2000, "warm-up: $r->{total} refusals");
my @kids = httpd_children($h->{pid});
is(scalar @kids, 1, 'one child serves them all');
my $before = children_rss_kb($h->{pid});

$r = hammer(port => $h->{port}, path => '/api/v1/models', headers => \%headers,
            seconds => 60, procs => 4, want => $unavailable);
my $after = children_rss_kb($h->{pid});
is(join(' ', sort keys %{$r->{status}}) . " bad bodies $r->{bad_body}", '503 bad bodies 0',
   'Redis refusing: every answer is the 503 JSON');
ok($r->{total} >= 30000,
   "enough refusals in 60 s to show a leak of 100 bytes each as 3 MB: $r->{total}");
ok($r->{slowest} < $timeout + 0.5, sprintf('slowest %.2f s', $r->{slowest}));
is_deeply([httpd_children($h->{pid})], \@kids, 'the same child served them (none replaced)');
my $grew = $after - $before;
ok($grew <= 2048,
   sprintf('the child\'s RSS does not grow with refusals: %.1f -> %.1f MB after %d '
         . '(%+.1f bytes per request)', $before / 1024, $after / 1024, $r->{total},
           $grew * 1024 / ($r->{total} || 1)));
