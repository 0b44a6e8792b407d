/*
 * relay_admin.c - the admin at /relay-admin: key list, create/edit/delete
 * forms, and a JSON API, served by the "claude-relay-admin" handler.
 *
 * The admin is served only where the server configuration says RelayAdmin On
 * or Open: an .htaccess may set the handler but can never set RelayAdmin.
 * Who may enter is Apache's business (Basic, LDAP, OIDC...): under On the
 * handler refuses a request without an authenticated user and records r->user
 * as the author of each change. Every change made by a form carries a CSRF
 * token (an HMAC of the user and a time window, with a key derived from the
 * server secret) and must come from the same host; the JSON API takes only
 * application/json bodies and refuses foreign origins. Every echoed value is
 * escaped.
 */
#include "relay_admin.h"
#include "relay_admin_i18n.h"
#include "relay_config.h"
#include "relay_keys.h"
#include "relay_keystore.h"
#include "relay_schema.h"
#include "relay_validate.h"

#include <apr_strings.h>
#include <http_core.h>
#include <http_log.h>
#include <http_protocol.h>
#include <http_request.h>
#include <httpd.h>
#include <json-c/json.h>
#include <math.h>
#include <string.h>
#include <util_script.h>

APLOG_USE_MODULE(claude_relay);

#define RLOG "mod_claude_relay: "
#define ADMIN_MAX_BODY (64 * 1024)
/* a CSRF token is valid for the window it was made in and the one after */
#define CSRF_WINDOW_SECONDS (12 * 3600)
/* what the CSRF key is derived for: never the secret itself, which also hashes keys */
#define CSRF_KEY_LABEL "mod_claude_relay admin csrf"

#define CSP                                                                                    \
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "          \
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

/* What one admin request needs. */
typedef struct {
    request_rec *r;
    relay_server_conf *sc;
    const char *base;      /* the admin's URL path, without a trailing slash */
    const char *sub;       /* the rest of the path after base */
    const char *user;      /* authenticated user, or "anonymous" under RelayAdmin Open */
    admin_lang lang;
    const char *now_iso;
    unsigned char csrf_key[RELAY_SHA256_LEN]; /* HMAC(secret, CSRF_KEY_LABEL) */
} admin_ctx;

/* A message in the request's language. */
static const char *T(const admin_ctx *a, admin_msg m)
{
    return admin_text[m][a->lang];
}

/* HTML-escape (quotes included) for text and attributes; UTF-8 passes as is. */
static const char *H(const admin_ctx *a, const char *s)
{
    return ap_escape_html2(a->r->pool, s ? s : "", 0);
}

/* Prefer Simplified Chinese when Accept-Language ranks zh above English. */
static admin_lang pick_lang(request_rec *r)
{
    const char *al = apr_table_get(r->headers_in, "Accept-Language");
    double best_zh = -1, best_en = -1;
    char *list, *tok, *state;

    if (!al) {
        return LANG_EN;
    }
    list = apr_pstrdup(r->pool, al);
    for (tok = apr_strtok(list, ",", &state); tok; tok = apr_strtok(NULL, ",", &state)) {
        char *semi = strchr(tok, ';');
        double q = 1.0;
        while (*tok == ' ') {
            tok++;
        }
        if (semi) {
            char *qs = strstr(semi, "q=");
            *semi = '\0';
            if (qs) {
                q = atof(qs + 2);
            }
        }
        if (strncasecmp(tok, "zh", 2) == 0 && (tok[2] == '\0' || tok[2] == '-' || tok[2] == ' ')) {
            if (q > best_zh) {
                best_zh = q;
            }
        }
        else if (strncasecmp(tok, "en", 2) == 0) {
            if (q > best_en) {
                best_en = q;
            }
        }
    }
    return best_zh > 0 && best_zh > best_en ? LANG_ZH : LANG_EN;
}

/*
 * Headers every admin answer carries. They go in err_headers_out, which httpd
 * also sends with the error pages and redirects it makes itself (405, 404, 303).
 */
static void security_headers(request_rec *r)
{
    apr_table_setn(r->err_headers_out, "Cache-Control", "no-store");
    apr_table_setn(r->err_headers_out, "X-Content-Type-Options", "nosniff");
    apr_table_setn(r->err_headers_out, "X-Frame-Options", "DENY");
    apr_table_setn(r->err_headers_out, "Content-Security-Policy", CSP);
    apr_table_setn(r->err_headers_out, "Referrer-Policy", "same-origin");
}

/* ---------------------------------------------------------------------- */
/* CSRF and origin checks                                                 */

/* The user's form token for a given time window. */
static const char *csrf_token_for(const admin_ctx *a, long window)
{
    unsigned char mac[RELAY_SHA256_LEN];
    char *hex = apr_palloc(a->r->pool, 2 * RELAY_SHA256_LEN + 1);
    const char *msg = apr_psprintf(a->r->pool, "relay-admin-csrf\n%s\n%ld", a->user, window);

    relay_hmac_sha256(a->csrf_key, sizeof(a->csrf_key), msg, strlen(msg), mac);
    relay_hex(mac, sizeof(mac), hex);
    return hex;
}

static long csrf_window(void)
{
    return (long)(apr_time_sec(apr_time_now()) / CSRF_WINDOW_SECONDS);
}

/* Compare without leaking where two strings differ. */
static int same_secret(const char *x, const char *y)
{
    size_t lx = strlen(x), ly = strlen(y), i;
    unsigned char d = lx != ly;

    for (i = 0; i < lx && i < ly; i++) {
        d |= (unsigned char)(x[i] ^ y[i]);
    }
    return d == 0;
}

static int csrf_ok(const admin_ctx *a, const char *token)
{
    long w = csrf_window();
    return token && (same_secret(token, csrf_token_for(a, w)) ||
                     same_secret(token, csrf_token_for(a, w - 1)));
}

/* The host[:port] part of an absolute URL, or NULL. */
static const char *url_authority(apr_pool_t *p, const char *url)
{
    const char *s = strstr(url, "://"), *e;

    if (!s) {
        return NULL;
    }
    s += 3;
    e = s + strcspn(s, "/?#");
    return apr_pstrmemdup(p, s, e - s);
}

/*
 * Whether Origin and Referer, when present, name this host. A browser sends
 * Origin on every cross-site POST, so a forged form fails here even before
 * the token is checked.
 */
static int same_origin(request_rec *r)
{
    const char *host = apr_table_get(r->headers_in, "Host");
    const char *origin = apr_table_get(r->headers_in, "Origin");
    const char *referer = apr_table_get(r->headers_in, "Referer");

    if (origin) {
        const char *auth = url_authority(r->pool, origin);
        if (!host || !auth || strcasecmp(auth, host) != 0) {
            return 0;
        }
    }
    if (referer) {
        const char *auth = url_authority(r->pool, referer);
        if (!host || !auth || strcasecmp(auth, host) != 0) {
            return 0;
        }
    }
    return 1;
}

/* ---------------------------------------------------------------------- */
/* Redis access                                                           */

/* Borrow a connection for this request; NULL (with *err) when Redis is down. */
static relay_redis_conn *borrow(admin_ctx *a, const char **err)
{
    relay_lease_store *store = relay_server_store(a->r->server);

    if (!store) {
        *err = "the relay has no Redis pool in this server";
        return NULL;
    }
    return relay_redis_acquire(relay_lease_store_redis(store), a->r->pool, err);
}

static void give_back(admin_ctx *a, relay_redis_conn *c)
{
    relay_redis_release(relay_lease_store_redis(relay_server_store(a->r->server)), c);
}

/* ---------------------------------------------------------------------- */
/* HTML                                                                   */

static void page_start(admin_ctx *a, const char *title)
{
    request_rec *r = a->r;

    ap_set_content_type(r, "text/html; charset=utf-8");
    ap_rprintf(r,
               "<!DOCTYPE html>\n<html lang=\"%s\"><head><meta charset=\"utf-8\">"
               "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
               "<title>%s</title>"
               "<link rel=\"stylesheet\" href=\"%s/static/admin.css\">"
               "<script src=\"%s/static/admin.js\" defer></script></head>\n<body>"
               "<header><a class=\"brand\" href=\"%s/\">%s</a>"
               "<nav><a href=\"%s/\">%s</a> <a href=\"%s/new\">%s</a></nav>"
               "<span class=\"user\">%s %s</span></header>\n<main>",
               a->lang == LANG_ZH ? "zh-Hans" : "en", H(a, title), H(a, a->base), H(a, a->base),
               H(a, a->base), T(a, AM_TITLE), H(a, a->base), T(a, AM_KEYS), H(a, a->base),
               T(a, AM_NEW_KEY), T(a, AM_SIGNED_IN_AS), H(a, a->user));
}

static void page_end(admin_ctx *a)
{
    ap_rputs("</main></body></html>\n", a->r);
}

/* A short HTML page with one message (errors, refusals). */
static int message_page(admin_ctx *a, int status, const char *text)
{
    a->r->status = status;
    page_start(a, text);
    ap_rprintf(a->r, "<p class=\"error\">%s</p><p><a href=\"%s/\">%s</a></p>", H(a, text),
               H(a, a->base), T(a, AM_BACK));
    page_end(a);
    return OK;
}

/* The hidden CSRF field of every form that changes something. */
static void csrf_field(admin_ctx *a)
{
    ap_rprintf(a->r, "<input type=\"hidden\" name=\"csrf\" value=\"%s\">",
               csrf_token_for(a, csrf_window()));
}

/* A date as shown in the list: "2025-01-31 23:59" or the given fallback. */
static const char *show_time(admin_ctx *a, const char *iso, admin_msg empty)
{
    if (!iso || !*iso) {
        return T(a, empty);
    }
    if (strlen(iso) >= 16) {
        return apr_psprintf(a->r->pool, "%.10s %.5s", iso, iso + 11);
    }
    return iso;
}

/* "3 / 5", "3 / unlimited". */
static const char *concurrency_text(admin_ctx *a, const relay_key_record *k)
{
    long limit = atol(k->concurrency_limit);
    if (limit <= 0) {
        return apr_psprintf(a->r->pool, "%ld / %s", k->current_concurrency, T(a, AM_UNLIMITED));
    }
    return apr_psprintf(a->r->pool, "%ld / %ld", k->current_concurrency, limit);
}

static const char *token_limit_text(admin_ctx *a, const relay_key_record *k)
{
    apr_int64_t limit = apr_atoi64(k->token_limit);
    return limit <= 0 ? T(a, AM_UNLIMITED)
                      : apr_psprintf(a->r->pool, "%" APR_INT64_T_FMT, limit);
}

/*
 * Tokens used (against the limit, with a bar when there is one), requests and
 * today's tokens. The bar is a <progress>: no inline style under the CSP.
 */
static const char *usage_cell(admin_ctx *a, const relay_key_record *k)
{
    apr_pool_t *p = a->r->pool;
    apr_int64_t limit = apr_atoi64(k->token_limit);
    const char *used = apr_psprintf(p, "<span class=\"tokens\">%" APR_INT64_T_FMT "</span>",
                                    (apr_int64_t)k->total.tokens);

    if (limit > 0) {
        used = apr_psprintf(p,
                            "%s / %" APR_INT64_T_FMT "<progress max=\"%" APR_INT64_T_FMT
                            "\" value=\"%" APR_INT64_T_FMT "\"></progress>",
                            used, limit, limit,
                            (apr_int64_t)(k->total.tokens < limit ? k->total.tokens : limit));
    }
    return apr_psprintf(p,
                        "%s<small>%" APR_INT64_T_FMT " %s · %s %" APR_INT64_T_FMT "</small>",
                        used, (apr_int64_t)k->total.requests, T(a, AM_REQUESTS), T(a, AM_TODAY),
                        (apr_int64_t)k->today.tokens);
}

static admin_msg status_msg(const char *status)
{
    return !strcmp(status, "disabled") ? AM_DISABLED
           : !strcmp(status, "expired") ? AM_EXPIRED
                                         : AM_ACTIVE;
}

/* The key list. */
static int list_page(admin_ctx *a)
{
    request_rec *r = a->r;
    const char *err = NULL;
    relay_redis_conn *c = borrow(a, &err);
    apr_array_header_t *keys = NULL;
    int i, total = 0;

    if (c) {
        keys = relay_keystore_list(c, RELAY_KEYSTORE_LIST_MAX, &total, r->pool, &err);
        give_back(a, c);
    }
    if (!keys) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin: cannot list keys: %s", err);
        return message_page(a, HTTP_SERVICE_UNAVAILABLE, T(a, AM_UNAVAILABLE));
    }
    page_start(a, T(a, AM_TITLE));
    ap_rprintf(r, "<div class=\"bar\"><h1>%s</h1><a class=\"button\" href=\"%s/new\">%s</a></div>",
               T(a, AM_TITLE), H(a, a->base), T(a, AM_NEW_KEY));
    if (total > keys->nelts) {
        ap_rprintf(r, "<p class=\"capped\" id=\"capped\">%s</p>",
                   H(a, apr_psprintf(r->pool, T(a, AM_LIST_CAPPED), keys->nelts, total)));
    }
    if (keys->nelts == 0) {
        ap_rprintf(r, "<p class=\"empty\">%s</p>", T(a, AM_NO_KEYS));
        page_end(a);
        return OK;
    }
    ap_rprintf(r,
               "<div class=\"table-wrap\"><table id=\"keys\" data-live=\"%s/api/inflight\" "
               "data-live-max=\"%d\" "
               "data-unlimited=\"%s\">"
               "<thead><tr><th>%s</th><th>%s</th><th>%s</th><th>%s</th>"
               "<th title=\"%s\">%s</th><th>%s</th><th>%s</th><th>%s</th><th>%s</th>"
               "<th>%s</th><th>%s</th></tr></thead><tbody>",
               H(a, a->base), RELAY_KEYSTORE_LIVE_MAX, T(a, AM_UNLIMITED), T(a, AM_NAME),
               T(a, AM_DESCRIPTION), T(a, AM_KEY), T(a, AM_STATUS), T(a, AM_IN_FLIGHT_HINT),
               T(a, AM_CONCURRENCY), T(a, AM_TOKEN_LIMIT), T(a, AM_TOKENS_USED), T(a, AM_CREATED),
               T(a, AM_LAST_USED), T(a, AM_EXPIRES), T(a, AM_ACTIONS));
    for (i = 0; i < keys->nelts; i++) {
        relay_key_record *k = APR_ARRAY_IDX(keys, i, relay_key_record *);
        const char *status = relay_key_status(k, a->now_iso);
        const char *kb = apr_pstrcat(r->pool, a->base, "/keys/", k->id, NULL);
        int active = relay_key_enabled(k);

        ap_rprintf(r,
                   "<tr data-id=\"%s\"><td data-label=\"%s\" class=\"name\">%s</td>"
                   "<td data-label=\"%s\" class=\"desc\">%s</td>"
                   "<td data-label=\"%s\"><code>%s</code></td>"
                   "<td data-label=\"%s\"><span class=\"status %s\">%s</span></td>"
                   "<td data-label=\"%s\" class=\"inflight\" data-limit=\"%s\">%s</td>"
                   "<td data-label=\"%s\">%s</td><td data-label=\"%s\" class=\"usage\">%s</td>"
                   "<td data-label=\"%s\">%s</td><td data-label=\"%s\">%s</td>"
                   "<td data-label=\"%s\">%s</td>",
                   H(a, k->id), T(a, AM_NAME), H(a, k->name), T(a, AM_DESCRIPTION),
                   H(a, k->description), T(a, AM_KEY), H(a, k->key_preview), T(a, AM_STATUS),
                   status, T(a, status_msg(status)), T(a, AM_CONCURRENCY),
                   H(a, k->concurrency_limit), H(a, concurrency_text(a, k)), T(a, AM_TOKEN_LIMIT),
                   H(a, token_limit_text(a, k)), T(a, AM_TOKENS_USED), usage_cell(a, k),
                   T(a, AM_CREATED), H(a, show_time(a, k->created_at, AM_NONE_YET)),
                   T(a, AM_LAST_USED), H(a, show_time(a, k->last_used_at, AM_NONE_YET)),
                   T(a, AM_EXPIRES), H(a, show_time(a, k->expires_at, AM_NEVER)));
        ap_rprintf(r,
                   "<td class=\"actions\"><a class=\"button small\" href=\"%s/edit\">%s</a>"
                   "<form method=\"post\" action=\"%s/toggle\">",
                   H(a, kb), T(a, AM_EDIT), H(a, kb));
        csrf_field(a);
        ap_rprintf(r,
                   "<input type=\"hidden\" name=\"active\" value=\"%s\">"
                   "<button class=\"small\" type=\"submit\">%s</button></form>"
                   "<a class=\"button small danger\" href=\"%s/delete\">%s</a></td></tr>",
                   active ? "false" : "true", T(a, active ? AM_DISABLE : AM_ENABLE), H(a, kb),
                   T(a, AM_DELETE));
    }
    ap_rputs("</tbody></table></div>", r);
    page_end(a);
    return OK;
}

/* Values and per-field messages of a key form. */
typedef struct {
    const char *name, *description, *token_limit, *concurrency_limit, *expires, *active;
    const char *err_name, *err_description, *err_token, *err_concurrency, *err_expires;
    int has_errors;
} key_form;

/* One labelled input with its error, if any. */
static void form_field(admin_ctx *a, const char *id, admin_msg label, const char *type,
                       const char *value, const char *error, const char *extra)
{
    ap_rprintf(a->r,
               "<div class=\"field%s\"><label for=\"%s\">%s</label>"
               "<input id=\"%s\" name=\"%s\" type=\"%s\" value=\"%s\" %s>",
               error ? " invalid" : "", id, T(a, label), id, id, type, H(a, value),
               extra ? extra : "");
    if (error) {
        ap_rprintf(a->r, "<p class=\"field-error\" id=\"%s-error\">%s</p>", id, H(a, error));
    }
    ap_rputs("</div>", a->r);
}

static void create_form(admin_ctx *a, const key_form *f)
{
    request_rec *r = a->r;
    const char *ph = apr_psprintf(r->pool, "inputmode=\"numeric\" placeholder=\"%s\"",
                                  T(a, AM_LIMIT_PLACEHOLDER));

    page_start(a, T(a, AM_NEW_KEY));
    ap_rprintf(r, "<h1>%s</h1>", T(a, AM_NEW_KEY));
    if (f->has_errors) {
        ap_rprintf(r, "<p class=\"error\" role=\"alert\">%s</p>", T(a, AM_ERR_FORM));
    }
    ap_rprintf(r, "<form method=\"post\" action=\"%s/new\" class=\"key-form\">", H(a, a->base));
    csrf_field(a);
    form_field(a, "name", AM_NAME, "text", f->name, f->err_name, "required maxlength=\"100\"");
    ap_rprintf(r,
               "<div class=\"field%s\"><label for=\"description\">%s</label>"
               "<textarea id=\"description\" name=\"description\" maxlength=\"500\">%s</textarea>",
               f->err_description ? " invalid" : "", T(a, AM_DESCRIPTION), H(a, f->description));
    if (f->err_description) {
        ap_rprintf(r, "<p class=\"field-error\">%s</p>", H(a, f->err_description));
    }
    ap_rputs("</div>", r);
    form_field(a, "tokenLimit", AM_TOKEN_LIMIT, "text", f->token_limit, f->err_token, ph);
    form_field(a, "concurrencyLimit", AM_CONCURRENCY, "text", f->concurrency_limit,
               f->err_concurrency, ph);
    form_field(a, "expiresAt", AM_EXPIRES, "date", f->expires, f->err_expires, NULL);
    ap_rprintf(r,
               "<p class=\"hint\">%s</p><div class=\"buttons\"><button type=\"submit\">%s</button>"
               " <a class=\"button secondary\" href=\"%s/\">%s</a></div></form>",
               T(a, AM_EXPIRY_HINT), T(a, AM_CREATE), H(a, a->base), T(a, AM_CANCEL));
    page_end(a);
}

/* The last 30 days as an inline SVG bar chart, and the split by model. */
static void usage_history(admin_ctx *a, const relay_key_record *k)
{
    request_rec *r = a->r;
    apr_array_header_t *days = NULL, *models = NULL;
    const char *err = NULL;
    relay_redis_conn *c = borrow(a, &err);
    long long max = 0;
    int i, rc = -1;
    const int w = 600, h = 140, gap = 2;

    if (c) {
        rc = relay_keystore_history(c, k->id, 30, r->pool, &days, &models, &err);
        give_back(a, c);
    }
    if (rc != 0) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin: cannot read usage of %s: %s",
                      k->id, err);
        return;
    }
    for (i = 0; i < days->nelts; i++) {
        relay_usage_day *d = &APR_ARRAY_IDX(days, i, relay_usage_day);
        if (d->usage.tokens > max) {
            max = d->usage.tokens;
        }
    }
    ap_rprintf(r, "<section class=\"usage-history\"><h2>%s</h2>", T(a, AM_LAST_30));
    ap_rprintf(r,
               "<svg class=\"chart\" viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"%s\">"
               "<line class=\"axis\" x1=\"0\" y1=\"%d\" x2=\"%d\" y2=\"%d\"/>",
               w, h + 16, T(a, AM_LAST_30), h, w, h);
    for (i = 0; i < days->nelts; i++) {
        relay_usage_day *d = &APR_ARRAY_IDX(days, i, relay_usage_day);
        int bw = w / days->nelts;
        int bh = max > 0 ? (int)((double)d->usage.tokens * (h - 4) / (double)max) : 0;
        if (d->usage.tokens > 0 && bh < 1) {
            bh = 1;
        }
        ap_rprintf(r,
                   "<rect class=\"bar\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\">"
                   "<title>%s: %" APR_INT64_T_FMT " %s, %" APR_INT64_T_FMT " %s</title></rect>",
                   i * bw + gap / 2, h - bh, bw - gap, bh, d->date,
                   (apr_int64_t)d->usage.tokens, T(a, AM_TOKENS),
                   (apr_int64_t)d->usage.requests, T(a, AM_REQUESTS));
        if (i == 0 || i == days->nelts - 1) {
            ap_rprintf(r, "<text x=\"%d\" y=\"%d\" text-anchor=\"%s\">%s</text>",
                       i == 0 ? 0 : w, h + 14, i == 0 ? "start" : "end", d->date + 5);
        }
    }
    ap_rprintf(r, "<text class=\"max\" x=\"2\" y=\"10\">%" APR_INT64_T_FMT "</text></svg>",
               (apr_int64_t)max);
    ap_rprintf(r, "<h2>%s</h2>", T(a, AM_BY_MODEL));
    if (models->nelts == 0) {
        ap_rprintf(r, "<p class=\"empty\">%s</p></section>", T(a, AM_NO_USAGE));
        return;
    }
    ap_rprintf(r, "<table class=\"models\"><thead><tr><th>%s</th><th>%s</th><th>%s</th>"
                  "</tr></thead><tbody>",
               T(a, AM_MODEL), T(a, AM_TOKENS), T(a, AM_REQUESTS));
    for (i = 0; i < models->nelts; i++) {
        relay_usage_model *m = &APR_ARRAY_IDX(models, i, relay_usage_model);
        ap_rprintf(r, "<tr><td><code>%s</code></td><td>%" APR_INT64_T_FMT "</td><td>%"
                      APR_INT64_T_FMT "</td></tr>",
                   H(a, m->model), (apr_int64_t)m->usage.tokens, (apr_int64_t)m->usage.requests);
    }
    ap_rputs("</tbody></table></section>", r);
}

static void edit_form(admin_ctx *a, const relay_key_record *k, const key_form *f)
{
    request_rec *r = a->r;
    const char *ph = apr_psprintf(r->pool, "inputmode=\"numeric\" placeholder=\"%s\"",
                                  T(a, AM_LIMIT_PLACEHOLDER));
    int active = f->active ? strcmp(f->active, RELAY_ACTIVE_TRUE) == 0 : relay_key_enabled(k);

    page_start(a, T(a, AM_EDIT_TITLE));
    ap_rprintf(r, "<h1>%s</h1>", T(a, AM_EDIT_TITLE));
    if (f->has_errors) {
        ap_rprintf(r, "<p class=\"error\" role=\"alert\">%s</p>", T(a, AM_ERR_FORM));
    }
    ap_rprintf(r, "<form method=\"post\" action=\"%s/keys/%s/edit\" class=\"key-form\">",
               H(a, a->base), H(a, k->id));
    csrf_field(a);
    form_field(a, "name", AM_NAME, "text", k->name, NULL, "readonly");
    ap_rprintf(r, "<div class=\"field\"><label>%s</label><p><code>%s</code> %s</p></div>",
               T(a, AM_KEY), H(a, k->key_preview),
               H(a, concurrency_text(a, k)));
    form_field(a, "tokenLimit", AM_TOKEN_LIMIT, "text", f->token_limit, f->err_token, ph);
    form_field(a, "concurrencyLimit", AM_CONCURRENCY, "text", f->concurrency_limit,
               f->err_concurrency, ph);
    ap_rprintf(r,
               "<div class=\"field check\"><label><input type=\"checkbox\" name=\"isActive\" "
               "value=\"true\"%s> %s</label></div>"
               "<div class=\"buttons\"><button type=\"submit\">%s</button>"
               " <a class=\"button secondary\" href=\"%s/\">%s</a></div></form>",
               active ? " checked" : "", T(a, AM_ENABLED_LABEL), T(a, AM_SAVE), H(a, a->base),
               T(a, AM_CANCEL));
    usage_history(a, k);
    page_end(a);
}

/* ---------------------------------------------------------------------- */
/* Reading bodies                                                         */

/*
 * Read a form body into a table of whitelisted fields. Returns OK, or an
 * HTTP status when the body is not a form or too large.
 */
static int read_form(request_rec *r, const char *const *allowed, apr_table_t **out)
{
    apr_array_header_t *pairs = NULL;
    apr_table_t *t = apr_table_make(r->pool, 8);
    int rc;

    rc = ap_parse_form_data(r, NULL, &pairs, 16, ADMIN_MAX_BODY);
    if (rc != OK) {
        return rc == HTTP_REQUEST_ENTITY_TOO_LARGE ? rc : HTTP_BAD_REQUEST;
    }
    while (pairs && !apr_is_empty_array(pairs)) {
        ap_form_pair_t *pair = (ap_form_pair_t *)apr_array_pop(pairs);
        apr_off_t len;
        apr_size_t size;
        char *buf;
        int i;

        for (i = 0; allowed[i]; i++) {
            if (strcmp(pair->name, allowed[i]) == 0) {
                break;
            }
        }
        if (!allowed[i]) {
            continue;
        }
        apr_brigade_length(pair->value, 1, &len);
        size = (apr_size_t)len;
        buf = apr_palloc(r->pool, size + 1);
        apr_brigade_flatten(pair->value, buf, &size);
        buf[size] = '\0';
        apr_table_set(t, pair->name, buf);
    }
    *out = t;
    return OK;
}

/*
 * Read a JSON object body (at most 64 KiB). Returns OK with *obj, or an HTTP
 * status with *why set.
 */
static int read_json(request_rec *r, json_object **obj, const char **why)
{
    const char *ct = apr_table_get(r->headers_in, "Content-Type");
    char *buf;
    apr_size_t got = 0;
    long n;
    int rc;
    json_tokener *tok;

    if (!ct || strncasecmp(ct, "application/json", 16) != 0 ||
        (ct[16] != '\0' && ct[16] != ';' && ct[16] != ' ')) {
        *why = "The body must be JSON (Content-Type: application/json)";
        return HTTP_UNSUPPORTED_MEDIA_TYPE;
    }
    if ((rc = ap_setup_client_block(r, REQUEST_CHUNKED_DECHUNK)) != OK) {
        *why = "The body could not be read";
        return rc;
    }
    if (r->remaining > ADMIN_MAX_BODY) {
        *why = "The body is larger than 64 KiB";
        return HTTP_REQUEST_ENTITY_TOO_LARGE;
    }
    buf = apr_palloc(r->pool, ADMIN_MAX_BODY + 1);
    if (ap_should_client_block(r)) {
        while ((n = ap_get_client_block(r, buf + got, ADMIN_MAX_BODY + 1 - got)) > 0) {
            got += (apr_size_t)n;
            if (got > ADMIN_MAX_BODY) {
                *why = "The body is larger than 64 KiB";
                return HTTP_REQUEST_ENTITY_TOO_LARGE;
            }
        }
        if (n < 0) {
            *why = "The body could not be read";
            return HTTP_BAD_REQUEST;
        }
    }
    buf[got] = '\0';
    tok = json_tokener_new();
    *obj = json_tokener_parse_ex(tok, buf, (int)got);
    if (!*obj || json_tokener_get_error(tok) != json_tokener_success ||
        tok->char_offset != (int)got) {
        /* trailing white space is fine; anything else after the object is not */
        int off = *obj ? (int)tok->char_offset : 0;
        while (*obj && off < (int)got && strchr(" \t\r\n", buf[off])) {
            off++;
        }
        if (!*obj || off != (int)got) {
            *why = apr_psprintf(r->pool, "The body is not valid JSON: %s",
                                json_tokener_error_desc(json_tokener_get_error(tok)));
            if (*obj) {
                json_object_put(*obj);
                *obj = NULL;
                *why = "The body has data after the JSON object";
            }
            json_tokener_free(tok);
            return HTTP_BAD_REQUEST;
        }
    }
    json_tokener_free(tok);
    if (!json_object_is_type(*obj, json_type_object)) {
        json_object_put(*obj);
        *obj = NULL;
        *why = "The body must be a JSON object";
        return HTTP_BAD_REQUEST;
    }
    apr_pool_cleanup_register(r->pool, *obj, (apr_status_t(*)(void *))json_object_put,
                              apr_pool_cleanup_null);
    return OK;
}

/* ---------------------------------------------------------------------- */
/* Form handlers                                                          */

/* The English/Chinese message for a validation result. */
static const char *invalid_text(admin_ctx *a, relay_invalid v, admin_msg too_long)
{
    switch (v) {
    case RELAY_VALID:
        return NULL;
    case RELAY_INVALID_REQUIRED:
        return T(a, AM_ERR_REQUIRED);
    case RELAY_INVALID_TOO_LONG:
        return T(a, too_long);
    case RELAY_INVALID_ENCODING:
        return T(a, AM_ERR_ENCODING);
    case RELAY_INVALID_NUMBER:
        return T(a, AM_ERR_NUMBER);
    case RELAY_INVALID_DATE:
        return T(a, AM_ERR_DATE);
    case RELAY_INVALID_PAST:
        return T(a, AM_ERR_PAST);
    }
    return T(a, AM_ERR_FORM);
}

/* Refuse a forged or stale form: 403, nothing changed. */
static int forged(admin_ctx *a, const char *what)
{
    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, a->r,
                  RLOG "admin: refused %s by %s: bad CSRF token or foreign origin", what,
                  ap_escape_logitem(a->r->pool, a->user));
    return message_page(a, HTTP_FORBIDDEN, T(a, AM_FORBIDDEN));
}

/* Check origin and token of a form POST; OK or the answer already sent. */
static int check_form(admin_ctx *a, apr_table_t *form, const char *what, int *answered)
{
    *answered = 0;
    if (!same_origin(a->r) || !csrf_ok(a, apr_table_get(form, "csrf"))) {
        *answered = 1;
        return forged(a, what);
    }
    return OK;
}

static int new_key(admin_ctx *a)
{
    static const char *const fields[] = {"csrf", "name", "description", "tokenLimit",
                                         "concurrencyLimit", "expiresAt", NULL};
    request_rec *r = a->r;
    key_form f;
    apr_table_t *form;
    relay_key_new nk;
    relay_invalid v;
    char expires[RELAY_ISO_LEN + 1];
    unsigned char rnd[RELAY_KEYSTORE_RANDOM_BYTES];
    const char *plain = NULL, *err = NULL;
    relay_redis_conn *c;
    relay_key_record *k = NULL;
    relay_ks_result done = RELAY_KS_ERROR;
    int rc, answered;

    memset(&f, 0, sizeof(f));
    if (r->method_number == M_GET) {
        f.name = f.description = f.token_limit = f.concurrency_limit = f.expires = "";
        create_form(a, &f);
        return OK;
    }
    if ((rc = read_form(r, fields, &form)) != OK) {
        return message_page(a, rc, T(a, AM_ERR_FORM));
    }
    rc = check_form(a, form, "a key creation", &answered);
    if (answered) {
        return rc;
    }
    f.name = apr_table_get(form, "name");
    f.description = apr_table_get(form, "description");
    f.token_limit = apr_table_get(form, "tokenLimit");
    f.concurrency_limit = apr_table_get(form, "concurrencyLimit");
    f.expires = apr_table_get(form, "expiresAt");
    f.name = f.name ? f.name : "";
    f.description = f.description ? f.description : "";
    f.token_limit = f.token_limit ? f.token_limit : "";
    f.concurrency_limit = f.concurrency_limit ? f.concurrency_limit : "";
    f.expires = f.expires ? f.expires : "";

    memset(&nk, 0, sizeof(nk));
    f.err_name = invalid_text(a, relay_check_name(f.name), AM_ERR_TOO_LONG_NAME);
    f.err_description =
        invalid_text(a, relay_check_description(f.description), AM_ERR_TOO_LONG_DESC);
    f.err_token = invalid_text(a, relay_check_limit(f.token_limit, &nk.token_limit), AM_ERR_NUMBER);
    f.err_concurrency = invalid_text(
        a, relay_check_limit(f.concurrency_limit, &nk.concurrency_limit), AM_ERR_NUMBER);
    v = relay_check_expiry(f.expires, a->now_iso, expires);
    f.err_expires = invalid_text(a, v, AM_ERR_DATE);
    f.has_errors = f.err_name || f.err_description || f.err_token || f.err_concurrency ||
                   f.err_expires;
    if (f.has_errors) {
        r->status = HTTP_BAD_REQUEST;
        create_form(a, &f);
        return OK;
    }
    nk.name = f.name;
    nk.description = f.description;
    nk.expires_at = expires;
    nk.created_by = a->user;
    if (apr_generate_random_bytes(rnd, sizeof(rnd)) != APR_SUCCESS) {
        return message_page(a, HTTP_INTERNAL_SERVER_ERROR, T(a, AM_UNAVAILABLE));
    }
    c = borrow(a, &err);
    if (c) {
        done = relay_keystore_create(c, &nk, a->sc->secret, rnd, &k, &plain, r->pool, &err);
        give_back(a, c);
    }
    if (done != RELAY_KS_DONE) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin: cannot create a key: %s", err);
        return done == RELAY_KS_EXISTS ? message_page(a, HTTP_CONFLICT, T(a, AM_ERR_EXISTS))
                                       : message_page(a, HTTP_SERVICE_UNAVAILABLE,
                                                      T(a, AM_UNAVAILABLE));
    }
    ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r,
                  RLOG "admin audit: %s created key %s (%s), concurrency limit %ld, token limit %ld",
                  ap_escape_logitem(r->pool, a->user), k->id, ap_escape_logitem(r->pool, k->name),
                  nk.concurrency_limit, nk.token_limit);
    r->status = HTTP_CREATED;
    page_start(a, T(a, AM_CREATED_TITLE));
    ap_rprintf(r,
               "<h1>%s</h1><p><strong>%s</strong></p>"
               "<div class=\"new-key\"><input id=\"new-key\" type=\"text\" readonly value=\"%s\">"
               "<button type=\"button\" class=\"copy\" data-copy=\"new-key\">%s</button></div>"
               "<p class=\"warning\">%s</p><p><a href=\"%s/\">%s</a></p>",
               T(a, AM_CREATED_TITLE), H(a, k->name), H(a, plain), T(a, AM_COPY),
               T(a, AM_SHOWN_ONCE), H(a, a->base), T(a, AM_BACK));
    page_end(a);
    return OK;
}

/* Load a key for a page; sends the error page and returns NULL when it cannot. */
static relay_key_record *load_key(admin_ctx *a, const char *id, int *rc)
{
    const char *err = NULL;
    relay_redis_conn *c = borrow(a, &err);
    relay_key_record *k = NULL;

    if (c) {
        k = relay_keystore_get(c, id, a->r->pool, &err);
        give_back(a, c);
    }
    if (!k) {
        if (err) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, a->r, RLOG "admin: cannot read key %s: %s",
                          id, err);
            *rc = message_page(a, HTTP_SERVICE_UNAVAILABLE, T(a, AM_UNAVAILABLE));
        }
        else {
            *rc = message_page(a, HTTP_NOT_FOUND, T(a, AM_NOT_FOUND));
        }
    }
    return k;
}

/* Write changed fields; sends an error page and returns non-OK on failure. */
static int save_fields(admin_ctx *a, const char *id, apr_array_header_t *pairs, const char *what,
                       int *missing)
{
    const char *err = NULL;
    relay_redis_conn *c = borrow(a, &err);
    int done = -1, i;
    const char *list = "";

    *missing = 0;
    if (c) {
        done = relay_keystore_update(c, id, pairs, a->user, a->r->pool, &err);
        give_back(a, c);
    }
    if (done < 0) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, a->r, RLOG "admin: cannot update key %s: %s", id,
                      err);
        return HTTP_SERVICE_UNAVAILABLE;
    }
    if (done == 0) {
        *missing = 1;
        return HTTP_NOT_FOUND;
    }
    for (i = 0; i + 1 < pairs->nelts; i += 2) {
        list = apr_psprintf(a->r->pool, "%s%s%s=%s", list, i ? ", " : "",
                            APR_ARRAY_IDX(pairs, i, const char *),
                            ap_escape_logitem(a->r->pool, APR_ARRAY_IDX(pairs, i + 1, const char *)));
    }
    ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, a->r, RLOG "admin audit: %s %s key %s: %s",
                  ap_escape_logitem(a->r->pool, a->user), what, id, list);
    return OK;
}

/* Send the browser back to the list after a change. */
static int back_to_list(admin_ctx *a)
{
    apr_table_setn(a->r->headers_out, "Location",
                   ap_construct_url(a->r->pool, apr_pstrcat(a->r->pool, a->base, "/", NULL),
                                    a->r));
    return HTTP_SEE_OTHER;
}

static int edit_key(admin_ctx *a, const char *id)
{
    static const char *const fields[] = {"csrf", "tokenLimit", "concurrencyLimit", "isActive",
                                         NULL};
    request_rec *r = a->r;
    relay_key_record *k;
    apr_table_t *form;
    apr_array_header_t *pairs;
    key_form f;
    long tl, cl;
    int rc = OK, answered, missing;

    memset(&f, 0, sizeof(f));
    if (r->method_number == M_POST) {
        if ((rc = read_form(r, fields, &form)) != OK) {
            return message_page(a, rc, T(a, AM_ERR_FORM));
        }
        rc = check_form(a, form, "a key edit", &answered);
        if (answered) {
            return rc;
        }
    }
    if (!(k = load_key(a, id, &rc))) {
        return rc;
    }
    if (r->method_number == M_GET) {
        f.token_limit = k->token_limit;
        f.concurrency_limit = k->concurrency_limit;
        edit_form(a, k, &f);
        return OK;
    }
    f.token_limit = apr_table_get(form, "tokenLimit");
    f.concurrency_limit = apr_table_get(form, "concurrencyLimit");
    f.token_limit = f.token_limit ? f.token_limit : "";
    f.concurrency_limit = f.concurrency_limit ? f.concurrency_limit : "";
    f.active = apr_table_get(form, "isActive") ? RELAY_ACTIVE_TRUE : RELAY_ACTIVE_FALSE;
    f.err_token = invalid_text(a, relay_check_limit(f.token_limit, &tl), AM_ERR_NUMBER);
    f.err_concurrency = invalid_text(a, relay_check_limit(f.concurrency_limit, &cl), AM_ERR_NUMBER);
    f.has_errors = f.err_token || f.err_concurrency;
    if (f.has_errors) {
        r->status = HTTP_BAD_REQUEST;
        edit_form(a, k, &f);
        return OK;
    }
    pairs = apr_array_make(r->pool, 6, sizeof(const char *));
    APR_ARRAY_PUSH(pairs, const char *) = RELAY_F_TOKEN_LIMIT;
    APR_ARRAY_PUSH(pairs, const char *) = apr_ltoa(r->pool, tl);
    APR_ARRAY_PUSH(pairs, const char *) = RELAY_F_CONCURRENCY_LIMIT;
    APR_ARRAY_PUSH(pairs, const char *) = apr_ltoa(r->pool, cl);
    APR_ARRAY_PUSH(pairs, const char *) = RELAY_F_IS_ACTIVE;
    APR_ARRAY_PUSH(pairs, const char *) = f.active;
    rc = save_fields(a, id, pairs, "edited", &missing);
    if (rc != OK) {
        return message_page(a, rc, T(a, missing ? AM_NOT_FOUND : AM_UNAVAILABLE));
    }
    return back_to_list(a);
}

static int toggle_key(admin_ctx *a, const char *id)
{
    static const char *const fields[] = {"csrf", "active", NULL};
    apr_table_t *form;
    apr_array_header_t *pairs;
    const char *active;
    int rc, answered, missing;

    if ((rc = read_form(a->r, fields, &form)) != OK) {
        return message_page(a, rc, T(a, AM_ERR_FORM));
    }
    rc = check_form(a, form, "a key enable/disable", &answered);
    if (answered) {
        return rc;
    }
    active = apr_table_get(form, "active");
    if (!active || (strcmp(active, "true") != 0 && strcmp(active, "false") != 0)) {
        return message_page(a, HTTP_BAD_REQUEST, T(a, AM_ERR_FORM));
    }
    pairs = apr_array_make(a->r->pool, 2, sizeof(const char *));
    APR_ARRAY_PUSH(pairs, const char *) = RELAY_F_IS_ACTIVE;
    APR_ARRAY_PUSH(pairs, const char *) = active;
    rc = save_fields(a, id, pairs, strcmp(active, "true") == 0 ? "enabled" : "disabled", &missing);
    if (rc != OK) {
        return message_page(a, rc, T(a, missing ? AM_NOT_FOUND : AM_UNAVAILABLE));
    }
    return back_to_list(a);
}

static int delete_key(admin_ctx *a, const char *id)
{
    static const char *const fields[] = {"csrf", NULL};
    request_rec *r = a->r;
    relay_key_record *k;
    apr_table_t *form;
    relay_redis_conn *c;
    const char *err = NULL;
    int rc = OK, answered, done = -1;

    if (r->method_number == M_GET) {
        if (!(k = load_key(a, id, &rc))) {
            return rc;
        }
        page_start(a, T(a, AM_DELETE_TITLE));
        ap_rprintf(r, "<h1>%s</h1><p><strong>%s</strong> <code>%s</code></p><p>%s</p>"
                      "<form method=\"post\" action=\"%s/keys/%s/delete\">",
                   T(a, AM_DELETE_TITLE), H(a, k->name), H(a, k->key_preview),
                   T(a, AM_DELETE_CONFIRM), H(a, a->base), H(a, k->id));
        csrf_field(a);
        ap_rprintf(r, "<div class=\"buttons\"><button class=\"danger\" type=\"submit\">%s</button>"
                      " <a class=\"button secondary\" href=\"%s/\">%s</a></div></form>",
                   T(a, AM_DELETE), H(a, a->base), T(a, AM_CANCEL));
        page_end(a);
        return OK;
    }
    if ((rc = read_form(r, fields, &form)) != OK) {
        return message_page(a, rc, T(a, AM_ERR_FORM));
    }
    rc = check_form(a, form, "a key deletion", &answered);
    if (answered) {
        return rc;
    }
    c = borrow(a, &err);
    if (c) {
        done = relay_keystore_delete(c, id, r->pool, &err);
        give_back(a, c);
    }
    if (done < 0) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin: cannot delete key %s: %s", id, err);
        return message_page(a, HTTP_SERVICE_UNAVAILABLE, T(a, AM_UNAVAILABLE));
    }
    if (done == 0) {
        return message_page(a, HTTP_NOT_FOUND, T(a, AM_NOT_FOUND));
    }
    ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r, RLOG "admin audit: %s deleted key %s",
                  ap_escape_logitem(r->pool, a->user), id);
    return back_to_list(a);
}

/* ---------------------------------------------------------------------- */
/* Static assets                                                          */

static int static_asset(admin_ctx *a, const char *name)
{
    request_rec *r = a->r;
    const char *type, *path;
    apr_file_t *f;
    apr_finfo_t fi;
    apr_size_t sent;
    apr_status_t rv;

    if (strcmp(name, "admin.css") == 0) {
        type = "text/css; charset=utf-8";
    }
    else if (strcmp(name, "admin.js") == 0) {
        type = "text/javascript; charset=utf-8";
    }
    else {
        return HTTP_NOT_FOUND;
    }
    if (r->method_number != M_GET) {
        r->allowed = AP_METHOD_BIT << M_GET;
        return HTTP_METHOD_NOT_ALLOWED;
    }
    path = apr_pstrcat(r->pool, relay_admin_assets(a->sc), "/", name, NULL);
    rv = apr_file_open(&f, path, APR_FOPEN_READ | APR_FOPEN_SENDFILE_ENABLED, 0, r->pool);
    if (rv != APR_SUCCESS || apr_file_info_get(&fi, APR_FINFO_SIZE, f) != APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, rv, r,
                      RLOG "admin: cannot read %s (see RelayAdminAssets)", path);
        return HTTP_NOT_FOUND;
    }
    ap_set_content_type(r, type);
    ap_set_content_length(r, fi.size);
    /* the pages change only with the module: a short cache is safe (replaces no-store) */
    apr_table_setn(r->err_headers_out, "Cache-Control", "max-age=300");
    if (!r->header_only) {
        ap_send_fd(f, r, 0, (apr_size_t)fi.size, &sent);
    }
    return OK;
}

/* ---------------------------------------------------------------------- */
/* JSON API                                                               */

/* Send a JSON document with a status. */
static int json_send(request_rec *r, int status, json_object *doc)
{
    const char *text = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN);

    r->status = status;
    ap_set_content_type(r, "application/json");
    ap_rputs(text, r);
    json_object_put(doc);
    return OK;
}

/* {"success":false,"error":...,"field":...} */
static int json_fail(request_rec *r, int status, const char *error, const char *field)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "success", json_object_new_boolean(0));
    json_object_object_add(o, "error", json_object_new_string(error));
    if (field) {
        json_object_object_add(o, "field", json_object_new_string(field));
    }
    return json_send(r, status, o);
}

static json_object *json_str(const char *s)
{
    return json_object_new_string(s ? s : "");
}

/* One period's counters as JSON. */
static json_object *period_json(const relay_usage_period *u)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "tokens", json_object_new_int64(u->tokens));
    json_object_object_add(o, "inputTokens", json_object_new_int64(u->input));
    json_object_object_add(o, "outputTokens", json_object_new_int64(u->output));
    json_object_object_add(o, "cacheCreateTokens", json_object_new_int64(u->cache_create));
    json_object_object_add(o, "cacheReadTokens", json_object_new_int64(u->cache_read));
    json_object_object_add(o, "allTokens", json_object_new_int64(u->all));
    json_object_object_add(o, "requests", json_object_new_int64(u->requests));
    return o;
}

/* A key as the API shows it: never its hash. */
static json_object *key_json(const admin_ctx *a, const relay_key_record *k)
{
    json_object *o = json_object_new_object();
    json_object *usage = json_object_new_object();

    json_object_object_add(o, "id", json_str(k->id));
    json_object_object_add(o, "name", json_str(k->name));
    json_object_object_add(o, "description", json_str(k->description));
    json_object_object_add(o, "keyPreview", json_str(k->key_preview));
    json_object_object_add(o, "tokenLimit", json_object_new_int64(atoll(k->token_limit)));
    json_object_object_add(o, "concurrencyLimit",
                           json_object_new_int64(atoll(k->concurrency_limit)));
    json_object_object_add(o, "isActive", json_object_new_boolean(relay_key_enabled(k)));
    json_object_object_add(o, "status", json_str(relay_key_status(k, a->now_iso)));
    json_object_object_add(o, "currentConcurrency", json_object_new_int64(k->current_concurrency));
    json_object_object_add(o, "createdAt", json_str(k->created_at));
    json_object_object_add(o, "updatedAt", json_str(k->updated_at));
    json_object_object_add(o, "lastUsedAt", json_str(k->last_used_at));
    json_object_object_add(o, "expiresAt", json_str(k->expires_at));
    json_object_object_add(o, "createdBy", json_str(k->created_by));
    json_object_object_add(o, "updatedBy", json_str(k->updated_by));
    json_object_object_add(usage, "total", period_json(&k->total));
    json_object_object_add(usage, "daily", period_json(&k->today));
    json_object_object_add(usage, "monthly", period_json(&k->month));
    json_object_object_add(o, "usage", usage);
    return o;
}

/* {"success":true,"data":...} */
static int json_ok(request_rec *r, int status, json_object *data)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "success", json_object_new_boolean(1));
    json_object_object_add(o, "data", data);
    return json_send(r, status, o);
}

/*
 * A limit from JSON: a whole number >= 0, a string of digits, or null/absent
 * (0). Returns 0 and sets *out, or -1.
 */
static int json_limit(json_object *v, long *out)
{
    *out = 0;
    if (!v || json_object_is_type(v, json_type_null)) {
        return 0;
    }
    if (json_object_is_type(v, json_type_int)) {
        int64_t n = json_object_get_int64(v);
        if (n < 0 || n > 2147483647) {
            return -1;
        }
        *out = (long)n;
        return 0;
    }
    if (json_object_is_type(v, json_type_double)) {
        double d = json_object_get_double(v);
        /* range first: casting NaN, an infinity or a huge value to long is undefined */
        if (!isfinite(d) || d < 0 || d > 2147483647.0) {
            return -1;
        }
        if (d != (double)(long)d) {
            return -1;
        }
        *out = (long)d;
        return 0;
    }
    if (json_object_is_type(v, json_type_string)) {
        return relay_parse_limit(json_object_get_string(v), out);
    }
    return -1;
}

/* A string field (or null/absent as ""); -1 when of another type. */
static int json_text(json_object *v, const char **out)
{
    *out = "";
    if (!v || json_object_is_type(v, json_type_null)) {
        return 0;
    }
    if (!json_object_is_type(v, json_type_string)) {
        return -1;
    }
    /* a NUL inside the string would cut it short: refuse it */
    if ((int)strlen(json_object_get_string(v)) != json_object_get_string_len(v)) {
        return -1;
    }
    *out = json_object_get_string(v);
    return 0;
}

static int api_create(admin_ctx *a)
{
    request_rec *r = a->r;
    json_object *body, *v;
    const char *why = NULL, *err = NULL, *plain = NULL, *expires_in;
    relay_key_new nk;
    relay_invalid iv;
    char expires[RELAY_ISO_LEN + 1];
    unsigned char rnd[RELAY_KEYSTORE_RANDOM_BYTES];
    relay_redis_conn *c;
    relay_key_record *k = NULL;
    relay_ks_result done = RELAY_KS_ERROR;
    json_object *data;
    int rc;

    if ((rc = read_json(r, &body, &why)) != OK) {
        return json_fail(r, rc, why, NULL);
    }
    json_object_object_foreach(body, field, val) {
        (void)val;
        if (strcmp(field, "name") && strcmp(field, "description") && strcmp(field, "tokenLimit") &&
            strcmp(field, "concurrencyLimit") && strcmp(field, "expiresAt")) {
            return json_fail(r, HTTP_BAD_REQUEST,
                             apr_psprintf(r->pool, "Unknown field: %s", field), field);
        }
    }
    memset(&nk, 0, sizeof(nk));
    json_object_object_get_ex(body, "name", &v);
    if (json_text(v, &nk.name) != 0) {
        return json_fail(r, HTTP_BAD_REQUEST, "name must be a string", "name");
    }
    iv = relay_check_name(nk.name);
    if (iv != RELAY_VALID) {
        return json_fail(r, HTTP_BAD_REQUEST,
                         iv == RELAY_INVALID_REQUIRED   ? "name is required"
                         : iv == RELAY_INVALID_TOO_LONG ? "name is longer than 100 characters"
                                                        : "name contains characters that are not "
                                                          "allowed",
                         "name");
    }
    v = NULL;
    json_object_object_get_ex(body, "description", &v);
    if (json_text(v, &nk.description) != 0) {
        return json_fail(r, HTTP_BAD_REQUEST, "description must be a string", "description");
    }
    iv = relay_check_description(nk.description);
    if (iv != RELAY_VALID) {
        return json_fail(r, HTTP_BAD_REQUEST,
                         iv == RELAY_INVALID_TOO_LONG
                             ? "description is longer than 500 characters"
                             : "description contains characters that are not allowed",
                         "description");
    }
    v = NULL;
    json_object_object_get_ex(body, "tokenLimit", &v);
    if (json_limit(v, &nk.token_limit) != 0) {
        return json_fail(r, HTTP_BAD_REQUEST,
                         "tokenLimit must be a whole number from 0 to 2147483647 (0 = unlimited)",
                         "tokenLimit");
    }
    v = NULL;
    json_object_object_get_ex(body, "concurrencyLimit", &v);
    if (json_limit(v, &nk.concurrency_limit) != 0) {
        return json_fail(
            r, HTTP_BAD_REQUEST,
            "concurrencyLimit must be a whole number from 0 to 2147483647 (0 = unlimited)",
            "concurrencyLimit");
    }
    v = NULL;
    json_object_object_get_ex(body, "expiresAt", &v);
    if (json_text(v, &expires_in) != 0) {
        return json_fail(r, HTTP_BAD_REQUEST, "expiresAt must be a string or null", "expiresAt");
    }
    iv = relay_check_expiry(expires_in, a->now_iso, expires);
    if (iv == RELAY_INVALID_DATE) {
        return json_fail(r, HTTP_BAD_REQUEST,
                         "expiresAt must be YYYY-MM-DD or an ISO-8601 UTC time", "expiresAt");
    }
    if (iv == RELAY_INVALID_PAST) {
        return json_fail(r, HTTP_BAD_REQUEST, "expiresAt is in the past", "expiresAt");
    }
    nk.expires_at = expires;
    nk.created_by = a->user;
    if (apr_generate_random_bytes(rnd, sizeof(rnd)) != APR_SUCCESS) {
        return json_fail(r, HTTP_INTERNAL_SERVER_ERROR, "No random bytes available", NULL);
    }
    c = borrow(a, &err);
    if (c) {
        done = relay_keystore_create(c, &nk, a->sc->secret, rnd, &k, &plain, r->pool, &err);
        give_back(a, c);
    }
    if (done != RELAY_KS_DONE) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin API: cannot create a key: %s", err);
        return done == RELAY_KS_EXISTS
                   ? json_fail(r, HTTP_CONFLICT,
                               "A key with this id or key hash exists already; nothing was "
                               "changed. Try again.",
                               NULL)
                   : json_fail(r, HTTP_SERVICE_UNAVAILABLE, "The key store cannot be reached",
                               NULL);
    }
    ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r,
                  RLOG "admin audit: %s created key %s (%s) through the API, concurrency limit "
                       "%ld, token limit %ld",
                  ap_escape_logitem(r->pool, a->user), k->id, ap_escape_logitem(r->pool, k->name),
                  nk.concurrency_limit, nk.token_limit);
    data = key_json(a, k);
    json_object_object_add(data, "apiKey", json_str(plain));
    return json_ok(r, HTTP_CREATED, data);
}

static int api_update(admin_ctx *a, const char *id)
{
    request_rec *r = a->r;
    json_object *body;
    apr_array_header_t *pairs = apr_array_make(r->pool, 6, sizeof(const char *));
    const char *why = NULL, *err = NULL;
    relay_redis_conn *c;
    relay_key_record *k;
    int rc, missing;

    if ((rc = read_json(r, &body, &why)) != OK) {
        return json_fail(r, rc, why, NULL);
    }
    json_object_object_foreach(body, field, val) {
        long n;
        if (!strcmp(field, "tokenLimit") || !strcmp(field, "concurrencyLimit")) {
            if (!val || json_limit(val, &n) != 0) {
                return json_fail(r, HTTP_BAD_REQUEST,
                                 apr_psprintf(r->pool,
                                              "%s must be a whole number from 0 to 2147483647 "
                                              "(0 = unlimited)",
                                              field),
                                 field);
            }
            APR_ARRAY_PUSH(pairs, const char *) =
                strcmp(field, "tokenLimit") ? RELAY_F_CONCURRENCY_LIMIT : RELAY_F_TOKEN_LIMIT;
            APR_ARRAY_PUSH(pairs, const char *) = apr_ltoa(r->pool, n);
        }
        else if (!strcmp(field, "isActive")) {
            if (!val || !json_object_is_type(val, json_type_boolean)) {
                return json_fail(r, HTTP_BAD_REQUEST, "isActive must be true or false",
                                 "isActive");
            }
            APR_ARRAY_PUSH(pairs, const char *) = RELAY_F_IS_ACTIVE;
            APR_ARRAY_PUSH(pairs, const char *) =
                json_object_get_boolean(val) ? RELAY_ACTIVE_TRUE : RELAY_ACTIVE_FALSE;
        }
        else {
            return json_fail(r, HTTP_BAD_REQUEST,
                             apr_psprintf(r->pool,
                                          "Field %s cannot be changed (only tokenLimit, "
                                          "concurrencyLimit and isActive can)",
                                          field),
                             field);
        }
    }
    if (pairs->nelts == 0) {
        return json_fail(r, HTTP_BAD_REQUEST,
                         "Nothing to change: give tokenLimit, concurrencyLimit or isActive", NULL);
    }
    rc = save_fields(a, id, pairs, "edited (API)", &missing);
    if (rc != OK) {
        return missing ? json_fail(r, HTTP_NOT_FOUND, "No key with this id", "id")
                       : json_fail(r, HTTP_SERVICE_UNAVAILABLE, "The key store cannot be reached",
                                   NULL);
    }
    c = borrow(a, &err);
    k = c ? relay_keystore_get(c, id, r->pool, &err) : NULL;
    if (c) {
        give_back(a, c);
    }
    if (!k) {
        return json_fail(r, err ? HTTP_SERVICE_UNAVAILABLE : HTTP_NOT_FOUND,
                         err ? "The key store cannot be reached" : "No key with this id", "id");
    }
    return json_ok(r, HTTP_OK, key_json(a, k));
}

static int api(admin_ctx *a, const char *rest)
{
    request_rec *r = a->r;
    const char *err = NULL;
    relay_redis_conn *c;
    int m = r->method_number;

    /* browsers send Origin with cross-site writes: refuse any from elsewhere */
    if (m != M_GET && !same_origin(r)) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                      RLOG "admin API: refused a %s from a foreign origin", r->method);
        return json_fail(r, HTTP_FORBIDDEN, "Cross-site requests are refused", NULL);
    }
    if (*rest == '\0' || strcmp(rest, "/") == 0) {
        apr_array_header_t *keys;
        json_object *list, *doc;
        int i, total = 0;

        if (m == M_POST) {
            return api_create(a);
        }
        if (m != M_GET) {
            r->allowed = (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_POST);
            apr_table_setn(r->headers_out, "Allow", "GET, HEAD, POST");
            return json_fail(r, HTTP_METHOD_NOT_ALLOWED, "Method not allowed here", NULL);
        }
        c = borrow(a, &err);
        keys = c ? relay_keystore_list(c, RELAY_KEYSTORE_LIST_MAX, &total, r->pool, &err) : NULL;
        if (c) {
            give_back(a, c);
        }
        if (!keys) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin API: cannot list keys: %s",
                          err);
            return json_fail(r, HTTP_SERVICE_UNAVAILABLE, "The key store cannot be reached",
                             NULL);
        }
        list = json_object_new_array();
        for (i = 0; i < keys->nelts; i++) {
            json_object_array_add(list, key_json(a, APR_ARRAY_IDX(keys, i, relay_key_record *)));
        }
        /* the newest RELAY_KEYSTORE_LIST_MAX at most: total says how many exist */
        doc = json_object_new_object();
        json_object_object_add(doc, "success", json_object_new_boolean(1));
        json_object_object_add(doc, "data", list);
        json_object_object_add(doc, "total", json_object_new_int(total));
        json_object_object_add(doc, "limit", json_object_new_int(RELAY_KEYSTORE_LIST_MAX));
        return json_send(r, HTTP_OK, doc);
    }
    if (rest[0] == '/') {
        const char *id = rest + 1;
        relay_key_record *k;
        int done = -1;

        if (!relay_uuid_ok(id)) {
            return json_fail(r, HTTP_NOT_FOUND, "No key with this id (ids are UUIDs)", "id");
        }
        if (m == M_PUT) {
            return api_update(a, id);
        }
        if (m == M_DELETE) {
            c = borrow(a, &err);
            if (c) {
                done = relay_keystore_delete(c, id, r->pool, &err);
                give_back(a, c);
            }
            if (done < 0) {
                return json_fail(r, HTTP_SERVICE_UNAVAILABLE, "The key store cannot be reached",
                                 NULL);
            }
            if (done == 0) {
                return json_fail(r, HTTP_NOT_FOUND, "No key with this id", "id");
            }
            ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r,
                          RLOG "admin audit: %s deleted key %s through the API",
                          ap_escape_logitem(r->pool, a->user), id);
            return json_ok(r, HTTP_OK, json_object_new_object());
        }
        if (m != M_GET) {
            r->allowed = (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_PUT) |
                         (AP_METHOD_BIT << M_DELETE);
            apr_table_setn(r->headers_out, "Allow", "GET, HEAD, PUT, DELETE");
            return json_fail(r, HTTP_METHOD_NOT_ALLOWED, "Method not allowed here", NULL);
        }
        c = borrow(a, &err);
        k = c ? relay_keystore_get(c, id, r->pool, &err) : NULL;
        if (c) {
            give_back(a, c);
        }
        if (!k) {
            return err ? json_fail(r, HTTP_SERVICE_UNAVAILABLE, "The key store cannot be reached",
                                   NULL)
                       : json_fail(r, HTTP_NOT_FOUND, "No key with this id", "id");
        }
        return json_ok(r, HTTP_OK, key_json(a, k));
    }
    return json_fail(r, HTTP_NOT_FOUND, "No such API endpoint", NULL);
}

/*
 * GET api/inflight?ids=ID,ID,...: the live columns of the keys a list page
 * shows (at most RELAY_KEYSTORE_LIVE_MAX), in one script call. The page polls
 * this instead of the whole list.
 */
static int api_live(admin_ctx *a)
{
    request_rec *r = a->r;
    apr_array_header_t *ids = apr_array_make(r->pool, 16, sizeof(const char *));
    apr_array_header_t *live;
    json_object *list;
    const char *err = NULL;
    relay_redis_conn *c;
    char *args, *pair, *state;
    int i;

    if (r->method_number != M_GET) {
        r->allowed = AP_METHOD_BIT << M_GET;
        apr_table_setn(r->headers_out, "Allow", "GET, HEAD");
        return json_fail(r, HTTP_METHOD_NOT_ALLOWED, "Method not allowed here", NULL);
    }
    args = apr_pstrdup(r->pool, r->args ? r->args : "");
    for (pair = apr_strtok(args, "&", &state); pair; pair = apr_strtok(NULL, "&", &state)) {
        char *id, *idstate;

        if (strncmp(pair, "ids=", 4) != 0) {
            continue;
        }
        if (ap_unescape_url(pair + 4) != OK) {
            return json_fail(r, HTTP_BAD_REQUEST, "ids is not a valid URL-encoded value", "ids");
        }
        for (id = apr_strtok(pair + 4, ",", &idstate); id; id = apr_strtok(NULL, ",", &idstate)) {
            if (!relay_uuid_ok(id)) {
                return json_fail(r, HTTP_BAD_REQUEST,
                                 "ids must be key ids (UUIDs) separated by commas", "ids");
            }
            if (ids->nelts == RELAY_KEYSTORE_LIVE_MAX) {
                return json_fail(r, HTTP_BAD_REQUEST,
                                 apr_psprintf(r->pool, "At most %d ids per call",
                                              RELAY_KEYSTORE_LIVE_MAX),
                                 "ids");
            }
            APR_ARRAY_PUSH(ids, const char *) = id;
        }
    }
    c = borrow(a, &err);
    live = c ? relay_keystore_live(c, (const char *const *)ids->elts, ids->nelts, r->pool, &err)
             : NULL;
    if (c) {
        give_back(a, c);
    }
    if (!live) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin API: cannot read live counts: %s",
                      err);
        return json_fail(r, HTTP_SERVICE_UNAVAILABLE, "The key store cannot be reached", NULL);
    }
    list = json_object_new_array();
    for (i = 0; i < live->nelts; i++) {
        const relay_key_live *l = &APR_ARRAY_IDX(live, i, relay_key_live);
        json_object *o = json_object_new_object();

        json_object_object_add(o, "id", json_str(l->id));
        json_object_object_add(o, "currentConcurrency",
                               json_object_new_int64(l->current_concurrency));
        json_object_object_add(o, "concurrencyLimit",
                               json_object_new_int64(atoll(l->concurrency_limit)));
        json_object_object_add(o, "totalTokens", json_object_new_int64(l->total_tokens));
        json_object_array_add(list, o);
    }
    return json_ok(r, HTTP_OK, list);
}

/* ---------------------------------------------------------------------- */
/* The handler                                                            */

/*
 * The admin's path: the <Location> holding RelayAdmin or SetHandler. Core's section path is
 * used because our own config exists only in sections with our directives.
 */
static const char *admin_base(request_rec *r)
{
    core_dir_config *cd = ap_get_core_module_config(r->per_dir_config);
    const char *base = cd && cd->d ? cd->d : "";
    size_t n = strlen(base);

    while (n > 0 && base[n - 1] == '/') {
        n--;
    }
    base = apr_pstrmemdup(r->pool, base, n);
    /* a regex location or a mismatch: fall back to the first path segment */
    if (strncmp(r->uri, base, n) != 0 || (r->uri[n] != '\0' && r->uri[n] != '/')) {
        const char *slash = strchr(r->uri + 1, '/');
        base = slash ? apr_pstrmemdup(r->pool, r->uri, slash - r->uri) : r->uri;
    }
    return base;
}

/*
 * Whether this request is the admin's: it is where RelayAdmin is On or Open
 * (with or without SetHandler claude-relay-admin). The handler set where
 * RelayAdmin is Off -- in an .htaccess, say -- gets 404 and a line in the
 * error log. Returns DECLINED, OK to go on, or the status to answer.
 */
static int admin_allowed(request_rec *r)
{
    relay_dir_conf *dc = ap_get_module_config(r->per_dir_config, &claude_relay_module);
    relay_admin_mode mode = relay_admin_mode_of(dc);
    int named = r->handler && strcmp(r->handler, RELAY_ADMIN_HANDLER) == 0;

    if (mode == RELAY_ADMIN_OFF) {
        if (!named) {
            return DECLINED;
        }
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      RLOG "admin: not served at %s: the admin needs RelayAdmin On in the server "
                           "configuration (SetHandler " RELAY_ADMIN_HANDLER
                           " alone, or in an .htaccess, does not serve it)",
                      ap_escape_logitem(r->pool, r->uri));
        return HTTP_NOT_FOUND;
    }
    if (mode == RELAY_ADMIN_ON && (!r->user || !*r->user)) {
        security_headers(r);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      RLOG "admin: refused %s: the admin needs Apache authentication in front of "
                           "it, or RelayAdmin Open",
                      ap_escape_logitem(r->pool, r->uri));
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    return OK;
}

int relay_admin_handler(request_rec *r)
{
    admin_ctx a;
    const char *sub;
    int m = r->method_number, rc;

    if ((rc = admin_allowed(r)) != OK) {
        return rc;
    }
    memset(&a, 0, sizeof(a));
    a.r = r;
    a.sc = ap_get_module_config(r->server->module_config, &claude_relay_module);
    a.base = admin_base(r);
    a.sub = sub = r->uri + strlen(a.base);
    a.user = r->user && *r->user ? r->user : "anonymous";
    a.lang = pick_lang(r);
    a.now_iso = relay_now_iso(r->pool);
    security_headers(r);

    if (!a.sc->secret) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      RLOG "admin: RelayKeyHashSecret is not set for this server");
        return message_page(&a, HTTP_INTERNAL_SERVER_ERROR, "RelayKeyHashSecret is not set.");
    }
    relay_hmac_sha256(a.sc->secret, strlen(a.sc->secret), CSRF_KEY_LABEL,
                      strlen(CSRF_KEY_LABEL), a.csrf_key);
    if (strncmp(sub, "/api/keys", 9) == 0 && (sub[9] == '\0' || sub[9] == '/')) {
        if (m != M_GET && m != M_POST && m != M_PUT && m != M_DELETE) {
            r->allowed = (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_POST) |
                         (AP_METHOD_BIT << M_PUT) | (AP_METHOD_BIT << M_DELETE);
            return json_fail(r, HTTP_METHOD_NOT_ALLOWED, "Method not allowed", NULL);
        }
        rc = api(&a, sub + 9);
        if (m != M_GET) {
            /* whatever the answer, the rest of the body is not wanted */
            ap_discard_request_body(r);
        }
        return rc;
    }
    if (strcmp(sub, "/api/inflight") == 0) {
        return api_live(&a);
    }
    if (strncmp(sub, "/api/", 5) == 0) {
        return json_fail(r, HTTP_NOT_FOUND, "No such API endpoint", NULL);
    }
    if (strncmp(sub, "/static/", 8) == 0) {
        return static_asset(&a, sub + 8);
    }
    /* HTML pages: GET (and HEAD) and POST only */
    r->allowed = (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_POST);
    if (m != M_GET && m != M_POST) {
        return HTTP_METHOD_NOT_ALLOWED;
    }
    if (*sub == '\0' || strcmp(sub, "/") == 0) {
        return m == M_GET ? list_page(&a) : HTTP_METHOD_NOT_ALLOWED;
    }
    if (strcmp(sub, "/new") == 0) {
        return new_key(&a);
    }
    if (strncmp(sub, "/keys/", 6) == 0) {
        const char *id = sub + 6, *slash = strchr(id, '/');
        const char *action;

        if (!slash) {
            return message_page(&a, HTTP_NOT_FOUND, T(&a, AM_NOT_FOUND));
        }
        id = apr_pstrmemdup(r->pool, id, slash - id);
        action = slash + 1;
        if (!relay_uuid_ok(id)) {
            return message_page(&a, HTTP_NOT_FOUND, T(&a, AM_NOT_FOUND));
        }
        if (strcmp(action, "edit") == 0) {
            return edit_key(&a, id);
        }
        if (strcmp(action, "toggle") == 0) {
            return m == M_POST ? toggle_key(&a, id) : HTTP_METHOD_NOT_ALLOWED;
        }
        if (strcmp(action, "delete") == 0) {
            return delete_key(&a, id);
        }
    }
    return message_page(&a, HTTP_NOT_FOUND, T(&a, AM_NOT_FOUND));
}
