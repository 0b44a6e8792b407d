#!/usr/bin/perl
# Every field of the two config structs has a merge line, and every field
# whose unset value is RELAY_UNSET (or an _UNSET enum value) is set so in the
# create function; a field may say "not merged" in its comment.
use strict;
use warnings;

local $/;
open my $h, '<', 'relay_config.h' or die "relay_config.h: $!";
my $hdr = <$h>;
open my $c, '<', 'relay_config.c' or die "relay_config.c: $!";
my $src = <$c>;
my ($bad, $ok) = (0, 0);
for my $kind (['relay_server_conf', 'server', 'sc'], ['relay_dir_conf', 'dir', 'dc']) {
    my ($type, $what, $var) = @$kind;
    my ($body) = $hdr =~ /typedef struct \{((?:(?!typedef struct).)*?)\} \Q$type\E;/s
        or die "no struct $type";
    my ($create) = $src =~ /(void \*relay_create_${what}_conf\(.*?\n\})/s or die "no create";
    my ($merge) = $src =~ /(void \*relay_merge_${what}_conf\(.*?\n\})/s or die "no merge";
    # each comment on one line, beside the field it follows
    $body =~ s{/\*(.*?)\*/}{my $t = $1; $t =~ s/\s+/ /g; "/*$t*/"}gse;
    while ($body =~ /^\s+(?:const\s+)?\w[\w\s]*?\**\s*(\w+);[ \t]*(\/\*.*?\*\/)?/mg) {
        my ($field, $comment) = ($1, $2 // '');
        if ($comment !~ /not merged/ && $merge !~ /\b$var->\Q$field\E\b/) {
            print "not ok: $type.$field has no merge line\n";
            $bad++;
        }
        else {
            $ok++;
        }
        if ($comment =~ /\bRELAY_UNSET\b|_UNSET\b/ && $field ne 'redis'
            && $create !~ /\b$var->\Q$field\E\s*=\s*RELAY_\w*UNSET/) {
            print "not ok: $type.$field is unset as RELAY_UNSET, but create leaves it 0\n";
            $bad++;
        }
    }
}
# the Redis target's unset values, which the check fills in
for my $f (qw(database timeout_ms)) {
    if ($src !~ /relay_create_server_conf\(.*?sc->redis\.$f = RELAY_UNSET/s) {
        print "not ok: redis.$f is not created RELAY_UNSET\n";
        $bad++;
    }
}
print "config fields with a merge line: $ok\n";
exit($bad ? 1 : 0);
