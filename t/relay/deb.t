# The Debian package installs like every other Apache module: `make deb`
# builds it (lintian finding no error) without touching the source tree;
# `apt-get install ./...deb` puts the files in place and enables nothing;
# `a2enmod claude_relay` enables it (with proxy and proxy_http) and Debian's
# own configuration still passes configtest; an httpd of the test's own,
# built from what a2enmod enabled, relays a request with a key made by the
# installed relay-keys and serves the admin's installed assets; then
# a2dismod and `apt-get purge` leave /etc/apache2, Apache's module state and
# every installed path as they were before. The system's apache2 service is
# never started, stopped or reloaded.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use Digest::SHA ();
use File::Find ();
use File::Path ();
use IO::Socket::INET ();
use MIME::Base64 ();
use RelayTest;

my $PKG = 'libapache2-mod-claude-relay';
my $src = $ENV{RELAY_TEST_SRC};
my $so = '/usr/lib/apache2/modules/mod_claude_relay.so';
my $load = '/etc/apache2/mods-available/claude_relay.load';
my $conf = '/etc/apache2/mods-available/claude_relay.conf';
my $tool = '/usr/bin/relay-keys';
# what the package installs
my @files = ($so, $load, $conf, $tool, '/usr/bin/test-concurrency',
             '/usr/share/mod_claude_relay/htdocs/admin.css',
             '/usr/share/mod_claude_relay/htdocs/admin.js',
             '/usr/share/man/man1/relay-keys.1.gz', '/usr/share/man/man1/test-concurrency.1.gz',
             "/usr/share/doc/$PKG/README.md.gz", "/usr/share/doc/$PKG/changelog.gz",
             "/usr/share/doc/$PKG/copyright");
# compared before and after: Apache's configuration and state, and the package's places
my @watch = ('/etc/apache2', '/var/lib/apache2', '/usr/lib/apache2/modules',
             '/usr/share/mod_claude_relay', "/usr/share/doc/$PKG", $tool, '/usr/bin/test-concurrency',
             '/usr/share/man/man1/relay-keys.1.gz', '/usr/share/man/man1/test-concurrency.1.gz');

# A command's exit code and its output (stdout and stderr).
sub run {
    my $cmd = join ' ', map { my $arg = $_; $arg =~ s/'/'\\''/g; "'$arg'" } @_;
    my $out = `$cmd 2>&1`;
    return ($? >> 8, $out // '');
}

# Whether dpkg has the package, installed or with its conffiles left.
sub pkg_present {
    my ($rc, $status) = run('dpkg-query', '-W', '-f=${Status}', $PKG);
    return $rc == 0 && $status !~ /not-installed/;
}

my $debian = -x '/usr/bin/apt-get' && -x '/usr/sbin/a2enmod' && -x '/usr/sbin/apache2';
plan tests => 34, need 'relay_mock',
    {'installing a package needs root' => $> == 0,
     'not a Debian system with Debian\'s apache2' => $debian,
     'make test-asan checks the module, not the package' => !$ENV{RELAY_ASAN},
     "$PKG is installed on this machine and the test would purge it" =>
         !$debian || !pkg_present(),
     "$so or $load exists outside the package (make install?) and the test would overwrite it" =>
         !(-e $so || -e $load)};

my $run = "$ENV{RELAY_TEST_STAGE}/run/deb";
mkdir $run;
chmod 0755, $run;

# Every path under the watched places: type, mode and content hash, or link target.
sub snapshot {
    my %s;
    for my $top (@_) {
        next unless -e $top || -l $top;
        File::Find::find({no_chdir => 1, wanted => sub {
            my $p = $File::Find::name;
            my @st = lstat $p or return;
            if (-l _) { $s{$p} = 'link ' . readlink $p }
            elsif (-d _) { $s{$p} = sprintf 'dir %o', $st[2] & 07777 }
            else {
                $s{$p} = sprintf 'file %o %d:%d %s', $st[2] & 07777, $st[4], $st[5],
                    Digest::SHA->new(256)->addfile($p)->hexdigest;
            }
        }}, $top);
    }
    return \%s;
}

# What differs between two snapshots, one line per path.
sub differences {
    my ($old, $new) = @_;
    my @d;
    for my $p (sort keys %{{%$old, %$new}}) {
        if (!exists $new->{$p}) { push @d, "gone: $p" }
        elsif (!exists $old->{$p}) { push @d, "new: $p" }
        elsif ($old->{$p} ne $new->{$p}) { push @d, "changed: $p ($old->{$p} -> $new->{$p})" }
    }
    return @d;
}

# The enabled modules, by name.
sub enabled_modules {
    my (undef, $out) = run('/usr/sbin/a2query', '-m');
    return {map { /^(\S+)/ ? ($1 => 1) : () } split /\n/, $out};
}

my $version = slurp("$src/VERSION");
chomp $version;
my $httpd_conf = "$run/httpd/httpd.conf";
my ($before, $mods_before);

# the private httpd, if it is running
sub stop_private {
    return unless -s "$run/httpd/httpd.pid";
    run('/usr/sbin/apache2', '-f', $httpd_conf, '-k', 'stop');
    wait_until(15, sub { !-e "$run/httpd/httpd.pid" });
}

# Puts back the links in mods-enabled and the records in /var/lib/apache2 as
# they were before (quietly when the test itself undoes what a2dismod noted).
sub restore_state {
    my $quiet = shift;
    my $now = snapshot('/etc/apache2/mods-enabled', '/var/lib/apache2');
    # links and state records that were not there: away, deepest first
    for my $p (sort { length $b <=> length $a } keys %$now) {
        next if exists $before->{$p};
        if ($now->{$p} =~ /^dir/) { rmdir $p } else { unlink $p }
        diag "cleanup: removed $p" unless $quiet;
    }
    # and those that were: back
    for my $p (sort keys %$before) {
        next if exists $now->{$p} || $p !~ m{^(/etc/apache2/mods-enabled|/var/lib/apache2)/};
        if ($before->{$p} =~ /^link (.*)/) { symlink $1, $p }
        elsif ($before->{$p} =~ /^dir/) { mkdir $p }
        elsif (open my $f, '>', $p) { close $f }
        diag "cleanup: put back $p" unless $quiet;
    }
}

# Puts back what a failed run left: the httpd, the package, the module state.
sub restore_machine {
    stop_private();
    if (pkg_present()) {
        run('/usr/sbin/a2dismod', '-q', '-f', 'claude_relay') if -e '/etc/apache2/mods-enabled/claude_relay.load';
        local $ENV{DEBIAN_FRONTEND} = 'noninteractive';
        my ($rc, $out) = run('apt-get', 'purge', '-y', '-q', '-o', 'DPkg::Lock::Timeout=600', $PKG);
        diag "cleanup: apt-get purge $PKG failed: $out" if $rc;
    }
    restore_state(0) if $before;
}

local $SIG{INT} = local $SIG{TERM} = sub { die "interrupted\n" };
my $ok = eval { main(); 1 };
my $err = $@;
restore_machine();
ok($ok, 'the test ran to its end') or diag $err;
is($before ? join("\n", differences($before, snapshot(@watch))) : 'no snapshot was taken', '',
   'afterwards /etc/apache2, Apache\'s module state and the installed paths are as before');

sub main {
    # ---- make deb -----------------------------------------------------------
    my $git = -e "$src/.git";
    my @git = ('git', '-c', 'safe.directory=*', '-C', $src, 'status', '--porcelain', '--untracked-files=all');
    my (undef, $tree_before) = $git ? run(@git) : (0, '');
    my ($rc, $out) = run('make', '-C', $src, 'deb');
    if (open my $log, '>', "$run/make-deb.log") { print $log $out; close $log }
    ok($rc == 0, 'make deb builds the package; lintian reports no error')
        or diag join "\n", grep { defined } (split /\n/, $out)[-30 .. -1];
    my (undef, $tree_after) = $git ? run(@git) : (0, '');
    is($tree_after, $tree_before, 'make deb leaves the source tree as it was (apart from build/)');
    my ($arch) = (run('dpkg', '--print-architecture'))[1] =~ /(\S+)/;
    my $deb = "$src/build/${PKG}_${version}_$arch.deb";
    ok(-f $deb, "the package is build/${PKG}_${version}_$arch.deb") or die "no package\n";

    my (undef, $fields) = run('dpkg-deb', '-f', $deb, 'Version', 'Depends');
    like($fields, qr/^Version: \Q$version\E$/m, 'its version is the VERSION file\'s');
    like($fields, qr/^Depends:.*\bapache2-api-\d{8}\b/m, 'it depends on the Apache module API');
    like($fields, qr/^Depends:.*\blibhiredis/m, 'and on the libraries the module links (shlibs)');
    my (undef, $conffiles) = run('dpkg-deb', '-I', $deb, 'conffiles');
    is(join(' ', sort split /\n/, $conffiles), "$conf $load", 'the .load and .conf are conffiles');

    # ---- install ------------------------------------------------------------
    $mods_before = enabled_modules();
    my ($debian_rc) = run('/usr/sbin/apache2ctl', '-t');    # Debian's own configuration
    $before = snapshot(@watch);
    my $copy = "$run/" . ($deb =~ s{.*/}{}r);    # a path apt's own user can read
    run('cp', $deb, $copy);
    chmod 0644, $copy;
    {
        local $ENV{DEBIAN_FRONTEND} = 'noninteractive';
        ($rc, $out) = run('apt-get', 'install', '-y', '-q', '-o', 'DPkg::Lock::Timeout=600', $copy);
    }
    ok($rc == 0, 'apt-get install ./' . ($copy =~ s{.*/}{}r)) or diag $out;
    my @missing = grep { !-e } @files;
    is("@missing", '', 'every file is in its place');
    my %owned = map { $_ => 1 } split /\n/, (run('dpkg-query', '-L', $PKG))[1];
    my @foreign = grep { !/^(new|changed): (\S+)/ || !$owned{$2} }
                  differences($before, snapshot(@watch));
    is(join("\n", @foreign), '', 'installing changed nothing but the package\'s own files');
    ok(!-e '/etc/apache2/mods-enabled/claude_relay.load' && !enabled_modules()->{claude_relay},
       'the module is not enabled by the installation');
    like(slurp($load), qr{^LoadModule claude_relay_module /usr/lib/apache2/modules/mod_claude_relay\.so$}m,
         'the .load file loads the installed module');
    ($rc, $out) = run($tool, '--version');
    is($out, "relay-keys $version\n", 'the installed relay-keys --version says the package version');

    # ---- enable it in Debian's own configuration ------------------------------
    ($rc, $out) = run('/usr/sbin/a2enmod', 'claude_relay');
    ok($rc == 0, 'a2enmod claude_relay') or diag $out;
    my $mods = enabled_modules();
    ok($mods->{claude_relay} && $mods->{proxy} && $mods->{proxy_http},
       'it is enabled, with the proxy and proxy_http it depends on');
    SKIP: {
        skip "Debian's configuration failed configtest already before the package", 2 if $debian_rc;
        ($rc, $out) = run('/usr/sbin/apache2ctl', '-t');
        ok($rc == 0 && $out =~ /Syntax OK/,
           'Debian\'s configuration passes configtest with the module enabled and its .conf unedited')
            or diag $out;
        ($rc, $out) = run('/usr/sbin/apache2ctl', '-M');
        like($out, qr/^\s*claude_relay_module \(shared\)/m, 'and loads the module');
    }

    # ---- an httpd of the test's own from what is enabled ----------------------
    my $dir = "$run/httpd";
    File::Path::make_path("$dir/logs", {mode => 0755});
    chmod 0777, "$dir/logs";
    my $secret = "$dir/relay-key-hash.secret";
    open my $sf, '>', $secret or die $!;
    print $sf 'deb-secret-' . unpack('H*', join '', map { chr int rand 256 } 1 .. 16), "\n";
    close $sf;
    chmod 0600, $secret;    # read by the parent before it drops privileges
    run('htpasswd', '-bc', "$dir/admin.htpasswd", 'admin', 'deb-admin-pw');
    chmod 0644, "$dir/admin.htpasswd";
    my $port = free_port();
    my $mock = mock_port();
    my $user = "User nobody\nGroup nogroup";
    open my $cf, '>', $httpd_conf or die $!;
    print $cf <<"CONF";
ServerRoot $dir
ServerName 127.0.0.1
# what Debian's envvars would set, for the enabled modules' .conf files
Define APACHE_RUN_DIR $dir
Define APACHE_LOCK_DIR $dir
Define APACHE_LOG_DIR $dir/logs
Define APACHE_RUN_USER nobody
Define APACHE_RUN_GROUP nogroup
DefaultRuntimeDir $dir
PidFile $dir/httpd.pid
ErrorLog $dir/logs/error_log
$user
IncludeOptional /etc/apache2/mods-enabled/*.load
IncludeOptional /etc/apache2/mods-enabled/*.conf
Listen 127.0.0.1:$port
RelayRedisServer 127.0.0.1:$ENV{RELAY_TEST_REDIS_PORT}
RelayKeyHashSecret file:$secret
<Location /api/>
    RelayEngine On
    RelayUpstreamApiKey env:RELAY_TEST_UPSTREAM_KEY
    ProxyPass http://127.0.0.1:$mock/
</Location>
<Location /relay-admin>
    RelayAdmin On
    AuthType Basic
    AuthName "Relay admin"
    AuthUserFile $dir/admin.htpasswd
    Require valid-user
</Location>
CONF
    close $cf;
    ($rc, $out) = run('/usr/sbin/apache2', '-t', '-f', $httpd_conf);
    ok($rc == 0 && $out =~ /Syntax OK/, 'apache2 -t on a configuration relaying with the package')
        or diag $out;
    ($rc, $out) = run('/usr/sbin/apache2', '-f', $httpd_conf, '-k', 'start');
    my $up = wait_until(20, sub {
        -s "$dir/httpd.pid" && IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 1) });
    ok(defined $up, 'it starts') or die "httpd did not start: $out\n" . slurp("$dir/logs/error_log");
    ok(defined wait_until(10, sub { slurp("$dir/logs/error_log") =~ m{mod_claude_relay/\Q$version\E loaded} }),
       "its error log names mod_claude_relay/$version");

    ($rc, $out) = run($tool, '--redis', "127.0.0.1:$ENV{RELAY_TEST_REDIS_PORT}", '--secret-file', $secret,
                      'create', '--name', 'deb package', '--concurrency-limit', '2', '--json');
    my $key = json_decode($out) || {};
    ok($rc == 0 && ($key->{apiKey} // '') =~ /^cr_[0-9a-f]{64}$/, 'the installed relay-keys makes a key')
        or diag $out;

    local $RelayTest::PORT = $port;
    my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}';
    my $r = http_post('/api/v1/messages', $msg, 'x-api-key' => $key->{apiKey}, 'x-mock-tag' => 'deb');
    is($r->code, 200, 'a request with it is relayed: 200');
    is((json_decode($r->decoded_content) || {})->{type}, 'message', 'with the upstream\'s answer');
    my ($start) = grep { $_->{event} eq 'start' } mock_entries('deb');
    my %h = map { lc($_) => $start->{headers}{$_} } keys %{ $start ? $start->{headers} : {} };
    is($h{'x-api-key'} // '', $ENV{RELAY_TEST_UPSTREAM_KEY}, 'the upstream got the configured credential');
    ok(defined wait_until(10, sub { (redis('HGET', "usage:$key->{id}", 'totalRequests') || 0) == 1 }),
       'the request is counted for the key in Redis');
    $r = http_post('/api/v1/messages', $msg, 'x-api-key' => 'cr_' . ('0' x 64));
    is($r->code, 401, 'an unknown key gets 401');
    $r = http_get('/relay-admin/static/admin.css',
                  Authorization => 'Basic ' . MIME::Base64::encode_base64('admin:deb-admin-pw', ''));
    ok($r->code == 200 && $r->content eq slurp("$src/htdocs/admin.css"),
       'the admin serves the installed stylesheet from the default RelayAdminAssets');
    stop_private();
    ok(!-e "$dir/httpd.pid", 'it stops');

    # ---- disable and purge ------------------------------------------------------
    ($rc, $out) = run('/usr/sbin/a2dismod', 'claude_relay');
    ok($rc == 0 && !-e '/etc/apache2/mods-enabled/claude_relay.load', 'a2dismod claude_relay') or diag $out;
    # what a2enmod enabled for it and was not enabled before
    for my $m (grep { !$mods_before->{$_} } qw(proxy_http proxy)) {
        ($rc, $out) = run('/usr/sbin/a2dismod', '-q', $m);
        diag "a2dismod $m: $out" if $rc;
    }
    {
        local $ENV{DEBIAN_FRONTEND} = 'noninteractive';
        ($rc, $out) = run('apt-get', 'purge', '-y', '-q', '-o', 'DPkg::Lock::Timeout=600', $PKG);
    }
    ok($rc == 0 && !pkg_present(), "apt-get purge $PKG") or diag $out;
    my $after = snapshot(@watch);
    # a2enmod and a2dismod note (in /var/lib/apache2) what the admin enabled
    # and disabled: allowed for the proxy modules the test itself switched
    my $ours = join '|', grep { !$mods_before->{$_} } qw(proxy_http proxy);
    my @changed = grep {
        !(m{^new: (/var/lib/apache2/\S+)$} && -d $1)
            && !($ours && m{^(new|gone): /var/lib/apache2/module/\w+_by_admin/($ours)$})
    } differences($before, $after);
    is(join("\n", @changed), '', 'nothing of the package is left, and nothing else changed');
    my @records = grep { m{/claude_relay$} } keys %$after;
    is("@records", '', 'purging removed Apache\'s record of the module');
    # back to the notes the machine had before
    restore_state(1);
}

