/*
 * test_keys.c - unit tests for relay_keys.c (hashing, key and UUID
 * generation, format checks, ISO-8601 handling, limit parsing, the secret
 * file reader and the key hash secret rule).
 *
 * Links relay_keys.c alone:
 *   gcc -Wall -Wextra -Werror -O2 -I. t/unit/test_keys.c relay_keys.c -o /tmp/test_keys
 *
 * Prints one line per failed check and finally "N passed, N failed";
 * exits non-zero when anything failed.
 */
#include "relay_keys.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int passed;
static int failed;

/* Record one boolean check. */
static void check(int ok, const char *file, int line, const char *what)
{
    if (ok) {
        passed++;
    }
    else {
        failed++;
        printf("FAIL %s:%d: expected %s\n", file, line, what);
    }
}

/* Record one string comparison, showing both sides on failure. */
static void check_str(const char *got, const char *want, const char *file, int line,
                      const char *what)
{
    if (got != NULL && strcmp(got, want) == 0) {
        passed++;
    }
    else {
        failed++;
        printf("FAIL %s:%d: %s: expected \"%s\", got \"%s\"\n", file, line, what, want,
               got ? got : "(null)");
    }
}

#define CHECK(cond) check((cond) ? 1 : 0, __FILE__, __LINE__, #cond)
#define CHECK_STR(got, want) check_str((got), (want), __FILE__, __LINE__, #got)

/* Hex SHA-256 of a buffer. */
static void sha_hex(const void *data, size_t len, char out[RELAY_SHA256_HEX_LEN + 1])
{
    unsigned char d[RELAY_SHA256_LEN];
    relay_sha256(data, len, d);
    relay_hex(d, sizeof(d), out);
}

/* Hex HMAC-SHA256. */
static void hmac_hex(const void *key, size_t keylen, const void *msg, size_t msglen,
                     char out[RELAY_SHA256_HEX_LEN + 1])
{
    unsigned char d[RELAY_SHA256_LEN];
    relay_hmac_sha256(key, keylen, msg, msglen, d);
    relay_hex(d, sizeof(d), out);
}

/* SHA-256 against the FIPS 180-2 / NIST examples. */
static void test_sha256(void)
{
    char hex[RELAY_SHA256_HEX_LEN + 1];
    static const char *two_block = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    static char million[1000000];
    static const size_t chunks[] = {1, 3, 7, 13, 63, 64, 65, 127, 1000, 4097};
    relay_sha256_ctx ctx;
    unsigned char d[RELAY_SHA256_LEN];
    size_t off, i;

    sha_hex("", 0, hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha_hex("abc", 3, hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    sha_hex(two_block, strlen(two_block), hex);
    CHECK_STR(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");

    /* one million 'a' fed in odd, varying chunk sizes */
    memset(million, 'a', sizeof(million));
    relay_sha256_init(&ctx);
    off = 0;
    i = 0;
    while (off < sizeof(million)) {
        size_t n = chunks[i++ % (sizeof(chunks) / sizeof(chunks[0]))];
        if (n > sizeof(million) - off) {
            n = sizeof(million) - off;
        }
        relay_sha256_update(&ctx, million + off, n);
        off += n;
    }
    relay_sha256_final(&ctx, d);
    relay_hex(d, sizeof(d), hex);
    CHECK_STR(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

    /* and in one piece */
    sha_hex(million, sizeof(million), hex);
    CHECK_STR(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

/* HMAC-SHA256 against RFC 4231 test cases 1, 2 and 6. */
static void test_hmac(void)
{
    char hex[RELAY_SHA256_HEX_LEN + 1];
    unsigned char key[131];
    static const char *msg6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    static const char *msg2 = "what do ya want for nothing?";

    /* test case 1: 20 bytes of 0x0b, "Hi There" */
    memset(key, 0x0b, 20);
    hmac_hex(key, 20, "Hi There", 8, hex);
    CHECK_STR(hex, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");

    /* test case 2: "Jefe" */
    hmac_hex("Jefe", 4, msg2, strlen(msg2), hex);
    CHECK_STR(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");

    /* test case 6: 131 bytes of 0xaa, longer than the 64-byte block */
    memset(key, 0xaa, sizeof(key));
    hmac_hex(key, sizeof(key), msg6, strlen(msg6), hex);
    CHECK_STR(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

/* relay_key_hash: SHA-256 of key followed by secret. */
static void test_key_hash(void)
{
    static const char *key = "cr_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    char hex[RELAY_SHA256_HEX_LEN + 1];

    /*
     * Computed offline with:
     *   printf '%s'
     * "cr_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeftest-secret" | sha256sum
     */
    relay_key_hash(key, strlen(key), "test-secret", hex);
    CHECK_STR(hex, "5c1f59be1d275d6bfdf9d933c873aed225b2f3e75b4f0f33304af11d113edfe7");
    CHECK(strlen(hex) == RELAY_SHA256_HEX_LEN);

    /*
     * Empty secret: the key alone. Computed offline with:
     *   printf '%s' "cr_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" |
     * sha256sum
     */
    relay_key_hash(key, strlen(key), "", hex);
    CHECK_STR(hex, "b1a6a35d6e27766d5f2e41a3440defa53f560916332aad262b8ca1ee7cf131e6");

    /* only keylen bytes of the key count */
    relay_key_hash("cr_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdefXYZ",
                   strlen(key), "test-secret", hex);
    CHECK_STR(hex, "5c1f59be1d275d6bfdf9d933c873aed225b2f3e75b4f0f33304af11d113edfe7");
}

/* relay_key_format_ok: prefix, length bounds, visible ASCII only. */
static void test_format_ok(void)
{
    static const char *good = "cr_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    char buf[600];

    CHECK(relay_key_format_ok(good, strlen(good)) == 1);
    CHECK(relay_key_format_ok("sk_0123456789abcdef", 19) == 0);
    CHECK(relay_key_format_ok("0123456789abcdef", 16) == 0);
    CHECK(relay_key_format_ok("cr_123456", 9) == 0);
    CHECK(relay_key_format_ok("cr_1234567", 10) == 1);
    CHECK(relay_key_format_ok("", 0) == 0);

    /* 512 accepted, 513 rejected */
    memset(buf, 'x', sizeof(buf));
    memcpy(buf, "cr_", 3);
    CHECK(relay_key_format_ok(buf, 512) == 1);
    CHECK(relay_key_format_ok(buf, 513) == 0);

    /* control characters, space, NUL in the middle, non-ASCII */
    CHECK(relay_key_format_ok("cr_1234567\r\n", 12) == 0);
    CHECK(relay_key_format_ok("cr_12345\n67", 11) == 0);
    CHECK(relay_key_format_ok("cr_1234\r567", 11) == 0);
    CHECK(relay_key_format_ok("cr_1234 5678", 12) == 0);
    CHECK(relay_key_format_ok("cr_1234\t5678", 12) == 0);
    CHECK(relay_key_format_ok("cr_1234\0"
                              "5678",
                              12) == 0);
    CHECK(relay_key_format_ok("cr_1234\xc3\xa9"
                              "5678",
                              13) == 0);
    CHECK(relay_key_format_ok("cr_1234\x80"
                              "5678",
                              12) == 0);
    CHECK(relay_key_format_ok("cr_1234\x7f"
                              "5678",
                              12) == 0);
    CHECK(relay_key_format_ok("cr_12345678~!", 13) == 1);
}

/* relay_key_is_canonical: "cr_" + exactly 64 lowercase hex. */
static void test_canonical(void)
{
    char buf[80];
    static const char *good = "cr_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    CHECK(relay_key_is_canonical(good) == 1);
    snprintf(buf, sizeof(buf), "%s0", good);
    CHECK(relay_key_is_canonical(buf) == 0);
    snprintf(buf, sizeof(buf), "%.66s", good);
    CHECK(relay_key_is_canonical(buf) == 0);
    snprintf(buf, sizeof(buf), "%s", good);
    buf[10] = 'A';
    CHECK(relay_key_is_canonical(buf) == 0);
    buf[10] = 'g';
    CHECK(relay_key_is_canonical(buf) == 0);
    snprintf(buf, sizeof(buf), "CR_%s", good + 3);
    CHECK(relay_key_is_canonical(buf) == 0);
    CHECK(relay_key_is_canonical("") == 0);
    CHECK(relay_key_is_canonical("cr_") == 0);
}

/* relay_key_from_random and relay_key_preview. */
static void test_from_random_preview(void)
{
    unsigned char rnd[RELAY_KEY_RANDOM_BYTES];
    char key[RELAY_KEY_LEN + 1];
    char prev[64];
    size_t i;
    int hex_ok = 1;

    for (i = 0; i < sizeof(rnd); i++) {
        rnd[i] = (unsigned char)(i * 37 + 0xa5);
    }
    relay_key_from_random(rnd, key);
    CHECK(strlen(key) == RELAY_KEY_LEN);
    CHECK(strncmp(key, "cr_", 3) == 0);
    for (i = 3; i < RELAY_KEY_LEN; i++) {
        if (!((key[i] >= '0' && key[i] <= '9') || (key[i] >= 'a' && key[i] <= 'f'))) {
            hex_ok = 0;
        }
    }
    CHECK(hex_ok);
    CHECK(relay_key_is_canonical(key) == 1);
    CHECK(relay_key_format_ok(key, strlen(key)) == 1);
    /* first byte 0xa5, second 0xca, last (31*37+0xa5) & 0xff = 0x20 */
    CHECK(strncmp(key, "cr_a5ca", 7) == 0);
    CHECK_STR(key + RELAY_KEY_LEN - 2, "20");

    memset(rnd, 0, sizeof(rnd));
    relay_key_from_random(rnd, key);
    CHECK_STR(key, "cr_0000000000000000000000000000000000000000000000000000000000000000");

    relay_key_preview("cr_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", prev,
                      sizeof(prev));
    CHECK_STR(prev, "cr_0123\xe2\x80\xa6"
                    "cdef");
    CHECK(strlen(prev) == 3 + 4 + 3 + 4);
}

/* relay_uuid_from_random and relay_uuid_ok. */
static void test_uuid(void)
{
    unsigned char rnd[16];
    char u[RELAY_UUID_LEN + 1];
    int b;

    memset(rnd, 0xff, sizeof(rnd));
    relay_uuid_from_random(rnd, u);
    CHECK(strlen(u) == RELAY_UUID_LEN);
    CHECK_STR(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    CHECK(relay_uuid_ok(u) == 1);

    memset(rnd, 0x00, sizeof(rnd));
    relay_uuid_from_random(rnd, u);
    CHECK_STR(u, "00000000-0000-4000-8000-000000000000");
    CHECK(relay_uuid_ok(u) == 1);

    /* every byte value in the version and variant positions */
    for (b = 0; b < 256; b++) {
        memset(rnd, b, sizeof(rnd));
        relay_uuid_from_random(rnd, u);
        if (u[14] != '4' || !strchr("89ab", u[19]) || !relay_uuid_ok(u)) {
            CHECK(u[14] == '4' && strchr("89ab", u[19]) && relay_uuid_ok(u));
            break;
        }
    }
    CHECK(b == 256);

    CHECK(relay_uuid_ok("1B4E28BA-2FA1-11D2-883F-B9A761BDE3FB") == 1);
    CHECK(relay_uuid_ok("*") == 0);
    CHECK(relay_uuid_ok("../x") == 0);
    CHECK(relay_uuid_ok("") == 0);
    CHECK(relay_uuid_ok("1b4e28ba-2fa1-11d2-883f-b9a761bde3f") == 0);   /* 35 */
    CHECK(relay_uuid_ok("1b4e28ba-2fa1-11d2-883f-b9a761bde3fb0") == 0); /* 37 */
    CHECK(relay_uuid_ok("1b4e28ba-2fa1-11d2-883f-b9a761bde3fg") == 0);  /* bad hex */
    CHECK(relay_uuid_ok("1b4e28ba_2fa1-11d2-883f-b9a761bde3fb") == 0);  /* bad dash */
    CHECK(relay_uuid_ok("1b4e28ba-2fa1-11d2-883f-b9a761bde3f*") == 0);
    CHECK(relay_uuid_ok("1b4e28ba2-fa1-11d2-883f-b9a761bde3fb") == 0);
}

/* relay_iso8601: formatting with milliseconds. */
static void test_iso8601(void)
{
    char out[RELAY_ISO_LEN + 1];

    relay_iso8601(0, 0, out);
    CHECK_STR(out, "1970-01-01T00:00:00.000Z");
    /* date -u -d @1700000000 gives 2023-11-14T22:13:20 */
    relay_iso8601(1700000000, 123, out);
    CHECK_STR(out, "2023-11-14T22:13:20.123Z");
    relay_iso8601(1700000000, 7, out);
    CHECK_STR(out, "2023-11-14T22:13:20.007Z");
    /* date -u -d @951782400 gives 2000-02-29T00:00:00 */
    relay_iso8601(951782400, 999, out);
    CHECK_STR(out, "2000-02-29T00:00:00.999Z");
    CHECK(strlen(out) == RELAY_ISO_LEN);
}

/* relay_iso8601_normalize: accepted forms and rejections. */
static void test_normalize(void)
{
    char out[RELAY_ISO_LEN + 1];

    CHECK(relay_iso8601_normalize("2030-06-15", out) == 0);
    CHECK_STR(out, "2030-06-15T23:59:59.999Z");
    CHECK(relay_iso8601_normalize("2030-06-15T10:20Z", out) == 0);
    CHECK_STR(out, "2030-06-15T10:20:00.000Z");
    CHECK(relay_iso8601_normalize("2030-06-15T10:20:30Z", out) == 0);
    CHECK_STR(out, "2030-06-15T10:20:30.000Z");
    CHECK(relay_iso8601_normalize("2030-06-15T10:20:30.5Z", out) == 0);
    CHECK_STR(out, "2030-06-15T10:20:30.500Z");
    CHECK(relay_iso8601_normalize("2030-06-15T10:20:30.123Z", out) == 0);
    CHECK_STR(out, "2030-06-15T10:20:30.123Z");
    CHECK(relay_iso8601_normalize("2030-06-15T10:20:30.123456Z", out) == 0);
    CHECK_STR(out, "2030-06-15T10:20:30.123Z");
    CHECK(relay_iso8601_normalize("2030-06-15T10:20:30+00:00", out) == 0);
    CHECK_STR(out, "2030-06-15T10:20:30.000Z");
    CHECK(relay_iso8601_normalize("2030-06-15T10:20+00:00", out) == 0);
    CHECK_STR(out, "2030-06-15T10:20:00.000Z");
    CHECK(relay_iso8601_normalize("2024-02-29", out) == 0);
    CHECK_STR(out, "2024-02-29T23:59:59.999Z");
    CHECK(relay_iso8601_normalize("2000-02-29", out) == 0);

    CHECK(relay_iso8601_normalize("2030-02-30", out) == -1);
    CHECK(relay_iso8601_normalize("2023-02-29", out) == -1);
    CHECK(relay_iso8601_normalize("2100-02-29", out) == -1);
    CHECK(relay_iso8601_normalize("2030-13-01", out) == -1);
    CHECK(relay_iso8601_normalize("2030-00-01", out) == -1);
    CHECK(relay_iso8601_normalize("2030-04-31", out) == -1);
    CHECK(relay_iso8601_normalize("2030-01-00", out) == -1);
    CHECK(relay_iso8601_normalize("2030-06-15T24:00Z", out) == -1);
    CHECK(relay_iso8601_normalize("2030-06-15T10:60Z", out) == -1);
    CHECK(relay_iso8601_normalize("2030-06-15T10:20:60Z", out) == -1);
    CHECK(relay_iso8601_normalize("garbage", out) == -1);
    CHECK(relay_iso8601_normalize("", out) == -1);
    CHECK(relay_iso8601_normalize("2030", out) == -1);
    CHECK(relay_iso8601_normalize("2030-06", out) == -1);
    CHECK(relay_iso8601_normalize("2030-6-15", out) == -1);
    CHECK(relay_iso8601_normalize("2030-06-15x", out) == -1);
    CHECK(relay_iso8601_normalize("2030-06-15 ", out) == -1);
    CHECK(relay_iso8601_normalize("2030-06-15T10:20:30Zjunk", out) == -1);
    CHECK(relay_iso8601_normalize("2030-06-15T10:20:30", out) == -1);
    CHECK(relay_iso8601_normalize("2030-06-15T10:20:30.Z", out) == -1);
    CHECK(relay_iso8601_normalize("2030-06-15T10:20:30+01:00", out) == -1);
    CHECK(relay_iso8601_normalize("2030-06-15T10:20:30+00:00x", out) == -1);
    CHECK(relay_iso8601_normalize("2030-06-15T", out) == -1);
}

/* relay_parse_limit: whole numbers 0..2^31-1, "" is 0. */
static void test_parse_limit(void)
{
    long v;

    v = 99;
    CHECK(relay_parse_limit("", &v) == 0);
    CHECK(v == 0);
    CHECK(relay_parse_limit("0", &v) == 0 && v == 0);
    CHECK(relay_parse_limit("5", &v) == 0 && v == 5);
    CHECK(relay_parse_limit(" 7 ", &v) == 0 && v == 7);
    CHECK(relay_parse_limit("2147483647", &v) == 0 && v == 2147483647L);

    v = 42;
    CHECK(relay_parse_limit("-1", &v) == -1);
    CHECK(relay_parse_limit("+1", &v) == -1);
    CHECK(relay_parse_limit("abc", &v) == -1);
    CHECK(relay_parse_limit("1.5", &v) == -1);
    CHECK(relay_parse_limit("5x", &v) == -1);
    CHECK(relay_parse_limit("5 5", &v) == -1);
    CHECK(relay_parse_limit("2147483648", &v) == -1);
    CHECK(relay_parse_limit("21474836470", &v) == -1);
    CHECK(relay_parse_limit("99999999999999999999999", &v) == -1);
    CHECK(v == 42); /* untouched on failure */
}

static char tmpdir[64];
static char made[32][128];
static int nmade;

/* Write n bytes to the file name in the test folder; its path goes to path. */
static void put_file(const char *name, const void *data, size_t n, char path[128])
{
    FILE *f;

    snprintf(path, 128, "%s/%s", tmpdir, name);
    f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, n, f) != n || fclose(f) != 0 || nmade == 32) {
        printf("FAIL cannot write %s\n", path);
        exit(1);
    }
    memcpy(made[nmade++], path, 128);
}

/* Remove the files put_file wrote and the test folder. */
static void remove_files(void)
{
    while (nmade > 0) {
        unlink(made[--nmade]);
    }
    rmdir(tmpdir);
}

/* Whether why holds want and path, showing why on failure. */
static void check_why(const char *why, const char *want, const char *path, int line)
{
    if (strstr(why, want) != NULL && strstr(why, path) != NULL) {
        passed++;
    }
    else {
        failed++;
        printf("FAIL %s:%d: expected \"%s\" naming %s, got \"%s\"\n", __FILE__, line, want, path,
               why);
    }
}

#define SECRET32 "0123456789abcdef0123456789abcdef"

/* relay_secret_read: one line, one trailing line ending dropped, the rest refused. */
static void test_secret_read(void)
{
    static char big[RELAY_SECRET_FILE_MAX + 2];
    char buf[RELAY_SECRET_FILE_MAX + 1], why[512], path[128];
    size_t len;
    int i;
    static const struct {
        const char *name, *data;
        size_t n;
    } good[] = {
        {"lf", SECRET32 "\n", 33},
        {"crlf", SECRET32 "\r\n", 34},
        {"bare", SECRET32, 32},
    };

    if (mkdtemp(strcpy(tmpdir, "/tmp/test_keys.XXXXXX")) == NULL) {
        printf("FAIL cannot make a temporary folder\n");
        exit(1);
    }

    /* echo's "\n" and an editor's "\r\n" are not part of the secret */
    for (i = 0; i < 3; i++) {
        put_file(good[i].name, good[i].data, good[i].n, path);
        len = 0;
        CHECK(relay_secret_read(path, buf, sizeof(buf), &len, why, sizeof(why)) == 0);
        CHECK_STR(buf, SECRET32);
        CHECK(len == 32);
    }

    /* a NUL would cut the secret short where it is used as a C string */
    put_file("nul", SECRET32 "\0tail\n", 38, path);
    CHECK(relay_secret_read(path, buf, sizeof(buf), &len, why, sizeof(why)) == -1);
    check_why(why, " contains a NUL byte", path, __LINE__);
    CHECK(memchr(buf, '0', 32) == NULL); /* wiped */
    put_file("nul-first", "\0" SECRET32, 33, path);
    CHECK(relay_secret_read(path, buf, sizeof(buf), &len, why, sizeof(why)) == -1);
    check_why(why, " contains a NUL byte", path, __LINE__);

    /* the old readers disagreed on these: first line vs whole file */
    put_file("two", SECRET32 "\n" SECRET32 "\n", 66, path);
    CHECK(relay_secret_read(path, buf, sizeof(buf), &len, why, sizeof(why)) == -1);
    check_why(why, " has more than one line", path, __LINE__);
    put_file("blank-line", SECRET32 "\n\n", 34, path);
    CHECK(relay_secret_read(path, buf, sizeof(buf), &len, why, sizeof(why)) == -1);
    check_why(why, " has more than one line", path, __LINE__);
    put_file("crcr", SECRET32 "\r\r\n", 35, path);
    CHECK(relay_secret_read(path, buf, sizeof(buf), &len, why, sizeof(why)) == -1);
    check_why(why, " has more than one line", path, __LINE__);
    put_file("lone-cr", SECRET32 "\r", 33, path);
    CHECK(relay_secret_read(path, buf, sizeof(buf), &len, why, sizeof(why)) == -1);
    check_why(why, " has more than one line", path, __LINE__);

    put_file("empty", "", 0, path);
    CHECK(relay_secret_read(path, buf, sizeof(buf), &len, why, sizeof(why)) == -1);
    check_why(why, " is empty", path, __LINE__);
    put_file("newline", "\n", 1, path);
    CHECK(relay_secret_read(path, buf, sizeof(buf), &len, why, sizeof(why)) == -1);
    check_why(why, " is empty", path, __LINE__);

    /* the reader reads; the length rule is relay_key_secret_check's */
    put_file("one", "x", 1, path);
    CHECK(relay_secret_read(path, buf, sizeof(buf), &len, why, sizeof(why)) == 0);
    CHECK(len == 1);
    CHECK(relay_key_secret_check(buf, len, "the file", why, sizeof(why)) == -1);
    CHECK_STR(why, "the file is 1 byte long; the key hash secret needs at least 16 bytes "
                   "(for example 64 random hex digits)");

    /* RELAY_SECRET_FILE_MAX bytes fit; one more is refused */
    memset(big, 'a', sizeof(big));
    put_file("max", big, RELAY_SECRET_FILE_MAX, path);
    CHECK(relay_secret_read(path, buf, sizeof(buf), &len, why, sizeof(why)) == 0);
    CHECK(len == RELAY_SECRET_FILE_MAX && buf[len] == '\0');
    put_file("big", big, RELAY_SECRET_FILE_MAX + 1, path);
    CHECK(relay_secret_read(path, buf, sizeof(buf), &len, why, sizeof(why)) == -1);
    check_why(why, " is larger than 4096 bytes", path, __LINE__);
    CHECK(memchr(buf, 'a', sizeof(buf)) == NULL); /* wiped */
    CHECK(relay_secret_read("/dev/zero", buf, sizeof(buf), &len, why, sizeof(why)) == -1);
    check_why(why, " is larger than 4096 bytes", "/dev/zero", __LINE__);

    snprintf(path, sizeof(path), "%s/missing", tmpdir);
    CHECK(relay_secret_read(path, buf, sizeof(buf), &len, why, sizeof(why)) == -1);
    check_why(why, "cannot read ", path, __LINE__);
    CHECK(relay_secret_read(tmpdir, buf, sizeof(buf), &len, why, sizeof(why)) == -1);
    check_why(why, "cannot read ", tmpdir, __LINE__);

    /* a short why buffer gets a cut sentence, never an overflow */
    memset(why, 'z', sizeof(why));
    CHECK(relay_secret_read(path, buf, sizeof(buf), &len, why, 8) == -1);
    CHECK(strlen(why) == 7 && why[8] == 'z');

    remove_files();
}

/* relay_key_secret_check: 16 bytes or more, no line break, no NUL. */
static void test_secret_check(void)
{
    char why[256];

    CHECK(relay_key_secret_check("0123456789abcdef", 16, "--secret", why, sizeof(why)) == 0);
    CHECK(relay_key_secret_check(SECRET32, 32, "--secret", why, sizeof(why)) == 0);
    CHECK(relay_key_secret_check("0123456789abcde", 15, "--secret", why, sizeof(why)) == -1);
    CHECK_STR(why, "--secret is 15 bytes long; the key hash secret needs at least 16 bytes "
                   "(for example 64 random hex digits)");
    CHECK(relay_key_secret_check("", 0, "the value", why, sizeof(why)) == -1);
    CHECK(relay_key_secret_check(SECRET32 "\n", 33, "the value", why, sizeof(why)) == -1);
    CHECK_STR(why, "the value contains a line break");
    CHECK(relay_key_secret_check("\r" SECRET32, 33, "the value", why, sizeof(why)) == -1);
    CHECK_STR(why, "the value contains a line break");
    CHECK(relay_key_secret_check(SECRET32 "\0" SECRET32, 65, "the value", why, sizeof(why)) == -1);
    CHECK_STR(why, "the value contains a NUL byte");
}

/* Run every test group and print the totals. */
int main(void)
{
    test_sha256();
    test_hmac();
    test_key_hash();
    test_format_ok();
    test_canonical();
    test_from_random_preview();
    test_uuid();
    test_iso8601();
    test_normalize();
    test_parse_limit();
    test_secret_read();
    test_secret_check();

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
