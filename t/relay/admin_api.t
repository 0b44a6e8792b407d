# The admin's JSON API end to end: create, list, read, edit, disable, delete,
# every error case, and that an edit applies to the very next relayed request.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;

plan tests => 48, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';

# a fingerprint of every apikey:* record, to prove a refused call wrote nothing
sub store_state {
    my @names = sort grep { /^apikey:/ } redis_lines('--scan', '--pattern', 'apikey:*');
    return join "\n", map { my $n = $_; join '|', $n, sort(redis_lines('HGETALL', $n)) } @names;
}

my $r = admin('GET', '/relay-admin/api/keys', undef, Authorization => undef);
is($r->code, 401, 'no credentials: 401 from Apache');

# create
my ($res, $b) = admin_json('POST', '/relay-admin/api/keys',
    {name => 'api team', description => 'made by the API', tokenLimit => 1000,
     concurrencyLimit => 2, expiresAt => undef});
is($res->code, 201, 'POST creates: 201');
ok($b->{success}, 'success true');
like($b->{data}{apiKey} // '', qr/^cr_[0-9a-f]{64}$/, 'the key is returned once');
my $id = $b->{data}{id};
my $key = $b->{data}{apiKey};
like($id // '', qr/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
     'the id is a v4 UUID');
is($b->{data}{createdBy}, $ENV{RELAY_TEST_ADMIN_USER}, 'createdBy is the authenticated user');
is(redis('HGET', "apikey:$id", 'concurrencyLimit'), '2', 'stored concurrencyLimit');
is(redis('HGET', 'apikey:hash_map', redis('HGET', "apikey:$id", 'apiKey')), $id,
   'hash map entry written');
for my $h (qw(Cache-Control X-Content-Type-Options X-Frame-Options Content-Security-Policy)) {
    ok(defined $res->header($h), "$h header is set");
}
is($res->header('Cache-Control'), 'no-store', 'Cache-Control: no-store');
unlike($res->header('Content-Security-Policy') // '', qr/unsafe-inline/, 'CSP allows no inline script');

is(http_post('/api/v1/messages', $msg, 'x-api-key' => $key)->code, 200,
   'the new key relays a request');

# list and read
($res, $b) = admin_json('GET', '/relay-admin/api/keys');
is($res->code, 200, 'GET list: 200');
my ($entry) = grep { $_->{id} eq $id } @{ $b->{data} || [] };
ok($entry && exists $entry->{currentConcurrency}, 'list entries carry currentConcurrency');
ok($res->decoded_content !~ /"apiKey"/ && $res->decoded_content !~ /cr_[0-9a-f]{64}/,
   'the list holds no hash and no key');
($res, $b) = admin_json('GET', "/relay-admin/api/keys/$id");
is($b->{data}{name}, 'api team', 'GET one key');

# edit: the limit applies to the next request
($res, $b) = admin_json('PUT', "/relay-admin/api/keys/$id", {concurrencyLimit => 1});
is($res->code, 200, 'PUT concurrencyLimit: 200');
is($b->{data}{concurrencyLimit}, 1, 'the answer shows the new limit');
is(redis('HGET', "apikey:$id", 'updatedBy'), $ENV{RELAY_TEST_ADMIN_USER}, 'updatedBy recorded');
my $hold = raw_request('POST', '/api/v1/messages', $msg, 'x-api-key' => $key,
                       'x-mock-hold-ms' => 3000);
wait_until(3, sub { leases($id) == 1 });
($res, $b) = admin_json('GET', "/relay-admin/api/keys/$id");
is($b->{data}{currentConcurrency}, 1, 'the API shows the live in-flight count');
$r = http_post('/api/v1/messages', $msg, 'x-api-key' => $key);
is($r->code . ' ' . (json_decode($r->decoded_content) || {})->{concurrencyLimit}, '429 1',
   'the very next request meets the new limit of 1');
close $hold;

($res) = admin_json('PUT', "/relay-admin/api/keys/$id", {isActive => JSON::PP::false()});
is($res->code, 200, 'PUT isActive false');
is((json_decode(http_post('/api/v1/messages', $msg, 'x-api-key' => $key)->decoded_content) || {})->{message},
   'API key is disabled', 'a disabled key is refused at once');
admin_json('PUT', "/relay-admin/api/keys/$id", {isActive => JSON::PP::true()});

# errors change nothing
my $before = store_state();
($res, $b) = admin_json('PUT', "/relay-admin/api/keys/$id", {createdBy => 'mallory'});
is("$res->{_rc} " . ($b->{field} // ''), '400 createdBy', 'PUT of a field that cannot change: 400 naming it');
($res, $b) = admin_json('PUT', "/relay-admin/api/keys/$id", {concurrencyLimit => -1});
is("$res->{_rc} $b->{field}", '400 concurrencyLimit', 'negative limit: 400');
($res, $b) = admin_json('PUT', "/relay-admin/api/keys/$id", {tokenLimit => 'lots'});
is("$res->{_rc} $b->{field}", '400 tokenLimit', 'non-numeric limit: 400');
($res, $b) = admin_json('PUT', "/relay-admin/api/keys/$id", {isActive => 'yes'});
is($res->code, 400, 'isActive not a boolean: 400');
($res, $b) = admin_json('PUT', "/relay-admin/api/keys/$id", '{"tokenLimit": 5');
is($res->code, 400, 'broken JSON: 400');
like($b->{error} // '', qr/JSON/, 'and the error says so');
$res = admin('PUT', "/relay-admin/api/keys/$id", 'tokenLimit=5',
             'Content-Type' => 'application/x-www-form-urlencoded');
is($res->code, 415, 'a form body: 415');
($res, $b) = admin_json('POST', '/relay-admin/api/keys', {name => 'x', permissions => 'all'});
is("$res->{_rc} $b->{field}", '400 permissions', 'unknown field on create: 400 naming it');
($res, $b) = admin_json('POST', '/relay-admin/api/keys', {description => 'no name'});
is("$res->{_rc} $b->{field}", '400 name', 'missing name: 400');
($res, $b) = admin_json('POST', '/relay-admin/api/keys', {name => 'n' x 101});
is("$res->{_rc} $b->{field}", '400 name', 'name over 100 characters: 400');
($res, $b) = admin_json('POST', '/relay-admin/api/keys', {name => 'x', expiresAt => '2001-01-01'});
is("$res->{_rc} $b->{field}", '400 expiresAt', 'past expiry: 400');
($res, $b) = admin_json('POST', '/relay-admin/api/keys', {name => 'x', description => 'd' x 501});
is("$res->{_rc} $b->{field}", '400 description', 'description over 500 characters: 400');
($res) = admin_json('POST', '/relay-admin/api/keys',
                    '{"name":"big","description":"' . ('a' x 70000) . '"}');
is($res->code, 413, 'a body over 64 KiB: 413');
($res) = admin_json('POST', '/relay-admin/api/keys', {name => 'forged'},
                    Origin => 'http://evil.example');
is($res->code, 403, 'a foreign Origin: 403');
is(store_state(), $before, 'none of the refused calls changed anything in Redis');

($res) = admin_json('GET', '/relay-admin/api/keys/not-a-uuid');
is($res->code, 404, 'a non-UUID id: 404');
($res) = admin_json('GET', '/relay-admin/api/keys/00000000-0000-4000-8000-000000000000');
is($res->code, 404, 'an unknown id: 404');
($res) = admin_json('PATCH', "/relay-admin/api/keys/$id", {tokenLimit => 1});
is($res->code, 405, 'PATCH: 405');

# delete removes the key, its hash-map entry and its leases
my $hash = redis('HGET', "apikey:$id", 'apiKey');
($res, $b) = admin_json('DELETE', "/relay-admin/api/keys/$id");
is($res->code, 200, 'DELETE: 200');
is(redis('EXISTS', "apikey:$id") . redis('HEXISTS', 'apikey:hash_map', $hash)
   . redis('EXISTS', "concurrency:$id"), '000', 'key, hash-map entry and leases are gone');
is(http_post('/api/v1/messages', $msg, 'x-api-key' => $key)->code, 401,
   'a deleted key is refused');
($res) = admin_json('DELETE', "/relay-admin/api/keys/$id");
is($res->code, 404, 'deleting it again: 404');
