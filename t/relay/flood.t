# A flood: 500 connections hammer one key with limit 10 for 30 seconds
# (RELAY_FLOOD_SECONDS), a fifth of them hanging up mid-stream. The upstream
# never sees more than 10 in flight, every request ends admitted or refused
# with 429, and afterwards concurrency:{id} is empty.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use IO::Socket::INET ();
use Errno qw(EAGAIN EWOULDBLOCK EINPROGRESS);
use Time::HiRes qw(time);

plan tests => 8, need_module 'claude_relay', 'relay_mock';

my $clients = $ENV{RELAY_FLOOD_CLIENTS} // 500;
my $seconds = $ENV{RELAY_FLOOD_SECONDS} // 30;
my $k = make_key(name => 'flood', limit => 10);
my $port = Apache::Test::config()->{vars}{port};
my $body = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"stream":true,"messages":[]}';
my $serial = 0;
# each request carries its own tag, so the mock's and the relay's logs match up
sub request_text {
    $serial++;
    return "POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: $k->{apiKey}\r\n"
         . "x-mock-hold-ms: 600\r\nx-mock-events: 3\r\nx-mock-tag: flood-$serial\r\n"
         . "Content-Type: application/json\r\nContent-Length: " . length($body)
         . "\r\nConnection: close\r\n\r\n$body";
}
mock_clear();

my %count = (admitted => 0, limited => 0, aborted => 0, completed => 0, failed => 0);
my @failures;
my @c = map { {id => $_, aborter => $_ % 5 == 0, next => time + rand(0.5)} } 1 .. $clients;
my $deadline = time + $seconds;

# finish one request of a client and schedule its next one
sub done {
    my ($cl, $outcome) = @_;
    close $cl->{sock} if $cl->{sock};
    $cl->{sock} = undef;
    $count{$outcome}++;
    $cl->{next} = time + 0.05 + rand(0.1);
}

while (1) {
    my $now = time;
    my $active = 0;
    for my $cl (@c) {
        if (!$cl->{sock}) {
            next if $now >= $deadline || $now < $cl->{next};
            my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                          Proto => 'tcp', Timeout => 5);
            if (!$s) { $count{failed}++; push @failures, "connect: $!"; $cl->{next} = $now + 0.2; next }
            $s->blocking(0);
            syswrite($s, request_text());
            @$cl{qw(sock buf status started)} = ($s, '', 0, $now);
        }
        $active++;
    }
    last if !$active && time >= $deadline;
    my $rin = '';
    vec($rin, fileno($_->{sock}), 1) = 1 for grep { $_->{sock} } @c;
    select(my $rout = $rin, undef, undef, 0.05);
    for my $cl (grep { $_->{sock} } @c) {
        next unless vec($rout, fileno($cl->{sock}), 1);
        my $n = sysread($cl->{sock}, my $chunk, 65536);
        if (!defined $n) { next if $! == EAGAIN || $! == EWOULDBLOCK; }
        if (!$n) {    # the server closed: the answer is complete
            my ($st) = $cl->{buf} =~ m{^HTTP/1\.\d (\d{3})};
            $st //= 0;
            if ($st == 200 && $cl->{buf} =~ /event: message_stop/) { $count{admitted}++; done($cl, 'completed') }
            elsif ($st == 429 && $cl->{buf} =~ /"concurrencyLimit":10/) { done($cl, 'limited') }
            else { push @failures, "status $st: " . substr($cl->{buf}, 0, 120); done($cl, 'failed') }
            next;
        }
        $cl->{buf} .= $chunk;
        if ($cl->{aborter} && $cl->{buf} =~ m{^HTTP/1\.\d 200} && $cl->{buf} =~ /content_block_delta/) {
            $count{admitted}++;
            done($cl, 'aborted');    # hang up mid-stream
        }
    }
    for my $cl (grep { $_->{sock} && time - $_->{started} > 30 } @c) {
        push @failures, 'no answer within 30 s';
        done($cl, 'failed');
    }
}
diag(join ', ', map { "$_=$count{$_}" } sort keys %count);
diag("first failures: @failures[0 .. ($#failures < 4 ? $#failures : 4)]") if @failures;

ok($count{admitted} >= 50, "many requests were admitted ($count{admitted})");
ok($count{limited} > 0, "many were refused with the 429 body ($count{limited})");
ok($count{aborted} > 0, "clients hung up mid-stream ($count{aborted})");
is($count{failed}, 0, 'every request ended admitted or 429: none failed');
# In flight at the upstream: from the mock's start to its end. A client that
# hangs up makes the relay close the upstream connection before it gives the
# slot back; the mock notices a moment later (or, when its last writes still
# fit in the socket, not at all), so a request's end is the earlier of the
# mock's end and the moment the relay gave the slot back: the note
# relay-released-at, taken before the release goes to Redis, or, when the
# slot went back in the request's cleanup (after logging), the log line's
# own time. A request the mock finished ends at the mock's end: the mock logs
# it before the bytes that let the relay finish.
my %relay_end;
my $cfg = Apache::Test::config();
wait_until(3, sub { -s "$cfg->{vars}{t_logs}/relay_end_log" });
open my $rl, '<', "$cfg->{vars}{t_logs}/relay_end_log" or die $!;
my %released;
while (<$rl>) {
    my ($tag, $logged, $at) = /^(flood-\d+) (\d+\.\d+) (\S+) \S+$/ or next;
    $released{$tag} = $at if $at =~ /^\d+\.\d+$/;
    $relay_end{$tag} = $released{$tag} // $logged;
}
close $rl;
# the note itself: a request the mock finished gave its slot back after the
# mock's end, never before (else the upstream could see one more)
my ($finished, @early) = (0);
for my $e (mock_entries()) {
    next unless ($e->{tag} // '') =~ /^flood-/ && $e->{event} eq 'end' && !$e->{aborted};
    next unless defined $released{$e->{tag}};
    $finished++;
    push @early, $e->{tag} if $released{$e->{tag}} < $e->{time};
}
ok($finished > 0 && !@early,
   "relay-released-at of $finished finished requests: none before the mock's end (@early[0 .. ($#early < 2 ? $#early : 2)])");
my @events;
for my $e (mock_entries()) {
    next unless ($e->{tag} // '') =~ /^flood-/;
    my $t = $e->{time};
    if ($e->{event} eq 'end' && defined $relay_end{$e->{tag}}) {
        $t = $relay_end{$e->{tag}} if $relay_end{$e->{tag}} < $t;
    }
    push @events, [$t, $e->{event} eq 'start' ? 1 : -1, $e->{tag}, $e->{aborted}, $e->{time}];
}
my ($n, $peak, $over) = (0, 0);
@events = sort { $a->[0] <=> $b->[0] || $a->[1] <=> $b->[1] } @events;
for my $i (0 .. $#events) {
    $n += $events[$i][1];
    $peak = $n if $n > $peak;
    $over //= $i if $n > 10;
}
ok($peak <= 10 && $peak > 0, "the upstream never saw more than 10 in flight (peak $peak)");
if (defined $over) {
    # what led to the excess: each request's start and end around it
    my $from = $over > 24 ? $over - 24 : 0;
    for my $ev (@events[$from .. $over]) {
        my ($t, $d, $tag, $aborted, $mock_t) = @$ev;
        diag(sprintf '%.6f %s %s%s', $t, $d > 0 ? 'start' : 'end  ', $tag,
             $d > 0 ? '' : sprintf(' (mock end %.6f%s)', $mock_t, $aborted ? ', aborted' : ''));
    }
    # a lease that expired while its request ran is reported by the relay
    diag($_) for grep { /gone from Redis when renewed|cannot renew/ } split /\n/, error_log();
}
ok(defined wait_until(5, sub { leases($k->{id}) == 0 }), 'afterwards no live lease is left');
ok(defined wait_until(5, sub { redis('ZCARD', "concurrency:$k->{id}") == 0 }),
   'and concurrency:{id} is empty');
