/*
 * relay_usage.h - a streaming reader of the token usage in a Claude Messages
 * API answer, fed the upstream body chunk by chunk as it passes the relay.
 *
 * Two kinds of body: a text/event-stream (stream: true) whose message_start
 * and message_delta events carry the usage, and a plain application/json
 * answer with a top-level "usage" object. Chunks may split anywhere, even one
 * byte at a time. All state lives in relay_usage itself (about 9 KiB, no
 * allocation), so an output filter can keep one per request in its context.
 *
 * Nothing here includes an httpd or APR header, so the unit tests and the
 * fuzz target link this file alone.
 */
#ifndef RELAY_USAGE_H
#define RELAY_USAGE_H

#include <stddef.h>

/* Counts above this are absurd for one request; they are clamped to it. */
#define RELAY_USAGE_MAX_COUNT 1000000000000000LL
/* Largest SSE event data kept for parsing (message_start/message_delta/error). */
#define RELAY_USAGE_DATA_MAX 8192
/* Size of the model buffer, NUL included; longer names are cut. */
#define RELAY_USAGE_MODEL_MAX 128

typedef enum { RELAY_USAGE_SSE, RELAY_USAGE_JSON } relay_usage_mode;

/* Parser state of the event-stream reader; private to relay_usage.c. */
struct relay_usage_sse {
    int line;        /* where in the current line the next byte falls */
    int field;       /* which field the current line sets */
    int after_cr;    /* the last line ended with CR: an LF next is part of it */
    int bom;         /* bytes of a leading UTF-8 BOM matched; 3 once decided */
    size_t name_len; /* > sizeof(name) when the field name is too long */
    char name[8];
    size_t event_len; /* > sizeof(event) when the event name is too long */
    char event[32];
    int event_seen;
    int event_kind;
    int data_lines;
    int data_state; /* data kept whole, skipped, or too big */
    size_t data_len;
    char data[RELAY_USAGE_DATA_MAX];
};

/* Parser state of the plain JSON scanner; private to relay_usage.c. */
struct relay_usage_json {
    int state; /* between tokens, in a string, escape, bare token */
    int phase; /* what the current container expects next */
    size_t depth;
    unsigned char objbits[32]; /* levels 1..256: set when that container is an object */
    int in_usage;              /* the level-2 container is the top-level "usage" */
    int key1, key2;            /* the last key read at levels 1 and 2 */
    int role;                  /* what the current string or number feeds */
    int num_ok, num_digits;
    long long num;
    unsigned hex, hex_len;
    size_t slen;
    char sbuf[RELAY_USAGE_MODEL_MAX];
};

typedef struct {
    long long input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens;
    char model[RELAY_USAGE_MODEL_MAX]; /* the answer's model, printable ASCII; "" if unknown */
    int seen_usage;                    /* any usage figure was read */
    int complete;                      /* message_stop seen (SSE) or the whole JSON object parsed */
    int error;    /* an SSE error event (counting stopped there), or a JSON error body */
    int overflow; /* an event's data was larger than RELAY_USAGE_DATA_MAX and was skipped */

    /* Private parser state below: read the fields above only. */
    relay_usage_mode mode;
    int stopped; /* nothing after this point can change the figures */
    int finished;
    struct relay_usage_sse sse;
    struct relay_usage_json json;
} relay_usage;

/* Reset u to read one answer of the given kind. */
void relay_usage_init(relay_usage *u, relay_usage_mode mode);

/*
 * Read the next len bytes of the body, exactly as they arrived. Never reads
 * beyond data[len - 1] and keeps no pointer to it. Bytes fed after
 * relay_usage_finish, or after message_stop or an error event, are ignored.
 */
void relay_usage_feed(relay_usage *u, const char *data, size_t len);

/*
 * End of the body. An SSE event whose lines all arrived is still counted when
 * only its closing blank line is missing; a line cut short is ignored. The
 * figures are final after this call.
 */
void relay_usage_finish(relay_usage *u);

#endif
