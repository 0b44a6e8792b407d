# A key is active only while isActive is exactly "true" (claude-relay-service's
# rule): any other value, or none, refuses it as disabled -- for a key read
# from Redis on every request and for one a child admits from its cache.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use RelayTest;

plan tests => 16, need_module 'claude_relay', 'relay_mock';

my $msg = '{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}';
my $disabled = '{"error":"Invalid API key","message":"API key is disabled"}';

for my $limit (0, 5) {
    my $k = make_key(name => "isActive, limit $limit", limit => $limit);
    my $id = $k->{id};
    my $key = $k->{apiKey};
    # let every child know the key (a key without any limit is then cached)
    http_post('/api/v1/messages', $msg, 'x-api-key' => $key) for 1 .. 8;
    for my $value ('yes', '', 'TRUE', 'True', ' true', undef) {
        if (defined $value) {
            redis('HSET', "apikey:$id", 'isActive', $value);
        }
        else {
            redis('HDEL', "apikey:$id", 'isActive');
        }
        my @r = map { http_post('/api/v1/messages', $msg, 'x-api-key' => $key) } 1 .. 4;
        my $what = defined $value ? "isActive \"$value\"" : 'no isActive at all';
        is(join(' ', map { $_->code . ' ' . $_->decoded_content } @r),
           join(' ', ("401 $disabled") x 4), "limit $limit, $what: 401 \"API key is disabled\"");
    }
    redis('HSET', "apikey:$id", 'isActive', 'true');
    my $ok = grep { http_post('/api/v1/messages', $msg, 'x-api-key' => $key)->code == 200 } 1 .. 4;
    is($ok, 4, "limit $limit, isActive \"true\": 200");
    is(redis('HGET', "apikey:$id", 'isActive'), 'true', 'the record is left as set');
}
