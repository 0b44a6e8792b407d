/*
 * relay_admin_forms.c - the admin's key forms: create, and edit (name,
 * description, limits, expiry, enabled), each change a POST with the CSRF
 * token and an audit line. Fields are drawn and checked from the one table of
 * rules (relay_field_rules); a refused form comes back with the values kept
 * and the message beside the field, and nothing is written. The one-button
 * actions (enable/disable, delete, release slots, regenerate) are in
 * relay_admin_actions.c.
 */
#include "relay_admin_int.h"

#include <stdlib.h>
#include <string.h>
#include <util_script.h>

APLOG_USE_MODULE(claude_relay);

/* The words labelling each field. */
static const admin_msg field_label[RELAY_FIELD_COUNT] = {
    [RELAY_FIELD_NAME] = AM_NAME,
    [RELAY_FIELD_DESCRIPTION] = AM_DESCRIPTION,
    [RELAY_FIELD_TOKEN_LIMIT] = AM_TOKEN_LIMIT,
    [RELAY_FIELD_CONCURRENCY_LIMIT] = AM_CONCURRENCY,
    [RELAY_FIELD_EXPIRES_AT] = AM_EXPIRES,
    [RELAY_FIELD_IS_ACTIVE] = AM_ENABLED_LABEL,
};

/* The fields of the create form and of the edit form, in the order they are shown. */
static const relay_field create_fields[] = {RELAY_FIELD_NAME, RELAY_FIELD_DESCRIPTION,
                                            RELAY_FIELD_TOKEN_LIMIT, RELAY_FIELD_CONCURRENCY_LIMIT,
                                            RELAY_FIELD_EXPIRES_AT};
static const relay_field edit_fields[] = {RELAY_FIELD_NAME,        RELAY_FIELD_DESCRIPTION,
                                          RELAY_FIELD_TOKEN_LIMIT, RELAY_FIELD_CONCURRENCY_LIMIT,
                                          RELAY_FIELD_EXPIRES_AT,  RELAY_FIELD_IS_ACTIVE};
#define NFIELDS(list) ((int)(sizeof(list) / sizeof(list[0])))

/* A key form: what it shows, the message beside each field, what it will write. */
typedef struct {
    const char *value[RELAY_FIELD_COUNT];  /* as shown ("true"/"false" for the switch) */
    const char *error[RELAY_FIELD_COUNT];  /* the message beside the field, or NULL */
    const char *stored[RELAY_FIELD_COUNT]; /* the checked value to write, or NULL: unchanged */
    int has_errors;
} key_form;

/* Read a POSTed form of csrf and the given fields; 1 when it answered (refused). */
static int refuse_untrusted_form(admin_ctx *a, const relay_field *fields, int n, const char *what,
                                 apr_table_t **form)
{
    const char **names = apr_palloc(a->r->pool, sizeof(*names) * (n + 1));
    int i;

    for (i = 0; i < n; i++) {
        names[i] = relay_field_rules[fields[i]].name;
    }
    return relay_admin_read_trusted_form(a, names, n, what, form);
}

/* One field of a key form, drawn as its rule says, with its message. */
static void form_field(admin_ctx *a, relay_field f, const key_form *kf, const char *hint)
{
    request_rec *r = a->r;
    const relay_field_rule *rule = &relay_field_rules[f];
    const char *name = rule->name, *value = relay_admin_escape(a, kf->value[f]);
    const char *err = kf->error[f];

    ap_rprintf(r, "<div class=\"field%s%s\">", rule->kind == RELAY_FIELD_SWITCH ? " check" : "",
               err ? " invalid" : "");
    switch (rule->kind) {
    case RELAY_FIELD_TEXT:
        ap_rprintf(r,
                   "<label for=\"%s\">%s</label><input id=\"%s\" name=\"%s\" type=\"text\" "
                   "value=\"%s\" maxlength=\"%ld\"%s>",
                   name, relay_admin_text(a, field_label[f]), name, name, value, rule->max_chars,
                   rule->required ? " required" : "");
        break;
    case RELAY_FIELD_MULTILINE:
        ap_rprintf(r,
                   "<label for=\"%s\">%s</label><textarea id=\"%s\" name=\"%s\" maxlength=\"%ld\">"
                   "%s</textarea>",
                   name, relay_admin_text(a, field_label[f]), name, name, rule->max_chars, value);
        break;
    case RELAY_FIELD_LIMIT:
        ap_rprintf(r,
                   "<label for=\"%s\">%s</label><input id=\"%s\" name=\"%s\" type=\"text\" "
                   "value=\"%s\" inputmode=\"numeric\" placeholder=\"%s\">",
                   name, relay_admin_text(a, field_label[f]), name, name, value,
                   relay_admin_text(a, AM_LIMIT_PLACEHOLDER));
        break;
    case RELAY_FIELD_EXPIRY:
        ap_rprintf(r,
                   "<label for=\"%s\">%s</label><input id=\"%s\" name=\"%s\" type=\"date\" "
                   "value=\"%s\">",
                   name, relay_admin_text(a, field_label[f]), name, name, value);
        break;
    case RELAY_FIELD_SWITCH:
        ap_rprintf(r,
                   "<label><input type=\"checkbox\" id=\"%s\" name=\"%s\" value=\"true\"%s> "
                   "%s</label>",
                   name, name, strcmp(kf->value[f], RELAY_ACTIVE_TRUE) == 0 ? " checked" : "",
                   relay_admin_text(a, field_label[f]));
        break;
    }
    if (hint) {
        ap_rprintf(r, "<p class=\"hint\">%s</p>", hint);
    }
    if (err) {
        ap_rprintf(r, "<p class=\"field-error\" id=\"%s-error\">%s</p>", name,
                   relay_admin_escape(a, err));
    }
    ap_rputs("</div>", r);
}

/* What a form shows of a stored value: an expiry as the date a date input takes. */
static const char *shown_value(relay_field f, const char *stored, apr_pool_t *p)
{
    if (f == RELAY_FIELD_EXPIRES_AT && strlen(stored) >= 10) {
        return apr_pstrndup(p, stored, 10);
    }
    return stored;
}

/* A key's current value of field f, as stored. */
static const char *current_value(const relay_key_record *k, relay_field f)
{
    switch (f) {
    case RELAY_FIELD_NAME:
        return k->name;
    case RELAY_FIELD_DESCRIPTION:
        return k->description;
    case RELAY_FIELD_TOKEN_LIMIT:
        return k->token_limit;
    case RELAY_FIELD_CONCURRENCY_LIMIT:
        return k->concurrency_limit;
    case RELAY_FIELD_EXPIRES_AT:
        return k->expires_at;
    case RELAY_FIELD_IS_ACTIVE:
    case RELAY_FIELD_COUNT:
        break;
    }
    return relay_key_enabled(k) ? RELAY_ACTIVE_TRUE : RELAY_ACTIVE_FALSE;
}

/*
 * Check the posted fields against their rules. With k (an edit), a field not
 * posted, or posted as the form showed it, is left as it is, unchecked: an
 * edit of one field never fails on another, nor moves an expiry's time of day.
 */
static void check_fields(admin_ctx *a, apr_table_t *form, const relay_field *fields, int n,
                         const relay_key_record *k, key_form *kf)
{
    int i;

    for (i = 0; i < n; i++) {
        relay_field f = fields[i];
        const char *typed = apr_table_get(form, relay_field_rules[f].name);
        char *buf = apr_palloc(a->r->pool, RELAY_FIELD_STORED_MAX);
        relay_invalid v;

        if (relay_field_rules[f].kind == RELAY_FIELD_SWITCH) {
            /* a checkbox is sent only when ticked */
            typed = typed ? RELAY_ACTIVE_TRUE : RELAY_ACTIVE_FALSE;
        }
        if (k && !typed) {
            /* not sent at all (a form of another version, a script): unchanged */
            kf->value[f] = shown_value(f, current_value(k, f), a->r->pool);
            continue;
        }
        kf->value[f] = typed ? typed : "";
        if (k && strcmp(kf->value[f], shown_value(f, current_value(k, f), a->r->pool)) == 0) {
            continue;
        }
        v = relay_field_check(f, kf->value[f], a->now_iso, buf, &kf->stored[f]);
        kf->error[f] = relay_admin_invalid_text(a, f, v, a->lang);
        kf->has_errors |= kf->error[f] != NULL;
        if (k && kf->stored[f] && strcmp(kf->stored[f], current_value(k, f)) == 0) {
            kf->stored[f] = NULL;
        }
    }
}

/* The form's changes as field/value pairs for the key store. */
static apr_array_header_t *changes(admin_ctx *a, const key_form *kf)
{
    apr_array_header_t *pairs = apr_array_make(a->r->pool, 12, sizeof(const char *));
    int f;

    for (f = 0; f < RELAY_FIELD_COUNT; f++) {
        if (kf->stored[f]) {
            APR_ARRAY_PUSH(pairs, const char *) = relay_field_rules[f].name;
            APR_ARRAY_PUSH(pairs, const char *) = kf->stored[f];
        }
    }
    return pairs;
}

/* The create form, empty or with what was typed and why it was refused. */
static void create_form(admin_ctx *a, const key_form *kf)
{
    request_rec *r = a->r;
    int i;

    relay_admin_page_start(a, relay_admin_text(a, AM_NEW_KEY));
    ap_rprintf(r, "<h1>%s</h1>", relay_admin_text(a, AM_NEW_KEY));
    if (kf->has_errors) {
        ap_rprintf(r, "<p class=\"error\" role=\"alert\">%s</p>", relay_admin_text(a, AM_ERR_FORM));
    }
    ap_rprintf(r, "<form method=\"post\" action=\"%s/new\" class=\"key-form\">",
               relay_admin_escape(a, a->base));
    relay_admin_csrf_field(a);
    for (i = 0; i < NFIELDS(create_fields); i++) {
        form_field(a, create_fields[i], kf,
                   create_fields[i] == RELAY_FIELD_EXPIRES_AT ? relay_admin_text(a, AM_EXPIRY_HINT)
                                                              : NULL);
    }
    ap_rprintf(r,
               "<div class=\"buttons\"><button type=\"submit\">%s</button>"
               " <a class=\"button secondary\" href=\"%s/\">%s</a></div></form>",
               relay_admin_text(a, AM_CREATE), relay_admin_escape(a, a->base),
               relay_admin_text(a, AM_CANCEL));
    relay_admin_page_end(a);
}

int relay_admin_new_key(admin_ctx *a)
{
    request_rec *r = a->r;
    key_form kf;
    apr_table_t *form;
    relay_key_new nk;
    unsigned char rnd[RELAY_KEYSTORE_RANDOM_BYTES];
    const char *plain = NULL, *err = NULL;
    relay_redis_conn *c;
    relay_key_record *k = NULL;
    relay_ks_result done = RELAY_KS_ERROR;
    int i;

    memset(&kf, 0, sizeof(kf));
    for (i = 0; i < RELAY_FIELD_COUNT; i++) {
        kf.value[i] = "";
    }
    if (r->method_number == M_GET) {
        create_form(a, &kf);
        return OK;
    }
    if (refuse_untrusted_form(a, create_fields, NFIELDS(create_fields), "a key creation", &form)) {
        return OK;
    }
    check_fields(a, form, create_fields, NFIELDS(create_fields), NULL, &kf);
    if (kf.has_errors) {
        r->status = HTTP_BAD_REQUEST;
        create_form(a, &kf);
        return OK;
    }
    memset(&nk, 0, sizeof(nk));
    nk.name = kf.stored[RELAY_FIELD_NAME];
    nk.description = kf.stored[RELAY_FIELD_DESCRIPTION];
    nk.token_limit = atol(kf.stored[RELAY_FIELD_TOKEN_LIMIT]);
    nk.concurrency_limit = atol(kf.stored[RELAY_FIELD_CONCURRENCY_LIMIT]);
    nk.expires_at = kf.stored[RELAY_FIELD_EXPIRES_AT];
    nk.created_by = a->user;
    if (apr_generate_random_bytes(rnd, sizeof(rnd)) != APR_SUCCESS) {
        return relay_admin_message_page(a, HTTP_INTERNAL_SERVER_ERROR,
                                        relay_admin_text(a, AM_UNAVAILABLE));
    }
    if ((c = relay_admin_redis(a, &err))) {
        done = relay_keystore_create(c, &nk, a->sc->secret, rnd, &k, &plain, r->pool, &err);
    }
    if (done != RELAY_KS_DONE) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin: cannot create a key: %s", err);
        return done == RELAY_KS_EXISTS
                   ? relay_admin_message_page(a, HTTP_CONFLICT, relay_admin_text(a, AM_ERR_EXISTS))
                   : relay_admin_message_page(a, HTTP_SERVICE_UNAVAILABLE,
                                              relay_admin_text(a, AM_UNAVAILABLE));
    }
    relay_admin_audit(a, "created key %s (%s), concurrency limit %ld, token limit %ld", k->id,
                      ap_escape_logitem(r->pool, k->name), nk.concurrency_limit, nk.token_limit);
    r->status = HTTP_CREATED;
    relay_admin_show_key_once(a, AM_CREATED_TITLE, k->name, plain);
    return OK;
}

int relay_admin_save_fields(admin_ctx *a, const char *id, apr_array_header_t *pairs,
                            const char *what)
{
    const char *err = NULL, *list = "";
    relay_redis_conn *c = relay_admin_redis(a, &err);
    relay_ks_result done =
        c ? relay_keystore_update(c, id, pairs, a->user, a->r->pool, &err) : RELAY_KS_ERROR;
    int i;

    if (done != RELAY_KS_DONE) {
        relay_admin_store_failed(a, done, "update", id, err);
        return 1;
    }
    for (i = 0; i + 1 < pairs->nelts; i += 2) {
        list = apr_psprintf(
            a->r->pool, "%s%s%s=%s", list, i ? ", " : "", APR_ARRAY_IDX(pairs, i, const char *),
            ap_escape_logitem(a->r->pool, APR_ARRAY_IDX(pairs, i + 1, const char *)));
    }
    relay_admin_audit(a, "%s key %s: %s", what, id, list);
    return 0;
}

/* A link button to one of the key's pages. */
static void key_link(admin_ctx *a, const char *id, const char *action, admin_msg label,
                     const char *cls)
{
    ap_rprintf(a->r, "<a class=\"button small %s\" id=\"%s-link\" href=\"%s/keys/%s/%s\">%s</a>",
               cls, action, relay_admin_escape(a, a->base), id, action, relay_admin_text(a, label));
}

/* The edit form with the key's live count, its actions, and its usage. */
static void edit_form(admin_ctx *a, const relay_key_record *k, const key_form *kf, long released)
{
    request_rec *r = a->r;
    const char *expires_hint = relay_admin_text(a, AM_EXPIRY_EDIT_HINT);
    int i;

    relay_admin_page_start(a, relay_admin_text(a, AM_EDIT_TITLE));
    ap_rprintf(r, "<h1>%s</h1>", relay_admin_text(a, AM_EDIT_TITLE));
    if (released >= 0) {
        ap_rprintf(r, "<p class=\"notice\" id=\"released\" role=\"status\">%s</p>",
                   relay_admin_textf(a, AM_RELEASED, released));
    }
    if (kf->has_errors) {
        ap_rprintf(r, "<p class=\"error\" role=\"alert\">%s</p>", relay_admin_text(a, AM_ERR_FORM));
    }
    ap_rprintf(r, "<form method=\"post\" action=\"%s/keys/%s/edit\" class=\"key-form\">",
               relay_admin_escape(a, a->base), k->id);
    relay_admin_csrf_field(a);
    ap_rprintf(r, "<div class=\"field\"><label>%s</label><p><code id=\"key-preview\">%s</code> ",
               relay_admin_text(a, AM_KEY), relay_admin_escape(a, k->key_preview));
    key_link(a, k->id, "regenerate", AM_REGENERATE, "secondary");
    ap_rprintf(r,
               "</p></div><div class=\"field\"><label>%s</label><p><span class=\"inflight\" "
               "id=\"inflight-now\">%s</span> ",
               relay_admin_text(a, AM_IN_FLIGHT_NOW),
               relay_admin_escape(
                   a, relay_admin_in_flight_text(a, k->current_concurrency, k->concurrency_limit)));
    key_link(a, k->id, "release", AM_RELEASE, "secondary");
    ap_rputs("</p></div>", r);
    for (i = 0; i < NFIELDS(edit_fields); i++) {
        const char *hint = edit_fields[i] == RELAY_FIELD_EXPIRES_AT ? expires_hint : NULL;
        form_field(a, edit_fields[i], kf, hint);
    }
    ap_rprintf(r,
               "<div class=\"buttons\"><button type=\"submit\">%s</button>"
               " <a class=\"button secondary\" href=\"%s/\">%s</a> ",
               relay_admin_text(a, AM_SAVE), relay_admin_escape(a, a->base),
               relay_admin_text(a, AM_CANCEL));
    key_link(a, k->id, "delete", AM_DELETE, "danger end");
    ap_rputs("</div></form>", r);
    relay_admin_usage_history(a, k);
    relay_admin_page_end(a);
}

/* The number in ?released=N, after slots were released, or -1. */
static long released_arg(request_rec *r)
{
    long n;

    if (!r->args || strncmp(r->args, "released=", 9) != 0 ||
        relay_parse_limit(r->args + 9, &n) != 0 || !r->args[9]) {
        return -1;
    }
    return n;
}

int relay_admin_edit_key(admin_ctx *a, const char *id)
{
    request_rec *r = a->r;
    relay_key_record *k;
    apr_table_t *form = NULL;
    apr_array_header_t *pairs;
    key_form kf;
    int rc = OK, i;

    memset(&kf, 0, sizeof(kf));
    if (r->method_number == M_POST &&
        refuse_untrusted_form(a, edit_fields, NFIELDS(edit_fields), "a key edit", &form)) {
        return OK;
    }
    if (!(k = relay_admin_load_key(a, id, &rc))) {
        return rc;
    }
    if (r->method_number == M_GET) {
        for (i = 0; i < RELAY_FIELD_COUNT; i++) {
            kf.value[i] = shown_value(i, current_value(k, i), r->pool);
        }
        edit_form(a, k, &kf, released_arg(r));
        return OK;
    }
    check_fields(a, form, edit_fields, NFIELDS(edit_fields), k, &kf);
    if (kf.has_errors) {
        r->status = HTTP_BAD_REQUEST;
        edit_form(a, k, &kf, -1);
        return OK;
    }
    pairs = changes(a, &kf);
    if (pairs->nelts > 0 && relay_admin_save_fields(a, id, pairs, "edited")) {
        return OK;
    }
    return relay_admin_see_other(a, "/");
}
