/*
 * relay_usage.c - streaming reader of the token usage in a Claude answer
 * (see relay_usage.h).
 *
 * Both readers are byte-level state machines whose whole state is in the
 * struct, so a chunk boundary can fall anywhere without changing the result.
 * The SSE reader keeps only the data of the few events that carry usage, up
 * to RELAY_USAGE_DATA_MAX, and parses it with a small bounded JSON helper;
 * the JSON reader never keeps the body and tracks nesting instead.
 */
#include "relay_usage.h"

#include <string.h>

/* The four counts, in the order of the fields they fill. */
static const char *const count_names[] = {"input_tokens", "output_tokens",
                                          "cache_creation_input_tokens", "cache_read_input_tokens"};
#define COUNT_KEYS 4

/* The field for count_names[i]. */
static long long *count_slot(relay_usage *u, int i)
{
    switch (i) {
    case 0:
        return &u->input_tokens;
    case 1:
        return &u->output_tokens;
    case 2:
        return &u->cache_creation_input_tokens;
    default:
        return &u->cache_read_input_tokens;
    }
}

/* Add one decimal digit to a count, sticking at RELAY_USAGE_MAX_COUNT. */
static long long count_digit(long long n, int digit)
{
    /* n <= 10^15 here, so n * 10 + 9 cannot overflow a long long */
    n = n * 10 + digit;
    return n > RELAY_USAGE_MAX_COUNT ? RELAY_USAGE_MAX_COUNT : n;
}

/* Append one byte to the model text being built, keeping it printable ASCII. */
static void model_put(char *out, size_t *n, unsigned char c)
{
    /* the name ends up in logs and Redis fields: no control or raw 8-bit bytes */
    if (*n + 1 >= RELAY_USAGE_MODEL_MAX) {
        return;
    }
    out[(*n)++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    out[*n] = '\0';
}

/* The byte a one-character JSON escape stands for. */
static unsigned char json_unescape(unsigned char c)
{
    switch (c) {
    case 'b':
        return '\b';
    case 'f':
        return '\f';
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    default:
        return c; /* '"', '\\', '/' and anything malformed stand for themselves */
    }
}

/* Value of a hex digit, or -1. */
static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Bounded JSON helper for one buffered SSE data payload.                    */
/* ------------------------------------------------------------------------ */

/* Nesting allowed in a payload; deeper is treated as malformed. */
#define JS_MAX_DEPTH 64

/* Skip JSON whitespace. */
static const char *js_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) {
        p++;
    }
    return p;
}

/* Whether c may appear in a number or a true/false/null literal. */
static int js_bare_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' ||
           c == '+' || c == '.';
}

/* Skip the string starting at p (a '"'); NULL when it does not close before end. */
static const char *js_skip_string(const char *p, const char *end)
{
    p++;
    while (p < end) {
        if (*p == '\\') {
            if (end - p < 2) {
                return NULL;
            }
            p += 2;
        }
        else if (*p == '"') {
            return p + 1;
        }
        else {
            p++;
        }
    }
    return NULL;
}

/* Skip the value starting at p; NULL when it is malformed or runs past end. */
static const char *js_skip_value(const char *p, const char *end, int depth)
{
    const char *q;

    if (p >= end || depth > JS_MAX_DEPTH) {
        return NULL;
    }
    if (*p == '"') {
        return js_skip_string(p, end);
    }
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        int obj = *p == '{';

        p = js_ws(p + 1, end);
        if (p < end && *p == close) {
            return p + 1;
        }
        for (;;) {
            if (obj) {
                if (p >= end || *p != '"' || (p = js_skip_string(p, end)) == NULL) {
                    return NULL;
                }
                p = js_ws(p, end);
                if (p >= end || *p != ':') {
                    return NULL;
                }
                p = js_ws(p + 1, end);
            }
            if ((p = js_skip_value(p, end, depth + 1)) == NULL) {
                return NULL;
            }
            p = js_ws(p, end);
            if (p >= end) {
                return NULL;
            }
            if (*p == close) {
                return p + 1;
            }
            if (*p != ',') {
                return NULL;
            }
            p = js_ws(p + 1, end);
        }
    }
    for (q = p; q < end && js_bare_char(*q); q++) {
    }
    return q > p ? q : NULL;
}

/*
 * The value of key in the object starting at obj (a '{'), or NULL. Only for
 * text js_skip_value accepted whole, which bounds every step below.
 */
static const char *js_find(const char *obj, const char *end, const char *key)
{
    size_t keylen = strlen(key);
    const char *p = js_ws(obj + 1, end);

    while (p < end && *p == '"') {
        const char *k = p + 1;
        const char *q = js_skip_string(p, end);
        int match;

        if (q == NULL) {
            return NULL;
        }
        /* raw comparison: a key spelt with escapes is not one we look for */
        match = (size_t)(q - 1 - k) == keylen && memcmp(k, key, keylen) == 0;
        p = js_ws(q, end);
        if (p >= end || *p != ':') {
            return NULL;
        }
        p = js_ws(p + 1, end);
        if (p >= end) {
            return NULL;
        }
        if (match) {
            return p;
        }
        if ((p = js_skip_value(p, end, 0)) == NULL) {
            return NULL;
        }
        p = js_ws(p, end);
        if (p >= end || *p != ',') {
            return NULL;
        }
        p = js_ws(p + 1, end);
    }
    return NULL;
}

/* Read a plain non-negative integer value at p; 0 when it is anything else. */
static int js_count(const char *p, const char *end, long long *out)
{
    long long n = 0;
    const char *q;

    for (q = p; q < end && js_bare_char(*q); q++) {
        if (*q < '0' || *q > '9') {
            return 0; /* negative, fraction, exponent, literal */
        }
        n = count_digit(n, *q - '0');
    }
    if (q == p) {
        return 0;
    }
    *out = n;
    return 1;
}

/* Copy the JSON string at p (a '"') into the model field, decoding escapes. */
static void js_copy_model(relay_usage *u, const char *p, const char *end)
{
    size_t n = 0;

    u->model[0] = '\0';
    for (p++; p < end && *p != '"'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\\' && end - p >= 2) {
            p++;
            c = (unsigned char)*p;
            if (c == 'u') {
                unsigned v = 0;
                int i;
                for (i = 0; i < 4 && p + 1 < end && hex_value((unsigned char)p[1]) >= 0; i++) {
                    p++;
                    v = v * 16 + (unsigned)hex_value((unsigned char)*p);
                }
                c = v < 0x80 ? (unsigned char)v : '?';
            }
            else {
                c = json_unescape(c);
            }
        }
        model_put(u->model, &n, c);
    }
}

/* Take the model and usage figures out of one parsed SSE payload. */
static void js_take_usage(relay_usage *u, const char *root, const char *end)
{
    const char *msg = js_find(root, end, "message");
    const char *usage = NULL, *model = NULL;
    int i;

    /* message_start nests them in "message"; message_delta has them at the top */
    if (msg != NULL && *msg == '{') {
        usage = js_find(msg, end, "usage");
        model = js_find(msg, end, "model");
    }
    if (usage == NULL || *usage != '{') {
        usage = js_find(root, end, "usage");
    }
    if (model == NULL) {
        model = js_find(root, end, "model");
    }
    if (model != NULL && *model == '"') {
        js_copy_model(u, model, end);
    }
    if (usage == NULL || *usage != '{') {
        return;
    }
    for (i = 0; i < COUNT_KEYS; i++) {
        const char *v = js_find(usage, end, count_names[i]);
        long long n;
        if (v != NULL && js_count(v, end, &n)) {
            *count_slot(u, i) = n;
            u->seen_usage = 1;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* text/event-stream reader.                                                 */
/* ------------------------------------------------------------------------ */

enum { SSE_LINE_START, SSE_FIELD, SSE_VALUE_START, SSE_VALUE, SSE_SKIP_LINE };
enum { SSE_F_OTHER, SSE_F_EVENT, SSE_F_DATA };
enum { EV_NONE, EV_START, EV_DELTA, EV_STOP, EV_ERROR, EV_OTHER };
enum { DATA_KEPT, DATA_SKIPPED, DATA_OVERFLOW };

/* Classify an event name or a payload "type". */
static int sse_kind(const char *s, size_t n)
{
    /* tolerate trailing blanks a hand-written or re-encoded stream may carry */
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) {
        n--;
    }
    if (n == 0) {
        return EV_NONE;
    }
    if (n == 13 && memcmp(s, "message_start", 13) == 0) {
        return EV_START;
    }
    if (n == 13 && memcmp(s, "message_delta", 13) == 0) {
        return EV_DELTA;
    }
    if (n == 12 && memcmp(s, "message_stop", 12) == 0) {
        return EV_STOP;
    }
    if (n == 5 && memcmp(s, "error", 5) == 0) {
        return EV_ERROR;
    }
    return EV_OTHER;
}

/* Forget the event being gathered. */
static void sse_reset_event(struct relay_usage_sse *s)
{
    s->event_seen = 0;
    s->event_len = 0;
    s->event_kind = EV_NONE;
    s->data_lines = 0;
    s->data_state = DATA_KEPT;
    s->data_len = 0;
}

/* Append to the kept data of the current event, giving up past the cap. */
static void sse_data_put(struct relay_usage_sse *s, const char *p, size_t n)
{
    if (s->data_state != DATA_KEPT) {
        return;
    }
    if (n > sizeof(s->data) - s->data_len) {
        s->data_state = DATA_OVERFLOW;
        return;
    }
    memcpy(s->data + s->data_len, p, n);
    s->data_len += n;
}

/* Act on a complete event. */
static void sse_dispatch(relay_usage *u)
{
    struct relay_usage_sse *s = &u->sse;
    int kind = s->event_seen ? s->event_kind : EV_NONE;
    const char *root = NULL, *end = s->data + s->data_len;

    if (!s->event_seen && s->data_lines == 0) {
        return; /* a blank line between events */
    }
    if (s->data_lines > 0 && s->data_state == DATA_KEPT) {
        const char *p = js_ws(s->data, end);
        const char *q = js_skip_value(p, end, 0);

        if (q != NULL && js_ws(q, end) == end && *p == '{') {
            const char *t = js_find(p, end, "type");
            root = p;
            /* the payload's own type wins over the event line */
            if (t != NULL && *t == '"') {
                const char *te = js_skip_string(t, end);
                int tk = te ? sse_kind(t + 1, (size_t)(te - 1 - (t + 1))) : EV_NONE;
                if (tk != EV_NONE) {
                    kind = tk;
                }
            }
        }
    }
    switch (kind) {
    case EV_ERROR:
        u->error = 1;
        u->stopped = 1;
        break;
    case EV_STOP:
        u->complete = 1;
        u->stopped = 1;
        break;
    case EV_START:
    case EV_DELTA:
        if (root != NULL) {
            js_take_usage(u, root, end);
        }
        else if (s->data_state == DATA_OVERFLOW) {
            u->overflow = 1;
        }
        break;
    case EV_NONE:
        /* unnamed and too big to look inside: it may have held usage */
        if (s->data_state == DATA_OVERFLOW) {
            u->overflow = 1;
        }
        break;
    default:
        break;
    }
    sse_reset_event(s);
}

/* A field name has ended (at its colon or at the end of its line). */
static void sse_field_begin(struct relay_usage_sse *s)
{
    if (s->name_len == 5 && memcmp(s->name, "event", 5) == 0) {
        s->field = SSE_F_EVENT;
        s->event_seen = 1;
        s->event_len = 0;
    }
    else if (s->name_len == 4 && memcmp(s->name, "data", 4) == 0) {
        s->field = SSE_F_DATA;
        /* only events that can carry usage are kept: text deltas may be huge */
        if (s->event_seen && s->event_kind == EV_OTHER && s->data_state == DATA_KEPT) {
            s->data_state = DATA_SKIPPED;
        }
        if (s->data_lines++ > 0) {
            sse_data_put(s, "\n", 1);
        }
    }
    else {
        s->field = SSE_F_OTHER;
    }
}

/* Take part of a field's value. */
static void sse_field_value(struct relay_usage_sse *s, const char *p, size_t n)
{
    if (s->field == SSE_F_DATA) {
        sse_data_put(s, p, n);
    }
    else if (s->field == SSE_F_EVENT && s->event_len <= sizeof(s->event)) {
        if (n > sizeof(s->event) - s->event_len) {
            s->event_len = sizeof(s->event) + 1; /* too long for any name we act on */
        }
        else {
            memcpy(s->event + s->event_len, p, n);
            s->event_len += n;
        }
    }
}

/* A field line has ended. */
static void sse_field_end(struct relay_usage_sse *s)
{
    if (s->field == SSE_F_EVENT) {
        s->event_kind =
            s->event_len > sizeof(s->event) ? EV_OTHER : sse_kind(s->event, s->event_len);
    }
    s->line = SSE_LINE_START;
}

/* Index of the first CR or LF in p[0..len), or len. */
static size_t sse_eol(const unsigned char *p, size_t len)
{
    size_t i;
    for (i = 0; i < len && p[i] != '\r' && p[i] != '\n'; i++) {
    }
    return i;
}

/* Run bytes through the line machine. */
static void sse_bytes(relay_usage *u, const unsigned char *p, size_t len)
{
    struct relay_usage_sse *s = &u->sse;
    size_t i = 0;

    while (i < len && !u->stopped) {
        unsigned char c = p[i];
        size_t j;

        if (s->after_cr) {
            s->after_cr = 0;
            if (c == '\n') {
                i++;
                continue;
            }
        }
        switch (s->line) {
        case SSE_LINE_START:
            if (c == '\r' || c == '\n') {
                s->after_cr = c == '\r';
                i++;
                sse_dispatch(u);
            }
            else if (c == ':') {
                s->line = SSE_SKIP_LINE; /* a comment */
                i++;
            }
            else {
                s->line = SSE_FIELD;
                s->name_len = 0;
            }
            break;
        case SSE_FIELD:
            if (c == ':' || c == '\r' || c == '\n') {
                sse_field_begin(s);
                if (c == ':') {
                    s->line = SSE_VALUE_START;
                }
                else {
                    s->after_cr = c == '\r';
                    sse_field_end(s);
                }
            }
            else if (s->name_len < sizeof(s->name)) {
                s->name[s->name_len++] = (char)c;
            }
            else {
                s->name_len = sizeof(s->name) + 1;
            }
            i++;
            break;
        case SSE_VALUE_START:
            s->line = SSE_VALUE;
            if (c == ' ') {
                i++; /* one space after the colon is not part of the value */
            }
            break;
        case SSE_VALUE:
            j = i + sse_eol(p + i, len - i);
            sse_field_value(s, (const char *)p + i, j - i);
            i = j;
            if (i < len) {
                s->after_cr = p[i] == '\r';
                i++;
                sse_field_end(s);
            }
            break;
        default: /* SSE_SKIP_LINE */
            i += sse_eol(p + i, len - i);
            if (i < len) {
                s->after_cr = p[i] == '\r';
                i++;
                s->line = SSE_LINE_START;
            }
            break;
        }
    }
}

/* Feed the event stream, dropping a leading UTF-8 byte order mark. */
static void sse_feed(relay_usage *u, const unsigned char *p, size_t len)
{
    static const unsigned char bom[3] = {0xef, 0xbb, 0xbf};
    struct relay_usage_sse *s = &u->sse;

    while (len > 0 && s->bom < 3) {
        if (*p == bom[s->bom]) {
            s->bom++;
            p++;
            len--;
        }
        else {
            /* not a BOM after all: the bytes taken for one are stream text */
            int taken = s->bom;
            s->bom = 3;
            sse_bytes(u, bom, (size_t)taken);
        }
    }
    sse_bytes(u, p, len);
}

/* ------------------------------------------------------------------------ */
/* Plain JSON answer scanner.                                                */
/* ------------------------------------------------------------------------ */

enum { JS_BETWEEN, JS_STRING, JS_ESCAPE, JS_HEX, JS_BARE };
enum { PH_KEY, PH_COLON, PH_VALUE, PH_AFTER };
enum {
    KEY_NONE,
    KEY_OTHER,
    KEY_MODEL,
    KEY_USAGE,
    KEY_TYPE,
    KEY_COUNT /* KEY_COUNT + i is count_names[i] */
};
enum { ROLE_NONE, ROLE_KEY, ROLE_MODEL, ROLE_TYPE, ROLE_COUNT };

/* Levels whose container type is remembered; deeper ones never matter. */
#define JSON_TRACKED_DEPTH (8 * sizeof(((struct relay_usage_json *)0)->objbits))

/* Whether the container at level d (1-based) is an object. */
static int json_is_obj(const struct relay_usage_json *j, size_t d)
{
    if (d == 0 || d > JSON_TRACKED_DEPTH) {
        return 0;
    }
    return (j->objbits[(d - 1) / 8] >> ((d - 1) % 8)) & 1;
}

/* Note a key just read at level 1 or 2. */
static void json_set_key(struct relay_usage_json *j, int key)
{
    if (j->depth == 1) {
        j->key1 = key;
    }
    else if (j->depth == 2) {
        j->key2 = key;
    }
}

/* Identify a key at level 1 (top-level object) or 2 (usage object). */
static int json_key_id(const struct relay_usage_json *j)
{
    int i;

    if (j->slen >= sizeof(j->sbuf)) {
        return KEY_OTHER;
    }
    if (j->depth == 1) {
        if (j->slen == 5 && memcmp(j->sbuf, "model", 5) == 0) {
            return KEY_MODEL;
        }
        if (j->slen == 5 && memcmp(j->sbuf, "usage", 5) == 0) {
            return KEY_USAGE;
        }
        if (j->slen == 4 && memcmp(j->sbuf, "type", 4) == 0) {
            return KEY_TYPE;
        }
        return KEY_OTHER;
    }
    for (i = 0; i < COUNT_KEYS; i++) {
        if (j->slen == strlen(count_names[i]) && memcmp(j->sbuf, count_names[i], j->slen) == 0) {
            return KEY_COUNT + i;
        }
    }
    return KEY_OTHER;
}

/* Keep one decoded byte of a string we care about. */
static void json_str_put(struct relay_usage_json *j, unsigned char c)
{
    if (j->role == ROLE_NONE) {
        return;
    }
    if (j->slen < sizeof(j->sbuf)) {
        j->sbuf[j->slen] = (char)c;
    }
    /* counting on past the buffer marks a key as too long to be ours */
    if (j->slen <= sizeof(j->sbuf)) {
        j->slen++;
    }
}

/* A '"' outside any string: a key or a string value begins. */
static void json_string_begin(struct relay_usage_json *j)
{
    j->role = ROLE_NONE;
    if (j->phase == PH_KEY && (j->depth == 1 || (j->depth == 2 && j->in_usage))) {
        j->role = ROLE_KEY;
    }
    else if (j->phase == PH_VALUE && j->depth == 1 && j->key1 == KEY_MODEL) {
        j->role = ROLE_MODEL;
    }
    else if (j->phase == PH_VALUE && j->depth == 1 && j->key1 == KEY_TYPE) {
        j->role = ROLE_TYPE;
    }
    j->slen = 0;
    j->state = JS_STRING;
}

/* The closing '"' of a string. */
static void json_string_end(relay_usage *u)
{
    struct relay_usage_json *j = &u->json;
    size_t n = j->slen < sizeof(j->sbuf) ? j->slen : sizeof(j->sbuf);
    size_t i, m = 0;

    switch (j->role) {
    case ROLE_KEY:
        json_set_key(j, json_key_id(j));
        break;
    case ROLE_MODEL:
        u->model[0] = '\0';
        for (i = 0; i < n; i++) {
            model_put(u->model, &m, (unsigned char)j->sbuf[i]);
        }
        break;
    case ROLE_TYPE:
        if (j->slen == 5 && memcmp(j->sbuf, "error", 5) == 0) {
            u->error = 1;
        }
        break;
    default:
        break;
    }
    j->phase = j->phase == PH_KEY ? PH_COLON : PH_AFTER;
    j->state = JS_BETWEEN;
}

/* The first byte of a number or literal. */
static void json_bare_begin(struct relay_usage_json *j)
{
    j->role = ROLE_NONE;
    if (j->phase == PH_VALUE && j->depth == 2 && j->in_usage && j->key2 >= KEY_COUNT) {
        j->role = ROLE_COUNT;
    }
    j->num = 0;
    j->num_ok = 1;
    j->num_digits = 0;
    j->state = JS_BARE;
}

/* The end of a number or literal. */
static void json_bare_end(relay_usage *u)
{
    struct relay_usage_json *j = &u->json;

    if (j->role == ROLE_COUNT && j->num_ok && j->num_digits > 0) {
        *count_slot(u, j->key2 - KEY_COUNT) = j->num;
        u->seen_usage = 1;
    }
    j->phase = PH_AFTER;
    j->state = JS_BETWEEN;
}

/* A '{' or '[' opens a container. */
static void json_open(struct relay_usage_json *j, int obj)
{
    size_t d;

    if (j->depth == 1 && obj && j->phase == PH_VALUE && j->key1 == KEY_USAGE) {
        j->in_usage = 1;
    }
    j->depth++;
    d = j->depth;
    if (d <= JSON_TRACKED_DEPTH) {
        unsigned char bit = (unsigned char)(1u << ((d - 1) % 8));
        if (obj) {
            j->objbits[(d - 1) / 8] |= bit;
        }
        else {
            j->objbits[(d - 1) / 8] &= (unsigned char)~bit;
        }
    }
    j->phase = obj ? PH_KEY : PH_VALUE;
    json_set_key(j, KEY_NONE);
}

/* A '}' or ']' closes a container (which one is not checked: mismatches are tolerated). */
static void json_close(relay_usage *u)
{
    struct relay_usage_json *j = &u->json;

    if (j->depth == 0) {
        return;
    }
    if (j->depth == 2) {
        j->in_usage = 0;
    }
    j->depth--;
    if (j->depth == 0) {
        /* the answer is over: whatever follows is not part of it */
        u->complete = 1;
        u->stopped = 1;
        return;
    }
    j->phase = PH_AFTER;
}

/* A byte between tokens. */
static void json_between(relay_usage *u, unsigned char c)
{
    struct relay_usage_json *j = &u->json;

    if (j->depth == 0 && c != '{' && c != ' ' && c != '\t' && c != '\n' && c != '\r') {
        /* an answer is one object: an HTML page or a bare value holds no usage */
        u->stopped = 1;
        return;
    }
    switch (c) {
    case ' ':
    case '\t':
    case '\n':
    case '\r':
        break;
    case '{':
    case '[':
        json_open(j, c == '{');
        break;
    case '}':
    case ']':
        json_close(u);
        break;
    case ',':
        if (j->depth > 0) {
            j->phase = json_is_obj(j, j->depth) ? PH_KEY : PH_VALUE;
            json_set_key(j, KEY_NONE);
        }
        break;
    case ':':
        if (j->phase == PH_COLON) {
            j->phase = PH_VALUE;
        }
        break;
    case '"':
        json_string_begin(j);
        break;
    default:
        json_bare_begin(j);
        break;
    }
}

/* Whether c ends a number or literal. */
static int json_delim(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',' || c == ':' || c == '{' ||
           c == '}' || c == '[' || c == ']' || c == '"';
}

/* Run bytes through the scanner. */
static void json_feed(relay_usage *u, const unsigned char *p, size_t len)
{
    struct relay_usage_json *j = &u->json;
    size_t i = 0;

    while (i < len && !u->stopped) {
        unsigned char c = p[i];
        int v;

        switch (j->state) {
        case JS_STRING:
            if (j->role == ROLE_NONE) {
                /* the bulk of a long answer is text nobody reads here */
                while (i < len && p[i] != '"' && p[i] != '\\') {
                    i++;
                }
                if (i == len) {
                    break;
                }
                c = p[i];
            }
            if (c == '"') {
                json_string_end(u);
            }
            else if (c == '\\') {
                j->state = JS_ESCAPE;
            }
            else {
                json_str_put(j, c);
            }
            i++;
            break;
        case JS_ESCAPE:
            if (c == 'u') {
                j->hex = 0;
                j->hex_len = 0;
                j->state = JS_HEX;
            }
            else {
                json_str_put(j, json_unescape(c));
                j->state = JS_STRING;
            }
            i++;
            break;
        case JS_HEX:
            v = hex_value(c);
            if (v < 0) {
                /* a short \u escape: read this byte as ordinary string text */
                j->state = JS_STRING;
                break;
            }
            j->hex = j->hex * 16 + (unsigned)v;
            if (++j->hex_len == 4) {
                json_str_put(j, j->hex < 0x80 ? (unsigned char)j->hex : '?');
                j->state = JS_STRING;
            }
            i++;
            break;
        case JS_BARE:
            if (json_delim(c)) {
                json_bare_end(u); /* and read c again between tokens */
                break;
            }
            if (c >= '0' && c <= '9' && j->num_ok) {
                j->num = count_digit(j->num, c - '0');
                j->num_digits++;
            }
            else {
                j->num_ok = 0; /* negative, fraction, exponent, literal or junk */
            }
            i++;
            break;
        default: /* JS_BETWEEN */
            json_between(u, c);
            if (j->state == JS_BARE) {
                break; /* the token's first byte is read again as part of it */
            }
            i++;
            break;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Public entry points.                                                      */
/* ------------------------------------------------------------------------ */

/* Reset u to read one answer of the given kind. */
void relay_usage_init(relay_usage *u, relay_usage_mode mode)
{
    memset(u, 0, sizeof(*u));
    u->mode = mode;
    u->json.phase = PH_VALUE;
    sse_reset_event(&u->sse);
}

/* Read the next chunk of the body. */
void relay_usage_feed(relay_usage *u, const char *data, size_t len)
{
    if (u == NULL || data == NULL || u->finished || u->stopped) {
        return;
    }
    if (u->mode == RELAY_USAGE_SSE) {
        sse_feed(u, (const unsigned char *)data, len);
    }
    else {
        json_feed(u, (const unsigned char *)data, len);
    }
}

/* End of the body: count a last SSE event whose lines all arrived. */
void relay_usage_finish(relay_usage *u)
{
    if (u == NULL || u->finished) {
        return;
    }
    u->finished = 1;
    /* a number still being read in JSON mode was cut short: it is dropped */
    if (u->mode == RELAY_USAGE_SSE && !u->stopped && u->sse.line == SSE_LINE_START &&
        u->sse.data_lines > 0) {
        sse_dispatch(u);
    }
}
