/*
 * relay_admin_html.c - the admin's page frame and its key list: an overview
 * of the whole store, a search, an order, and one page of keys at a time,
 * so the list answers as fast for ten thousand keys as for ten.
 */
#include "relay_admin_int.h"

#include <stdlib.h>
#include <string.h>

APLOG_USE_MODULE(claude_relay);

/* The choices of the list's page-size menu. */
static const int per_page_choices[] = {25, RELAY_KEYSTORE_PAGE_DEFAULT, 100,
                                       RELAY_KEYSTORE_PAGE_MAX};

/* The words of each sort, in relay_key_sort's order. */
static const admin_msg sort_label[RELAY_SORT_COUNT] = {
    [RELAY_SORT_CREATED] = AM_SORT_CREATED,     [RELAY_SORT_NAME] = AM_SORT_NAME,
    [RELAY_SORT_IN_FLIGHT] = AM_SORT_IN_FLIGHT, [RELAY_SORT_TOKENS_TODAY] = AM_SORT_TOKENS_TODAY,
    [RELAY_SORT_LAST_USED] = AM_SORT_LAST_USED,
};

void relay_admin_page_start(admin_ctx *a, const char *title)
{
    request_rec *r = a->r;
    const char *base = relay_admin_escape(a, a->base);

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
               a->lang == LANG_ZH ? "zh-Hans" : "en", relay_admin_escape(a, title), base, base,
               base, relay_admin_text(a, AM_TITLE), base, relay_admin_text(a, AM_KEYS), base,
               relay_admin_text(a, AM_NEW_KEY), relay_admin_text(a, AM_SIGNED_IN_AS),
               relay_admin_escape(a, a->user));
}

void relay_admin_page_end(admin_ctx *a)
{
    ap_rputs("</main></body></html>\n", a->r);
}

int relay_admin_message_page(admin_ctx *a, int status, const char *text)
{
    a->r->status = status;
    relay_admin_page_start(a, text);
    ap_rprintf(a->r, "<p class=\"error\">%s</p><p><a href=\"%s/\">%s</a></p>",
               relay_admin_escape(a, text), relay_admin_escape(a, a->base),
               relay_admin_text(a, AM_BACK));
    relay_admin_page_end(a);
    return OK;
}

void relay_admin_csrf_field(admin_ctx *a)
{
    ap_rprintf(a->r, "<input type=\"hidden\" name=\"csrf\" value=\"%s\">",
               relay_admin_csrf_token(a));
}

/* The page that shows a new key once, with a copy button. */
void relay_admin_show_key_once(admin_ctx *a, admin_msg title, const char *name, const char *plain)
{
    relay_admin_page_start(a, relay_admin_text(a, title));
    ap_rprintf(a->r,
               "<h1>%s</h1><p><strong>%s</strong></p>"
               "<div class=\"new-key\"><input id=\"new-key\" type=\"text\" readonly value=\"%s\">"
               "<button type=\"button\" class=\"copy\" data-copy=\"new-key\">%s</button></div>"
               "<p class=\"warning\">%s</p><p><a href=\"%s/\">%s</a></p>",
               relay_admin_text(a, title), relay_admin_escape(a, name),
               relay_admin_escape(a, plain), relay_admin_text(a, AM_COPY),
               relay_admin_text(a, AM_SHOWN_ONCE), relay_admin_escape(a, a->base),
               relay_admin_text(a, AM_BACK));
    relay_admin_page_end(a);
}

/* Load a key for a page; sends the error page and returns NULL when it cannot. */
relay_key_record *relay_admin_load_key(admin_ctx *a, const char *id, int *rc)
{
    const char *err = NULL;
    relay_redis_conn *c = relay_admin_redis(a, &err);
    relay_key_record *k = c ? relay_keystore_get(c, id, a->r->pool, &err) : NULL;

    if (!k) {
        if (err) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, a->r, RLOG "admin: cannot read key %s: %s", id,
                          err);
            *rc = relay_admin_message_page(a, HTTP_SERVICE_UNAVAILABLE,
                                           relay_admin_text(a, AM_UNAVAILABLE));
        }
        else {
            *rc = relay_admin_message_page(a, HTTP_NOT_FOUND, relay_admin_text(a, AM_NOT_FOUND));
        }
    }
    return k;
}

/* Answer a key-store result that is not RELAY_KS_DONE with its page. */
int relay_admin_store_failed(admin_ctx *a, relay_ks_result done, const char *doing, const char *id,
                             const char *err)
{
    if (done == RELAY_KS_NOT_FOUND) {
        return relay_admin_message_page(a, HTTP_NOT_FOUND, relay_admin_text(a, AM_NOT_FOUND));
    }
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, a->r, RLOG "admin: cannot %s key %s: %s", doing, id,
                  err);
    if (done == RELAY_KS_EXISTS) {
        return relay_admin_message_page(a, HTTP_CONFLICT, relay_admin_text(a, AM_ERR_EXISTS));
    }
    return relay_admin_message_page(a, HTTP_SERVICE_UNAVAILABLE,
                                    relay_admin_text(a, AM_UNAVAILABLE));
}

/* Send the browser to a page of the admin after a change (303). */
int relay_admin_see_other(admin_ctx *a, const char *path)
{
    apr_table_setn(
        a->r->headers_out, "Location",
        ap_construct_url(a->r->pool, apr_pstrcat(a->r->pool, a->base, path, NULL), a->r));
    return HTTP_SEE_OTHER;
}

const char *relay_admin_in_flight_text(admin_ctx *a, long current, const char *limit)
{
    long n = atol(limit ? limit : "0");

    if (n <= 0) {
        return apr_psprintf(a->r->pool, "%ld / %s", current, relay_admin_text(a, AM_UNLIMITED));
    }
    return apr_psprintf(a->r->pool, "%ld / %ld", current, n);
}

/* A stored time as the list shows it, "2025-01-31 23:59", or the given word when empty. */
static const char *show_time(admin_ctx *a, const char *iso, admin_msg empty)
{
    if (!iso || !*iso) {
        return relay_admin_text(a, empty);
    }
    if (strlen(iso) >= 16) {
        return apr_psprintf(a->r->pool, "%.10s %.5s", iso, iso + 11);
    }
    return iso;
}

/*
 * Tokens used (against the token limit, with a bar, when there is one),
 * requests and today's tokens. The bar is a <progress>: no inline style under the CSP.
 */
static const char *usage_cell(admin_ctx *a, const relay_key_record *k)
{
    apr_pool_t *p = a->r->pool;
    apr_int64_t limit = apr_atoi64(k->token_limit);
    const char *used = apr_psprintf(p, "<span class=\"tokens\">%" APR_INT64_T_FMT "</span>",
                                    (apr_int64_t)k->total.tokens);

    /* no limit, no "/ limit": the cell stays narrow */
    if (limit > 0) {
        used = apr_psprintf(p,
                            "%s / %" APR_INT64_T_FMT "<progress max=\"%" APR_INT64_T_FMT
                            "\" value=\"%" APR_INT64_T_FMT "\"></progress>",
                            used, limit, limit,
                            (apr_int64_t)(k->total.tokens < limit ? k->total.tokens : limit));
    }
    return apr_psprintf(p, "%s<small>%" APR_INT64_T_FMT " %s · %s %" APR_INT64_T_FMT "</small>",
                        used, (apr_int64_t)k->total.requests, relay_admin_text(a, AM_REQUESTS),
                        relay_admin_text(a, AM_TODAY), (apr_int64_t)k->today.tokens);
}

/* The words for a key's status. */
static admin_msg status_msg(const char *status)
{
    return !strcmp(status, "disabled")  ? AM_DISABLED
           : !strcmp(status, "expired") ? AM_EXPIRED
                                        : AM_ACTIVE;
}

/* The list's URL for a query and page, every value escaped for a URL and for HTML. */
static const char *list_url(admin_ctx *a, const relay_key_query *q, relay_key_sort sort,
                            int descending, int page)
{
    apr_pool_t *p = a->r->pool;
    const char *url =
        apr_psprintf(p, "%s/?sort=%s&order=%s&perPage=%d&page=%d", a->base,
                     relay_key_sort_names[sort], descending ? "desc" : "asc", q->per_page, page);

    if (q->search && *q->search) {
        url = apr_pstrcat(p, url, "&search=", ap_escape_urlencoded(p, q->search), NULL);
    }
    return relay_admin_escape(a, url);
}

/* The overview of the whole store, above the list. */
static void overview(admin_ctx *a, const relay_key_overview *o)
{
    ap_rprintf(
        a->r,
        "<section class=\"overview\" aria-label=\"%s\">"
        "<div class=\"stat\"><span class=\"value\" id=\"ov-keys\">%ld</span>"
        "<span class=\"label\">%s</span></div>"
        "<div class=\"stat\"><span class=\"value\" id=\"ov-keys-in-flight\">%ld</span>"
        "<span class=\"label\">%s</span></div>"
        "<div class=\"stat\"><span class=\"value\" id=\"ov-in-flight\">%" APR_INT64_T_FMT
        "</span><span class=\"label\">%s</span></div>"
        "<div class=\"stat\"><span class=\"value\" id=\"ov-requests-today\">%" APR_INT64_T_FMT
        "</span><span class=\"label\">%s</span></div>"
        "<div class=\"stat\"><span class=\"value\" id=\"ov-tokens-today\">%" APR_INT64_T_FMT
        "</span><span class=\"label\">%s</span></div></section>",
        relay_admin_text(a, AM_TITLE), o->keys, relay_admin_text(a, AM_OV_KEYS), o->keys_in_flight,
        relay_admin_text(a, AM_OV_KEYS_IN_FLIGHT), (apr_int64_t)o->in_flight,
        relay_admin_text(a, AM_OV_IN_FLIGHT), (apr_int64_t)o->requests_today,
        relay_admin_text(a, AM_OV_REQUESTS_TODAY), (apr_int64_t)o->tokens_today,
        relay_admin_text(a, AM_OV_TOKENS_TODAY));
}

/* One <option>, selected when chosen. */
static void option(admin_ctx *a, const char *value, const char *label, int chosen)
{
    ap_rprintf(a->r, "<option value=\"%s\"%s>%s</option>", value, chosen ? " selected" : "", label);
}

/* The search form: text, order and page size (a GET: it changes nothing). */
static void controls(admin_ctx *a, const relay_key_query *q)
{
    request_rec *r = a->r;
    size_t i;
    int s, listed = 0;

    ap_rprintf(r,
               "<form class=\"list-controls\" method=\"get\" action=\"%s/\" role=\"search\">"
               "<label class=\"grow\">%s <input type=\"search\" id=\"search\" name=\"search\" "
               "value=\"%s\" maxlength=\"%d\" placeholder=\"%s\"></label>"
               "<label>%s <select id=\"sort\" name=\"sort\">",
               relay_admin_escape(a, a->base), relay_admin_text(a, AM_SEARCH),
               relay_admin_escape(a, q->search), RELAY_SEARCH_MAX_CHARS,
               relay_admin_text(a, AM_SEARCH_PLACEHOLDER), relay_admin_text(a, AM_SORT));
    for (s = 0; s < RELAY_SORT_COUNT; s++) {
        option(a, relay_key_sort_names[s], relay_admin_text(a, sort_label[s]), (int)q->sort == s);
    }
    ap_rprintf(r, "</select></label><label>%s <select id=\"order\" name=\"order\">",
               relay_admin_text(a, AM_ORDER));
    option(a, "desc", relay_admin_text(a, AM_ORDER_DESC), q->descending);
    option(a, "asc", relay_admin_text(a, AM_ORDER_ASC), !q->descending);
    ap_rprintf(r, "</select></label><label>%s <select id=\"perPage\" name=\"perPage\">",
               relay_admin_text(a, AM_PER_PAGE));
    for (i = 0; i < sizeof(per_page_choices) / sizeof(per_page_choices[0]); i++) {
        int n = per_page_choices[i];
        /* a size given in the URL that the menu lacks stays chosen */
        if (!listed && q->per_page < n) {
            option(a, apr_itoa(r->pool, q->per_page), apr_itoa(r->pool, q->per_page), 1);
        }
        listed |= q->per_page <= n;
        option(a, apr_itoa(r->pool, n), apr_itoa(r->pool, n), q->per_page == n);
    }
    ap_rprintf(r,
               "</select></label><button type=\"submit\">%s</button>"
               "<a class=\"button secondary\" href=\"%s/\">%s</a></form>",
               relay_admin_text(a, AM_SEARCH), relay_admin_escape(a, a->base),
               relay_admin_text(a, AM_CLEAR));
}

/* The links to other pages of the same search, order and size. */
static void pager(admin_ctx *a, const relay_key_query *q, const relay_key_page *pg)
{
    request_rec *r = a->r;
    int prev = pg->page > 1, next = pg->page < pg->pages;

    if (pg->pages <= 1 && pg->page <= 1) {
        return;
    }
    ap_rputs("<nav class=\"pager\">", r);
    if (prev) {
        ap_rprintf(
            r,
            "<a class=\"first\" href=\"%s\">%s</a><a class=\"prev\" rel=\"prev\" "
            "href=\"%s\">%s</a>",
            list_url(a, q, q->sort, q->descending, 1), relay_admin_text(a, AM_FIRST),
            list_url(a, q, q->sort, q->descending, pg->page > pg->pages ? pg->pages : pg->page - 1),
            relay_admin_text(a, AM_PREV));
    }
    ap_rprintf(r, "<span class=\"where\">%s</span>",
               relay_admin_textf(a, AM_PAGES, pg->page, pg->pages));
    if (next) {
        ap_rprintf(r,
                   "<a class=\"next\" rel=\"next\" href=\"%s\">%s</a><a class=\"last\" "
                   "href=\"%s\">%s</a>",
                   list_url(a, q, q->sort, q->descending, pg->page + 1),
                   relay_admin_text(a, AM_NEXT), list_url(a, q, q->sort, q->descending, pg->pages),
                   relay_admin_text(a, AM_LAST));
    }
    ap_rputs("</nav>", r);
}

/*
 * A column heading that orders the list by what title names (the other way
 * round when it does already).
 */
static const char *heading(admin_ctx *a, const relay_key_query *q, relay_key_sort sort,
                           admin_msg label, admin_msg title)
{
    int on = q->sort == sort;
    int desc = on ? !q->descending : sort != RELAY_SORT_NAME;

    return apr_psprintf(
        a->r->pool, "<th%s><a href=\"%s\" title=\"%s: %s\">%s%s</a></th>",
        on ? (q->descending ? " aria-sort=\"descending\"" : " aria-sort=\"ascending\"") : "",
        list_url(a, q, sort, desc, 1), relay_admin_text(a, AM_SORT), relay_admin_text(a, title),
        relay_admin_text(a, label), on ? (q->descending ? " ▼" : " ▲") : "");
}

/* One row of the list. */
static void key_row(admin_ctx *a, const relay_key_record *k)
{
    request_rec *r = a->r;
    const char *status = relay_key_status(k, a->now_iso);
    const char *kb = relay_admin_escape(a, apr_pstrcat(r->pool, a->base, "/keys/", k->id, NULL));
    int active = relay_key_enabled(k);

    ap_rprintf(r,
               "<tr data-id=\"%s\"><td data-label=\"%s\" class=\"name\"><span class=\"key-name\">"
               "%s</span><span class=\"desc\">%s</span></td>"
               "<td data-label=\"%s\"><code>%s</code></td>"
               "<td data-label=\"%s\"><span class=\"status %s\">%s</span></td>"
               "<td data-label=\"%s\" class=\"inflight\" data-limit=\"%s\">%s</td>"
               "<td data-label=\"%s\" class=\"usage\">%s</td>"
               "<td data-label=\"%s\" class=\"time\">%s</td>"
               "<td data-label=\"%s\" class=\"time\">%s</td>"
               "<td data-label=\"%s\" class=\"time\">%s</td>",
               relay_admin_escape(a, k->id), relay_admin_text(a, AM_NAME),
               relay_admin_escape(a, k->name), relay_admin_escape(a, k->description),
               relay_admin_text(a, AM_KEY), relay_admin_escape(a, k->key_preview),
               relay_admin_text(a, AM_STATUS), status, relay_admin_text(a, status_msg(status)),
               relay_admin_text(a, AM_CONCURRENCY), relay_admin_escape(a, k->concurrency_limit),
               relay_admin_escape(
                   a, relay_admin_in_flight_text(a, k->current_concurrency, k->concurrency_limit)),
               relay_admin_text(a, AM_TOKENS_USED), usage_cell(a, k),
               relay_admin_text(a, AM_CREATED),
               relay_admin_escape(a, show_time(a, k->created_at, AM_NONE_YET)),
               relay_admin_text(a, AM_LAST_USED),
               relay_admin_escape(a, show_time(a, k->last_used_at, AM_NONE_YET)),
               relay_admin_text(a, AM_EXPIRES),
               relay_admin_escape(a, show_time(a, k->expires_at, AM_NEVER)));
    ap_rprintf(r,
               "<td class=\"actions\"><a class=\"button small\" href=\"%s/edit\">%s</a>"
               "<form method=\"post\" action=\"%s/toggle\">",
               kb, relay_admin_text(a, AM_EDIT), kb);
    relay_admin_csrf_field(a);
    ap_rprintf(r,
               "<input type=\"hidden\" name=\"active\" value=\"%s\">"
               "<button class=\"small\" type=\"submit\">%s</button></form>"
               "<a class=\"button small danger\" href=\"%s/delete\">%s</a></td></tr>",
               active ? "false" : "true", relay_admin_text(a, active ? AM_DISABLE : AM_ENABLE), kb,
               relay_admin_text(a, AM_DELETE));
}

int relay_admin_list_page(admin_ctx *a)
{
    request_rec *r = a->r;
    relay_key_query q;
    relay_key_page pg;
    relay_redis_conn *c;
    const char *err = NULL, *bad;
    long first;
    int i;

    if ((bad = relay_admin_list_params(a, &q))) {
        return relay_admin_message_page(a, HTTP_BAD_REQUEST,
                                        relay_admin_textf(a, AM_ERR_LIST_PARAM, bad));
    }
    if (!(c = relay_admin_redis(a, &err)) || relay_keystore_query(c, &q, &pg, r->pool, &err)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin: cannot list keys: %s", err);
        return relay_admin_message_page(a, HTTP_SERVICE_UNAVAILABLE,
                                        relay_admin_text(a, AM_UNAVAILABLE));
    }
    relay_admin_page_start(a, relay_admin_text(a, AM_TITLE));
    ap_rprintf(r, "<div class=\"bar\"><h1>%s</h1><a class=\"button\" href=\"%s/new\">%s</a></div>",
               relay_admin_text(a, AM_TITLE), relay_admin_escape(a, a->base),
               relay_admin_text(a, AM_NEW_KEY));
    overview(a, &pg.overview);
    if (pg.overview.keys == 0) {
        ap_rprintf(r, "<p class=\"empty\">%s</p>", relay_admin_text(a, AM_NO_KEYS));
        relay_admin_page_end(a);
        return OK;
    }
    controls(a, &q);
    first = (long)(pg.page - 1) * q.per_page;
    ap_rputs("<p class=\"summary\" id=\"summary\">", r);
    if (q.search && *q.search) {
        ap_rprintf(r, "%s ",
                   relay_admin_escape(a, relay_admin_textf(a, AM_MATCHING, pg.matched, q.search)));
    }
    if (pg.keys->nelts > 0) {
        ap_rputs(relay_admin_escape(a, relay_admin_textf(a, AM_SHOWING, first + 1,
                                                         first + pg.keys->nelts, pg.matched)),
                 r);
    }
    else {
        ap_rputs(relay_admin_text(a, pg.matched ? AM_PAGE_EMPTY : AM_NO_MATCH), r);
    }
    ap_rputs("</p>", r);
    if (pg.keys->nelts > 0) {
        ap_rprintf(r,
                   "<div class=\"table-wrap\"><table id=\"keys\" data-live=\"%s/api/inflight\" "
                   "data-live-max=\"%d\" data-unlimited=\"%s\"><thead><tr>%s<th>%s</th>"
                   "<th>%s</th>",
                   relay_admin_escape(a, a->base), RELAY_KEYSTORE_LIVE_MAX,
                   relay_admin_text(a, AM_UNLIMITED),
                   heading(a, &q, RELAY_SORT_NAME, AM_NAME, AM_SORT_NAME),
                   relay_admin_text(a, AM_KEY), relay_admin_text(a, AM_STATUS));
        ap_rprintf(r, "%s%s%s%s<th>%s</th><th>%s</th></tr></thead><tbody>",
                   heading(a, &q, RELAY_SORT_IN_FLIGHT, AM_CONCURRENCY, AM_IN_FLIGHT_HINT),
                   heading(a, &q, RELAY_SORT_TOKENS_TODAY, AM_TOKENS_USED, AM_SORT_TOKENS_TODAY),
                   heading(a, &q, RELAY_SORT_CREATED, AM_CREATED, AM_SORT_CREATED),
                   heading(a, &q, RELAY_SORT_LAST_USED, AM_LAST_USED, AM_SORT_LAST_USED),
                   relay_admin_text(a, AM_EXPIRES), relay_admin_text(a, AM_ACTIONS));
        for (i = 0; i < pg.keys->nelts; i++) {
            key_row(a, APR_ARRAY_IDX(pg.keys, i, relay_key_record *));
        }
        ap_rputs("</tbody></table></div>", r);
    }
    pager(a, &q, &pg);
    relay_admin_page_end(a);
    return OK;
}
