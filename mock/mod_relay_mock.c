/*
 * mod_relay_mock.c - a mock Claude API upstream for tests, demos and benchmarks.
 *
 * It answers /v1/messages (JSON and SSE), /v1/messages/count_tokens,
 * /v1/models and /v1/models/{id} in the shapes the real API uses, so the
 * relay can be exercised without network access or cost.  Request headers (x-mock-*) let a test
 * script the upstream's behaviour per request: latency, stream length,
 * injected failures and usage figures.  With RelayMockLog set, every request
 * leaves a "start" and an "end" JSON line so tests can check what the relay
 * forwarded and how many requests were in flight at the same time.
 *
 * Build: apxs -c mock/mod_relay_mock.c -ljson-c
 */
#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"

#include "apr_atomic.h"
#include "apr_file_io.h"
#include "apr_lib.h"
#include "apr_strings.h"
#include "apr_time.h"

#include <json-c/json.h>
#include <stdlib.h>
#include <poll.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define MOCK_HANDLER "claude-relay-mock"
#define MOCK_MAX_BODY (1024 * 1024)
#define MOCK_LOG_BODY_MAX 65536
#define MOCK_SLEEP_STEP apr_time_from_msec(50)
/* A hang-up wakes poll() at once, so waiting longer costs no reaction time;
 * 50 ms wake-ups in every held thread cost a CPU at 10,000 streams. */
#define MOCK_POLL_MAX apr_time_from_sec(1)
#define MOCK_DEFAULT_MODEL "claude-sonnet-4-20250514"
#define MOCK_JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

module AP_MODULE_DECLARE_DATA relay_mock_module;

typedef struct {
    const char *log_path; /* NULL: no request log */
    const char *api_key;  /* NULL: accept any credential */
} mock_srv_cfg;

/* Per-request state shared by the handler, the log writer and the cleanup. */
typedef struct {
    request_rec *r;
    const mock_srv_cfg *cfg;
    const char *id;
    const char *tag;
    int start_logged;
    int end_logged;
    int events_sent;
} mock_req;

typedef struct {
    apr_int64_t input, output, cache_create, cache_read;
} mock_usage;

/* Salt chosen per child so ids stay unique when a pid is reused after a restart. */
static apr_uint32_t mock_salt;
static volatile apr_uint32_t mock_counter;

/* ------------------------------------------------------------------ */
/* Configuration                                                       */
/* ------------------------------------------------------------------ */

static void *mock_create_srv_cfg(apr_pool_t *p, server_rec *s)
{
    (void)s;
    return apr_pcalloc(p, sizeof(mock_srv_cfg));
}

/* A vhost only needs to name what differs from the main server. */
static void *mock_merge_srv_cfg(apr_pool_t *p, void *basev, void *addv)
{
    mock_srv_cfg *base = basev, *add = addv, *cfg = apr_pcalloc(p, sizeof(*cfg));

    cfg->log_path = add->log_path ? add->log_path : base->log_path;
    cfg->api_key = add->api_key ? add->api_key : base->api_key;
    return cfg;
}

/* RelayMockLog: relative paths are taken from ServerRoot, like httpd's own logs. */
static const char *mock_set_log(cmd_parms *cmd, void *dummy, const char *arg)
{
    mock_srv_cfg *cfg = ap_get_module_config(cmd->server->module_config, &relay_mock_module);
    (void)dummy;
    if (!*arg) {
        return "RelayMockLog needs a file path";
    }
    cfg->log_path = ap_server_root_relative(cmd->pool, arg);
    if (!cfg->log_path) {
        return apr_pstrcat(cmd->pool, "RelayMockLog: invalid file path ", arg, NULL);
    }
    return NULL;
}

/* RelayMockApiKey: whitespace could never arrive intact in a header, so refuse it early. */
static const char *mock_set_key(cmd_parms *cmd, void *dummy, const char *arg)
{
    mock_srv_cfg *cfg = ap_get_module_config(cmd->server->module_config, &relay_mock_module);
    const char *c;

    (void)dummy;
    if (!*arg) {
        return "RelayMockApiKey needs a non-empty key";
    }
    for (c = arg; *c; c++) {
        if (apr_isspace(*c) || apr_iscntrl(*c)) {
            return "RelayMockApiKey must not contain spaces or control characters";
        }
    }
    cfg->api_key = arg;
    return NULL;
}

static const command_rec mock_cmds[] = {
    AP_INIT_TAKE1("RelayMockLog", mock_set_log, NULL, RSRC_CONF,
                  "File that receives one JSON line per request start and end"),
    AP_INIT_TAKE1("RelayMockApiKey", mock_set_key, NULL, RSRC_CONF,
                  "Credential clients must send as x-api-key or Bearer token"),
    {NULL}};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

/* pid + per-child salt + counter: unique across threads, children and restarts. */
static const char *mock_make_id(apr_pool_t *p)
{
    apr_uint32_t n = apr_atomic_inc32(&mock_counter);

    return apr_psprintf(p, "%06lx%08x%08x", (unsigned long)getpid(), (unsigned)mock_salt,
                        (unsigned)n);
}

/* Bad values fall back to the default; out-of-range numbers are clamped. */
static apr_int64_t mock_hdr_int(request_rec *r, const char *name, apr_int64_t def, apr_int64_t lo,
                                apr_int64_t hi)
{
    const char *v = apr_table_get(r->headers_in, name);
    char *end;
    apr_int64_t n;

    if (!v) {
        return def;
    }
    while (apr_isspace(*v)) {
        v++;
    }
    if (!*v) {
        return def;
    }
    n = apr_strtoi64(v, &end, 10);
    while (apr_isspace(*end)) {
        end++;
    }
    if (*end || end == v) {
        return def;
    }
    return n < lo ? lo : (n > hi ? hi : n);
}

static int mock_uri_ends(const char *uri, const char *suffix)
{
    apr_size_t ul = strlen(uri), sl = strlen(suffix);

    return ul >= sl && strcmp(uri + ul - sl, suffix) == 0;
}

/* The {id} of a path ending in /v1/models/{id} (one non-empty segment), or NULL. */
static const char *mock_model_in_uri(const char *uri)
{
    static const char dir[] = "/v1/models";
    const char *slash = strrchr(uri, '/');
    apr_size_t n = sizeof(dir) - 1;

    if (!slash || !slash[1] || (apr_size_t)(slash - uri) < n || strncmp(slash - n, dir, n) != 0) {
        return NULL;
    }
    return slash + 1;
}

/* Float seconds, but printed from integers so no microsecond is lost to rounding. */
static json_object *mock_json_time(apr_pool_t *p)
{
    apr_time_t now = apr_time_now();
    const char *txt =
        apr_psprintf(p, "%" APR_TIME_T_FMT ".%06ld", apr_time_sec(now), (long)apr_time_usec(now));

    return json_object_new_double_s((double)now / APR_USEC_PER_SEC, txt);
}

/* Detects a vanished client during sleeps, so aborts are seen without a write. */
static int mock_client_gone(conn_rec *c)
{
    apr_socket_t *sock;
    int eof = 0;

    if (c->aborted) {
        return 1;
    }
    sock = ap_get_conn_socket(c);
    if (sock && (apr_socket_atreadeof(sock, &eof) != APR_SUCCESS || eof)) {
        c->aborted = 1;
        return 1;
    }
    return 0;
}

/*
 * Sleep, but wake at once when the client's socket turns readable (it hung
 * up), so a closed connection is seen as the end of the request right away.
 * Where that cannot be watched, sleep in short steps instead.
 */
static void mock_wait(conn_rec *c, apr_interval_time_t step)
{
    apr_socket_t *sock = ap_get_conn_socket(c);
    apr_os_sock_t fd;
    struct pollfd pfd;

    if (!sock || apr_os_sock_get(&fd, sock) != APR_SUCCESS) {
        apr_sleep(step > MOCK_SLEEP_STEP ? MOCK_SLEEP_STEP : step);
        return;
    }
    pfd.fd = fd;
    pfd.events = POLLIN | POLLRDHUP;
    pfd.revents = 0;
    if (poll(&pfd, 1, (int)(step / 1000) + 1) > 0) {
        int eof = 0;
        if (apr_socket_atreadeof(sock, &eof) != APR_SUCCESS || eof) {
            c->aborted = 1;
        }
        else {
            /* readable but not closed (pipelined bytes): do not spin */
            apr_sleep(step > MOCK_SLEEP_STEP ? MOCK_SLEEP_STEP : step);
        }
    }
}

/* Absolute deadlines keep a long stream's total duration from drifting. */
static int mock_sleep_until(request_rec *r, apr_time_t deadline)
{
    apr_time_t now = apr_time_now();

    if (deadline <= now) {
        return r->connection->aborted ? -1 : 0;
    }
    while (now < deadline) {
        apr_interval_time_t step = deadline - now;

        if (mock_client_gone(r->connection)) {
            return -1;
        }
        mock_wait(r->connection, step > MOCK_POLL_MAX ? MOCK_POLL_MAX : step);
        now = apr_time_now();
    }
    return mock_client_gone(r->connection) ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* Request log                                                         */
/* ------------------------------------------------------------------ */

/*
 * One open/write/close per line: O_APPEND plus a single write keeps lines
 * from parallel children whole, and reopening copes with tests that delete
 * the file between cases.  A subpool keeps the request pool from growing,
 * and is safe here because this also runs from a pre-cleanup.
 */
static void mock_log_write(mock_req *mr, json_object *obj)
{
    request_rec *r = mr->r;
    apr_pool_t *tmp;
    apr_file_t *f;
    apr_status_t rv;
    size_t len;
    apr_size_t n;
    const char *js = json_object_to_json_string_length(obj, MOCK_JSON_FLAGS, &len);
    char *line;

    if (apr_pool_create(&tmp, r->pool) != APR_SUCCESS) {
        return;
    }
    line = apr_palloc(tmp, len + 1);
    memcpy(line, js, len);
    line[len] = '\n';
    rv = apr_file_open(&f, mr->cfg->log_path, APR_FOPEN_APPEND | APR_FOPEN_CREATE | APR_FOPEN_WRITE,
                       APR_FPROT_OS_DEFAULT, tmp);
    if (rv == APR_SUCCESS) {
        n = len + 1;
        rv = apr_file_write(f, line, &n);
        if (rv == APR_SUCCESS && n != len + 1) {
            rv = APR_EGENERAL;
        }
        apr_file_close(f);
    }
    if (rv != APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, rv, r, "relay_mock: cannot write RelayMockLog %s",
                      mr->cfg->log_path);
    }
    apr_pool_destroy(tmp);
}

static json_object *mock_log_base(mock_req *mr, const char *event)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "event", json_object_new_string(event));
    json_object_object_add(o, "time", mock_json_time(mr->r->pool));
    json_object_object_add(o, "pid", json_object_new_int64((int64_t)getpid()));
    json_object_object_add(o, "id", json_object_new_string(mr->id));
    json_object_object_add(o, "tag", json_object_new_string(mr->tag));
    return o;
}

static int mock_merge_hdr(void *rec, const char *key, const char *val)
{
    apr_table_merge((apr_table_t *)rec, key, val);
    return 1;
}

static void mock_log_start(mock_req *mr, const char *body, apr_size_t body_len, int stream)
{
    request_rec *r = mr->r;
    json_object *o, *hdrs;
    apr_table_t *merged;
    const apr_array_header_t *arr;
    const apr_table_entry_t *e;
    int i;

    if (!mr->cfg->log_path) {
        return;
    }
    /* A case-insensitive table joins repeated names the way HTTP defines it. */
    merged = apr_table_make(r->pool, 16);
    apr_table_do(mock_merge_hdr, merged, r->headers_in, NULL);
    hdrs = json_object_new_object();
    arr = apr_table_elts(merged);
    e = (const apr_table_entry_t *)arr->elts;
    for (i = 0; i < arr->nelts; i++) {
        json_object_object_add(hdrs, e[i].key, json_object_new_string(e[i].val));
    }

    o = mock_log_base(mr, "start");
    json_object_object_add(o, "method", json_object_new_string(r->method));
    json_object_object_add(o, "uri", json_object_new_string(r->uri));
    /* the query string as sent (e.g. Claude Code's ?beta=true), null without one */
    json_object_object_add(o, "query", r->args ? json_object_new_string(r->args) : NULL);
    json_object_object_add(o, "headers", hdrs);
    json_object_object_add(o, "body_length", json_object_new_int64((int64_t)body_len));
    json_object_object_add(
        o, "body",
        body_len <= MOCK_LOG_BODY_MAX ? json_object_new_string_len(body, (int)body_len) : NULL);
    json_object_object_add(o, "stream", json_object_new_boolean(stream));
    mock_log_write(mr, o);
    json_object_put(o);
    mr->start_logged = 1;
}

/* Guarded so the handler and the pool cleanup together write exactly one end line. */
static void mock_log_end(mock_req *mr, int status, int aborted, int events)
{
    json_object *o;

    if (!mr->start_logged || mr->end_logged) {
        return;
    }
    mr->end_logged = 1;
    o = mock_log_base(mr, "end");
    json_object_object_add(o, "status", json_object_new_int(status));
    json_object_object_add(o, "aborted", json_object_new_boolean(aborted));
    json_object_object_add(o, "events_sent", json_object_new_int(events));
    mock_log_write(mr, o);
    json_object_put(o);
}

/* Safety net for any path that returns without logging its end. */
static apr_status_t mock_end_cleanup(void *data)
{
    mock_req *mr = data;

    mock_log_end(mr, mr->r->status, mr->r->connection->aborted, mr->events_sent);
    return APR_SUCCESS;
}

/* ------------------------------------------------------------------ */
/* Responses                                                           */
/* ------------------------------------------------------------------ */

/* httpd only knows registered status codes; give the rest (e.g. 529) a line of their own. */
static void mock_set_status(request_rec *r, int status)
{
    const char *line = ap_get_status_line(status);

    r->status = status;
    if (!line || atoi(line) != status) {
        r->status_line =
            apr_psprintf(r->pool, "%d %s", status, status == 529 ? "Overloaded" : "Mock Error");
    }
}

/* The end line goes out before the body so a log reader never sees it late. */
/*
 * x-mock-content-encoding: label the answer with that Content-Encoding (the
 * body stays as it is), so tests see how the relay treats encoded answers.
 */
static void mock_content_encoding(request_rec *r)
{
    const char *enc = apr_table_get(r->headers_in, "x-mock-content-encoding");

    if (enc && *enc && strlen(enc) < 32 && !strpbrk(enc, "\r\n")) {
        apr_table_setn(r->headers_out, "Content-Encoding", enc);
    }
}

static int mock_send_json(mock_req *mr, int status, json_object *body)
{
    request_rec *r = mr->r;
    size_t len;
    const char *js = json_object_to_json_string_length(body, MOCK_JSON_FLAGS, &len);

    mock_set_status(r, status);
    ap_set_content_type(r, "application/json");
    mock_content_encoding(r);
    mock_log_end(mr, status, 0, 0);
    ap_rwrite(js, (int)len, r);
    json_object_put(body);
    return OK;
}

static int mock_send_error(mock_req *mr, int status, const char *type, const char *msg)
{
    json_object *o = json_object_new_object(), *err = json_object_new_object();

    json_object_object_add(err, "type", json_object_new_string(type));
    json_object_object_add(err, "message", json_object_new_string(msg));
    json_object_object_add(o, "type", json_object_new_string("error"));
    json_object_object_add(o, "error", err);
    return mock_send_json(mr, status, o);
}

static void mock_add_usage(json_object *o, const mock_usage *u, apr_int64_t output)
{
    json_object *us = json_object_new_object();

    json_object_object_add(us, "input_tokens", json_object_new_int64(u->input));
    json_object_object_add(us, "cache_creation_input_tokens",
                           json_object_new_int64(u->cache_create));
    json_object_object_add(us, "cache_read_input_tokens", json_object_new_int64(u->cache_read));
    json_object_object_add(us, "output_tokens", json_object_new_int64(output));
    json_object_object_add(o, "usage", us);
}

static json_object *mock_message(mock_req *mr, const char *model, const mock_usage *u, int final)
{
    json_object *m = json_object_new_object(), *content = json_object_new_array();

    json_object_object_add(
        m, "id", json_object_new_string(apr_pstrcat(mr->r->pool, "msg_mock_", mr->id, NULL)));
    json_object_object_add(m, "type", json_object_new_string("message"));
    json_object_object_add(m, "role", json_object_new_string("assistant"));
    json_object_object_add(m, "model", json_object_new_string(model));
    if (final) {
        json_object *block = json_object_new_object();

        json_object_object_add(block, "type", json_object_new_string("text"));
        json_object_object_add(block, "text",
                               json_object_new_string("Hello from the mock upstream."));
        json_object_array_add(content, block);
    }
    json_object_object_add(m, "content", content);
    json_object_object_add(m, "stop_reason", final ? json_object_new_string("end_turn") : NULL);
    json_object_object_add(m, "stop_sequence", NULL);
    mock_add_usage(m, u, final ? u->output : 1);
    return m;
}

static int mock_sse_event(mock_req *mr, const char *name, const char *data)
{
    request_rec *r = mr->r;

    if (r->connection->aborted ||
        ap_rvputs(r, "event: ", name, "\ndata: ", data, "\n\n", NULL) < 0 || ap_rflush(r) < 0 ||
        r->connection->aborted) {
        return -1;
    }
    mr->events_sent++;
    return 0;
}

static int mock_sse_json(mock_req *mr, const char *name, json_object *data)
{
    int rc = mock_sse_event(mr, name, json_object_to_json_string_ext(data, MOCK_JSON_FLAGS));

    json_object_put(data);
    return rc;
}

/*
 * The hold is spread over E+1 gaps: before each delta and before the closing
 * events, so the stream's length tracks x-mock-hold-ms whatever E is.
 */
static int mock_send_stream(mock_req *mr, const char *model, const mock_usage *u,
                            apr_int64_t events, apr_int64_t hold_ms)
{
    request_rec *r = mr->r;
    apr_time_t t0 = apr_time_now();
    apr_int64_t hold_us = hold_ms * 1000, k;
    json_object *o, *d;
    char buf[160];

    r->status = HTTP_OK;
    ap_set_content_type(r, "text/event-stream");
    apr_table_setn(r->headers_out, "Cache-Control", "no-cache");
    mock_content_encoding(r);

    o = json_object_new_object();
    json_object_object_add(o, "type", json_object_new_string("message_start"));
    json_object_object_add(o, "message", mock_message(mr, model, u, 0));
    if (mock_sse_json(mr, "message_start", o) < 0 ||
        mock_sse_event(mr, "content_block_start",
                       "{\"type\":\"content_block_start\",\"index\":0,"
                       "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}") < 0 ||
        mock_sse_event(mr, "ping", "{\"type\":\"ping\"}") < 0) {
        goto gone;
    }
    for (k = 1; k <= events; k++) {
        if (mock_sleep_until(r, t0 + hold_us * k / (events + 1)) < 0) {
            goto gone;
        }
        apr_snprintf(buf, sizeof(buf),
                     "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
                     "{\"type\":\"text_delta\",\"text\":\"word%" APR_INT64_T_FMT " \"}}",
                     k);
        if (mock_sse_event(mr, "content_block_delta", buf) < 0) {
            goto gone;
        }
    }
    if (mock_sleep_until(r, t0 + hold_us) < 0 ||
        mock_sse_event(mr, "content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}") <
            0) {
        goto gone;
    }
    o = json_object_new_object();
    d = json_object_new_object();
    json_object_object_add(d, "stop_reason", json_object_new_string("end_turn"));
    json_object_object_add(d, "stop_sequence", NULL);
    json_object_object_add(o, "type", json_object_new_string("message_delta"));
    json_object_object_add(o, "delta", d);
    d = json_object_new_object();
    json_object_object_add(d, "output_tokens", json_object_new_int64(u->output));
    json_object_object_add(o, "usage", d);
    if (mock_sse_json(mr, "message_delta", o) < 0) {
        goto gone;
    }
    /* Counted as sent: the end line must precede the bytes that finish the stream. */
    mock_log_end(mr, HTTP_OK, 0, mr->events_sent + 1);
    mock_sse_event(mr, "message_stop", "{\"type\":\"message_stop\"}");
    return OK;

gone:
    mock_log_end(mr, r->status, 1, mr->events_sent);
    return OK;
}

/* The models the mock lists, newest first like the real API: id, display name, date. */
static const char *const mock_models[][3] = {
    {"claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-14T00:00:00Z"},
    {"claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z"},
};
#define MOCK_NMODELS ((int)(sizeof(mock_models) / sizeof(mock_models[0])))

static json_object *mock_model_info(int i)
{
    json_object *m = json_object_new_object();

    json_object_object_add(m, "type", json_object_new_string("model"));
    json_object_object_add(m, "id", json_object_new_string(mock_models[i][0]));
    json_object_object_add(m, "display_name", json_object_new_string(mock_models[i][1]));
    json_object_object_add(m, "created_at", json_object_new_string(mock_models[i][2]));
    return m;
}

static int mock_send_models(mock_req *mr)
{
    json_object *o = json_object_new_object(), *list = json_object_new_array();
    int i;

    for (i = 0; i < MOCK_NMODELS; i++) {
        json_object_array_add(list, mock_model_info(i));
    }
    json_object_object_add(o, "data", list);
    json_object_object_add(o, "has_more", json_object_new_boolean(0));
    json_object_object_add(o, "first_id", json_object_new_string(mock_models[0][0]));
    json_object_object_add(o, "last_id", json_object_new_string(mock_models[MOCK_NMODELS - 1][0]));
    return mock_send_json(mr, HTTP_OK, o);
}

/* GET /v1/models/{id}: a listed model, or the 404 the real API gives an unknown one. */
static int mock_send_model(mock_req *mr, const char *id)
{
    int i;

    for (i = 0; i < MOCK_NMODELS; i++) {
        if (strcmp(id, mock_models[i][0]) == 0) {
            return mock_send_json(mr, HTTP_OK, mock_model_info(i));
        }
    }
    return mock_send_error(mr, HTTP_NOT_FOUND, "not_found_error",
                           apr_pstrcat(mr->r->pool, "model: ", id, NULL));
}

/* ------------------------------------------------------------------ */
/* Request input                                                       */
/* ------------------------------------------------------------------ */

/* Returns OK or an HTTP status; *len may exceed the cap, which signals 413. */
static int mock_read_body(request_rec *r, char **body, apr_size_t *len)
{
    apr_size_t cap = 16384, used = 0;
    char *buf;
    long n;
    int rc = ap_setup_client_block(r, REQUEST_CHUNKED_DECHUNK);

    *body = "";
    *len = 0;
    if (rc != OK) {
        return rc;
    }
    if (!ap_should_client_block(r)) {
        return OK;
    }
    buf = apr_palloc(r->pool, cap + 1);
    for (;;) {
        if (used == cap) {
            char *bigger;

            if (cap > MOCK_MAX_BODY) {
                break; /* one byte past the cap is enough to know it is too big */
            }
            cap = cap * 2 > MOCK_MAX_BODY ? MOCK_MAX_BODY + 1 : cap * 2;
            bigger = apr_palloc(r->pool, cap + 1);
            memcpy(bigger, buf, used);
            buf = bigger;
        }
        n = ap_get_client_block(r, buf + used, cap - used);
        if (n < 0) {
            return HTTP_BAD_REQUEST;
        }
        if (n == 0) {
            break;
        }
        used += (apr_size_t)n;
    }
    buf[used] = '\0';
    *body = buf;
    *len = used;
    return OK;
}

/* Only "model" and "stream" matter; parse errors are kept for the routes that care. */
static const char *mock_parse_body(request_rec *r, const char *body, apr_size_t len,
                                   const char **model, int *stream)
{
    json_tokener *tok;
    json_object *root, *v;
    enum json_tokener_error jerr;
    const char *err = NULL;
    apr_size_t i;

    *model = MOCK_DEFAULT_MODEL;
    *stream = 0;
    if (len == 0) {
        return "request body is empty";
    }
    tok = json_tokener_new();
    root = json_tokener_parse_ex(tok, body, (int)len);
    jerr = json_tokener_get_error(tok);
    if (!root || jerr != json_tokener_success) {
        err = apr_psprintf(r->pool, "invalid JSON body: %s",
                           jerr == json_tokener_continue ? "unexpected end of input"
                                                         : json_tokener_error_desc(jerr));
    }
    else {
        for (i = (apr_size_t)json_tokener_get_parse_end(tok); i < len; i++) {
            if (!apr_isspace(body[i])) {
                err = "invalid JSON body: trailing data after the object";
                break;
            }
        }
        if (!err && !json_object_is_type(root, json_type_object)) {
            err = "request body must be a JSON object";
        }
    }
    if (!err) {
        if (json_object_object_get_ex(root, "model", &v) &&
            json_object_is_type(v, json_type_string)) {
            *model = apr_pstrdup(r->pool, json_object_get_string(v));
        }
        if (json_object_object_get_ex(root, "stream", &v) &&
            json_object_is_type(v, json_type_boolean)) {
            *stream = json_object_get_boolean(v);
        }
    }
    json_object_put(root);
    json_tokener_free(tok);
    return err;
}

static int mock_key_ok(request_rec *r, const char *key)
{
    const char *v = apr_table_get(r->headers_in, "x-api-key");

    if (v && strcmp(v, key) == 0) {
        return 1;
    }
    v = apr_table_get(r->headers_in, "Authorization");
    if (v && strncasecmp(v, "Bearer ", 7) == 0) {
        for (v += 7; *v == ' '; v++)
            ;
        return strcmp(v, key) == 0;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Handler                                                             */
/* ------------------------------------------------------------------ */

/* Content handler: everything, errors included, is answered here as JSON. */
static int mock_handler(request_rec *r)
{
    enum { R_NONE, R_MESSAGES, R_COUNT, R_MODELS, R_MODEL } route = R_NONE;
    mock_req *mr;
    mock_usage u;
    char *body;
    apr_size_t body_len;
    const char *model = MOCK_DEFAULT_MODEL, *parse_err, *tag, *model_id = NULL;
    int stream = 0, rc, want_post, inject;
    apr_int64_t hold_ms, events;

    if (!r->handler || strcmp(r->handler, MOCK_HANDLER) != 0) {
        return DECLINED;
    }
    mr = apr_pcalloc(r->pool, sizeof(*mr));
    mr->r = r;
    mr->cfg = ap_get_module_config(r->server->module_config, &relay_mock_module);
    mr->id = mock_make_id(r->pool);
    tag = apr_table_get(r->headers_in, "x-mock-tag");
    mr->tag = tag ? tag : "";
    apr_table_setn(r->headers_out, "x-mock-request-id", mr->id);

    if (mock_uri_ends(r->uri, "/v1/messages")) {
        route = R_MESSAGES;
    }
    else if (mock_uri_ends(r->uri, "/v1/messages/count_tokens")) {
        route = R_COUNT;
    }
    else if (mock_uri_ends(r->uri, "/v1/models")) {
        route = R_MODELS;
    }
    else if ((model_id = mock_model_in_uri(r->uri)) != NULL) {
        route = R_MODEL;
    }
    want_post = route == R_MESSAGES || route == R_COUNT;

    rc = mock_read_body(r, &body, &body_len);
    parse_err = body_len > MOCK_MAX_BODY ? "request body too large"
                                         : mock_parse_body(r, body, body_len, &model, &stream);
    mock_log_start(mr, body, body_len, stream);
    if (mr->start_logged) {
        /* Pre-cleanup: runs while the pool (and our subpool trick) is still intact. */
        apr_pool_pre_cleanup_register(r->pool, mr, mock_end_cleanup);
    }

    if (rc != OK || body_len > MOCK_MAX_BODY) {
        /* Do not let httpd try to drain a huge or broken body afterwards. */
        r->connection->keepalive = AP_CONN_CLOSE;
        if (rc == OK || rc == HTTP_REQUEST_ENTITY_TOO_LARGE) {
            return mock_send_error(mr, HTTP_REQUEST_ENTITY_TOO_LARGE, "request_too_large",
                                   "Request exceeds the maximum size");
        }
        return mock_send_error(mr, rc, "invalid_request_error", "could not read the request body");
    }
    if (mr->cfg->api_key && !mock_key_ok(r, mr->cfg->api_key)) {
        return mock_send_error(mr, HTTP_UNAUTHORIZED, "authentication_error", "invalid x-api-key");
    }
    if (route == R_NONE) {
        return mock_send_error(mr, HTTP_NOT_FOUND, "not_found_error", "Not found");
    }
    if (want_post ? r->method_number != M_POST : r->method_number != M_GET) {
        apr_table_setn(r->headers_out, "Allow", want_post ? "POST" : "GET, HEAD");
        return mock_send_error(mr, HTTP_METHOD_NOT_ALLOWED, "invalid_request_error",
                               apr_psprintf(r->pool, "Method %s not allowed", r->method));
    }

    hold_ms = mock_hdr_int(r, "x-mock-hold-ms", 0, 0, 600000);
    events = mock_hdr_int(r, "x-mock-events", 3, 0, 100000);
    inject = (int)mock_hdr_int(r, "x-mock-status", 0, 0, 999);
    u.input = mock_hdr_int(r, "x-mock-input-tokens", 25, 0, 1000000000);
    u.output = mock_hdr_int(r, "x-mock-output-tokens", 10, 0, 1000000000);
    u.cache_create = mock_hdr_int(r, "x-mock-cache-create-tokens", 0, 0, 1000000000);
    u.cache_read = mock_hdr_int(r, "x-mock-cache-read-tokens", 0, 0, 1000000000);

    /* Streams spread the hold over their events; everything else waits up front. */
    if (!(route == R_MESSAGES && stream && !parse_err && !(inject >= 400 && inject <= 599)) &&
        hold_ms > 0 && mock_sleep_until(r, apr_time_now() + apr_time_from_msec(hold_ms)) < 0) {
        mock_log_end(mr, r->status, 1, 0);
        return OK;
    }
    if (inject >= 400 && inject <= 599) {
        const char *type = inject == 529   ? "overloaded_error"
                           : inject == 429 ? "rate_limit_error"
                                           : "api_error";

        if (inject == 429) {
            apr_table_setn(r->headers_out, "retry-after", "1");
        }
        return mock_send_error(mr, inject, type,
                               apr_psprintf(r->pool, "mock injected status %d", inject));
    }
    if (route == R_MODELS) {
        return mock_send_models(mr);
    }
    if (route == R_MODEL) {
        return mock_send_model(mr, model_id);
    }
    if (parse_err) {
        return mock_send_error(mr, HTTP_BAD_REQUEST, "invalid_request_error", parse_err);
    }
    if (route == R_COUNT) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "input_tokens", json_object_new_int64(u.input));
        return mock_send_json(mr, HTTP_OK, o);
    }
    if (stream) {
        return mock_send_stream(mr, model, &u, events, hold_ms);
    }
    return mock_send_json(mr, HTTP_OK, mock_message(mr, model, &u, 1));
}

/* Child init: pick this process's id salt once, before it serves anything. */
static void mock_child_init(apr_pool_t *p, server_rec *s)
{
    apr_uint32_t salt = 0;

    (void)p;
    (void)s;
    if (apr_generate_random_bytes((unsigned char *)&salt, sizeof(salt)) != APR_SUCCESS) {
        salt = (apr_uint32_t)apr_time_now() ^ (apr_uint32_t)getpid();
    }
    mock_salt = salt;
}

static void mock_register_hooks(apr_pool_t *p)
{
    (void)p;
    /* Handler: only claims requests mapped with SetHandler claude-relay-mock. */
    ap_hook_handler(mock_handler, NULL, NULL, APR_HOOK_MIDDLE);
    /* Child init: per-process id salt. */
    ap_hook_child_init(mock_child_init, NULL, NULL, APR_HOOK_MIDDLE);
}

AP_DECLARE_MODULE(relay_mock) = {STANDARD20_MODULE_STUFF,
                                 NULL, /* per-directory config: not needed */
                                 NULL,
                                 mock_create_srv_cfg,
                                 mock_merge_srv_cfg,
                                 mock_cmds,
                                 mock_register_hooks,
                                 AP_MODULE_FLAG_NONE};
