# The admin against abuse: an .htaccess cannot mount it, RelayAdmin On needs a
# user Apache authenticated, security headers on httpd's own answers, numbers
# json-c reads as NaN or infinity, isActive values other than "true", the CSRF
# key kept apart from the key-hash secret, and the light live-count endpoint
# with the cap on one list.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use Digest::SHA ();
use RelayTest;

plan tests => 129, need_module 'claude_relay', 'relay_mock';

my $hdir = "$ENV{RELAY_TEST_STAGE}/t/htdocs/htaccess";

sub key_ids { return map { s/^apikey://r } grep { !/hash_map/ } redis_lines('--scan', '--pattern', 'apikey:*') }
sub key_count { return scalar(key_ids()) }
sub store_state {
    return join "\n", map { my $n = "apikey:$_"; join '|', $n, sort(redis_lines('HGETALL', $n)) }
                      sort(key_ids());
}
sub write_htaccess {
    open my $f, '>', "$hdir/.htaccess" or die "cannot write .htaccess: $!";
    print $f @_;
    close $f;
    chmod 0644, "$hdir/.htaccess";
}
# Whether the error log gains a line matching $re after byte $from (polled).
sub log_gains {
    my ($from, $re) = @_;
    return defined wait_until(10, sub { substr(error_log(), $from) =~ $re });
}
sub anon { my ($method, $path, $body, @h) = @_; return admin($method, $path, $body, Authorization => undef, @h) }
my %sec = ('X-Frame-Options' => 'DENY', 'X-Content-Type-Options' => 'nosniff',
           'Cache-Control' => 'no-store', 'Referrer-Policy' => 'same-origin');
sub has_security_headers {
    my $r = shift;
    for my $h (sort keys %sec) {
        return "$h is '" . ($r->header($h) // '(none)') . "'" if ($r->header($h) // '') ne $sec{$h};
    }
    my $csp = $r->header('Content-Security-Policy') // '';
    return "CSP is '$csp'" unless $csp =~ /frame-ancestors 'none'/ && $csp =~ /script-src 'self'/;
    return '';
}

# --- 1. where the admin is served -------------------------------------------

my $n0 = key_count();
my $state0 = store_state();

# a site whose owner may write an .htaccess (AllowOverride FileInfo) sets the
# admin handler for the whole site: no admin, at none of the admin's paths
# (its /api/ is the relay's, inherited from the main server, so the JSON API
# cannot be reached there anyway)
my $site = Apache::Test::config()->{vhosts}{relay_htaccess}{port};
my $site_origin = "http://127.0.0.1:$site";
{
    local $RelayTest::PORT = $site;
    is(anon('GET', '/')->code, 200, 'the user site answers before any .htaccess');
    write_htaccess("SetHandler claude-relay-admin\n");
    my $mark = length error_log();
    my $r = anon('GET', '/');
    is($r->code, 404, '.htaccess SetHandler claude-relay-admin: the site answers 404');
    unlike($r->decoded_content, qr/id="keys"|Signed in as|Relay keys/, 'no key list and no admin page');
    ok(log_gains($mark, qr/the admin needs RelayAdmin On in the server configuration/),
       'the error log says the admin needs RelayAdmin On in the server configuration');
    $r = anon('GET', '/new');
    is($r->code, 404, 'no create form under the .htaccess');
    my $stolen = csrf_of($r->decoded_content);
    $r = anon('POST', '/new', form_body(name => 'via htaccess', csrf => $stolen),
              'Content-Type' => 'application/x-www-form-urlencoded', Origin => $site_origin);
    is($r->code, 404, 'a form POST under the .htaccess: 404');
    is(key_count(), $n0, 'no key was created through the .htaccess');

    # RelayAdmin cannot be set from an .htaccess at all
    write_htaccess("RelayAdmin Open\nSetHandler claude-relay-admin\n");
    $mark = length error_log();
    $r = anon('GET', '/');
    is($r->code, 500, 'RelayAdmin in an .htaccess: httpd answers 500');
    ok(log_gains($mark, qr/RelayAdmin not allowed here/),
       'and logs that RelayAdmin is not allowed there');
    unlike($r->decoded_content, qr/id="keys"|Signed in as/, 'no admin page');
    is(store_state(), $state0, 'nothing in Redis changed through the .htaccess');
    unlink "$hdir/.htaccess";
    is(anon('GET', '/')->code, 200, 'the user site answers again without the .htaccess');
}
my $mark;
my $r;

# SetHandler in a <Location> without RelayAdmin: 404 with the same log line
$mark = length error_log();
$r = anon('GET', '/relay-admin-off/');
is($r->code, 404, 'SetHandler without RelayAdmin in a Location: 404');
ok(log_gains($mark, qr/not served at \/relay-admin-off\/: the admin needs RelayAdmin On/),
   'with a log line naming the path');

# RelayAdmin On with no authentication in front: 500, nothing served
$mark = length error_log();
$r = anon('GET', '/relay-admin-noauth/');
is($r->code, 500, 'RelayAdmin On without authentication: 500');
unlike($r->decoded_content, qr/id="keys"|Signed in as/, 'no key list');
ok(log_gains($mark, qr/the admin needs Apache authentication in front of it, or RelayAdmin Open/),
   'the error log says the admin needs authentication or RelayAdmin Open');
$r = anon('POST', '/relay-admin-noauth/api/keys', '{"name":"no auth"}',
          'Content-Type' => 'application/json');
is($r->code, 500, 'a JSON API POST there: 500');
$r = anon('GET', '/relay-admin-noauth/new');
is($r->code, 500, 'the create form there: 500');
is(store_state(), $state0, 'nothing in Redis changed through the refused admins');

# RelayAdmin Open alone (no SetHandler): served to anyone, as "anonymous"
$r = anon('GET', '/relay-admin-open/');
is($r->code, 200, 'RelayAdmin Open: the list is served without a login');
like($r->decoded_content, qr/Signed in as anonymous</, 'to "anonymous"');
is(anon('GET', '/relay-admin-open/static/admin.js')->code, 200, 'with its script');
my ($res, $b) = admin_json('POST', '/relay-admin-open/api/keys', {name => 'open admin key'},
                           Authorization => undef);
is($res->code, 201, 'RelayAdmin Open: the API creates a key without a login');
my $open_id = $b->{data}{id} // '';
is(redis('HGET', "apikey:$open_id", 'createdBy'), 'anonymous', 'recorded as made by anonymous');
admin_json('DELETE', "/relay-admin-open/api/keys/$open_id", undef, Authorization => undef);
is(redis('EXISTS', "apikey:$open_id"), '0', 'and deletes it');

# a bad value stops configtest with a sentence; a good one passes
my ($crc, $cout) = configtest("<Location /adm>\nRelayAdmin Maybe\n</Location>");
ok($crc != 0 && $cout =~ /RelayAdmin: 'Maybe' is not Off, On \(for users Apache has authenticated\) or Open/,
   'RelayAdmin Maybe: configtest stops with a sentence') or diag($cout);
($crc, $cout) = configtest("<Location /adm>\nRelayAdmin On\nRequire all denied\n</Location>");
is($crc, 0, 'RelayAdmin On in a Location: configtest passes') or diag($cout);

# the authenticated admin still works
is(admin('GET', '/relay-admin/')->code, 200, 'RelayAdmin On behind Basic auth: the list');
is(anon('GET', '/relay-admin/')->code, 401, 'and Apache still asks for credentials');

# --- 2. security headers on httpd's own answers -----------------------------

my $k = make_key(name => 'headers key', limit => 2);
$r = admin('PUT', '/relay-admin/', 'x');
is($r->code, 405, 'PUT on the list page: 405');
is(has_security_headers($r), '', 'the 405 carries the security headers');
$r = admin('GET', '/relay-admin/static/nothing.css');
is($r->code, 404, 'an unknown admin file: 404');
is(has_security_headers($r), '', 'the 404 carries the security headers');
$r = admin('GET', '/relay-admin/new');
$r = post_form("/relay-admin/keys/$k->{id}/toggle", csrf => csrf_of($r->decoded_content),
               active => 'false');
is($r->code, 303, 'a form POST answers 303');
is(has_security_headers($r), '', 'the 303 carries the security headers');
$r = admin('PATCH', "/relay-admin/api/keys/$k->{id}", '{}', 'Content-Type' => 'application/json');
is(has_security_headers($r), '', 'an API 405 carries them');
$r = admin('GET', '/relay-admin/static/admin.css');
is($r->header('Cache-Control'), 'max-age=300', 'the stylesheet has one Cache-Control, max-age=300');
is($r->header('X-Content-Type-Options'), 'nosniff', 'and nosniff');

# --- 3. numbers json-c reads as NaN, infinity or huge -----------------------

my $before = store_state();
for my $case (['1e400', 'concurrencyLimit'], ['-1e400', 'concurrencyLimit'],
              ['NaN', 'concurrencyLimit'], ['Infinity', 'tokenLimit'], ['-Infinity', 'tokenLimit'],
              ['1e30', 'concurrencyLimit'], ['nan', 'tokenLimit']) {
    my ($v, $field) = @$case;
    ($res, $b) = admin_json('POST', '/relay-admin/api/keys', qq({"name":"n","$field":$v}));
    is(($res->code) . ' ' . ($b->{field} // ''), "400 $field", "create with $field $v: 400 naming it");
    ($res, $b) = admin_json('PUT', "/relay-admin/api/keys/$k->{id}", qq({"$field":$v}));
    is(($res->code) . ' ' . ($b->{field} // ''), "400 $field", "edit with $field $v: 400 naming it");
}
like($b->{error} // '', qr/whole number from 0 to 2147483647/, 'the error says what is allowed');
is(store_state(), $before, 'none of them changed anything in Redis');
# under make test-asan (UBSan with float-cast-overflow) a cast of NaN is reported;
# the children write the report to the error log or to run/sanitizer
my $ub = error_log() . join '', map { slurp($_) } glob "$ENV{RELAY_TEST_STAGE}/run/sanitizer/*";
is(join("\n", grep { /relay_admin\w*\.c:\d+:\d+: runtime error/ } split /\n/, $ub), '',
   'no undefined behaviour reported in relay_admin*.c');

# --- 4. isActive other than "true" means disabled ---------------------------

my %odd = (yes => 'yes', empty => '', upper => 'TRUE', missing => undef);
my %kid;
for my $what (sort keys %odd) {
    my $key = make_key(name => "isActive $what", limit => 1);
    $kid{$what} = $key->{id};
    if (defined $odd{$what}) {
        redis('HSET', "apikey:$key->{id}", 'isActive', $odd{$what});
    }
    else {
        redis('HDEL', "apikey:$key->{id}", 'isActive');
    }
}
my $list_html = admin('GET', '/relay-admin/')->decoded_content;
my (undef, $list) = admin_json('GET', '/relay-admin/api/keys');
my %by_id = map { $_->{id} => $_ } @{ $list->{data} || [] };
my ($rc, $out) = relay_keys('list');
my (undef, $jout) = relay_keys('list', '--json');
my %cli = map { $_->{id} => $_ } @{ json_decode($jout) || [] };
for my $what (sort keys %odd) {
    my $id = $kid{$what};
    my $shown = defined $odd{$what} ? "\"$odd{$what}\"" : 'missing';
    my ($row) = $list_html =~ /(<tr data-id="\Q$id\E".*?<\/tr>)/s;
    like($row // '', qr/<span class="status disabled">/, "isActive $shown: the list shows disabled");
    like($row // '', qr/name="active" value="true"><button class="small" type="submit">Enable</,
         "isActive $shown: the list offers Enable");
    is(($by_id{$id}{status} // '') . ' ' . (($by_id{$id}{isActive} // 1) ? 'true' : 'false'),
       'disabled false', "isActive $shown: the API says disabled, isActive false");
    my ($line) = grep { /\Q$id\E/ } split /\n/, $out;
    like($line // '', qr/disabled/, "isActive $shown: relay-keys list says disabled");
    is($cli{$id}{status} // '', 'disabled', "isActive $shown: relay-keys list --json says disabled");
}

# --- 5. the CSRF key is not the key-hash secret -----------------------------

my $n1 = key_count();
my $window = int(time() / (12 * 3600));
my $old_token = Digest::SHA::hmac_sha256_hex("relay-admin-csrf\n$ENV{RELAY_TEST_ADMIN_USER}\n$window",
                                             $ENV{RELAY_TEST_SECRET});
$r = post_form('/relay-admin/new', csrf => $old_token, name => 'old csrf scheme');
is($r->code, 403, 'a token made with the raw secret (the old scheme) is refused');
is(key_count(), $n1, 'and creates nothing');
$r = admin('GET', '/relay-admin/new');
my $token = csrf_of($r->decoded_content);
isnt($token, $old_token, 'the form token differs from the raw-secret HMAC');
$r = post_form('/relay-admin/new', csrf => $token, name => 'new csrf scheme');
is($r->code, 201, 'the token from the form is accepted');
is(key_count(), $n1 + 1, 'and creates the key');

# --- 6. live counts for the ids on the page, and the cap on one list --------

my $a1 = make_key(name => 'live one', limit => 5);
my $a2 = make_key(name => 'live two', limit => 0);
my ($sec, $usec) = redis_lines('TIME');
my $now_ms = $sec * 1000 + int($usec / 1000);
redis('ZADD', "concurrency:$a1->{id}", $now_ms + 60000, 'lease-a', $now_ms + 60000, 'lease-b',
      $now_ms - 1000, 'lease-expired');
redis('ZADD', "concurrency:$a2->{id}", $now_ms + 60000, 'lease-c');
redis('HSET', "usage:$a1->{id}", 'totalTokens', 1234);
my $unknown = '00000000-0000-4000-8000-000000000000';
($res, $b) = admin_json('GET', "/relay-admin/api/inflight?ids=$a1->{id},$a2->{id},$unknown");
is($res->code, 200, 'the inflight endpoint answers 200');
my %live = map { $_->{id} => $_ } @{ $b->{data} || [] };
is($live{$a1->{id}}{currentConcurrency}, 2, 'two live leases (the expired one not counted)');
is($live{$a1->{id}}{concurrencyLimit}, 5, 'with the limit');
is($live{$a1->{id}}{totalTokens}, 1234, 'and the tokens used');
is($live{$a2->{id}}{currentConcurrency}, 1, 'one live lease on the second key');
ok(!exists $live{$unknown}, 'an unknown id is left out');
is(scalar(keys %live), 2, 'nothing else is in the answer');
unlike($res->decoded_content, qr/"name"|"apiKey"|keyPreview/, 'only counts, no key records');
is(has_security_headers($res), '', 'with the security headers');
my @many = map { sprintf '%08x-0000-4000-8000-000000000000', $_ } 1 .. 201;
($res, $b) = admin_json('GET', '/relay-admin/api/inflight?ids=' . join(',', @many));
is(($res->code) . ' ' . ($b->{field} // ''), '400 ids', '201 ids: 400 naming ids');
like($b->{error} // '', qr/At most 200 ids/, 'saying the cap');
($res, $b) = admin_json('GET', '/relay-admin/api/inflight?ids=' . join(',', @many[0 .. 199]));
is($res->code, 200, '200 ids: 200');
($res, $b) = admin_json('GET', '/relay-admin/api/inflight?ids=not-a-uuid');
is(($res->code) . ' ' . ($b->{field} // ''), '400 ids', 'a malformed id: 400 naming ids');
($res, $b) = admin_json('POST', '/relay-admin/api/inflight', '{}');
is($res->code, 405, 'POST to the inflight endpoint: 405');
is(anon('GET', "/relay-admin/api/inflight?ids=$a1->{id}")->code, 401,
   'the inflight endpoint sits behind the same login');
like(admin('GET', '/relay-admin/')->decoded_content, qr/data-live="\/relay-admin\/api\/inflight"/,
     'the list page points its live refresh at the inflight endpoint');

# more keys than one page: pages of the list, every key on exactly one of them
my $real = key_count();
redis('EVAL', <<'LUA', 0, 1100);
for i = 1, tonumber(ARGV[1]) do
  local id = string.format('%08x-0000-4000-8000-bbbbbbbbbbbb', i)
  redis.call('HSET', 'apikey:' .. id, 'id', id, 'name', 'bulk ' .. i, 'isActive', 'true',
             'createdAt', string.format('2020-01-01T00:00:%02d.000Z', i % 60),
             'concurrencyLimit', '0', 'tokenLimit', '0', 'expiresAt', '')
end
return 1
LUA
my $total = $real + 1100;
is(key_count(), $total, "$total keys in Redis");
my $newest = make_key(name => 'the newest key');
$total++;
($res, $b) = admin_json('GET', '/relay-admin/api/keys?perPage=200');
is($res->code, 200, 'the list API answers');
is(scalar @{ $b->{data} || [] }, 200, 'with a page of 200 keys');
is("$b->{total} $b->{page} $b->{perPage} $b->{pages}", "$total 1 200 " . int(($total + 199) / 200),
   'and the total, the page, its size and the number of pages');
is($b->{overview}{keys}, $total, 'the overview counts every key');
is($b->{data}[0]{id}, $newest->{id}, 'newest first: the newest key opens page 1');
my (%seen, $dups);
for my $page (1 .. $b->{pages}) {
    my (undef, $pb) = admin_json('GET', "/relay-admin/api/keys?perPage=200&page=$page");
    $dups += grep { $seen{$_->{id}}++ } @{ $pb->{data} || [] };
}
is(scalar(keys %seen) . ' ' . ($dups // 0), "$total 0", 'walking the pages lists every key once');
($res, $b) = admin_json('GET', '/relay-admin/api/keys?perPage=200&page=' . (int($total / 200) + 2));
is($res->code . ' ' . scalar @{ $b->{data} || [] }, '200 0', 'a page past the last one is empty');
$r = admin('GET', '/relay-admin/');
$list_html = $r->decoded_content;
like($list_html, qr/Keys 1\x{2013}50 of $total|Keys 1\xe2\x80\x9350 of $total/,
     'the page says which keys of how many it shows');
my $rows = () = $list_html =~ /<tr data-id=/g;
is($rows, 50, 'and has 50 rows');
my $pages = int(($total + 49) / 50);
like($list_html, qr/Page 1 of $pages<\/span><a class="next" rel="next" href="\/relay-admin\/\?sort=created&amp;order=desc&amp;perPage=50&amp;page=2">/,
     'with a link to the next page');

# list parameters are checked, and what is echoed is escaped
for my $case (['page=0', 'page'], ['page=x', 'page'], ['perPage=201', 'perPage'],
              ['perPage=0', 'perPage'], ['sort=apiKey', 'sort'], ['order=up', 'order'],
              ['search=a%0Ab', 'search'], ['search=' . ('s' x 101), 'search'],
              ['search=%FF', 'search']) {
    my ($q, $param) = @$case;
    ($res, $b) = admin_json('GET', "/relay-admin/api/keys?$q");
    is($res->code . ' ' . ($b->{field} // ''), "400 $param", "API ?$q: 400 naming $param");
    $r = admin('GET', "/relay-admin/?$q");
    ok($r->code == 400 && $r->decoded_content =~ /the value of \Q$param\E is not valid/,
       "page ?$q: 400 naming $param");
}
$r = admin('GET', '/relay-admin/?search=%3Cscript%3Ealert(1)%3C%2Fscript%3E%22');
unlike($r->decoded_content, qr/<script>alert/, 'a search is echoed escaped, never as markup');
like($r->decoded_content, qr/value="&lt;script&gt;alert\(1\)&lt;\/script&gt;&quot;"/,
     'in the search field');

redis('EVAL', <<'LUA', 0, 1100);
for i = 1, tonumber(ARGV[1]) do
  redis.call('DEL', 'apikey:' .. string.format('%08x-0000-4000-8000-bbbbbbbbbbbb', i))
end
return 1
LUA
unlike(admin('GET', '/relay-admin/')->decoded_content, qr/class="pager"/,
       'when every key fits on one page there are no page links');
