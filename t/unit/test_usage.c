/*
 * test_usage.c - unit tests for relay_usage.c, the streaming reader of the
 * token usage in Claude answers (event streams and plain JSON bodies).
 *
 * Links relay_usage.c alone:
 *   gcc -Wall -Wextra -Werror -O2 -I. t/unit/test_usage.c relay_usage.c -o /tmp/test_usage
 * and under the sanitizers:
 *   gcc -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -I. \
 *       t/unit/test_usage.c relay_usage.c -o /tmp/test_usage_san
 *
 * Every chunk is copied into a buffer of exactly its size, so a read past
 * the end of a chunk shows up under AddressSanitizer.
 *
 * Prints one line per failed check and finally "N passed, N failed";
 * exits non-zero when anything failed.
 */
#include "relay_usage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Record one integer comparison, showing both sides on failure. */
static void check_ll(long long got, long long want, const char *file, int line, const char *what)
{
    if (got == want) {
        passed++;
    }
    else {
        failed++;
        printf("FAIL %s:%d: %s: expected %lld, got %lld\n", file, line, what, want, got);
    }
}

#define CHECK(cond) check((cond) ? 1 : 0, __FILE__, __LINE__, #cond)
#define CHECK_STR(got, want) check_str((got), (want), __FILE__, __LINE__, #got)
#define CHECK_LL(got, want) check_ll((got), (want), __FILE__, __LINE__, #got)

/* The figures a parse ends with, for comparing runs. */
typedef struct {
    long long in, out, cc, cr;
    const char *model;
    int seen, complete, error, overflow;
} expect;

/* Whether u ends with exactly the figures in e. */
static int same(const relay_usage *u, const expect *e)
{
    return u->input_tokens == e->in && u->output_tokens == e->out &&
           u->cache_creation_input_tokens == e->cc && u->cache_read_input_tokens == e->cr &&
           strcmp(u->model, e->model) == 0 && u->seen_usage == e->seen &&
           u->complete == e->complete && u->error == e->error && u->overflow == e->overflow;
}

/* Show what a run ended with, after a failed comparison. */
static void show(const char *label, const relay_usage *u)
{
    printf("  %s: in=%lld out=%lld cc=%lld cr=%lld model=\"%s\" seen=%d complete=%d error=%d "
           "overflow=%d\n",
           label, u->input_tokens, u->output_tokens, u->cache_creation_input_tokens,
           u->cache_read_input_tokens, u->model, u->seen_usage, u->complete, u->error, u->overflow);
}

/* Feed one chunk through a heap copy of exactly its size. */
static void feed_exact(relay_usage *u, const char *p, size_t n)
{
    char *copy = malloc(n ? n : 1);

    if (copy == NULL) {
        abort();
    }
    memcpy(copy, p, n);
    relay_usage_feed(u, copy, n);
    free(copy);
}

/* Parse a whole body given as one chunk. */
static void parse_whole(relay_usage *u, relay_usage_mode mode, const char *p, size_t n)
{
    relay_usage_init(u, mode);
    feed_exact(u, p, n);
    relay_usage_finish(u);
}

/* Parse a body cut into two chunks at pos. */
static void parse_split(relay_usage *u, relay_usage_mode mode, const char *p, size_t n, size_t pos)
{
    relay_usage_init(u, mode);
    feed_exact(u, p, pos);
    feed_exact(u, p + pos, n - pos);
    relay_usage_finish(u);
}

/* Parse a body one byte at a time. */
static void parse_bytes(relay_usage *u, relay_usage_mode mode, const char *p, size_t n)
{
    size_t i;

    relay_usage_init(u, mode);
    for (i = 0; i < n; i++) {
        feed_exact(u, p + i, 1);
    }
    relay_usage_finish(u);
}

/* Number of split positions at which a parse does not end with e (the first is shown). */
static int split_mismatches(relay_usage_mode mode, const char *p, size_t n, const expect *e)
{
    static relay_usage u;
    size_t pos;
    int bad = 0;

    for (pos = 0; pos <= n; pos++) {
        parse_split(&u, mode, p, n, pos);
        if (!same(&u, e)) {
            if (bad++ == 0) {
                printf("  split at %zu differs\n", pos);
                show("got", &u);
            }
        }
    }
    return bad;
}

/* Check one body whole, split at every byte, and one byte at a time. */
static void check_all_ways(const char *label, relay_usage_mode mode, const char *p, size_t n,
                           const expect *e)
{
    static relay_usage u;
    int ok;

    parse_whole(&u, mode, p, n);
    ok = same(&u, e);
    check(ok, __FILE__, __LINE__, label);
    if (!ok) {
        show(label, &u);
    }
    parse_bytes(&u, mode, p, n);
    ok = same(&u, e);
    check(ok, __FILE__, __LINE__, label);
    if (!ok) {
        show(label, &u);
    }
    check(split_mismatches(mode, p, n, e) == 0, __FILE__, __LINE__, label);
}

/* A growable byte buffer for building test bodies. */
typedef struct {
    char *p;
    size_t len, cap;
} buf;

/* Append n bytes to b. */
static void buf_add(buf *b, const char *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n) {
            cap *= 2;
        }
        b->p = realloc(b->p, cap);
        if (b->p == NULL) {
            abort();
        }
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* Append a C string to b. */
static void buf_str(buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

/* A realistic streamed answer, lines ending in LF. */
static const char *const sse_stream =
    "event: message_start\n"
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\","
    "\"type\":\"message\",\"role\":\"assistant\",\"content\":[],"
    "\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,"
    "\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":3,"
    "\"cache_read_input_tokens\":7,\"cache_creation\":{\"ephemeral_5m_input_tokens\":3,"
    "\"ephemeral_1h_input_tokens\":0},\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n"
    "\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
    "\"text\":\"\"}}\n"
    "\n"
    "event: ping\n"
    "data: {\"type\": \"ping\"}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
    "\"text\":\"Hello\"}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
    "\"text\":\"! {\\\"usage\\\":{\\\"output_tokens\\\":999}} \"}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
    "\"text\":\"world\\n\"}}\n"
    "\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n"
    "\n"
    "event: message_delta\n"
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\","
    "\"stop_sequence\":null},\"usage\":{\"output_tokens\":10}}\n"
    "\n"
    "event: message_stop\n"
    "data: {\"type\":\"message_stop\"}\n"
    "\n";

/* The same answer with data: lacking its space, payloads over several lines, comments. */
static const char *const sse_stream_folded =
    ": a comment the upstream may send\n"
    "event:message_start\n"
    "data:{\"type\":\"message_start\",\n"
    "data:\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\n"
    "data:  \"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\n"
    "data:\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":3,\n"
    "data:\"cache_read_input_tokens\":7,\"output_tokens\":1}}}\n"
    "id: 1\n"
    "\n"
    ":\n"
    "event:content_block_start\n"
    "data:{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
    "\"text\":\"\"}}\n"
    "\n"
    "event:ping\n"
    "data:{\"type\": \"ping\"}\n"
    "\n"
    "event:content_block_delta\n"
    "data:{\"type\":\"content_block_delta\",\"index\":0,\n"
    "data:\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n"
    "\n"
    "event:content_block_delta\n"
    "data:{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
    "\"text\":\" there\"}}\n"
    "\n"
    "event:content_block_delta\n"
    "data:{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
    "\"text\":\" world\"}}\n"
    "\n"
    "event:content_block_stop\n"
    "data:{\"type\":\"content_block_stop\",\"index\":0}\n"
    "\n"
    "retry: 1000\n"
    "\n"
    "event:message_delta\n"
    "data:{\"type\":\"message_delta\",\n"
    "data:\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\n"
    "data:\"usage\":{\"output_tokens\" : 10 }\n"
    "data:}\n"
    "\n"
    "event:message_stop\n"
    "data:{\"type\":\"message_stop\"}\n"
    "\n";

static const expect sse_expect = {25, 10, 3, 7, "claude-sonnet-4-5-20250929", 1, 1, 0, 0};

/* Copy s with every LF replaced by eol (CRLF or CR). */
static char *with_eol(const char *s, const char *eol)
{
    buf b = {NULL, 0, 0};

    for (; *s; s++) {
        if (*s == '\n') {
            buf_str(&b, eol);
        }
        else {
            buf_add(&b, s, 1);
        }
    }
    buf_add(&b, "", 1);
    return b.p;
}

/* The full stream in every cutting and every line ending. */
static void test_sse_stream(void)
{
    char *crlf = with_eol(sse_stream, "\r\n");
    char *cr = with_eol(sse_stream, "\r");
    char *folded_crlf = with_eol(sse_stream_folded, "\r\n");
    buf bom = {NULL, 0, 0};

    check_all_ways("SSE stream, LF", RELAY_USAGE_SSE, sse_stream, strlen(sse_stream), &sse_expect);
    check_all_ways("SSE stream, CRLF", RELAY_USAGE_SSE, crlf, strlen(crlf), &sse_expect);
    check_all_ways("SSE stream, CR", RELAY_USAGE_SSE, cr, strlen(cr), &sse_expect);
    check_all_ways("SSE stream, folded data", RELAY_USAGE_SSE, sse_stream_folded,
                   strlen(sse_stream_folded), &sse_expect);
    check_all_ways("SSE stream, folded data, CRLF", RELAY_USAGE_SSE, folded_crlf,
                   strlen(folded_crlf), &sse_expect);

    buf_str(&bom, "\xef\xbb\xbf");
    buf_str(&bom, sse_stream);
    check_all_ways("SSE stream after a BOM", RELAY_USAGE_SSE, bom.p, bom.len, &sse_expect);

    free(crlf);
    free(cr);
    free(folded_crlf);
    free(bom.p);
}

/* Parse a short SSE body whole and check it also comes out the same one byte at a time. */
static void parse_sse(relay_usage *u, const char *body)
{
    static relay_usage v;

    parse_bytes(&v, RELAY_USAGE_SSE, body, strlen(body));
    parse_whole(u, RELAY_USAGE_SSE, body, strlen(body));
    CHECK(memcmp(u, &v, offsetof(relay_usage, mode)) == 0);
}

#define START_25                                                                                   \
    "event: message_start\n"                                                                       \
    "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\","               \
    "\"content\":[],\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":3,"             \
    "\"cache_read_input_tokens\":7,\"output_tokens\":1}}}\n\n"

/* message_delta figures are running totals: the last one stands. */
static void test_sse_cumulative(void)
{
    static relay_usage u;

    parse_sse(&u, START_25
              "event: message_delta\n"
              "data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":5}}\n\n"
              "event: message_delta\n"
              "data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":12}}\n\n"
              "event: message_delta\n"
              "data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":30}}\n\n"
              "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    CHECK_LL(u.output_tokens, 30);
    CHECK_LL(u.input_tokens, 25);
    CHECK_LL(u.cache_creation_input_tokens, 3);
    CHECK_LL(u.cache_read_input_tokens, 7);
    CHECK_STR(u.model, "claude-haiku-4-5");
    CHECK(u.complete == 1 && u.error == 0 && u.overflow == 0 && u.seen_usage == 1);

    /* newer API versions repeat the input figures in message_delta */
    parse_sse(&u, START_25
              "event: message_delta\n"
              "data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"input_tokens\":40,"
              "\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":11,"
              "\"output_tokens\":12,\"server_tool_use\":{\"web_search_requests\":1}}}\n\n");
    CHECK_LL(u.input_tokens, 40);
    CHECK_LL(u.cache_creation_input_tokens, 0);
    CHECK_LL(u.cache_read_input_tokens, 11);
    CHECK_LL(u.output_tokens, 12);
    CHECK(u.complete == 0);

    /* a null or otherwise non-numeric figure leaves the earlier value alone */
    parse_sse(&u, START_25 "event: message_delta\n"
                           "data: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":null,"
                           "\"cache_read_input_tokens\":\"9\",\"cache_creation_input_tokens\":-4,"
                           "\"output_tokens\":1.5}}\n\n"
                           "event: message_delta\n"
                           "data: {\"type\":\"message_delta\","
                           "\"usage\":{\"output_tokens\":99999999999999999999}}\n\n");
    CHECK_LL(u.input_tokens, 25);
    CHECK_LL(u.cache_read_input_tokens, 7);
    CHECK_LL(u.cache_creation_input_tokens, 3);
    CHECK_LL(u.output_tokens, RELAY_USAGE_MAX_COUNT);
}

/* An error event ends the count; nothing after it is taken. */
static void test_sse_error(void)
{
    static relay_usage u;

    parse_sse(&u, START_25
              "event: message_delta\n"
              "data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":4}}\n\n"
              "event: error\n"
              "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
              "\"message\":\"Overloaded\"}}\n\n"
              "event: message_delta\n"
              "data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":50}}\n\n"
              "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    CHECK(u.error == 1);
    CHECK(u.complete == 0);
    CHECK_LL(u.output_tokens, 4);
    CHECK_LL(u.input_tokens, 25);

    /* an error before anything else: no usage at all */
    parse_sse(&u, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\","
                  "\"message\":\"x\"}}\n\n");
    CHECK(u.error == 1 && u.seen_usage == 0 && u.input_tokens == 0 && u.model[0] == '\0');

    /* the payload's type counts even without an event line */
    parse_sse(&u,
              START_25 "data: {\"type\":\"error\",\"error\":{}}\n\n"
                       "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":8}}\n\n");
    CHECK(u.error == 1);
    CHECK_LL(u.output_tokens, 1);
}

/* A stream cut short keeps what fully arrived. */
static void test_sse_truncated(void)
{
    static relay_usage u;
    static const char delta[] =
        "event: message_delta\n"
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},"
        "\"usage\":{\"output_tokens\":10}}\n";
    buf b = {NULL, 0, 0};
    size_t cut;
    int bad = 0;

    buf_str(&b, START_25 "event: ping\ndata: {\"type\": \"ping\"}\n\n");
    buf_str(&b, delta);

    /* cut anywhere inside the message_delta event, up to its data line's end */
    for (cut = b.len - strlen(delta); cut < b.len - 1; cut++) {
        parse_whole(&u, RELAY_USAGE_SSE, b.p, cut);
        if (!(u.input_tokens == 25 && u.cache_creation_input_tokens == 3 &&
              u.cache_read_input_tokens == 7 && u.output_tokens == 1 && u.complete == 0 &&
              u.seen_usage == 1 && u.error == 0 && strcmp(u.model, "claude-haiku-4-5") == 0)) {
            if (bad++ == 0) {
                printf("  cut at %zu differs\n", cut);
                show("got", &u);
            }
        }
    }
    CHECK(bad == 0);

    /* the data line arrived whole, only the blank line is missing: it counts */
    parse_whole(&u, RELAY_USAGE_SSE, b.p, b.len);
    CHECK_LL(u.output_tokens, 10);
    CHECK(u.complete == 0);

    /* a message_stop whose data line never arrived does not complete the answer */
    buf_str(&b, "\nevent: message_stop\n");
    parse_whole(&u, RELAY_USAGE_SSE, b.p, b.len);
    CHECK(u.complete == 0);
    CHECK_LL(u.output_tokens, 10);
    free(b.p);

    /* nothing at all */
    parse_whole(&u, RELAY_USAGE_SSE, "", 0);
    CHECK(u.seen_usage == 0 && u.complete == 0 && u.model[0] == '\0');
}

/* A 2 MiB text delta passes without being kept and without disturbing the count. */
static void test_sse_huge_delta(void)
{
    static relay_usage u;
    static const expect e = {25, 10, 3, 7, "claude-haiku-4-5", 1, 1, 0, 0};
    buf b = {NULL, 0, 0};
    size_t off;
    unsigned seed = 7;

    buf_str(&b, START_25 "event: content_block_delta\n"
                         "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
                         "{\"type\":\"text_delta\",\"text\":\"");
    while (b.len <= 2 * 1024 * 1024) {
        buf_str(&b, "lorem {\\\"usage\\\": {\\\"output_tokens\\\": 777}} ipsum dolor sit\\n ");
    }
    buf_str(&b, "\"}}\n\n"
                "event: message_delta\n"
                "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":10}}\n\n"
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    CHECK(b.len > 2 * 1024 * 1024);

    parse_whole(&u, RELAY_USAGE_SSE, b.p, b.len);
    CHECK(same(&u, &e));

    /* the same in uneven chunks of up to 8 KiB */
    relay_usage_init(&u, RELAY_USAGE_SSE);
    for (off = 0; off < b.len;) {
        size_t n;
        seed = seed * 1103515245u + 12345u;
        n = 1 + (seed >> 8) % 8192;
        if (n > b.len - off) {
            n = b.len - off;
        }
        feed_exact(&u, b.p + off, n);
        off += n;
    }
    relay_usage_finish(&u);
    CHECK(same(&u, &e));
    free(b.p);
}

/* A message_start bigger than the buffer is skipped and flagged. */
static void test_sse_overflow(void)
{
    static relay_usage u;
    buf b = {NULL, 0, 0};
    size_t i;

    buf_str(&b, "event: message_start\n"
                "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-opus-4-1\","
                "\"content\":[{\"type\":\"text\",\"text\":\"");
    for (i = 0; i < 20 * 1024; i++) {
        buf_add(&b, "x", 1);
    }
    buf_str(&b, "\"}],\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n"
                "event: message_delta\n"
                "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":10}}\n\n"
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    parse_whole(&u, RELAY_USAGE_SSE, b.p, b.len);
    CHECK(u.overflow == 1);
    CHECK_LL(u.input_tokens, 0);
    CHECK_LL(u.output_tokens, 10);
    CHECK(u.complete == 1);
    CHECK(u.model[0] == '\0');
    parse_bytes(&u, RELAY_USAGE_SSE, b.p, b.len);
    CHECK(u.overflow == 1 && u.output_tokens == 10 && u.complete == 1);
    free(b.p);

    /* an unnamed event too big to classify is flagged as well */
    b.p = NULL;
    b.len = b.cap = 0;
    buf_str(&b, "data: {\"type\":\"message_start\",\"pad\":\"");
    for (i = 0; i < RELAY_USAGE_DATA_MAX; i++) {
        buf_add(&b, "y", 1);
    }
    buf_str(&b, "\"}\n\n");
    parse_whole(&u, RELAY_USAGE_SSE, b.p, b.len);
    CHECK(u.overflow == 1 && u.seen_usage == 0);
    free(b.p);

    /* a huge named ping is simply ignored */
    b.p = NULL;
    b.len = b.cap = 0;
    buf_str(&b, "event: ping\ndata: \"");
    for (i = 0; i < 3 * RELAY_USAGE_DATA_MAX; i++) {
        buf_add(&b, "z", 1);
    }
    buf_str(&b, "\"\n\n" START_25);
    parse_whole(&u, RELAY_USAGE_SSE, b.p, b.len);
    CHECK(u.overflow == 0 && u.input_tokens == 25);
    free(b.p);
}

/* Odd but legal streams. */
static void test_sse_odd(void)
{
    static relay_usage u;

    /* no event lines at all: the payload type decides */
    parse_sse(&u, "data: {\"type\":\"message_start\",\"message\":{\"model\":\"m\\u002d1\","
                  "\"usage\":{\"input_tokens\":3}}}\n\n"
                  "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":4}}\n\n"
                  "data: {\"type\":\"message_stop\"}\n\n");
    CHECK(u.input_tokens == 3 && u.output_tokens == 4 && u.complete == 1);
    CHECK_STR(u.model, "m-1");

    /* the payload type wins over a contradicting event line */
    parse_sse(&u, "event: message_delta\n"
                  "data: {\"type\":\"message_stop\",\"usage\":{\"output_tokens\":4}}\n\n");
    CHECK(u.complete == 1 && u.output_tokens == 0);

    /* no payload type: the event line decides */
    parse_sse(&u, "event: message_delta\ndata: {\"usage\":{\"output_tokens\":6}}\n\n"
                  "event: message_stop\ndata: {}\n\n");
    CHECK(u.complete == 1 && u.output_tokens == 6);

    /* data before the event line, field names that only look alike */
    parse_sse(&u, "data: {\"usage\":{\"output_tokens\":6}}\nevent: message_delta\n\n"
                  "Data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n"
                  "data : {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":8}}\n\n"
                  "datadatadata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n");
    CHECK_LL(u.output_tokens, 6);

    /* malformed payloads are ignored */
    parse_sse(&u, START_25 "event: message_delta\ndata: {\"usage\":{\"output_tokens\":6}\n\n"
                           "event: message_delta\ndata: {\"usage\":{\"output_tokens\":6}}}\n\n"
                           "event: message_delta\ndata: [1,2\n\n"
                           "event: message_delta\ndata: \n\n"
                           "event: message_delta\n\n");
    CHECK_LL(u.output_tokens, 1);
    CHECK(u.complete == 0 && u.error == 0);

    /* an empty event line, two spaces after the colon, the model longer than the buffer */
    {
        buf b = {NULL, 0, 0};
        size_t i;
        buf_str(&b, "event:\ndata:  {\"type\":\"message_start\",\"message\":{\"model\":\"");
        for (i = 0; i < 300; i++) {
            buf_add(&b, &"abcdefghij"[i % 10], 1);
        }
        buf_str(&b, "\\u00e9\\n\"}}\n\n");
        parse_whole(&u, RELAY_USAGE_SSE, b.p, b.len);
        CHECK(strlen(u.model) == RELAY_USAGE_MODEL_MAX - 1);
        CHECK(strncmp(u.model, "abcdefghijabcdefghij", 20) == 0);
        free(b.p);
    }

    /* a non-ASCII or control byte in the model is replaced */
    parse_sse(&u, "data: {\"type\":\"message_start\","
                  "\"message\":{\"model\":\"a\\u00e9\\tb\xc3\xa9\"}}\n\n");
    CHECK_STR(u.model, "a??b??");
}

/* Garbage never crashes or leaves impossible figures. */
static void test_garbage(void)
{
    static relay_usage u;
    static const char *const pieces[] = {
        "event: message_start\n",
        "event: message_delta\n",
        "event: error\n",
        "data: ",
        "data:",
        "\n",
        "\r\n",
        "\r",
        "\n\n",
        ": x\n",
        "{\"type\":\"message_start\",",
        "\"message\":{",
        "\"usage\":{",
        "\"input_tokens\":",
        "\"output_tokens\":",
        "12345",
        "}",
        "}}",
        "{",
        "[",
        "]",
        "\"",
        "\\",
        "\\u00",
        "\"model\":\"",
        ",",
        ":",
        "null",
        "-",
        "99999999999999999999",
        "\xef\xbb\xbf",
        "\0",
        "\xff",
    };
    size_t n = 1024 * 1024, off, i;
    unsigned char *junk = malloc(n);
    unsigned long long x = 0x9e3779b97f4a7c15ULL;
    int mode, bad = 0;

    if (junk == NULL) {
        abort();
    }
    for (mode = 0; mode < 2; mode++) {
        int structured;
        for (structured = 0; structured < 2; structured++) {
            /* random bytes, or random pieces of real syntax that reach deeper states */
            for (i = 0; i < n;) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (structured) {
                    const char *p = pieces[x % (sizeof(pieces) / sizeof(pieces[0]))];
                    size_t len = *p ? strlen(p) : 1;
                    if (len > n - i) {
                        len = n - i;
                    }
                    memcpy(junk + i, p, len);
                    i += len;
                }
                else {
                    junk[i++] = (unsigned char)(x >> 24);
                }
            }
            relay_usage_init(&u, mode ? RELAY_USAGE_JSON : RELAY_USAGE_SSE);
            for (off = 0; off < n;) {
                size_t len;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                len = 1 + (size_t)(x % 5000);
                if (len > n - off) {
                    len = n - off;
                }
                feed_exact(&u, (const char *)junk + off, len);
                off += len;
            }
            relay_usage_finish(&u);
            if (u.input_tokens < 0 || u.input_tokens > RELAY_USAGE_MAX_COUNT ||
                u.output_tokens < 0 || u.output_tokens > RELAY_USAGE_MAX_COUNT ||
                u.cache_creation_input_tokens < 0 ||
                u.cache_creation_input_tokens > RELAY_USAGE_MAX_COUNT ||
                u.cache_read_input_tokens < 0 ||
                u.cache_read_input_tokens > RELAY_USAGE_MAX_COUNT ||
                memchr(u.model, '\0', sizeof(u.model)) == NULL) {
                bad++;
            }
        }
    }
    CHECK(bad == 0);
    free(junk);
}

/* A plain answer. */
static const char *const json_answer =
    "{\"id\":\"msg_013Zva2CMHLNnXjNJJKqJ2EF\",\"type\":\"message\",\"role\":\"assistant\","
    "\"model\":\"claude-opus-4-1-20250805\",\"content\":[{\"type\":\"text\","
    "\"text\":\"Hi! My name is Claude.\"}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,"
    "\"usage\":{\"input_tokens\":2095,\"cache_creation_input_tokens\":0,"
    "\"cache_read_input_tokens\":1500,\"cache_creation\":{\"ephemeral_5m_input_tokens\":0,"
    "\"ephemeral_1h_input_tokens\":0},\"output_tokens\":503,\"service_tier\":\"standard\"}}";

/* Usage first, decoys in nested objects and in text, escapes, odd spacing. */
static const char *const json_tricky =
    " \r\n\t{ \"usage\" :\n{ \"input_tokens\" :\t 12 , \"output_tokens\"\r\n:\n34,"
    "\"cache_creation_input_tokens\":  5 ,\"cache_read_input_tokens\" : 6 ,"
    "\"server_tool_use\":{\"input_tokens\":1111,\"web_search_requests\":2},"
    "\"extra\":[{\"output_tokens\":2222}]},"
    "\"content\":[{\"type\":\"text\",\"text\":\"a \\\"usage\\\": {\\\"input_tokens\\\": 77} }}} "
    "]] { [ \\\\\"},{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\","
    "\"input\":{\"usage\":{\"input_tokens\":888,\"output_tokens\":999},\"model\":\"nested\","
    "\"type\":\"error\"}}],"
    "\"model\" : \"claude-\\\"x\\\\y\\/z\\u0041\",\"type\":\"message\","
    "\"stop_reason\":\"end_turn\",\"note\":\"\\\\\",\"n\":[1,2,{\"usage\":3}],\"usage2\":{}}"
    "  trailing garbage {\"usage\":{\"input_tokens\":5}}";

/* Plain JSON answers. */
static void test_json(void)
{
    static relay_usage u;
    static const expect e1 = {2095, 503, 0, 1500, "claude-opus-4-1-20250805", 1, 1, 0, 0};
    static const expect e2 = {12, 34, 5, 6, "claude-\"x\\y/zA", 1, 1, 0, 0};
    static const expect e3 = {0, 0, 0, 0, "", 0, 1, 1, 0};
    static const char *const err_body =
        "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}";
    size_t cut;
    int bad = 0;

    check_all_ways("JSON answer", RELAY_USAGE_JSON, json_answer, strlen(json_answer), &e1);
    check_all_ways("JSON answer, tricky", RELAY_USAGE_JSON, json_tricky, strlen(json_tricky), &e2);
    check_all_ways("JSON error body", RELAY_USAGE_JSON, err_body, strlen(err_body), &e3);

    /* a body cut short: never complete, never a figure that was not there */
    for (cut = 0; cut < strlen(json_answer); cut++) {
        parse_whole(&u, RELAY_USAGE_JSON, json_answer, cut);
        if (u.complete || (u.input_tokens != 0 && u.input_tokens != 2095) ||
            (u.output_tokens != 0 && u.output_tokens != 503) ||
            (u.cache_read_input_tokens != 0 && u.cache_read_input_tokens != 1500)) {
            bad++;
        }
    }
    CHECK(bad == 0);
    /* cut inside "503": the partial number is dropped */
    parse_whole(&u, RELAY_USAGE_JSON, json_answer,
                (size_t)(strstr(json_answer, "503") - json_answer) + 2);
    CHECK_LL(u.output_tokens, 0);
    CHECK_LL(u.input_tokens, 2095);

    /* numbers that are not plain non-negative integers are ignored, huge ones clamped */
    parse_whole(&u, RELAY_USAGE_JSON,
                "{\"usage\":{\"input_tokens\":-3,\"output_tokens\":1.0,"
                "\"cache_read_input_tokens\":1e3,\"cache_creation_input_tokens\":null}}",
                strlen("{\"usage\":{\"input_tokens\":-3,\"output_tokens\":1.0,"
                       "\"cache_read_input_tokens\":1e3,\"cache_creation_input_tokens\":null}}"));
    CHECK(u.seen_usage == 0 && u.input_tokens == 0 && u.output_tokens == 0 && u.complete == 1);
    parse_whole(&u, RELAY_USAGE_JSON, "{\"usage\":{\"input_tokens\":12345678901234567890123}}",
                strlen("{\"usage\":{\"input_tokens\":12345678901234567890123}}"));
    CHECK_LL(u.input_tokens, RELAY_USAGE_MAX_COUNT);
    parse_whole(&u, RELAY_USAGE_JSON, "{\"usage\":{\"input_tokens\":1000000000000000}}",
                strlen("{\"usage\":{\"input_tokens\":1000000000000000}}"));
    CHECK_LL(u.input_tokens, 1000000000000000LL);

    /* a top-level array, or an HTML error page from a proxy, is not an answer */
    parse_whole(&u, RELAY_USAGE_JSON, "[{\"usage\":{\"input_tokens\":5}}]",
                strlen("[{\"usage\":{\"input_tokens\":5}}]"));
    CHECK(u.seen_usage == 0 && u.complete == 0);
    parse_whole(&u, RELAY_USAGE_JSON, "<html><style>p{color:red}</style>{\"usage\":{}}",
                strlen("<html><style>p{color:red}</style>{\"usage\":{}}"));
    CHECK(u.seen_usage == 0 && u.complete == 0 && u.error == 0);
}

/* A 1 MiB content string is read without being kept. */
static void test_json_large(void)
{
    static relay_usage u;
    static const expect e = {9, 262144, 1, 2, "claude-sonnet-4-5", 1, 1, 0, 0};
    buf b = {NULL, 0, 0};
    size_t off;

    buf_str(&b, "{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":"
                "[{\"type\":\"text\",\"text\":\"");
    while (b.len <= 1024 * 1024) {
        buf_str(&b, "}{ \\\"usage\\\":{} \\\\ \\u00e9 \\n..");
    }
    buf_str(&b, "\"}],\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":9,"
                "\"cache_creation_input_tokens\":1,\"cache_read_input_tokens\":2,"
                "\"output_tokens\":262144}}\n");
    CHECK(b.len > 1024 * 1024);
    parse_whole(&u, RELAY_USAGE_JSON, b.p, b.len);
    CHECK(same(&u, &e));
    relay_usage_init(&u, RELAY_USAGE_JSON);
    for (off = 0; off < b.len; off += 4093) {
        feed_exact(&u, b.p + off, b.len - off < 4093 ? b.len - off : 4093);
    }
    relay_usage_finish(&u);
    CHECK(same(&u, &e));
    free(b.p);
}

/* Calls the filter might make at the edges. */
static void test_api_edges(void)
{
    static relay_usage u;

    relay_usage_init(&u, RELAY_USAGE_SSE);
    relay_usage_feed(&u, NULL, 0);
    relay_usage_feed(&u, "", 0);
    relay_usage_finish(&u);
    relay_usage_finish(&u);
    CHECK(u.seen_usage == 0 && u.complete == 0 && u.model[0] == '\0');

    /* bytes after finish are ignored */
    relay_usage_init(&u, RELAY_USAGE_SSE);
    relay_usage_finish(&u);
    relay_usage_feed(&u, START_25, strlen(START_25));
    CHECK(u.seen_usage == 0);

    /* after message_stop nothing changes */
    parse_sse(&u, START_25 "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
                           "event: error\ndata: {\"type\":\"error\"}\n\n" START_25);
    CHECK(u.complete == 1 && u.error == 0 && u.input_tokens == 25);

    /* init resets a used struct */
    relay_usage_init(&u, RELAY_USAGE_JSON);
    CHECK(u.seen_usage == 0 && u.complete == 0 && u.error == 0 && u.input_tokens == 0 &&
          u.model[0] == '\0');
}

/* Run every test group and print the totals. */
int main(void)
{
    test_sse_stream();
    test_sse_cumulative();
    test_sse_error();
    test_sse_truncated();
    test_sse_huge_delta();
    test_sse_overflow();
    test_sse_odd();
    test_garbage();
    test_json();
    test_json_large();
    test_api_edges();

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
