# The admin with 10,000 keys in Redis (made directly by a script, as a big
# installation holds them): a page of the list and of the JSON API answers,
# reads whole records only for the page's keys in a bounded number of script
# calls, and the overview still counts all. How long the pages take is shown
# (diag) but not asserted: bench/scale.sh measures it against its targets.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;
use POSIX ();

plan tests => 11, need_module 'claude_relay', 'relay_mock';

my $n = 10_000;
my $suffix = 'cccccccccccc';
my ($sec) = redis_lines('TIME');
my $today = POSIX::strftime('%Y-%m-%d', gmtime $sec);
# every key a full record with a hash-map entry and usage; every tenth has
# usage today, every hundredth two requests in flight (t/lib/bulk_keys.lua)
redis('EVAL', slurp("$ENV{RELAY_TEST_STAGE}/t/lib/bulk_keys.lua"), 0, $n, $today,
      ($sec + 300) * 1000, $suffix, 0);
my $keys = grep { /-$suffix$/ } redis_lines('--scan', '--pattern', 'apikey:*');
is($keys, $n, "$n keys made in Redis");

# seconds curl takes for one admin GET (the response body discarded), and its status
sub curl_time {
    my $path = shift;
    my $t = `curl -s -o /dev/null -w '%{time_total} %{http_code}' -u '$ENV{RELAY_TEST_ADMIN_USER}:$ENV{RELAY_TEST_ADMIN_PASSWORD}' '@{[base_url()]}$path'`;
    my ($secs, $code) = split ' ', $t;
    return ($secs // 0, $code // '');
}
sub median { my @s = sort { $a <=> $b } @_; return $s[int(@s / 2)] }
for my $case (['the list page', '/relay-admin/?page=3'],
              ['the API page', '/relay-admin/api/keys?page=3'],
              ['the API page sorted by tokens today', '/relay-admin/api/keys?page=3&sort=tokensToday'],
              ['the API page searching descriptions', '/relay-admin/api/keys?search=number%20999']) {
    my ($what, $path) = @$case;
    my (@t, @codes);
    for my $i (0 .. 5) {
        my ($secs, $code) = curl_time($path);
        push @codes, $code;
        push @t, $secs if $i;    # the first call warms up
    }
    my $ms = int(median(@t) * 1000 + 0.5);
    diag(sprintf '%s with %d keys: median %d ms, mean %d ms (%s)', $what, $n, $ms,
         int(1000 * (eval { my $s = 0; $s += $_ for @t; $s } / @t) + 0.5),
         join(' ', map { int($_ * 1000 + 0.5) } @t));
    is("@codes", join(' ', ('200') x 6), "$what answers 200, six times");
}

# what a page costs Redis: whole records only for the page's keys
my ($res, $body) = admin_json('GET', '/relay-admin/api/keys?sort=inFlight');
ok(@{ $body->{data} || [] } == 50 && $body->{total} >= $n, "a page holds 50 keys of $body->{total}");
is(scalar(grep { $_->{currentConcurrency} >= 2 } @{ $body->{data} || [] }), 50,
   'sorted by in flight: the first page holds keys with requests in flight');
my $ov = $body->{overview};
ok($ov->{inFlight} >= 2 * $n / 100 && $ov->{keysInFlight} >= $n / 100,
   "the overview counts every lease: $ov->{inFlight} in flight on $ov->{keysInFlight} keys");
my $seen = monitor_during(sub { admin_json('GET', '/relay-admin/api/keys?page=7') });
my @reads = grep { !/\[\d+ lua\]/ && /"EVALSHA"/ } split /\n/, $seen;
my @hgetall_page = grep { /\[\d+ lua\].*"HGETALL" "apikey:/ } split /\n/, $seen;
ok(@reads <= int($n / 500) + 3, scalar(@reads) . ' script calls for one page of ' . $n . ' keys');
is(scalar @hgetall_page, 50, 'whole records are read for the 50 keys of the page only');

# how long Redis runs nothing else while the list reads: the time of its calls
redis('CONFIG', 'RESETSTAT');
admin_json('GET', '/relay-admin/api/keys?page=7');
my %stat = map { /^cmdstat_(\w+):calls=(\d+),usec=(\d+)/ ? ($1 => [$2, $3]) : () }
           redis_lines('INFO', 'commandstats');
my ($calls, $usec) = @{ $stat{evalsha} || [0, 0] };
diag(sprintf 'one page of %d keys cost Redis %d script calls, %.1f ms in all, %.1f ms per call, '
             . 'and %d SCAN calls, %.1f ms', $n, $calls, $usec / 1000, $usec / 1000 / ($calls || 1),
     @{ $stat{scan} || [0, 0] }[0], (@{ $stat{scan} || [0, 0] })[1] / 1000);

redis('EVAL', <<'LUA', 0, $n, $today, $suffix);
local n, today, suffix = tonumber(ARGV[1]), ARGV[2], ARGV[3]
for i = 1, n do
  local id = string.format('%08x-0000-4000-8000-', i) .. suffix
  redis.call('HDEL', 'apikey:hash_map', string.format('%064x', i))
  redis.call('DEL', 'apikey:' .. id, 'usage:' .. id, 'usage:daily:' .. id .. ':' .. today,
             'concurrency:' .. id)
end
return 1
LUA
is(scalar(grep { /-$suffix$/ } redis_lines('--scan', '--pattern', 'apikey:*')), 0,
   'the scale keys are gone again');
