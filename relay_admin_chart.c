/*
 * relay_admin_chart.c - a key's usage on its edit page: the last 30 days as
 * an inline SVG bar chart (no script, no inline style, as the CSP asks) and
 * the split of those days by model.
 */
#include "relay_admin_int.h"

APLOG_USE_MODULE(claude_relay);

/* the days the chart shows, ending today (UTC) */
#define CHART_DAYS 30

void relay_admin_usage_history(admin_ctx *a, const relay_key_record *k)
{
    request_rec *r = a->r;
    apr_array_header_t *days = NULL, *models = NULL;
    const char *err = NULL;
    relay_redis_conn *c = relay_admin_redis(a, &err);
    long long max = 0;
    int i;
    const int w = 600, h = 140, gap = 2;

    if (!c || relay_keystore_history(c, k->id, CHART_DAYS, r->pool, &days, &models, &err) != 0) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin: cannot read usage of %s: %s", k->id,
                      err);
        return;
    }
    for (i = 0; i < days->nelts; i++) {
        relay_usage_day *d = &APR_ARRAY_IDX(days, i, relay_usage_day);
        if (d->usage.tokens > max) {
            max = d->usage.tokens;
        }
    }
    ap_rprintf(r, "<section class=\"usage-history\"><h2>%s</h2>", relay_admin_text(a, AM_LAST_30));
    ap_rprintf(r,
               "<svg class=\"chart\" viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"%s\">"
               "<line class=\"axis\" x1=\"0\" y1=\"%d\" x2=\"%d\" y2=\"%d\"/>",
               w, h + 16, relay_admin_text(a, AM_LAST_30), h, w, h);
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
                   i * bw + gap / 2, h - bh, bw - gap, bh, d->date, (apr_int64_t)d->usage.tokens,
                   relay_admin_text(a, AM_TOKENS), (apr_int64_t)d->usage.requests,
                   relay_admin_text(a, AM_REQUESTS));
        if (i == 0 || i == days->nelts - 1) {
            ap_rprintf(r, "<text x=\"%d\" y=\"%d\" text-anchor=\"%s\">%s</text>", i == 0 ? 0 : w,
                       h + 14, i == 0 ? "start" : "end", d->date + 5);
        }
    }
    ap_rprintf(r, "<text class=\"max\" x=\"2\" y=\"10\">%" APR_INT64_T_FMT "</text></svg>",
               (apr_int64_t)max);
    ap_rprintf(r, "<h2>%s</h2>", relay_admin_text(a, AM_BY_MODEL));
    if (models->nelts == 0) {
        ap_rprintf(r, "<p class=\"empty\">%s</p></section>", relay_admin_text(a, AM_NO_USAGE));
        return;
    }
    ap_rprintf(r,
               "<table class=\"models\"><thead><tr><th>%s</th><th>%s</th><th>%s</th>"
               "</tr></thead><tbody>",
               relay_admin_text(a, AM_MODEL), relay_admin_text(a, AM_TOKENS),
               relay_admin_text(a, AM_REQUESTS));
    for (i = 0; i < models->nelts; i++) {
        relay_usage_model *m = &APR_ARRAY_IDX(models, i, relay_usage_model);
        ap_rprintf(r,
                   "<tr><td><code>%s</code></td><td>%" APR_INT64_T_FMT "</td><td>%" APR_INT64_T_FMT
                   "</td></tr>",
                   relay_admin_escape(a, m->model), (apr_int64_t)m->usage.tokens,
                   (apr_int64_t)m->usage.requests);
    }
    ap_rputs("</tbody></table></section>", r);
}
