# The admin in a real browser (Debian's headless Chromium, driven by
# playwright-core): log in, create a key, read it once, edit its limit, see the
# live in-flight count, relay a request with it, and save a screenshot.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;

my $dir = "$ENV{RELAY_TEST_STAGE}/t/browser";
plan tests => 13, need_module 'claude_relay', 'relay_mock';

my $shot = "$ENV{RELAY_TEST_STAGE}/run/admin-list.png";
local $ENV{BASE_URL} = base_url();
local $ENV{ADMIN_USER} = $ENV{RELAY_TEST_ADMIN_USER};
local $ENV{ADMIN_PASSWORD} = $ENV{RELAY_TEST_ADMIN_PASSWORD};
local $ENV{SCREENSHOT} = $shot;
my $out = `cd $dir && node admin_browser.js 2>&1`;
my $rc = $? >> 8;
diag($out) if $rc;
my @lines = grep { /^(not )?ok \d+/ } split /\n/, $out;
for my $l (@lines) {
    my ($not, $name) = $l =~ /^(not )?ok \d+ - (.*)$/;
    ok(!$not, "browser: $name");
}
is($rc, 0, 'the browser run passed');
open my $png, '<:raw', $shot;
my $magic = '';
read($png, $magic, 8) if $png;
is($magic, "\x89PNG\r\n\x1a\n", 'a screenshot of the list was saved');
if ($ENV{RELAY_TEST_OUTPUT} && -s $shot) {
    system('cp', $shot, "$ENV{RELAY_TEST_OUTPUT}/admin-list.png");
}
