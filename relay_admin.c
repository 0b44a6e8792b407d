/*
 * relay_admin.c - the admin at /relay-admin, served by the
 * "claude-relay-admin" handler: who may enter, routing, security headers,
 * CSRF and origin checks, and what every page and API call shares (the
 * request's Redis connection, list parameters, messages). The pages, forms,
 * JSON API and static files live in the files relay_admin_int.h lists.
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
#include "relay_admin_int.h"

#include <http_core.h>
#include <http_request.h>
#include <apr_buckets.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <util_script.h>

APLOG_USE_MODULE(claude_relay);

/* a CSRF token is valid for the window it was made in and the one after */
#define CSRF_WINDOW_SECONDS (12 * 3600)
/* what the CSRF key is derived for: never the secret itself, which also hashes keys */
#define CSRF_KEY_LABEL "mod_claude_relay admin csrf"
/* the highest page number a list accepts */
#define LIST_PAGE_MAX 1000000

#define CSP                                                                                        \
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "              \
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

const char *relay_admin_text(const admin_ctx *a, admin_msg m)
{
    return admin_text[m][a->lang];
}

/* Format with a message of the table as the format (va_list: the table is trusted). */
static const char *format_text(apr_pool_t *p, const char *fmt, ...)
{
    va_list ap;
    const char *out;

    va_start(ap, fmt);
    out = apr_pvsprintf(p, fmt, ap);
    va_end(ap);
    return out;
}

const char *relay_admin_textf(const admin_ctx *a, admin_msg m, ...)
{
    va_list ap;
    const char *out;

    va_start(ap, m);
    out = apr_pvsprintf(a->r->pool, admin_text[m][a->lang], ap);
    va_end(ap);
    return out;
}

const char *relay_admin_escape(const admin_ctx *a, const char *s)
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

/* The number of the current CSRF time window. */
static long csrf_window(void)
{
    return (long)(apr_time_sec(apr_time_now()) / CSRF_WINDOW_SECONDS);
}

const char *relay_admin_csrf_token(const admin_ctx *a)
{
    return csrf_token_for(a, csrf_window());
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
 * A browser sends Origin on every cross-site POST, so a forged form fails
 * here even before the token is checked.
 */
int relay_admin_same_origin(request_rec *r)
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

int relay_admin_form_trusted(const admin_ctx *a, const char *token)
{
    long w = csrf_window();

    return relay_admin_same_origin(a->r) && token &&
           (same_secret(token, csrf_token_for(a, w)) ||
            same_secret(token, csrf_token_for(a, w - 1)));
}

/*
 * Read a form body into a table of the fields allowed (csrf and names).
 * Returns OK, or an HTTP status when the body is not a form or too large.
 */
static int read_form(request_rec *r, const char *const *allowed, int nallowed, apr_table_t **out)
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

        for (i = 0; i < nallowed && strcmp(pair->name, allowed[i]) != 0; i++) {
        }
        if (i == nallowed) {
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

int relay_admin_read_trusted_form(admin_ctx *a, const char *const *names, int n, const char *what,
                                  apr_table_t **form)
{
    const char **allowed = apr_palloc(a->r->pool, sizeof(*allowed) * (n + 1));
    int i, rc;

    allowed[0] = "csrf";
    for (i = 0; i < n; i++) {
        allowed[i + 1] = names[i];
    }
    if ((rc = read_form(a->r, allowed, n + 1, form)) != OK) {
        relay_admin_message_page(a, rc, relay_admin_text(a, AM_ERR_FORM));
        return 1;
    }
    if (!relay_admin_form_trusted(a, apr_table_get(*form, "csrf"))) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, a->r,
                      RLOG "admin: refused %s by %s: bad CSRF token or foreign origin", what,
                      ap_escape_logitem(a->r->pool, a->user));
        relay_admin_message_page(a, HTTP_FORBIDDEN, relay_admin_text(a, AM_FORBIDDEN));
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* The request's Redis connection                                         */

/* A connection borrowed for a request, and the pool it goes back to. */
typedef struct {
    relay_redis_pool *pool;
    relay_redis_conn *conn;
} borrowed_conn;

/* r->pool cleanup: give the request's connection back (closed if it broke). */
static apr_status_t give_back(void *data)
{
    borrowed_conn *b = data;

    relay_redis_release(b->pool, b->conn);
    return APR_SUCCESS;
}

relay_redis_conn *relay_admin_redis(admin_ctx *a, const char **err)
{
    borrowed_conn *b;
    relay_redis_pool *pool;
    relay_redis_conn *c;

    if (a->redis) {
        return a->redis;
    }
    if (!relay_server_store(a->r->server)) {
        *err = "the relay has no Redis pool in this server";
        return NULL;
    }
    pool = relay_lease_store_redis(relay_server_store(a->r->server));
    if (!(c = relay_redis_acquire(pool, a->r->pool, err))) {
        return NULL;
    }
    b = apr_palloc(a->r->pool, sizeof(*b));
    b->pool = pool;
    b->conn = c;
    apr_pool_cleanup_register(a->r->pool, b, give_back, apr_pool_cleanup_null);
    a->redis = c;
    return c;
}

/* ---------------------------------------------------------------------- */
/* What pages and the API share                                           */

/* The message of each refusal, in relay_admin_i18n.h's table. */
static const admin_msg invalid_msg[] = {
    [RELAY_VALID] = AM_ERR_FORM,
    [RELAY_INVALID_REQUIRED] = AM_ERR_REQUIRED,
    [RELAY_INVALID_TOO_LONG] = AM_ERR_TOO_LONG,
    [RELAY_INVALID_ENCODING] = AM_ERR_ENCODING,
    [RELAY_INVALID_NUMBER] = AM_ERR_NUMBER,
    [RELAY_INVALID_DATE] = AM_ERR_DATE,
    [RELAY_INVALID_PAST] = AM_ERR_PAST,
    [RELAY_INVALID_CHOICE] = AM_ERR_CHOICE,
};

const char *relay_admin_invalid_text(const admin_ctx *a, relay_field f, relay_invalid v,
                                     admin_lang lang)
{
    const char *fmt;

    if (v == RELAY_VALID) {
        return NULL;
    }
    fmt = admin_text[invalid_msg[v]][lang];
    /* the numbers come from the rules, so a message never disagrees with its check */
    if (v == RELAY_INVALID_TOO_LONG) {
        return format_text(a->r->pool, fmt, relay_field_rules[f].max_chars);
    }
    if (v == RELAY_INVALID_NUMBER) {
        return format_text(a->r->pool, fmt, RELAY_LIMIT_MAX);
    }
    return fmt;
}

/* A whole number from 1 to max, or -1. */
static long whole_number(const char *s, long max)
{
    long n;

    if (!*s || relay_parse_limit(s, &n) != 0 || n < 1 || n > max) {
        return -1;
    }
    return n;
}

const char *relay_admin_list_params(admin_ctx *a, relay_key_query *q)
{
    char *args = apr_pstrdup(a->r->pool, a->r->args ? a->r->args : "");
    char *pair, *state;
    int order = -1; /* -1: the sort's usual order */

    memset(q, 0, sizeof(*q));
    q->page = 1;
    q->per_page = RELAY_KEYSTORE_PAGE_DEFAULT;
    for (pair = apr_strtok(args, "&", &state); pair; pair = apr_strtok(NULL, "&", &state)) {
        char *v = strchr(pair, '=');
        long n;

        if (!v) {
            continue;
        }
        *v++ = '\0';
        if (ap_unescape_urlencoded(v) != OK) {
            return pair;
        }
        if (strcmp(pair, "search") == 0) {
            if (relay_check_search(v) != RELAY_VALID) {
                return "search";
            }
            q->search = v;
        }
        else if (strcmp(pair, "sort") == 0) {
            int s = relay_key_sort_find(v);
            if (s < 0) {
                return "sort";
            }
            q->sort = (relay_key_sort)s;
        }
        else if (strcmp(pair, "order") == 0) {
            if (strcmp(v, "asc") != 0 && strcmp(v, "desc") != 0) {
                return "order";
            }
            order = strcmp(v, "desc") == 0;
        }
        else if (strcmp(pair, "page") == 0) {
            if ((n = whole_number(v, LIST_PAGE_MAX)) < 0) {
                return "page";
            }
            q->page = (int)n;
        }
        else if (strcmp(pair, "perPage") == 0) {
            if ((n = whole_number(v, RELAY_KEYSTORE_PAGE_MAX)) < 0) {
                return "perPage";
            }
            q->per_page = (int)n;
        }
    }
    /* names read A to Z; everything else biggest or newest first */
    q->descending = order >= 0 ? order : q->sort != RELAY_SORT_NAME;
    return NULL;
}

void relay_admin_audit(const admin_ctx *a, const char *fmt, ...)
{
    va_list ap;
    const char *what;

    va_start(ap, fmt);
    what = apr_pvsprintf(a->r->pool, fmt, ap);
    va_end(ap);
    ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, a->r, RLOG "admin audit: %s %s",
                  ap_escape_logitem(a->r->pool, a->user), what);
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

/* The HTML pages: GET (and HEAD) and POST only. */
static int pages(admin_ctx *a, const char *sub)
{
    request_rec *r = a->r;
    int m = r->method_number;

    r->allowed = (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_POST);
    if (m != M_GET && m != M_POST) {
        return HTTP_METHOD_NOT_ALLOWED;
    }
    if (*sub == '\0' || strcmp(sub, "/") == 0) {
        return m == M_GET ? relay_admin_list_page(a) : HTTP_METHOD_NOT_ALLOWED;
    }
    if (strcmp(sub, "/new") == 0) {
        return relay_admin_new_key(a);
    }
    if (strncmp(sub, "/keys/", 6) == 0) {
        const char *id = sub + 6, *slash = strchr(id, '/');

        if (slash) {
            id = apr_pstrmemdup(r->pool, id, slash - id);
            if (relay_uuid_ok(id)) {
                int rc = relay_admin_key_action(a, id, slash + 1);
                if (rc != HTTP_NOT_FOUND) {
                    return rc;
                }
            }
        }
    }
    return relay_admin_message_page(a, HTTP_NOT_FOUND, relay_admin_text(a, AM_NOT_FOUND));
}

int relay_admin_handler(request_rec *r)
{
    admin_ctx *a;
    int rc;

    if ((rc = admin_allowed(r)) != OK) {
        return rc;
    }
    /* from the request's pool: the Redis connection's cleanup outlives this call */
    a = apr_pcalloc(r->pool, sizeof(*a));
    a->r = r;
    a->sc = ap_get_module_config(r->server->module_config, &claude_relay_module);
    a->base = admin_base(r);
    a->sub = r->uri + strlen(a->base);
    a->user = r->user && *r->user ? r->user : "anonymous";
    a->lang = pick_lang(r);
    a->now_iso = relay_now_iso(r->pool);
    security_headers(r);

    if (!a->sc->secret) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      RLOG "admin: RelayKeyHashSecret is not set for this server");
        return relay_admin_message_page(a, HTTP_INTERNAL_SERVER_ERROR,
                                        "RelayKeyHashSecret is not set.");
    }
    relay_hmac_sha256(a->sc->secret, strlen(a->sc->secret), CSRF_KEY_LABEL, strlen(CSRF_KEY_LABEL),
                      a->csrf_key);
    if (strncmp(a->sub, "/api/", 5) == 0) {
        return relay_admin_api(a, a->sub + 4);
    }
    if (strncmp(a->sub, "/static/", 8) == 0) {
        return relay_admin_static(a, a->sub + 8);
    }
    return pages(a, a->sub);
}
