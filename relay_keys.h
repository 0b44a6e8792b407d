/*
 * relay_keys.h - pure helpers for relay keys: hashing, format checks,
 * generation, the ISO-8601 timestamps stored beside them, and reading and
 * checking the key hash secret.
 *
 * Nothing here includes an httpd or APR header, so the command-line tool
 * and the C unit tests link this file alone.
 */
#ifndef RELAY_KEYS_H
#define RELAY_KEYS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define RELAY_KEY_PREFIX "cr_"
#define RELAY_KEY_RANDOM_BYTES 32
/* "cr_" + 64 hex characters; a buffer for one needs a byte more for the NUL */
#define RELAY_KEY_LEN (3 + 2 * RELAY_KEY_RANDOM_BYTES)
#define RELAY_SHA256_LEN 32
#define RELAY_SHA256_HEX_LEN (2 * RELAY_SHA256_LEN)
#define RELAY_UUID_LEN 36
/* "2025-01-31T23:59:59.123Z" */
#define RELAY_ISO_LEN 24
/* Length bounds a presented key must respect before it is even hashed. */
#define RELAY_KEY_MIN_LEN 10
#define RELAY_KEY_MAX_LEN 512

typedef struct {
    uint32_t state[8];
    uint64_t bytes;
    unsigned char block[64];
    size_t used;
} relay_sha256_ctx;

void relay_sha256_init(relay_sha256_ctx *ctx);
void relay_sha256_update(relay_sha256_ctx *ctx, const void *data, size_t len);
void relay_sha256_final(relay_sha256_ctx *ctx, unsigned char out[RELAY_SHA256_LEN]);
void relay_sha256(const void *data, size_t len, unsigned char out[RELAY_SHA256_LEN]);
void relay_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                       unsigned char out[RELAY_SHA256_LEN]);

/* Lowercase hex of len bytes into out (2*len+1 bytes). */
void relay_hex(const unsigned char *in, size_t len, char *out);

/*
 * The stored form of a key: lowercase hex SHA-256 of the key string followed
 * by the secret (the schema claude-relay-service uses). out holds 65 bytes.
 * The secret is hashed up to its terminating NUL, so every source of it must
 * pass relay_key_secret_check, which refuses a NUL byte inside it.
 */
void relay_key_hash(const char *key, size_t keylen, const char *secret,
                    char out[RELAY_SHA256_HEX_LEN + 1]);

/*
 * Whether a presented key is worth a lookup: starts with "cr_", length within
 * RELAY_KEY_MIN_LEN..RELAY_KEY_MAX_LEN, and only visible ASCII characters.
 */
int relay_key_format_ok(const char *key, size_t keylen);

/* Whether s is exactly a key this software generates: "cr_" + 64 lowercase hex. */
int relay_key_is_canonical(const char *s);

/* Build "cr_" + hex of 32 random bytes the caller supplies. out: RELAY_KEY_LEN+1. */
void relay_key_from_random(const unsigned char rnd[RELAY_KEY_RANDOM_BYTES],
                           char out[RELAY_KEY_LEN + 1]);

/* The display preview stored at creation, e.g. "cr_1a2b…9f0e" (UTF-8 ellipsis). */
void relay_key_preview(const char *key, char *out, size_t outlen);

/* A version-4 UUID from 16 random bytes. out: RELAY_UUID_LEN+1. */
void relay_uuid_from_random(const unsigned char rnd[16], char out[RELAY_UUID_LEN + 1]);

/* Whether s is a UUID in the 8-4-4-4-12 lowercase/uppercase hex form. */
int relay_uuid_ok(const char *s);

/* Format t (UTC) with milliseconds, "YYYY-MM-DDTHH:MM:SS.mmmZ". out: RELAY_ISO_LEN+1. */
void relay_iso8601(time_t t, int millis, char out[RELAY_ISO_LEN + 1]);

/*
 * Parse an expiry the user typed: "YYYY-MM-DD" (end of that day, UTC) or a full
 * ISO-8601 UTC time "YYYY-MM-DDTHH:MM[:SS[.mmm]]Z". On success writes the
 * canonical RELAY_ISO_LEN form to out and returns 0; returns -1 on bad input.
 */
int relay_iso8601_normalize(const char *in, char out[RELAY_ISO_LEN + 1]);

/*
 * Parse a non-negative decimal limit ("" means 0). Returns 0 and sets *out, or
 * -1 when the text is not a whole number from 0 to 2^31-1.
 */
int relay_parse_limit(const char *s, long *out);

/* The shortest key hash secret accepted, from any source. */
#define RELAY_SECRET_MIN_BYTES 16
/* The largest secret file read (RelayKeyHashSecret file:, relay-keys --secret-file, ...). */
#define RELAY_SECRET_FILE_MAX 4096

/*
 * Read a secret file, the one reader behind every file: value and relay-keys
 * --secret-file, so the module and the tool see the same secret. The file
 * holds the secret on one line; exactly one trailing "\n" or "\r\n" is
 * dropped. Refused: a NUL byte, any other line break, an empty secret, a file
 * of cap bytes or more. Returns 0 with the secret NUL-terminated in buf (cap
 * bytes) and its length in *len; or -1 with buf wiped and a sentence naming
 * path in why (whylen bytes).
 */
int relay_secret_read(const char *path, char *buf, size_t cap, size_t *len, char *why,
                      size_t whylen);

/*
 * The rule for the key hash secret from any source: at least
 * RELAY_SECRET_MIN_BYTES, no line break, no NUL byte. Returns 0, or -1 with a
 * sentence in why that starts with what (e.g. "the value", "--secret").
 */
int relay_key_secret_check(const char *s, size_t len, const char *what, char *why, size_t whylen);

#endif
