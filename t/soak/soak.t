# Soak (make soak; skipped unless RELAY_SOAK=1): SOAK_SECONDS (600) of mixed
# streaming and JSON traffic on three keys, with hang-ups. At the end no
# lease is left and the httpd children's memory has not grown by more than a
# few MiB after warm-up. Prints the figures.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use IO::Socket::INET ();
use Errno qw(EAGAIN EWOULDBLOCK);
use Time::HiRes qw(time sleep);

plan skip_all => 'the soak runs with make soak (RELAY_SOAK=1)' unless $ENV{RELAY_SOAK};
plan tests => 5;

my $seconds = $ENV{SOAK_SECONDS} // 600;
my $warmup = $seconds >= 300 ? 60 : int($seconds / 5);
my $clients = 40;
my @keys = map { make_key(name => "soak $_->[0]", limit => $_->[1]) }
           (['a', 3], ['b', 5], ['c', 0]);
my $port = Apache::Test::config()->{vars}{port};
my $cfg = Apache::Test::config();

sub children_rss_kib {
    open my $pf, '<', $cfg->{vars}{t_pid_file} or return 0;
    chomp(my $parent = <$pf>);
    my $sum = 0;
    for my $pid (httpd_children($parent)) {
        open my $st, '<', "/proc/$pid/status" or next;
        while (<$st>) { $sum += $1 if /^VmRSS:\s+(\d+)/ }
    }
    return $sum;
}

sub request {
    my $k = $keys[rand @keys];
    my $stream = rand() < 0.6;
    my $body = '{"model":"claude-sonnet-4-20250514","max_tokens":16,'
             . ($stream ? '"stream":true,' : '') . '"messages":[]}';
    return "POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: $k->{apiKey}\r\n"
         . "x-mock-hold-ms: " . int(rand(400)) . "\r\nx-mock-events: 3\r\n"
         . "Content-Type: application/json\r\nContent-Length: " . length($body)
         . "\r\nConnection: close\r\n\r\n$body";
}

my %n = (ok => 0, limited => 0, aborted => 0, failed => 0);
my @why;
my @c = map { {} } 1 .. $clients;
my $start = time;
my ($rss_warm, $t_warm);
while (time - $start < $seconds) {
    for my $cl (grep { !$_->{sock} } @c) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 5)
            or do { $n{failed}++; push @why, "connect: $!"; next };
        $s->blocking(0);
        syswrite($s, request());
        @$cl{qw(sock buf abort t)} = ($s, '', rand() < ($ENV{SOAK_ABORT_RATE} // 0.15), time);
    }
    my $rin = '';
    vec($rin, fileno($_->{sock}), 1) = 1 for @c;
    select(my $rout = $rin, undef, undef, 0.05);
    for my $cl (@c) {
        next unless vec($rout, fileno($cl->{sock}), 1);
        my $r = sysread($cl->{sock}, my $chunk, 65536);
        next if !defined $r && ($! == EAGAIN || $! == EWOULDBLOCK);
        $cl->{buf} .= $chunk if $r;
        my ($st) = $cl->{buf} =~ m{^HTTP/1\.\d (\d{3})};
        if ($r && $cl->{abort} && ($st // 0) == 200 && length $cl->{buf} > 200) {
            $n{aborted}++;
        }
        elsif ($r) { next }
        elsif (($st // 0) == 200) { $n{ok}++ }
        elsif (($st // 0) == 429) { $n{limited}++ }
        else { $n{failed}++; push @why, substr($cl->{buf}, 0, 160) || 'no answer' }
        close $cl->{sock};
        $cl->{sock} = undef;
    }
    if (!$rss_warm && time - $start >= $warmup) {
        ($rss_warm, $t_warm) = (children_rss_kib(), time);
    }
}
$_->{sock} && close $_->{sock} for @c;
sleep 2;
my $rss_end = children_rss_kib();
my $total = $n{ok} + $n{limited} + $n{aborted} + $n{failed};
diag(sprintf('soak: %d s, %d requests (%.0f/s): %d ok, %d limited, %d hung up, %d failed',
             $seconds, $total, $total / $seconds, @n{qw(ok limited aborted failed)}));
diag(sprintf('httpd children RSS: %.1f MiB after %d s warm-up, %.1f MiB at the end (%+.1f MiB)',
             $rss_warm / 1024, $warmup, $rss_end / 1024, ($rss_end - $rss_warm) / 1024));
diag("failures: @why[0 .. ($#why < 4 ? $#why : 4)]") if @why;
ok($total > $seconds * 10, 'traffic flowed the whole time');
is($n{failed}, 0, 'no request failed');
for my $k (@keys) { wait_until(5, sub { leases($k->{id}) == 0 }) }
is(scalar(grep { leases($_->{id}) > 0 } @keys), 0, 'no lease is left');
is(scalar(grep { redis('ZCARD', "concurrency:$_->{id}") > 0 } @keys), 0,
   'concurrency:{id} is empty for every key');
ok(($rss_end - $rss_warm) / 1024 < 8, 'the children grew by less than 8 MiB after warm-up');
