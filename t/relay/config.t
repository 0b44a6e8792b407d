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

plan tests => scalar(@cases) + 1, need_module 'claude_relay';

for my $c (@cases) {
    my ($name, $body, $fails, $re) = @$c;
    my ($rc, $out) = configtest($body);
    ok(($rc != 0) == $fails && $out =~ $re, "$name: " . ($fails ? 'refused' : 'accepted'))
        or diag($out);
}

my ($rc, $out) = configtest('', 1);
ok $rc != 0 && $out =~ /RelayKeyHashSecret: required when RelayEngine On is used/,
   'RelayEngine On without RelayKeyHashSecret is refused' or diag($out);
