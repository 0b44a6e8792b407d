#!/bin/bash
#
# test_relay_keys.sh - run the relay-keys tool against a throwaway redis-server.
#
# Usage: t/unit/test_relay_keys.sh /path/to/built/relay-keys
#
# Starts redis-server on a unix socket in a temporary directory (no TCP
# port, no persistence), exercises every command and the error cases, and
# checks what ends up in Redis. Needs bash, redis-server, redis-cli,
# sha256sum, grep and sed. Prints "ok"/"not ok" lines, then
# "N passed, N failed"; exits non-zero when anything failed. The
# redis-server is always stopped on exit.

set -u
export LC_ALL=C

TOOL=${1:-}
if [ -z "$TOOL" ] || [ ! -x "$TOOL" ]; then
    echo "usage: $0 /path/to/relay-keys" >&2
    exit 2
fi
case $TOOL in
    /*) ;;
    *) TOOL=$PWD/$TOOL ;;
esac
for prog in redis-server redis-cli sha256sum grep sed; do
    if ! command -v "$prog" >/dev/null 2>&1; then
        echo "$0: $prog is needed" >&2
        exit 2
    fi
done

# the tool must see only what each test passes it
unset RELAY_REDIS RELAY_REDIS_PASSWORD RELAY_REDIS_USERNAME RELAY_REDIS_DATABASE \
      RELAY_KEY_HASH_SECRET RELAY_REDIS_SENTINEL RELAY_REDIS_MASTER \
      RELAY_REDIS_SENTINEL_PASSWORD RELAY_REDIS_SENTINEL_USERNAME

TMP=$(mktemp -d "${TMPDIR:-/tmp}/relay-keys-test.XXXXXX") || exit 2
SOCK=$TMP/redis.sock
REDIS_PID=

cleanup() {
    if [ -n "$REDIS_PID" ]; then
        kill "$REDIS_PID" 2>/dev/null
        wait "$REDIS_PID" 2>/dev/null
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

redis-server --port 0 --unixsocket "$SOCK" --unixsocketperm 700 --save '' \
    --appendonly no --dir "$TMP" --daemonize no >"$TMP/redis.log" 2>&1 &
REDIS_PID=$!

rcli() {
    redis-cli -s "$SOCK" "$@"
}

for _ in $(seq 1 50); do
    if [ -S "$SOCK" ] && [ "$(rcli PING 2>/dev/null)" = "PONG" ]; then
        break
    fi
    sleep 0.1
done
if [ "$(rcli PING 2>/dev/null)" != "PONG" ]; then
    echo "$0: redis-server did not start:" >&2
    cat "$TMP/redis.log" >&2
    exit 2
fi

PASSED=0
FAILED=0
N=0
SECRET='t3st-secret with spaces'
OUT=
ERR=
RC=0

# Record a result: ok DESCRIPTION CONDITION-EXIT-STATUS.
report() {
    N=$((N + 1))
    if [ "$2" -eq 0 ]; then
        PASSED=$((PASSED + 1))
        echo "ok $N - $1"
    else
        FAILED=$((FAILED + 1))
        echo "not ok $N - $1"
        if [ -n "${3:-}" ]; then
            printf '#   %s\n' "$3"
        fi
    fi
}

# check DESCRIPTION COMMAND...: passes when the command succeeds.
check() {
    local desc=$1
    shift
    "$@"
    report "$desc" $?
}

# check_eq DESCRIPTION GOT WANT
check_eq() {
    if [ "$2" = "$3" ]; then
        report "$1" 0
    else
        report "$1" 1 "expected '$3', got '$2'"
    fi
}

# check_rc DESCRIPTION WANT: the exit status of the last run.
check_rc() {
    if [ "$RC" -eq "$2" ]; then
        report "$1" 0
    else
        report "$1" 1 "exit status $RC, expected $2; stderr: $ERR"
    fi
}

# run ARGS...: run the tool against our Redis, capturing stdout, stderr and status.
run() {
    OUT=$("$TOOL" --redis "unix:$SOCK" "$@" 2>"$TMP/stderr")
    RC=$?
    ERR=$(cat "$TMP/stderr")
}

# runs ARGS...: run with the secret in the environment.
runs() {
    OUT=$(RELAY_KEY_HASH_SECRET=$SECRET "$TOOL" --redis "unix:$SOCK" "$@" 2>"$TMP/stderr")
    RC=$?
    ERR=$(cat "$TMP/stderr")
}

# Print every key with its type and contents, sorted, for before/after comparisons.
dump_all() {
    local k t
    rcli --scan | sort | while IFS= read -r k; do
        t=$(rcli TYPE "$k")
        printf '== %s (%s)\n' "$k" "$t"
        case $t in
            hash) rcli HGETALL "$k" ;;
            string) rcli GET "$k" ;;
            zset) rcli ZRANGE "$k" 0 -1 WITHSCORES ;;
            set) rcli SMEMBERS "$k" | sort ;;
            list) rcli LRANGE "$k" 0 -1 ;;
        esac
    done
}

# Whether stdin contains the fixed string $1.
contains() {
    grep -qF -- "$1"
}

# The string value of "field" in a one-line JSON object.
json_str() {
    printf '%s\n' "$1" | sed -n 's/.*"'"$2"'":"\([^"]*\)".*/\1/p'
}

sha_of() {
    printf '%s' "$1" | sha256sum | cut -d' ' -f1
}

UUID_RE='[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}'
ISO_RE='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$'

# ---------------------------------------------------------------- help
OUT=$("$TOOL" help 2>/dev/null)
RC=$?
check_rc "help exits 0" 0
printf '%s\n' "$OUT" | grep -q '^Usage:'
report "help prints usage on stdout" $?
OUT=$("$TOOL" 2>"$TMP/stderr")
RC=$?
ERR=$(cat "$TMP/stderr")
check_rc "no arguments exits 2" 2
check_eq "no arguments: nothing on stdout" "$OUT" ""
printf '%s\n' "$ERR" | grep -q 'Usage:'
report "no arguments: usage on stderr" $?

# ---------------------------------------------------------------- create (plain)
runs create --name "first key" --concurrency-limit 5
check_rc "create exits 0" 0
LINE1=$(printf '%s\n' "$OUT" | sed -n 1p)
KEY1=$(printf '%s\n' "$OUT" | sed -n 2p)
LINE3=$(printf '%s\n' "$OUT" | sed -n 3p)
ID1=$(printf '%s\n' "$LINE1" | sed -n 's/^Created key "first key" (id \(.*\))$/\1/p')
printf '%s\n' "$ID1" | grep -Eqx "$UUID_RE"
report "create prints the id (a v4 UUID)" $? "line 1: $LINE1"
printf '%s\n' "$KEY1" | grep -Eqx 'cr_[0-9a-f]{64}'
report "create prints cr_ + 64 hex" $? "line 2: $KEY1"
check_eq "create prints the warning" "$LINE3" "Store it now: it will not be shown again."

HASH1=$(sha_of "$KEY1$SECRET")
check_eq "stored apiKey is sha256(key + secret)" "$(rcli HGET "apikey:$ID1" apiKey)" "$HASH1"
check_eq "hash_map maps the hash to the id" "$(rcli HGET apikey:hash_map "$HASH1")" "$ID1"
check_eq "id field" "$(rcli HGET "apikey:$ID1" id)" "$ID1"
check_eq "name field" "$(rcli HGET "apikey:$ID1" name)" "first key"
check_eq "description defaults to empty" "$(rcli HGET "apikey:$ID1" description)" ""
check_eq "concurrencyLimit stored as string" "$(rcli HGET "apikey:$ID1" concurrencyLimit)" "5"
check_eq "tokenLimit defaults to 0" "$(rcli HGET "apikey:$ID1" tokenLimit)" "0"
check_eq "isActive true" "$(rcli HGET "apikey:$ID1" isActive)" "true"
check_eq "lastUsedAt empty" "$(rcli HGET "apikey:$ID1" lastUsedAt)" ""
check_eq "expiresAt empty" "$(rcli HGET "apikey:$ID1" expiresAt)" ""
check_eq "createdBy default" "$(rcli HGET "apikey:$ID1" createdBy)" "relay-keys"
PREVIEW1="${KEY1:0:7}"$'\xe2\x80\xa6'"${KEY1: -4}"
check_eq "keyPreview" "$(rcli HGET "apikey:$ID1" keyPreview)" "$PREVIEW1"
CREATED1=$(rcli HGET "apikey:$ID1" createdAt)
printf '%s\n' "$CREATED1" | grep -Eq "$ISO_RE"
report "createdAt is ISO-8601 with ms" $? "$CREATED1"
check_eq "updatedAt equals createdAt" "$(rcli HGET "apikey:$ID1" updatedAt)" "$CREATED1"
check_eq "hash fields are exactly the schema" \
    "$(rcli HKEYS "apikey:$ID1" | sort | tr '\n' ' ')" \
    "apiKey concurrencyLimit createdAt createdBy description expiresAt id isActive keyPreview lastUsedAt name tokenLimit updatedAt "

OUT=$("$TOOL" --secret "$SECRET" hash "$KEY1" 2>/dev/null)
check_eq "hash KEY prints the stored hash" "$OUT" "$HASH1"

# a secret file holds the secret on one line; one line ending (LF or CRLF) is dropped
printf '%s\r\n' "$SECRET" >"$TMP/secret-crlf"
OUT=$("$TOOL" --secret-file "$TMP/secret-crlf" hash "$KEY1" 2>/dev/null)
check_eq "secret file ending in CRLF: hash KEY prints the stored hash" "$OUT" "$HASH1"
printf '%s' "$SECRET" >"$TMP/secret-bare"
OUT=$("$TOOL" --secret-file "$TMP/secret-bare" hash "$KEY1" 2>/dev/null)
check_eq "secret file without a line ending: hash KEY prints the stored hash" "$OUT" "$HASH1"

# ---------------------------------------------------------------- create --json
printf '%s\n' "$SECRET" >"$TMP/secret"
OUT=$("$TOOL" --redis "unix:$SOCK" --secret-file "$TMP/secret" create --name "second key" \
    --description "for the json test" --token-limit 1000 --expires 2999-12-31 --by tester \
    --json 2>"$TMP/stderr")
RC=$?
ERR=$(cat "$TMP/stderr")
check_rc "create --json exits 0" 0
JSON2=$OUT
ID2=$(json_str "$JSON2" id)
KEY2=$(json_str "$JSON2" apiKey)
printf '%s\n' "$ID2" | grep -Eqx "$UUID_RE"
report "create --json has the id" $? "$JSON2"
printf '%s\n' "$KEY2" | grep -Eqx 'cr_[0-9a-f]{64}'
report "create --json has the key" $? "$JSON2"
printf '%s\n' "$JSON2" | grep -q '^{.*}$'
report "create --json is one object" $?
printf '%s' "$JSON2" | contains '"concurrencyLimit":0'
report "create --json concurrencyLimit is a number" $? "$JSON2"
printf '%s' "$JSON2" | contains '"tokenLimit":1000'
report "create --json tokenLimit is a number" $? "$JSON2"
check_eq "create --json expiresAt" "$(json_str "$JSON2" expiresAt)" "2999-12-31T23:59:59.999Z"
check_eq "create --json name" "$(json_str "$JSON2" name)" "second key"
check_eq "create --json keyPreview" "$(json_str "$JSON2" keyPreview)" \
    "${KEY2:0:7}"$'\xe2\x80\xa6'"${KEY2: -4}"
HASH2=$(sha_of "$KEY2$SECRET")
check_eq "secret file: trailing newline dropped" "$(rcli HGET "apikey:$ID2" apiKey)" "$HASH2"
check_eq "second hash_map entry" "$(rcli HGET apikey:hash_map "$HASH2")" "$ID2"
check_eq "--by sets createdBy" "$(rcli HGET "apikey:$ID2" createdBy)" "tester"
check_eq "stored expiresAt" "$(rcli HGET "apikey:$ID2" expiresAt)" "2999-12-31T23:59:59.999Z"
check_eq "stored tokenLimit" "$(rcli HGET "apikey:$ID2" tokenLimit)" "1000"
check_eq "stored description" "$(rcli HGET "apikey:$ID2" description)" "for the json test"

# name of exactly 100 characters (multi-byte) is accepted
NAME100=$(printf 'é%.0s' $(seq 1 100))
runs create --name "$NAME100" --json
check_rc "name of 100 UTF-8 characters accepted" 0
ID3=$(json_str "$OUT" id)
KEY3=$(json_str "$OUT" apiKey)

# ---------------------------------------------------------------- list
rcli CONFIG RESETSTAT >/dev/null
run list
check_rc "list exits 0" 0
printf '%s\n' "$OUT" | grep -F "$ID1" | grep -F "first key" | grep -F active | contains "0/5"
report "list shows the first key active with 0/5" $? "$OUT"
printf '%s\n' "$OUT" | grep -F "$ID2" | grep -F "second key" | grep -F "0/unlimited" | contains 1000
report "list shows the second key with its token limit" $? "$OUT"
printf '%s\n' "$OUT" | grep -F "$ID1" | contains "$CREATED1"
report "list shows createdAt" $?
STATS=$(rcli INFO commandstats)
printf '%s\n' "$STATS" | grep -q '^cmdstat_scan:'
report "list uses SCAN" $?
! printf '%s\n' "$STATS" | grep -q '^cmdstat_keys:'
report "list never uses KEYS" $?

run list --json
check_rc "list --json exits 0" 0
LIST_JSON=$OUT
printf '%s\n' "$LIST_JSON" | grep -q '^\[.*\]$'
report "list --json is an array" $? "$LIST_JSON"
! printf '%s' "$LIST_JSON" | contains '"apiKey"'
report "list --json never contains apiKey" $?
! printf '%s' "$LIST_JSON" | contains "$HASH1"
report "list --json never contains a key hash" $?
for id in "$ID1" "$ID2" "$ID3"; do
    printf '%s' "$LIST_JSON" | contains "\"id\":\"$id\""
    report "list --json has $id" $?
done
printf '%s' "$LIST_JSON" | contains '"concurrencyLimit":5'
report "list --json limits are numbers" $?
printf '%s' "$LIST_JSON" | contains '"currentConcurrency":0'
report "list --json has currentConcurrency" $?
printf '%s' "$LIST_JSON" | contains '"status":"active"'
report "list --json has status" $?
! printf '%s' "$LIST_JSON" | contains 'hash_map'
report "list skips apikey:hash_map" $?

# ---------------------------------------------------------------- show + concurrency
NOW_S=$(rcli TIME | sed -n 1p)
FUTURE_MS=$(((NOW_S + 300) * 1000))
PAST_MS=$(((NOW_S - 300) * 1000))
rcli ZADD "concurrency:$ID1" "$FUTURE_MS" req-a "$FUTURE_MS" req-b "$PAST_MS" req-old >/dev/null
run show "$ID1" --json
check_rc "show --json exits 0" 0
printf '%s' "$OUT" | contains '"currentConcurrency":2'
report "show counts only live leases" $? "$OUT"
! printf '%s' "$OUT" | contains '"apiKey"'
report "show --json never contains apiKey" $?
check_eq "show --json name" "$(json_str "$OUT" name)" "first key"
run show "$ID1"
check_rc "show exits 0" 0
printf '%s\n' "$OUT" | contains "2/5"
report "show prints current/limit" $? "$OUT"
printf '%s\n' "$OUT" | contains "first key"
report "show prints the name" $?
! printf '%s\n' "$OUT" | contains "$HASH1"
report "show does not print the hash" $?
run list
printf '%s\n' "$OUT" | grep -F "$ID1" | contains "2/5"
report "list shows live concurrency" $? "$OUT"

# an old plain-string counter must not break anything
rcli SET "concurrency:$ID2" 3 >/dev/null
run show "$ID2" --json
check_rc "show with a string counter exits 0" 0
printf '%s' "$OUT" | contains '"currentConcurrency":3'
report "string counter read as its value" $? "$OUT"
run list --json
check_rc "list with a string counter exits 0" 0
rcli SET "concurrency:$ID2" notanumber >/dev/null
run show "$ID2" --json
printf '%s' "$OUT" | contains '"currentConcurrency":0'
report "non-numeric string counter read as 0" $? "$OUT"
rcli DEL "concurrency:$ID2" >/dev/null
rcli HSET "concurrency:$ID2" x y >/dev/null
run show "$ID2" --json
check_rc "show with a hash at concurrency:{id} exits 0" 0
printf '%s' "$OUT" | contains '"currentConcurrency":0'
report "other wrong type read as 0" $? "$OUT"
rcli DEL "concurrency:$ID2" >/dev/null
rcli SET "concurrency:$ID2" 1 >/dev/null

# ---------------------------------------------------------------- edit
rcli HSET "apikey:$ID1" description "set by an admin meanwhile" >/dev/null
sleep 0.01
run edit "$ID1" --token-limit 777 --by admin
check_rc "edit exits 0" 0
check_eq "edit sets tokenLimit" "$(rcli HGET "apikey:$ID1" tokenLimit)" "777"
check_eq "edit leaves concurrencyLimit" "$(rcli HGET "apikey:$ID1" concurrencyLimit)" "5"
check_eq "edit leaves other fields (no full rewrite)" "$(rcli HGET "apikey:$ID1" description)" \
    "set by an admin meanwhile"
check_eq "edit sets updatedBy" "$(rcli HGET "apikey:$ID1" updatedBy)" "admin"
UPDATED1=$(rcli HGET "apikey:$ID1" updatedAt)
printf '%s\n' "$UPDATED1" | grep -Eq "$ISO_RE"
report "edit sets updatedAt" $? "$UPDATED1"
[ "$UPDATED1" != "$CREATED1" ]
report "updatedAt changed" $?
check_eq "edit keeps createdAt" "$(rcli HGET "apikey:$ID1" createdAt)" "$CREATED1"
check_eq "edit keeps apiKey" "$(rcli HGET "apikey:$ID1" apiKey)" "$HASH1"

run edit "$ID1" --concurrency-limit 0 --expires 2998-01-02T03:04Z
check_rc "edit limits and expiry exits 0" 0
check_eq "edit sets concurrencyLimit" "$(rcli HGET "apikey:$ID1" concurrencyLimit)" "0"
check_eq "edit normalizes expiresAt" "$(rcli HGET "apikey:$ID1" expiresAt)" \
    "2998-01-02T03:04:00.000Z"
check_eq "edit without --by records relay-keys as updatedBy" \
    "$(rcli HGET "apikey:$ID1" updatedBy)" "relay-keys"
run edit "$ID1" --expires none
check_eq "edit --expires none clears it" "$(rcli HGET "apikey:$ID1" expiresAt)" ""
# the same rules as the admin pages: "" is 0, spaces before a date and a blank expiry are fine
run edit "$ID2" --token-limit "" --expires " 2999-12-30"
check_rc "edit with an empty limit and a space before the date exits 0" 0
check_eq "empty --token-limit stored as 0" "$(rcli HGET "apikey:$ID2" tokenLimit)" "0"
check_eq "space before an --expires date ignored" "$(rcli HGET "apikey:$ID2" expiresAt)" \
    "2999-12-30T23:59:59.999Z"
run edit "$ID2" --expires " "
check_eq "blank --expires clears it" "$(rcli HGET "apikey:$ID2" expiresAt)" ""
run list
printf '%s\n' "$OUT" | grep -F "$ID1" | contains "2/unlimited"
report "list shows unlimited concurrency" $? "$OUT"

# ---------------------------------------------------------------- disable / enable
run disable "$ID2"
check_rc "disable exits 0" 0
check_eq "disable sets isActive false" "$(rcli HGET "apikey:$ID2" isActive)" "false"
check_eq "disable without --by records relay-keys as updatedBy" \
    "$(rcli HGET "apikey:$ID2" updatedBy)" "relay-keys"
run list
printf '%s\n' "$OUT" | grep -F "$ID2" | contains disabled
report "list shows disabled" $? "$OUT"
run list --json
printf '%s' "$OUT" | contains '"status":"disabled"'
report "list --json shows disabled" $?
run enable "$ID2" --by "ops team"
check_rc "enable --by exits 0" 0
check_eq "enable sets isActive true" "$(rcli HGET "apikey:$ID2" isActive)" "true"
check_eq "enable --by sets updatedBy" "$(rcli HGET "apikey:$ID2" updatedBy)" "ops team"
run disable "$ID2" --by ""
check_rc "disable --by \"\" exits 2" 2
check_eq "a refused --by changes nothing" "$(rcli HGET "apikey:$ID2" isActive)" "true"

# expired: expiresAt in the past (written directly, the tool refuses it)
rcli HSET "apikey:$ID3" expiresAt 2001-01-01T00:00:00.000Z >/dev/null
run list
printf '%s\n' "$OUT" | grep -F "$ID3" | contains expired
report "list shows expired" $? "$OUT"
run show "$ID3" --json
printf '%s' "$OUT" | contains '"status":"expired"'
report "show --json shows expired" $? "$OUT"

# ---------------------------------------------------------------- error cases (nothing written)
dump_all >"$TMP/before"

OUT=$("$TOOL" --redis "unix:$SOCK" create --name "no secret" 2>"$TMP/stderr")
RC=$?
ERR=$(cat "$TMP/stderr")
check_rc "create without a secret exits 2" 2
printf '%s\n' "$ERR" | grep -qi secret
report "missing secret message names the secret" $? "$ERR"

runs create --name "bad limit" --concurrency-limit -1
check_rc "create --concurrency-limit -1 exits 2" 2
printf '%s\n' "$ERR" | contains "--concurrency-limit"
report "bad limit message names the option" $? "$ERR"
runs create --name "bad limit" --token-limit 1.5
check_rc "create --token-limit 1.5 exits 2" 2
runs create --name "bad limit" --token-limit 2147483648
check_rc "create --token-limit 2147483648 exits 2" 2

runs create --name "$(printf 'x%.0s' $(seq 1 101))"
check_rc "name of 101 characters exits 2" 2
runs create --name "$NAME100"x
check_rc "name of 101 UTF-8 characters exits 2" 2
runs create --name "desc too long" --description "$(printf 'd%.0s' $(seq 1 501))"
check_rc "description of 501 characters exits 2" 2
runs create --name "control" --description $'tab\tand line\nbreak are fine, \x01 is not'
check_rc "description with a control character exits 2" 2
printf '%s\n' "$ERR" | contains "--description"
report "control character message names the option" $? "$ERR"
runs create --name $'\n'
check_rc "name of only a line break exits 2" 2
printf '%s\n' "$ERR" | contains "must not be empty"
report "blank name message says it is empty" $? "$ERR"
runs create --description "no name"
check_rc "create without --name exits 2" 2
runs create --name ""
check_rc "create with an empty name exits 2" 2
runs create --name "past" --expires 2000-01-01
check_rc "past expiry exits 2" 2
printf '%s\n' "$ERR" | contains "--expires"
report "past expiry message names the option" $? "$ERR"
runs create --name "bad date" --expires 2023-02-29
check_rc "non-existent date exits 2" 2
runs create --name "bad date" --expires tomorrow
check_rc "garbage date exits 2" 2
runs create --name "bad option" --frobnicate
check_rc "unknown create option exits 2" 2
run edit "$ID1" --token-limit -1
check_rc "edit with a bad limit exits 2" 2
run edit "$ID1" --token-limit 5 --expires 2000-01-01
check_rc "edit with a past expiry exits 2" 2
run edit "$ID1"
check_rc "edit with nothing to change exits 2" 2

UNKNOWN=00000000-0000-4000-8000-000000000000
run show "$UNKNOWN"
check_rc "show unknown id exits 1" 1
[ -n "$ERR" ] && [ -z "$OUT" ]
report "show unknown id: message on stderr only" $? "out: $OUT err: $ERR"
run edit "$UNKNOWN" --token-limit 5
check_rc "edit unknown id exits 1" 1
run disable "$UNKNOWN"
check_rc "disable unknown id exits 1" 1
run enable "$UNKNOWN"
check_rc "enable unknown id exits 1" 1
run delete "$UNKNOWN"
check_rc "delete unknown id exits 1" 1

for cmd in show delete disable enable; do
    run "$cmd" "../x"
    check_rc "$cmd ../x exits 2" 2
done
run edit "../x" --token-limit 5
check_rc "edit ../x exits 2" 2
run show "*"
check_rc "show * exits 2" 2
run show "${ID1}0"
check_rc "show 37-character id exits 2" 2

# secrets that relay-keys and the module would read differently, or that are
# too short to be a secret, are refused before anything is written
# secret_refused DESCRIPTION TEXT-IN-MESSAGE: the last run exited 2 naming TEXT.
secret_refused() {
    check_rc "$1 exits 2" 2
    printf '%s\n' "$ERR" | contains "$2"
    report "$1: the message says why" $? "$ERR"
}
printf 'abcdefgh\0ijklmnopqrstuvwxyz\n' >"$TMP/secret-nul"
run --secret-file "$TMP/secret-nul" create --name "nul secret"
secret_refused "secret file with a NUL byte" "$TMP/secret-nul contains a NUL byte"
printf 'x' >"$TMP/secret-one"
run --secret-file "$TMP/secret-one" create --name "1-byte secret"
secret_refused "secret file of 1 byte" "--secret-file $TMP/secret-one is 1 byte long"
printf '%s\n%s\n' "$SECRET" "$SECRET" >"$TMP/secret-two"
run --secret-file "$TMP/secret-two" create --name "two-line secret"
secret_refused "secret file of two lines" "$TMP/secret-two has more than one line"
printf '%s\n\n' "$SECRET" >"$TMP/secret-blank"
run --secret-file "$TMP/secret-blank" create --name "secret and a blank line"
secret_refused "secret file with a blank second line" "$TMP/secret-blank has more than one line"
printf '\n' >"$TMP/secret-empty"
run --secret-file "$TMP/secret-empty" create --name "empty secret"
secret_refused "secret file of one empty line" "$TMP/secret-empty is empty"
head -c 5000 /dev/zero | tr '\0' a >"$TMP/secret-big"
run --secret-file "$TMP/secret-big" create --name "big secret"
secret_refused "secret file over 4 KiB" "$TMP/secret-big is larger than 4096 bytes"
run --secret 0123456789abcde create --name "short secret"
secret_refused "--secret of 15 bytes" "--secret is 15 bytes long; the key hash secret needs at least 16 bytes"
OUT=$(RELAY_KEY_HASH_SECRET=short "$TOOL" --redis "unix:$SOCK" create --name "short env" \
    2>"$TMP/stderr")
RC=$?
ERR=$(cat "$TMP/stderr")
secret_refused "RELAY_KEY_HASH_SECRET of 5 bytes" \
    "RELAY_KEY_HASH_SECRET is 5 bytes long; the key hash secret needs at least 16 bytes"
run --secret "$SECRET"$'\n'"$SECRET" create --name "line break secret"
secret_refused "--secret with a line break" "--secret contains a line break"
OUT=$("$TOOL" --secret short hash "$KEY1" 2>"$TMP/stderr")
RC=$?
ERR=$(cat "$TMP/stderr")
secret_refused "hash with a 5-byte --secret" "--secret is 5 bytes long"
[ -z "$OUT" ]
report "hash with a short secret prints no hash" $? "$OUT"

dump_all >"$TMP/after"
cmp -s "$TMP/before" "$TMP/after"
report "failed commands wrote nothing" $? "$(diff "$TMP/before" "$TMP/after" | head -5)"
check_eq "no key was created by unknown-id commands" "$(rcli EXISTS "apikey:$UNKNOWN")" "0"

# ---------------------------------------------------------------- connection and option errors
OUT=$("$TOOL" --redis "unix:$TMP/nonexistent.sock" list 2>"$TMP/stderr")
RC=$?
ERR=$(cat "$TMP/stderr")
check_rc "unreachable Redis exits 1" 1
printf '%s\n' "$ERR" | contains "$TMP/nonexistent.sock"
report "connect error names the address" $? "$ERR"
OUT=$(RELAY_REDIS="unix:$SOCK" "$TOOL" list --json 2>/dev/null)
RC=$?
check_rc "RELAY_REDIS environment is used" 0
run --db nope list
check_rc "bad --db exits 2" 2
run --bogus list
check_rc "unknown global option exits 2" 2

# Sentinel options: one way to Redis, and a master name with the sentinels
# usage_fails DESCRIPTION TEXT-IN-MESSAGE ARGS...: exit 2 naming TEXT, nothing on stdout.
usage_fails() {
    local desc=$1 text=$2
    shift 2
    OUT=$("$TOOL" "$@" 2>"$TMP/stderr")
    RC=$?
    ERR=$(cat "$TMP/stderr")
    check_rc "$desc exits 2" 2
    [ -z "$OUT" ] && printf '%s\n' "$ERR" | contains "$text"
    report "$desc: the message says why" $? "$ERR"
}
usage_fails "--redis with --sentinel" "give only one of --redis and --sentinel" \
    --redis "unix:$SOCK" --sentinel 127.0.0.1:26379 --master m list
usage_fails "--sentinel without --master" "pass --master NAME or set RELAY_REDIS_MASTER" \
    --sentinel 127.0.0.1:26379 list
usage_fails "--master without --sentinel" "need --sentinel" --master m list
usage_fails "--sentinel-password without --sentinel" "need --sentinel" \
    --sentinel-password pw list
usage_fails "--sentinel-user without --sentinel-password" "--sentinel-user needs" \
    --sentinel 127.0.0.1:26379 --master m --sentinel-user u list
usage_fails "a sentinel without a port" "\"127.0.0.1\" in the sentinel list is not HOST:PORT" \
    --sentinel 127.0.0.1 --master m list
usage_fails "an empty entry in the sentinel list" "empty or has an empty entry" \
    --sentinel 127.0.0.1:1,,127.0.0.1:2 --master m list
usage_fails "a master name of two words" "must be one word" \
    --sentinel 127.0.0.1:26379 --master "my master" list
OUT=$(RELAY_REDIS="unix:$SOCK" RELAY_REDIS_SENTINEL=127.0.0.1:26379 RELAY_REDIS_MASTER=m \
    "$TOOL" list 2>"$TMP/stderr")
RC=$?
ERR=$(cat "$TMP/stderr")
check_rc "RELAY_REDIS and RELAY_REDIS_SENTINEL both set exits 2" 2
OUT=$(RELAY_REDIS_SENTINEL=127.0.0.1:26379 RELAY_REDIS_MASTER=m "$TOOL" --redis "unix:$SOCK" \
    list --json 2>"$TMP/stderr")
RC=$?
ERR=$(cat "$TMP/stderr")
check_rc "--redis overrides RELAY_REDIS_SENTINEL" 0
# a sentinel nobody listens on (a port this test's unix-only Redis never opens)
OUT=$("$TOOL" --sentinel 127.0.0.1:1 --master m list 2>"$TMP/stderr")
RC=$?
ERR=$(cat "$TMP/stderr")
check_rc "an unreachable sentinel exits 1" 1
printf '%s\n' "$ERR" | contains "no sentinel of 127.0.0.1:1 led to a usable master 'm'"
report "the message names the sentinel and the master" $? "$ERR"
run frobnicate
check_rc "unknown command exits 2" 2

# ---------------------------------------------------------------- no plaintext key in Redis
dump_all >"$TMP/dump"
LEAK=0
for k in "$KEY1" "$KEY2" "$KEY3"; do
    if grep -qF -- "$k" "$TMP/dump" || grep -qF -- "${k#cr_}" "$TMP/dump"; then
        LEAK=1
    fi
done
[ -n "$KEY1" ] && [ -n "$KEY2" ] && [ -n "$KEY3" ] && [ "$LEAK" -eq 0 ]
report "no plaintext key is stored anywhere in Redis" $?
grep -qF -- "$HASH1" "$TMP/dump"
report "the key hash is stored (dump sanity check)" $?

# ---------------------------------------------------------------- delete
rcli ZADD "concurrency:$ID1" "$FUTURE_MS" req-c >/dev/null
run delete "$ID1"
check_rc "delete exits 0" 0
check_eq "delete removes apikey:{id}" "$(rcli EXISTS "apikey:$ID1")" "0"
check_eq "delete removes the hash_map entry" "$(rcli HEXISTS apikey:hash_map "$HASH1")" "0"
check_eq "delete removes concurrency:{id}" "$(rcli EXISTS "concurrency:$ID1")" "0"
check_eq "delete leaves other keys" "$(rcli HGET apikey:hash_map "$HASH2")" "$ID2"
check_eq "delete leaves other keys' data" "$(rcli EXISTS "apikey:$ID2")" "1"
run delete "$ID1"
check_rc "deleting again exits 1" 1
run show "$ID1"
check_rc "show after delete exits 1" 1
run delete "$ID2"
check_rc "delete with a string counter exits 0" 0
check_eq "string counter removed" "$(rcli EXISTS "concurrency:$ID2")" "0"
run delete "$ID3"
check_eq "Redis is empty after deleting every key" "$(rcli DBSIZE)" "0"
run list
check_rc "list with no keys exits 0" 0
run list --json
check_eq "list --json with no keys" "$OUT" "[]"

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
