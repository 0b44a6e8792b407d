# Token usage: counted exactly from what the upstream answered (streams and
# JSON, in parallel), charged on a hang-up, shown by the admin API, and the
# token limit refuses a key until an admin raises it.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use Time::HiRes qw(time);

plan tests => 33, need_module 'claude_relay', 'relay_mock';

my $json_body = '{"model":"claude-opus-4-20250514","max_tokens":64,"messages":[]}';
my $sse_body = '{"model":"claude-sonnet-4-20250514","max_tokens":64,"stream":true,"messages":[]}';
my ($day) = redis('TIME') =~ /^(\d+)/;
my @g = gmtime($day);
my $date = sprintf('%04d-%02d-%02d', $g[5] + 1900, $g[4] + 1, $g[3]);
my $month = substr($date, 0, 7);

sub h { my $k = shift; return { redis_lines('HGETALL', $k) } }

# a mix of 6 streams and 4 JSON answers at once, with known figures
my $k = make_key(name => 'usage mix', limit => 0);
my @fig = ('x-mock-cache-create-tokens' => 5, 'x-mock-cache-read-tokens' => 7);
my $pid = fork;
if (!$pid) {
    parallel_posts(6, '/api/v1/messages', $sse_body, 'x-api-key' => $k->{apiKey},
                   'x-mock-input-tokens' => 100, 'x-mock-output-tokens' => 20, @fig,
                   'x-mock-hold-ms' => 800, 'x-mock-events' => 4);
    POSIX::_exit(0);
}
my @json = parallel_posts(4, '/api/v1/messages', $json_body, 'x-api-key' => $k->{apiKey},
                          'x-mock-input-tokens' => 50, 'x-mock-output-tokens' => 10,
                          'x-mock-hold-ms' => 500);
waitpid $pid, 0;
is(scalar(grep { $_->{status} == 200 } @json), 4, 'the JSON requests passed');
ok(defined wait_until(3, sub { (h("usage:$k->{id}")->{totalRequests} // 0) == 10 }),
   'all 10 requests were counted');
my $u = h("usage:$k->{id}");
is($u->{totalInputTokens}, 6 * 100 + 4 * 50, 'totalInputTokens is exactly what the mock sent');
is($u->{totalOutputTokens}, 6 * 20 + 4 * 10, 'totalOutputTokens (the last message_delta)');
is($u->{totalTokens}, 800 + 160, 'totalTokens = input + output');
is($u->{totalCacheCreateTokens}, 6 * 5, 'totalCacheCreateTokens');
is($u->{totalCacheReadTokens}, 6 * 7, 'totalCacheReadTokens');
is($u->{totalAllTokens}, 960 + 30 + 42, 'totalAllTokens counts every kind');
my $d = h("usage:daily:$k->{id}:$date");
is("$d->{tokens}/$d->{requests}", '960/10', "usage:daily:{id}:$date");
my $m = h("usage:monthly:$k->{id}:$month");
is("$m->{tokens}/$m->{inputTokens}/$m->{outputTokens}", '960/800/160', "usage:monthly:{id}:$month");
my $ms = h("usage:$k->{id}:model:daily:claude-sonnet-4-20250514:$date");
is("$ms->{tokens}/$ms->{requests}", '720/6', 'per-model daily counters (streams)');
my $mo = h("usage:$k->{id}:model:daily:claude-opus-4-20250514:$date");
is("$mo->{tokens}/$mo->{requests}", '240/4', 'per-model daily counters (JSON)');
like(redis('HGET', "apikey:$k->{id}", 'lastUsedAt'), qr/^\d{4}-\d\d-\d\dT/, 'lastUsedAt is set');

my ($res, $b) = admin_json('GET', "/relay-admin/api/keys/$k->{id}");
is($b->{data}{usage}{total}{tokens}, 960, 'the admin API shows the total');
is($b->{data}{usage}{daily}{tokens}, 960, 'and today\'s tokens');

# the admin pages show it
my $list = admin('GET', '/relay-admin/')->decoded_content;
like($list, qr/data-id="\Q$k->{id}\E".*?<span class="tokens">960<\/span><small>10 requests \S+ today 960<\/small>/s,
     'the list shows tokens used, requests and today\'s tokens');
my $edit = admin('GET', "/relay-admin/keys/$k->{id}/edit")->decoded_content;
like($edit, qr/<svg class="chart".*<title>\Q$date\E: 960 Tokens, 10 requests<\/title>/s,
     'the edit page charts today in the 30-day SVG');
like($edit, qr/<code>claude-opus-4-20250514<\/code><\/td><td>240<\/td><td>4<\/td>/,
     'and splits the usage by model');

# the access log note
my $cfg = Apache::Test::config();
ok(defined wait_until(3, sub {
    open my $f, '<', "$cfg->{vars}{t_logs}/relay_log" or return 0;
    my $hit = grep { /\Q$k->{id}\E 100\/20 / } <$f>;
    close $f;
    $hit > 0 }), 'the relay-tokens note reaches the access log as input/output');

# an upstream error counts a request, no tokens
my $e = make_key(name => 'usage error', limit => 0);
http_post('/api/v1/messages', $json_body, 'x-api-key' => $e->{apiKey}, 'x-mock-status' => 500);
wait_until(3, sub { (h("usage:$e->{id}")->{totalRequests} // 0) == 1 });
$u = h("usage:$e->{id}");
is(($u->{totalRequests} // 0) . "/" . ($u->{totalTokens} // 0), '1/0', 'a 500 answer: one request, no tokens');

# an answer encoded although the relay asked for identity is never served uncounted
my $z = make_key(name => 'usage gzip', limit => 0);
my $zr = http_post('/api/v1/messages', $json_body, 'x-api-key' => $z->{apiKey},
                   'x-mock-content-encoding' => 'gzip', 'x-mock-input-tokens' => 70);
wait_until(3, sub { (h("usage:$z->{id}")->{totalRequests} // 0) == 1 });
$u = h("usage:$z->{id}");
is($zr->code . ' ' . ($u->{totalRequests} // 0) . '/' . ($u->{totalTokens} // 0), '502 1/0',
   'a gzip-encoded answer: 502 for the client, one request, no tokens');
my $cfg0 = Apache::Test::config();
open my $el, '<', "$cfg0->{vars}{t_logs}/error_log";
ok(scalar(grep { /answered key \Q$z->{id}\E gzip-encoded although the relay asked for identity/ } <$el>),
   'and a log line says so');

# a client hanging up mid-stream is charged for what the upstream produced
my $a = make_key(name => 'usage abort', limit => 1);
my $s = raw_request('POST', '/api/v1/messages', $sse_body, 'x-api-key' => $a->{apiKey},
                    'x-mock-input-tokens' => 321, 'x-mock-hold-ms' => 20000,
                    'x-mock-events' => 20);
my $buf = '';
my $end = time + 5;
while (time < $end && $buf !~ /content_block_delta/) {
    sysread($s, my $chunk, 4096) or last;
    $buf .= $chunk;
}
close $s;
ok(defined wait_until(3, sub { leases($a->{id}) == 0 }), 'the hang-up freed the slot');
ok(defined wait_until(3, sub { (h("usage:$a->{id}")->{totalInputTokens} // 0) == 321 }),
   'and its input tokens were recorded');

# the token limit
my $t = make_key(name => 'usage limit', limit => 0, token_limit => 100);
is(http_post('/api/v1/messages', $json_body, 'x-api-key' => $t->{apiKey},
             'x-mock-input-tokens' => 80, 'x-mock-output-tokens' => 30)->code, 200,
   'under the token limit: 200');
wait_until(3, sub { (h("usage:$t->{id}")->{totalTokens} // 0) == 110 });
my $r = http_post('/api/v1/messages', $json_body, 'x-api-key' => $t->{apiKey});
is($r->code, 429, 'at the token limit: 429');
is($r->decoded_content,
   '{"error":"Token limit exceeded","message":"Token limit of 100 tokens reached","tokenLimit":100,"totalTokens":110}',
   'with the exact body');
ok(!defined $r->header('Retry-After'), 'and no Retry-After');
($res) = admin_json('PUT', "/relay-admin/api/keys/$t->{id}", {tokenLimit => 1000});
is($res->code, 200, 'the admin raises the limit');
like(admin('GET', '/relay-admin/')->decoded_content,
     qr/data-id="\Q$t->{id}\E".*?110<\/span> \/ 1000<progress max="1000" value="110">/s,
     'the list shows the tokens against the limit with a bar');
is(http_post('/api/v1/messages', $json_body, 'x-api-key' => $t->{apiKey})->code, 200,
   'the next request passes');
open my $f, '<', "$cfg->{vars}{t_logs}/error_log";
my @lines = grep { /token limit reached for key \Q$t->{id}\E/ } <$f>;
ok(@lines >= 1, 'the refusal was logged with the key id');
ok(!grep({ /cr_[0-9a-f]{64}/ } @lines), 'without the key');
