# The official clients work through the relay unchanged: the Anthropic
# TypeScript SDK (each kind of call it makes) and Claude Code in print mode,
# pointed at the relay location with a relay key. Every request they send
# reaches the upstream on an endpoint of the default allow-list, with the
# upstream credential and never the relay key, and is counted for the key.
use strict;
use warnings FATAL => 'all';
# a field a client did not return reads as empty and fails its check, not the run
no warnings 'uninitialized';
use Apache::Test qw(-withtestmore);
use POSIX ();
use RelayTest;

my $dir = "$ENV{RELAY_TEST_SRC}/t/clients";    # with its node_modules
my $claude = "$dir/node_modules/.bin/claude";
my ($node) = grep { -x } map { "$_/node" } split /:/, $ENV{PATH} // '';

plan tests => 39, need 'claude_relay', 'relay_mock',
    {'node is not installed (scripts/install-deps --test installs it)' => $node,
     'the npm packages of t/clients are not installed (scripts/install-deps --test runs npm ci there)'
         => -d "$dir/node_modules/\@anthropic-ai/sdk" && -x $claude};

# The endpoints the relay lets through by default: method and path below the
# relay location (any query string).
my @allowed = (qr{^POST /v1/messages$}, qr{^POST /v1/messages/count_tokens$},
               qr{^GET /v1/models$}, qr{^GET /v1/models/[^/]+$});

my $run = "$ENV{RELAY_TEST_STAGE}/run/clients";
mkdir $run;

# Run a command with nothing of this process's environment but PATH (so no
# ANTHROPIC_* or CLAUDE_* setting of the machine leaks in), stdin empty, in
# its own folder; returns (exit code, stdout, stderr).
sub run_client {
    my ($name, $env, @cmd) = @_;
    my $d = "$run/$name";
    mkdir $d;
    mkdir "$d/home";
    mkdir "$d/work";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        %ENV = (PATH => $ENV{PATH}, HOME => "$d/home", LANG => 'C.UTF-8', %$env);
        chdir "$d/work" or POSIX::_exit(126);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', "$d/stdout";
        open STDERR, '>', "$d/stderr";
        # the cap is generous; a client that hangs fails the test, not the suite
        exec('timeout', '-k', '5', '120', @cmd) or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    return ($? >> 8, slurp("$d/stdout"), slurp("$d/stderr"));
}

# What the upstream received since the last mock_clear: one "METHOD path?query"
# per request, and the requests themselves.
sub upstream_seen {
    my @e = grep { $_->{event} eq 'start' } mock_entries();
    return ([map { "$_->{method} $_->{uri}" . (defined $_->{query} ? "?$_->{query}" : '') } @e], \@e);
}

sub usage_of { my $id = shift; return {redis_lines('HGETALL', "usage:$id")} }

# Each request as the upstream saw it carries the upstream credential and
# nothing of the relay key, in no header and not in the body.
sub credentials_ok {
    my ($entries, $key, $what) = @_;
    my @bad;
    for my $e (@$entries) {
        my $h = $e->{headers};
        push @bad, "$e->{uri}: x-api-key" if ($h->{'x-api-key'} // '') ne $ENV{RELAY_TEST_UPSTREAM_KEY};
        push @bad, "$e->{uri}: Authorization" if exists $h->{Authorization};
        push @bad, "$e->{uri}: the relay key" if grep { index($_, $key) >= 0 } values %$h, $e->{body} // '';
    }
    ok(@$entries && !@bad, "$what: the upstream saw its own credential only")
        or diag(join "\n", @bad);
}

my @endpoints;

# --- the TypeScript SDK ------------------------------------------------------
my $k = make_key(name => 'sdk', limit => 2);
mock_clear();
my ($rc, $out, $err) = run_client('sdk', {ANTHROPIC_BASE_URL => base_url() . '/api',
                                          ANTHROPIC_API_KEY => $k->{apiKey}},
                                  $node, "$dir/sdk.mjs");
is($rc, 0, 'the SDK script ran') or diag($err);
my $sdk = json_decode($out) || {};
my $msg = 'Hello from the mock upstream.';
my @events = qw(message_start content_block_start content_block_delta content_block_delta
                content_block_delta content_block_stop message_delta message_stop);

my $c = $sdk->{create} // {};
is("$c->{text}|$c->{stop_reason}", "$msg|end_turn", 'messages.create: the answer');
is("$c->{usage}{input_tokens}/$c->{usage}{output_tokens}", '11/7', 'messages.create: its usage');
my $s = $sdk->{stream} // {};
is(join(' ', grep { $_ ne 'ping' } @{$s->{events} // []}), "@events",
   'messages.stream: every event, in order');
is("$s->{text}|$s->{stop_reason}", 'word1 word2 word3 |end_turn',
   'messages.stream: the final message');
is("$s->{usage}{input_tokens}/$s->{usage}{output_tokens}", '13/5', 'messages.stream: its usage');
my $cs = $sdk->{create_stream} // {};
is(join(' ', grep { $_ ne 'ping' } @{$cs->{events} // []}) . "|$cs->{text}",
   "@events|word1 word2 word3 ", 'messages.create with stream: true');
is($sdk->{beta_create}{text}, $msg, 'beta.messages.create');
is($sdk->{count_tokens}{input_tokens}, 17, 'messages.countTokens');
is(join(' ', @{$sdk->{models_list}{ids} // []}),
   'claude-sonnet-4-20250514 claude-3-5-haiku-20241022', 'models.list, every page');
is("$sdk->{models_retrieve}{type} $sdk->{models_retrieve}{id} $sdk->{models_retrieve}{display_name}",
   'model claude-sonnet-4-20250514 Claude Sonnet 4', 'models.retrieve');
my $nf = $sdk->{models_retrieve_unknown} // {};
my $nf_err = ref $nf->{body}{error} eq 'HASH' ? $nf->{body}{error}{type} : $nf->{body}{error};
is("$nf->{status} $nf_err", '404 not_found_error',
   'models.retrieve of an unknown model: the upstream\'s 404 reaches the SDK as NotFoundError');
my $uk = $sdk->{unknown_key} // {};
is("$uk->{status} $uk->{body}{error} / $uk->{body}{message}",
   '401 Invalid API key / API key not found', 'a key the relay does not know: the SDK gets the 401');

my ($seen, $entries) = upstream_seen();
# beta.messages.create too goes to plain /v1/messages: this SDK keeps its
# beta mark out of the URL (Claude Code's older SDK adds ?beta=true)
my @sdk_calls = ((('POST /v1/messages') x 4), 'POST /v1/messages/count_tokens', 'GET /v1/models',
                 'GET /v1/models/claude-sonnet-4-20250514', 'GET /v1/models/no-such-model');
is(join("\n", sort @$seen), join("\n", sort @sdk_calls),
   'the upstream saw the 8 SDK calls of the known key, and nothing of the unknown one');
push @endpoints, @$seen;
credentials_ok($entries, $k->{apiKey}, 'SDK');
is(scalar(grep { ($_->{headers}{'anthropic-version'} // '') =~ /^\d{4}-\d\d-\d\d$/ } @$entries), 8,
   'the SDK\'s anthropic-version header reached the upstream');
my $tool = grep { ($_->{body} // '') =~ /"name":"get_weather"/ } @$entries;
is($tool, 2, 'the tools of messages.stream and countTokens reached the upstream');
ok(defined wait_until(10, sub { (usage_of($k->{id})->{totalRequests} // 0) >= 8 }),
   'the relay counted the SDK\'s requests');
my $u = usage_of($k->{id});
is("$u->{totalRequests} $u->{totalInputTokens}/$u->{totalOutputTokens}",
   '8 ' . (11 + 13 + 3 + 2) . '/' . (7 + 5 + 2 + 1),
   'usage:{id}: 8 requests; the tokens of the four messages calls, none for countTokens');
is(leases($k->{id}), 0, 'no slot of the SDK key is left in use');

# --- Claude Code -------------------------------------------------------------
my $ck = make_key(name => 'claude code', limit => 2);
mock_clear();
my $cc_env = {
    ANTHROPIC_BASE_URL => base_url() . '/api',
    ANTHROPIC_API_KEY => $ck->{apiKey},
    # nothing but the conversation: no telemetry, updates, error reports or
    # other background traffic (there is no internet here anyway)
    DISABLE_TELEMETRY => 1,
    DISABLE_AUTOUPDATER => 1,
    DISABLE_ERROR_REPORTING => 1,
    DISABLE_BUG_COMMAND => 1,
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC => 1,
};
($rc, $out, $err) = run_client('claude-code', $cc_env, $claude, '-p', 'say hello',
                               '--output-format', 'json');
is($rc, 0, 'claude -p exited 0') or diag("stdout: $out\nstderr: $err");
my $cc = json_decode($out) || {};
is(($cc->{type} // '') . ' ' . ($cc->{subtype} // '') . ' ' . ($cc->{is_error} ? 'error' : 'ok'),
   'result success ok', 'Claude Code reports success');
like($cc->{result} // '', qr/^\s*word1 word2 word3\s*$/, 'Claude Code prints the mock\'s answer');
is("$cc->{usage}{input_tokens}/$cc->{usage}{output_tokens}", '25/10',
   'Claude Code read the usage of the stream');

($seen, $entries) = upstream_seen();
my @cc_msgs = grep { $_->{uri} eq '/v1/messages' } @$entries;
ok(@cc_msgs >= 1, 'Claude Code\'s requests reached the upstream: ' . scalar(@$entries));
push @endpoints, @$seen;
credentials_ok($entries, $ck->{apiKey}, 'Claude Code');
is(scalar(grep { ($_->{query} // '') eq 'beta=true' } @cc_msgs), scalar(@cc_msgs),
   'Claude Code sends its messages with ?beta=true');
my @streamed = grep { $_->{stream} } @cc_msgs;
ok(@streamed >= 1, 'Claude Code streams its answer');
ok((grep { ($_->{body} // '') =~ /"tools":\[\{/ } @streamed) >= 1,
   'its request carries its tools, and the relay passed them on');
ok((grep { ($_->{headers}{'anthropic-beta'} // '') ne '' } @cc_msgs) == @cc_msgs,
   'its anthropic-beta header reached the upstream');
ok(defined wait_until(10, sub { (usage_of($ck->{id})->{totalRequests} // 0) >= @$entries }),
   'the relay counted Claude Code\'s requests');
$u = usage_of($ck->{id});
my $n = @cc_msgs;
is("$u->{totalRequests} $u->{totalInputTokens}/$u->{totalOutputTokens}",
   scalar(@$entries) . ' ' . (25 * $n) . '/' . (10 * $n),
   "usage:{id}: each request counted, the tokens of its $n messages call(s)");
like(redis('HGET', "apikey:$ck->{id}", 'lastUsedAt'), qr/^\d{4}-\d\d-\d\dT/,
     'the key\'s lastUsedAt is set');
is(leases($ck->{id}), 0, 'no slot of the Claude Code key is left in use');

# --- what both clients need of the relay ---------------------------------------
my %distinct = map { $_ => 1 } @endpoints;
diag("endpoints the clients used (method, path below /api, query):\n  "
     . join("\n  ", sort keys %distinct));
my @outside = grep { my $p = $_; $p =~ s/\?.*//; !grep { $p =~ $_ } @allowed } sort keys %distinct;
is("@outside", '', 'every endpoint the clients used is on the default allow-list');
ok(scalar(keys %distinct) >= 6, 'and the list covers every kind of call made');

# the mock's model endpoint itself (straight, no relay): the shapes the SDK reads
my @up = ('x-api-key' => $ENV{RELAY_TEST_UPSTREAM_KEY});
my $r = http_get('/plain/v1/models/claude-3-5-haiku-20241022', @up);
is($r->code . ' ' . $r->decoded_content,
   '200 {"type":"model","id":"claude-3-5-haiku-20241022","display_name":"Claude Haiku 3.5",'
   . '"created_at":"2024-10-22T00:00:00Z"}', 'mock: GET /v1/models/{id}');
is(http_get('/plain/v1/models/x/y', @up)->code, 404, 'mock: a path below a model id is no model');
is(http_post('/plain/v1/models/claude-3-5-haiku-20241022', '{}', @up)->code, 405,
   'mock: a model is only read');
