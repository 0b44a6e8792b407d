# One bad record in Redis (a string where the relay expects a hash) refuses
# only its own key: the other keys admitted, released and counted in the
# same batched script call go through, and the error log names the key id
# and the Redis key to fix.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use IO::Socket::INET;
use IO::Select;
use Digest::SHA qw(sha256_hex);
use JSON::PP ();
use RelayTest;

plan tests => 22, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $unavailable = '{"error":"Service temporarily unavailable","message":"The relay cannot '
                . 'reach its key store right now; please retry shortly"}';
my ($day) = redis('TIME') =~ /^(\d+)/;
my @g = gmtime($day);
my $date = sprintf('%04d-%02d-%02d', $g[5] + 1900, $g[4] + 1, $g[3]);

# n parallel requests of each key at once; their results per key
sub together {
    my ($n, @keys) = @_;
    my $tmp = "/tmp/relay-bad.$$." . int(rand(1e9));
    my @pids;
    for my $i (1 .. $#keys) {
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if (!$pid) {
            my @r = parallel_posts($n, '/api/v1/messages', $msg, 'x-api-key' => $keys[$i]);
            open my $o, '>', "$tmp.$i" or POSIX::_exit(1);
            print $o JSON::PP->new->encode(\@r);
            close $o;
            POSIX::_exit(0);
        }
        push @pids, $pid;
    }
    my @res = ([parallel_posts($n, '/api/v1/messages', $msg, 'x-api-key' => $keys[0])]);
    waitpid $_, 0 for @pids;
    for my $i (1 .. $#keys) {
        push @res, json_decode(slurp("$tmp.$i")) || [];
        unlink "$tmp.$i";
    }
    return @res;
}

# the script calls MONITOR saw that carried both strings
sub shared_calls {
    my ($seen, $x, @y) = @_;
    my $n = 0;
    for my $l (split /\n/, $seen) {
        next unless $l =~ /"(?:EVALSHA|EVAL)"/i && $l =~ /\Q$x\E/;
        $n++ if grep { $l =~ /\Q$_\E/ } @y;
    }
    return $n;
}

sub count { my ($st, $r) = @_; return scalar grep { $_->{status} == $st } @$r }

sub requests { return redis('HGET', "usage:$_[0]", 'totalRequests') || 0 }

# key A's record becomes a string; B is a healthy key with a limit, so each
# of its requests asks Redis (a limit under 32 never keeps slots)
my $a = make_key(name => 'bad record', limit => 31);
my $b = make_key(name => 'healthy', limit => 31);
redis('DEL', "apikey:$a->{id}");
redis('SET', "apikey:$a->{id}", 'x');
my $ha = sha256_hex($a->{apiKey} . $ENV{RELAY_TEST_SECRET});
my $hb = sha256_hex($b->{apiKey} . $ENV{RELAY_TEST_SECRET});

# rounds of 30 + 30 requests at once, until one script call carried both
my (@ra, @rb, $shared);
for my $round (1 .. 6) {
    my ($rb, $ra);
    my $seen = monitor_during(sub { ($rb, $ra) = together(30, $b->{apiKey}, $a->{apiKey}) });
    push @rb, @$rb;
    push @ra, @$ra;
    $shared += shared_calls($seen, $ha, $hb, $b->{id});
    last if $shared;
}
ok($shared > 0, "requests of A and B shared a script call ($shared seen)");
is(count(200, \@rb), scalar @rb, sprintf('all %d requests of B passed', scalar @rb));
is(count(503, \@ra), scalar @ra, sprintf('all %d requests of A got 503', scalar @ra));
is(scalar(grep { $_->{body} eq $unavailable } @ra), scalar @ra, 'with the relay\'s JSON body');
is(scalar(grep { $_->{retry_after} eq '1' } @ra), scalar @ra, 'and Retry-After: 1');
ok(defined wait_until(5, sub { requests($b->{id}) == @rb }),
   sprintf('usage:{B} counts every request of B (%d of %d)', requests($b->{id}), scalar @rb));
ok(defined wait_until(5, sub { leases($b->{id}) == 0 }), 'B\'s slots were all given back');
like(error_log(),
     qr/key \Q$a->{id}\E: the Redis key apikey:\Q$a->{id}\E has the wrong type or content \(WRONGTYPE/,
     'the error log names A\'s id and the Redis key with the wrong type');
is(redis('GET', "apikey:$a->{id}"), 'x', 'A\'s record is left as it was');
is(redis('EXISTS', "usage:$a->{id}"), 0, 'and nothing was counted for A');

# a key with a token limit whose usage:{id} is a string: its used tokens
# cannot be read, so it is refused (not admitted as if nothing was used)
my $c = make_key(name => 'bad usage, token limit', limit => 31, token_limit => 1000);
redis('SET', "usage:$c->{id}", 'x');
my $hc = sha256_hex($c->{apiKey} . $ENV{RELAY_TEST_SECRET});
my $before = requests($b->{id});
my ($rb, $rc) = together(15, $b->{apiKey}, $c->{apiKey});
is(count(200, $rb), 15, 'beside it, 15 requests of B pass');
is(count(503, $rc), 15, '15 requests of a token-limited key with a string usage:{id} get 503');
is(scalar(grep { $_->{body} eq $unavailable } @$rc), 15, 'with the relay\'s JSON body');
like(error_log(), qr/key \Q$c->{id}\E: the Redis key usage:\Q$c->{id}\E has the wrong type/,
     'the error log names that key and usage:{id}');
ok(defined wait_until(5, sub { requests($b->{id}) == $before + 15 }), 'B\'s 15 are counted');
# a totalTokens that is not a number does not read as nothing used either
redis('DEL', "usage:$c->{id}");
redis('HSET', "usage:$c->{id}", 'totalTokens', 'lots');
my $r = http_post('/api/v1/messages', $msg, 'x-api-key' => $c->{apiKey});
ok($r->code == 503 && error_log() =~ /key \Q$c->{id}\E: the Redis key usage:\Q$c->{id}\E has the wrong type or content \(its field totalTokens is not a number\)/,
   'a totalTokens of "lots": 503, and the log says why');

# a key without a token limit whose usage:{id} is a string: admitted, its
# other counters written; the usage written with it for B is not lost
my $d = make_key(name => 'bad usage, no token limit', limit => 31);
redis('SET', "usage:$d->{id}", 'x');
$before = requests($b->{id});
my $rd;
($rb, $rd) = together(15, $b->{apiKey}, $d->{apiKey});
is(count(200, $rd) + count(200, $rb), 30, 'its 15 requests pass, and B\'s 15');
ok(defined wait_until(5, sub { requests($b->{id}) == $before + 15 }),
   'B\'s usage, written in the same kind of call, is all counted');
ok(defined wait_until(5, sub {
       (redis('HGET', "usage:daily:$d->{id}:$date", 'requests') || 0) == 15 }),
   'the key\'s daily usage is counted; only usage:{id} is left out');
ok(defined wait_until(5, sub {
       error_log() =~ /usage of key \Q$d->{id}\E not counted in usage:\Q$d->{id}\E: that Redis key has the wrong type or content \(WRONGTYPE/ }),
   'the error log names the key and usage:{id}');
is(redis('GET', "usage:$d->{id}"), 'x', 'usage:{id} is left as it was');

# apikey:hash_map made a string: a key no child has seen yet cannot be
# looked up, and the log says which record is bad
my $e = make_key(name => 'never seen', limit => 31);
redis('RENAME', 'apikey:hash_map', 'relay-test:hash_map');
redis('SET', 'apikey:hash_map', 'x');
$r = http_post('/api/v1/messages', $msg, 'x-api-key' => $e->{apiKey});
my $he = sha256_hex($e->{apiKey} . $ENV{RELAY_TEST_SECRET});
ok($r->code == 503 && error_log() =~ /key with hash prefix \Q@{[substr($he, 0, 8)]}\E: the Redis key apikey:hash_map has the wrong type/,
   'a string apikey:hash_map: 503 for an unseen key, the log names apikey:hash_map');
redis('DEL', 'apikey:hash_map');
redis('RENAME', 'relay-test:hash_map', 'apikey:hash_map');
