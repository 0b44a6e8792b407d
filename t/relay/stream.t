# The relay answers like the Claude API: JSON, the other endpoints, and SSE
# streams that reach the client event by event, not buffered.
use strict;
use warnings FATAL => 'all';
use Apache::Test qw(-withtestmore);
use Apache::TestUtil qw(t_cmp);
use RelayTest;
use Time::HiRes qw(time);

plan tests => 9, need_module 'claude_relay', 'relay_mock';

my $k = make_key(name => 'stream', limit => 2);

my $r = http_get('/api/v1/models', 'x-api-key' => $k->{apiKey});
is($r->code, 200, 'GET /v1/models through the relay');
like($r->decoded_content, qr/"type":"model"/, 'the model list comes back');
$r = http_post('/api/v1/messages/count_tokens', '{"messages":[]}', 'x-api-key' => $k->{apiKey});
like($r->decoded_content, qr/"input_tokens":25/, 'POST /v1/messages/count_tokens works');

# a stream of 6 deltas over 3 seconds; note when each event arrives
my $body = '{"model":"claude-sonnet-4-20250514","max_tokens":64,"stream":true,"messages":[]}';
my $s = raw_request('POST', '/api/v1/messages', $body, 'x-api-key' => $k->{apiKey},
                    'anthropic-version' => '2023-06-01', 'x-mock-hold-ms' => 3500,
                    'x-mock-events' => 6);
my ($buf, %first_seen, @order) = ('');
my $deadline = time + 15;
while (time < $deadline) {
    my $n = sysread($s, my $chunk, 65536);
    last unless $n;
    $buf .= $chunk;
    while ($buf =~ /event: (\w+)\n/g) {
        my $pos = pos($buf);
        my $key = "$1\@$pos";
        next if $first_seen{$key};
        $first_seen{$key} = time;
        push @order, [$1, time];
    }
    last if $buf =~ /event: message_stop/;
}
close $s;
my @names = map { $_->[0] } @order;
like($buf, qr/^HTTP\/1\.1 200.*text\/event-stream/s, 'the stream is text/event-stream');
is($names[0], 'message_start', 'message_start comes first');
is($names[-1], 'message_stop', 'message_stop comes last');
is(scalar(grep { $_ eq 'content_block_delta' } @names), 6, 'all 6 deltas arrived');
my @deltas = map { $_->[1] } grep { $_->[0] eq 'content_block_delta' } @order;
my $spread = $deltas[-1] - $deltas[0];
ok($spread > 1.5, sprintf('deltas arrived one by one over %.2f s, not in one burst', $spread));
ok(defined wait_until(2, sub { leases($k->{id}) == 0 }), 'the stream gave its slot back');
