/*
 * test-concurrency - check a relay key's concurrency limit from the command line.
 *
 * Sends N Claude API requests with one key to mod_claude_relay at the same
 * moment, each on its own HTTP/1.1 connection (libcurl multi interface), and
 * checks the answers: with a limit L, min(N, L) must succeed and the rest be
 * refused with the relay's 429 "Concurrency limit exceeded" body. Prints one
 * line per request as it finishes, the totals, the limit the 429s reported
 * and a verdict, or one JSON object with --json.
 *
 *   test-concurrency [--stream] [--hold-ms MS] [--json] [--timeout S] <API_KEY> [N]
 *
 * The check assumes the admitted requests ran at the same time. The tool
 * says so only when the timing proves it: every success had started before
 * the first success finished, where a request counts as started no later
 * than its first response byte (less the --hold-ms hold for a non-stream
 * whose answers visibly took that long), not when it was sent, since a busy
 * server may queue what it has been sent. Without that proof, more successes
 * than the limit are not held against the relay.
 *
 * SERVER_URL picks the relay (default http://localhost:8080). The key is
 * never printed in full, not even when a server echoes it back.
 * Exit status: 0 verdict good, 1 verdict bad, 2 usage error.
 *
 * Build:
 *   gcc -Wall -Wextra -Werror -O2 -o /tmp/test-concurrency tools/test-concurrency.c \
 *       -lcurl -ljson-c
 */
#define _GNU_SOURCE

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <curl/curl.h>
#include <json-c/json.h>

#define PROG "test-concurrency"
#define EXIT_GOOD 0
#define EXIT_BAD 1
#define EXIT_USAGE 2

#define DEFAULT_SERVER "http://localhost:8080"
#define API_PATH "/api/v1/messages"
#define MODEL "claude-sonnet-4-20250514"
#define ANTHROPIC_VERSION "2023-06-01"
#define DEFAULT_N 10
#define MAX_N 1000
#define DEFAULT_TIMEOUT_S 120
#define MAX_TIMEOUT_S 86400
#define MAX_HOLD_MS 600000
#define BODY_KEEP 65536   /* bytes of each response body kept for messages */
#define SSE_KEEP 1024     /* bytes kept of one SSE line and of an error event's data */
#define MESSAGE_CHARS 200 /* characters of a body shown in a result line */
#define ELLIPSIS "\xe2\x80\xa6"

/* What became of one request. */
typedef enum { OUTCOME_PENDING, OUTCOME_OK, OUTCOME_LIMITED, OUTCOME_FAILED } outcome_t;

/* Command-line settings. */
typedef struct {
    bool stream;
    bool json;
    long hold_ms; /* -1: no x-mock-hold-ms header */
    long timeout_s;
    const char *key;
    long n;
    char *server;    /* SERVER_URL without trailing slashes */
    char *url;       /* server + API_PATH */
    char masked[64]; /* the key as shown */
} options_t;

/* One request: its handle, what came back, and when. */
typedef struct {
    int index; /* 1-based, as shown */
    CURL *easy;
    char payload[256]; /* request body */
    char errbuf[CURL_ERROR_SIZE];
    bool stream; /* parse the body as server-sent events */
    char *body;  /* first BODY_KEEP bytes of the response, NUL-terminated */
    size_t body_len;
    bool body_truncated;
    char line[SSE_KEEP]; /* SSE: the line being read (prefix if longer) */
    size_t line_len;
    char event_name[64];       /* SSE: "event:" of the event being read */
    char event_data[SSE_KEEP]; /* SSE: "data:" of the event being read (prefix) */
    size_t event_data_len;
    bool event_has_data;
    long events;               /* SSE: events dispatched */
    bool saw_stop;             /* SSE: a message_stop event came */
    bool saw_error;            /* SSE: an error event came */
    char error_data[SSE_KEEP]; /* SSE: data of the first error event */
    long events_before_error;  /* SSE: events that came before the first error event */
    double sent_at;            /* ms after the start when the request went out; -1 unknown */
    double first_byte_at;      /* ms after the start when the first byte came; -1 none */
    double last_byte_at;       /* ms after the start when the last byte came; -1 none */
    double done_at;            /* ms after the start when it finished */
    CURLcode curl_rc;
    long status; /* HTTP status, 0 if none */
    long ms;     /* duration as curl measured it */
    outcome_t outcome;
    char *message; /* one-line message, key scrubbed; NULL for none */
    bool has_limit, has_current;
    long limit, current; /* concurrencyLimit / currentConcurrency of a 429 body */
} request_t;

/* Totals and the verdict. */
typedef struct {
    long succeeded, limited, failed;
    bool has_limit, limits_differ, has_current;
    long limit, other_limit, max_current;
    long limited_without_limit; /* 429s whose body had no concurrencyLimit */
    bool overlapped;
    bool hold_counted;                             /* the hold is taken off the first byte times */
    double last_success_start, first_success_done; /* -1 when no success */
    bool good;
    char reason[512];
} summary_t;

static struct timespec start_time;

/* Milliseconds since start_time on the monotonic clock. */
static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)(ts.tv_sec - start_time.tv_sec) * 1000.0 +
           (double)(ts.tv_nsec - start_time.tv_nsec) / 1e6;
}

/* Print the usage text to the given stream. */
static void usage(FILE *out)
{
    fprintf(out,
            "Usage: " PROG " [--stream] [--hold-ms MS] [--json] [--timeout S] <API_KEY> [N]\n"
            "\n"
            "Sends N (default %d, 1..%d) requests with API_KEY to $SERVER_URL" API_PATH "\n"
            "at the same moment, each on its own connection, and checks that the relay\n"
            "admitted min(N, limit) of them and refused the rest with 429.\n"
            "\n"
            "  --stream       ask for streamed (SSE) answers and read each to the end\n"
            "  --hold-ms MS   send x-mock-hold-ms: MS (0..%d): the relay's mock upstream\n"
            "                 then takes MS milliseconds; a real upstream ignores it\n"
            "  --json         print one JSON object instead of the report\n"
            "  --timeout S    per-request timeout in seconds (default %d)\n"
            "  --help         print this help and exit\n"
            "\n"
            "Options may come before or after API_KEY and N.\n"
            "Environment: SERVER_URL, the relay's base URL (default " DEFAULT_SERVER ").\n"
            "Exit status: 0 verdict good, 1 verdict bad, 2 usage error.\n",
            DEFAULT_N, MAX_N, MAX_HOLD_MS, DEFAULT_TIMEOUT_S);
}

/* Report a usage error, print the usage to stderr and exit 2. */
__attribute__((format(printf, 1, 2), noreturn)) static void usage_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, PROG ": ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n\n");
    usage(stderr);
    exit(EXIT_USAGE);
}

/* Parse a whole decimal number within [min, max]; false if it is not one. */
static bool parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    long v;

    if (*s == '\0' || *s == '+' || *s == '-' || *s == ' ') {
        return false;
    }
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max) {
        return false;
    }
    *out = v;
    return true;
}

/* Show a key as its first and last few characters, hiding at least half of it. */
static void mask_key(const char *key, char *out, size_t size)
{
    size_t len = strlen(key);
    size_t head = len / 4 < 7 ? len / 4 : 7;
    size_t tail = len / 4 < 4 ? len / 4 : 4;

    snprintf(out, size, "%.*s" ELLIPSIS "%s", (int)head, key, key + len - tail);
}

/* Take an option's value: from "--opt=value" or from the next argument. */
static const char *option_value(int argc, char **argv, int *i, const char *name,
                                const char *inline_value)
{
    if (inline_value != NULL) {
        return inline_value;
    }
    if (*i + 1 >= argc) {
        usage_error("option %s needs a value", name);
    }
    *i += 1;
    return argv[*i];
}

/* Parse the command line and the environment into opts; exits on usage errors. */
static void parse_args(int argc, char **argv, options_t *opts)
{
    const char *positional[2] = {NULL, NULL};
    int npos = 0;
    bool options_done = false;
    const char *env;
    size_t len;

    opts->hold_ms = -1;
    opts->timeout_s = DEFAULT_TIMEOUT_S;
    opts->n = DEFAULT_N;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];

        if (!options_done && arg[0] == '-' && arg[1] != '\0') {
            const char *eq = strchr(arg, '=');
            char name[32];
            const char *value = eq != NULL ? eq + 1 : NULL;

            snprintf(name, sizeof(name), "%.*s",
                     (int)(eq != NULL ? (size_t)(eq - arg) : strlen(arg)), arg);
            if (strcmp(arg, "--") == 0) {
                options_done = true;
            }
            else if (eq != NULL && (strcmp(name, "--help") == 0 || strcmp(name, "--stream") == 0 ||
                                    strcmp(name, "--json") == 0)) {
                usage_error("option %s takes no value", name);
            }
            else if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
                usage(stdout);
                exit(EXIT_GOOD);
            }
            else if (strcmp(arg, "--stream") == 0) {
                opts->stream = true;
            }
            else if (strcmp(arg, "--json") == 0) {
                opts->json = true;
            }
            else if (strcmp(name, "--hold-ms") == 0) {
                value = option_value(argc, argv, &i, name, value);
                if (!parse_long(value, 0, MAX_HOLD_MS, &opts->hold_ms)) {
                    usage_error("--hold-ms wants milliseconds from 0 to 600000, not '%s'", value);
                }
            }
            else if (strcmp(name, "--timeout") == 0) {
                value = option_value(argc, argv, &i, name, value);
                if (!parse_long(value, 1, MAX_TIMEOUT_S, &opts->timeout_s)) {
                    usage_error("--timeout wants seconds from 1 to 86400, not '%s'", value);
                }
            }
            else {
                usage_error("unknown option %s", name);
            }
        }
        else if (npos < 2) {
            positional[npos++] = arg;
        }
        else {
            usage_error("too many arguments (from '%s' on)", arg);
        }
    }
    if (npos < 1 || positional[0][0] == '\0') {
        usage_error("%s", "an API key is needed");
    }
    for (const unsigned char *p = (const unsigned char *)positional[0]; *p; p++) {
        if (*p <= ' ' || *p >= 0x7f) {
            usage_error("%s", "the API key must be printable ASCII without spaces");
        }
    }
    opts->key = positional[0];
    if (npos == 2 && !parse_long(positional[1], 1, MAX_N, &opts->n)) {
        usage_error("N must be a number from 1 to 1000, not '%s'", positional[1]);
    }
    mask_key(opts->key, opts->masked, sizeof(opts->masked));

    env = getenv("SERVER_URL");
    if (env == NULL || *env == '\0') {
        env = DEFAULT_SERVER;
    }
    if (strncmp(env, "http://", 7) != 0 && strncmp(env, "https://", 8) != 0) {
        usage_error("SERVER_URL must start with http:// or https://, not '%s'", env);
    }
    len = strlen(env);
    while (len > 0 && env[len - 1] == '/') {
        len--;
    }
    if (asprintf(&opts->server, "%.*s", (int)len, env) < 0 ||
        asprintf(&opts->url, "%s" API_PATH, opts->server) < 0) {
        fprintf(stderr, PROG ": out of memory\n");
        exit(EXIT_BAD);
    }
}

/* Allow enough open files for N connections as far as the hard limit lets; warn if short. */
static void raise_file_limit(long n)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)n + 64;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want) {
        return;
    }
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want) {
        fprintf(stderr,
                PROG ": warning: only %llu files may be open (ulimit -n), too few for %ld "
                     "connections: expect failed requests\n",
                (unsigned long long)rl.rlim_cur, n);
    }
}

/* SSE: finish the event being read (at a blank line or at the end of the body). */
static void sse_dispatch(request_t *rq)
{
    if (rq->event_has_data) {
        rq->events++;
        if (strcmp(rq->event_name, "message_stop") == 0) {
            rq->saw_stop = true;
        }
        else if (strcmp(rq->event_name, "error") == 0 && !rq->saw_error) {
            rq->saw_error = true;
            rq->events_before_error = rq->events - 1;
            memcpy(rq->error_data, rq->event_data, rq->event_data_len);
            rq->error_data[rq->event_data_len] = '\0';
        }
    }
    rq->event_name[0] = '\0';
    rq->event_data_len = 0;
    rq->event_has_data = false;
}

/* SSE: handle one complete line (without its line ending). */
static void sse_line(request_t *rq, char *line, size_t len)
{
    const char *value;

    if (len > 0 && line[len - 1] == '\r') {
        line[--len] = '\0';
    }
    if (len == 0) {
        sse_dispatch(rq);
        return;
    }
    if (line[0] == ':') {
        return;
    }
    value = strchr(line, ':');
    value = value == NULL ? line + len : value + 1;
    if (*value == ' ') {
        value++;
    }
    if (strncmp(line, "event:", 6) == 0) {
        snprintf(rq->event_name, sizeof(rq->event_name), "%s", value);
    }
    else if (strncmp(line, "data:", 5) == 0) {
        size_t vlen = strlen(value);
        size_t room = sizeof(rq->event_data) - 1 - rq->event_data_len;

        if (rq->event_has_data && room > 0) {
            rq->event_data[rq->event_data_len++] = '\n';
            room--;
        }
        if (vlen > room) {
            vlen = room;
        }
        memcpy(rq->event_data + rq->event_data_len, value, vlen);
        rq->event_data_len += vlen;
        rq->event_data[rq->event_data_len] = '\0';
        rq->event_has_data = true;
    }
}

/* SSE: feed body bytes, splitting them into lines (long lines keep their prefix). */
static void sse_feed(request_t *rq, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\n') {
            rq->line[rq->line_len] = '\0';
            sse_line(rq, rq->line, rq->line_len);
            rq->line_len = 0;
        }
        else if (rq->line_len < sizeof(rq->line) - 1) {
            rq->line[rq->line_len++] = data[i];
        }
    }
}

/* libcurl write callback: keep the start of the body and parse streams. */
static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    request_t *rq = userdata;
    size_t len = size * nmemb;
    size_t keep = len;

    rq->last_byte_at = now_ms();
    if (rq->first_byte_at < 0) {
        rq->first_byte_at = rq->last_byte_at;
    }
    if (rq->body_len + keep > BODY_KEEP) {
        keep = BODY_KEEP - rq->body_len;
        rq->body_truncated = true;
    }
    if (keep > 0) {
        char *grown = realloc(rq->body, rq->body_len + keep + 1);

        if (grown == NULL) {
            return 0;
        }
        rq->body = grown;
        memcpy(rq->body + rq->body_len, data, keep);
        rq->body_len += keep;
        rq->body[rq->body_len] = '\0';
    }
    if (rq->stream) {
        sse_feed(rq, data, len);
    }
    return len;
}

/* libcurl header callback: only notes when bytes arrived. */
static size_t on_header(char *data, size_t size, size_t nmemb, void *userdata)
{
    request_t *rq = userdata;

    (void)data;
    rq->last_byte_at = now_ms();
    if (rq->first_byte_at < 0) {
        rq->first_byte_at = rq->last_byte_at;
    }
    return size * nmemb;
}

#if LIBCURL_VERSION_NUM >= 0x075000
/* libcurl pre-request callback: notes when the request is about to go out. */
static int on_prereq(void *clientp, char *primary_ip, char *local_ip, int primary_port,
                     int local_port)
{
    request_t *rq = clientp;

    (void)primary_ip;
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    if (rq->sent_at < 0) {
        rq->sent_at = now_ms();
    }
    return CURL_PREREQFUNC_OK;
}
#endif

/* Append one code point's worth of valid UTF-8 from s (or '?') to out; returns bytes read. */
static size_t copy_utf8_char(const unsigned char *s, size_t len, char *out, size_t *olen)
{
    size_t need;
    unsigned int cp;

    if (s[0] < 0x80) {
        out[(*olen)++] = (char)s[0];
        return 1;
    }
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        need = 2;
        cp = s[0] & 0x1f;
    }
    else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        need = 3;
        cp = s[0] & 0x0f;
    }
    else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        need = 4;
        cp = s[0] & 0x07;
    }
    else {
        out[(*olen)++] = '?';
        return 1;
    }
    if (len < need) {
        out[(*olen)++] = '?';
        return 1;
    }
    for (size_t k = 1; k < need; k++) {
        if ((s[k] & 0xc0) != 0x80) {
            out[(*olen)++] = '?';
            return 1;
        }
        cp = (cp << 6) | (s[k] & 0x3f);
    }
    if ((need == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (need == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
        out[(*olen)++] = '?';
        return 1;
    }
    memcpy(out + *olen, s, need);
    *olen += need;
    return need;
}

/* Make a new one-line string of at most MESSAGE_CHARS characters of text, the key masked. */
static char *one_line(const char *text, size_t len, const options_t *opts)
{
    size_t klen = strlen(opts->key), mlen = strlen(opts->masked);
    char *clean = malloc(len + 1);
    char *scrubbed, *out;
    size_t clen = 0, slen = 0, olen = 0, chars = 0, i;

    /* whitespace and controls to single spaces; invalid UTF-8 to '?' */
    if (clean == NULL) {
        return NULL;
    }
    for (i = 0; i < len;) {
        unsigned char c = (unsigned char)text[i];

        if (c < 0x20 || c == 0x7f || c == ' ') {
            if (clen > 0 && clean[clen - 1] != ' ') {
                clean[clen++] = ' ';
            }
            i++;
        }
        else {
            i += copy_utf8_char((const unsigned char *)text + i, len - i, clean, &clen);
        }
    }
    while (clen > 0 && clean[clen - 1] == ' ') {
        clen--;
    }
    clean[clen] = '\0';

    /* the key, should the server echo it, is never shown */
    scrubbed = malloc(clen / (klen > 0 ? klen : 1) * mlen + clen + 1);
    if (scrubbed == NULL) {
        free(clean);
        return NULL;
    }
    for (i = 0; i < clen;) {
        if (klen > 0 && clen - i >= klen && memcmp(clean + i, opts->key, klen) == 0) {
            memcpy(scrubbed + slen, opts->masked, mlen);
            slen += mlen;
            i += klen;
        }
        else {
            scrubbed[slen++] = clean[i++];
        }
    }
    scrubbed[slen] = '\0';
    free(clean);

    /* at most MESSAGE_CHARS characters */
    for (i = 0; i < slen && chars < MESSAGE_CHARS; i++) {
        if (((unsigned char)scrubbed[i] & 0xc0) != 0x80) {
            chars++;
        }
    }
    while (i < slen && ((unsigned char)scrubbed[i] & 0xc0) == 0x80) {
        i++;
    }
    olen = i;
    if (olen < slen) {
        out = realloc(scrubbed, olen + sizeof(ELLIPSIS));
        if (out == NULL) {
            out = scrubbed;
        }
        else {
            memcpy(out + olen, ELLIPSIS, sizeof(ELLIPSIS));
        }
        return out;
    }
    return scrubbed;
}

/* A one-line message from a string (a JSON field, a curl error). */
static char *message_from(const char *s, const options_t *opts)
{
    return one_line(s, strlen(s), opts);
}

/* The body as a one-line message, "(empty body)" when there is none. */
static char *body_message(const request_t *rq, const options_t *opts)
{
    if (rq->body_len == 0) {
        return strdup("(empty body)");
    }
    return one_line(rq->body, rq->body_len, opts);
}

/* The human-readable message of a JSON error body ("message", "error.message" or "error"). */
static const char *json_error_message(json_object *obj)
{
    json_object *v, *e;

    if (obj == NULL || !json_object_is_type(obj, json_type_object)) {
        return NULL;
    }
    if (json_object_object_get_ex(obj, "message", &v) && json_object_is_type(v, json_type_string)) {
        return json_object_get_string(v);
    }
    if (json_object_object_get_ex(obj, "error", &e)) {
        if (json_object_is_type(e, json_type_string)) {
            return json_object_get_string(e);
        }
        if (json_object_is_type(e, json_type_object) &&
            json_object_object_get_ex(e, "message", &v) &&
            json_object_is_type(v, json_type_string)) {
            return json_object_get_string(v);
        }
    }
    return NULL;
}

/* Read an integer field of a JSON object; false when it is missing or not an integer. */
static bool json_int_field(json_object *obj, const char *name, long *out)
{
    json_object *v;

    if (obj == NULL || !json_object_is_type(obj, json_type_object) ||
        !json_object_object_get_ex(obj, name, &v) || !json_object_is_type(v, json_type_int)) {
        return false;
    }
    *out = (long)json_object_get_int64(v);
    return true;
}

/* Parse the kept body as JSON; NULL when it is not JSON (or was cut off). */
static json_object *parse_body(const request_t *rq)
{
    if (rq->body == NULL || rq->body_truncated) {
        return NULL;
    }
    return json_tokener_parse(rq->body);
}

/* Decide the outcome and message of a finished request. */
static void classify(request_t *rq, const options_t *opts)
{
    json_object *obj;
    const char *msg;

    if (rq->stream && rq->line_len > 0) {
        rq->line[rq->line_len] = '\0';
        sse_line(rq, rq->line, rq->line_len);
        rq->line_len = 0;
    }
    if (rq->stream) {
        sse_dispatch(rq);
    }
    if (rq->curl_rc != CURLE_OK) {
        rq->outcome = OUTCOME_FAILED;
        rq->message =
            message_from(rq->errbuf[0] ? rq->errbuf : curl_easy_strerror(rq->curl_rc), opts);
        return;
    }
    if (rq->status == 429) {
        rq->outcome = OUTCOME_LIMITED;
        obj = parse_body(rq);
        rq->has_limit = json_int_field(obj, "concurrencyLimit", &rq->limit);
        rq->has_current = json_int_field(obj, "currentConcurrency", &rq->current);
        msg = json_error_message(obj);
        rq->message = msg != NULL ? message_from(msg, opts) : body_message(rq, opts);
        json_object_put(obj);
        return;
    }
    if (rq->status != 200) {
        rq->outcome = OUTCOME_FAILED;
        rq->message = body_message(rq, opts);
        return;
    }
    if (rq->stream) {
        char buf[128];

        rq->outcome = OUTCOME_FAILED;
        if (rq->saw_error) {
            obj = json_tokener_parse(rq->error_data);
            msg = json_error_message(obj);
            snprintf(buf, sizeof(buf), "error event after %ld events: ", rq->events_before_error);
            if (asprintf(&rq->message, "%s%s", buf, msg != NULL ? msg : rq->error_data) >= 0) {
                char *line = message_from(rq->message, opts);

                free(rq->message);
                rq->message = line;
            }
            else {
                rq->message = NULL;
            }
            json_object_put(obj);
        }
        else if (rq->events == 0) {
            char *body = body_message(rq, opts);

            if (asprintf(&rq->message, "200 without any SSE event: %s", body != NULL ? body : "") <
                0) {
                rq->message = NULL;
            }
            free(body);
        }
        else if (!rq->saw_stop) {
            snprintf(buf, sizeof(buf), "stream ended without message_stop after %ld events",
                     rq->events);
            rq->message = strdup(buf);
        }
        else {
            rq->outcome = OUTCOME_OK;
        }
        return;
    }
    obj = parse_body(rq);
    if (obj == NULL || !json_object_is_type(obj, json_type_object)) {
        char *body = body_message(rq, opts);

        rq->outcome = OUTCOME_FAILED;
        if (asprintf(&rq->message, "200 with a body that is not a JSON object: %s",
                     body != NULL ? body : "") < 0) {
            rq->message = NULL;
        }
        free(body);
    }
    else {
        rq->outcome = OUTCOME_OK;
    }
    json_object_put(obj);
}

/* The word shown for an outcome. */
static const char *outcome_name(outcome_t o)
{
    switch (o) {
    case OUTCOME_OK:
        return "ok";
    case OUTCOME_LIMITED:
        return "limited";
    case OUTCOME_FAILED:
        return "failed";
    default:
        return "pending";
    }
}

/* Number of decimal digits of a positive number. */
static int digits(long n)
{
    int d = 1;

    while (n >= 10) {
        n /= 10;
        d++;
    }
    return d;
}

/* Print one finished request as a report line. */
static void print_result(const request_t *rq, const options_t *opts)
{
    char status[24];

    if (rq->status > 0) {
        snprintf(status, sizeof(status), "%3ld", rq->status);
    }
    else {
        snprintf(status, sizeof(status), "---");
    }
    printf("#%-*d  %s %-9s %5ld ms", digits(opts->n), rq->index, status, outcome_name(rq->outcome),
           rq->ms);
    if (rq->outcome == OUTCOME_OK && rq->stream) {
        printf("  %ld events", rq->events);
    }
    else if (rq->message != NULL) {
        printf("  %s", rq->message);
    }
    putchar('\n');
    fflush(stdout);
}

/* Set up one request's easy handle; false on failure. */
static bool setup_request(request_t *rq, int index, const options_t *opts,
                          struct curl_slist *headers)
{
    CURL *e;
    bool ok = true;

    rq->index = index;
    rq->stream = opts->stream;
    rq->sent_at = -1;
    rq->first_byte_at = -1;
    rq->last_byte_at = -1;
    snprintf(rq->payload, sizeof(rq->payload),
             "{\"model\":\"" MODEL "\",\"max_tokens\":32,\"messages\":[{\"role\":\"user\","
             "\"content\":\"concurrency test %d\"}]%s}",
             index, opts->stream ? ",\"stream\":true" : "");
    rq->easy = e = curl_easy_init();
    if (e == NULL) {
        return false;
    }
    ok = ok && curl_easy_setopt(e, CURLOPT_URL, opts->url) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->payload) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(rq->payload)) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_PIPEWAIT, 0L) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, opts->timeout_s * 1000L) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_USERAGENT, PROG "/1.0") == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_ERRORBUFFER, rq->errbuf) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_WRITEDATA, rq) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_HEADERDATA, rq) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_PRIVATE, rq) == CURLE_OK;
#if LIBCURL_VERSION_NUM >= 0x075000
    ok = ok && curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq) == CURLE_OK;
    ok = ok && curl_easy_setopt(e, CURLOPT_PREREQDATA, rq) == CURLE_OK;
#endif
    return ok;
}

/* Build the shared request headers; NULL on failure. */
static struct curl_slist *build_headers(const options_t *opts)
{
    struct curl_slist *h = NULL, *next;
    char buf[64];
    char *key_header;
    const char *fixed[] = {"anthropic-version: " ANTHROPIC_VERSION,
                           "content-type: application/json", "Expect:"};

    if (asprintf(&key_header, "x-api-key: %s", opts->key) < 0) {
        return NULL;
    }
    next = curl_slist_append(h, key_header);
    free(key_header);
    if (next == NULL) {
        return NULL;
    }
    h = next;
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        if ((next = curl_slist_append(h, fixed[i])) == NULL) {
            curl_slist_free_all(h);
            return NULL;
        }
        h = next;
    }
    if (opts->hold_ms >= 0) {
        snprintf(buf, sizeof(buf), "x-mock-hold-ms: %ld", opts->hold_ms);
        if ((next = curl_slist_append(h, buf)) == NULL) {
            curl_slist_free_all(h);
            return NULL;
        }
        h = next;
    }
    return h;
}

/* Handle the requests that finished since the last call; adds them to order. */
static void collect_done(CURLM *multi, const options_t *opts, request_t **order, long *ndone)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
        request_t *rq;
        char *priv = NULL;
        curl_off_t total_us = 0;

        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        rq = (request_t *)priv;
        rq->curl_rc = msg->data.result;
        rq->done_at = rq->last_byte_at >= 0 ? rq->last_byte_at : now_ms();
        curl_easy_getinfo(rq->easy, CURLINFO_RESPONSE_CODE, &rq->status);
        curl_easy_getinfo(rq->easy, CURLINFO_TOTAL_TIME_T, &total_us);
        rq->ms = (long)(total_us / 1000);
#if LIBCURL_VERSION_NUM < 0x075000
        {
            curl_off_t pre_us = 0;

            curl_easy_getinfo(rq->easy, CURLINFO_PRETRANSFER_TIME_T, &pre_us);
            rq->sent_at = rq->done_at - (double)(total_us - pre_us) / 1000.0;
        }
#endif
        classify(rq, opts);
        order[(*ndone)++] = rq;
        if (!opts->json) {
            print_result(rq, opts);
        }
        curl_multi_remove_handle(multi, rq->easy);
    }
}

/* Run all requests at once; fills order with them as they finished. false on a curl error. */
static bool run_all(request_t *reqs, const options_t *opts, request_t **order, long *ndone)
{
    CURLM *multi = curl_multi_init();
    int running = 0;
    CURLMcode mc = CURLM_OK;

    if (multi == NULL) {
        fprintf(stderr, PROG ": curl_multi_init failed\n");
        return false;
    }
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, 0L);
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, opts->n);
    for (long i = 0; i < opts->n; i++) {
        if ((mc = curl_multi_add_handle(multi, reqs[i].easy)) != CURLM_OK) {
            fprintf(stderr, PROG ": curl_multi_add_handle: %s\n", curl_multi_strerror(mc));
            curl_multi_cleanup(multi);
            return false;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &start_time);
    do {
        mc = curl_multi_perform(multi, &running);
        if (mc != CURLM_OK) {
            break;
        }
        collect_done(multi, opts, order, ndone);
        if (running > 0) {
            mc = curl_multi_poll(multi, NULL, 0, 1000, NULL);
            if (mc != CURLM_OK) {
                break;
            }
        }
    } while (running > 0);
    collect_done(multi, opts, order, ndone);
    curl_multi_cleanup(multi);
    if (mc != CURLM_OK) {
        fprintf(stderr, PROG ": %s\n", curl_multi_strerror(mc));
        return false;
    }
    return true;
}

/* Count the outcomes, read the 429 bodies, check the timing and decide the verdict. */
static void summarize(request_t *reqs, const options_t *opts, summary_t *s)
{
    long expected;
    char base[384];

    memset(s, 0, sizeof(*s));
    s->last_success_start = -1;
    s->first_success_done = -1;

    /*
     * A success started (took its place under the limit) no later than its
     * first response byte; a non-stream held for --hold-ms by the upstream no
     * later than that byte less the hold, if every success took that long.
     */
    s->hold_counted = !opts->stream && opts->hold_ms > 0;
    for (long i = 0; i < opts->n && s->hold_counted; i++) {
        const request_t *rq = &reqs[i];

        if (rq->outcome == OUTCOME_OK &&
            (rq->first_byte_at < 0 || rq->sent_at < 0 ||
             rq->first_byte_at - rq->sent_at < (double)opts->hold_ms)) {
            s->hold_counted = false;
        }
    }
    for (long i = 0; i < opts->n; i++) {
        const request_t *rq = &reqs[i];

        if (rq->outcome == OUTCOME_OK) {
            double start = rq->first_byte_at >= 0 ? rq->first_byte_at : rq->done_at;

            if (s->hold_counted) {
                start -= (double)opts->hold_ms;
            }
            s->succeeded++;
            if (s->last_success_start < 0 || start > s->last_success_start) {
                s->last_success_start = start;
            }
            if (s->first_success_done < 0 || rq->done_at < s->first_success_done) {
                s->first_success_done = rq->done_at;
            }
        }
        else if (rq->outcome == OUTCOME_LIMITED) {
            s->limited++;
            if (!rq->has_limit) {
                s->limited_without_limit++;
            }
            else if (!s->has_limit) {
                s->has_limit = true;
                s->limit = rq->limit;
            }
            else if (rq->limit != s->limit) {
                s->limits_differ = true;
                s->other_limit = rq->limit;
            }
            if (rq->has_current && (!s->has_current || rq->current > s->max_current)) {
                s->has_current = true;
                s->max_current = rq->current;
            }
        }
        else {
            s->failed++;
        }
    }
    /* every success had started before the first success finished */
    s->overlapped = s->succeeded == 0 || s->last_success_start < s->first_success_done;

    if (s->failed > 0) {
        s->good = false;
        snprintf(base, sizeof(base), "%ld request%s failed", s->failed, s->failed == 1 ? "" : "s");
    }
    else if (s->limited == 0) {
        s->good = true;
        snprintf(base, sizeof(base),
                 "no limit was hit: %ld requests all succeeded; "
                 "the key's limit is above %ld or unlimited",
                 opts->n, opts->n);
    }
    else if (s->limited_without_limit > 0) {
        s->good = false;
        snprintf(base, sizeof(base),
                 "%ld of the 429 responses did not give a concurrencyLimit "
                 "(not the relay's concurrency limit?)",
                 s->limited_without_limit);
    }
    else if (s->limits_differ) {
        s->good = false;
        snprintf(base, sizeof(base), "the 429 responses gave different limits (%ld and %ld)",
                 s->limit, s->other_limit);
    }
    else {
        bool too_many_in_flight = s->has_current && s->max_current > s->limit;
        char in_flight[96];

        expected = opts->n < s->limit ? opts->n : s->limit;
        snprintf(in_flight, sizeof(in_flight), "a 429 reported %ld in flight with limit %ld",
                 s->max_current, s->limit);
        if (s->succeeded == expected && !too_many_in_flight) {
            s->good = true;
            snprintf(base, sizeof(base),
                     "%ld succeeded = min(N, limit) = min(%ld, %ld) and the 429s reported "
                     "at most %ld in flight with limit %ld",
                     s->succeeded, opts->n, s->limit, s->max_current, s->limit);
        }
        else if (s->succeeded == expected || (s->succeeded > expected && !s->overlapped)) {
            /* more successes than the limit are no fault when they did not overlap */
            s->good = !too_many_in_flight;
            if (too_many_in_flight) {
                snprintf(base, sizeof(base), "%s", in_flight);
            }
            else {
                snprintf(base, sizeof(base),
                         "%ld succeeded, more than min(N, limit) = %ld, "
                         "not held against the relay",
                         s->succeeded, expected);
            }
        }
        else {
            s->good = false;
            snprintf(base, sizeof(base), "expected %ld successes (min(N, limit)) but got %ld%s%s",
                     expected, s->succeeded, too_many_in_flight ? "; " : "",
                     too_many_in_flight ? in_flight : "");
        }
    }
    snprintf(s->reason, sizeof(s->reason), "%s; %s", base,
             s->succeeded == 0 ? "no request succeeded, so there was no overlap to measure"
             : s->overlapped   ? "requests overlapped"
                               : "warning: requests did not all overlap; "
                                 "use --hold-ms or --stream to make them longer");
}

/* Print the totals, the limit, the timing and the verdict as text. */
static void print_summary(const summary_t *s, const options_t *opts)
{
    printf("\nsucceeded: %ld  limited (429): %ld  failed: %ld\n", s->succeeded, s->limited,
           s->failed);
    if (s->has_limit) {
        printf("concurrency limit: %ld", s->limit);
    }
    else {
        printf("concurrency limit: unknown");
    }
    if (s->has_current) {
        printf("  highest currentConcurrency: %ld\n", s->max_current);
    }
    else {
        printf("  highest currentConcurrency: unknown\n");
    }
    if (s->succeeded > 0) {
        printf("timing: every success had started by %.0f ms (first response byte",
               s->last_success_start);
        if (s->hold_counted) {
            printf(" less the %ld ms hold", opts->hold_ms);
        }
        printf("); the first success finished at %.0f ms\n", s->first_success_done);
    }
    printf("verdict: %s - %s\n", s->good ? "GOOD" : "BAD", s->reason);
}

/* Print everything as one JSON object. */
static void print_json(request_t **order, long ndone, const options_t *opts, const summary_t *s)
{
    json_object *root = json_object_new_object();
    json_object *results = json_object_new_array();

    json_object_object_add(root, "server", json_object_new_string(opts->server));
    json_object_object_add(root, "url", json_object_new_string(opts->url));
    json_object_object_add(root, "key", json_object_new_string(opts->masked));
    json_object_object_add(root, "stream", json_object_new_boolean(opts->stream));
    json_object_object_add(root, "holdMs",
                           opts->hold_ms >= 0 ? json_object_new_int64(opts->hold_ms) : NULL);
    json_object_object_add(root, "requests", json_object_new_int64(opts->n));
    json_object_object_add(root, "succeeded", json_object_new_int64(s->succeeded));
    json_object_object_add(root, "limited", json_object_new_int64(s->limited));
    json_object_object_add(root, "failed", json_object_new_int64(s->failed));
    json_object_object_add(root, "concurrencyLimit",
                           s->has_limit ? json_object_new_int64(s->limit) : NULL);
    json_object_object_add(root, "maxCurrentConcurrency",
                           s->has_current ? json_object_new_int64(s->max_current) : NULL);
    json_object_object_add(root, "overlapped", json_object_new_boolean(s->overlapped));
    json_object_object_add(root, "lastSuccessStartMs",
                           s->succeeded > 0 ? json_object_new_int64((int64_t)s->last_success_start)
                                            : NULL);
    json_object_object_add(root, "firstSuccessDoneMs",
                           s->succeeded > 0 ? json_object_new_int64((int64_t)s->first_success_done)
                                            : NULL);
    json_object_object_add(root, "verdict", json_object_new_string(s->good ? "good" : "bad"));
    json_object_object_add(root, "reason", json_object_new_string(s->reason));
    for (long i = 0; i < ndone; i++) {
        const request_t *rq = order[i];
        json_object *r = json_object_new_object();

        json_object_object_add(r, "index", json_object_new_int(rq->index));
        json_object_object_add(r, "status",
                               rq->status > 0 ? json_object_new_int64(rq->status) : NULL);
        json_object_object_add(r, "ms", json_object_new_int64(rq->ms));
        json_object_object_add(r, "outcome", json_object_new_string(outcome_name(rq->outcome)));
        json_object_object_add(r, "message",
                               rq->message != NULL ? json_object_new_string(rq->message) : NULL);
        if (rq->stream) {
            json_object_object_add(r, "events", json_object_new_int64(rq->events));
        }
        json_object_array_add(results, r);
    }
    json_object_object_add(root, "results", results);
    printf("%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY |
                                                            JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(root);
}

/* Parse the command line, run the test, report, and exit with the verdict. */
int main(int argc, char **argv)
{
    options_t opts;
    request_t *reqs;
    request_t **order;
    struct curl_slist *headers;
    summary_t summary;
    long ndone = 0;
    bool ran;

    memset(&opts, 0, sizeof(opts));
    memset(&summary, 0, sizeof(summary));
    parse_args(argc, argv, &opts);
    raise_file_limit(opts.n);
    if (opts.hold_ms >= opts.timeout_s * 1000L) {
        fprintf(stderr, PROG ": warning: --hold-ms %ld is not shorter than --timeout %ld s\n",
                opts.hold_ms, opts.timeout_s);
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, PROG ": curl_global_init failed\n");
        return EXIT_BAD;
    }
    reqs = calloc((size_t)opts.n, sizeof(*reqs));
    order = calloc((size_t)opts.n, sizeof(*order));
    headers = build_headers(&opts);
    if (reqs == NULL || order == NULL || headers == NULL) {
        fprintf(stderr, PROG ": out of memory\n");
        return EXIT_BAD;
    }
    for (long i = 0; i < opts.n; i++) {
        if (!setup_request(&reqs[i], (int)i + 1, &opts, headers)) {
            fprintf(stderr, PROG ": cannot set up request #%ld\n", i + 1);
            return EXIT_BAD;
        }
    }
    if (!opts.json) {
        printf("Testing %s against %s with %ld parallel requests", opts.masked, opts.url, opts.n);
        if (opts.stream || opts.hold_ms >= 0) {
            printf(" (%s%s", opts.stream ? "streaming" : "",
                   opts.stream && opts.hold_ms >= 0 ? ", " : "");
            if (opts.hold_ms >= 0) {
                printf("x-mock-hold-ms %ld", opts.hold_ms);
            }
            printf(")");
        }
        printf("\n\n");
        fflush(stdout);
    }
    ran = run_all(reqs, &opts, order, &ndone);
    if (ran && ndone != opts.n) {
        fprintf(stderr, PROG ": only %ld of %ld requests finished\n", ndone, opts.n);
        ran = false;
    }
    if (ran) {
        summarize(reqs, &opts, &summary);
        if (opts.json) {
            print_json(order, ndone, &opts, &summary);
        }
        else {
            print_summary(&summary, &opts);
        }
    }
    for (long i = 0; i < opts.n; i++) {
        curl_easy_cleanup(reqs[i].easy);
        free(reqs[i].body);
        free(reqs[i].message);
    }
    curl_slist_free_all(headers);
    curl_global_cleanup();
    free(reqs);
    free(order);
    free(opts.server);
    free(opts.url);
    return ran && summary.good ? EXIT_GOOD : EXIT_BAD;
}
