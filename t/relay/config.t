# Bad directive values stop `apachectl configtest` with a sentence naming
# the directive; a good configuration passes.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use Apache::TestUtil qw(t_cmp);
use RelayTest;

my @cases = (
    ['good configuration', "", 0, qr/Syntax OK/],
    ['negative lease', "RelayLeaseSeconds -5", 1, qr/RelayLeaseSeconds: '-5' is not a whole number/],
    ['word as timeout', "RelayRedisTimeout soon", 1, qr/RelayRedisTimeout: 'soon'/],
    ['unknown RelayOnRedisError', "<Location /x>\nRelayOnRedisError maybe\n</Location>", 1,
     qr/RelayOnRedisError: 'maybe' is neither deny nor allow/],
    ['RelayEngine value', "<Location /x>\nRelayEngine perhaps\n</Location>", 1, qr/RelayEngine/],
    ['unreadable credential file', "<Location /x>\nRelayUpstreamApiKey file:/nonexistent/key\n</Location>", 1,
     qr/RelayUpstreamApiKey: cannot read \/nonexistent\/key/],
    ['unset environment variable', "<Location /x>\nRelayUpstreamApiKey env:RELAY_NO_SUCH_VAR\n</Location>", 1,
     qr/RelayUpstreamApiKey: the environment variable RELAY_NO_SUCH_VAR is not set/],
    ['relay key as upstream credential', "<Location /x>\nRelayUpstreamBearer cr_0123456789abcdef\n</Location>", 1,
     qr/RelayUpstreamBearer: the value is a relay key/],
    ['bad Redis address', "RelayRedisServer unix:relative.sock", 1, qr/RelayRedisServer: .*absolute/],
    ['database out of range', "RelayRedisDatabase 99999", 1, qr/RelayRedisDatabase/],
    ['no Redis connections', "RelayRedisConnections 0", 1, qr/RelayRedisConnections: '0' is not a whole number from 1/],
    ['word as slot reuse', "RelayReuseSlots sometimes", 1,
     qr/RelayReuseSlots: 'sometimes' is neither Off nor a whole number of milliseconds/],
    ['slot reuse out of range', "RelayReuseSlots 60001", 1, qr/RelayReuseSlots: '60001'/],
    ['slot reuse off', "RelayReuseSlots Off", 0, qr/Syntax OK/],
    ['RelayEngine in server context', "RelayEngine On", 1, qr/RelayEngine/],
);

# Secret files: one line of text, the same for every file: directive; the
# key hash secret, wherever it comes from, has at least 16 bytes.
my $sdir = "$ENV{RELAY_TEST_STAGE}/run/secret-files";
mkdir $sdir;
my %sfile = (
    nul => "abcdefgh\0ijklmnopqrstuvwxyz\n",
    one => "x",
    two => "first-line-secret-0123\nsecond-line-secret\n",
    blank => "\n",
    crlf => "0123456789abcdef-crlf\r\n",
    big => ('a' x 5000) . "\n",
);
for my $f (keys %sfile) {
    open my $fh, '>', "$sdir/$f" or die $!;
    binmode $fh;
    print $fh $sfile{$f};
    close $fh;
}
$ENV{RELAY_SHORT_SECRET} = 'abc';
$ENV{RELAY_GOOD_SECRET} = '0123456789abcdef';
push @cases,
    ['hash secret file with a NUL byte', "RelayKeyHashSecret file:$sdir/nul", 1,
     qr/RelayKeyHashSecret: \Q$sdir\E\/nul contains a NUL byte/],
    ['hash secret file of 1 byte', "RelayKeyHashSecret file:$sdir/one", 1,
     qr/RelayKeyHashSecret: the file \Q$sdir\E\/one is 1 byte long; the key hash secret needs at least 16 bytes/],
    ['hash secret file of two lines', "RelayKeyHashSecret file:$sdir/two", 1,
     qr/RelayKeyHashSecret: \Q$sdir\E\/two has more than one line/],
    ['hash secret file of an empty line', "RelayKeyHashSecret file:$sdir/blank", 1,
     qr/RelayKeyHashSecret: \Q$sdir\E\/blank is empty/],
    ['hash secret file over 4 KiB', "RelayKeyHashSecret file:$sdir/big", 1,
     qr/RelayKeyHashSecret: \Q$sdir\E\/big is larger than 4096 bytes/],
    ['hash secret file ending in CRLF', "RelayKeyHashSecret file:$sdir/crlf", 0, qr/Syntax OK/],
    ['inline hash secret of 15 bytes', "RelayKeyHashSecret 0123456789abcde", 1,
     qr/RelayKeyHashSecret: the value is 15 bytes long; the key hash secret needs at least 16 bytes/],
    ['inline hash secret of 16 bytes', "RelayKeyHashSecret 0123456789abcdef", 0, qr/Syntax OK/],
    ['env: hash secret of 3 bytes', "RelayKeyHashSecret env:RELAY_SHORT_SECRET", 1,
     qr/RelayKeyHashSecret: the environment variable RELAY_SHORT_SECRET is 3 bytes long; the key hash secret needs at least 16 bytes/],
    ['env: hash secret of 16 bytes', "RelayKeyHashSecret env:RELAY_GOOD_SECRET", 0, qr/Syntax OK/],
    ['credential file with a NUL byte', "<Location /x>\nRelayUpstreamApiKey file:$sdir/nul\n</Location>", 1,
     qr/RelayUpstreamApiKey: \Q$sdir\E\/nul contains a NUL byte/],
    ['credential file of two lines', "<Location /x>\nRelayUpstreamBearer file:$sdir/two\n</Location>", 1,
     qr/RelayUpstreamBearer: \Q$sdir\E\/two has more than one line/],
    ['Redis password file of two lines', "RelayRedisPassword file:$sdir/two", 1,
     qr/RelayRedisPassword: \Q$sdir\E\/two has more than one line/],
    ['Sentinel password file with a NUL byte', "RelayRedisSentinelPassword file:$sdir/nul", 1,
     qr/RelayRedisSentinelPassword: \Q$sdir\E\/nul contains a NUL byte/],
    ['short Redis password', "RelayRedisPassword abc", 0, qr/Syntax OK/],
    ['short Redis password file', "RelayRedisPassword file:$sdir/one", 0, qr/Syntax OK/];

plan tests => scalar(@cases) + 3, need_module 'claude_relay';

for my $c (@cases) {
    my ($name, $body, $fails, $re) = @$c;
    my ($rc, $out) = configtest($body);
    ok(($rc != 0) == $fails && $out =~ $re, "$name: " . ($fails ? 'refused' : 'accepted'))
        or diag($out);
}

my ($rc, $out) = configtest('', 1);
ok $rc != 0 && $out =~ /RelayKeyHashSecret: required when RelayEngine On is used/,
   'RelayEngine On without RelayKeyHashSecret is refused' or diag($out);

# A configuration with no RelayEngine at all; returns (exit code, output).
sub configtest_bare {
    my $body = shift;
    my $dir = "$ENV{RELAY_TEST_STAGE}/run/configtest-bare";
    mkdir $dir;
    open my $fh, '>', "$dir/httpd.conf" or die $!;
    print $fh "ServerRoot $dir\nServerName 127.0.0.1\nInclude $ENV{RELAY_TEST_STAGE}/run/inherit.conf\n"
            . "Listen 127.0.0.1:1\nPidFile $dir/httpd.pid\nErrorLog $dir/error.log\n$body\n";
    close $fh;
    my $out = `$RelayTest::HTTPD -t -f $dir/httpd.conf 2>&1`;
    return ($? >> 8, $out);
}

# an admin-only virtual host gets a Redis pool too: its Redis settings are checked
my $admin_vhost = "<VirtualHost 127.0.0.1:1>\nServerName admin.example\n"
                . "RelayKeyHashSecret 0123456789abcdef0123\n%s\n"
                . "<Location /relay-admin>\nRelayAdmin Open\n</Location>\n</VirtualHost>";
($rc, $out) = configtest_bare(sprintf($admin_vhost, "RelayRedisUsername relay"));
ok $rc != 0 && $out =~ /RelayRedisUsername: needs RelayRedisPassword as well \(server admin\.example/,
   'an admin-only virtual host with a Redis user and no password is refused' or diag($out);
($rc, $out) = configtest_bare(sprintf($admin_vhost, "RelayRedisUsername relay\nRelayRedisPassword pw"));
ok $rc == 0, 'and accepted with the password' or diag($out);
