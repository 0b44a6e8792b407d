# Hostile and broken input: every case gets a clear 4xx and nothing in Redis
# changes (no key, no hash-map entry, no lease, no usage).
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use Time::HiRes qw(time);

plan tests => 24, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $k = make_key(name => 'bad input', limit => 2);

# everything in Redis except live leases' scores, as one string
sub snapshot {
    my @out;
    for my $key (sort(redis_lines('--scan'))) {
        my $type = redis('TYPE', $key);
        my %h = $type eq 'hash' ? redis_lines('HGETALL', $key) : ();
        delete $h{lastUsedAt};    # an admitted request sets it
        my $v = $type eq 'hash' ? join('|', map { "$_:$h{$_}" } sort keys %h)
              : $type eq 'zset' ? join('|', redis_lines('ZRANGE', $key, 0, -1))
              : $type eq 'set'  ? join('|', sort(redis_lines('SMEMBERS', $key)))
              : $type eq 'string' ? redis('GET', $key) : $type;
        push @out, "$key=$v";
    }
    return join "\n", @out;
}

# send raw bytes, return the status code of the answer (0 if none)
sub raw_status {
    my $req = shift;
    my $cfg = Apache::Test::config();
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $cfg->{vars}{port},
                                  Timeout => 10) or die $!;
    print $s $req;
    my $buf = '';
    my $end = time + 10;
    while (time < $end) {
        my $n = sysread($s, my $chunk, 65536);
        last unless $n;
        $buf .= $chunk;
        last if $buf =~ /\r\n\r\n/;
    }
    close $s;
    return $buf =~ m{^HTTP/1\.\d (\d{3})} ? $1 : 0;
}
sub post_raw {
    my ($headers, $body) = @_;
    $body //= $msg;
    return raw_status("POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n$headers"
                      . "Content-Type: application/json\r\nContent-Length: " . length($body)
                      . "\r\nConnection: close\r\n\r\n$body");
}

# what earlier tests' requests left to write (usage, outcome counts) is in
# Redis before the snapshot: Redis has seen no script call for two seconds
redis_quiet(2, 30) // die 'Redis never went quiet';
my $before = snapshot();
my $good = $k->{apiKey};
my $s;

$s = post_raw("x-api-key: $good\rX-Injected: 1\r\n");
ok($s >= 400 && $s < 500, "a key with a bare CR: $s");
$s = post_raw("x-api-key: " . substr($good, 0, 20) . "\nX-Injected: 1\r\n");
ok($s >= 400 && $s < 500, "a key cut by an LF: $s");
$s = post_raw("x-api-key: " . substr($good, 0, 30) . "\0" . substr($good, 30) . "\r\n");
ok($s >= 400 && $s < 500, "a key with a NUL: $s");
is(post_raw("x-api-key: cr_" . ('a' x 8000) . "\r\n"), 401, 'an 8 KB key: 401 format');
$s = post_raw("x-api-key: cr_" . ('a' x 10240) . "\r\n");
ok($s >= 400 && $s < 500, "a 10 KB key: $s");
is(post_raw("x-api-key: cr_\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87" . ('a' x 40) . "\r\n"), 401,
   'a key with unicode: 401');
is(post_raw("Authorization: $good\r\n"), 401, 'Authorization without Bearer: 401');
is(post_raw("Authorization: Basic " . ('QUJD' x 4) . "\r\n"), 401, 'Authorization: Basic: 401');
is(post_raw("Authorization: Bearer\r\n"), 401, 'Bearer without a key: 401');
is(post_raw("x-api-key: cr_*?[]{}\$\"' ;HSET x y\r\n"), 401, 'Redis syntax in a key: 401');
is(post_raw("x-api-key: cr_" . ('a' x 40) . "*\r\n"), 401, 'a glob character in a key: 401');
$s = post_raw(join('', map { "X-Big-$_: " . ('b' x 8000) . "\r\n" } 1 .. 120) . "x-api-key: $good\r\n");
ok($s >= 400 && $s < 500, "120 huge headers: $s");
$s = post_raw("X-Huge: " . ('h' x 20000) . "\r\nx-api-key: $good\r\n");
ok($s >= 400 && $s < 500, "one 20 KB header: $s");

# a body over LimitRequestBody: refused, and the slot it took is given back
my $r = http_post('/api/v1/messages', '{"pad":"' . ('p' x (2 * 1024 * 1024)) . '"}',
                  'x-api-key' => $good);
is($r->code, 413, 'a body over LimitRequestBody: 413');
# gone from the set, not merely expired
ok(defined wait_until(10, sub { redis('ZCARD', "concurrency:$k->{id}") == 0 }),
   'and its slot is given back');

# admin URLs with ids that are not UUIDs
for my $path ('/relay-admin/keys/*/edit', '/relay-admin/keys/..%2f..%2fetc/edit',
              '/relay-admin/keys/a%20b/delete', "/relay-admin/keys/$k->{id}x/edit") {
    my $st = admin('GET', $path)->code;
    ok($st >= 400 && $st < 500, "admin page $path: $st");
}
for my $m ('GET', 'PUT', 'DELETE') {
    my ($res) = admin_json($m, '/relay-admin/api/keys/*', $m eq 'PUT' ? {tokenLimit => 1} : undef);
    ok($res->code >= 400 && $res->code < 500, "admin API $m /api/keys/*: " . $res->code);
}

# The one admitted request (the oversized body) has its lastUsedAt, usage
# and outcome written in batches, within a second or so: wait until they
# are in Redis, so that anything else written with them is too.
my $oc = "metrics:outcomes:$k->{id}";
wait_until(15, sub { redis('HGET', "apikey:$k->{id}", 'lastUsedAt') ne ''
                     && redis('HGET', $oc, 'admitted') ne '' })
    // die 'the admitted request\'s lastUsedAt and outcome never reached Redis';
my %after = map { /^([^=]*)=(.*)\z/s } split /\n/, snapshot();
is(delete $after{$oc}, 'admitted:1', 'the admitted request is counted once, as admitted');
# apart from that, lastUsedAt, leases and usage counters, nothing changed
my $after = join "\n", grep { !/^usage:|^concurrency:/ } map { "$_=$after{$_}" } sort keys %after;
my $b2 = join "\n", grep { !/^usage:|^concurrency:/ } split /\n/, $before;
is($after, $b2, 'no key, hash-map entry or field changed in Redis');
