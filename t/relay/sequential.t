# A client that waits for each answer before it sends the next request is
# never refused by its own finished request: the slot is free in Redis
# before the answer's end reaches the client. One request at a time on a
# new connection each, on a limit-1 key, JSON and SSE, while other clients
# keep the server busy.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use IO::Socket::INET ();
use IO::Select ();
use POSIX ();
use Time::HiRes qw(time);

plan tests => 5, need_module 'claude_relay', 'relay_mock';

my $json = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $sse = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"stream":true,"messages":[]}';
my $port = Apache::Test::config()->{vars}{port};

# One request on a new connection, read to the end of the answer (the
# Content-Length, or the terminating chunk); returns the status.
sub one {
    my ($key, $body) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
                                  Timeout => 10) or return 0;
    print $s "POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: $key\r\n"
           . "Content-Type: application/json\r\nContent-Length: " . length($body)
           . "\r\nConnection: close\r\n\r\n$body";
    my $buf = read_until($s, qr/\r\n\r\n/, 10);
    my ($status) = $buf =~ m{^HTTP/1\.1 (\d+)};
    my ($len) = $buf =~ /^Content-Length:\s*(\d+)/mi;
    my $head_end = index($buf, "\r\n\r\n") + 4;
    if (defined $len) {
        $buf .= read_until($s, qr/\z/, 0.05) while length($buf) - $head_end < $len
                                                    && IO::Select->new($s)->can_read(10);
    }
    elsif ($buf =~ /^Transfer-Encoding:\s*chunked/mi) {
        $buf .= read_until($s, qr/\r\n0\r\n\r\n\z/, 10) unless $buf =~ /\r\n0\r\n\r\n\z/;
    }
    close $s;
    return $status // 0;
}

# background load: other keys' requests from a few processes, until told to stop
my $busy = make_key(name => 'background', limit => 0);
my $stop = "$ENV{RELAY_TEST_STAGE}/run/sequential.stop";
unlink $stop;
my @load;
for (1 .. 3) {
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        my $end = time + 120;
        one($busy->{apiKey}, $json) while !-e $stop && time < $end;
        POSIX::_exit(0);
    }
    push @load, $pid;
}

my $k = make_key(name => 'sequential', limit => 1);
my (%json, %sse);
my $t0 = time;
$json{one($k->{apiKey}, $json)}++ for 1 .. 1000;
$sse{one($k->{apiKey}, $sse)}++ for 1 .. 300;
my $took = time - $t0;
open my $fh, '>', $stop; close $fh;
waitpid $_, 0 for @load;

is(join(' ', map { "$_ x$json{$_}" } sort keys %json), '200 x1000',
   sprintf('1000 JSON requests, one at a time on new connections: all 200 (%.1f s)', $took));
is(join(' ', map { "$_ x$sse{$_}" } sort keys %sse), '200 x300',
   '300 streams, one at a time on new connections: all 200');
ok(defined wait_until(5, sub { leases($k->{id}) == 0 }), 'no slot left afterwards');
ok(defined wait_until(5, sub { (redis('HGET', "usage:$k->{id}", 'totalRequests') || 0) == 1300 }),
   'all 1300 requests counted');

# a slot is given back at the answer's end also when nothing reads the answer
# further: the very next request on another connection gets in
my $hold = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp');
print $hold "POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: $k->{apiKey}\r\n"
          . "Content-Type: application/json\r\nContent-Length: " . length($json) . "\r\n\r\n$json";
my $first = read_until($hold, qr/"output_tokens":\d+\}\}/, 10);
is(one($k->{apiKey}, $json), 200,
   'with the first answer read and its keep-alive connection still open, the next request passes');
close $hold;
