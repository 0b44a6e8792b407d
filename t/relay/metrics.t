# Monitoring: the claude-relay-metrics location serves the Prometheus text
# format with exact counts after requests of known outcomes, promtool accepts
# it, a real Prometheus scrapes it and answers a PromQL query with the count,
# /server-status shows the relay, the server counters survive a graceful
# restart, and a scrape of 10,000 keys answers at a bounded number of Redis
# round trips (its time is shown, not asserted: bench/scale.sh measures it).
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use IPC::Open3 ();
use POSIX ();
use Symbol ();
use Time::HiRes qw(time);
use URI ();

plan tests => 70, need_module 'claude_relay', 'relay_mock', 'status';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}';
my $model = 'claude-sonnet-4-20250514';
my $run = "$ENV{RELAY_TEST_STAGE}/run";

# The samples of a scrape: [name, {label => value}, value], label values unescaped.
sub samples {
    my $text = shift;
    my @s;
    for my $line (split /\n/, $text) {
        next if $line =~ /^#/;
        my ($name, $labels, $value) = $line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/
            or next;
        my %l;
        while (defined $labels && $labels =~ /\G([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/gc) {
            my ($k, $v) = ($1, $2);
            $v =~ s/\\(.)/$1 eq 'n' ? "\n" : $1/ge;
            $l{$k} = $v;
        }
        push @s, [$name, \%l, $value];
    }
    return @s;
}

# The value of the sample with this name and these labels, or undef.
sub value {
    my ($text, $name, %want) = @_;
    for my $s (samples($text)) {
        next if $s->[0] ne $name || grep { ($s->[1]{$_} // "\0") ne $want{$_} } keys %want;
        return $s->[2];
    }
    return undef;
}

sub scrape { return http_get('/relay-metrics')->decoded_content // '' }

# A key's count of one outcome in a scrape (0 when the line is missing).
sub key_count { my ($t, $id, $o) = @_; return value($t, 'claude_relay_key_requests_total', key_id => $id, outcome => $o) // 0 }

# This server's count of one outcome.
sub srv_count { my ($t, $o) = @_; return value($t, 'claude_relay_requests_total', outcome => $o) // 0 }

# Run a command with stdin; returns (exit code, stdout and stderr).
sub run_with_input {
    my ($input, @cmd) = @_;
    my $err = Symbol::gensym;
    my $pid = IPC::Open3::open3(my $in, my $out, undef, @cmd);
    print $in $input;
    close $in;
    my $o = do { local $/; <$out> } // '';
    waitpid $pid, 0;
    return ($? >> 8, $o);
}

# ---- exact counts after requests of known outcomes ----
my $before = scrape();
ok(defined value($before, 'claude_relay_requests_total', outcome => 'admitted'),
   'the metrics location answers with the server figures');

my $one = make_key(name => 'metrics one', limit => 1);
# a name that needs every escape of the format, and HTML escaping on the status page
my $name = "team \"q\" \\ back\nslash <b>";
redis('HSET', "apikey:$one->{id}", 'name', $name);
my $tok = make_key(name => 'metrics tokens', token_limit => 1);
my $off = make_key(name => 'metrics off');
relay_keys('disable', $off->{id});

my @codes;
push @codes, http_post('/api/v1/messages', $msg, 'x-api-key' => $one->{apiKey})->code for 1 .. 3;
my $hold = raw_request('POST', '/api/v1/messages', $msg, 'x-api-key' => $one->{apiKey},
                       'x-mock-hold-ms' => 3000, Connection => 'close');
ok(defined wait_until(10, sub { leases($one->{id}) == 1 }), 'a request of the limit-1 key is in flight');
push @codes, http_post('/api/v1/messages', $msg, 'x-api-key' => $one->{apiKey})->code;
my $held = '';
ok(defined wait_until(10, sub {
       my $t = scrape();
       $held = $t;
       (value($t, 'claude_relay_key_in_flight', key_id => $one->{id}) // -1) == 1
           && (value($t, 'claude_relay_leases_held') // 0) >= 1 }),
   'while it runs: the key has 1 in flight, and this server holds a lease');
is(value($held, 'claude_relay_key_concurrency_limit', key_id => $one->{id}), 1, 'its limit is 1');
push @codes, http_post('/api/v1/messages', $msg, 'x-api-key' => $tok->{apiKey})->code;
push @codes, http_post('/api/v1/messages', $msg, 'x-api-key' => $tok->{apiKey})->code;
push @codes, http_post('/api/v1/messages', $msg, 'x-api-key' => $off->{apiKey})->code;
push @codes, http_post('/api/v1/messages', $msg, 'x-api-key' => 'cr_' . ('0' x 64))->code;
push @codes, http_post('/api/v1/messages', $msg)->code;
push @codes, http_get('/api/v1/nothing', 'x-api-key' => $one->{apiKey})->code;
push @codes, ua_delete('/api/v1/messages');
is("@codes", '200 200 200 429 200 429 401 401 401 404 405', 'the requests got the answers planned');
my $answer = read_until($hold, qr/\A(?!)/, 15);
like($answer, qr/^HTTP\/1\.1 200/, 'the held request finished with 200');
close $hold;

sub ua_delete {
    require HTTP::Request;
    return LWP::UserAgent->new(timeout => 30)->request(
        HTTP::Request->new(DELETE => base_url() . shift))->code;
}

my $after = '';
ok(defined wait_until(15, sub {
       $after = scrape();
       key_count($after, $one->{id}, 'admitted') == 4 && key_count($after, $tok->{id}, 'token_limited') == 1
           && key_count($after, $off->{id}, 'disabled') == 1
           && (value($after, 'claude_relay_key_tokens_total', key_id => $one->{id}, model => $model,
                     type => 'output') // 0) == 40 }),
   'the per-key counts reach Redis and the scrape');
is(key_count($after, $one->{id}, 'admitted'), 4, 'key one: 4 admitted');
is(key_count($after, $one->{id}, 'concurrency_limited'), 1, 'key one: 1 over its concurrency limit');
is(key_count($after, $tok->{id}, 'admitted'), 1, 'token key: 1 admitted');
is(key_count($after, $tok->{id}, 'token_limited'), 1, 'token key: 1 over its token limit');
is(key_count($after, $off->{id}, 'disabled'), 1, 'disabled key: 1 refused');
is(key_count($after, $off->{id}, 'admitted'), 0, 'disabled key: none admitted');
is(value($after, 'claude_relay_key_in_flight', key_id => $one->{id}), 0, 'nothing in flight afterwards');
is(value($after, 'claude_relay_key_token_limit', key_id => $tok->{id}), 1, 'the token limit');
is(value($after, 'claude_relay_key_tokens_total', key_id => $one->{id}, model => $model, type => 'input'),
   100, 'key one: 4 x 25 input tokens of its model');
is(value($after, 'claude_relay_key_tokens_total', key_id => $one->{id}, model => $model, type => 'output'),
   40, 'key one: 4 x 10 output tokens');
is(value($after, 'claude_relay_key_tokens_total', key_id => $one->{id}, model => $model,
         type => 'cache_read'), 0, 'key one: no cache tokens');
is(redis('HGET', "usage:$one->{id}:model:alltime:$model", 'inputTokens'), 100,
   'Redis holds the model total in usage:{id}:model:alltime:{model}');
is(redis('HGET', "metrics:outcomes:$one->{id}", 'concurrency_limited'), 1,
   'and the refusal count in metrics:outcomes:{id}');

my %delta = (admitted => 5, concurrency_limited => 1, token_limited => 1, disabled => 1,
             unauthorized => 2, not_allowed => 2, expired => 0, unavailable => 0);
is(join(' ', map { srv_count($after, $_) - srv_count($before, $_) } sort keys %delta),
   join(' ', map { $delta{$_} } sort keys %delta),
   'this server counted each outcome, keyless ones included');
ok(value($after, 'claude_relay_redis_commands_total') > value($before, 'claude_relay_redis_commands_total'),
   'Redis round trips are counted');
ok(value($after, 'claude_relay_batch_operations_count') > value($before, 'claude_relay_batch_operations_count'),
   'batch calls are counted');
ok(value($after, 'claude_relay_redis_latency_seconds_count')
       > value($before, 'claude_relay_redis_latency_seconds_count')
   && value($after, 'claude_relay_redis_latency_seconds_bucket', le => '+Inf')
       == value($after, 'claude_relay_redis_latency_seconds_count'),
   'round trips are in the latency histogram');

# the text itself
my $raw = $after;
my $esc = 'key_name="team \\"q\\" \\\\ back\\nslash <b>"';
ok(index($raw, "claude_relay_key_requests_total{key_id=\"$one->{id}\",$esc,outcome=\"admitted\"} 4\n") >= 0,
   'the name is escaped per the format (backslash, quote, newline)');
my $hash = redis('HGET', "apikey:$one->{id}", 'apiKey');
ok(index($raw, $one->{apiKey}) < 0 && index($raw, $tok->{apiKey}) < 0, 'no key appears in the scrape');
ok(length($hash) == 64 && index($raw, $hash) < 0, 'nor the key\'s hash');
my $res = http_get('/relay-metrics');
is($res->header('Content-Type'), 'text/plain; version=0.0.4; charset=utf-8', 'the exposition format\'s type');
is($res->header('Cache-Control'), 'no-store', 'never cached');
my ($rc, $out) = run_with_input($raw, 'promtool', 'check', 'metrics');
is($rc, 0, 'promtool check metrics passes');
is($out, '', 'without a single lint remark');
is(http_post('/relay-metrics', 'x')->code, 405, 'POST to the metrics location: 405');

# a flood of scrapes costs Redis at most one read per child and second
my $n = 0;
my $t0 = time;
my $mon = monitor_during(sub { for (1 .. 40) { $n++ if http_get('/relay-metrics')->code == 200 } });
my $elapsed = time - $t0;
my $reads = () = $mon =~ /^[^\n]*"HVALS" "apikey:hash_map"/mg;
my $children = value($after, 'claude_relay_processes');
is($n, 40, '40 scrapes answered');
ok($reads <= $children * (int($elapsed) + 2),
   "they read the keys from Redis $reads times in ${\ sprintf('%.1f', $elapsed)} s ($children children), "
   . 'not once each');

# ---- /server-status ----
my $auto = http_get('/server-status?auto')->decoded_content // '';
my $now = scrape();
my ($auto_admitted) = $auto =~ /^ClaudeRelayRequestsAdmitted: (\d+)$/m;
is($auto_admitted, srv_count($now, 'admitted'), '?auto has the admitted count of the scrape');
like($auto, qr/^ClaudeRelayRequestsConcurrencyLimited: \d+$/m, '?auto: concurrency limited');
like($auto, qr/^ClaudeRelayRedisCommands: \d+$/m, '?auto: Redis round trips');
like($auto, qr/^ClaudeRelayLeasesHeld: 0$/m, '?auto: leases held');
my $status = http_get('/server-status')->decoded_content // '';
like($status, qr{<h2>Claude relay</h2>}, '/server-status shows the relay');
like($status, qr{<td>requests concurrency_limited</td><td>\d+</td>}, 'with the server figures');
# the keys' rows come from a read of Redis that serves a child for a second
# (see README "What a scrape costs"): a child that read them before the last
# usage write shows that for up to a second
my $row = "<tr><td>team &quot;q&quot; \\ back\nslash &lt;b&gt;</td><td>$one->{id}</td>"
        . "<td>0 / 1</td><td>4</td><td>1</td><td>0</td><td>0</td><td>100</td><td>40</td></tr>";
ok(defined wait_until(5, sub {
       $status = http_get('/server-status')->decoded_content // '';
       index($status, $row) >= 0 }),
   'and a row per key, its name HTML-escaped')
    or diag(join "\n", grep { /\Q$one->{id}\E/ } split /(?=<tr>)/, $status);
ok(index($status, 'slash <b>') < 0 && index($status, $one->{apiKey}) < 0, 'nothing unescaped, no key');

# ---- a real Prometheus scrapes the relay; PromQL returns the count ----
my $pdir = "$run/prometheus";
mkdir $pdir;
my $pport = free_port();
my $port = Apache::Test::config()->{vars}{port};
open my $pc, '>', "$pdir/prometheus.yml" or die $!;
print $pc <<"YML";
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: relay
    scrape_interval: 1s
    scrape_timeout: 1s
    metrics_path: /relay-metrics
    static_configs:
      - targets: ['127.0.0.1:$port']
YML
close $pc;
my $ppid = fork;
die "fork: $!" unless defined $ppid;
if (!$ppid) {
    open STDOUT, '>', "$pdir/prometheus.log";
    open STDERR, '>&', \*STDOUT;
    { no warnings 'exec';
      exec 'prometheus', "--config.file=$pdir/prometheus.yml", "--storage.tsdb.path=$pdir/data",
           "--web.listen-address=127.0.0.1:$pport"; }
    POSIX::_exit(127);
}
open my $pf, '>', "$pdir/prometheus.pid" or die $!;
print $pf "$ppid\n";
close $pf;
my $pua = LWP::UserAgent->new(timeout => 10);

# A PromQL query's first value, or undef.
sub promql {
    my $q = shift;
    my $u = URI->new("http://127.0.0.1:$pport/api/v1/query");
    $u->query_form(query => $q);
    my $r = $pua->get($u);
    return undef unless $r->is_success;
    my $d = json_decode($r->decoded_content) or return undef;
    return undef unless ($d->{status} // '') eq 'success' && @{$d->{data}{result} // []};
    return $d->{data}{result}[0]{value}[1];
}
ok(defined wait_until(60, sub { $pua->get("http://127.0.0.1:$pport/-/ready")->is_success }),
   'Prometheus is up');
my $q = "claude_relay_key_requests_total{job=\"relay\",key_id=\"$one->{id}\",outcome=\"admitted\"}";
my $got;
ok(defined wait_until(60, sub { $got = promql($q); defined $got && $got eq '4' }),
   'PromQL through the HTTP API: key one was admitted 4 times');
is($got, '4', 'the query\'s value');
is(promql("sum by (key_id) (claude_relay_key_requests_total{key_id=\"$tok->{id}\"})"), '2',
   'PromQL: the token key\'s requests, all outcomes');
is(promql("claude_relay_key_tokens_total{key_id=\"$one->{id}\",type=\"input\"}"), '100',
   'PromQL: its input tokens');
my $qname = $name =~ s/([\\"])/\\$1/gr =~ s/\n/\\n/gr;
is(promql("claude_relay_key_requests_total{key_name=\"$qname\",outcome=\"concurrency_limited\"}"),
   '1', 'PromQL: selected by the name (escaped in the query), 1 over the limit');
is(promql('up{job="relay"}'), '1', 'the scrape target is up');
kill 'TERM', $ppid;
ok(defined wait_until(30, sub { waitpid($ppid, POSIX::WNOHANG()) == $ppid }), 'Prometheus stopped');
unlink "$pdir/prometheus.pid";

# ---- a second httpd with its own Redis: graceful restart, 10,000 keys ----
my $rdir = "$run/metrics-redis";
mkdir $rdir;
chmod 0777, $rdir;
my $rport = free_port();
system('redis-server', '--bind', '127.0.0.1', '--port', $rport, '--save', '', '--appendonly', 'no',
       '--dir', $rdir, '--daemonize', 'yes', '--pidfile', "$rdir/redis.pid",
       '--logfile', "$rdir/redis.log") == 0 or die 'cannot start redis-server';
sub redis2 { local $ENV{RELAY_TEST_REDIS_PORT} = $rport; return redis(@_) }
ok(defined wait_until(10, sub { redis2('PING') eq 'PONG' }), 'a second Redis is up');
my $h = start_httpd(name => 'metrics', children => 2, redis => "RelayRedisServer 127.0.0.1:$rport", extra => <<'CONF');
<Location /relay-metrics>
    SetHandler claude-relay-metrics
    Require ip 127.0.0.1
</Location>
<Location /server-status>
    SetHandler server-status
    Require ip 127.0.0.1
</Location>
CONF
{
    local $RelayTest::PORT = $h->{port};
    local $ENV{RELAY_REDIS} = "127.0.0.1:$rport";
    my $g = make_key(name => 'graceful', limit => 0);
    @codes = map { http_post('/api/v1/messages', $msg, 'x-api-key' => $g->{apiKey})->code } 1 .. 3;
    is("@codes", '200 200 200', 'three requests through the second httpd');
    my $t;
    ok(defined wait_until(10, sub { $t = scrape(); key_count($t, $g->{id}, 'admitted') == 3 }),
       'its scrape: 3 admitted for the key');
    is(srv_count($t, 'admitted'), 3, 'and 3 for the (new) server');
    # one more, and the restart at once: the old child writes its count on its way out
    is(http_post('/api/v1/messages', $msg, 'x-api-key' => $g->{apiKey})->code, 200, 'a fourth');
    system($RelayTest::HTTPD, '-f', "$h->{dir}/httpd.conf", '-k', 'graceful') == 0
        or die 'graceful restart failed';
    ok(defined wait_until(30, sub {
           (http_get('/server-status?auto')->decoded_content // '') =~ /^ParentServerConfigGeneration: 2$/m }),
       'the second httpd restarted gracefully (generation 2)');
    ok(defined wait_until(15, sub { $t = scrape(); key_count($t, $g->{id}, 'admitted') == 4 }),
       'after it: 4 admitted for the key, none lost');
    is(srv_count($t, 'admitted'), 4, 'and the server counter survived the restart: 4');
    is(http_post('/api/v1/messages', $msg, 'x-api-key' => $g->{apiKey})->code, 200, 'a fifth');
    is(srv_count(scrape(), 'admitted'), 5, 'counted on top: 5');

    # 10,000 keys (plus the one above), written straight into Redis
    my $proto = '';
    my $cmd = sub { $proto .= '*' . scalar(@_) . "\r\n" . join('', map { '$' . length($_) . "\r\n$_\r\n" } @_) };
    my $far = (time + 86400) * 1000;
    for my $i (1 .. 10000) {
        my $id = sprintf('%08x-0000-4000-8000-%012x', $i, $i);
        my $kh = sprintf('%064x', $i);
        $cmd->('HSET', "apikey:$id", 'id', $id, 'name', "bulk $i", 'apiKey', $kh,
               'concurrencyLimit', 5, 'tokenLimit', 0, 'isActive', 'true');
        $cmd->('HSET', 'apikey:hash_map', $kh, $id);
        $cmd->('HSET', "metrics:outcomes:$id", 'admitted', $i, 'concurrency_limited', 1);
        $cmd->('SADD', "usage:$id:models", 'claude-x');
        $cmd->('HSET', "usage:$id:model:alltime:claude-x", 'inputTokens', 10, 'outputTokens', 5);
        $cmd->('ZADD', "concurrency:$id", $far, "m$i") if $i % 10 == 0;
    }
    my ($prc, $pout) = run_with_input($proto, 'redis-cli', '-p', $rport, '--pipe');
    like($pout, qr/errors: 0, replies: 51000/, '10,000 keys written');
    my ($took, $big) = (0, '');
    ok(defined wait_until(30, sub {
           my $s = time;
           my $body = scrape();
           return 0 unless $body =~ /^claude_relay_keys 10001$/m;
           ($took, $big) = (time - $s, $body);
           return 1 }),
       'a scrape lists the 10,001 keys');
    diag(sprintf('scrape of 10,001 keys: %.3f s, %d bytes; the Redis read: %s s in %s calls',
                 $took, length $big, value($big, 'claude_relay_keys_read_seconds') // '?',
                 value($big, 'claude_relay_keys_read_redis_calls') // '?'));
    is(value($big, 'claude_relay_keys_read_redis_calls'), 1 + 21,
       'its read took 22 Redis round trips: HVALS and 21 script calls of 500 keys');
    my $bid = sprintf('%08x-0000-4000-8000-%012x', 70, 70);
    is(key_count($big, $bid, 'admitted'), 70, 'a bulk key\'s count');
    is(value($big, 'claude_relay_key_in_flight', key_id => $bid), 1, 'its lease');
    is(value($big, 'claude_relay_key_tokens_total', key_id => $bid, model => 'claude-x', type => 'output'),
       5, 'its tokens');
    my ($crc) = run_with_input($big, 'promtool', 'check', 'metrics');
    is($crc, 0, 'promtool accepts the scrape of 10,001 keys');

    # what one read costs Redis, seen by MONITOR: one more key makes the next read tell
    redis2('HSET', 'apikey:ffffffff-0000-4000-8000-ffffffffffff', 'id', 'x', 'apiKey', 'f' x 64);
    redis2('HSET', 'apikey:hash_map', 'f' x 64, 'ffffffff-0000-4000-8000-ffffffffffff');
    my $m2;
    {
        local $ENV{RELAY_TEST_REDIS_PORT} = $rport;
        $m2 = monitor_during(sub {
            wait_until(30, sub { scrape() =~ /^claude_relay_keys 10002$/m }) });
    }
    my @top = grep { !/lua\]/ } split /\n/, $m2;
    my $scripts = grep { /"EVAL(?:SHA)?"/ && /-0000-4000-8000-/ } @top;
    my $hv = grep { /"HVALS"/ } @top;
    is($scripts, 21, 'the read of 10,002 keys: 21 script calls');
    is($hv, 1, 'and one HVALS');

    my $st = http_get('/server-status')->decoded_content // '';
    like($st, qr{<p>9002 more keys: the metrics location}, '/server-status lists 1000 keys and says how many more');
}
stop_httpd($h);
if (open my $rp, '<', "$rdir/redis.pid") {
    chomp(my $p = <$rp>);
    kill 'TERM', $p if $p;
}
