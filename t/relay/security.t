# An attacker with a valid key, and one with none: the upstream credential
# is never reflected (TRACE, an SSI page, the access log), only the listed
# endpoints reach the upstream, every answer is counted, a refusal costs no
# worker, Satisfy Any cannot override a refusal, the client's cookies and
# proxy credentials stay here, and a key holder cannot flood the error log.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use IO::Socket::INET ();
use Digest::SHA qw(sha256_hex);
use Time::HiRes qw(time);

plan tests => 50, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $up = $ENV{RELAY_TEST_UPSTREAM_KEY};
my $logs = Apache::Test::config()->{vars}{t_logs};
my @cleanup;
END { local $?; $_->() for reverse @cleanup }

# The whole answer on a raw connection: (status line, headers, body).
sub raw_answer {
    my ($s, $timeout) = @_;
    my $buf = read_until($s, qr/\r\n\r\n/, $timeout);
    my ($head, $body) = split /\r\n\r\n/, $buf, 2;
    $body //= '';
    my ($len) = ($head // '') =~ /^Content-Length:\s*(\d+)/mi;
    $body .= read_until($s, qr/\z/, 1) while defined $len && length($body) < $len
                                              && IO::Select->new($s)->can_read(2);
    return ($head // '', $body);
}

# Mock log entries of requests that reached the upstream since a mark.
sub upstream_since { my $n = shift; return upstream_count() - $n }
sub upstream_count { scalar(grep { $_->{event} eq 'start' } mock_entries()) }

my $k = make_key(name => 'security', limit => 5);

# ---- 1. TRACE never reflects the upstream credential ---------------------
my $mark = upstream_count();
my $s = raw_request('TRACE', '/api/v1/messages', undef, 'x-api-key' => $k->{apiKey},
                    'Max-Forwards' => '0');
my ($head, $body) = raw_answer($s, 10);
close $s;
like($head, qr{^HTTP/1\.1 405 }, 'TRACE with Max-Forwards: 0 is refused with 405');
is($body, '{"error":"Method not allowed","message":"This relay does not serve that method on '
        . 'that endpoint"}', 'with the relay\'s JSON body');
ok(index($head . $body, $up) < 0 && $head !~ m{message/http},
   'and nothing echoes the upstream credential');
like($head, qr/^Allow: POST\r?$/m, 'Allow names the method the endpoint takes');
$s = raw_request('TRACE', '/api/v1/messages', undef, 'x-api-key' => $k->{apiKey});
($head, $body) = raw_answer($s, 10);
close $s;
like($head, qr{^HTTP/1\.1 405 }, 'TRACE without Max-Forwards is refused too');
is(scalar(upstream_since($mark)), 0, 'and no TRACE reached the upstream');

# ---- 2. only the listed endpoints reach the upstream ----------------------
my $stranger = 'cr_' . ('b' x 64);    # well-formed, unknown to Redis
my $stranger_hash = sha256_hex($stranger . $ENV{RELAY_TEST_SECRET});
my @refused = (['POST', '/api/v1/messages/batches'], ['GET', '/api/v1/messages/batches'],
               ['GET', '/api/v1/files'], ['DELETE', '/api/v1/files/file_1'],
               ['POST', '/api/v1/files'], ['GET', '/api/v1/organizations/me'],
               ['POST', '/api/v1/messages/batches?beta=true'], ['GET', '/api/'],
               ['GET', '/api/v1/models/']);
my %got;
$mark = upstream_count();
my $seen = monitor_during(sub {
    for my $m (@refused) {
        for my $key ($k->{apiKey}, $stranger) {
            my $r = raw_request($m->[0], $m->[1], $m->[0] eq 'GET' ? undef : $msg, 'x-api-key' => $key);
            my ($h, $b) = raw_answer($r, 10);
            close $r;
            my ($code) = $h =~ m{^HTTP/1\.1 (\d+)};
            $got{"$m->[0] $m->[1] " . ($key eq $stranger ? 'stranger' : 'key') . " $code $b"}++;
        }
    }
});
my @wrong = grep { !/ 404 \Q{"error":"Not found","message":"This relay does not serve that endpoint"}\E$/ }
            sort keys %got;
is(join("\n", @wrong), '', 'batches, files and other paths: 404 with the relay\'s JSON, key or no key');
is(scalar(upstream_since($mark)), 0, 'none of them reached the upstream');
ok(index($seen, $stranger_hash) < 0 && $seen !~ /"(?:EVALSHA|EVAL)"/i,
   'and Redis was not asked about any of them');

my $r = http_post('/api/v1/messages?beta=true', $msg, 'x-api-key' => $k->{apiKey});
is($r->code, 200, 'POST /v1/messages?beta=true (Claude Code) is relayed');
$r = http_post('/api/v1/messages/count_tokens', $msg, 'x-api-key' => $k->{apiKey});
is($r->code, 200, 'POST /v1/messages/count_tokens is relayed');
$r = http_get('/api/v1/models?limit=5', 'x-api-key' => $k->{apiKey});
is($r->code, 200, 'GET /v1/models is relayed');
$r = http_get('/api/v1/messages', 'x-api-key' => $k->{apiKey});
is($r->code . ' ' . ($r->header('Allow') // ''), '405 POST', 'GET /v1/messages: 405, Allow: POST');
$r = http_post('/api/v1/models', $msg, 'x-api-key' => $k->{apiKey});
is($r->code . ' ' . ($r->header('Allow') // ''), '405 GET, HEAD', 'POST /v1/models: 405, Allow: GET, HEAD');
$mark = upstream_count();
$r = http_get('/api/v1/models/../files', 'x-api-key' => $k->{apiKey});
is($r->code, 404, 'a .. path that lands on /v1/files: 404');
$r = http_get('/api/v1/files%2fx', 'x-api-key' => $k->{apiKey});
is($r->code, 404, 'an encoded slash: 404');
is(scalar(upstream_since($mark)), 0, 'neither reached the upstream');

$mark = upstream_count();
$r = http_post('/api-re/v1/messages/batches', $msg, 'x-api-key' => $k->{apiKey});
is($r->code, 404, 'in a <LocationMatch>: batches get 404');
is(upstream_since($mark), 0, 'and do not reach the upstream');
$r = http_post('/api-re/v1/messages', $msg, 'x-api-key' => $k->{apiKey});
is($r->code, 200, 'in a <LocationMatch>: /v1/messages is relayed');

my ($rc, $out) = configtest(qq{<Location /x/>\nRelayEngine On\nRelayAllowEndpoints "TRACE /v1/messages"\n</Location>});
ok($rc != 0 && $out =~ /RelayAllowEndpoints: 'TRACE \/v1\/messages': TRACE and CONNECT are never relayed/,
   'configtest refuses TRACE in RelayAllowEndpoints');
($rc, $out) = configtest(qq{<Location /x/>\nRelayEngine On\nRelayAllowEndpoints "POST v1/messages"\n</Location>});
ok($rc != 0 && $out =~ /the path must start with \//, 'configtest refuses a relative path');
($rc, $out) = configtest(qq{<Location /x/>\nRelayEngine On\nRelayAllowEndpoints POST /v1/messages GET /v1/files/*\n</Location>});
is($rc, 0, 'configtest takes METHOD /path pairs') or diag $out;
($rc, $out) = configtest(qq{<Directory /tmp>\nAllowOverride All\n</Directory>\n});
is($rc, 0, 'a configuration without RelayAllowEndpoints relays the default list') or diag $out;

# ---- 3. the credential reaches only the upstream --------------------------
$mark = upstream_count();
$r = http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey},
               'Cookie' => 'session=internal-session-cookie', 'Proxy-Authorization' => 'Basic cHJveHk6c2VjcmV0',
               'Accept-Encoding' => 'gzip', 'x-mock-tag' => 'strip');
my ($e) = grep { $_->{event} eq 'start' } mock_entries('strip');
my %h = map { lc($_) => $e->{headers}{$_} } keys %{$e->{headers} // {}};
is($h{'x-api-key'}, $up, 'the upstream gets the upstream credential');
ok(!exists $h{cookie} && !exists $h{'proxy-authorization'}, 'and neither Cookie nor Proxy-Authorization');
is(join(',', grep { /^x-forwarded-/ } sort keys %h), '', 'nor X-Forwarded-* (ProxyAddHeaders Off)');

$r = http_get('/ssi/env.html', 'x-api-key' => $k->{apiKey});
is($r->code, 200, 'an SSI page in a relay location is served');
ok(index($r->decoded_content, $up) < 0 && index($r->decoded_content, $k->{apiKey}) < 0,
   'its environment holds neither the upstream credential nor the relay key');

ok(defined wait_until(5, sub { slurp("$logs/header_log") =~ m{^/api/v1/messages\|}m }),
   'the header log has the relayed requests');
# the relay's own lines (the mock upstream in the same server logs what it received)
my $hl = join '', grep { m{^/(?:api|ssi)} } split /^/m, slurp("$logs/header_log");
ok(index($hl, $up) < 0, 'a LogFormat with %{x-api-key}i never logs the upstream credential');
ok(index($hl, $k->{apiKey}) < 0, 'nor the relay key');

# ---- 4. every answer is counted -------------------------------------------
my $t = make_key(name => 'gzip client', limit => 0);
for (1 .. 3) {
    $r = http_post('/api/v1/messages', $msg, 'x-api-key' => $t->{apiKey}, 'Accept-Encoding' => 'gzip',
                   'x-mock-input-tokens' => 20, 'x-mock-output-tokens' => 5, 'x-mock-tag' => 'gzip');
}
is(($r->header('Content-Encoding') // 'identity') . ' ' . $r->code, 'identity 200',
   'a client accepting gzip gets an uncompressed answer');
($e) = grep { $_->{event} eq 'start' } mock_entries('gzip');
is({map { lc($_) => $e->{headers}{$_} } keys %{$e->{headers}}}->{'accept-encoding'}, 'identity',
   'the relay asked the upstream for identity');
ok(defined wait_until(5, sub { (redis('HGET', "usage:$t->{id}", 'totalTokens') || 0) == 75 }),
   'all 3 answers counted: 75 tokens');
$mark = upstream_count();
$r = http_get('/plain/v1/models', 'Accept-Encoding' => 'gzip', 'x-api-key' => $up);
is($r->header('Content-Encoding') // '', 'gzip', '(the mock does compress for a client that accepts it)');

my $f = make_key(name => 'forced gzip', limit => 0, token_limit => 1000);
$r = http_post('/api/v1/messages', $msg, 'x-api-key' => $f->{apiKey}, 'x-mock-content-encoding' => 'gzip');
is($r->code . ' ' . $r->decoded_content,
   '502 {"error":"Bad gateway","message":"The upstream sent a compressed answer, which the relay '
   . 'cannot count; it asked for an uncompressed one"}',
   'an upstream that compresses anyway: 502 instead of an answer nobody counts');
ok(!defined $r->header('Content-Encoding'), 'without the upstream\'s Content-Encoding');

# ---- 5. a refusal reads no body and holds no worker -----------------------
$s = raw_request('POST', '/api/v1/messages', undef, 'x-api-key' => $stranger,
                 'Content-Type' => 'application/json', 'Content-Length' => 1000000,
                 'Expect' => '100-continue');
($head, $body) = raw_answer($s, 10);
like($head, qr{^HTTP/1\.1 401 }, 'Expect: 100-continue with an unknown key: 401 at once');
like($head, qr/^Connection: close\r?$/m, 'and the connection is closed');
close $s;
$s = raw_request('POST', '/api/v1/files', undef, 'x-api-key' => $k->{apiKey},
                 'Content-Type' => 'application/json', 'Content-Length' => 1000000,
                 'Expect' => '100-continue');
($head, $body) = raw_answer($s, 10);
like($head, qr{^HTTP/1\.1 404 }, 'the same for an endpoint that is not relayed: 404, no 100 Continue');
close $s;

# more sockets than the server has workers, each announcing 1 MB and sending 1 byte
my @slow;
for (1 .. 450) {
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => Apache::Test::config()->{vars}{port},
                                  Proto => 'tcp', Timeout => 5) or last;
    print $c "POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: $stranger\r\n"
           . "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{";
    push @slow, $c;
}
is(scalar(@slow), 450, '450 slow-body connections open');
my $answered = 0;
my $t0 = time;
for my $c (@slow) {
    my $got = read_until($c, qr/\r\n\r\n/, 15 - (time - $t0) > 0.2 ? 15 - (time - $t0) : 0.2);
    $answered++ if $got =~ m{^HTTP/1\.1 401 };
}
is($answered, 450, 'each got its 401 without sending the body');
$r = http_post('/api/v1/messages', $msg, 'x-api-key' => $k->{apiKey});
is($r->code, 200, 'and a valid key is served meanwhile');
close $_ for @slow;

# ---- 6. Satisfy Any cannot override a refusal -----------------------------
$mark = upstream_count();
$r = http_post('/api-any/v1/messages', $msg, 'x-api-key' => $stranger);
is($r->code . ' ' . $r->decoded_content, '401 {"error":"Invalid API key","message":"API key not found"}',
   'Satisfy Any: an unknown key gets exactly the 401 body');
$r = http_post('/api-any/v1/messages/batches', $msg, 'x-api-key' => $k->{apiKey});
is($r->code, 404, 'Satisfy Any: an endpoint that is not listed gets 404');
is(scalar(upstream_since($mark)), 0, 'neither reached the upstream');
$r = http_post('/api-any/v1/messages', $msg, 'x-api-key' => $k->{apiKey});
is($r->code, 200, 'Satisfy Any: a valid key is relayed');

# ---- 7. a key holder cannot flood the error log ---------------------------
my $one = make_key(name => 'log flood', limit => 1);
my $hold = raw_request('POST', '/api/v1/messages', $msg, 'x-api-key' => $one->{apiKey},
                       'x-mock-hold-ms' => 8000);
ok(defined wait_until(5, sub { leases($one->{id}) == 1 }), 'a request holds the only slot');
# requests without a body keep their connection when refused: one connection, one child
my $ua = LWP::UserAgent->new(keep_alive => 1, timeout => 10);
my $n429 = 0;
$t0 = time;
for (1 .. 60) {
    $n429++ if $ua->get(base_url() . '/api/v1/models', 'x-api-key' => $one->{apiKey})->code == 429;
}
my $secs = time - $t0;
close $hold;
my $lines = () = error_log() =~ /concurrency limit reached for key \Q$one->{id}\E/g;
ok($n429 == 60 && $lines >= 1 && $lines <= int($secs) + 2,
   sprintf('60 refusals in %.1f s on one connection: %d log lines (at most one a second)',
           $secs, $lines));
