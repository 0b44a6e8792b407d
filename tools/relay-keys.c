/*
 * relay-keys - command-line manager for mod_claude_relay's relay keys.
 *
 * Creates, lists, shows, edits, disables/enables and deletes the relay keys
 * that mod_claude_relay authenticates, in the Redis schema shared with
 * claude-relay-service:
 *
 *   apikey:{id}        hash of strings (id, name, description, apiKey = the
 *                      SHA-256 of key + secret, keyPreview, tokenLimit,
 *                      concurrencyLimit, isActive, createdAt, updatedAt,
 *                      lastUsedAt, expiresAt, createdBy)
 *   apikey:hash_map    hash: stored key hash -> id
 *   concurrency:{id}   sorted set of leases (score = expiry in ms); only read
 *                      here, and removed with the key
 *
 * The plaintext key is printed once, at creation, and never stored.
 * Every Redis command is sent in argv form; user input is never pasted into
 * a command string.
 *
 * Build:
 *   gcc -Wall -Wextra -Werror -O2 -I. -I/usr/include/hiredis \
 *       tools/relay-keys.c relay_keys.c relay_validate.c -lhiredis -ljson-c -o relay-keys
 *
 * What users type for a key is checked by relay_validate.c, the same checks
 * as the admin pages, so both accept and refuse the same input.
 */
#define _DEFAULT_SOURCE

#include "relay_keys.h"
#include "relay_validate.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <json-c/json.h>

#define PROG "relay-keys"
#ifndef RELAY_VERSION
#define RELAY_VERSION "unknown" /* the Makefile passes the VERSION file's */
#endif
#define EXIT_RUNTIME 1
#define EXIT_USAGE 2

#define DEFAULT_BY "relay-keys"
#define DEFAULT_REDIS "127.0.0.1:6379"
#define DEFAULT_PORT 6379
#define CONNECT_TIMEOUT_SEC 1
#define COMMAND_TIMEOUT_SEC 5
#define MAX_ARGS 40
#define HASH_MAP_KEY "apikey:hash_map"

/* Global options: where Redis is and how to log in, and the hash secret. */
typedef struct {
    const char *redis;         /* address as given (parsed on connect) */
    const char *redis_source;  /* "option --redis" or "RELAY_REDIS" for messages */
    const char *password;      /* AUTH password or NULL */
    const char *user;          /* ACL user or NULL */
    const char *db;            /* SELECT index as given, or NULL */
    const char *db_source;     /* "option --db" or "RELAY_REDIS_DATABASE" */
    const char *secret;        /* --secret or environment */
    const char *secret_file;   /* --secret-file */
} options;

/* A parsed Redis address. */
typedef struct {
    char addr[300];            /* for messages: "host:port" or "unix:/path" */
    char host[256];            /* TCP host, when unix_path is empty */
    int port;
    char unix_path[256];       /* unix socket path, or "" */
} redis_addr;

/* One Redis command in argv form. */
typedef struct {
    int argc;
    const char *argv[MAX_ARGS];
    size_t len[MAX_ARGS];
} argbuf;

/* One key loaded for list/show. */
typedef struct {
    char id[RELAY_UUID_LEN + 1];
    redisReply *hash;          /* HGETALL reply: field, value, field, value... */
    long long concurrency;     /* leases alive now */
    const char *status;        /* "active", "disabled" or "expired" */
} key_record;

static redisContext *g_redis;

/* Close the Redis connection at exit. */
static void close_redis(void)
{
    if (g_redis != NULL) {
        redisFree(g_redis);
        g_redis = NULL;
    }
}

/* Print the usage text to out. */
static void usage(FILE *out)
{
    fputs("Usage: " PROG " [GLOBAL OPTIONS] COMMAND [ARGS]\n"
          "\n"
          "Manage mod_claude_relay relay keys stored in Redis.\n"
          "\n"
          "Global options (environment fallback in brackets):\n"
          "  --redis HOST[:PORT] | --redis unix:/path\n"
          "                          Redis address [RELAY_REDIS, default " DEFAULT_REDIS "]\n"
          "  --password P            AUTH password [RELAY_REDIS_PASSWORD]\n"
          "  --user U                ACL user name for AUTH [RELAY_REDIS_USERNAME]\n"
          "  --db N                  database index for SELECT [RELAY_REDIS_DATABASE]\n"
          "  --secret S              key hash secret [RELAY_KEY_HASH_SECRET]\n"
          "  --secret-file PATH      read the key hash secret from a file\n"
          "  --version               print the version and exit\n"
          "\n"
          "Commands:\n"
          "  create --name NAME [--description TEXT] [--concurrency-limit N]\n"
          "         [--token-limit N] [--expires DATE|none] [--by USER] [--json]\n"
          "                          create a key; the key is printed once\n"
          "  list [--json]           list all keys\n"
          "  show ID [--json]        show one key\n"
          "  edit ID [--concurrency-limit N] [--token-limit N] [--expires DATE|none]\n"
          "          [--by USER]     change only the given fields\n"
          "  disable ID | enable ID  switch a key off or on\n"
          "  delete ID               delete a key and its concurrency leases\n"
          "  hash KEY                print the stored hash of KEY (KEY \"-\" reads stdin)\n"
          "  help                    show this text\n"
          "\n"
          "Limits are whole numbers from 0 to 2147483647; 0 means unlimited.\n"
          "DATE is YYYY-MM-DD (end of that day, UTC) or YYYY-MM-DDTHH:MM[:SS[.mmm]]Z.\n"
          "Exit status: 0 ok, 1 failure (not found, Redis error), 2 usage error.\n",
          out);
}

static void usage_error(const char *fmt, ...)
    __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* Report a usage error and exit 2. */
static void usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs(PROG ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nRun '" PROG " help' for usage.\n", stderr);
    exit(EXIT_USAGE);
}

/* Report a runtime failure and exit 1. */
static void fail(const char *fmt, ...)
{
    va_list ap;

    fputs(PROG ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(EXIT_RUNTIME);
}

/* malloc that exits on failure. */
static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fail("out of memory");
    }
    return p;
}

/* strdup that exits on failure. */
static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

/* An environment variable, or NULL when unset or empty. */
static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && *v != '\0' ? v : NULL;
}

/* If argv[*i] is NAME or NAME=VALUE, store the value (taking the next arg) and return 1. */
static int take_opt(int argc, char **argv, int *i, const char *name, const char **val)
{
    size_t n = strlen(name);
    const char *a = argv[*i];

    if (strncmp(a, name, n) != 0) {
        return 0;
    }
    if (a[n] == '=') {
        *val = a + n + 1;
        return 1;
    }
    if (a[n] != '\0') {
        return 0;
    }
    if (*i + 1 >= argc) {
        usage_error("option %s needs a value.", name);
    }
    *i += 1;
    *val = argv[*i];
    return 1;
}

/* Parse a TCP port number; returns -1 when it is not 1..65535. */
static int parse_port(const char *s)
{
    long v;

    if (*s == '\0' || relay_parse_limit(s, &v) != 0 || v < 1 || v > 65535) {
        return -1;
    }
    return (int)v;
}

/* Parse a Redis address "HOST[:PORT]", "[V6]:PORT" or "unix:/path" into o. */
static void parse_redis_addr(redis_addr *o, const char *s, const char *source)
{
    const char *colon;
    size_t hostlen;
    int port = DEFAULT_PORT;

    o->host[0] = '\0';
    o->unix_path[0] = '\0';
    if (strncmp(s, "unix:", 5) == 0) {
        if (s[5] == '\0' || strlen(s + 5) >= sizeof(o->unix_path)) {
            usage_error("%s: \"%s\" does not name a usable unix socket path.", source, s);
        }
        snprintf(o->unix_path, sizeof(o->unix_path), "%s", s + 5);
        snprintf(o->addr, sizeof(o->addr), "unix:%s", o->unix_path);
        return;
    }
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || end == s + 1 || (end[1] != '\0' && end[1] != ':')) {
            usage_error("%s: \"%s\" is not HOST[:PORT], [IPV6]:PORT or unix:/path.", source, s);
        }
        if (end[1] == ':' && (port = parse_port(end + 2)) < 0) {
            usage_error("%s: the port in \"%s\" is not a number from 1 to 65535.", source, s);
        }
        hostlen = (size_t)(end - s - 1);
        s++;
    }
    else {
        colon = strchr(s, ':');
        if (colon != NULL && strchr(colon + 1, ':') != NULL) {
            /* a bare IPv6 address, no port */
            hostlen = strlen(s);
        }
        else if (colon != NULL) {
            if ((port = parse_port(colon + 1)) < 0) {
                usage_error("%s: the port in \"%s\" is not a number from 1 to 65535.", source,
                            s);
            }
            hostlen = (size_t)(colon - s);
        }
        else {
            hostlen = strlen(s);
        }
    }
    if (hostlen == 0 || hostlen >= sizeof(o->host)) {
        usage_error("%s: \"%s\" does not name a host.", source, s);
    }
    memcpy(o->host, s, hostlen);
    o->host[hostlen] = '\0';
    o->port = port;
    if (strchr(o->host, ':') != NULL) {
        snprintf(o->addr, sizeof(o->addr), "[%s]:%d", o->host, port);
    }
    else {
        snprintf(o->addr, sizeof(o->addr), "%s:%d", o->host, port);
    }
}

/* Parse a database index for SELECT; exits 2 when it is not a number. */
static long parse_db(const char *s, const char *source)
{
    long db;

    if (*s == '\0' || relay_parse_limit(s, &db) != 0) {
        usage_error("%s: \"%s\" is not a database number.", source, s);
    }
    return db;
}

/* The current time in milliseconds since the epoch (local clock). */
static long long local_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Format a time in milliseconds as the canonical ISO-8601 string. */
static void iso_from_ms(long long ms, char out[RELAY_ISO_LEN + 1])
{
    relay_iso8601((time_t)(ms / 1000), (int)(ms % 1000), out);
}

/*
 * Exit 2 unless v, the shared check of option opt's value s, is RELAY_VALID.
 * max is the longest s may be, in characters, for RELAY_INVALID_TOO_LONG.
 */
static void check_opt(const char *opt, const char *s, relay_invalid v, long max)
{
    switch (v) {
    case RELAY_VALID:
        return;
    case RELAY_INVALID_REQUIRED:
        usage_error("option %s must not be empty.", opt);
    case RELAY_INVALID_TOO_LONG:
        usage_error("option %s is %ld characters long; at most %ld are allowed.", opt,
                    relay_utf8_chars(s), max);
    case RELAY_INVALID_ENCODING:
        usage_error("option %s must be valid UTF-8 text without control characters.", opt);
    case RELAY_INVALID_NUMBER:
        usage_error("option %s: \"%s\" is not a whole number from 0 to 2147483647.", opt, s);
    case RELAY_INVALID_DATE:
        usage_error("option %s: \"%s\" is not YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS[.mmm]]Z or "
                    "\"none\".",
                    opt, s);
    case RELAY_INVALID_PAST:
        usage_error("option %s: \"%s\" is not in the future.", opt, s);
    }
    usage_error("option %s: \"%s\" is not valid.", opt, s);
}

/* A limit option ("" = 0 = unlimited), or exit 2 naming it. */
static long limit_opt(const char *opt, const char *s)
{
    long v;

    check_opt(opt, s, relay_check_limit(s, &v), 0);
    return v;
}

/* An --expires value: "none" or "never" gives "", a date must lie in the future. */
static void expires_opt(const char *s, char out[RELAY_ISO_LEN + 1])
{
    char now[RELAY_ISO_LEN + 1];

    if (strcmp(s, "none") == 0 || strcmp(s, "never") == 0) {
        out[0] = '\0';
        return;
    }
    iso_from_ms(local_now_ms(), now);
    check_opt("--expires", s, relay_check_expiry(s, now, out), 0);
}

/* A --by value: the same rule as a key name (required, 100 characters, no controls). */
static void check_by(const char *by)
{
    check_opt("--by", by, relay_check_name(by), RELAY_NAME_MAX_CHARS);
}

/* Fill buf with n random bytes from getrandom(2). */
static void random_bytes(unsigned char *buf, size_t n)
{
    while (n > 0) {
        ssize_t got = getrandom(buf, n, 0);
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            fail("getrandom failed: %s", strerror(errno));
        }
        buf += got;
        n -= (size_t)got;
    }
}

static char *g_secret_buf;
static size_t g_secret_cap;

/* Wipe and free the secret read from a file, at exit. */
static void free_secret(void)
{
    if (g_secret_buf != NULL) {
        explicit_bzero(g_secret_buf, g_secret_cap);
        free(g_secret_buf);
        g_secret_buf = NULL;
    }
}

/*
 * Read the secret from --secret-file with the reader the module uses for
 * file: values, so both hash with the same secret (wiped and freed at exit);
 * exits 2 when the file is refused.
 */
static char *read_secret_file(const char *path)
{
    size_t cap = RELAY_SECRET_FILE_MAX + 1, whylen = strlen(path) + 200, len;
    char *buf = xmalloc(cap), *why = xmalloc(whylen);

    g_secret_buf = buf;
    g_secret_cap = cap;
    atexit(free_secret);
    if (relay_secret_read(path, buf, cap, &len, why, whylen) != 0) {
        usage_error("--secret-file: %s", why);
    }
    free(why);
    return buf;
}

/*
 * The hash secret from --secret, --secret-file or the environment; exits 2
 * when it is missing or breaks the rule RelayKeyHashSecret follows.
 */
static const char *get_secret(const options *o, const char *command)
{
    const char *s = o->secret, *what;
    char *label = NULL, *why;
    size_t n;

    if (o->secret_file != NULL) {
        s = read_secret_file(o->secret_file);
    }
    if (s == NULL || *s == '\0') {
        usage_error("%s needs the key hash secret: pass --secret or --secret-file, "
                    "or set RELAY_KEY_HASH_SECRET.",
                    command);
    }
    if (o->secret_file != NULL) {
        n = strlen(o->secret_file) + 16;
        label = xmalloc(n);
        snprintf(label, n, "--secret-file %s", o->secret_file);
        what = label;
    }
    else {
        /* main keeps getenv's pointer unless --secret replaced it */
        what = s == getenv("RELAY_KEY_HASH_SECRET") ? "RELAY_KEY_HASH_SECRET" : "--secret";
    }
    n = strlen(what) + 200;
    why = xmalloc(n);
    if (relay_key_secret_check(s, strlen(s), what, why, n) != 0) {
        usage_error("%s", why);
    }
    free(why);
    free(label);
    return s;
}

/* Append one argument to a command. */
static void arg_add(argbuf *a, const char *s)
{
    if (a->argc >= MAX_ARGS) {
        fail("internal error: too many command arguments");
    }
    a->argv[a->argc] = s;
    a->len[a->argc] = strlen(s);
    a->argc++;
}

/* Append a field/value pair. */
static void arg_pair(argbuf *a, const char *field, const char *value)
{
    arg_add(a, field);
    arg_add(a, value);
}

/* Send a command; exits 1 on I/O failure; the reply may be an error reply. */
static redisReply *redis_raw(argbuf *a)
{
    redisReply *r = redisCommandArgv(g_redis, a->argc, a->argv, a->len);

    if (r == NULL) {
        fail("Redis %s failed: %s", a->argv[0],
             g_redis->errstr[0] ? g_redis->errstr : "no reply");
    }
    return r;
}

/* Exit 1 printing a Redis error reply. */
static void redis_error_exit(const char *cmd, redisReply *r) __attribute__((noreturn));
static void redis_error_exit(const char *cmd, redisReply *r)
{
    fprintf(stderr, PROG ": Redis error from %s: %.*s\n", cmd, (int)r->len, r->str);
    freeReplyObject(r);
    exit(EXIT_RUNTIME);
}

/* Send a command; an error reply is fatal too. */
static redisReply *redis_cmd(argbuf *a)
{
    redisReply *r = redis_raw(a);

    if (r->type == REDIS_REPLY_ERROR) {
        redis_error_exit(a->argv[0], r);
    }
    return r;
}

/* Connect, set timeouts, AUTH and SELECT; exits 1 on failure. */
static void connect_redis(const options *o)
{
    struct timeval ctv = {CONNECT_TIMEOUT_SEC, 0};
    struct timeval ctimeout = {COMMAND_TIMEOUT_SEC, 0};
    char dbtext[32];
    redis_addr ad;
    long db = 0;
    argbuf a;

    memset(&ad, 0, sizeof(ad));
    parse_redis_addr(&ad, o->redis, o->redis_source);
    if (o->db != NULL) {
        db = parse_db(o->db, o->db_source);
    }
    if (ad.unix_path[0] != '\0') {
        g_redis = redisConnectUnixWithTimeout(ad.unix_path, ctv);
    }
    else {
        g_redis = redisConnectWithTimeout(ad.host, ad.port, ctv);
    }
    if (g_redis == NULL) {
        fail("cannot connect to Redis at %s: out of memory", ad.addr);
    }
    if (g_redis->err) {
        fail("cannot connect to Redis at %s: %s", ad.addr, g_redis->errstr);
    }
    atexit(close_redis);
    if (redisSetTimeout(g_redis, ctimeout) != REDIS_OK) {
        fail("cannot set the Redis timeout for %s: %s", ad.addr, g_redis->errstr);
    }
    if (o->password != NULL) {
        redisReply *r;

        a.argc = 0;
        arg_add(&a, "AUTH");
        if (o->user != NULL) {
            arg_add(&a, o->user);
        }
        arg_add(&a, o->password);
        r = redis_raw(&a);
        if (r->type == REDIS_REPLY_ERROR) {
            fprintf(stderr, PROG ": Redis at %s refused AUTH: %.*s\n", ad.addr, (int)r->len,
                    r->str);
            freeReplyObject(r);
            exit(EXIT_RUNTIME);
        }
        freeReplyObject(r);
    }
    if (o->db != NULL) {
        snprintf(dbtext, sizeof(dbtext), "%ld", db);
        a.argc = 0;
        arg_add(&a, "SELECT");
        arg_add(&a, dbtext);
        freeReplyObject(redis_cmd(&a));
    }
}

/* The Redis server's clock (TIME) in milliseconds; iso receives it in ISO-8601. */
static long long redis_now(char iso[RELAY_ISO_LEN + 1])
{
    argbuf a = {0};
    redisReply *r;
    long long ms;

    arg_add(&a, "TIME");
    r = redis_cmd(&a);
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
        freeReplyObject(r);
        fail("unexpected reply to Redis TIME");
    }
    ms = strtoll(r->element[0]->str, NULL, 10) * 1000 +
         strtoll(r->element[1]->str, NULL, 10) / 1000;
    freeReplyObject(r);
    iso_from_ms(ms, iso);
    return ms;
}

/* Parse a whole string as a signed integer; returns -1 when it is not one. */
static int parse_ll(const char *s, long long *out)
{
    char *end;

    if (*s == '\0') {
        return -1;
    }
    errno = 0;
    *out = strtoll(s, &end, 10);
    return errno != 0 || *end != '\0' ? -1 : 0;
}

/*
 * Leases of a key alive at now_ms. An old plain-string counter is read as its
 * integer value; any other type counts as 0.
 */
static long long current_concurrency(const char *id, long long now_ms)
{
    char key[64], min[32];
    argbuf a = {0};
    redisReply *r;
    long long n = 0;

    snprintf(key, sizeof(key), "concurrency:%s", id);
    snprintf(min, sizeof(min), "(%lld", now_ms);
    arg_add(&a, "ZCOUNT");
    arg_add(&a, key);
    arg_add(&a, min);
    arg_add(&a, "+inf");
    r = redis_raw(&a);
    if (r->type == REDIS_REPLY_INTEGER) {
        n = r->integer;
    }
    else if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "WRONGTYPE", 9) == 0) {
        freeReplyObject(r);
        a.argc = 0;
        arg_add(&a, "GET");
        arg_add(&a, key);
        r = redis_raw(&a);
        if (r->type == REDIS_REPLY_STRING && parse_ll(r->str, &n) == 0 && n >= 0) {
            /* n holds the old counter */
        }
        else if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "WRONGTYPE", 9) != 0) {
            redis_error_exit("GET", r);
        }
        else {
            n = 0;
        }
    }
    else if (r->type == REDIS_REPLY_ERROR) {
        redis_error_exit("ZCOUNT", r);
    }
    freeReplyObject(r);
    return n;
}

/* A field of a loaded key, or NULL when the hash lacks it. */
static const char *rec_get(const key_record *rec, const char *field)
{
    size_t i;

    for (i = 0; i + 1 < rec->hash->elements; i += 2) {
        redisReply *f = rec->hash->element[i];
        redisReply *v = rec->hash->element[i + 1];
        if (f->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
            strcmp(f->str, field) == 0) {
            return v->str;
        }
    }
    return NULL;
}

/* A field of a loaded key, or fallback when it is missing or empty. */
static const char *rec_or(const key_record *rec, const char *field, const char *fallback)
{
    const char *v = rec_get(rec, field);
    return v != NULL && *v != '\0' ? v : fallback;
}

/* A field of a loaded key, or "" when missing. */
static const char *rec_str(const key_record *rec, const char *field)
{
    return rec_or(rec, field, "");
}

/*
 * active, disabled or expired, from isActive and expiresAt at now_iso. Only
 * "true" enables a key (claude-relay-service's rule): "yes", "TRUE", "" or no
 * isActive at all mean disabled.
 */
static const char *key_status(const char *is_active, const char *expires, const char *now_iso)
{
    char norm[RELAY_ISO_LEN + 1];

    if (is_active == NULL || strcmp(is_active, "true") != 0) {
        return "disabled";
    }
    if (expires != NULL && *expires != '\0' && relay_iso8601_normalize(expires, norm) == 0 &&
        strcmp(norm, now_iso) < 0) {
        return "expired";
    }
    return "active";
}

/*
 * Load apikey:{id} into rec. Returns 0 when found, -1 when missing, -2 when
 * the key has the wrong type and skip_wrongtype is set (else exits 1).
 */
static int load_record(const char *id, key_record *rec, long long now_ms, const char *now_iso,
                       int skip_wrongtype)
{
    char key[64];
    argbuf a = {0};
    redisReply *r;

    snprintf(key, sizeof(key), "apikey:%s", id);
    arg_add(&a, "HGETALL");
    arg_add(&a, key);
    r = redis_raw(&a);
    if (r->type == REDIS_REPLY_ERROR) {
        if (skip_wrongtype && strncmp(r->str, "WRONGTYPE", 9) == 0) {
            fprintf(stderr, PROG ": warning: %s is not a hash; skipped\n", key);
            freeReplyObject(r);
            return -2;
        }
        redis_error_exit("HGETALL", r);
    }
    if (r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        fail("unexpected reply to HGETALL %s", key);
    }
    if (r->elements == 0) {
        freeReplyObject(r);
        return -1;
    }
    snprintf(rec->id, sizeof(rec->id), "%s", id);
    rec->hash = r;
    rec->concurrency = current_concurrency(id, now_ms);
    rec->status = key_status(rec_get(rec, "isActive"), rec_get(rec, "expiresAt"), now_iso);
    return 0;
}

/*
 * Bytes of the UTF-8 character at p (a byte >= 0x80) when it may be printed as
 * is, else 0. relay_utf8_chars checks the encoding; C1 controls (U+0080..U+009F)
 * and the overlong 3- and 4-byte forms it lets through are refused here.
 */
static size_t printable_utf8(const unsigned char *p)
{
    char one[5];
    size_t len = *p >= 0xf0 ? 4 : *p >= 0xe0 ? 3 : 2, k;

    for (k = 0; k < len && p[k] != '\0'; k++) {
        one[k] = (char)p[k];
    }
    one[k] = '\0';
    if (relay_utf8_chars(one) != 1 || (p[0] == 0xc2 && p[1] < 0xa0) ||
        (p[0] == 0xe0 && p[1] < 0xa0) || (p[0] == 0xf0 && p[1] < 0x90)) {
        return 0;
    }
    return len;
}

/*
 * Copy s for terminal display: control characters and bad bytes become '?',
 * at most maxchars characters (longer text ends in "..."). Returns the width.
 */
static size_t display_text(const char *s, size_t maxchars, char *out, size_t outlen)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0, n = 0;

    while (*p && o + 8 < outlen) {
        size_t clen = 1;

        if (n == maxchars) {
            memcpy(out + o, "\xe2\x80\xa6", 3);
            o += 3;
            n++;
            break;
        }
        if (*p >= 0x20 && *p < 0x7f) {
            out[o++] = (char)*p;
        }
        else if (*p >= 0x80 && (clen = printable_utf8(p)) > 0) {
            memcpy(out + o, p, clen);
            o += clen;
        }
        else {
            out[o++] = '?';
            clen = 1;
        }
        p += clen;
        n++;
    }
    out[o] = '\0';
    return n;
}

/* Print text padded with spaces to width characters. */
static void print_padded(const char *text, size_t chars, size_t width)
{
    fputs(text, stdout);
    while (chars++ < width) {
        putchar(' ');
    }
}

/* Describe a stored limit: "unlimited" for 0 or missing, else the number (or the raw text). */
static void limit_text(const char *stored, char *out, size_t outlen)
{
    long v = 0;

    if (stored != NULL && relay_parse_limit(stored, &v) != 0) {
        display_text(stored, 20, out, outlen);
    }
    else if (v == 0) {
        snprintf(out, outlen, "unlimited");
    }
    else {
        snprintf(out, outlen, "%ld", v);
    }
}

/* "current/limit" for the concurrency column. */
static void concurrency_text(const key_record *rec, char *out, size_t outlen)
{
    char lim[64];

    limit_text(rec_get(rec, "concurrencyLimit"), lim, sizeof(lim));
    snprintf(out, outlen, "%lld/%s", rec->concurrency, lim);
}

/* A JSON object for a key: its hash fields except apiKey, plus live data. */
static json_object *record_json(const key_record *rec)
{
    json_object *o = json_object_new_object();
    size_t i;

    if (rec_get(rec, "id") == NULL) {
        json_object_object_add(o, "id", json_object_new_string(rec->id));
    }
    for (i = 0; i + 1 < rec->hash->elements; i += 2) {
        redisReply *f = rec->hash->element[i];
        redisReply *v = rec->hash->element[i + 1];
        long lim;

        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            strcmp(f->str, "apiKey") == 0) {
            continue;
        }
        if ((strcmp(f->str, "tokenLimit") == 0 || strcmp(f->str, "concurrencyLimit") == 0) &&
            relay_parse_limit(v->str, &lim) == 0) {
            json_object_object_add(o, f->str, json_object_new_int64(lim));
        }
        else {
            json_object_object_add(o, f->str, json_object_new_string_len(v->str, (int)v->len));
        }
    }
    json_object_object_add(o, "currentConcurrency", json_object_new_int64(rec->concurrency));
    json_object_object_add(o, "status", json_object_new_string(rec->status));
    return o;
}

/* Print a JSON value on one line and free it. */
static void print_json(json_object *o)
{
    puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                               JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
}

/* Order records by createdAt, then id. */
static int record_cmp(const void *a, const void *b)
{
    const key_record *x = a, *y = b;
    int c = strcmp(rec_str(x, "createdAt"), rec_str(y, "createdAt"));
    return c != 0 ? c : strcmp(x->id, y->id);
}

/* Order C strings (for qsort). */
static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Collect all apikey:* key names with SCAN; returns a sorted, de-duplicated array. */
static char **scan_key_names(size_t *count)
{
    char cursor[32] = "0";
    char **names = NULL;
    size_t n = 0, cap = 0, i, j;

    do {
        argbuf a = {0};
        redisReply *r, *keys;

        arg_add(&a, "SCAN");
        arg_add(&a, cursor);
        arg_add(&a, "MATCH");
        arg_add(&a, "apikey:*");
        arg_add(&a, "COUNT");
        arg_add(&a, "500");
        r = redis_cmd(&a);
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING ||
            r->element[1]->type != REDIS_REPLY_ARRAY || r->element[0]->len >= sizeof(cursor)) {
            freeReplyObject(r);
            fail("unexpected reply to Redis SCAN");
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        keys = r->element[1];
        for (i = 0; i < keys->elements; i++) {
            if (keys->element[i]->type != REDIS_REPLY_STRING) {
                continue;
            }
            if (n == cap) {
                char **grown;
                cap = cap ? cap * 2 : 64;
                grown = realloc(names, cap * sizeof(*names));
                if (grown == NULL) {
                    fail("out of memory");
                }
                names = grown;
            }
            names[n++] = xstrdup(keys->element[i]->str);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);

    if (n > 0) {
        qsort(names, n, sizeof(*names), str_cmp);
    }
    /* SCAN may return a key more than once */
    for (i = 0, j = 0; i < n; i++) {
        if (j > 0 && strcmp(names[j - 1], names[i]) == 0) {
            free(names[i]);
        }
        else {
            names[j++] = names[i];
        }
    }
    *count = j;
    return names;
}

/* Exit 2 unless id is a UUID. */
static void check_id(const char *id)
{
    if (!relay_uuid_ok(id)) {
        usage_error("\"%s\" is not a key id (a UUID such as "
                    "1b4e28ba-2fa1-41d2-883f-b9a761bde3fb).",
                    id);
    }
}

/* The only argument of cmd, a key id; exits 2 when there is not exactly one. */
static const char *one_id(const char *cmd, int argc, char **argv)
{
    if (argc != 1 || argv[0][0] == '-') {
        usage_error("%s needs exactly one key id.", cmd);
    }
    check_id(argv[0]);
    return argv[0];
}

/* `create`: make a new key and print it once. */
static int cmd_create(const options *o, int argc, char **argv)
{
    const char *name = NULL, *description = "", *by = DEFAULT_BY, *val, *secret;
    long conc = 0, tokens = 0;
    char expires[RELAY_ISO_LEN + 1] = "", now[RELAY_ISO_LEN + 1];
    char conc_s[24], tokens_s[24], id_key[64];
    unsigned char rnd[RELAY_KEY_RANDOM_BYTES + 16];
    char key[RELAY_KEY_LEN + 1], id[RELAY_UUID_LEN + 1], hash[RELAY_SHA256_HEX_LEN + 1];
    char preview[32];
    int json = 0, i;
    argbuf a = {0};
    redisReply *r;
    size_t k;

    for (i = 0; i < argc; i++) {
        if (take_opt(argc, argv, &i, "--name", &val)) {
            name = val;
        }
        else if (take_opt(argc, argv, &i, "--description", &val)) {
            description = val;
        }
        else if (take_opt(argc, argv, &i, "--concurrency-limit", &val)) {
            conc = limit_opt("--concurrency-limit", val);
        }
        else if (take_opt(argc, argv, &i, "--token-limit", &val)) {
            tokens = limit_opt("--token-limit", val);
        }
        else if (take_opt(argc, argv, &i, "--expires", &val)) {
            expires_opt(val, expires);
        }
        else if (take_opt(argc, argv, &i, "--by", &val)) {
            by = val;
        }
        else if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        }
        else {
            usage_error("create: unexpected argument \"%s\".", argv[i]);
        }
    }
    if (name == NULL) {
        usage_error("create needs --name NAME (not empty).");
    }
    check_opt("--name", name, relay_check_name(name), RELAY_NAME_MAX_CHARS);
    check_opt("--description", description, relay_check_description(description),
              RELAY_DESCRIPTION_MAX_CHARS);
    check_by(by);
    secret = get_secret(o, "create");

    random_bytes(rnd, sizeof(rnd));
    relay_key_from_random(rnd, key);
    relay_uuid_from_random(rnd + RELAY_KEY_RANDOM_BYTES, id);
    explicit_bzero(rnd, sizeof(rnd));
    relay_key_hash(key, strlen(key), secret, hash);
    relay_key_preview(key, preview, sizeof(preview));
    iso_from_ms(local_now_ms(), now);
    snprintf(conc_s, sizeof(conc_s), "%ld", conc);
    snprintf(tokens_s, sizeof(tokens_s), "%ld", tokens);
    snprintf(id_key, sizeof(id_key), "apikey:%s", id);

    connect_redis(o);

    /*
     * The key hash and its hash_map entry in one MULTI/EXEC. MULTI is checked
     * on its own first: if it failed, the HSETs would run outside a transaction.
     */
    a.argc = 0;
    arg_add(&a, "MULTI");
    freeReplyObject(redis_cmd(&a));
    a.argc = 0;
    arg_add(&a, "HSET");
    arg_add(&a, id_key);
    arg_pair(&a, "id", id);
    arg_pair(&a, "name", name);
    arg_pair(&a, "description", description);
    arg_pair(&a, "apiKey", hash);
    arg_pair(&a, "keyPreview", preview);
    arg_pair(&a, "tokenLimit", tokens_s);
    arg_pair(&a, "concurrencyLimit", conc_s);
    arg_pair(&a, "isActive", "true");
    arg_pair(&a, "createdAt", now);
    arg_pair(&a, "updatedAt", now);
    arg_pair(&a, "lastUsedAt", "");
    arg_pair(&a, "expiresAt", expires);
    arg_pair(&a, "createdBy", by);
    redisAppendCommandArgv(g_redis, a.argc, a.argv, a.len);
    a.argc = 0;
    arg_add(&a, "HSET");
    arg_add(&a, HASH_MAP_KEY);
    arg_pair(&a, hash, id);
    redisAppendCommandArgv(g_redis, a.argc, a.argv, a.len);
    a.argc = 0;
    arg_add(&a, "EXEC");
    redisAppendCommandArgv(g_redis, a.argc, a.argv, a.len);

    for (i = 0; i < 3; i++) {
        static const char *const what[3] = {"HSET", "HSET", "EXEC"};
        void *reply = NULL;

        if (redisGetReply(g_redis, &reply) != REDIS_OK || reply == NULL) {
            fail("Redis %s failed: %s", what[i],
                 g_redis->errstr[0] ? g_redis->errstr : "no reply");
        }
        r = reply;
        if (r->type == REDIS_REPLY_ERROR) {
            if (i < 2) {
                /* let EXEC discard the transaction before failing */
                fprintf(stderr, PROG ": Redis error from %s: %.*s\n", what[i], (int)r->len,
                        r->str);
                freeReplyObject(r);
                continue;
            }
            redis_error_exit("EXEC", r);
        }
        if (i == 2) {
            if (r->type != REDIS_REPLY_ARRAY) {
                freeReplyObject(r);
                fail("the transaction creating the key was aborted");
            }
            for (k = 0; k < r->elements; k++) {
                if (r->element[k]->type == REDIS_REPLY_ERROR) {
                    fprintf(stderr, PROG ": Redis error inside EXEC: %s\n",
                            r->element[k]->str);
                    freeReplyObject(r);
                    exit(EXIT_RUNTIME);
                }
            }
        }
        freeReplyObject(r);
    }

    if (json) {
        json_object *j = json_object_new_object();
        json_object_object_add(j, "id", json_object_new_string(id));
        json_object_object_add(j, "name", json_object_new_string(name));
        json_object_object_add(j, "apiKey", json_object_new_string(key));
        json_object_object_add(j, "keyPreview", json_object_new_string(preview));
        json_object_object_add(j, "concurrencyLimit", json_object_new_int64(conc));
        json_object_object_add(j, "tokenLimit", json_object_new_int64(tokens));
        json_object_object_add(j, "expiresAt", json_object_new_string(expires));
        print_json(j);
    }
    else {
        printf("Created key \"%s\" (id %s)\n", name, id);
        printf("%s\n", key);
        printf("Store it now: it will not be shown again.\n");
    }
    fflush(stdout);
    explicit_bzero(key, sizeof(key));
    return 0;
}

/*
 * The arguments of list (id NULL) or show (one ID into *id): returns whether
 * --json was given; exits 2 on anything else.
 */
static int json_args(const char *cmd, int argc, char **argv, const char **id)
{
    int json = 0, i;

    for (i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        }
        else if (id != NULL && *id == NULL && argv[i][0] != '-') {
            *id = argv[i];
        }
        else {
            usage_error("%s: unexpected argument \"%s\".", cmd, argv[i]);
        }
    }
    return json;
}

/* Print the plain-text table of keys. */
static void print_table(key_record *recs, size_t n)
{
    static const char *const head[6] = {"ID", "NAME", "STATUS", "CONCURRENCY", "TOKEN LIMIT",
                                        "CREATED"};
    size_t w[6] = {36, 4, 6, 11, 11, 7};
    char buf[6][512];
    size_t len[6];
    size_t i, c;
    int pass;

    /* first pass measures the columns, second prints */
    for (pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            for (c = 0; c < 6; c++) {
                print_padded(head[c], strlen(head[c]), c == 5 ? 0 : w[c] + 2);
            }
            putchar('\n');
        }
        for (i = 0; i < n; i++) {
            len[0] = display_text(recs[i].id, 36, buf[0], sizeof(buf[0]));
            len[1] = display_text(rec_str(&recs[i], "name"), 32, buf[1], sizeof(buf[1]));
            len[2] = display_text(recs[i].status, 10, buf[2], sizeof(buf[2]));
            concurrency_text(&recs[i], buf[3], sizeof(buf[3]));
            len[3] = strlen(buf[3]);
            limit_text(rec_get(&recs[i], "tokenLimit"), buf[4], sizeof(buf[4]));
            len[4] = strlen(buf[4]);
            len[5] = display_text(rec_or(&recs[i], "createdAt", "-"), 30, buf[5], sizeof(buf[5]));
            for (c = 0; c < 6; c++) {
                if (pass == 0) {
                    if (len[c] > w[c]) {
                        w[c] = len[c];
                    }
                }
                else {
                    print_padded(buf[c], len[c], c == 5 ? 0 : w[c] + 2);
                }
            }
            if (pass == 1) {
                putchar('\n');
            }
        }
    }
}

/* `list`: every key with its status and live concurrency. */
static int cmd_list(const options *o, int argc, char **argv)
{
    int json = json_args("list", argc, argv, NULL);
    char **names;
    size_t n, k, nrec = 0;
    key_record *recs;
    long long now_ms;
    char now_iso[RELAY_ISO_LEN + 1];

    connect_redis(o);
    now_ms = redis_now(now_iso);
    names = scan_key_names(&n);
    recs = xmalloc(n * sizeof(*recs));
    for (k = 0; k < n; k++) {
        const char *id = names[k] + strlen("apikey:");

        /* apikey:hash_map and anything that is not apikey:{uuid} */
        if (strcmp(names[k], HASH_MAP_KEY) == 0 || !relay_uuid_ok(id)) {
            continue;
        }
        if (load_record(id, &recs[nrec], now_ms, now_iso, 1) == 0) {
            nrec++;
        }
    }
    if (nrec > 0) {
        qsort(recs, nrec, sizeof(*recs), record_cmp);
    }
    if (json) {
        json_object *arr = json_object_new_array();
        for (k = 0; k < nrec; k++) {
            json_object_array_add(arr, record_json(&recs[k]));
        }
        print_json(arr);
    }
    else if (nrec == 0) {
        printf("No relay keys.\n");
    }
    else {
        print_table(recs, nrec);
    }
    for (k = 0; k < nrec; k++) {
        freeReplyObject(recs[k].hash);
    }
    for (k = 0; k < n; k++) {
        free(names[k]);
    }
    free(names);
    free(recs);
    return 0;
}

/* Print one labelled line of show output. */
static void show_line(const char *label, const char *value, size_t maxchars)
{
    char buf[4096];

    display_text(value, maxchars, buf, sizeof(buf));
    printf("%-14s%s\n", label, buf);
}

/* `show ID`: one key in detail. */
static int cmd_show(const options *o, int argc, char **argv)
{
    const char *id = NULL;
    int json = json_args("show", argc, argv, &id);
    key_record rec;
    long long now_ms;
    char now_iso[RELAY_ISO_LEN + 1], buf[128];

    if (id == NULL) {
        usage_error("show needs a key id.");
    }
    check_id(id);
    connect_redis(o);
    now_ms = redis_now(now_iso);
    if (load_record(id, &rec, now_ms, now_iso, 0) != 0) {
        fail("no key with id %s.", id);
    }
    if (json) {
        print_json(record_json(&rec));
    }
    else {
        show_line("ID:", rec.id, 36);
        show_line("Name:", rec_str(&rec, "name"), 200);
        show_line("Description:", rec_str(&rec, "description"), 1000);
        show_line("Status:", rec.status, 20);
        show_line("Preview:", rec_str(&rec, "keyPreview"), 40);
        concurrency_text(&rec, buf, sizeof(buf));
        show_line("Concurrency:", buf, 60);
        limit_text(rec_get(&rec, "tokenLimit"), buf, sizeof(buf));
        show_line("Token limit:", buf, 60);
        show_line("Expires:", rec_or(&rec, "expiresAt", "never"), 60);
        show_line("Created:", rec_str(&rec, "createdAt"), 60);
        show_line("Created by:", rec_str(&rec, "createdBy"), 200);
        show_line("Updated:", rec_str(&rec, "updatedAt"), 60);
        if (rec_get(&rec, "updatedBy") != NULL) {
            show_line("Updated by:", rec_str(&rec, "updatedBy"), 200);
        }
        show_line("Last used:", rec_or(&rec, "lastUsedAt", "never"), 60);
    }
    freeReplyObject(rec.hash);
    return 0;
}

/*
 * Send an EVAL (a) of a script that returns 1 when it changed key id and 0
 * when that key does not exist. Exits 1 on 0 or an unexpected reply; doing
 * ("updating", "deleting") is for the message.
 */
static void eval_on_key(argbuf *a, const char *id, const char *doing)
{
    redisReply *r = redis_cmd(a);
    int integer = r->type == REDIS_REPLY_INTEGER;
    long long n = integer ? r->integer : 0;

    freeReplyObject(r);
    if (!integer) {
        fail("unexpected reply while %s apikey:%s", doing, id);
    }
    if (n == 0) {
        fail("no key with id %s.", id);
    }
}

/*
 * HSET the given field/value pairs on apikey:{id} only if the key exists,
 * atomically (so a key deleted meanwhile is not recreated half-empty).
 * Exits 1 when the key does not exist.
 */
static void hset_existing(const char *id, argbuf *pairs)
{
    static const char script[] =
        "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
        "redis.call('HSET', KEYS[1], unpack(ARGV))\n"
        "return 1\n";
    char key[64];
    argbuf a = {0};
    int i;

    snprintf(key, sizeof(key), "apikey:%s", id);
    arg_add(&a, "EVAL");
    arg_add(&a, script);
    arg_add(&a, "1");
    arg_add(&a, key);
    for (i = 0; i < pairs->argc; i++) {
        arg_add(&a, pairs->argv[i]);
    }
    eval_on_key(&a, id, "updating");
}

/* `edit ID`: change only the given fields. */
static int cmd_edit(const options *o, int argc, char **argv)
{
    const char *id = NULL, *by = NULL, *val;
    const char *conc_opt = NULL, *tokens_opt = NULL;
    int have_expires = 0, i;
    char expires[RELAY_ISO_LEN + 1] = "", now[RELAY_ISO_LEN + 1];
    char conc_s[24], tokens_s[24];
    argbuf pairs = {0};

    for (i = 0; i < argc; i++) {
        if (take_opt(argc, argv, &i, "--concurrency-limit", &val)) {
            conc_opt = val;
            snprintf(conc_s, sizeof(conc_s), "%ld", limit_opt("--concurrency-limit", val));
        }
        else if (take_opt(argc, argv, &i, "--token-limit", &val)) {
            tokens_opt = val;
            snprintf(tokens_s, sizeof(tokens_s), "%ld", limit_opt("--token-limit", val));
        }
        else if (take_opt(argc, argv, &i, "--expires", &val)) {
            expires_opt(val, expires);
            have_expires = 1;
        }
        else if (take_opt(argc, argv, &i, "--by", &val)) {
            by = val;
        }
        else if (argv[i][0] != '-' && id == NULL) {
            id = argv[i];
        }
        else {
            usage_error("edit: unexpected argument \"%s\".", argv[i]);
        }
    }
    if (id == NULL) {
        usage_error("edit needs a key id.");
    }
    check_id(id);
    if (conc_opt == NULL && tokens_opt == NULL && !have_expires) {
        usage_error("edit needs at least one of --concurrency-limit, --token-limit, --expires.");
    }
    if (by != NULL) {
        check_by(by);
    }

    if (conc_opt != NULL) {
        arg_pair(&pairs, "concurrencyLimit", conc_s);
    }
    if (tokens_opt != NULL) {
        arg_pair(&pairs, "tokenLimit", tokens_s);
    }
    if (have_expires) {
        arg_pair(&pairs, "expiresAt", expires);
    }
    iso_from_ms(local_now_ms(), now);
    arg_pair(&pairs, "updatedAt", now);
    if (by != NULL) {
        arg_pair(&pairs, "updatedBy", by);
    }
    connect_redis(o);
    hset_existing(id, &pairs);
    printf("Updated key %s.\n", id);
    return 0;
}

/* `disable ID` / `enable ID`: set isActive. */
static int cmd_set_active(const options *o, int argc, char **argv, int active)
{
    const char *id = one_id(active ? "enable" : "disable", argc, argv);
    char now[RELAY_ISO_LEN + 1];
    argbuf pairs = {0};

    iso_from_ms(local_now_ms(), now);
    arg_pair(&pairs, "isActive", active ? "true" : "false");
    arg_pair(&pairs, "updatedAt", now);
    connect_redis(o);
    hset_existing(id, &pairs);
    printf("%s key %s.\n", active ? "Enabled" : "Disabled", id);
    return 0;
}

/* `delete ID`: remove the key, its hash_map entry and its leases atomically. */
static int cmd_delete(const options *o, int argc, char **argv)
{
    /*
     * Reads apiKey and deletes in one script. The hash_map entry is removed
     * only when it still points at this id.
     */
    static const char script[] =
        "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
        "local h = redis.call('HGET', KEYS[1], 'apiKey')\n"
        "redis.call('DEL', KEYS[1])\n"
        "if h and h ~= '' and redis.call('HGET', KEYS[2], h) == ARGV[1] then\n"
        "  redis.call('HDEL', KEYS[2], h)\n"
        "end\n"
        "redis.call('DEL', KEYS[3])\n"
        "return 1\n";
    const char *id = one_id("delete", argc, argv);
    char key[64], conc_key[64];
    argbuf a = {0};

    snprintf(key, sizeof(key), "apikey:%s", id);
    snprintf(conc_key, sizeof(conc_key), "concurrency:%s", id);
    connect_redis(o);
    arg_add(&a, "EVAL");
    arg_add(&a, script);
    arg_add(&a, "3");
    arg_add(&a, key);
    arg_add(&a, HASH_MAP_KEY);
    arg_add(&a, conc_key);
    arg_add(&a, id);
    eval_on_key(&a, id, "deleting");
    printf("Deleted key %s.\n", id);
    return 0;
}

/* `hash KEY`: print the stored hash of a key ("-" reads the key from stdin). */
static int cmd_hash(const options *o, int argc, char **argv)
{
    char line[RELAY_KEY_MAX_LEN + 3];
    char hash[RELAY_SHA256_HEX_LEN + 1];
    const char *key, *secret;
    size_t len;

    if (argc != 1) {
        usage_error("hash needs exactly one KEY (or \"-\" to read it from stdin).");
    }
    secret = get_secret(o, "hash");
    key = argv[0];
    if (strcmp(key, "-") == 0) {
        if (fgets(line, sizeof(line), stdin) == NULL) {
            fail("hash: no key on standard input.");
        }
        len = strlen(line);
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
            line[--len] = '\0';
        }
        key = line;
    }
    len = strlen(key);
    if (!relay_key_format_ok(key, len)) {
        fprintf(stderr, PROG ": warning: this key is not in a format the module accepts\n");
    }
    relay_key_hash(key, len, secret, hash);
    printf("%s\n", hash);
    explicit_bzero(line, sizeof(line));
    return 0;
}

/* Parse global options and run the command. */
int main(int argc, char **argv)
{
    options o;
    const char *val, *cmd, *secret_opt = NULL;
    int i;

    memset(&o, 0, sizeof(o));
    /* a connection Redis (or a TLS tunnel) closed is a write error, reported, not a signal */
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }

    /* environment first; options override */
    o.redis = env_nonempty("RELAY_REDIS");
    o.redis_source = "RELAY_REDIS";
    if (o.redis == NULL) {
        o.redis = DEFAULT_REDIS;
    }
    o.password = env_nonempty("RELAY_REDIS_PASSWORD");
    o.user = env_nonempty("RELAY_REDIS_USERNAME");
    o.db = env_nonempty("RELAY_REDIS_DATABASE");
    o.db_source = "RELAY_REDIS_DATABASE";
    o.secret = env_nonempty("RELAY_KEY_HASH_SECRET");

    for (i = 1; i < argc && argv[i][0] == '-'; i++) {
        if (take_opt(argc, argv, &i, "--redis", &val)) {
            o.redis = val;
            o.redis_source = "option --redis";
        }
        else if (take_opt(argc, argv, &i, "--password", &val)) {
            o.password = val;
        }
        else if (take_opt(argc, argv, &i, "--user", &val)) {
            o.user = val;
        }
        else if (take_opt(argc, argv, &i, "--db", &val)) {
            o.db = val;
            o.db_source = "option --db";
        }
        else if (take_opt(argc, argv, &i, "--secret-file", &val)) {
            o.secret_file = val;
        }
        else if (take_opt(argc, argv, &i, "--secret", &val)) {
            secret_opt = val;
        }
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        else if (strcmp(argv[i], "--version") == 0) {
            puts(PROG " " RELAY_VERSION);
            return 0;
        }
        else {
            usage_error("unknown option \"%s\".", argv[i]);
        }
    }
    if (o.user != NULL && o.password == NULL) {
        usage_error("option --user needs --password (or RELAY_REDIS_PASSWORD).");
    }
    if (secret_opt != NULL && o.secret_file != NULL) {
        usage_error("give only one of --secret and --secret-file.");
    }
    if (secret_opt != NULL) {
        o.secret = secret_opt;
    }
    if (i >= argc) {
        usage_error("no command given.");
    }
    cmd = argv[i++];
    argc -= i;
    argv += i;

    if (strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "create") == 0) {
        return cmd_create(&o, argc, argv);
    }
    if (strcmp(cmd, "list") == 0) {
        return cmd_list(&o, argc, argv);
    }
    if (strcmp(cmd, "show") == 0) {
        return cmd_show(&o, argc, argv);
    }
    if (strcmp(cmd, "edit") == 0) {
        return cmd_edit(&o, argc, argv);
    }
    if (strcmp(cmd, "disable") == 0) {
        return cmd_set_active(&o, argc, argv, 0);
    }
    if (strcmp(cmd, "enable") == 0) {
        return cmd_set_active(&o, argc, argv, 1);
    }
    if (strcmp(cmd, "delete") == 0) {
        return cmd_delete(&o, argc, argv);
    }
    if (strcmp(cmd, "hash") == 0) {
        return cmd_hash(&o, argc, argv);
    }
    usage_error("unknown command \"%s\".", cmd);
    return EXIT_USAGE;
}
