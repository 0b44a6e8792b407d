# What admins of a real installation ask of the admin, through the pages, the
# JSON API and relay-keys: edit name, description and expiry; search, order
# and pages with an overview; release a key's slots; regenerate a key, after
# which the old key is refused on the very next request by every httpd child
# of every server sharing the Redis.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use POSIX ();

plan tests => 84, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $origin = base_url();
my $second;    # another relay server on the same Redis
END { local $?; stop_httpd($second) if $second }

# fields of a key's record, one HGET each (a value may hold a line break)
sub record {
    my $id = shift;
    return {map { $_ => redis('HGET', "apikey:$id", $_) }
            qw(name description expiresAt updatedAt updatedBy apiKey concurrencyLimit)};
}
sub status_of { my ($key, $port) = @_; local $RelayTest::PORT = $port; return http_post('/api/v1/messages', $msg, 'x-api-key' => $key)->code }
sub message_of {
    my $r = http_post('/api/v1/messages', $msg, 'x-api-key' => shift);
    return $r->code . ' ' . ((json_decode($r->decoded_content) || {})->{message} // '');
}
# n requests at once; returns the statuses seen, counted ("200" => 17, ...)
sub burst {
    my ($n, $key, $port) = @_;
    local $RelayTest::PORT = $port;
    my %c;
    $c{$_->{status}}++ for parallel_posts($n, '/api/v1/messages', $msg, 'x-api-key' => $key);
    return join ' ', map { "$_ x$c{$_}" } sort keys %c;
}

# --- edit name, description and expiry ----------------------------------------------
my ($res, $b) = admin_json('POST', '/relay-admin/api/keys', {name => 'to edit', concurrencyLimit => 2});
my $id = $b->{data}{id};
my $key = $b->{data}{apiKey};
($res, $b) = admin_json('PUT', "/relay-admin/api/keys/$id",
                        {name => 'edited name', description => "two\nlines", expiresAt => '2999-01-31'});
is($res->code, 200, 'API: name, description and expiry change in one PUT');
is(join('|', map { record($id)->{$_} } qw(name description expiresAt)),
   "edited name|two\nlines|2999-01-31T23:59:59.999Z", 'and are stored as given (the date at the end of its day)');
my $before = join '|', map { $_ // '' } @{ record($id) }{qw(name description expiresAt updatedAt)};
for my $case ([{name => ''}, 'name', qr/^name: Required\.$/],
              [{name => 'n' x 101}, 'name', qr/^name: At most 100 characters\.$/],
              [{name => "a\x{1b}[31m"}, 'name', qr/characters that are not allowed/],
              [{description => 'd' x 501}, 'description', qr/At most 500 characters/],
              [{expiresAt => '2001-01-01'}, 'expiresAt', qr/already passed/],
              [{expiresAt => 'soon'}, 'expiresAt', qr/YYYY-MM-DD/],
              [{expiresAt => 5}, 'expiresAt', qr/must be a string or null/],
              [{name => ['x']}, 'name', qr/must be a string/]) {
    my ($body, $field, $re) = @$case;
    ($res, $b) = admin_json('PUT', "/relay-admin/api/keys/$id", $body);
    ok($res->code == 400 && ($b->{field} // '') eq $field && ($b->{error} // '') =~ $re,
       "API: a bad $field is refused, naming it: " . ($b->{error} // $res->code));
}
is(join('|', map { $_ // '' } @{ record($id) }{qw(name description expiresAt updatedAt)}), $before,
   'none of the refused edits changed the record');
($res, $b) = admin_json('PUT', "/relay-admin/api/keys/$id", {expiresAt => undef});
is($res->code . ' [' . record($id)->{expiresAt} . ']', '200 []', 'API: expiresAt null clears the expiry');

# the form: every field editable; a field left as shown is not checked again
redis('HSET', "apikey:$id", 'expiresAt', '2001-01-01T00:00:00.000Z');
is(message_of($key), '401 API key has expired', 'a key whose expiry passed is refused');
my $page = admin('GET', "/relay-admin/keys/$id/edit")->decoded_content;
like($page, qr/<label>In flight now \(current \/ limit\)<\/label><p><span class="inflight" id="inflight-now">0 \/ 2<\/span>/,
     'the edit page labels the live in-flight count');
like($page, qr/name="expiresAt" type="date" value="2001-01-01"/, 'and shows the expiry as a date');
my $r = post_form("/relay-admin/keys/$id/edit", csrf => csrf_of($page), name => 'renamed in the form',
                  description => 'new words', tokenLimit => '0', concurrencyLimit => '2',
                  expiresAt => '2001-01-01', isActive => 'true');
is($r->code, 303, 'the form saves a new name and description beside an expiry that has passed');
is(join('|', map { record($id)->{$_} } qw(name description expiresAt)),
   'renamed in the form|new words|2001-01-01T00:00:00.000Z', 'the expiry is left as it was');
$r = post_form("/relay-admin/keys/$id/edit", csrf => csrf_of($page), name => 'renamed in the form',
               description => 'new words', tokenLimit => '0', concurrencyLimit => '2',
               expiresAt => '2999-06-30', isActive => 'true');
is($r->code . ' ' . record($id)->{expiresAt}, '303 2999-06-30T23:59:59.999Z', 'a new expiry date is saved');
is(message_of($key), '200 ', 'and the key is admitted again on the next request');
$r = post_form("/relay-admin/keys/$id/edit", csrf => csrf_of($page), name => '  ',
               description => 'x' x 501, expiresAt => '2002-02-02', isActive => 'true');
my $html = $r->decoded_content;
ok($r->code == 400 && $html =~ /id="name-error">Required\./ && $html =~ /id="description-error">At most 500 characters\./
   && $html =~ /id="expiresAt-error">This date has already passed\./, 'bad values: 400 with a message beside each field');
is(record($id)->{name}, 'renamed in the form', 'and nothing changed');
$r = admin('POST', "/relay-admin/keys/$id/edit", form_body(csrf => csrf_of($page), name => 'forged'),
           'Content-Type' => 'application/x-www-form-urlencoded', Origin => 'http://evil.example');
is($r->code . ' ' . record($id)->{name}, '403 renamed in the form', 'a forged edit: 403, nothing changed');

# relay-keys edits the same fields
my ($rc, $out) = relay_keys('edit', $id, '--name', 'cli name', '--description', 'cli words', '--by', 'ops');
is("$rc " . join('|', map { record($id)->{$_} } qw(name description updatedBy)), '0 cli name|cli words|ops',
   'relay-keys edit --name --description');
($rc) = relay_keys('edit', $id, '--name', '');
is($rc . ' ' . record($id)->{name}, '2 cli name', 'relay-keys edit --name "": usage error, nothing changed');

# --- search, order, pages, overview ----------------------------------------------------
my $tag = 'probe' . join('', map { int rand 10 } 1 .. 6);
my ($sec) = redis_lines('TIME');
my $today = POSIX::strftime('%Y-%m-%d', gmtime $sec);
# the usage of the request above is written within a second: let it land first
wait_until(10, sub { (redis('HGET', "usage:daily:$id:$today", 'requests') || 0) >= 1 });
my (undef, $ov0) = admin_json('GET', '/relay-admin/api/keys?perPage=1');
my %k;
for my $spec (['alpha', "Alpha $tag", ''], ['beta', "beta \U$tag\E", ''], ['gamma', 'gamma other', "has $tag inside"]) {
    my ($what, $name, $desc) = @$spec;
    (undef, $b) = admin_json('POST', '/relay-admin/api/keys', {name => $name, description => $desc,
                                                                 concurrencyLimit => 5});
    $k{$what} = $b->{data};
}
sub found {
    my $q = shift;
    my ($res, $b) = admin_json('GET', "/relay-admin/api/keys?$q");
    my %name_of = map { $k{$_}{id} => $_ } keys %k;
    return join ' ', map { $name_of{$_->{id}} // 'other' } @{ $b->{data} || [] };
}
is(found("search=$tag&sort=name"), 'alpha beta gamma', 'search: names and descriptions, any case; sorted by name');
is(found("search=$tag&sort=name&order=desc"), 'gamma beta alpha', 'order=desc turns the order round');
is(found('search=' . substr($k{beta}{id}, 0, 8)), 'beta', 'search by the start of the id');
is(found("search=${tag}x"), '', 'a search that matches nothing: no keys');
redis('ZADD', "concurrency:$k{gamma}{id}", $sec * 1000 + 60000, 'l1', $sec * 1000 + 60000, 'l2');
redis('ZADD', "concurrency:$k{alpha}{id}", $sec * 1000 + 60000, 'l3');
redis('HSET', "usage:daily:$k{beta}{id}:$today", 'tokens', 700, 'requests', 3);
redis('HSET', "usage:daily:$k{gamma}{id}:$today", 'tokens', 20, 'requests', 1);
redis('HSET', "apikey:$k{alpha}{id}", 'lastUsedAt', '2030-01-01T00:00:00.000Z');
is(found("search=$tag&sort=inFlight"), 'gamma alpha beta', 'sort=inFlight: most in flight first');
is(found("search=$tag&sort=tokensToday"), 'beta gamma alpha', "sort=tokensToday: most of today's tokens first");
is(found("search=$tag&sort=lastUsed"), 'alpha gamma beta', 'sort=lastUsed: most recent first, never used last (then newest)');
is(found("search=$tag&sort=created&order=asc"), 'alpha beta gamma', 'sort=created&order=asc: oldest first');
is(found("search=$tag&sort=name&perPage=2&page=2"), 'gamma', 'perPage and page');
($res, $b) = admin_json('GET', "/relay-admin/api/keys?search=$tag&perPage=2");
is("$b->{total} $b->{page} $b->{pages} $b->{perPage} $b->{sort} $b->{order}", '3 1 2 2 created desc',
   'the answer says how many match, which page of how many, and the order');
my %d = map { $_ => $b->{overview}{$_} - $ov0->{overview}{$_} } qw(keys keysInFlight inFlight requestsToday tokensToday);
is(join(' ', map { "$_=$d{$_}" } sort keys %d),
   'inFlight=3 keys=3 keysInFlight=2 requestsToday=4 tokensToday=720',
   'the overview counts the keys, those in flight, and today\'s requests and tokens across all keys');
$html = admin('GET', "/relay-admin/?search=$tag&sort=inFlight")->decoded_content;
my @rows = $html =~ /<tr data-id="([0-9a-f-]+)"/g;
is(join(' ', map { my $i = $_; (grep { $k{$_}{id} eq $i } keys %k)[0] } @rows), 'gamma alpha beta',
   'the list page shows the same search in the same order');
like($html, qr/3 keys match \x{201c}\Q$tag\E\x{201d}|3 keys match \xe2\x80\x9c\Q$tag\E\xe2\x80\x9d/, 'and says how many match');
like($html, qr/<th aria-sort="descending"><a href="[^"]*sort=inFlight&amp;order=asc[^"]*search=\Q$tag\E"/,
     'the sorted column is marked and its heading turns the order round, keeping the search');
like($html, qr/<span class="value" id="ov-in-flight">\d+<\/span>/, 'the overview stands above the list');
($rc, $out) = relay_keys('list', '--search', $tag);
is(join(' ', map { /^(\S+)/ ? ((grep { $k{$_}{id} eq $1 } keys %k)[0] // 'head') : () } split /\n/, $out),
   'head alpha beta gamma', 'relay-keys list --search: the same keys, oldest first');
($rc, $out) = relay_keys('list', '--search', "${tag}x");
is("$rc $out", "0 No relay key matches.\n", 'relay-keys list --search without a match says so');
($rc) = relay_keys('list', '--search', "a\tb");
is($rc, 2, 'relay-keys list --search with a control character: usage error');

# --- release slots -----------------------------------------------------------------------
redis('DEL', "concurrency:$_->{id}") for values %k;
($res, $b) = admin_json('POST', '/relay-admin/api/keys', {name => 'stuck', concurrencyLimit => 1});
my ($sid, $skey) = ($b->{data}{id}, $b->{data}{apiKey});
my $hold = raw_request('POST', '/api/v1/messages', $msg, 'x-api-key' => $skey, 'x-mock-hold-ms' => 4000);
ok(defined wait_until(5, sub { leases($sid) == 1 }), 'a request holds the only slot');
is(status_of($skey), 429, 'the next one is refused');
$page = admin('GET', "/relay-admin/keys/$sid/release")->decoded_content;
like($page, qr/Requests in flight now: 1 \(limit: 1\)\..*no\s+longer count against the limit until they end/s,
     'the confirmation says what releasing does to the requests in flight');
$r = admin('POST', "/relay-admin/keys/$sid/release", form_body(csrf => 'f' x 64),
           'Content-Type' => 'application/x-www-form-urlencoded', Origin => $origin);
is($r->code . ' ' . leases($sid), '403 1', 'a forged release: 403, the slot stays taken');
my $mark = length error_log();
$r = post_form("/relay-admin/keys/$sid/release", csrf => csrf_of($page));
is($r->code, 303, 'the confirmed release answers 303');
like($r->header('Location') // '', qr{/relay-admin/keys/\Q$sid\E/edit\?released=1$}, 'back to the key, saying 1 was released');
is(redis('EXISTS', "concurrency:$sid"), '0', 'concurrency:{id} is gone');
ok(defined wait_until(5, sub { substr(error_log(), $mark) =~ /admin audit: admin released the slots of key \Q$sid\E \(1 in flight, now uncounted\)/ }),
   'an audit line names the key and what was in flight');
like(admin('GET', "/relay-admin/keys/$sid/edit?released=1")->decoded_content,
     qr/<p class="notice" id="released" role="status">Slots released: 1\.<\/p>/, 'the key page confirms it');
is(status_of($skey), 200, 'the key is admitted again while the old request still runs uncounted');
close $hold;
$hold = raw_request('POST', '/api/v1/messages', $msg, 'x-api-key' => $skey, 'x-mock-hold-ms' => 4000);
wait_until(5, sub { leases($sid) == 1 });
($res, $b) = admin_json('POST', "/relay-admin/api/keys/$sid/release-slots", {});
is($res->code . ' ' . ($b->{data}{released} // '') . ' ' . leases($sid), '200 1 0', 'API: release-slots says how many it freed');
($res) = admin_json('POST', "/relay-admin/api/keys/$sid/release-slots", undef);
is($res->code, 415, 'API: release-slots without a JSON content type: 415 (no cross-site form can send it)');
($res) = admin_json('POST', "/relay-admin/api/keys/$sid/release-slots", {}, Origin => 'http://evil.example');
is($res->code, 403, 'API: release-slots from a foreign origin: 403');
($res, $b) = admin_json('POST', "/relay-admin/api/keys/$sid/release-slots", {force => 1});
is("$res->{_rc} " . ($b->{field} // ''), '400 force', 'API: release-slots with an unknown member: 400');
($res) = admin_json('GET', "/relay-admin/api/keys/$sid/release-slots");
is($res->code, 405, 'API: GET release-slots: 405');
($res) = admin_json('POST', '/relay-admin/api/keys/00000000-0000-4000-8000-000000000000/release-slots', {});
is($res->code, 404, 'API: release-slots of an unknown key: 404');
close $hold;
$hold = raw_request('POST', '/api/v1/messages', $msg, 'x-api-key' => $skey, 'x-mock-hold-ms' => 4000);
wait_until(5, sub { leases($sid) == 1 });
($rc, $out) = relay_keys('release-slots', $sid);
is("$rc $out", "0 Released 1 slot(s) of key $sid; requests still in flight run uncounted until they end.\n",
   'relay-keys release-slots');
($rc) = relay_keys('release-slots', '00000000-0000-4000-8000-000000000000');
is($rc, 1, 'relay-keys release-slots of an unknown key: exit 1');
close $hold;

# --- regenerate: the old key is refused on the very next request everywhere -------------
$second = start_httpd(name => 'keyops', children => 2);
# a key without a limit (children admit it from what they remember) and one with
# a limit of 40 (children keep its slots for the next request)
my %regen;
for my $limit (0, 40) {
    (undef, $b) = admin_json('POST', '/relay-admin/api/keys', {name => "regen $limit", concurrencyLimit => $limit,
                                                                 tokenLimit => 0});
    $regen{$limit} = {id => $b->{data}{id}, key => $b->{data}{apiKey}};
}
for my $limit (0, 40) {
    my ($kid, $old) = @{ $regen{$limit} }{qw(id key)};
    # every child of both servers has admitted the key lately
    my $warm = join ' / ', map { burst(40, $old, $_) } undef, $second->{port};
    is($warm, '200 x40 / 200 x40', "limit $limit: 40 requests at once on each server admitted");
    my $hash = record($kid)->{apiKey};
    my ($via, $new);
    if ($limit == 0) {
        ($res, $b) = admin_json('POST', "/relay-admin/api/keys/$kid/regenerate", {});
        $via = 'the API';
        $new = $b->{data}{apiKey} // '';
        is($res->code . ' ' . ($b->{data}{id} // ''), "200 $kid", 'API: regenerate answers 200 with the same id');
    }
    else {
        my $confirm = admin('GET', "/relay-admin/keys/$kid/regenerate")->decoded_content;
        like($confirm, qr/stops working on the very next request/, 'the confirmation says the old key stops at once');
        $r = post_form("/relay-admin/keys/$kid/regenerate", csrf => csrf_of($confirm));
        $via = 'the form';
        ($new) = ($r->decoded_content // '') =~ /id="new-key" type="text" readonly value="(cr_[0-9a-f]{64})"/;
        $new //= '';
        like($r->decoded_content, qr/it will not be shown again/, 'the form shows the new key once');
    }
    like($new, qr/^cr_[0-9a-f]{64}$/, "regenerated through $via: a new key");
    is(message_of($old), '401 API key not found', "limit $limit: the very next request with the old key: 401");
    is(join(' / ', map { burst(40, $old, $_) } undef, $second->{port}), '401 x40 / 401 x40',
       "limit $limit: 40 more at once on each server: all 401");
    is(join(' / ', map { burst(10, $new, $_) } undef, $second->{port}), '200 x10 / 200 x10',
       "limit $limit: the new key is admitted on both servers");
    my $nh = record($kid)->{apiKey};
    is(join(' ', redis('HGET', 'apikey:hash_map', $nh), redis('HEXISTS', 'apikey:hash_map', $hash)),
       "$kid 0", "limit $limit: the hash map names the id under the new hash only");
    is(join(' ', @{ record($kid) }{qw(concurrencyLimit name)}), "$limit regen $limit",
       "limit $limit: the id keeps its limit and name");
}
ok(defined wait_until(10, sub { (redis('HGET', "usage:$regen{0}{id}", 'totalRequests') || 0) >= 100 }),
   'and its usage (the 100 requests it relayed)');
# relay-keys regenerates too, and a forged form changes nothing
my $cid = $regen{0}{id};
my $cur = record($cid)->{apiKey};
$r = admin('POST', "/relay-admin/keys/$cid/regenerate", form_body(csrf => ''),
           'Content-Type' => 'application/x-www-form-urlencoded', Origin => $origin);
is($r->code . ' ' . (record($cid)->{apiKey} eq $cur ? 'same' : 'changed'), '403 same', 'a forged regenerate: 403, the key stays');
($rc, $out) = relay_keys('regenerate', $cid, '--json');
my $j = json_decode($out) || {};
like($j->{apiKey} // '', qr/^cr_[0-9a-f]{64}$/, 'relay-keys regenerate --json prints the new key once');
is(status_of($j->{apiKey} // 'cr_x'), 200, 'the relay-keys key relays');
($rc) = relay_keys('regenerate', '00000000-0000-4000-8000-000000000000');
is($rc, 1, 'relay-keys regenerate of an unknown key: exit 1');
($res) = admin_json('POST', '/relay-admin/api/keys/00000000-0000-4000-8000-000000000000/regenerate', {});
is($res->code, 404, 'API: regenerate of an unknown key: 404');
unlike(error_log(), qr/cr_[0-9a-f]{64}/, 'no key in the error log');

# clean up what this test made
admin_json('DELETE', "/relay-admin/api/keys/$_") for $id, $sid, (map { $_->{id} } values %k),
                                                    (map { $_->{id} } values %regen);
