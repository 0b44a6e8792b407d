/*
 * test_metrics.c - unit tests for relay_metrics.c: label escaping, the
 * outcome table, counting in a segment and the exposition text.
 */
#include "relay_metrics.h"

#include <apr_general.h>
#include <apr_strings.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* A label value escaped, compared with what the exposition format wants. */
static int label_is(apr_pool_t *p, const char *in, apr_size_t len, const char *want)
{
    const char *got = relay_metrics_label(in, len, p);

    if (strcmp(got, want) != 0) {
        printf("  label: got [%s], want [%s]\n", got, want);
        return 0;
    }
    return 1;
}

/* Rendered text, gathered into one string. */
typedef struct {
    char *buf;
    apr_size_t len, cap;
} text;

static void gather(void *baton, const char *s, apr_size_t n)
{
    text *t = baton;

    if (t->len + n + 1 > t->cap) {
        t->cap = (t->len + n + 1) * 2;
        t->buf = realloc(t->buf, t->cap);
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = '\0';
}

/* Whether the text has this line, whole. */
static int has_line(const text *t, const char *line)
{
    const char *at = t->buf;
    size_t n = strlen(line);

    while ((at = strstr(at, line)) != NULL) {
        if ((at == t->buf || at[-1] == '\n') && at[n] == '\n') {
            return 1;
        }
        at += n;
    }
    printf("  missing line: %s\n", line);
    return 0;
}

int main(void)
{
    apr_pool_t *p;
    relay_metrics_server srv;
    relay_metrics_keys keys;
    relay_metrics_key k[2];
    relay_metrics_model model;
    text t = {NULL, 0, 0};
    void *seg;
    apr_size_t size;
    int i, j;

    apr_initialize();
    apr_pool_create(&p, NULL);

    /* label values: backslash, double quote and line feed escaped, nothing else */
    CHECK(label_is(p, "team-a", 6, "team-a"), "a plain name");
    CHECK(label_is(p, "a\"b", 3, "a\\\"b"), "a double quote");
    CHECK(label_is(p, "a\\b", 3, "a\\\\b"), "a backslash");
    CHECK(label_is(p, "a\nb", 3, "a\\nb"), "a line feed");
    CHECK(label_is(p, "\\\"\n", 3, "\\\\\\\"\\n"), "all three together");
    CHECK(label_is(p, "a\tb\r", 4, "a\tb\r"), "a tab and a CR pass as they are");
    CHECK(label_is(p, "caf\xc3\xa9 \xe4\xb8\xad", 9, "caf\xc3\xa9 \xe4\xb8\xad"), "UTF-8 kept");
    CHECK(label_is(p, "\xf0\x9f\x98\x80", 4, "\xf0\x9f\x98\x80"), "a 4-byte character kept");
    CHECK(label_is(p, "a\377b", 3, "a\357\277\275b"), "a byte that is no UTF-8");
    CHECK(label_is(p, "a\0b", 3, "a\357\277\275b"), "a NUL byte");
    CHECK(label_is(p, "\xc3", 1, "\xef\xbf\xbd"), "a sequence cut short");
    CHECK(label_is(p, "\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd"), "an overlong form");
    CHECK(label_is(p, "\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"), "a surrogate");
    CHECK(label_is(p, "", 0, ""), "an empty value");

    /* every outcome has a distinct name of [a-z_] and a title */
    for (i = 0; i < RELAY_OUTCOME_COUNT; i++) {
        const char *n = relay_outcome_name((relay_outcome)i);

        CHECK(n && *n && strspn(n, "abcdefghijklmnopqrstuvwxyz_") == strlen(n),
              "an outcome name of lower-case letters and _");
        CHECK(relay_outcome_title((relay_outcome)i) && *relay_outcome_title((relay_outcome)i),
              "an outcome title");
        for (j = 0; j < i; j++) {
            CHECK(strcmp(n, relay_outcome_name((relay_outcome)j)) != 0, "outcome names differ");
        }
    }
    CHECK(strcmp(relay_outcome_name(RELAY_OUTCOME_ADMITTED), "admitted") == 0, "admitted");
    CHECK(strcmp(relay_outcome_name(RELAY_OUTCOME_CONCURRENCY_LIMITED), "concurrency_limited") == 0,
          "concurrency_limited");
    CHECK(strcmp(relay_outcome_name(RELAY_OUTCOME_NOT_ALLOWED), "not_allowed") == 0, "not_allowed");

    /* without shared memory nothing counts, and nothing crashes */
    relay_metrics_request(NULL, "id", RELAY_OUTCOME_ADMITTED);
    relay_metrics_batch(3);
    relay_metrics_server_read(&srv);
    CHECK(!srv.shared && srv.outcomes[RELAY_OUTCOME_ADMITTED] == 0, "no segment, no figures");

    /* a segment: counted, summed, and a foreign layout starts from zero */
    size = relay_metrics_shm_size(4);
    seg = malloc(size);
    memset(seg, 0xab, size);
    relay_metrics_shm_attach(seg, size, 4);
    relay_metrics_server_read(&srv);
    CHECK(srv.shared && srv.outcomes[RELAY_OUTCOME_ADMITTED] == 0 && srv.redis_commands == 0,
          "a segment of another layout is zeroed");
    relay_metrics_request(NULL, NULL, RELAY_OUTCOME_ADMITTED);
    relay_metrics_request(NULL, "not-flushed-here", RELAY_OUTCOME_ADMITTED);
    relay_metrics_request(NULL, NULL, RELAY_OUTCOME_UNAUTHORIZED);
    relay_metrics_request(NULL, NULL, RELAY_OUTCOME_COUNT);
    relay_metrics_batch(1);
    relay_metrics_batch(3);
    relay_metrics_batch(300);
    relay_metrics_renewed(7);
    relay_metrics_lost(2);
    relay_metrics_lost(-5);
    relay_metrics_server_read(&srv);
    CHECK(srv.outcomes[RELAY_OUTCOME_ADMITTED] == 2, "two admitted");
    CHECK(srv.outcomes[RELAY_OUTCOME_UNAUTHORIZED] == 1, "one unauthorized");
    CHECK(srv.batches == 3 && srv.batch_ops == 304, "three batches of 304 operations");
    CHECK(srv.batch[0] == 1 && srv.batch[2] == 1 && srv.batch[RELAY_METRICS_BATCH_BUCKETS] == 1,
          "batch sizes in their buckets (1, 3 -> le 4, 300 -> +Inf)");
    CHECK(srv.renewed == 7 && srv.lost == 2, "renewals and lost leases");
    relay_metrics_shm_attach(seg, size, 4);
    relay_metrics_server_read(&srv);
    CHECK(srv.outcomes[RELAY_OUTCOME_ADMITTED] == 2, "attaching again keeps the counts");

    /* the text: server figures and two keys */
    memset(&model, 0, sizeof(model));
    model.model = "claude-x";
    model.input = 25;
    model.output = 10;
    memset(k, 0, sizeof(k));
    k[0].id = "id-1";
    k[0].name = "team \"a\"\nb\\";
    k[0].concurrency_limit = 5;
    k[0].in_flight = 2;
    for (i = 0; i < RELAY_OUTCOME_COUNT; i++) {
        k[0].outcomes[i] = k[1].outcomes[i] = -1;
    }
    k[0].outcomes[RELAY_OUTCOME_ADMITTED] = 4;
    k[0].outcomes[RELAY_OUTCOME_CONCURRENCY_LIMITED] = 1;
    k[0].models = &model;
    k[0].nmodels = 1;
    k[1].id = "id-2";
    k[1].name = "";
    memset(&keys, 0, sizeof(keys));
    keys.ok = 1;
    keys.keys = k;
    keys.nkeys = 2;
    relay_metrics_render(&srv, &keys, gather, &t, p);
    CHECK(has_line(&t, "# TYPE claude_relay_requests_total counter"), "TYPE line");
    CHECK(has_line(&t, "claude_relay_requests_total{outcome=\"admitted\"} 2"), "server admitted");
    CHECK(has_line(&t, "claude_relay_requests_total{outcome=\"token_limited\"} 0"),
          "every server outcome, 0 included");
    CHECK(has_line(&t, "claude_relay_batch_operations_bucket{le=\"1\"} 1"), "first bucket");
    CHECK(has_line(&t, "claude_relay_batch_operations_bucket{le=\"4\"} 2"), "cumulative bucket");
    CHECK(has_line(&t, "claude_relay_batch_operations_bucket{le=\"256\"} 2"), "last bucket");
    CHECK(has_line(&t, "claude_relay_batch_operations_bucket{le=\"+Inf\"} 3"), "+Inf bucket");
    CHECK(has_line(&t, "claude_relay_batch_operations_sum 304"), "batch sum");
    CHECK(has_line(&t, "claude_relay_batch_operations_count 3"), "batch count");
    CHECK(has_line(&t, "claude_relay_redis_latency_seconds_bucket{le=\"0.0001\"} 0"),
          "latency bounds in seconds, with a leading zero");
    CHECK(has_line(&t, "claude_relay_keys 2"), "two keys");
    CHECK(has_line(&t, "claude_relay_key_requests_total{key_id=\"id-1\",key_name=\"team "
                       "\\\"a\\\"\\nb\\\\\",outcome=\"admitted\"} 4"),
          "a key's admitted, its name escaped");
    CHECK(has_line(&t, "claude_relay_key_requests_total{key_id=\"id-1\",key_name=\"team "
                       "\\\"a\\\"\\nb\\\\\",outcome=\"concurrency_limited\"} 1"),
          "a key's refusals");
    CHECK(!strstr(t.buf, "key_id=\"id-1\",key_name=\"team \\\"a\\\"\\nb\\\\\",outcome=\"expired\""),
          "an outcome that never happened is left out");
    CHECK(has_line(&t, "claude_relay_key_requests_total{key_id=\"id-2\",key_name=\"\","
                       "outcome=\"admitted\"} 0"),
          "admitted is there for every key");
    CHECK(has_line(&t, "claude_relay_key_in_flight{key_id=\"id-1\",key_name=\"team "
                       "\\\"a\\\"\\nb\\\\\"} 2"),
          "in flight");
    CHECK(has_line(&t, "claude_relay_key_concurrency_limit{key_id=\"id-2\",key_name=\"\"} 0"),
          "no limit is 0");
    CHECK(has_line(&t, "claude_relay_key_tokens_total{key_id=\"id-1\",key_name=\"team "
                       "\\\"a\\\"\\nb\\\\\",model=\"claude-x\",type=\"output\"} 10"),
          "tokens by model and type");
    CHECK(strstr(t.buf, "\n\n") == NULL && t.buf[t.len - 1] == '\n', "no blank line, ends in LF");

    /* a read that failed says so, and nothing per key */
    t.len = 0;
    keys.ok = 0;
    relay_metrics_render(&srv, &keys, gather, &t, p);
    CHECK(has_line(&t, "claude_relay_keys_read_ok 0"), "a failed read");
    CHECK(!strstr(t.buf, "claude_relay_key_requests_total"), "no per-key families then");

    free(t.buf);
    free(seg);
    apr_pool_destroy(p);
    apr_terminate();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
