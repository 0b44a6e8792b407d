/*
 * relay_monitor.c - the claude-relay-metrics handler, the relay's section of
 * /server-status, and the shared memory they read (see relay_monitor.h).
 *
 * The server figures live in one anonymous shared-memory segment that the
 * httpd parent creates at its first configuration pass and keeps in its
 * retained data, so the children of every later generation (after a
 * graceful restart) add to the same counters.
 */
#include "relay_monitor.h"
#include "relay_config.h"
#include "relay_lease.h"
#include "relay_metrics.h"

#include <ap_mpm.h>
#include <apr_shm.h>
#include <apr_strings.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <http_protocol.h>
#include <http_request.h>
#include <mod_status.h>
#include <stdlib.h>
#include <string.h>

APLOG_USE_MODULE(claude_relay);

/* Stable prefix of this module's log lines. */
#define RLOG "mod_claude_relay: "

/* The retained data's name: it outlives every configuration generation. */
#define RETAINED_KEY "mod_claude_relay/metrics"

/* Keys the /server-status page lists at most (the metrics location has them all). */
#define STATUS_KEYS_MAX 1000

/* What the httpd parent keeps across restarts. */
typedef struct {
    apr_shm_t *shm; /* the segment, in the process pool */
    void *base;
    apr_size_t size;
    int slots; /* child slots in it */
} retained;

/* The distinct lease stores of this child, for the leases it holds. */
static apr_array_header_t *child_stores;

/*
 * post_config: create the segment once (the first pass), then attach to it
 * in every generation; the children inherit it. Without it the relay runs
 * without server figures.
 */
static int monitor_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp,
                               server_rec *s)
{
    retained *rd = ap_retained_data_get(RETAINED_KEY);
    apr_status_t rv;

    (void)pconf;
    (void)plog;
    (void)ptemp;
    if (!rd) {
        rd = ap_retained_data_create(RETAINED_KEY, sizeof(*rd));
        memset(rd, 0, sizeof(*rd));
    }
    if (!rd->base) {
        int limit = 0;

        /* a child killed before it gave its slot back keeps it until another child takes it */
        if (ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &limit) != APR_SUCCESS || limit < 1) {
            limit = 1;
        }
        rd->slots = 2 * limit + 8;
        rd->size = relay_metrics_shm_size(rd->slots);
        rv = apr_shm_create(&rd->shm, rd->size, NULL, s->process->pool);
        if (rv != APR_SUCCESS) {
            ap_log_error(APLOG_MARK, APLOG_ERR, rv, s,
                         RLOG "cannot create %" APR_SIZE_T_FMT " bytes of shared memory for the "
                              "server figures; /server-status and the metrics location show "
                              "per-key figures only",
                         rd->size);
            return OK;
        }
        rd->base = apr_shm_baseaddr_get(rd->shm);
    }
    relay_metrics_shm_attach(rd->base, rd->size, rd->slots);
    return OK;
}

/* The leases this child's running requests hold, over all its stores. */
static int child_leases(void *baton)
{
    apr_array_header_t *stores = baton;
    int i, n = 0;

    for (i = 0; i < stores->nelts; i++) {
        n += relay_lease_live_count(APR_ARRAY_IDX(stores, i, relay_lease_store *));
    }
    return n;
}

void relay_monitor_child_init(apr_pool_t *pchild, server_rec *s)
{
    apr_array_header_t *pools = apr_array_make(pchild, 2, sizeof(relay_redis_pool *));
    apr_status_t rv;
    server_rec *v;
    int i;

    child_stores = apr_array_make(pchild, 2, sizeof(relay_lease_store *));
    for (v = s; v; v = v->next) {
        relay_lease_store *store = relay_server_store(v);

        for (i = 0; store && i < child_stores->nelts; i++) {
            if (APR_ARRAY_IDX(child_stores, i, relay_lease_store *) == store) {
                break;
            }
        }
        if (store && i == child_stores->nelts) {
            APR_ARRAY_PUSH(child_stores, relay_lease_store *) = store;
            APR_ARRAY_PUSH(pools, relay_redis_pool *) = relay_lease_store_redis(store);
        }
    }
    rv = relay_metrics_child_start(pchild, (relay_redis_pool *const *)pools->elts, pools->nelts,
                                   child_leases, child_stores);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s,
                     RLOG "cannot start counting per key in this process; the per-key request "
                          "counts of its requests are not written");
    }
}

/* The Redis pool of a request's server, or NULL when it has none. */
static relay_redis_pool *redis_of(request_rec *r)
{
    relay_lease_store *store = relay_server_store(r->server);

    return store ? relay_lease_store_redis(store) : NULL;
}

/* Bytes of each buffer a scrape is rendered into. */
#define SCRAPE_CHUNK (64 * 1024)

/*
 * What a scrape renders into: the answer's brigade, in chunks of
 * SCRAPE_CHUNK (a line each would make a bucket each: 90,000 of them for
 * 10,000 keys, which httpd then writes a few KiB at a time).
 */
typedef struct {
    apr_bucket_brigade *bb;
    const relay_metrics_server *srv;
    apr_pool_t *p;
    char *buf; /* the chunk being filled (malloc'ed), or NULL */
    apr_size_t len;
} scrape;

/* Hand the chunk being filled to the brigade, which frees it. */
static void chunk_done(scrape *sc)
{
    if (sc->buf) {
        APR_BRIGADE_INSERT_TAIL(
            sc->bb, apr_bucket_heap_create(sc->buf, sc->len, free, sc->bb->bucket_alloc));
        sc->buf = NULL;
        sc->len = 0;
    }
}

static void to_brigade(void *baton, const char *text, apr_size_t len)
{
    scrape *sc = baton;

    while (len > 0) {
        apr_size_t n;

        if (!sc->buf) {
            if (!(sc->buf = malloc(SCRAPE_CHUNK))) {
                /* out of memory: the answer is cut short, and Prometheus refuses it */
                return;
            }
        }
        n = SCRAPE_CHUNK - sc->len < len ? SCRAPE_CHUNK - sc->len : len;
        memcpy(sc->buf + sc->len, text, n);
        sc->len += n;
        text += n;
        len -= n;
        if (sc->len == SCRAPE_CHUNK) {
            chunk_done(sc);
        }
    }
}

/* Render everything while the keys' read is locked: into memory, never to the client. */
static void render_scrape(const relay_metrics_keys *keys, void *baton)
{
    scrape *sc = baton;

    relay_metrics_render(sc->srv, keys, to_brigade, sc, sc->p);
}

/*
 * The claude-relay-metrics handler: the Prometheus text format. The server
 * figures come from shared memory, the per-key ones from Redis (at most one
 * read per child and second, whatever the scrape rate).
 */
static int metrics_handler(request_rec *r)
{
    relay_metrics_server srv;
    relay_redis_pool *pool;
    scrape sc;
    apr_status_t rv;
    int rc;

    if (!r->handler || strcmp(r->handler, RELAY_METRICS_HANDLER) != 0) {
        return DECLINED;
    }
    r->allowed = AP_METHOD_BIT << M_GET;
    if (r->method_number != M_GET) {
        return HTTP_METHOD_NOT_ALLOWED;
    }
    if ((rc = ap_discard_request_body(r)) != OK) {
        return rc;
    }
    relay_metrics_server_read(&srv);
    memset(&sc, 0, sizeof(sc));
    sc.bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    sc.srv = &srv;
    sc.p = r->pool;
    pool = redis_of(r);
    if (pool) {
        relay_metrics_keys_with(pool, r->pool, render_scrape, &sc);
    }
    else {
        relay_metrics_render(&srv, NULL, to_brigade, &sc, r->pool);
    }
    chunk_done(&sc);
    ap_set_content_type(r, "text/plain; version=0.0.4; charset=utf-8");
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    APR_BRIGADE_INSERT_TAIL(sc.bb, apr_bucket_eos_create(r->connection->bucket_alloc));
    rv = ap_pass_brigade(r->output_filters, sc.bb);
    return rv == APR_SUCCESS || r->connection->aborted ? OK : AP_FILTER_ERROR;
}

/* What the status page's key table holds, copied while the read is locked. */
typedef struct {
    request_rec *r;
    int ok;
    const char *error;
    int nkeys;
    apr_array_header_t *rows; /* HTML rows, escaped */
} status_keys;

/* Sum of a key's refusals other than its limits (disabled, expired, unavailable...). */
static long long other_refusals(const relay_metrics_key *k)
{
    long long n = 0;
    int o;

    for (o = 0; o < RELAY_OUTCOME_COUNT; o++) {
        if (o != RELAY_OUTCOME_ADMITTED && o != RELAY_OUTCOME_ADMITTED_UNCHECKED &&
            o != RELAY_OUTCOME_CONCURRENCY_LIMITED && o != RELAY_OUTCOME_TOKEN_LIMITED &&
            k->outcomes[o] > 0) {
            n += k->outcomes[o];
        }
    }
    return n;
}

/* A key's count of one outcome (0 when it never happened). */
static long long count_of(const relay_metrics_key *k, relay_outcome o)
{
    return k->outcomes[o] > 0 ? k->outcomes[o] : 0;
}

static void copy_status_keys(const relay_metrics_keys *keys, void *baton)
{
    status_keys *sk = baton;
    apr_pool_t *p = sk->r->pool;
    int i, j;

    sk->ok = keys->ok;
    sk->error = keys->error ? apr_pstrdup(p, keys->error) : NULL;
    sk->nkeys = keys->nkeys;
    sk->rows = apr_array_make(p, keys->nkeys < STATUS_KEYS_MAX ? keys->nkeys + 1 : STATUS_KEYS_MAX,
                              sizeof(const char *));
    for (i = 0; keys->ok && i < keys->nkeys && i < STATUS_KEYS_MAX; i++) {
        const relay_metrics_key *k = &keys->keys[i];
        long long in = 0, out = 0;

        for (j = 0; j < k->nmodels; j++) {
            in += k->models[j].input;
            out += k->models[j].output;
        }
        APR_ARRAY_PUSH(sk->rows, const char *) = apr_psprintf(
            p,
            "<tr><td>%s</td><td>%s</td><td>%" APR_INT64_T_FMT " / %s</td><td>%" APR_INT64_T_FMT
            "</td><td>%" APR_INT64_T_FMT "</td><td>%" APR_INT64_T_FMT "</td><td>%" APR_INT64_T_FMT
            "</td><td>%" APR_INT64_T_FMT "</td><td>%" APR_INT64_T_FMT "</td></tr>\n",
            ap_escape_html(p, k->name), ap_escape_html(p, k->id), (apr_int64_t)k->in_flight,
            k->concurrency_limit
                ? apr_psprintf(p, "%" APR_INT64_T_FMT, (apr_int64_t)k->concurrency_limit)
                : "none",
            (apr_int64_t)(count_of(k, RELAY_OUTCOME_ADMITTED) +
                          count_of(k, RELAY_OUTCOME_ADMITTED_UNCHECKED)),
            (apr_int64_t)count_of(k, RELAY_OUTCOME_CONCURRENCY_LIMITED),
            (apr_int64_t)count_of(k, RELAY_OUTCOME_TOKEN_LIMITED), (apr_int64_t)other_refusals(k),
            (apr_int64_t)in, (apr_int64_t)out);
    }
}

/* ?auto: the server figures, one "Name: value" line each (no Redis call). */
static void status_short(request_rec *r, const relay_metrics_server *srv)
{
    int o;

    for (o = 0; o < RELAY_OUTCOME_COUNT; o++) {
        ap_rprintf(r, "ClaudeRelayRequests%s: %" APR_UINT64_T_FMT "\n", relay_outcome_title(o),
                   srv->outcomes[o]);
    }
    ap_rprintf(r, "ClaudeRelayRedisCommands: %" APR_UINT64_T_FMT "\n", srv->redis_commands);
    ap_rprintf(r, "ClaudeRelayRedisErrors: %" APR_UINT64_T_FMT "\n", srv->redis_errors);
    ap_rprintf(r, "ClaudeRelayRedisLatencySeconds: %.6f\n",
               (double)srv->redis_latency_us / APR_USEC_PER_SEC);
    ap_rprintf(r, "ClaudeRelayBatches: %" APR_UINT64_T_FMT "\n", srv->batches);
    ap_rprintf(r, "ClaudeRelayBatchOperations: %" APR_UINT64_T_FMT "\n", srv->batch_ops);
    ap_rprintf(r, "ClaudeRelayLeasesHeld: %" APR_UINT64_T_FMT "\n", srv->leases_held);
    ap_rprintf(r, "ClaudeRelayLeaseRenewals: %" APR_UINT64_T_FMT "\n", srv->renewed);
    ap_rprintf(r, "ClaudeRelayLeasesLost: %" APR_UINT64_T_FMT "\n", srv->lost);
    ap_rprintf(r, "ClaudeRelayProcesses: %" APR_UINT64_T_FMT "\n", srv->children);
}

/* One figure of the status page, as a table row or, without tables, a line. */
static void status_row(request_rec *r, int table, const char *what, const char *value)
{
    if (table) {
        ap_rprintf(r, "<tr><td>%s</td><td>%s</td></tr>\n", what, value);
    }
    else {
        ap_rprintf(r, "%s: %s<br />\n", what, value);
    }
}

/* mod_status: the relay's figures on /server-status, and in ?auto. */
static int status_hook(request_rec *r, int flags)
{
    relay_metrics_server srv;
    relay_redis_pool *pool;
    status_keys sk;
    int table = !(flags & AP_STATUS_NOTABLE), i, o;
    apr_pool_t *p = r->pool;

    relay_metrics_server_read(&srv);
    if (flags & AP_STATUS_SHORT) {
        if (srv.shared) {
            status_short(r, &srv);
        }
        return OK;
    }
    ap_rputs("<hr />\n<h2>Claude relay</h2>\n", r);
    if (srv.shared) {
        ap_rputs("<h3>This server, all its children, since it started</h3>\n", r);
        if (table) {
            ap_rputs("<table border=\"0\">\n", r);
        }
        for (o = 0; o < RELAY_OUTCOME_COUNT; o++) {
            status_row(r, table, apr_pstrcat(p, "requests ", relay_outcome_name(o), NULL),
                       apr_psprintf(p, "%" APR_UINT64_T_FMT, srv.outcomes[o]));
        }
        status_row(r, table, "Redis round trips",
                   apr_psprintf(p, "%" APR_UINT64_T_FMT, srv.redis_commands));
        status_row(r, table, "Redis errors",
                   apr_psprintf(p, "%" APR_UINT64_T_FMT, srv.redis_errors));
        status_row(r, table, "Redis latency, mean",
                   srv.redis_commands ? apr_psprintf(p, "%.3f ms",
                                                     (double)srv.redis_latency_us / 1000.0 /
                                                         (double)srv.redis_commands)
                                      : "-");
        status_row(r, table, "batch script calls",
                   apr_psprintf(p, "%" APR_UINT64_T_FMT " (%.1f operations each)", srv.batches,
                                srv.batches ? (double)srv.batch_ops / (double)srv.batches : 0.0));
        status_row(r, table, "leases held", apr_psprintf(p, "%" APR_UINT64_T_FMT, srv.leases_held));
        status_row(r, table, "lease renewals", apr_psprintf(p, "%" APR_UINT64_T_FMT, srv.renewed));
        status_row(r, table, "leases lost", apr_psprintf(p, "%" APR_UINT64_T_FMT, srv.lost));
        if (table) {
            ap_rputs("</table>\n", r);
        }
    }
    pool = redis_of(r);
    if (!pool) {
        return OK;
    }
    memset(&sk, 0, sizeof(sk));
    sk.r = r;
    relay_metrics_keys_with(pool, r->pool, copy_status_keys, &sk);
    ap_rputs("<h3>Keys, from Redis (every server sharing it)</h3>\n", r);
    if (!sk.ok) {
        ap_rprintf(r, "<p>The keys could not be read from Redis: %s</p>\n",
                   ap_escape_html(p, sk.error ? sk.error : "unknown error"));
        return OK;
    }
    ap_rputs("<table border=\"0\">\n<tr><th>name</th><th>id</th><th>in flight / limit</th>"
             "<th>admitted</th><th>concurrency limited</th><th>token limited</th>"
             "<th>other refusals</th><th>input tokens</th><th>output tokens</th></tr>\n",
             r);
    for (i = 0; i < sk.rows->nelts; i++) {
        ap_rputs(APR_ARRAY_IDX(sk.rows, i, const char *), r);
    }
    ap_rputs("</table>\n", r);
    if (sk.nkeys > sk.rows->nelts) {
        ap_rprintf(r,
                   "<p>%d more keys: the metrics location (SetHandler " RELAY_METRICS_HANDLER
                   ") lists them all.</p>\n",
                   sk.nkeys - sk.rows->nelts);
    }
    return OK;
}

void relay_monitor_register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_post_config(monitor_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(metrics_handler, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ap, status_hook, status_hook, NULL, NULL, APR_HOOK_MIDDLE);
}
