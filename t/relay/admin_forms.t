# The admin's HTML pages over HTTP: forms with CSRF tokens, errors beside the
# fields, escaping, the key shown once, live counts, and Chinese pages.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;

plan tests => 46, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';

sub key_count { return scalar grep { !/hash_map/ } redis_lines('--scan', '--pattern', 'apikey:*') }

is(admin('GET', '/relay-admin/', undef, Authorization => undef)->code, 401,
   'the admin asks for credentials');

my $r = admin('GET', '/relay-admin/new');
is($r->code, 200, 'the create form');
my $csrf = csrf_of($r->decoded_content);
ok($csrf, 'the form carries a CSRF token');
like($r->decoded_content, qr/placeholder="0 or empty = unlimited"/, 'the limit placeholder says so');
is($r->header('X-Frame-Options'), 'DENY', 'X-Frame-Options: DENY');
like($r->header('Content-Security-Policy') // '', qr/script-src 'self'/, 'a CSP without inline script');
unlike($r->decoded_content, qr/<script>/, 'no inline script in the page');

# forged posts change nothing
my $n0 = key_count();
$r = post_form('/relay-admin/new', name => 'no token');
is($r->code, 403, 'a POST without the token: 403');
$r = post_form('/relay-admin/new', name => 'wrong token', csrf => 'f' x 64);
is($r->code, 403, 'a POST with a wrong token: 403');
$r = admin('POST', '/relay-admin/new', form_body(name => 'cross-site', csrf => $csrf),
           'Content-Type' => 'application/x-www-form-urlencoded', Origin => 'http://evil.example');
is($r->code, 403, 'a POST from another origin: 403, even with a token');
$r = admin('POST', '/relay-admin/new', form_body(name => 'cross-site', csrf => $csrf),
           'Content-Type' => 'application/x-www-form-urlencoded',
           Referer => 'http://evil.example/page');
is($r->code, 403, 'a POST referred by another site: 403');
is(key_count(), $n0, 'no forged POST wrote anything');

# bad input: the form comes back with values kept and messages beside fields
$r = post_form('/relay-admin/new', csrf => $csrf, name => '', description => 'kept text',
               tokenLimit => '12', concurrencyLimit => '-3', expiresAt => '2001-02-03');
is($r->code, 400, 'bad input: 400');
my $html = $r->decoded_content;
like($html, qr/id="name-error">Required\./, 'empty name: message beside the field');
like($html, qr/concurrencyLimit-error">A whole number/, 'negative limit: message beside the field');
like($html, qr/expiresAt-error">This date has already passed/, 'past expiry: message');
like($html, qr/kept text/, 'the description is kept');
like($html, qr/name="tokenLimit" type="text" value="12"/, 'the token limit is kept');
$r = post_form('/relay-admin/new', csrf => $csrf, name => 'n' x 101);
like($r->decoded_content, qr/name-error">At most 100 characters/, 'a name over 100 characters');
$r = post_form('/relay-admin/new', csrf => $csrf, name => 'ok', tokenLimit => 'abc');
like($r->decoded_content, qr/tokenLimit-error">A whole number/, 'a non-numeric limit');
is(key_count(), $n0, 'nothing was written for bad input');

# create with a hostile name: shown once, escaped everywhere
my $evil = '<script>alert(1)</script>';
$r = post_form('/relay-admin/new', csrf => $csrf, name => $evil, description => '"quoted" & <b>',
               concurrencyLimit => '3', tokenLimit => '');
is($r->code, 201, 'a valid form creates the key');
$html = $r->decoded_content;
my ($key) = $html =~ /value="(cr_[0-9a-f]{64})"/;
ok($key, 'the new key is shown in full');
like($html, qr/it will not be shown again/, 'with the warning that it is shown once');
like($html, qr/data-copy="new-key"/, 'and a copy button');
unlike($html, qr/<script>alert/, 'the name is escaped on the created page');
is(key_count(), $n0 + 1, 'one key written');
my ($id) = grep { redis('HGET', "apikey:$_", 'name') eq $evil }
           map { s/^apikey://r } grep { !/hash_map/ } redis_lines('--scan', '--pattern', 'apikey:*');
ok($id, 'stored under its name');
is(redis('HGET', "apikey:$id", 'createdBy'), $ENV{RELAY_TEST_ADMIN_USER}, 'createdBy recorded');

$r = admin('GET', '/relay-admin/');
$html = $r->decoded_content;
like($html, qr/&lt;script&gt;alert\(1\)&lt;\/script&gt;/, 'the list shows the name as text');
unlike($html, qr/<script>alert/, 'and never as markup');
unlike($html, qr/\Q$key\E/, 'the list never shows the whole key');
like($html, qr/<code>cr_[0-9a-f]{4}\x{2026}[0-9a-f]{4}<\/code>|<code>cr_[0-9a-f]{4}\xe2\x80\xa6[0-9a-f]{4}<\/code>/,
     'it shows the preview');

# edit the concurrency limit in the form; it applies to the next request
$r = admin('GET', "/relay-admin/keys/$id/edit");
like($r->decoded_content, qr/name="name" type="text" value="&lt;script&gt;[^"]*" maxlength="100" required>/,
     'the edit form shows the name, escaped, to edit');
$r = post_form("/relay-admin/keys/$id/edit", csrf => csrf_of($r->decoded_content),
               tokenLimit => '', concurrencyLimit => '1', isActive => 'true');
is($r->code, 303, 'saving the edit form redirects to the list');
my $hold = raw_request('POST', '/api/v1/messages', $msg, 'x-api-key' => $key,
                       'x-mock-hold-ms' => 3000);
wait_until(3, sub { leases($id) == 1 });
like(admin('GET', '/relay-admin/')->decoded_content,
     qr/data-id="\Q$id\E".*?class="inflight" data-limit="1">1 \/ 1</s,
     'the list shows the live in-flight count against the new limit');
is(http_post('/api/v1/messages', $msg, 'x-api-key' => $key)->code, 429,
   'a second request meets the limit set in the form');
close $hold;

# disable and enable from the list
$r = post_form("/relay-admin/keys/$id/toggle", csrf => $csrf, active => 'false');
is($r->code, 303, 'disable button');
is(http_post('/api/v1/messages', $msg, 'x-api-key' => $key)->code, 401, 'disabled key refused');
post_form("/relay-admin/keys/$id/toggle", csrf => $csrf, active => 'true');

# Chinese
my $free = make_key(name => 'unlimited one', limit => 0);
$r = admin('GET', '/relay-admin/', undef, 'Accept-Language' => 'zh-CN,zh;q=0.9,en;q=0.5');
like($r->decoded_content, qr/lang="zh-Hans"/, 'Accept-Language zh gives the Chinese page');
like($r->decoded_content, qr/0 \/ \x{65e0}\x{9650}\x{5236}|0 \/ 无限制/, 'unlimited reads as the Chinese word');
$r = admin('GET', '/relay-admin/', undef, 'Accept-Language' => 'en-US,en;q=0.9,zh;q=0.2');
like($r->decoded_content, qr/0 \/ unlimited/, 'English preferred: unlimited');

# static assets and methods
$r = admin('GET', '/relay-admin/static/admin.css');
like($r->header('Content-Type') // '', qr/text\/css/, 'the stylesheet is served');
is(admin('GET', '/relay-admin/static/../../etc/passwd')->code, 404, 'no other file is served');
is(admin('PUT', '/relay-admin/', 'x')->code, 405, 'PUT on a page: 405');

# delete with a confirmation step
$r = admin('GET', "/relay-admin/keys/$id/delete");
$r = post_form("/relay-admin/keys/$id/delete", csrf => csrf_of($r->decoded_content));
is($r->code . redis('EXISTS', "apikey:$id"), '3030', 'confirmed delete removes the key');
