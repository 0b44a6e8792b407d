# HTTP/2: on one h2c connection, a client that waits for each answer is
# never refused by its own finished request (the slot is free before the
# stream's END_STREAM), and a stream the client resets with RST_STREAM gives
# its slot back within a second while the connection stays open.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use IPC::Open2 ();
use POSIX ();
use Time::HiRes qw(time);

my $py = '/usr/bin/python3';
my $client = "$ENV{RELAY_TEST_STAGE}/t/lib/h2client.py";
plan tests => 6, need 'claude_relay', 'relay_mock',
    {'python3 with the h2 package is needed (scripts/install-deps --test installs python3-h2)'
         => -x $py && system("$py -c 'import h2' 2>/dev/null") == 0};

my $json = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $sse = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"stream":true,"messages":[]}';
my @cleanup;
END { local $?; $_->() for reverse @cleanup }

my $h = start_httpd(name => 'h2', extra => "Protocols h2c http/1.1\nH2Direct on\n");
push @cleanup, sub { stop_httpd($h) };

# other clients keep the server busy meanwhile (HTTP/1.1, another key)
my $busy = make_key(name => 'h2 background', limit => 0);
my $stop = "$ENV{RELAY_TEST_STAGE}/run/h2.stop";
unlink $stop;
my @load;
for (1 .. 2) {
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        local $RelayTest::PORT = $h->{port};
        my $end = time + 120;
        http_post('/api/v1/messages', $json, 'x-api-key' => $busy->{apiKey})
            while !-e $stop && time < $end;
        POSIX::_exit(0);
    }
    push @load, $pid;
}
push @cleanup, sub { open my $f, '>', $stop; close $f; waitpid $_, 0 for @load };

my $k = make_key(name => 'h2 sequential', limit => 1);
my %got;
for my $body ($json, $sse) {
    open my $out, '-|', $py, $client, $h->{port}, $k->{apiKey}, 'seq', 500, $body
        or die "h2client: $!";
    while (my $line = <$out>) {
        chomp $line;
        $got{($body eq $json ? 'json' : 'sse') . " $line"}++;
    }
    close $out;
}
is($got{'json 200'} // 0, 500, '500 JSON requests one after the other on one h2c connection: all 200')
    or diag(join ', ', map { "$_ x$got{$_}" } sort keys %got);
is($got{'sse 200'} // 0, 500, '500 streams one after the other on one h2c connection: all 200')
    or diag(join ', ', map { "$_ x$got{$_}" } sort keys %got);
ok(defined wait_until(5, sub { leases($k->{id}) == 0 }), 'no slot left afterwards');

# RST_STREAM mid-stream, the connection kept open
my ($rd, $wr);
my $pid = IPC::Open2::open2($rd, $wr, $py, $client, $h->{port}, $k->{apiKey}, 'reset', $sse, $json);
my $said = <$rd> // '';
chomp $said;
my $t0 = time;
my $freed = wait_until(5, sub { leases($k->{id}) == 0 });
ok($said eq 'reset' && defined $freed && $freed < 1,
   sprintf('a stream reset by the client gives its slot back within a second (%s s)',
           defined $freed ? sprintf('%.2f', $freed) : 'not within 5'));
print $wr "go\n";
close $wr;
my $next = <$rd> // '';
chomp $next;
is($next, '200', 'and the same connection serves the next request');
waitpid $pid, 0;
is($? >> 8, 0, 'the client ended cleanly');
