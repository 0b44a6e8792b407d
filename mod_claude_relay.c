/*
 * mod_claude_relay.c - an API-key gateway for the Claude API.
 *
 * This file is the httpd glue; the lease core (relay_lease*.c, no httpd
 * header) decides. In a location with "RelayEngine On" the access hook
 * refuses any endpoint the location does not relay, hashes the client's
 * relay key and asks the core for a per-key concurrency lease: Redis checks
 * the key and takes the lease in one atomic script call, or the child takes
 * it from its key cache while Redis has not reported the key changed. The
 * hook runs in stages, in this order: endpoint_gate, read_key,
 * ask_lease_core, then refuse_admission (every verdict short of a lease,
 * and where a new one is to be answered) or admitted. The client's
 * credentials are removed at once; the upstream credential is put in by the
 * fixups hook, only into a request that mod_proxy is about to carry. The
 * usage filter counts the answer's tokens and gives the lease back as the
 * answer's end passes, before the client has it; a cleanup on the request
 * pool gives it back on every other path (hang-ups, errors). child_init
 * builds one lease store per Redis target, kept in a per-child table
 * (relay_server_store), whose keeper thread sends queued releases and usage
 * and renews the leases of long requests; a killed child's leases expire by
 * themselves.
 */
#include "relay_admin.h"
#include "relay_schema.h"
#include "relay_config.h"
#include "relay_endpoints.h"
#include "relay_keystore.h"
#include "relay_keys.h"
#include "relay_lease.h"
#include "relay_metrics.h"
#include "relay_monitor.h"
#include "relay_redis.h"
#include "relay_throttle.h"
#include "relay_usage.h"

#include <apr_hash.h>
#include <apr_strings.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <http_protocol.h>
#include <http_request.h>
#include <httpd.h>
#include <ap_mpm.h>
#include <string.h>

/* Stable prefix of this module's log lines. */
#define RLOG "mod_claude_relay: "

/* The name of the output filter that counts the answer's tokens. */
#define USAGE_FILTER "RELAY_USAGE"

/*
 * How long a child remembers a key Redis found valid and active: under
 * RelayOnRedisError allow, only such keys are let through while Redis fails.
 */
#define ALLOW_REMEMBER_MS (15 * 60 * 1000)

/* What the usage filter does with the answer. */
typedef enum {
    FILTER_WAITING = 0, /* the first brigade has not passed yet */
    FILTER_COUNTING,    /* a JSON or SSE answer: its tokens are read */
    FILTER_REPLACED,    /* an answer the relay cannot count was replaced by a 502 */
    FILTER_IDLE         /* another kind of answer: passed on unread */
} filter_state;

/* A refusal decided in the access hook, answered in fixups under Satisfy Any. */
typedef struct {
    int status;
    const char *body;
    const char *retry_after;
    const char *allow; /* Allow header of a 405, or NULL */
} relay_refusal;

/* The state of an admitted request, kept on its initial request. */
typedef struct {
    relay_lease_store *store; /* where the lease lives */
    relay_lease *lease;       /* NULL when admitted without one (Redis down, allow) */
    const char *key_id;       /* for log lines */
    server_rec *server;       /* for log lines from the cleanup */
    request_rec *r;           /* the request, for notes */
    filter_state filter;      /* what the usage filter does with the answer */
    relay_usage usage;        /* its parser: fixed size, no allocation */
    relay_refusal *refusal;   /* a refusal still to be answered (Satisfy Any), or NULL */
    apr_off_t expected;       /* the answer's Content-Length, or -1 */
    apr_off_t passed;         /* bytes of the answer passed on so far */
} relay_request;

/* The request a client sent: the root of redirects and sub-requests. */
static request_rec *initial_request(request_rec *r)
{
    for (;;) {
        if (r->main) {
            r = r->main;
        }
        else if (r->prev) {
            r = r->prev;
        }
        else {
            return r;
        }
    }
}

/* Whether the client announced a request body. */
static int body_announced(request_rec *r)
{
    const char *cl = apr_table_get(r->headers_in, "Content-Length");

    return apr_table_get(r->headers_in, "Transfer-Encoding") != NULL ||
           (cl && strspn(cl, "0 \t") != strlen(cl));
}

/*
 * Answer a refusal with a JSON body: httpd's own error pages are HTML, so
 * write the body here and return DONE. The request body is never read (no
 * "100 Continue" is sent either): a connection that announced one is closed
 * after the answer, so a client cannot hold a worker by sending it slowly.
 */
static int json_answer(request_rec *r, int status, const char *body, const char *retry_after)
{
    if (body_announced(r)) {
        /* httpd discards nothing on a connection it is about to close */
        r->connection->keepalive = AP_CONN_CLOSE;
    }
    r->status = status;
    apr_table_setn(r->err_headers_out, "Cache-Control", "no-store");
    if (retry_after) {
        apr_table_setn(r->err_headers_out, "Retry-After", retry_after);
    }
    ap_set_content_type(r, "application/json");
    ap_set_content_length(r, (apr_off_t)strlen(body));
    /* a HEAD request gets the headers only: ap_rputs honours header_only */
    ap_rputs(body, r);
    return DONE;
}

/* The relay key a client presented, or NULL; *where names its header. */
static const char *presented_key(request_rec *r, const char **where)
{
    const char *v;

    v = apr_table_get(r->headers_in, "x-api-key");
    if (v && *v) {
        *where = "x-api-key";
        return v;
    }
    v = apr_table_get(r->headers_in, "Authorization");
    if (v && *v) {
        const char *p = v;
        while (*p == ' ' || *p == '\t') {
            p++;
        }
        if (strncasecmp(p, "Bearer", 6) == 0 && (p[6] == ' ' || p[6] == '\t')) {
            p += 6;
            while (*p == ' ' || *p == '\t') {
                p++;
            }
            *where = "Authorization";
            return p;
        }
    }
    v = apr_table_get(r->headers_in, "api-key");
    if (v && *v) {
        *where = "api-key";
        return v;
    }
    return NULL;
}

/*
 * Remove every form of the client's key, and what else the upstream must not
 * see (cookies, credentials for proxies); ask for an answer the usage filter
 * can read.
 */
static void strip_client_headers(request_rec *r)
{
    apr_table_unset(r->headers_in, "x-api-key");
    apr_table_unset(r->headers_in, "Authorization");
    apr_table_unset(r->headers_in, "api-key");
    apr_table_unset(r->headers_in, "Cookie");
    apr_table_unset(r->headers_in, "Cookie2");
    apr_table_unset(r->headers_in, "Proxy-Authorization");
    apr_table_setn(r->headers_in, "Accept-Encoding", "identity");
}

/* Put the upstream credential in (only into a request mod_proxy carries). */
static void insert_credential(request_rec *r, const relay_dir_conf *dc)
{
    if (dc->upstream_key) {
        apr_table_setn(r->headers_in, "x-api-key", dc->upstream_key);
    }
    else if (dc->upstream_bearer) {
        apr_table_setn(r->headers_in, "Authorization",
                       apr_pstrcat(r->pool, "Bearer ", dc->upstream_bearer, NULL));
    }
}

/* "input/output" for the relay-tokens note, once the answer has been read. */
static void set_tokens_note(relay_request *rr)
{
    apr_table_set(rr->r->notes, "relay-tokens",
                  apr_psprintf(rr->r->pool, "%" APR_INT64_T_FMT "/%" APR_INT64_T_FMT,
                               (apr_int64_t)rr->usage.input_tokens,
                               (apr_int64_t)rr->usage.output_tokens));
}

/* What the request consumed, as far as the usage filter read the answer. */
static void usage_counts(relay_request *rr, relay_usage_counts *counts)
{
    memset(counts, 0, sizeof(*counts));
    if (rr->filter == FILTER_COUNTING) {
        relay_usage_finish(&rr->usage);
        counts->input = rr->usage.input_tokens;
        counts->output = rr->usage.output_tokens;
        counts->cache_create = rr->usage.cache_creation_input_tokens;
        counts->cache_read = rr->usage.cache_read_input_tokens;
        counts->model = rr->usage.model[0] ? rr->usage.model : NULL;
    }
}

/*
 * Request-pool cleanup: give the lease back and count the request with what
 * the upstream reported, whatever ended it (also a client hanging up). An
 * answer that reached its end has given it back already (usage_filter).
 */
static apr_status_t release_lease(void *data)
{
    relay_request *rr = data;
    relay_usage_counts counts;
    const char *err = NULL;

    if (!rr->lease) {
        return APR_SUCCESS;
    }
    usage_counts(rr, &counts);
    /* queued, not sent: the lease store copies what it needs */
    if (relay_lease_release(rr->store, rr->lease, &counts, &err) != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, rr->server,
                     RLOG "could not give back the slot of key %s now (%s); it expires "
                          "by itself within its lease, and this request's usage is not counted",
                     rr->key_id, err ? err : "unknown error");
    }
    rr->lease = NULL;
    return APR_SUCCESS;
}

/*
 * The answer's last byte is about to pass: give the slot back now, and wait
 * until Redis has it when a limit counts it, so the client, once it has the
 * whole answer, finds the slot free for its next request.
 */
static void release_at_end(relay_request *rr, request_rec *r)
{
    relay_usage_counts counts;
    const char *err = NULL;
    apr_time_t start;
    int waited = 0;

    if (!rr->lease) {
        return;
    }
    usage_counts(rr, &counts);
    if (rr->filter == FILTER_COUNTING) {
        set_tokens_note(rr);
    }
    start = apr_time_now();
    if (relay_lease_release_sent(rr->store, rr->lease, &counts, r->pool, &waited, &err) !=
        APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                      RLOG "could not give back the slot of key %s at the answer's end (%s)",
                      rr->key_id, err ? err : "unknown error");
    }
    rr->lease = NULL;
    /* for the access log: when the slot went back, and what waiting for Redis cost the answer */
    apr_table_setn(r->notes, "relay-released-at",
                   apr_psprintf(r->pool, "%" APR_TIME_T_FMT ".%06" APR_TIME_T_FMT,
                                apr_time_sec(start), apr_time_usec(start)));
    if (waited) {
        apr_table_setn(r->notes, "relay-release-wait-us",
                       apr_psprintf(r->pool, "%" APR_TIME_T_FMT, apr_time_now() - start));
    }
}

/* Bodies of the relay's own error answers. */
#define BODY_UNCOUNTABLE                                                                           \
    "{\"error\":\"Bad gateway\",\"message\":\"The upstream sent a compressed answer, which "       \
    "the relay cannot count; it asked for an uncompressed one\"}"

/*
 * Replace an answer that cannot be counted by the relay's own 502, before
 * any of it reaches the client: a key's limits hold only for answers whose
 * tokens are read.
 */
static apr_status_t replace_with_502(ap_filter_t *f, apr_bucket_brigade *bb)
{
    request_rec *r = f->r;
    conn_rec *c = r->connection;
    apr_size_t len = strlen(BODY_UNCOUNTABLE);

    apr_brigade_cleanup(bb);
    apr_table_clear(r->headers_out);
    r->status = HTTP_BAD_GATEWAY;
    r->status_line = NULL;
    apr_table_setn(r->err_headers_out, "Cache-Control", "no-store");
    ap_set_content_type(r, "application/json");
    ap_set_content_length(r, (apr_off_t)len);
    if (!r->header_only) {
        APR_BRIGADE_INSERT_TAIL(bb,
                                apr_bucket_immortal_create(BODY_UNCOUNTABLE, len, c->bucket_alloc));
    }
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(c->bucket_alloc));
    return ap_pass_brigade(f->next, bb);
}

/*
 * Read the answer's headers as its first brigade passes: how the filter
 * treats it (counted, or passed on unread) and how long it is. Returns 0
 * for a compressed answer, whose tokens cannot be counted: the caller
 * replaces it with a 502, the slot already given back.
 */
static int inspect_answer(relay_request *rr, request_rec *r)
{
    const char *type = r->content_type ? r->content_type : "";
    const char *enc = apr_table_get(r->headers_out, "Content-Encoding");
    const char *cl = apr_table_get(r->headers_out, "Content-Length");

    if (enc && strcasecmp(enc, "identity") != 0) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      RLOG "the upstream answered key %s %s-encoded although the relay asked "
                           "for identity; answering 502, since its tokens cannot be counted",
                      rr->key_id, ap_escape_logitem(r->pool, enc));
        rr->filter = FILTER_REPLACED;
        release_at_end(rr, r);
        return 0;
    }
    rr->expected = -1;
    if (cl && !r->header_only) {
        char *endp;
        apr_off_t n;
        if (apr_strtoff(&n, cl, &endp, 10) == APR_SUCCESS && *endp == '\0' && n >= 0) {
            rr->expected = n;
        }
    }
    if (strncasecmp(type, "text/event-stream", 17) == 0) {
        relay_usage_init(&rr->usage, RELAY_USAGE_SSE);
        rr->filter = FILTER_COUNTING;
    }
    else if (strncasecmp(type, "application/json", 16) == 0) {
        relay_usage_init(&rr->usage, RELAY_USAGE_JSON);
        rr->filter = FILTER_COUNTING;
    }
    else {
        /* not read, but its end still gives the slot back */
        rr->filter = FILTER_IDLE;
    }
    return 1;
}

/*
 * Output filter: read the token usage from the answer as it passes, and give
 * the slot back just before the answer's end goes on to the client: before
 * the brigade that completes a Content-Length body, or before the EOS that
 * makes the last chunk or an HTTP/2 END_STREAM. Every brigade goes on at
 * once, untouched; only the parser's fixed state is kept.
 */
static apr_status_t usage_filter(ap_filter_t *f, apr_bucket_brigade *bb)
{
    relay_request *rr = f->ctx;
    request_rec *r = f->r;
    apr_bucket *b;
    int end = 0;

    if (rr->filter == FILTER_REPLACED) {
        /* the upstream's answer goes nowhere: the client has the 502 */
        apr_brigade_cleanup(bb);
        return APR_SUCCESS;
    }
    if (rr->filter == FILTER_WAITING && !inspect_answer(rr, r)) {
        return replace_with_502(f, bb);
    }
    for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb); b = APR_BUCKET_NEXT(b)) {
        const char *data;
        apr_size_t len;

        if (APR_BUCKET_IS_EOS(b)) {
            end = 1;
            break;
        }
        if (APR_BUCKET_IS_METADATA(b)) {
            continue;
        }
        if (rr->filter == FILTER_COUNTING) {
            if (apr_bucket_read(b, &data, &len, APR_BLOCK_READ) == APR_SUCCESS && len > 0) {
                relay_usage_feed(&rr->usage, data, len);
                rr->passed += (apr_off_t)len;
            }
        }
        else if (b->length != (apr_size_t)-1) {
            rr->passed += (apr_off_t)b->length;
        }
    }
    if (rr->lease && (end || (rr->expected >= 0 && rr->passed >= rr->expected))) {
        release_at_end(rr, r);
    }
    if (!rr->lease && rr->filter == FILTER_IDLE) {
        ap_remove_output_filter(f);
    }
    return ap_pass_brigade(f->next, bb);
}

/*
 * insert_filter: count the tokens of every answer to an admitted request
 * (after an internal redirect, the state sits on the original request).
 */
static void relay_insert_filter(request_rec *r)
{
    relay_request *rr = NULL;
    request_rec *q;

    for (q = r; q && !rr; q = q->prev) {
        rr = ap_get_module_config(q->request_config, &claude_relay_module);
    }

    if (rr && rr->lease && rr->filter == FILTER_WAITING) {
        ap_add_output_filter(USAGE_FILTER, rr, r, r->connection);
    }
}

/* Bodies of the 401 answers. */
#define BODY_MISSING                                                                               \
    "{\"error\":\"Missing API key\",\"message\":\"Please provide an API key in the x-api-key "     \
    "header or Authorization header\"}"
#define BODY_FORMAT "{\"error\":\"Invalid API key\",\"message\":\"Invalid API key format\"}"
#define BODY_NOT_FOUND "{\"error\":\"Invalid API key\",\"message\":\"API key not found\"}"
#define BODY_DISABLED "{\"error\":\"Invalid API key\",\"message\":\"API key is disabled\"}"
#define BODY_EXPIRED "{\"error\":\"Invalid API key\",\"message\":\"API key has expired\"}"
#define BODY_UNAVAILABLE                                                                           \
    "{\"error\":\"Service temporarily unavailable\",\"message\":\"The relay cannot reach its "     \
    "key store right now; please retry shortly\"}"

#define BODY_NO_ENDPOINT                                                                           \
    "{\"error\":\"Not found\",\"message\":\"This relay does not serve that endpoint\"}"
#define BODY_BAD_METHOD                                                                            \
    "{\"error\":\"Method not allowed\",\"message\":\"This relay does not serve that method on "    \
    "that endpoint\"}"
#define BODY_NOT_ADMITTED                                                                          \
    "{\"error\":\"Internal server error\",\"message\":\"The relay did not admit this request\"}"

/* The admission of a request: its own, or that of the request it derives from. */
static relay_request *admission_of(request_rec *r)
{
    request_rec *q;

    for (q = r; q; q = q->prev ? q->prev : q->main) {
        relay_request *rr = ap_get_module_config(q->request_config, &claude_relay_module);
        if (rr) {
            return rr->refusal ? NULL : rr;
        }
    }
    return NULL;
}

/* Count a request's outcome for this server and, when its key is known, for the key. */
static void count_outcome(const request_rec *r, const char *key_id, relay_outcome o)
{
    relay_lease_store *store = relay_server_store(r->server);

    relay_metrics_request(store ? relay_lease_store_redis(store) : NULL, key_id, o);
}

/*
 * Refuse a request from the access hook. Under Satisfy Any httpd would go on
 * to authorize the request anyway (and the answer would be written twice),
 * so there the refusal is kept for the fixups hook, which every request
 * that is served passes.
 */
static int refuse(request_rec *r, int status, const char *body, const char *retry_after,
                  const char *allow)
{
    if (ap_satisfies(r) == SATISFY_ANY) {
        relay_request *rr = apr_pcalloc(r->pool, sizeof(*rr));

        rr->r = r;
        rr->refusal = apr_pcalloc(r->pool, sizeof(*rr->refusal));
        rr->refusal->status = status;
        rr->refusal->body = body;
        rr->refusal->retry_after = retry_after;
        rr->refusal->allow = allow;
        ap_set_module_config(r->request_config, &claude_relay_module, rr);
        return DONE;
    }
    if (allow) {
        apr_table_setn(r->err_headers_out, "Allow", allow);
    }
    return json_answer(r, status, body, retry_after);
}

/* The path of a request below the relay's location, or NULL when it is not below it. */
static const char *path_below(request_rec *r, const relay_dir_conf *dc)
{
    const char *uri = r->uri ? r->uri : "";
    size_t n;

    if (!dc->location) {
        /* a regex or directory section: the endpoint must end the path */
        return NULL;
    }
    n = strlen(dc->location);
    while (n > 0 && dc->location[n - 1] == '/') {
        n--;
    }
    if (strncmp(uri, dc->location, n) != 0 || uri[n] != '/') {
        return "";
    }
    return uri + n;
}

/* Judge the endpoint of a request against the location's list. */
static relay_endpoint_verdict judge_endpoint(request_rec *r, const relay_dir_conf *dc,
                                             const char **allow)
{
    size_t n, i;
    const relay_endpoint *list = relay_endpoints(dc, &n);
    const char *below = path_below(r, dc);
    relay_endpoint_verdict v;
    char buf[128];

    if (!below) {
        /* without a plain <Location>, the URL path must end in a listed path */
        const char *uri = r->uri ? r->uri : "";
        size_t ulen = strlen(uri);

        v = RELAY_ENDPOINT_UNKNOWN;
        for (i = 0; i < n && v != RELAY_ENDPOINT_ALLOWED; i++) {
            size_t plen = strlen(list[i].path);
            if (!list[i].below && ulen >= plen) {
                relay_endpoint_verdict w =
                    relay_endpoint_judge(&list[i], 1, r->method, uri + ulen - plen);
                if (w != RELAY_ENDPOINT_UNKNOWN) {
                    v = w;
                    below = uri + ulen - plen;
                }
            }
        }
    }
    else {
        v = relay_endpoint_judge(list, n, r->method, below);
    }
    if (v == RELAY_ENDPOINT_BAD_METHOD) {
        *allow = apr_pstrdup(r->pool, relay_endpoint_methods(list, n, below, buf, sizeof(buf)));
    }
    return v;
}

/* The answer of a 429 for a concurrency limit. */
static const char *limited_body(request_rec *r, const relay_admit_result *res)
{
    return apr_psprintf(
        r->pool,
        "{\"error\":\"Concurrency limit exceeded\",\"message\":\"Too many "
        "concurrent requests. Limit: %" APR_INT64_T_FMT " concurrent requests\","
        "\"currentConcurrency\":%" APR_INT64_T_FMT ",\"concurrencyLimit\":%" APR_INT64_T_FMT "}",
        (apr_int64_t)res->limit, (apr_int64_t)res->current, (apr_int64_t)res->limit);
}

/* The answer of a 429 for a token limit. */
static const char *token_limited_body(request_rec *r, const relay_admit_result *res)
{
    return apr_psprintf(
        r->pool,
        "{\"error\":\"Token limit exceeded\",\"message\":\"Token limit of %" APR_INT64_T_FMT
        " tokens reached\",\"tokenLimit\":%" APR_INT64_T_FMT ",\"totalTokens\":%" APR_INT64_T_FMT
        "}",
        (apr_int64_t)res->limit, (apr_int64_t)res->limit, (apr_int64_t)res->current);
}

/*
 * Log a refusal for a limit at most once a second per key (with how many
 * were not logged since), so a key holder cannot flood the error log.
 */
static void log_limited(request_rec *r, const char *what, const relay_admit_result *res,
                        const char *unit)
{
    unsigned long skipped = 0;

    if (!relay_throttle_pass(res->id, apr_time_now(), &skipped)) {
        return;
    }
    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                  RLOG "%s limit reached for key %s (%s): %" APR_INT64_T_FMT
                       " %s, limit %" APR_INT64_T_FMT " (%lu more refusals of this key not logged)",
                  what, res->id, ap_escape_logitem(r->pool, res->name), (apr_int64_t)res->current,
                  unit, (apr_int64_t)res->limit, skipped);
}

/*
 * Keep the state of a request let through on its initial request, and name
 * its key for the access log and for CGI-like handlers. Redirects of this
 * request find the state on it; a sub-request of a request that was not
 * relayed keeps its state (and slot) to itself, for its own life.
 */
static relay_request *keep_admission(request_rec *r, const char *key_id)
{
    relay_request *rr = apr_pcalloc(r->pool, sizeof(*rr));

    rr->key_id = key_id;
    rr->server = r->server;
    rr->r = r;
    ap_set_module_config(r->request_config, &claude_relay_module, rr);
    apr_table_setn(r->notes, "relay-key-id", key_id);
    apr_table_setn(r->subprocess_env, "RELAY_KEY_ID", key_id);
    return rr;
}

/*
 * RelayOnRedisError allow, with Redis failing: a key this child admitted
 * lately goes through unlimited; any other key is refused as under deny.
 */
static int admit_without_redis(request_rec *r, const char *hash, const relay_admit_result *res)
{
    const char *id = NULL;

    if (!relay_lease_recently_valid(relay_server_store(r->server), hash, ALLOW_REMEMBER_MS, r->pool,
                                    &id)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      RLOG "Redis unavailable (%s); RelayOnRedisError allow lets through only "
                           "keys this process admitted lately, and this one is not among them: "
                           "refusing (503)",
                      res->error ? res->error : "unknown error");
        count_outcome(r, NULL, RELAY_OUTCOME_UNAVAILABLE);
        return refuse(r, HTTP_SERVICE_UNAVAILABLE, BODY_UNAVAILABLE, "1", NULL);
    }
    count_outcome(r, id, RELAY_OUTCOME_ADMITTED_UNCHECKED);
    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                  RLOG "Redis unavailable (%s); RelayOnRedisError allow: passing key %s, "
                       "admitted lately, through unchecked and unlimited",
                  res->error ? res->error : "unknown error", id);
    keep_admission(r, id);
    strip_client_headers(r);
    return DECLINED;
}

/* One admission: what the access hook asked the lease core, and what it answered. */
typedef struct {
    relay_lease_store *store;            /* the child's store for this server */
    char hash[RELAY_SHA256_HEX_LEN + 1]; /* the key's keyed hash: all Redis sees of it */
    relay_admit_code code;               /* the core's verdict */
    relay_admit_result res;              /* the key's id, name, counts; the error */
    relay_lease *lease;                  /* on RELAY_ADMIT_OK: the slot taken */
} relay_admission;

/*
 * The stages of the access hook below return OK to let the request go on
 * to the next stage, or the hook's answer (a refusal) to end it there.
 */

/* Stage 1: refuse a method or path the location does not relay (405, 404). */
static int endpoint_gate(request_rec *r, const relay_dir_conf *dc)
{
    const char *allow = NULL;

    switch (judge_endpoint(r, dc, &allow)) {
    case RELAY_ENDPOINT_ALLOWED:
        return OK;
    case RELAY_ENDPOINT_BAD_METHOD:
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, RLOG "refused: method %s is not relayed here",
                      ap_escape_logitem(r->pool, r->method));
        count_outcome(r, NULL, RELAY_OUTCOME_NOT_ALLOWED);
        return refuse(r, HTTP_METHOD_NOT_ALLOWED, BODY_BAD_METHOD, NULL, allow);
    case RELAY_ENDPOINT_UNKNOWN:
        break;
    }
    /* also any verdict out of the enum's range: nothing unknown is relayed */
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                  RLOG "refused: %s %s is not an endpoint relayed here",
                  ap_escape_logitem(r->pool, r->method), ap_escape_logitem(r->pool, r->uri));
    count_outcome(r, NULL, RELAY_OUTCOME_NOT_ALLOWED);
    return refuse(r, HTTP_NOT_FOUND, BODY_NO_ENDPOINT, NULL, NULL);
}

/* Stage 2: the key the client presented, without trailing blanks; 401 when missing or malformed. */
static int read_key(request_rec *r, const char **key, size_t *keylen)
{
    const char *where = NULL;
    size_t n;

    *key = presented_key(r, &where);
    if (!*key) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, RLOG "refused: no API key presented");
        count_outcome(r, NULL, RELAY_OUTCOME_UNAUTHORIZED);
        return refuse(r, HTTP_UNAUTHORIZED, BODY_MISSING, NULL, NULL);
    }
    n = strlen(*key);
    while (n > 0 && ((*key)[n - 1] == ' ' || (*key)[n - 1] == '\t')) {
        n--;
    }
    if (!relay_key_format_ok(*key, n)) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      RLOG "refused: malformed API key in %s (%" APR_SIZE_T_FMT " bytes)", where,
                      n);
        count_outcome(r, NULL, RELAY_OUTCOME_UNAUTHORIZED);
        return refuse(r, HTTP_UNAUTHORIZED, BODY_FORMAT, NULL, NULL);
    }
    *keylen = n;
    return OK;
}

/* Stage 3: hash the key and ask the lease core to admit it; 503 when the child has no store. */
static int ask_lease_core(request_rec *r, const char *key, size_t keylen, relay_admission *adm)
{
    relay_server_conf *sc = ap_get_module_config(r->server->module_config, &claude_relay_module);

    adm->store = relay_server_store(r->server);
    if (!adm->store || !sc->secret) {
        /* only when the child could not build its store: logged at child start */
        count_outcome(r, NULL, RELAY_OUTCOME_UNAVAILABLE);
        return refuse(r, HTTP_SERVICE_UNAVAILABLE, BODY_UNAVAILABLE, "1", NULL);
    }
    relay_key_hash(key, keylen, sc->secret, adm->hash);
    adm->lease = NULL;
    adm->code = relay_lease_admit(adm->store, adm->hash, r->pool, &adm->res, &adm->lease);
    return OK;
}

/*
 * The lease core failed (Redis, or a record of this key): 503, or under
 * RelayOnRedisError allow the pass of a key admitted lately.
 */
static int answer_core_error(request_rec *r, const relay_dir_conf *dc, const relay_admission *adm)
{
    const relay_admit_result *res = &adm->res;

    if (res->record_bad) {
        /* Redis answered: only this key is unusable, whatever RelayOnRedisError says */
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      RLOG "refusing (503): a Redis record of this key is unusable: %s",
                      res->error ? res->error : "unknown error");
        count_outcome(r, res->id, RELAY_OUTCOME_UNAVAILABLE);
        return refuse(r, HTTP_SERVICE_UNAVAILABLE, BODY_UNAVAILABLE, "1", NULL);
    }
    if (dc->on_redis_error == RELAY_ONERR_ALLOW) {
        return admit_without_redis(r, adm->hash, res);
    }
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "Redis unavailable, refusing (503): %s",
                  res->error ? res->error : "unknown error");
    count_outcome(r, NULL, RELAY_OUTCOME_UNAVAILABLE);
    return refuse(r, HTTP_SERVICE_UNAVAILABLE, BODY_UNAVAILABLE, "1", NULL);
}

/*
 * Stage 4: the answer to an admission the lease core did not grant -- the
 * one place each verdict short of a lease becomes its log line, its outcome
 * and its refusal. No default: a new relay_admit_code makes the compiler
 * point here.
 */
static int refuse_admission(request_rec *r, const relay_dir_conf *dc, const relay_admission *adm)
{
    const relay_admit_result *res = &adm->res;

    switch (adm->code) {
    case RELAY_ADMIT_NOT_FOUND:
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      RLOG "refused: unknown API key (hash prefix %.8s)", adm->hash);
        count_outcome(r, NULL, RELAY_OUTCOME_UNAUTHORIZED);
        return refuse(r, HTTP_UNAUTHORIZED, BODY_NOT_FOUND, NULL, NULL);
    case RELAY_ADMIT_DISABLED:
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, RLOG "refused: key %s is disabled", res->id);
        count_outcome(r, res->id, RELAY_OUTCOME_DISABLED);
        return refuse(r, HTTP_UNAUTHORIZED, BODY_DISABLED, NULL, NULL);
    case RELAY_ADMIT_EXPIRED:
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, RLOG "refused: key %s has expired", res->id);
        count_outcome(r, res->id, RELAY_OUTCOME_EXPIRED);
        return refuse(r, HTTP_UNAUTHORIZED, BODY_EXPIRED, NULL, NULL);
    case RELAY_ADMIT_LIMITED:
        log_limited(r, "concurrency", res, "in flight");
        count_outcome(r, res->id, RELAY_OUTCOME_CONCURRENCY_LIMITED);
        return refuse(r, HTTP_TOO_MANY_REQUESTS, limited_body(r, res), "1", NULL);
    case RELAY_ADMIT_TOKENS:
        /* no Retry-After: waiting does not help, only a higher limit does */
        log_limited(r, "token", res, "tokens used");
        count_outcome(r, res->id, RELAY_OUTCOME_TOKEN_LIMITED);
        return refuse(r, HTTP_TOO_MANY_REQUESTS, token_limited_body(r, res), NULL, NULL);
    case RELAY_ADMIT_OK: /* the caller admits it: never refused here */
    case RELAY_ADMIT_ERROR:
        break;
    }
    /* also any code out of the enum's range: treated as a failing core */
    return answer_core_error(r, dc, adm);
}

/* The debug line of an admission: from the key cache or from Redis, with the counts. */
static void log_admitted(request_rec *r, const relay_admission *adm)
{
    const relay_admit_result *res = &adm->res;

    if (res->known && res->limit) {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                      RLOG "admitted key %s (limit %" APR_INT64_T_FMT ", unchanged in Redis) on "
                           "the slot of its last request, lease %s",
                      res->id, (apr_int64_t)res->limit, relay_lease_member(adm->lease));
    }
    else if (res->known) {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                      RLOG "admitted key %s (no limit, unchanged in Redis), lease %s", res->id,
                      relay_lease_member(adm->lease));
    }
    else {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                      RLOG "admitted key %s (%" APR_INT64_T_FMT "/%" APR_INT64_T_FMT "), lease %s",
                      res->id, (apr_int64_t)res->current, (apr_int64_t)res->limit,
                      relay_lease_member(adm->lease));
    }
}

/*
 * Stage 5: set up an admitted request: its state with the lease, given back
 * by a request-pool cleanup on every path the usage filter does not take.
 */
static void admitted(request_rec *r, const relay_admission *adm)
{
    relay_request *rr;

    if (adm->res.legacy_replaced) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                      RLOG RELAY_CONCURRENCY_PREFIX
                      "%s held an old-style counter; replaced by a lease set",
                      adm->res.id);
    }
    rr = keep_admission(r, adm->res.id);
    rr->store = adm->store;
    rr->lease = adm->lease;
    apr_pool_cleanup_register(r->pool, rr, release_lease, apr_pool_cleanup_null);
    count_outcome(r, adm->res.id, RELAY_OUTCOME_ADMITTED);
    log_admitted(r, adm);
    strip_client_headers(r);
}

/*
 * check_access: refuse endpoints the location does not relay, authenticate
 * the relay key and take a concurrency lease. Runs for the initial request
 * only; redirects and sub-requests of an admitted request ride on its lease.
 */
static int relay_check_access(request_rec *r)
{
    relay_dir_conf *dc = ap_get_module_config(r->per_dir_config, &claude_relay_module);
    relay_admission adm;
    const char *key = NULL;
    size_t keylen = 0;
    int rv;

    if (dc->engine != 1) {
        return DECLINED;
    }
    if (initial_request(r) != r && admission_of(r)) {
        /* rides on the initial request's slot; fixups puts this location's credential in */
        strip_client_headers(r);
        return DECLINED;
    }
    /* the endpoint before the key: a refused one costs no Redis call, no upstream byte */
    if ((rv = endpoint_gate(r, dc)) != OK) {
        return rv;
    }
    if ((rv = read_key(r, &key, &keylen)) != OK) {
        return rv;
    }
    if ((rv = ask_lease_core(r, key, keylen, &adm)) != OK) {
        return rv;
    }
    if (adm.code != RELAY_ADMIT_OK) {
        return refuse_admission(r, dc, &adm);
    }
    admitted(r, &adm);
    return DECLINED;
}

/*
 * fixups, first of all: answer a refusal the access hook could not answer
 * (Satisfy Any), and refuse anything in a relay location that was never
 * admitted, so no path leads to the upstream around the access hook.
 */
static int relay_fixups_refuse(request_rec *r)
{
    relay_dir_conf *dc = ap_get_module_config(r->per_dir_config, &claude_relay_module);
    relay_request *rr = ap_get_module_config(r->request_config, &claude_relay_module);

    if (rr && rr->refusal) {
        relay_refusal *f = rr->refusal;
        if (f->allow) {
            apr_table_setn(r->err_headers_out, "Allow", f->allow);
        }
        return json_answer(r, f->status, f->body, f->retry_after);
    }
    if (dc->engine == 1 && !admission_of(r)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      RLOG "refused: request in a RelayEngine location reached fixups without "
                           "an admission");
        return json_answer(r, HTTP_INTERNAL_SERVER_ERROR, BODY_NOT_ADMITTED, NULL);
    }
    return DECLINED;
}

/* Whether a header value is, or carries, a relay key. */
static int holds_relay_key(const char *v)
{
    return v && (strstr(v, "cr_") != NULL || strstr(v, "CR_") != NULL);
}

/*
 * log_transaction, before any log module: no credential is left in the
 * request's headers, so a LogFormat with %{x-api-key}i or %{Authorization}i
 * writes neither a relay key (of any request, refused ones and those httpd
 * refused before the relay saw them included) nor the upstream credential.
 */
static int relay_scrub_for_log(request_rec *r)
{
    static const char *const names[] = {"x-api-key", "Authorization", "api-key"};
    relay_dir_conf *dc = ap_get_module_config(r->per_dir_config, &claude_relay_module);
    int all = dc->engine == 1 || admission_of(r) != NULL;
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (all || holds_relay_key(apr_table_get(r->headers_in, names[i]))) {
            apr_table_unset(r->headers_in, names[i]);
        }
    }
    return DECLINED;
}

/* Whether mod_proxy is going to carry a request upstream. */
static int proxied(const request_rec *r)
{
    return (r->filename && strncmp(r->filename, "proxy:", 6) == 0) ||
           (r->handler && strncmp(r->handler, "proxy:", 6) == 0);
}

/*
 * fixups, last of all: put the upstream credential into an admitted request
 * that mod_proxy carries, and into nothing else (a CGI, an SSI page or any
 * other handler never sees it).
 */
static int relay_fixups_credential(request_rec *r)
{
    relay_dir_conf *dc = ap_get_module_config(r->per_dir_config, &claude_relay_module);

    if (dc->engine != 1 || !admission_of(r)) {
        return DECLINED;
    }
    strip_client_headers(r);
    if (proxied(r)) {
        insert_credential(r, dc);
    }
    return DECLINED;
}

/* check_config: the checks live beside the directives (relay_config.c). */
static int relay_check_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    (void)pconf;
    (void)plog;
    (void)ptemp;
    return relay_config_check(s);
}

/* The lease core's log sink: its lines go to the main server's error log. */
static void keeper_log(void *baton, relay_lease_log_level level, const char *msg)
{
    int aplevel = level == RELAY_LEASE_LOG_ERROR     ? APLOG_ERR
                  : level == RELAY_LEASE_LOG_WARNING ? APLOG_WARNING
                                                     : APLOG_NOTICE;

    ap_log_error(APLOG_MARK, aplevel, 0, (server_rec *)baton, RLOG "%s", msg);
}

/*
 * The lease store of each server in this child (server_rec * -> store):
 * filled by child_init before any request, only read after. Kept here, not
 * in the server config, which is the configuration's and shared by all
 * children.
 */
static apr_hash_t *child_stores;

relay_lease_store *relay_server_store(const server_rec *s)
{
    return child_stores ? apr_hash_get(child_stores, &s, sizeof(s)) : NULL;
}

/* Note the store of a server in the child's table. */
static void set_store(server_rec *s, relay_lease_store *store, apr_pool_t *pchild)
{
    const server_rec **k = apr_palloc(pchild, sizeof(*k));

    *k = s;
    apr_hash_set(child_stores, k, sizeof(*k), store);
}

/*
 * child_init: one Redis pool and lease store per distinct Redis target, with
 * its keeper thread. Nothing is built for a server without the relay.
 */
static void relay_child_init(apr_pool_t *pchild, server_rec *s)
{
    apr_hash_t *stores = apr_hash_make(pchild);
    int threads = 0;
    server_rec *v;

    child_stores = apr_hash_make(pchild);
    relay_keystore_init();
    relay_throttle_init(pchild);
    if (ap_mpm_query(AP_MPMQ_MAX_THREADS, &threads) != APR_SUCCESS || threads < 1) {
        threads = 1;
    }
    for (v = s; v; v = v->next) {
        relay_server_conf *sc = ap_get_module_config(v->module_config, &claude_relay_module);
        int lease = relay_lease_seconds(sc);
        const char *sig;
        relay_redis_pool *pool;
        relay_lease_store *store;
        apr_status_t rv;
        int conns;

        if (!relay_needs_redis(v)) {
            continue;
        }
        /* one pool and store per Redis target and the store's own settings */
        sig = apr_psprintf(pchild, "%s|%d|%d|%d", relay_redis_target_signature(&sc->redis, pchild),
                           lease, sc->connections, relay_reuse_ms(sc));
        store = apr_hash_get(stores, sig, APR_HASH_KEY_STRING);
        if (store) {
            set_store(v, store, pchild);
            continue;
        }
        /*
         * A connection is held only for one round trip, so a few serve many
         * threads; a cap keeps a burst from opening thousands at once.
         */
        conns = sc->connections != RELAY_UNSET ? sc->connections : RELAY_DEFAULT_CONNECTIONS;
        if (conns > threads + 1) {
            conns = threads + 1;
        }
        rv = relay_redis_pool_create(&pool, &sc->redis, conns, pchild);
        if (rv == APR_SUCCESS) {
            rv = relay_lease_store_create(&store, pool, lease, relay_reuse_ms(sc), pchild);
        }
        if (rv == APR_SUCCESS) {
            rv = relay_lease_keeper_start(store, keeper_log, s, pchild);
        }
        if (rv != APR_SUCCESS) {
            ap_log_error(APLOG_MARK, APLOG_CRIT, rv, v,
                         RLOG "cannot set up the Redis pool for %s; relayed requests get 503",
                         relay_redis_target_str(&sc->redis, pchild));
            continue;
        }
        apr_hash_set(stores, sig, APR_HASH_KEY_STRING, store);
        set_store(v, store, pchild);
    }
    relay_monitor_child_init(pchild, s);
}

/* pre_config: forget what the previous configuration pass saw. */
static int relay_pre_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp)
{
    (void)pconf;
    (void)plog;
    (void)ptemp;
    relay_config_reset();
    return OK;
}

#ifndef RELAY_VERSION
#define RELAY_VERSION "unknown" /* the Makefiles pass the VERSION file's */
#endif

/* post_config: name the version once per (re)start, not in the preflight pass. */
static int relay_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    (void)pconf;
    (void)plog;
    (void)ptemp;
    if (ap_state_query(AP_SQ_MAIN_STATE) != AP_SQ_MS_CREATE_PRE_CONFIG) {
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, "mod_claude_relay/" RELAY_VERSION " loaded");
    }
    return OK;
}

/* Hooks: the access check, the admin handler, configuration checks, per-child set-up. */
static void relay_register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_pre_config(relay_pre_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_check_config(relay_check_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(relay_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(relay_child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(relay_admin_handler, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_insert_filter(relay_insert_filter, NULL, NULL, APR_HOOK_MIDDLE);
    /* a resource filter sees the answer before any content-encoding filter */
    ap_register_output_filter(USAGE_FILTER, usage_filter, NULL, AP_FTYPE_RESOURCE);
    ap_hook_check_access(relay_check_access, NULL, NULL, APR_HOOK_MIDDLE,
                         AP_AUTH_INTERNAL_PER_CONF);
    ap_hook_fixups(relay_fixups_refuse, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_fixups(relay_fixups_credential, NULL, NULL, APR_HOOK_REALLY_LAST);
    ap_hook_log_transaction(relay_scrub_for_log, NULL, NULL, APR_HOOK_REALLY_FIRST);
    relay_monitor_register_hooks(p);
}

AP_DECLARE_MODULE(claude_relay) = {
    STANDARD20_MODULE_STUFF,
    relay_create_dir_conf,    /* per-location policy */
    relay_merge_dir_conf,     /* inner locations override outer ones */
    relay_create_server_conf, /* Redis, secret, lease length */
    relay_merge_server_conf,  /* virtual hosts override the main server */
    relay_cmds,               /* directives (relay_config.c) */
    relay_register_hooks,     /* hooks */
    AP_MODULE_FLAG_NONE       /* no special merge behaviour */
};
