# The lease store's cache paths run without undefined behaviour: a cached
# key that never kept a slot is dropped when it changes (its list of kept
# slots is empty: no memmove on a NULL pointer), and kept slots go back when
# their key changes. The assertions on the error log bite under
# `make test-asan`, where UBSan writes its reports there.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;

plan tests => 6, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';

sub passed {
    my ($key, $n) = @_;
    return scalar grep { http_post('/api/v1/messages', $msg, 'x-api-key' => $key)->code == 200 }
        1 .. $n;
}

# the UBSan reports of the lease store in the error log so far
sub reports { return scalar(() = error_log() =~ /relay_lease\.c:\d+:\d+: runtime error/g) }

my $before = reports();

# a key without any limit: cached by every child, then changed, twice
my $k = make_key(name => 'cached, no slots', limit => 0);
is(passed($k->{apiKey}, 20), 20, 'a key without any limit: 20 requests pass');
redis('HSET', "apikey:$k->{id}", 'name', 'renamed');
is(passed($k->{apiKey}, 20), 20, 'changed in Redis (dropped from the caches): 20 more pass');
redis('HSET', "apikey:$k->{id}", 'name', 'renamed again');
is(passed($k->{apiKey}, 5), 5, 'changed again: 5 more pass');

# a key with a limit of 64: finished requests keep their slots, which go
# back when the key changes
my $l = make_key(name => 'kept slots', limit => 64);
is(passed($l->{apiKey}, 30), 30, 'a key with limit 64: 30 requests pass');
redis('HSET', "apikey:$l->{id}", 'name', 'renamed');
ok(defined wait_until(5, sub { leases($l->{id}) == 0 }),
   'changed in Redis: every kept slot goes back');

is(reports() - $before, 0, 'UBSan reported nothing in relay_lease.c');
