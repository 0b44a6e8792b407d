# relay-keys and the admin share one key store: the same create, edit,
# disable, delete and list cases run through the admin's JSON API and through
# relay-keys must leave the same records in Redis (field by field, but for the
# fields that name the key itself or a moment) and be listed alike; both
# refuse a create whose id or key hash is taken (the random bytes forced by
# an LD_PRELOAD shim), call isActive "yes" disabled and a past expiresAt
# expired as the relay does, and list in a few round trips whatever the
# number of keys. relay-keys reaches Redis through a unix socket and through
# Sentinel.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use JSON::PP ();
use POSIX ();

plan tests => 70, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $user = $ENV{RELAY_TEST_ADMIN_USER};
my $run = "$ENV{RELAY_TEST_STAGE}/run/keystore_same";
mkdir $run;
chmod 0755, $run;

my %pidfiles;        # redis-server and sentinel processes this test started
my $shim_httpd;      # the httpd whose random bytes the test sets
my $shim_wrapper;    # how that httpd is started and stopped
my $saved_port = $RelayTest::PORT;

END {
    local $?;
    $RelayTest::PORT = $saved_port;
    if ($shim_httpd) {
        local $RelayTest::HTTPD = $shim_wrapper;
        stop_httpd($shim_httpd);
    }
    for my $pf (values %pidfiles) {
        open my $fh, '<', $pf or next;
        chomp(my $pid = <$fh> // '');
        close $fh;
        kill 'TERM', $pid if $pid =~ /^\d+$/;
    }
}

# Run relay-keys with extra environment (undef deletes a variable); returns
# (exit code, stdout, stderr).
sub rk {
    my ($env, @args) = @_;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        for my $k (keys %$env) {
            if (defined $env->{$k}) { $ENV{$k} = $env->{$k} } else { delete $ENV{$k} }
        }
        open STDOUT, '>', "$run/rk.out" or POSIX::_exit(126);
        open STDERR, '>', "$run/rk.err" or POSIX::_exit(126);
        { no warnings 'exec'; exec $ENV{RELAY_KEYS}, @args; }
        POSIX::_exit(127);
    }
    waitpid $pid, 0;
    return ($? >> 8, slurp("$run/rk.out"), slurp("$run/rk.err"));
}

# relay-keys against the test Redis; dies unless it exits 0; returns stdout.
sub rk_ok {
    my ($rc, $out, $err) = rk({}, @_);
    die "relay-keys @_ failed ($rc): $err" if $rc != 0;
    return $out;
}

# A key's record as Redis holds it (every field).
sub record {
    my ($id, @cli) = @_;
    my $out = @cli ? `redis-cli @cli HGETALL apikey:$id` : redis('HGETALL', "apikey:$id") . "\n";
    chomp $out;
    return {split /\n/, $out, -1};
}

# The fields that must agree: all but the key's own identity and the moments.
my @own = qw(id createdAt updatedAt apiKey keyPreview createdBy);
sub comparable {
    my %h = %{ record(shift) };
    delete @h{@own};
    return \%h;
}

# The same change through both front ends leaves the same records.
sub same_records {
    my ($a_id, $c_id, $what) = @_;
    my ($ra, $rc) = (record($a_id), record($c_id));
    is(join(',', sort keys %$ra), join(',', sort keys %$rc),
       "$what: both records hold the same fields");
    is_deeply(comparable($c_id), comparable($a_id), "$what: and the same values, field by field")
        or diag(explain({admin => comparable($a_id), cli => comparable($c_id)}));
}

# A key as the admin API and as relay-keys show it: [status, currentConcurrency].
sub admin_view {
    my $id = shift;
    my (undef, $b) = admin_json('GET', "/relay-admin/api/keys/$id");
    return [$b->{data}{status} // '-', $b->{data}{currentConcurrency} // '-'];
}
sub cli_view {
    my $id = shift;
    my $k = json_decode(rk_ok('show', $id, '--json')) || {};
    return [$k->{status} // '-', $k->{currentConcurrency} // '-'];
}

# --- create, edit, disable: the same cases through both -------------------------
my %spec = (name => 'same key', description => "twin\twritten twice",
            tokenLimit => 1000, concurrencyLimit => 3, expiresAt => '2999-12-31');
my ($res, $b) = admin_json('POST', '/relay-admin/api/keys', \%spec);
is($res->code, 201, 'admin API creates the key');
my $a_id = $b->{data}{id};
my $a_key = $b->{data}{apiKey};
my $c = json_decode(rk_ok('create', '--json', '--name', $spec{name}, '--description',
                          $spec{description}, '--token-limit', 1000, '--concurrency-limit', 3,
                          '--expires', '2999-12-31', '--by', $user)) || {};
my $c_id = $c->{id};
my $c_key = $c->{apiKey};
ok($c_id && $c_key, 'relay-keys creates its twin');
same_records($a_id, $c_id, 'create');
is(redis('HGET', 'apikey:hash_map', record($a_id)->{apiKey}) . ' '
   . redis('HGET', 'apikey:hash_map', record($c_id)->{apiKey}), "$a_id $c_id",
   'create: both write the hash map entry');

($res) = admin_json('PUT', "/relay-admin/api/keys/$a_id", {tokenLimit => 5, concurrencyLimit => 0});
is($res->code, 200, 'admin API edits the limits');
rk_ok('edit', $c_id, '--token-limit', 5, '--concurrency-limit', 0, '--by', $user);
same_records($a_id, $c_id, 'edit');

($res) = admin_json('PUT', "/relay-admin/api/keys/$a_id", {isActive => JSON::PP::false()});
is($res->code, 200, 'admin API disables the key');
my ($rc, $out, $err) = rk({}, 'disable', $c_id, '--by', $user);
is($rc, 0, 'relay-keys disables its twin, recording who') or diag($err);
same_records($a_id, $c_id, 'disable');

admin_json('PUT', "/relay-admin/api/keys/$a_id", {isActive => JSON::PP::true()});
rk_ok('enable', $c_id, '--by', $user);
same_records($a_id, $c_id, 'enable');

# relay-keys records who changed a key even when not told: its own name
rk_ok('disable', $c_id);
is(redis('HGET', "apikey:$c_id", 'updatedBy'), 'relay-keys',
   'relay-keys without --by records updatedBy relay-keys');
rk_ok('enable', $c_id, '--by', $user);

# --- both list the same ------------------------------------------------------------
# a live lease on one key, an older relay's plain counter on the other
my ($sec) = redis_lines('TIME');
redis('ZADD', "concurrency:$a_id", ($sec + 300) * 1000, 'lease-a');
redis('SET', "concurrency:$c_id", 3);
sub lists {
    my (undef, $ab) = admin_json('GET', '/relay-admin/api/keys');
    my %admin = map { $_->{id} => $_ } @{ $ab->{data} || [] };
    my %cli = map { $_->{id} => $_ } @{ json_decode(rk_ok('list', '--json')) || [] };
    return (\%admin, \%cli);
}
my ($al, $cl) = lists();
for my $id ($a_id, $c_id) {
    my $which = $id eq $a_id ? 'the admin-made key' : 'the relay-keys key';
    is_deeply([map { $cl->{$id}{$_} } qw(name description status tokenLimit concurrencyLimit
                                         currentConcurrency expiresAt)],
              [map { $al->{$id}{$_} } qw(name description status tokenLimit concurrencyLimit
                                         currentConcurrency expiresAt)],
              "list: $which shows alike in both");
}
is($al->{$a_id}{currentConcurrency} . ' ' . $al->{$c_id}{currentConcurrency}, '1 3',
   'list: a live lease counts 1, a plain counter its value');
redis('DEL', "concurrency:$a_id", "concurrency:$c_id");

# --- one status rule ----------------------------------------------------------------
redis('HSET', "apikey:$_", 'isActive', 'yes') for $a_id, $c_id;
is_deeply([admin_view($a_id)->[0], cli_view($a_id)->[0], admin_view($c_id)->[0],
           cli_view($c_id)->[0]], [('disabled') x 4], 'isActive "yes" is disabled in both');
like(rk_ok('list'), qr/^\Q$c_id\E\s+same key\s+disabled\s/m, 'and in the list table');
redis('HSET', "apikey:$_", 'isActive', 'true') for $a_id, $c_id;

redis('HSET', "apikey:$a_id", 'expiresAt', '2001-01-01T00:00:00.000Z');
# hand-written and not in the stored form, yet before now as the relay compares
redis('HSET', "apikey:$c_id", 'expiresAt', '2001-1-1');
for my $pair ([$a_id, $a_key], [$c_id, $c_key]) {
    my ($id, $key) = @$pair;
    my $r = http_post('/api/v1/messages', $msg, 'x-api-key' => $key);
    my $v = redis('HGET', "apikey:$id", 'expiresAt');
    is($r->code . ' ' . ((json_decode($r->decoded_content) || {})->{message} // ''),
       '401 API key has expired', "expiresAt $v: the relay refuses the key as expired");
    is_deeply([admin_view($id)->[0], cli_view($id)->[0]], ['expired', 'expired'],
              "expiresAt $v: expired in both");
}
redis('HSET', "apikey:$_", 'expiresAt', '') for $a_id, $c_id;
is_deeply([admin_view($a_id)->[0], cli_view($c_id)->[0]], ['active', 'active'],
          'no expiry: active in both');

# --- a list costs a few round trips, not two per key ---------------------------------
my @many = map { json_decode(rk_ok('create', '--json', '--name', "many $_"))->{id} } 1 .. 30;
my $ids_re = join '|', map { quotemeta } @many;
# commands sent by a client, not those a script runs, that name the keys
sub trips {
    my $seen = shift;
    return scalar grep { !/\[\d+ lua\]/ && /$ids_re/ } split /\n/, $seen;
}
my $trips = trips(monitor_during(sub { rk_ok('list') }));
ok($trips >= 1 && $trips <= 2, "relay-keys list of 30 more keys: $trips commands name them");
$trips = trips(monitor_during(sub { admin_json('GET', '/relay-admin/api/keys') }));
ok($trips >= 1 && $trips <= 2, "admin list of the same: $trips commands name them");
rk_ok('delete', $_) for @many;

# --- delete ----------------------------------------------------------------------------
redis('ZADD', "concurrency:$_", ($sec + 300) * 1000, 'lease-x') for $a_id, $c_id;
my $a_hash = record($a_id)->{apiKey};
my $c_hash = record($c_id)->{apiKey};
($res) = admin_json('DELETE', "/relay-admin/api/keys/$a_id");
is($res->code, 200, 'admin API deletes the key');
rk_ok('delete', $c_id);
is(join(' ', map { redis('EXISTS', "apikey:$_", "concurrency:$_") } $a_id, $c_id), '0 0',
   'delete: both remove the record and the leases');
is(join(' ', map { redis('HEXISTS', 'apikey:hash_map', $_) } $a_hash, $c_hash), '0 0',
   'delete: both remove the hash map entry');
($res) = admin_json('DELETE', "/relay-admin/api/keys/$a_id");
($rc) = rk({}, 'delete', $c_id);
is($res->code . ' ' . $rc, '404 1', 'deleting again: not found in both');

# --- collisions: both refuse a taken id or key hash -------------------------------------
my $shim = "$run/fixed_random.so";
my $cflags = `apr-1-config --cppflags --includes`;
chomp $cflags;
system("cc -shared -fPIC -O2 -o $shim $ENV{RELAY_TEST_STAGE}/t/lib/fixed_random.c $cflags -ldl") == 0
    or die 'cannot build the random-bytes shim';
chmod 0755, $shim;
my $rnd_file = "$run/random";
sub set_random {
    my ($key_bytes, $id_bytes) = @_;
    open my $fh, '>', $rnd_file or die $!;
    binmode $fh;
    print $fh $key_bytes, $id_bytes;
    close $fh;
    chmod 0644, $rnd_file;
}
# what the bytes make: the key, and the id (a version-4 UUID)
sub key_of { return 'cr_' . unpack('H*', shift) }
sub id_of {
    my @b = unpack 'C16', shift;
    $b[6] = ($b[6] & 0x0f) | 0x40;
    $b[8] = ($b[8] & 0x3f) | 0x80;
    my $h = join '', map { sprintf '%02x', $_ } @b;
    return join '-', substr($h, 0, 8), substr($h, 8, 4), substr($h, 12, 4), substr($h, 16, 4),
                substr($h, 20);
}

# an httpd with the admin, whose new keys are made of the file's bytes
$shim_wrapper = "$run/httpd-fixed-random";
{
    my $orig = $RelayTest::HTTPD;
    my $text = -T $orig ? slurp($orig) : '';
    open my $wf, '>', $shim_wrapper or die $!;
    if ($text =~ /export LD_PRELOAD="([^"]*)"/) {
        # the sanitizer wrapper of make test-asan: its runtimes stay first
        $text =~ s/export LD_PRELOAD="([^"]*)"/export LD_PRELOAD="$1 $shim"/;
        $text =~ s/^(exec )/export RELAY_TEST_RANDOM_FILE=$rnd_file\n$1/m;
        print $wf $text;
    }
    else {
        print $wf "#!/bin/sh\nexport LD_PRELOAD=$shim\nexport RELAY_TEST_RANDOM_FILE=$rnd_file\n"
                . "exec $orig \"\$@\"\n";
    }
    close $wf;
    chmod 0755, $shim_wrapper;
}
{
    local $RelayTest::HTTPD = $shim_wrapper;
    $shim_httpd = start_httpd(name => 'keystore-same', extra => <<"CONF");
RelayAdminAssets $ENV{RELAY_TEST_STAGE}/htdocs
<Location /relay-admin>
    SetHandler claude-relay-admin
    RelayAdmin On
    AuthType Basic
    AuthName "Relay admin"
    AuthUserFile $ENV{RELAY_TEST_STAGE}/run/admin.htpasswd
    Require valid-user
</Location>
CONF
}
my %shim_env = (LD_PRELOAD => $shim, RELAY_TEST_RANDOM_FILE => $rnd_file);

# a fingerprint of every key record and the hash map, to prove a refusal wrote nothing
sub store_state {
    my @names = sort grep { /^apikey:/ } redis_lines('--scan', '--pattern', 'apikey:*');
    return join "\n", map { my $n = $_; join '|', $n, sort(redis_lines('HGETALL', $n)) } @names;
}
sub admin_create {
    $RelayTest::PORT = $shim_httpd->{port};
    my @r = admin_json('POST', '/relay-admin/api/keys', {name => shift});
    $RelayTest::PORT = $saved_port;
    return @r;
}

# the same through the admin's HTML form (its CSRF token taken from the form page)
sub form_create {
    my $name = shift;
    require URI::Escape;
    $RelayTest::PORT = $shim_httpd->{port};
    my $page = admin('GET', '/relay-admin/new')->decoded_content // '';
    my $csrf = $page =~ /name="csrf" value="([0-9a-f]{64})"/ ? $1 : '';
    my $r = admin('POST', '/relay-admin/new',
                  'csrf=' . $csrf . '&name=' . URI::Escape::uri_escape_utf8($name),
                  'Content-Type' => 'application/x-www-form-urlencoded', Origin => base_url());
    $RelayTest::PORT = $saved_port;
    return $r;
}
my $form_says = 'A key with this id or key hash exists already; nothing was changed. '
              . 'Please try again.';

my ($ka, $ia, $kb, $ib, $kc, $ic) = map { join '', map { chr int rand 256 } 1 .. $_ }
                                        32, 16, 32, 16, 32, 16;
set_random($ka, $ia);
($res, $b) = admin_create('collide a');
is($res->code . ' ' . ($b->{data}{id} // '') . ' ' . ($b->{data}{apiKey} // ''),
   '201 ' . id_of($ia) . ' ' . key_of($ka), 'the shimmed admin makes its key of the given bytes');
my $before = store_state();
for my $case (['the same bytes', $ka, $ia], ['a taken id', $kb, $ia],
              ['a taken key hash', $ka, $ib]) {
    my ($what, $k, $i) = @$case;
    set_random($k, $i);
    ($rc, $out, $err) = rk(\%shim_env, 'create', '--name', "collide cli");
    is("$rc|$out", '1|', "relay-keys create with $what: exit 1, nothing printed");
    like($err, qr/^relay-keys: cannot create the key: a key with this id or key hash exists already; nothing was written/,
         "relay-keys create with $what: says why");
    ($res, $b) = admin_create('collide admin');
    is($res->code . ' ' . ($b->{error} // ''),
       '409 A key with this id or key hash exists already; nothing was changed. Try again.',
       "admin create with $what: 409 saying why");
    my $r = form_create('collide form');
    ok($r->code == 409 && index($r->decoded_content // '', $form_says) >= 0,
       "admin form with $what: 409 saying why") or diag($r->code);
    is(store_state(), $before, "$what: none of them wrote anything");
}
# the other way round: relay-keys first, then the admin
set_random($kc, $ic);
my $made = json_decode((rk(\%shim_env, 'create', '--json', '--name', 'collide c'))[1]) || {};
is(($made->{id} // '') . ' ' . ($made->{apiKey} // ''), id_of($ic) . ' ' . key_of($kc),
   'the shimmed relay-keys makes its key of the given bytes');
$before = store_state();
($res, $b) = admin_create('collide admin');
is($res->code, 409, 'admin create with the bytes relay-keys used: 409');
is(form_create('collide form')->code, 409, 'the admin form too');
is(store_state(), $before, 'and nothing written');
unlink $rnd_file;
rk_ok('delete', id_of($_)) for $ia, $ic;

# --- relay-keys through a unix socket -------------------------------------------------
my $sock = "$run/redis.sock";
$pidfiles{unix} = "$run/unix-redis.pid";
system('redis-server', '--port', '0', '--unixsocket', $sock, '--unixsocketperm', '700',
       '--save', '', '--appendonly', 'no', '--dir', $run, '--daemonize', 'yes',
       '--pidfile', $pidfiles{unix}, '--logfile', "$run/unix-redis.log") == 0
    or die 'cannot start the unix-socket redis-server';
wait_until(5, sub { `redis-cli -s $sock PING 2>/dev/null` =~ /PONG/ })
    // die 'the unix-socket redis-server is not up';
my %unix = (RELAY_REDIS => undef);
($rc, $out, $err) = rk(\%unix, '--redis', "unix:$sock", 'create', '--json', '--name', 'on a socket',
                       '--concurrency-limit', 2);
my $u = json_decode($out) || {};
is($rc, 0, 'relay-keys --redis unix:PATH creates a key') or diag($err);
is(record($u->{id} // 'none', '-s', $sock)->{concurrencyLimit}, '2',
   'the key is in the socket Redis');
is(redis('EXISTS', "apikey:" . ($u->{id} // 'none')), '0', 'and not in the TCP one');
($rc, $out) = rk({RELAY_REDIS => "unix:$sock"}, 'list', '--json');
ok($rc == 0 && grep({ $_->{id} eq ($u->{id} // '') } @{ json_decode($out) || [] }),
   'RELAY_REDIS=unix:PATH lists it');
($rc) = rk(\%unix, '--redis', "unix:$sock", 'edit', $u->{id} // 'none', '--token-limit', 9);
is($rc . ' ' . record($u->{id} // 'none', '-s', $sock)->{tokenLimit}, '0 9',
   'edit through the socket');
($rc) = rk(\%unix, '--redis', "unix:$sock", 'delete', $u->{id} // 'none');
is($rc . ' ' . `redis-cli -s $sock DBSIZE` =~ s/\s+//gr, '0 0', 'delete through the socket');

# --- relay-keys through Sentinel --------------------------------------------------------
sub rcli {
    my ($port, @args) = @_;
    my $o = `redis-cli -h 127.0.0.1 -p $port @args 2>/dev/null`;
    chomp $o;
    return $o;
}
my $mport = free_port();
$pidfiles{master} = "$run/master.pid";
system('redis-server', '--bind', '127.0.0.1', '--port', $mport, '--save', '', '--appendonly', 'no',
       '--dir', $run, '--daemonize', 'yes', '--pidfile', $pidfiles{master},
       '--logfile', "$run/master.log") == 0 or die 'cannot start the master';
wait_until(5, sub { rcli($mport, 'PING') eq 'PONG' }) // die 'the master is not up';
my $spw = 'sentinel-pw-' . join('', map { sprintf '%02x', int rand 256 } 1 .. 6);
my ($sport, $aport, $dead) = (free_port(), free_port(), free_port());
for my $s (['sentinel', $sport, ''], ['sentinel-auth', $aport, "requirepass $spw\n"]) {
    my ($name, $port, $extra) = @$s;
    open my $fh, '>', "$run/$name.conf" or die $!;
    print $fh "port $port\nbind 127.0.0.1\ndir $run\nsentinel resolve-hostnames no\n$extra"
            . "sentinel monitor mymaster 127.0.0.1 $mport 1\n";
    close $fh;
    $pidfiles{$name} = "$run/$name.pid";
    system('redis-server', "$run/$name.conf", '--sentinel', '--daemonize', 'yes',
           '--pidfile', $pidfiles{$name}, '--logfile', "$run/$name.log") == 0
        or die "cannot start $name";
}
wait_until(10, sub { rcli($sport, 'SENTINEL', 'get-master-addr-by-name', 'mymaster') eq
                     "127.0.0.1\n$mport" }) // die 'the sentinel does not name the master';

# RELAY_REDIS of the test environment is overridden by --sentinel
($rc, $out, $err) = rk({}, '--sentinel', "127.0.0.1:$dead,127.0.0.1:$sport", '--master',
                       'mymaster', 'create', '--json', '--name', 'via sentinel');
my $s = json_decode($out) || {};
is($rc, 0, 'relay-keys --sentinel (a dead one first) --master creates a key') or diag($err);
is(rcli($mport, 'HGET', "apikey:" . ($s->{id} // 'none'), 'name'), 'via sentinel',
   'the key is in the master the sentinel names');
($rc, $out) = rk({RELAY_REDIS => undef, RELAY_REDIS_SENTINEL => "127.0.0.1:$sport",
                  RELAY_REDIS_MASTER => 'mymaster'}, 'list', '--json');
ok($rc == 0 && grep({ $_->{id} eq ($s->{id} // '') } @{ json_decode($out) || [] }),
   'RELAY_REDIS_SENTINEL and RELAY_REDIS_MASTER list it');
($rc, $out, $err) = rk({}, '--sentinel', "127.0.0.1:$sport", '--master', 'nope', 'list');
is($rc, 1, 'a master name the sentinel does not know: exit 1');
like($err, qr/no sentinel of 127\.0\.0\.1:$sport knows master 'nope'/, 'saying so');
($rc, $out, $err) = rk({}, '--sentinel', "127.0.0.1:$aport", '--master', 'mymaster', 'list');
is($rc, 1, 'a sentinel that requires a password, without it: exit 1');
like($err, qr/sentinel 127\.0\.0\.1:$aport/, 'naming the sentinel');
($rc, $out, $err) = rk({}, '--sentinel', "127.0.0.1:$aport", '--master', 'mymaster',
                       '--sentinel-password', $spw, 'delete', $s->{id} // 'none');
is($rc, 0, 'with --sentinel-password it finds the master') or diag($err);
is(rcli($mport, 'EXISTS', "apikey:" . ($s->{id} // 'none')), '0', 'and the key is deleted there');
($rc, $out, $err) = rk({RELAY_REDIS_SENTINEL_PASSWORD => $spw}, '--sentinel', "127.0.0.1:$aport",
                       '--master', 'mymaster', 'list', '--json');
is("$rc $out", "0 []\n", 'RELAY_REDIS_SENTINEL_PASSWORD works too');
($rc, $out, $err) = rk({}, '--redis', "127.0.0.1:$mport", '--sentinel', "127.0.0.1:$sport",
                       '--master', 'mymaster', 'list');
is($rc, 2, '--redis with --sentinel: usage error');
($rc, $out, $err) = rk({}, '--sentinel', "127.0.0.1:$sport", 'list');
is($rc, 2, '--sentinel without --master: usage error');
like($err, qr/--master NAME/, 'naming --master');
