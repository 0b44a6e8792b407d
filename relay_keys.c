/*
 * relay_keys.c - pure helpers for relay keys (see relay_keys.h).
 */
#include "relay_keys.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(relay_sha256_ctx *ctx, const unsigned char *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, h;
    int i;

    for (i = 0; i < 16; i++) {
        w[i] = ((uint32_t)p[4 * i] << 24) | ((uint32_t)p[4 * i + 1] << 16) |
               ((uint32_t)p[4 * i + 2] << 8) | (uint32_t)p[4 * i + 3];
    }
    for (i = 16; i < 64; i++) {
        uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = ctx->state[0];
    b = ctx->state[1];
    c = ctx->state[2];
    d = ctx->state[3];
    e = ctx->state[4];
    f = ctx->state[5];
    g = ctx->state[6];
    h = ctx->state[7];
    for (i = 0; i < 64; i++) {
        uint32_t S1 = ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25);
        uint32_t ch = (e & f) ^ (~e & g);
        uint32_t t1 = h + S1 + ch + sha256_k[i] + w[i];
        uint32_t S0 = ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22);
        uint32_t mj = (a & b) ^ (a & c) ^ (b & c);
        uint32_t t2 = S0 + mj;
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    ctx->state[0] += a;
    ctx->state[1] += b;
    ctx->state[2] += c;
    ctx->state[3] += d;
    ctx->state[4] += e;
    ctx->state[5] += f;
    ctx->state[6] += g;
    ctx->state[7] += h;
}

void relay_sha256_init(relay_sha256_ctx *ctx)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(ctx->state, iv, sizeof(iv));
    ctx->bytes = 0;
    ctx->used = 0;
}

void relay_sha256_update(relay_sha256_ctx *ctx, const void *data, size_t len)
{
    const unsigned char *p = data;

    ctx->bytes += len;
    while (len > 0) {
        size_t take = 64 - ctx->used;
        if (take > len) {
            take = len;
        }
        memcpy(ctx->block + ctx->used, p, take);
        ctx->used += take;
        p += take;
        len -= take;
        if (ctx->used == 64) {
            sha256_block(ctx, ctx->block);
            ctx->used = 0;
        }
    }
}

void relay_sha256_final(relay_sha256_ctx *ctx, unsigned char out[RELAY_SHA256_LEN])
{
    uint64_t bits = ctx->bytes * 8;
    unsigned char pad = 0x80;
    unsigned char zero = 0;
    unsigned char len[8];
    int i;

    relay_sha256_update(ctx, &pad, 1);
    while (ctx->used != 56) {
        relay_sha256_update(ctx, &zero, 1);
    }
    for (i = 0; i < 8; i++) {
        len[i] = (unsigned char)(bits >> (56 - 8 * i));
    }
    relay_sha256_update(ctx, len, 8);
    for (i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(ctx->state[i] >> 24);
        out[4 * i + 1] = (unsigned char)(ctx->state[i] >> 16);
        out[4 * i + 2] = (unsigned char)(ctx->state[i] >> 8);
        out[4 * i + 3] = (unsigned char)ctx->state[i];
    }
}

void relay_sha256(const void *data, size_t len, unsigned char out[RELAY_SHA256_LEN])
{
    relay_sha256_ctx ctx;
    relay_sha256_init(&ctx);
    relay_sha256_update(&ctx, data, len);
    relay_sha256_final(&ctx, out);
}

void relay_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                       unsigned char out[RELAY_SHA256_LEN])
{
    unsigned char k[64], pad[64], inner[RELAY_SHA256_LEN];
    relay_sha256_ctx ctx;
    size_t i;

    memset(k, 0, sizeof(k));
    if (keylen > sizeof(k)) {
        relay_sha256(key, keylen, k);
    }
    else {
        memcpy(k, key, keylen);
    }
    for (i = 0; i < 64; i++) {
        pad[i] = k[i] ^ 0x36;
    }
    relay_sha256_init(&ctx);
    relay_sha256_update(&ctx, pad, 64);
    relay_sha256_update(&ctx, msg, msglen);
    relay_sha256_final(&ctx, inner);
    for (i = 0; i < 64; i++) {
        pad[i] = k[i] ^ 0x5c;
    }
    relay_sha256_init(&ctx);
    relay_sha256_update(&ctx, pad, 64);
    relay_sha256_update(&ctx, inner, sizeof(inner));
    relay_sha256_final(&ctx, out);
}

void relay_hex(const unsigned char *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0x0f];
    }
    out[2 * len] = '\0';
}

void relay_key_hash(const char *key, size_t keylen, const char *secret,
                    char out[RELAY_SHA256_HEX_LEN + 1])
{
    unsigned char digest[RELAY_SHA256_LEN];
    relay_sha256_ctx ctx;

    relay_sha256_init(&ctx);
    relay_sha256_update(&ctx, key, keylen);
    if (secret) {
        relay_sha256_update(&ctx, secret, strlen(secret));
    }
    relay_sha256_final(&ctx, digest);
    relay_hex(digest, sizeof(digest), out);
}

int relay_key_format_ok(const char *key, size_t keylen)
{
    size_t i;

    if (keylen < RELAY_KEY_MIN_LEN || keylen > RELAY_KEY_MAX_LEN) {
        return 0;
    }
    if (strncmp(key, RELAY_KEY_PREFIX, 3) != 0) {
        return 0;
    }
    for (i = 0; i < keylen; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c <= 0x20 || c >= 0x7f) {
            return 0;
        }
    }
    return 1;
}

int relay_key_is_canonical(const char *s)
{
    size_t i;

    if (strncmp(s, RELAY_KEY_PREFIX, 3) != 0 || strlen(s) != RELAY_KEY_LEN) {
        return 0;
    }
    for (i = 3; i < RELAY_KEY_LEN; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) {
            return 0;
        }
    }
    return 1;
}

void relay_key_from_random(const unsigned char rnd[RELAY_KEY_RANDOM_BYTES],
                           char out[RELAY_KEY_LEN + 1])
{
    memcpy(out, RELAY_KEY_PREFIX, 3);
    relay_hex(rnd, RELAY_KEY_RANDOM_BYTES, out + 3);
}

void relay_key_preview(const char *key, char *out, size_t outlen)
{
    size_t len = strlen(key);

    if (len <= 11) {
        snprintf(out, outlen, "%s", key);
        return;
    }
    /* prefix and first four characters, an ellipsis, the last four */
    snprintf(out, outlen, "%.7s\xe2\x80\xa6%s", key, key + len - 4);
}

void relay_uuid_from_random(const unsigned char rnd[16], char out[RELAY_UUID_LEN + 1])
{
    unsigned char b[16];
    char hex[33];

    memcpy(b, rnd, 16);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    relay_hex(b, 16, hex);
    snprintf(out, RELAY_UUID_LEN + 1, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16,
             hex + 20);
}

int relay_uuid_ok(const char *s)
{
    size_t i;

    if (strlen(s) != RELAY_UUID_LEN) {
        return 0;
    }
    for (i = 0; i < RELAY_UUID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') {
                return 0;
            }
        }
        else if (!isxdigit((unsigned char)s[i])) {
            return 0;
        }
    }
    return 1;
}

/* Write one fixed-width decimal field. */
static char *put_num(char *p, unsigned v, int width)
{
    int i;
    for (i = width - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return p + width;
}

/* The canonical "YYYY-MM-DDTHH:MM:SS.mmmZ" form. */
static void fmt_iso(char out[RELAY_ISO_LEN + 1], unsigned y, unsigned mo, unsigned d, unsigned h,
                    unsigned mi, unsigned s, unsigned ms)
{
    char *p = out;
    p = put_num(p, y, 4);
    *p++ = '-';
    p = put_num(p, mo, 2);
    *p++ = '-';
    p = put_num(p, d, 2);
    *p++ = 'T';
    p = put_num(p, h, 2);
    *p++ = ':';
    p = put_num(p, mi, 2);
    *p++ = ':';
    p = put_num(p, s, 2);
    *p++ = '.';
    p = put_num(p, ms, 3);
    *p++ = 'Z';
    *p = '\0';
}

void relay_iso8601(time_t t, int millis, char out[RELAY_ISO_LEN + 1])
{
    struct tm tm;

    gmtime_r(&t, &tm);
    fmt_iso(out, (unsigned)(tm.tm_year + 1900), (unsigned)(tm.tm_mon + 1), (unsigned)tm.tm_mday,
            (unsigned)tm.tm_hour, (unsigned)tm.tm_min, (unsigned)tm.tm_sec,
            (unsigned)(millis < 0 ? 0 : millis % 1000));
}

/* Read exactly n digits from *p into *v. */
static int take_digits(const char **p, int n, int *v)
{
    int i;

    *v = 0;
    for (i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i])) {
            return -1;
        }
        *v = *v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    return 0;
}

static int days_in_month(int y, int m)
{
    static const int d[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : d[m - 1];
}

int relay_iso8601_normalize(const char *in, char out[RELAY_ISO_LEN + 1])
{
    const char *p = in;
    int y, mo, d, h = 23, mi = 59, s = 59, ms = 999;

    if (take_digits(&p, 4, &y) || *p++ != '-' || take_digits(&p, 2, &mo) || *p++ != '-' ||
        take_digits(&p, 2, &d)) {
        return -1;
    }
    if (*p == 'T' || *p == 't' || *p == ' ') {
        p++;
        s = 0;
        ms = 0;
        if (take_digits(&p, 2, &h) || *p++ != ':' || take_digits(&p, 2, &mi)) {
            return -1;
        }
        if (*p == ':') {
            p++;
            if (take_digits(&p, 2, &s)) {
                return -1;
            }
            if (*p == '.') {
                int n = 0;
                p++;
                ms = 0;
                while (isdigit((unsigned char)*p)) {
                    if (n < 3) {
                        ms = ms * 10 + (*p - '0');
                    }
                    n++;
                    p++;
                }
                if (n == 0) {
                    return -1;
                }
                while (n < 3) {
                    ms *= 10;
                    n++;
                }
            }
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        }
        else if (strcmp(p, "+00:00") == 0) {
            p += 6;
        }
        else {
            return -1;
        }
    }
    if (*p != '\0') {
        return -1;
    }
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 ||
        s > 59) {
        return -1;
    }
    fmt_iso(out, (unsigned)y, (unsigned)mo, (unsigned)d, (unsigned)h, (unsigned)mi, (unsigned)s,
            (unsigned)ms);
    return 0;
}

int relay_parse_limit(const char *s, long *out)
{
    long v = 0;
    const char *p = s;

    while (*p == ' ' || *p == '\t') {
        p++;
    }
    if (*p == '\0') {
        *out = 0;
        return 0;
    }
    if (!isdigit((unsigned char)*p)) {
        return -1;
    }
    while (isdigit((unsigned char)*p)) {
        /* check before multiplying: v * 10 overflows a 32-bit long */
        if (v > (2147483647L - (*p - '0')) / 10) {
            return -1;
        }
        v = v * 10 + (*p - '0');
        p++;
    }
    while (*p == ' ' || *p == '\t') {
        p++;
    }
    if (*p != '\0') {
        return -1;
    }
    *out = v;
    return 0;
}

/* Overwrite n bytes so that the compiler cannot drop it as a dead store. */
static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;

    while (n-- > 0) {
        *v++ = 0;
    }
}

/* Whether n bytes at s hold a CR or an LF. */
static int has_line_break(const char *s, size_t n)
{
    return memchr(s, '\n', n) != NULL || memchr(s, '\r', n) != NULL;
}

int relay_secret_read(const char *path, char *buf, size_t cap, size_t *len, char *why,
                      size_t whylen)
{
    size_t n = 0;
    ssize_t got;
    int fd, err;

    if (cap < 2) {
        snprintf(why, whylen, "no room to read %s", path);
        return -1;
    }
    /* open/read rather than stdio: no copy of the secret left in a FILE buffer */
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    /* filling all cap bytes means the file is too large: a secret needs room for its NUL */
    while (n < cap) {
        got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got < 0) {
            err = errno;
            close(fd);
            wipe(buf, n);
            snprintf(why, whylen, "cannot read %s: %s", path, strerror(err));
            return -1;
        }
        if (got == 0) {
            break;
        }
        n += (size_t)got;
    }
    close(fd);
    if (n == cap) {
        wipe(buf, n);
        snprintf(why, whylen, "%s is larger than %zu bytes; a secret file holds one line", path,
                 cap - 1);
        return -1;
    }
    /* a NUL would end the secret early where it is used as a C string */
    if (memchr(buf, '\0', n) != NULL) {
        wipe(buf, n);
        snprintf(why, whylen, "%s contains a NUL byte; a secret file holds one line of text", path);
        return -1;
    }
    /* the line ending that echo or an editor adds is not part of the secret */
    if (n > 0 && buf[n - 1] == '\n') {
        n--;
        if (n > 0 && buf[n - 1] == '\r') {
            n--;
        }
    }
    if (has_line_break(buf, n)) {
        wipe(buf, n);
        snprintf(why, whylen, "%s has more than one line; put the secret on a single line", path);
        return -1;
    }
    if (n == 0) {
        snprintf(why, whylen, "%s is empty", path);
        return -1;
    }
    buf[n] = '\0';
    *len = n;
    return 0;
}

int relay_key_secret_check(const char *s, size_t len, const char *what, char *why, size_t whylen)
{
    if (memchr(s, '\0', len) != NULL) {
        snprintf(why, whylen, "%s contains a NUL byte", what);
        return -1;
    }
    if (has_line_break(s, len)) {
        snprintf(why, whylen, "%s contains a line break", what);
        return -1;
    }
    if (len < RELAY_SECRET_MIN_BYTES) {
        snprintf(why, whylen,
                 "%s is %zu byte%s long; the key hash secret needs at least %d bytes "
                 "(for example 64 random hex digits)",
                 what, len, len == 1 ? "" : "s", RELAY_SECRET_MIN_BYTES);
        return -1;
    }
    return 0;
}
