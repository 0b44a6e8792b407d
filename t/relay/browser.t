# The admin in a real browser (Debian's headless Chromium, driven by
# playwright-core): log in, create a key, read it once, edit its limit, see the
# live in-flight count, relay a request with it; search and page through
# sixty keys in a 1280-pixel window; release the key's slots and regenerate
# it; and save screenshots of each (copied to t/output, from where the ones
# in docs/ come).
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;

my $dir = "$ENV{RELAY_TEST_STAGE}/t/browser";
my @shots = qw(admin-list admin-search admin-edit admin-release admin-regenerate);
plan tests => 24 + @shots, need_module 'claude_relay', 'relay_mock';

my $shots = "$ENV{RELAY_TEST_STAGE}/run/shots";
mkdir $shots;
chmod 0777, $shots;
local $ENV{BASE_URL} = base_url();
local $ENV{ADMIN_USER} = $ENV{RELAY_TEST_ADMIN_USER};
local $ENV{ADMIN_PASSWORD} = $ENV{RELAY_TEST_ADMIN_PASSWORD};
local $ENV{SHOTS} = $shots;
my $out = `cd $dir && node admin_browser.js 2>&1`;
my $rc = $? >> 8;
diag($out) if $rc;
my @lines = grep { /^(not )?ok \d+/ } split /\n/, $out;
for my $l (@lines) {
    my ($not, $name) = $l =~ /^(not )?ok \d+ - (.*)$/;
    ok(!$not, "browser: $name");
}
is($rc, 0, 'the browser run passed');
for my $name (@shots) {
    my $shot = "$shots/$name.png";
    open my $png, '<:raw', $shot;
    my $magic = '';
    read($png, $magic, 8) if $png;
    is($magic, "\x89PNG\r\n\x1a\n", "a screenshot $name.png was saved");
    if ($ENV{RELAY_TEST_OUTPUT} && -s $shot) {
        system('cp', $shot, "$ENV{RELAY_TEST_OUTPUT}/$name.png");
    }
}
