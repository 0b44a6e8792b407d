/*
 * relay-keys - command-line manager for mod_claude_relay's relay keys.
 *
 * Creates, lists, shows, edits, disables/enables and deletes the relay keys
 * that mod_claude_relay authenticates. It is a thin front end: every read
 * and change goes through relay_keystore.c over relay_redis.c, the key store
 * and the Redis client the module's admin uses, so both write the same
 * records (relay_schema.h names them), refuse the same collisions and call a
 * key active, disabled or expired by the same rule. Redis is reached at
 * host:port, through a unix socket, or through Sentinel.
 *
 * The plaintext key is printed once, at creation, and never stored.
 * What users type for a key is checked by relay_validate.c, the same checks
 * as the admin pages, so both accept and refuse the same input.
 *
 * Build (the Makefile's relay-keys target):
 *   gcc -Wall -Wextra -Werror -O2 -I. -I/usr/include/hiredis $(apr-1-config --cppflags
 *       --includes) tools/relay-keys.c relay_keystore.c relay_redis.c relay_keys.c
 *       relay_validate.c -laprutil-1 -lapr-1 -lhiredis -ljson-c -o relay-keys
 */
#define _DEFAULT_SOURCE

#include "relay_keys.h"
#include "relay_keystore.h"
#include "relay_redis.h"
#include "relay_schema.h"
#include "relay_validate.h"

#include <apr_general.h>
#include <apr_network_io.h>
#include <apr_pools.h>
#include <apr_strings.h>

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
/* connect and command timeout: a list reads 200 keys per script call */
#define TIMEOUT_MS 5000
/* as RelayRedisSentinel allows */
#define MAX_SENTINELS 32

/* Global options: where Redis is and how to log in, and the hash secret. */
typedef struct {
    const char *redis;             /* address as given (parsed on connect) */
    const char *redis_source;      /* "option --redis" or "RELAY_REDIS" for messages */
    const char *sentinel;          /* sentinel list as given, or NULL */
    const char *sentinel_source;   /* "option --sentinel" or "RELAY_REDIS_SENTINEL" */
    const char *master;            /* master name the sentinels know, or NULL */
    const char *master_source;     /* "option --master" or "RELAY_REDIS_MASTER" */
    const char *password;          /* AUTH password or NULL */
    const char *user;              /* ACL user or NULL */
    const char *sentinel_password; /* AUTH password of the sentinels, or NULL */
    const char *sentinel_user;     /* ACL user on the sentinels, or NULL */
    const char *db;                /* SELECT index as given, or NULL */
    const char *db_source;         /* "option --db" or "RELAY_REDIS_DATABASE" */
    const char *secret;            /* --secret or environment */
    const char *secret_file;       /* --secret-file */
} options;

static apr_pool_t *g_pool;      /* everything the tool allocates lives here */
static relay_redis_conn g_conn; /* the one connection, opened by connect_redis */

/* Close the Redis connection at exit. */
static void close_redis(void)
{
    if (g_conn.ctx != NULL) {
        redisFree(g_conn.ctx);
        g_conn.ctx = NULL;
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
          "  --sentinel HOST:PORT[,HOST:PORT...]\n"
          "                          find the master through these sentinels instead\n"
          "                          [RELAY_REDIS_SENTINEL]\n"
          "  --master NAME           the master's name on the sentinels [RELAY_REDIS_MASTER]\n"
          "  --password P            AUTH password [RELAY_REDIS_PASSWORD]\n"
          "  --user U                ACL user name for AUTH [RELAY_REDIS_USERNAME]\n"
          "  --sentinel-password P   AUTH password of the sentinels\n"
          "                          [RELAY_REDIS_SENTINEL_PASSWORD]\n"
          "  --sentinel-user U       ACL user name on the sentinels\n"
          "                          [RELAY_REDIS_SENTINEL_USERNAME]\n"
          "  --db N                  database index for SELECT [RELAY_REDIS_DATABASE]\n"
          "  --secret S              key hash secret [RELAY_KEY_HASH_SECRET]\n"
          "  --secret-file PATH      read the key hash secret from a file\n"
          "  --version               print the version and exit\n"
          "\n"
          "Commands:\n"
          "  create --name NAME [--description TEXT] [--concurrency-limit N]\n"
          "         [--token-limit N] [--expires DATE|none] [--by USER] [--json]\n"
          "                          create a key; the key is printed once\n"
          "  list [--search TEXT] [--json]\n"
          "                          list all keys, or those whose id starts with TEXT or\n"
          "                          whose name or description holds it\n"
          "  show ID [--json]        show one key\n"
          "  edit ID [--name NAME] [--description TEXT] [--concurrency-limit N]\n"
          "          [--token-limit N] [--expires DATE|none] [--by USER]\n"
          "                          change only the given fields\n"
          "  disable ID | enable ID [--by USER]\n"
          "                          switch a key off or on\n"
          "  release-slots ID [--by USER]\n"
          "                          set the key's requests in flight to 0 now; those running\n"
          "                          go on uncounted until they end\n"
          "  regenerate ID [--by USER] [--json]\n"
          "                          give the key a new secret (printed once); the old one is\n"
          "                          refused from the next request on\n"
          "  delete ID               delete a key and its concurrency leases\n"
          "  hash KEY                print the stored hash of KEY (KEY \"-\" reads stdin)\n"
          "  help                    show this text\n"
          "\n"
          "Limits are whole numbers from 0 to 2147483647; 0 means unlimited.\n"
          "DATE is YYYY-MM-DD (end of that day, UTC) or YYYY-MM-DDTHH:MM[:SS[.mmm]]Z.\n"
          "--by (default \"" DEFAULT_BY "\") is recorded as createdBy or updatedBy.\n"
          "Exit status: 0 ok, 1 failure (not found, Redis error), 2 usage error.\n",
          out);
}

static void usage_error(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
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

/* Parse a database index for SELECT; exits 2 when it is not a number. */
static long parse_db(const char *s, const char *source)
{
    long db;

    if (*s == '\0' || relay_parse_limit(s, &db) != 0) {
        usage_error("%s: \"%s\" is not a database number.", source, s);
    }
    return db;
}

/* Parse a Redis address "HOST[:PORT]", "[V6]:PORT" or "unix:/path" into t. */
static void parse_redis_addr(relay_redis_target *t, const char *s, const char *source)
{
    const char *colon;
    size_t hostlen;
    int port = DEFAULT_PORT;

    t->host = NULL;
    t->unix_path = NULL;
    if (strncmp(s, "unix:", 5) == 0) {
        if (s[5] == '\0') {
            usage_error("%s: \"%s\" does not name a usable unix socket path.", source, s);
        }
        t->unix_path = s + 5;
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
                usage_error("%s: the port in \"%s\" is not a number from 1 to 65535.", source, s);
            }
            hostlen = (size_t)(colon - s);
        }
        else {
            hostlen = strlen(s);
        }
    }
    if (hostlen == 0 || hostlen > 255) {
        usage_error("%s: \"%s\" does not name a host.", source, s);
    }
    t->host = apr_pstrmemdup(g_pool, s, hostlen);
    t->port = port;
}

/*
 * Parse a sentinel list "HOST:PORT[,HOST:PORT...]" into t, with the rule
 * RelayRedisSentinel applies to its list; exits 2 naming source otherwise.
 */
static void parse_sentinels(relay_redis_target *t, const char *s, const char *source)
{
    relay_redis_addr *addrs = apr_pcalloc(g_pool, sizeof(*addrs) * MAX_SENTINELS);
    char *list = apr_pstrdup(g_pool, s), *item, *last = NULL;
    int n = 0;

    if (*list == '\0' || *list == ',' || list[strlen(list) - 1] == ',' || strstr(list, ",,")) {
        usage_error("%s: the sentinel list \"%s\" is empty or has an empty entry.", source, s);
    }
    for (item = apr_strtok(list, ",", &last); item; item = apr_strtok(NULL, ",", &last)) {
        char *host = NULL, *scope = NULL;
        apr_port_t port = 0;

        if (apr_parse_addr_port(&host, &scope, &port, item, g_pool) != APR_SUCCESS || !host ||
            scope || port == 0) {
            usage_error("%s: \"%s\" in the sentinel list is not HOST:PORT.", source, item);
        }
        if (n == MAX_SENTINELS) {
            usage_error("%s: at most %d sentinels.", source, MAX_SENTINELS);
        }
        addrs[n].host = host;
        addrs[n].port = port;
        n++;
    }
    t->sentinels = addrs;
    t->nsentinels = n;
}

/*
 * Where Redis is, from the options (checked by main): the sentinels when
 * given, else the address. Exits 2 on a bad value.
 */
static void build_target(const options *o, relay_redis_target *t)
{
    memset(t, 0, sizeof(*t));
    t->timeout_ms = TIMEOUT_MS;
    t->username = o->user;
    t->password = o->password;
    if (o->db != NULL) {
        t->database = (int)parse_db(o->db, o->db_source);
    }
    if (o->sentinel != NULL) {
        parse_sentinels(t, o->sentinel, o->sentinel_source);
        if (o->master == NULL) {
            usage_error("%s needs the master's name: pass --master NAME or set "
                        "RELAY_REDIS_MASTER.",
                        o->sentinel_source);
        }
        if (*o->master == '\0' || strpbrk(o->master, " \t\r\n") != NULL) {
            usage_error("%s: the master name \"%s\" must be one word.", o->master_source,
                        o->master);
        }
        t->master_name = o->master;
        t->sentinel_username = o->sentinel_user;
        t->sentinel_password = o->sentinel_password;
    }
    else {
        parse_redis_addr(t, o->redis, o->redis_source);
    }
}

/* Open the connection (AUTH, SELECT; through the sentinels when given); exits 1 on failure. */
static relay_redis_conn *connect_redis(const options *o)
{
    static relay_redis_target target;
    const char *err = NULL;

    build_target(o, &target);
    g_conn.ctx = relay_redis_connect(&target, g_pool, &err);
    if (g_conn.ctx == NULL) {
        fail("%s", err ? err : "cannot connect to Redis");
    }
    g_conn.target = &target;
    atexit(close_redis);
    return &g_conn;
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
        usage_error("option %s: \"%s\" is not a whole number from 0 to %ld.", opt, s,
                    RELAY_LIMIT_MAX);
    case RELAY_INVALID_DATE:
        usage_error("option %s: \"%s\" is not YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS[.mmm]]Z or "
                    "\"none\".",
                    opt, s);
    case RELAY_INVALID_PAST:
        usage_error("option %s: \"%s\" is not in the future.", opt, s);
    case RELAY_INVALID_CHOICE:
        usage_error("option %s: \"%s\" is not true or false.", opt, s);
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
    if (strcmp(s, "none") == 0 || strcmp(s, "never") == 0) {
        out[0] = '\0';
        return;
    }
    check_opt("--expires", s, relay_check_expiry(s, relay_now_iso(g_pool), out), 0);
}

/* A --by value: the same rule as a key name (required, RELAY_NAME_MAX_CHARS, no controls). */
static void check_by(const char *by)
{
    check_opt("--by", by, relay_check_name(by), RELAY_NAME_MAX_CHARS);
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

/* A stored field of a key as read, or NULL when its hash lacks it (apiKey is never there). */
static const char *rec_get(const relay_key_record *k, const char *field)
{
    int i;

    for (i = 0; i + 1 < k->fields->nelts; i += 2) {
        if (strcmp(APR_ARRAY_IDX(k->fields, i, const char *), field) == 0) {
            return APR_ARRAY_IDX(k->fields, i + 1, const char *);
        }
    }
    return NULL;
}

/* A stored field, or fallback when it is missing or empty. */
static const char *rec_or(const relay_key_record *k, const char *field, const char *fallback)
{
    const char *v = rec_get(k, field);
    return v != NULL && *v != '\0' ? v : fallback;
}

/* "current/limit" for the concurrency column. */
static void concurrency_text(const relay_key_record *k, char *out, size_t outlen)
{
    char lim[64];

    limit_text(rec_get(k, RELAY_F_CONCURRENCY_LIMIT), lim, sizeof(lim));
    snprintf(out, outlen, "%ld/%s", k->current_concurrency, lim);
}

/* A JSON object for a key: its stored fields (never apiKey), plus live data. */
static json_object *record_json(const relay_key_record *k, const char *now_iso)
{
    json_object *o = json_object_new_object();
    int i;

    if (rec_get(k, RELAY_F_ID) == NULL) {
        json_object_object_add(o, RELAY_F_ID, json_object_new_string(k->id));
    }
    for (i = 0; i + 1 < k->fields->nelts; i += 2) {
        const char *f = APR_ARRAY_IDX(k->fields, i, const char *);
        const char *v = APR_ARRAY_IDX(k->fields, i + 1, const char *);
        long lim;

        if ((strcmp(f, RELAY_F_TOKEN_LIMIT) == 0 || strcmp(f, RELAY_F_CONCURRENCY_LIMIT) == 0) &&
            relay_parse_limit(v, &lim) == 0) {
            json_object_object_add(o, f, json_object_new_int64(lim));
        }
        else {
            json_object_object_add(o, f, json_object_new_string(v));
        }
    }
    json_object_object_add(o, "currentConcurrency", json_object_new_int64(k->current_concurrency));
    json_object_object_add(o, "status", json_object_new_string(relay_key_status(k, now_iso)));
    return o;
}

/* Print a JSON value on one line and free it. */
static void print_json(json_object *o)
{
    puts(
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
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

/* Exit 1 with the key store's sentence for a failed call. */
static void store_failed(const char *doing, const char *err) __attribute__((noreturn));
static void store_failed(const char *doing, const char *err)
{
    fail("%s failed: %s", doing, err ? err : "unknown error");
}

/* `create`: make a new key and print it once. */
static int cmd_create(const options *o, int argc, char **argv)
{
    const char *name = NULL, *description = "", *by = DEFAULT_BY, *val, *secret;
    const char *plain = NULL, *err = NULL;
    long conc = 0, tokens = 0;
    char expires[RELAY_ISO_LEN + 1] = "";
    unsigned char rnd[RELAY_KEYSTORE_RANDOM_BYTES];
    relay_key_new nk;
    relay_key_record *k = NULL;
    relay_redis_conn *c;
    relay_ks_result done;
    apr_status_t rv;
    int json = 0, i;

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

    /* the admin's source of randomness too */
    rv = apr_generate_random_bytes(rnd, sizeof(rnd));
    if (rv != APR_SUCCESS) {
        char why[120];
        fail("no random bytes available: %s", apr_strerror(rv, why, sizeof(why)));
    }
    memset(&nk, 0, sizeof(nk));
    nk.name = name;
    nk.description = description;
    nk.token_limit = tokens;
    nk.concurrency_limit = conc;
    nk.expires_at = expires;
    nk.created_by = by;
    c = connect_redis(o);
    done = relay_keystore_create(c, &nk, secret, rnd, &k, &plain, g_pool, &err);
    explicit_bzero(rnd, sizeof(rnd));
    if (done == RELAY_KS_EXISTS) {
        fail("cannot create the key: %s. Run create again.", err);
    }
    if (done != RELAY_KS_DONE) {
        store_failed("creating the key", err);
    }

    if (json) {
        json_object *j = json_object_new_object();
        json_object_object_add(j, RELAY_F_ID, json_object_new_string(k->id));
        json_object_object_add(j, RELAY_F_NAME, json_object_new_string(k->name));
        /* the key itself, named as claude-relay-service's API names it (not the stored hash) */
        json_object_object_add(j, "apiKey", json_object_new_string(plain));
        json_object_object_add(j, RELAY_F_KEY_PREVIEW, json_object_new_string(k->key_preview));
        json_object_object_add(j, RELAY_F_CONCURRENCY_LIMIT, json_object_new_int64(conc));
        json_object_object_add(j, RELAY_F_TOKEN_LIMIT, json_object_new_int64(tokens));
        json_object_object_add(j, RELAY_F_EXPIRES_AT, json_object_new_string(k->expires_at));
        print_json(j);
    }
    else {
        printf("Created key \"%s\" (id %s)\n", name, k->id);
        printf("%s\n", plain);
        printf("Store it now: it will not be shown again.\n");
    }
    fflush(stdout);
    explicit_bzero((char *)plain, strlen(plain));
    return 0;
}

/* Print the plain-text table of keys. */
static void print_table(relay_key_record *const *recs, int n, const char *now_iso)
{
    static const char *const head[6] = {"ID",          "NAME",        "STATUS",
                                        "CONCURRENCY", "TOKEN LIMIT", "CREATED"};
    size_t w[6] = {36, 4, 6, 11, 11, 7};
    char buf[6][512];
    size_t len[6];
    size_t c;
    int i, pass;

    /* first pass measures the columns, second prints */
    for (pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            for (c = 0; c < 6; c++) {
                print_padded(head[c], strlen(head[c]), c == 5 ? 0 : w[c] + 2);
            }
            putchar('\n');
        }
        for (i = 0; i < n; i++) {
            const relay_key_record *k = recs[i];

            len[0] = display_text(k->id, 36, buf[0], sizeof(buf[0]));
            len[1] = display_text(k->name, 32, buf[1], sizeof(buf[1]));
            len[2] = display_text(relay_key_status(k, now_iso), 10, buf[2], sizeof(buf[2]));
            concurrency_text(k, buf[3], sizeof(buf[3]));
            len[3] = strlen(buf[3]);
            limit_text(rec_get(k, RELAY_F_TOKEN_LIMIT), buf[4], sizeof(buf[4]));
            len[4] = strlen(buf[4]);
            len[5] = display_text(rec_or(k, RELAY_F_CREATED_AT, "-"), 30, buf[5], sizeof(buf[5]));
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

/* `list [--search TEXT]`: every key (or those matching), oldest first, with its status. */
static int cmd_list(const options *o, int argc, char **argv)
{
    const char *err = NULL, *now_iso, *val;
    relay_key_query q;
    relay_key_page page;
    apr_array_header_t *keys;
    relay_key_record **recs;
    int json = 0, i;

    memset(&q, 0, sizeof(q));
    for (i = 0; i < argc; i++) {
        if (take_opt(argc, argv, &i, "--search", &val)) {
            q.search = val;
        }
        else if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        }
        else {
            usage_error("list: unexpected argument \"%s\".", argv[i]);
        }
    }
    if (q.search != NULL) {
        check_opt("--search", q.search, relay_check_search(q.search), RELAY_SEARCH_MAX_CHARS);
    }
    /* every match on one page, oldest first: the order list has always printed */
    q.sort = RELAY_SORT_CREATED;
    q.page = 1;
    if (relay_keystore_query(connect_redis(o), &q, &page, g_pool, &err) != 0) {
        store_failed("listing the keys", err);
    }
    keys = page.keys;
    now_iso = relay_now_iso(g_pool);
    recs = (relay_key_record **)keys->elts;
    if (json) {
        json_object *arr = json_object_new_array();
        for (i = 0; i < keys->nelts; i++) {
            json_object_array_add(arr, record_json(recs[i], now_iso));
        }
        print_json(arr);
    }
    else if (keys->nelts == 0) {
        printf(q.search != NULL ? "No relay key matches.\n" : "No relay keys.\n");
    }
    else {
        print_table(recs, keys->nelts, now_iso);
    }
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
    const char *id = NULL, *err = NULL, *now_iso;
    int json = json_args("show", argc, argv, &id);
    relay_key_record *k;
    char buf[128];

    if (id == NULL) {
        usage_error("show needs a key id.");
    }
    check_id(id);
    k = relay_keystore_get(connect_redis(o), id, g_pool, &err);
    if (k == NULL && err != NULL) {
        store_failed("reading the key", err);
    }
    if (k == NULL) {
        fail("no key with id %s.", id);
    }
    now_iso = relay_now_iso(g_pool);
    if (json) {
        print_json(record_json(k, now_iso));
        return 0;
    }
    show_line("ID:", k->id, 36);
    show_line("Name:", k->name, 200);
    show_line("Description:", k->description, 1000);
    show_line("Status:", relay_key_status(k, now_iso), 20);
    show_line("Preview:", k->key_preview, 40);
    concurrency_text(k, buf, sizeof(buf));
    show_line("Concurrency:", buf, 60);
    limit_text(rec_get(k, RELAY_F_TOKEN_LIMIT), buf, sizeof(buf));
    show_line("Token limit:", buf, 60);
    show_line("Expires:", rec_or(k, RELAY_F_EXPIRES_AT, "never"), 60);
    show_line("Created:", k->created_at, 60);
    show_line("Created by:", k->created_by, 200);
    show_line("Updated:", k->updated_at, 60);
    if (rec_get(k, RELAY_F_UPDATED_BY) != NULL) {
        show_line("Updated by:", k->updated_by, 200);
    }
    show_line("Last used:", rec_or(k, RELAY_F_LAST_USED_AT, "never"), 60);
    return 0;
}

/* Set field/value pairs of key id, recording by; exits 1 when the key does not exist. */
static void update_key(const options *o, const char *id, apr_array_header_t *pairs, const char *by)
{
    const char *err = NULL;
    relay_ks_result done = relay_keystore_update(connect_redis(o), id, pairs, by, g_pool, &err);

    if (done == RELAY_KS_NOT_FOUND) {
        fail("no key with id %s.", id);
    }
    if (done != RELAY_KS_DONE) {
        store_failed("updating the key", err);
    }
}

/* Append a field/value pair. */
static void pair_add(apr_array_header_t *pairs, const char *field, const char *value)
{
    APR_ARRAY_PUSH(pairs, const char *) = field;
    APR_ARRAY_PUSH(pairs, const char *) = value;
}

/* `edit ID`: change only the given fields. */
static int cmd_edit(const options *o, int argc, char **argv)
{
    const char *id = NULL, *by = DEFAULT_BY, *val;
    const char *conc_opt = NULL, *tokens_opt = NULL, *name = NULL, *description = NULL;
    int have_expires = 0, i;
    char expires[RELAY_ISO_LEN + 1] = "";
    long conc = 0, tokens = 0;
    apr_array_header_t *pairs = apr_array_make(g_pool, 8, sizeof(const char *));

    for (i = 0; i < argc; i++) {
        if (take_opt(argc, argv, &i, "--name", &val)) {
            name = val;
            check_opt("--name", name, relay_check_name(name), RELAY_NAME_MAX_CHARS);
        }
        else if (take_opt(argc, argv, &i, "--description", &val)) {
            description = val;
            check_opt("--description", description, relay_check_description(description),
                      RELAY_DESCRIPTION_MAX_CHARS);
        }
        else if (take_opt(argc, argv, &i, "--concurrency-limit", &val)) {
            conc_opt = val;
            conc = limit_opt("--concurrency-limit", val);
        }
        else if (take_opt(argc, argv, &i, "--token-limit", &val)) {
            tokens_opt = val;
            tokens = limit_opt("--token-limit", val);
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
    if (name == NULL && description == NULL && conc_opt == NULL && tokens_opt == NULL &&
        !have_expires) {
        usage_error("edit needs at least one of --name, --description, --concurrency-limit, "
                    "--token-limit, --expires.");
    }
    check_by(by);

    if (name != NULL) {
        pair_add(pairs, RELAY_F_NAME, name);
    }
    if (description != NULL) {
        pair_add(pairs, RELAY_F_DESCRIPTION, description);
    }
    if (conc_opt != NULL) {
        pair_add(pairs, RELAY_F_CONCURRENCY_LIMIT, apr_ltoa(g_pool, conc));
    }
    if (tokens_opt != NULL) {
        pair_add(pairs, RELAY_F_TOKEN_LIMIT, apr_ltoa(g_pool, tokens));
    }
    if (have_expires) {
        pair_add(pairs, RELAY_F_EXPIRES_AT, expires);
    }
    update_key(o, id, pairs, by);
    printf("Updated key %s.\n", id);
    return 0;
}

/* `disable ID` / `enable ID`: set isActive. */
static int cmd_set_active(const options *o, int argc, char **argv, int active)
{
    const char *cmd = active ? "enable" : "disable", *id = NULL, *by = DEFAULT_BY, *val;
    apr_array_header_t *pairs = apr_array_make(g_pool, 2, sizeof(const char *));
    int i;

    for (i = 0; i < argc; i++) {
        if (take_opt(argc, argv, &i, "--by", &val)) {
            by = val;
        }
        else if (argv[i][0] != '-' && id == NULL) {
            id = argv[i];
        }
        else {
            usage_error("%s needs exactly one key id (and optionally --by USER).", cmd);
        }
    }
    if (id == NULL) {
        usage_error("%s needs exactly one key id.", cmd);
    }
    check_id(id);
    check_by(by);
    pair_add(pairs, RELAY_F_IS_ACTIVE, active ? RELAY_ACTIVE_TRUE : RELAY_ACTIVE_FALSE);
    update_key(o, id, pairs, by);
    printf("%s key %s.\n", active ? "Enabled" : "Disabled", id);
    return 0;
}

/* The key id and --by of a command taking "ID [--by USER]" (and --json when json is not NULL). */
static const char *id_and_by(const char *cmd, int argc, char **argv, const char **by, int *json)
{
    const char *id = NULL, *val;
    int i;

    *by = DEFAULT_BY;
    for (i = 0; i < argc; i++) {
        if (take_opt(argc, argv, &i, "--by", &val)) {
            *by = val;
        }
        else if (json != NULL && strcmp(argv[i], "--json") == 0) {
            *json = 1;
        }
        else if (argv[i][0] != '-' && id == NULL) {
            id = argv[i];
        }
        else {
            usage_error("%s: unexpected argument \"%s\".", cmd, argv[i]);
        }
    }
    if (id == NULL) {
        usage_error("%s needs exactly one key id.", cmd);
    }
    check_id(id);
    check_by(*by);
    return id;
}

/* `release-slots ID`: delete the key's leases, so its count starts again from 0. */
static int cmd_release(const options *o, int argc, char **argv)
{
    const char *by, *id = id_and_by("release-slots", argc, argv, &by, NULL), *err = NULL;
    long released = 0;
    relay_ks_result done =
        relay_keystore_release(connect_redis(o), id, by, &released, g_pool, &err);

    if (done == RELAY_KS_NOT_FOUND) {
        fail("no key with id %s.", id);
    }
    if (done != RELAY_KS_DONE) {
        store_failed("releasing the slots", err);
    }
    printf("Released %ld slot(s) of key %s; requests still in flight run uncounted until they "
           "end.\n",
           released, id);
    return 0;
}

/* `regenerate ID`: a new key for the same id, printed once; the old one stops working. */
static int cmd_regenerate(const options *o, int argc, char **argv)
{
    const char *by, *secret, *plain = NULL, *preview = NULL, *err = NULL, *id;
    unsigned char rnd[RELAY_KEY_RANDOM_BYTES];
    relay_ks_result done;
    apr_status_t rv;
    int json = 0;

    id = id_and_by("regenerate", argc, argv, &by, &json);
    secret = get_secret(o, "regenerate");
    if ((rv = apr_generate_random_bytes(rnd, sizeof(rnd))) != APR_SUCCESS) {
        char why[120];
        fail("no random bytes available: %s", apr_strerror(rv, why, sizeof(why)));
    }
    done = relay_keystore_regenerate(connect_redis(o), id, secret, rnd, by, &plain, &preview,
                                     g_pool, &err);
    explicit_bzero(rnd, sizeof(rnd));
    if (done == RELAY_KS_NOT_FOUND) {
        fail("no key with id %s.", id);
    }
    if (done == RELAY_KS_EXISTS) {
        fail("cannot regenerate the key: %s. Run regenerate again.", err);
    }
    if (done != RELAY_KS_DONE) {
        store_failed("regenerating the key", err);
    }
    if (json) {
        json_object *j = json_object_new_object();
        json_object_object_add(j, RELAY_F_ID, json_object_new_string(id));
        json_object_object_add(j, "apiKey", json_object_new_string(plain));
        json_object_object_add(j, RELAY_F_KEY_PREVIEW, json_object_new_string(preview));
        print_json(j);
    }
    else {
        printf("New key for id %s (the old key is refused from the next request on)\n", id);
        printf("%s\n", plain);
        printf("Store it now: it will not be shown again.\n");
    }
    fflush(stdout);
    explicit_bzero((char *)plain, strlen(plain));
    return 0;
}

/* `delete ID`: remove the key, its hash_map entry and its leases atomically. */
static int cmd_delete(const options *o, int argc, char **argv)
{
    const char *id = one_id("delete", argc, argv), *err = NULL;
    relay_ks_result done = relay_keystore_delete(connect_redis(o), id, g_pool, &err);

    if (done == RELAY_KS_NOT_FOUND) {
        fail("no key with id %s.", id);
    }
    if (done != RELAY_KS_DONE) {
        store_failed("deleting the key", err);
    }
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
    int i, redis_opt = 0, sentinel_opt = 0, master_opt = 0, sentinel_auth_opt = 0;

    memset(&o, 0, sizeof(o));
    /* a connection Redis (or a TLS tunnel) closed is a write error, reported, not a signal */
    signal(SIGPIPE, SIG_IGN);
    if (apr_initialize() != APR_SUCCESS || apr_pool_create(&g_pool, NULL) != APR_SUCCESS) {
        fputs(PROG ": cannot initialise APR\n", stderr);
        return EXIT_RUNTIME;
    }
    atexit(apr_terminate);
    relay_keystore_init();
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }

    /* environment first; options override */
    o.redis = env_nonempty("RELAY_REDIS");
    o.redis_source = "RELAY_REDIS";
    o.sentinel = env_nonempty("RELAY_REDIS_SENTINEL");
    o.sentinel_source = "RELAY_REDIS_SENTINEL";
    o.master = env_nonempty("RELAY_REDIS_MASTER");
    o.master_source = "RELAY_REDIS_MASTER";
    o.password = env_nonempty("RELAY_REDIS_PASSWORD");
    o.user = env_nonempty("RELAY_REDIS_USERNAME");
    o.sentinel_password = env_nonempty("RELAY_REDIS_SENTINEL_PASSWORD");
    o.sentinel_user = env_nonempty("RELAY_REDIS_SENTINEL_USERNAME");
    o.db = env_nonempty("RELAY_REDIS_DATABASE");
    o.db_source = "RELAY_REDIS_DATABASE";
    o.secret = env_nonempty("RELAY_KEY_HASH_SECRET");

    for (i = 1; i < argc && argv[i][0] == '-'; i++) {
        if (take_opt(argc, argv, &i, "--redis", &val)) {
            o.redis = val;
            o.redis_source = "option --redis";
            redis_opt = 1;
        }
        else if (take_opt(argc, argv, &i, "--sentinel-password", &val)) {
            o.sentinel_password = val;
            sentinel_auth_opt = 1;
        }
        else if (take_opt(argc, argv, &i, "--sentinel-user", &val)) {
            o.sentinel_user = val;
            sentinel_auth_opt = 1;
        }
        else if (take_opt(argc, argv, &i, "--sentinel", &val)) {
            o.sentinel = val;
            o.sentinel_source = "option --sentinel";
            sentinel_opt = 1;
        }
        else if (take_opt(argc, argv, &i, "--master", &val)) {
            o.master = val;
            o.master_source = "option --master";
            master_opt = 1;
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
    /* one way to Redis: an option beats the environment; two of a kind are ambiguous */
    if (redis_opt && sentinel_opt) {
        usage_error("give only one of --redis and --sentinel.");
    }
    if (redis_opt) {
        o.sentinel = NULL;
    }
    else if (sentinel_opt) {
        o.redis = NULL;
    }
    else if (o.redis != NULL && o.sentinel != NULL) {
        usage_error("RELAY_REDIS and RELAY_REDIS_SENTINEL are both set; unset one, or choose "
                    "with --redis or --sentinel.");
    }
    if (o.redis == NULL) {
        o.redis = DEFAULT_REDIS;
    }
    if (o.sentinel == NULL && (master_opt || sentinel_auth_opt)) {
        usage_error("options --master, --sentinel-password and --sentinel-user need --sentinel "
                    "(or RELAY_REDIS_SENTINEL).");
    }
    if (o.user != NULL && o.password == NULL) {
        usage_error("option --user needs --password (or RELAY_REDIS_PASSWORD).");
    }
    if (o.sentinel != NULL && o.sentinel_user != NULL && o.sentinel_password == NULL) {
        usage_error("option --sentinel-user needs --sentinel-password "
                    "(or RELAY_REDIS_SENTINEL_PASSWORD).");
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
    if (strcmp(cmd, "release-slots") == 0) {
        return cmd_release(&o, argc, argv);
    }
    if (strcmp(cmd, "regenerate") == 0) {
        return cmd_regenerate(&o, argc, argv);
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
