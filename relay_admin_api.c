/*
 * relay_admin_api.c - the admin's JSON API under /api: list (search, order,
 * pages, overview), create, read, edit, delete, release slots, regenerate,
 * and the live counts the list page polls. Writes take only
 * application/json bodies (which a cross-site form cannot send) and refuse a
 * foreign Origin; fields are checked by the same rules as the forms, and
 * refused with the same messages, in English.
 */
#include "relay_admin_int.h"

#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

APLOG_USE_MODULE(claude_relay);

#define UNREACHABLE "The key store cannot be reached"

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

/* {"success":true,"data":...} */
static int json_ok(request_rec *r, int status, json_object *data)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "success", json_object_new_boolean(1));
    json_object_object_add(o, "data", data);
    return json_send(r, status, o);
}

/* 405 naming what the path allows. */
static int json_method(request_rec *r, apr_int64_t allowed, const char *allow)
{
    r->allowed = allowed;
    apr_table_setn(r->headers_out, "Allow", allow);
    return json_fail(r, HTTP_METHOD_NOT_ALLOWED, "Method not allowed here", NULL);
}

/* Answer 400 naming the field; returns 1, "answered", for the callers that check. */
static int refused(request_rec *r, int status, const char *error, const char *field)
{
    json_fail(r, status, error, field);
    return 1;
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

/* Whether the body is declared JSON. */
static int is_json(request_rec *r)
{
    const char *ct = apr_table_get(r->headers_in, "Content-Type");

    return ct && strncasecmp(ct, "application/json", 16) == 0 &&
           (ct[16] == '\0' || ct[16] == ';' || ct[16] == ' ');
}

/*
 * Read a JSON object body (at most 64 KiB); with may_be_empty, no body at all
 * gives OK and *obj NULL. Returns OK, or an HTTP status with *why set.
 */
static int read_json(request_rec *r, int may_be_empty, json_object **obj, const char **why)
{
    char *buf;
    apr_size_t got = 0;
    long n;
    int rc, off;
    json_tokener *tok;

    *obj = NULL;
    if (!is_json(r)) {
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
    if (may_be_empty && strspn(buf, " \t\r\n") == got) {
        return OK;
    }
    tok = json_tokener_new();
    *obj = json_tokener_parse_ex(tok, buf, (int)got);
    /* trailing white space is fine; anything else after the object is not */
    off = *obj ? (int)tok->char_offset : 0;
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
        if (n < 0 || n > RELAY_LIMIT_MAX) {
            return -1;
        }
        *out = (long)n;
        return 0;
    }
    if (json_object_is_type(v, json_type_double)) {
        double d = json_object_get_double(v);
        /* range first: casting NaN, an infinity or a huge value to long is undefined */
        if (!isfinite(d) || d < 0 || d > (double)RELAY_LIMIT_MAX || d != (double)(long)d) {
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

/*
 * A JSON member as the text its field's rule checks: a string for text and
 * expiry (null: empty), a number for a limit, a boolean for a switch. NULL
 * for an absent member; *why (with NULL) when of the wrong type.
 */
static const char *typed_value(admin_ctx *a, relay_field f, json_object *v, const char **why)
{
    const relay_field_rule *rule = &relay_field_rules[f];
    long n;

    *why = NULL;
    if (!v) {
        return NULL;
    }
    switch (rule->kind) {
    case RELAY_FIELD_LIMIT:
        if (json_limit(v, &n) != 0) {
            *why = relay_admin_invalid_text(a, f, RELAY_INVALID_NUMBER, LANG_EN);
            return NULL;
        }
        return apr_ltoa(a->r->pool, n);
    case RELAY_FIELD_SWITCH:
        if (!json_object_is_type(v, json_type_boolean)) {
            *why = "must be true or false";
            return NULL;
        }
        return json_object_get_boolean(v) ? RELAY_ACTIVE_TRUE : RELAY_ACTIVE_FALSE;
    case RELAY_FIELD_TEXT:
    case RELAY_FIELD_MULTILINE:
    case RELAY_FIELD_EXPIRY:
        break;
    }
    if (json_object_is_type(v, json_type_null)) {
        return rule->kind == RELAY_FIELD_EXPIRY ? "" : NULL;
    }
    /* a NUL inside the string would cut it short: refuse it */
    if (!json_object_is_type(v, json_type_string) ||
        (int)strlen(json_object_get_string(v)) != json_object_get_string_len(v)) {
        *why = rule->kind == RELAY_FIELD_EXPIRY ? "must be a string or null" : "must be a string";
        return NULL;
    }
    return json_object_get_string(v);
}

/*
 * Check the body's members against the field rules. Every member must be a
 * field that may be set (on create: those with on_create); for a create,
 * absent fields are checked too (a name is required). Returns 0 with
 * stored[f] holding each value to write (NULL: not given), or 1 when it
 * answered 400.
 */
static int check_body(admin_ctx *a, json_object *body, int create, const char **stored)
{
    request_rec *r = a->r;
    const char *why;
    int f;

    json_object_object_foreach(body, member, val) {
        (void)val;
        f = relay_field_find(member);
        if (f < 0 || (create && !relay_field_rules[f].on_create)) {
            return refused(r, HTTP_BAD_REQUEST,
                             create ? apr_psprintf(r->pool, "Unknown field: %s", member)
                                    : apr_psprintf(r->pool,
                                                   "Field %s cannot be changed (only name, "
                                                   "description, tokenLimit, concurrencyLimit, "
                                                   "expiresAt and isActive can)",
                                                   member),
                             member);
        }
    }
    for (f = 0; f < RELAY_FIELD_COUNT; f++) {
        const char *name = relay_field_rules[f].name, *typed;
        json_object *v = NULL;
        char *buf = apr_palloc(r->pool, RELAY_FIELD_STORED_MAX);
        relay_invalid iv;

        stored[f] = NULL;
        if ((create && !relay_field_rules[f].on_create) ||
            (!json_object_object_get_ex(body, name, &v) && !create)) {
            continue;
        }
        typed = typed_value(a, (relay_field)f, v, &why);
        if (why) {
            return refused(r, HTTP_BAD_REQUEST, apr_pstrcat(r->pool, name, " ", why, NULL),
                             name);
        }
        iv = relay_field_check((relay_field)f, typed, a->now_iso, buf, &stored[f]);
        if (iv != RELAY_VALID) {
            return refused(r, HTTP_BAD_REQUEST,
                             apr_pstrcat(r->pool, name, ": ",
                                         relay_admin_invalid_text(a, f, iv, LANG_EN), NULL),
                             name);
        }
    }
    return 0;
}

/* GET api/keys: one page of the list, with the overview of the whole store. */
static int api_list(admin_ctx *a)
{
    request_rec *r = a->r;
    relay_key_query q;
    relay_key_page pg;
    relay_redis_conn *c;
    json_object *list, *doc, *ov;
    const char *err = NULL, *bad;
    int i;

    if ((bad = relay_admin_list_params(a, &q))) {
        return json_fail(r, HTTP_BAD_REQUEST,
                         apr_psprintf(r->pool,
                                      "%s is not valid (search: text of at most %d characters; "
                                      "sort: created, name, inFlight, tokensToday or lastUsed; "
                                      "order: asc or desc; page: from 1; perPage: 1 to %d)",
                                      bad, RELAY_SEARCH_MAX_CHARS, RELAY_KEYSTORE_PAGE_MAX),
                         bad);
    }
    if (!(c = relay_admin_redis(a, &err)) || relay_keystore_query(c, &q, &pg, r->pool, &err)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin API: cannot list keys: %s", err);
        return json_fail(r, HTTP_SERVICE_UNAVAILABLE, UNREACHABLE, NULL);
    }
    list = json_object_new_array();
    for (i = 0; i < pg.keys->nelts; i++) {
        json_object_array_add(list, key_json(a, APR_ARRAY_IDX(pg.keys, i, relay_key_record *)));
    }
    ov = json_object_new_object();
    json_object_object_add(ov, "keys", json_object_new_int64(pg.overview.keys));
    json_object_object_add(ov, "keysInFlight", json_object_new_int64(pg.overview.keys_in_flight));
    json_object_object_add(ov, "inFlight", json_object_new_int64(pg.overview.in_flight));
    json_object_object_add(ov, "requestsToday", json_object_new_int64(pg.overview.requests_today));
    json_object_object_add(ov, "tokensToday", json_object_new_int64(pg.overview.tokens_today));
    doc = json_object_new_object();
    json_object_object_add(doc, "success", json_object_new_boolean(1));
    json_object_object_add(doc, "data", list);
    json_object_object_add(doc, "total", json_object_new_int64(pg.matched));
    json_object_object_add(doc, "page", json_object_new_int(pg.page));
    json_object_object_add(doc, "perPage", json_object_new_int(q.per_page));
    json_object_object_add(doc, "pages", json_object_new_int(pg.pages));
    json_object_object_add(doc, "sort", json_str(relay_key_sort_names[q.sort]));
    json_object_object_add(doc, "order", json_str(q.descending ? "desc" : "asc"));
    json_object_object_add(doc, "overview", ov);
    return json_send(r, HTTP_OK, doc);
}

/* POST api/keys: a new key, shown once in apiKey. */
static int api_create(admin_ctx *a)
{
    request_rec *r = a->r;
    json_object *body, *data;
    const char *why = NULL, *err = NULL, *plain = NULL, *stored[RELAY_FIELD_COUNT];
    relay_key_new nk;
    unsigned char rnd[RELAY_KEYSTORE_RANDOM_BYTES];
    relay_redis_conn *c;
    relay_key_record *k = NULL;
    relay_ks_result done = RELAY_KS_ERROR;
    int rc;

    if ((rc = read_json(r, 0, &body, &why)) != OK) {
        return json_fail(r, rc, why, NULL);
    }
    if (check_body(a, body, 1, stored)) {
        return OK;
    }
    memset(&nk, 0, sizeof(nk));
    nk.name = stored[RELAY_FIELD_NAME];
    nk.description = stored[RELAY_FIELD_DESCRIPTION];
    nk.token_limit = atol(stored[RELAY_FIELD_TOKEN_LIMIT]);
    nk.concurrency_limit = atol(stored[RELAY_FIELD_CONCURRENCY_LIMIT]);
    nk.expires_at = stored[RELAY_FIELD_EXPIRES_AT];
    nk.created_by = a->user;
    if (apr_generate_random_bytes(rnd, sizeof(rnd)) != APR_SUCCESS) {
        return json_fail(r, HTTP_INTERNAL_SERVER_ERROR, "No random bytes available", NULL);
    }
    if ((c = relay_admin_redis(a, &err))) {
        done = relay_keystore_create(c, &nk, a->sc->secret, rnd, &k, &plain, r->pool, &err);
    }
    if (done != RELAY_KS_DONE) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin API: cannot create a key: %s", err);
        return done == RELAY_KS_EXISTS
                   ? json_fail(r, HTTP_CONFLICT,
                               "A key with this id or key hash exists already; nothing was "
                               "changed. Try again.",
                               NULL)
                   : json_fail(r, HTTP_SERVICE_UNAVAILABLE, UNREACHABLE, NULL);
    }
    relay_admin_audit(a,
                      "created key %s (%s) through the API, concurrency limit %ld, token "
                      "limit %ld",
                      k->id, ap_escape_logitem(r->pool, k->name), nk.concurrency_limit,
                      nk.token_limit);
    data = key_json(a, k);
    json_object_object_add(data, "apiKey", json_str(plain));
    return json_ok(r, HTTP_CREATED, data);
}

/* The key's record as the API shows it, or the error answer. */
static int api_get(admin_ctx *a, const char *id)
{
    const char *err = NULL;
    relay_redis_conn *c = relay_admin_redis(a, &err);
    relay_key_record *k = c ? relay_keystore_get(c, id, a->r->pool, &err) : NULL;

    if (!k) {
        return err ? json_fail(a->r, HTTP_SERVICE_UNAVAILABLE, UNREACHABLE, NULL)
                   : json_fail(a->r, HTTP_NOT_FOUND, "No key with this id", "id");
    }
    return json_ok(a->r, HTTP_OK, key_json(a, k));
}

/* Answer a key-store result other than RELAY_KS_DONE. */
static int api_store_failed(admin_ctx *a, relay_ks_result done, const char *doing,
                            const char *id, const char *err)
{
    if (done == RELAY_KS_NOT_FOUND) {
        return json_fail(a->r, HTTP_NOT_FOUND, "No key with this id", "id");
    }
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, a->r, RLOG "admin API: cannot %s key %s: %s", doing,
                  id, err);
    if (done == RELAY_KS_EXISTS) {
        return json_fail(a->r, HTTP_CONFLICT, "The new key's hash is taken; nothing was changed. "
                                              "Try again.",
                         NULL);
    }
    return json_fail(a->r, HTTP_SERVICE_UNAVAILABLE, UNREACHABLE, NULL);
}

/* PUT api/keys/{id}: change the fields given. */
static int api_update(admin_ctx *a, const char *id)
{
    request_rec *r = a->r;
    json_object *body;
    apr_array_header_t *pairs = apr_array_make(r->pool, 12, sizeof(const char *));
    const char *why = NULL, *err = NULL, *list = "", *stored[RELAY_FIELD_COUNT];
    relay_redis_conn *c;
    relay_ks_result done = RELAY_KS_ERROR;
    int rc, f;

    if ((rc = read_json(r, 0, &body, &why)) != OK) {
        return json_fail(r, rc, why, NULL);
    }
    if (check_body(a, body, 0, stored)) {
        return OK;
    }
    for (f = 0; f < RELAY_FIELD_COUNT; f++) {
        if (stored[f]) {
            APR_ARRAY_PUSH(pairs, const char *) = relay_field_rules[f].name;
            APR_ARRAY_PUSH(pairs, const char *) = stored[f];
            list = apr_psprintf(r->pool, "%s%s%s=%s", list, *list ? ", " : "",
                                relay_field_rules[f].name, ap_escape_logitem(r->pool, stored[f]));
        }
    }
    if (pairs->nelts == 0) {
        return json_fail(r, HTTP_BAD_REQUEST,
                         "Nothing to change: give name, description, tokenLimit, "
                         "concurrencyLimit, expiresAt or isActive",
                         NULL);
    }
    if ((c = relay_admin_redis(a, &err))) {
        done = relay_keystore_update(c, id, pairs, a->user, r->pool, &err);
    }
    if (done != RELAY_KS_DONE) {
        return api_store_failed(a, done, "update", id, err);
    }
    relay_admin_audit(a, "edited (API) key %s: %s", id, list);
    return api_get(a, id);
}

/*
 * The body of POST api/keys/{id}/release-slots or /regenerate: JSON, empty or
 * an empty object. Returns 0, or 1 when it answered the refusal.
 */
static int api_action_body(admin_ctx *a)
{
    json_object *body;
    const char *why = NULL;
    int rc;

    if ((rc = read_json(a->r, 1, &body, &why)) != OK) {
        return refused(a->r, rc, why, NULL);
    }
    if (body) {
        json_object_object_foreach(body, member, val) {
            (void)val;
            return refused(a->r, HTTP_BAD_REQUEST,
                           apr_psprintf(a->r->pool, "Unknown field: %s", member), member);
        }
    }
    return 0;
}

/* POST api/keys/{id}/release-slots: free the key's slots now. */
static int api_release(admin_ctx *a, const char *id)
{
    json_object *data;
    const char *err = NULL;
    relay_redis_conn *c;
    relay_ks_result done = RELAY_KS_ERROR;
    long released = 0;

    if (api_action_body(a)) {
        return OK;
    }
    if ((c = relay_admin_redis(a, &err))) {
        done = relay_keystore_release(c, id, a->user, &released, a->r->pool, &err);
    }
    if (done != RELAY_KS_DONE) {
        return api_store_failed(a, done, "release the slots of", id, err);
    }
    relay_admin_audit(a, "released the slots of key %s through the API (%ld in flight, now "
                         "uncounted)",
                      id, released);
    data = json_object_new_object();
    json_object_object_add(data, "id", json_str(id));
    json_object_object_add(data, "released", json_object_new_int64(released));
    return json_ok(a->r, HTTP_OK, data);
}

/* POST api/keys/{id}/regenerate: a new key for the id, shown once in apiKey. */
static int api_regenerate(admin_ctx *a, const char *id)
{
    request_rec *r = a->r;
    unsigned char rnd[RELAY_KEY_RANDOM_BYTES];
    const char *err = NULL, *plain = NULL, *preview = NULL;
    relay_redis_conn *c;
    relay_key_record *k;
    relay_ks_result done = RELAY_KS_ERROR;
    json_object *data;

    if (api_action_body(a)) {
        return OK;
    }
    if (apr_generate_random_bytes(rnd, sizeof(rnd)) != APR_SUCCESS) {
        return json_fail(r, HTTP_INTERNAL_SERVER_ERROR, "No random bytes available", NULL);
    }
    if ((c = relay_admin_redis(a, &err))) {
        done = relay_keystore_regenerate(c, id, a->sc->secret, rnd, a->user, &plain, &preview,
                                         r->pool, &err);
    }
    memset(rnd, 0, sizeof(rnd));
    if (done != RELAY_KS_DONE) {
        return api_store_failed(a, done, "regenerate", id, err);
    }
    relay_admin_audit(a, "regenerated key %s through the API: the old key is refused from now on",
                      id);
    if (!(k = relay_keystore_get(c, id, r->pool, &err))) {
        /* the new key must not be lost: it is never shown again */
        k = apr_pcalloc(r->pool, sizeof(*k));
        k->id = id;
        k->name = k->description = k->is_active = k->created_at = k->updated_at = "";
        k->last_used_at = k->expires_at = k->created_by = k->updated_by = "";
        k->token_limit = k->concurrency_limit = "0";
        k->key_preview = preview;
    }
    data = key_json(a, k);
    json_object_object_add(data, "apiKey", json_str(plain));
    return json_ok(r, HTTP_OK, data);
}

/* api/keys/{id}[/action]. */
static int api_key(admin_ctx *a, const char *rest)
{
    request_rec *r = a->r;
    const char *slash = strchr(rest, '/'), *id = rest, *action = NULL, *err = NULL;
    relay_redis_conn *c;
    relay_ks_result done = RELAY_KS_ERROR;
    int m = r->method_number;

    if (slash) {
        id = apr_pstrmemdup(r->pool, rest, slash - rest);
        action = slash + 1;
    }
    if (!relay_uuid_ok(id)) {
        return json_fail(r, HTTP_NOT_FOUND, "No key with this id (ids are UUIDs)", "id");
    }
    if (action) {
        if (strcmp(action, "release-slots") != 0 && strcmp(action, "regenerate") != 0) {
            return json_fail(r, HTTP_NOT_FOUND, "No such API endpoint", NULL);
        }
        if (m != M_POST) {
            return json_method(r, AP_METHOD_BIT << M_POST, "POST");
        }
        return strcmp(action, "regenerate") == 0 ? api_regenerate(a, id) : api_release(a, id);
    }
    if (m == M_PUT) {
        return api_update(a, id);
    }
    if (m == M_DELETE) {
        if ((c = relay_admin_redis(a, &err))) {
            done = relay_keystore_delete(c, id, r->pool, &err);
        }
        if (done != RELAY_KS_DONE) {
            return api_store_failed(a, done, "delete", id, err);
        }
        relay_admin_audit(a, "deleted key %s through the API", id);
        return json_ok(r, HTTP_OK, json_object_new_object());
    }
    if (m != M_GET) {
        return json_method(r,
                           (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_PUT) |
                               (AP_METHOD_BIT << M_DELETE),
                           "GET, HEAD, PUT, DELETE");
    }
    return api_get(a, id);
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
        return json_method(r, AP_METHOD_BIT << M_GET, "GET, HEAD");
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
    c = relay_admin_redis(a, &err);
    live = c ? relay_keystore_live(c, (const char *const *)ids->elts, ids->nelts, r->pool, &err)
             : NULL;
    if (!live) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin API: cannot read live counts: %s",
                      err);
        return json_fail(r, HTTP_SERVICE_UNAVAILABLE, UNREACHABLE, NULL);
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

/* api/keys and below, once the method and origin are known good. */
static int api_keys(admin_ctx *a, const char *rest)
{
    int m = a->r->method_number;

    if (*rest == '\0' || strcmp(rest, "/") == 0) {
        if (m == M_POST) {
            return api_create(a);
        }
        if (m != M_GET) {
            return json_method(a->r, (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_POST),
                               "GET, HEAD, POST");
        }
        return api_list(a);
    }
    return api_key(a, rest + 1);
}

int relay_admin_api(admin_ctx *a, const char *rest)
{
    request_rec *r = a->r;
    int m = r->method_number, rc;

    if (strncmp(rest, "/keys", 5) == 0 && (rest[5] == '\0' || rest[5] == '/')) {
        if (m != M_GET && m != M_POST && m != M_PUT && m != M_DELETE) {
            r->allowed = (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_POST) |
                         (AP_METHOD_BIT << M_PUT) | (AP_METHOD_BIT << M_DELETE);
            return json_fail(r, HTTP_METHOD_NOT_ALLOWED, "Method not allowed", NULL);
        }
        /* browsers send Origin with cross-site writes: refuse any from elsewhere */
        if (m != M_GET && !relay_admin_same_origin(r)) {
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                          RLOG "admin API: refused a %s from a foreign origin", r->method);
            rc = json_fail(r, HTTP_FORBIDDEN, "Cross-site requests are refused", NULL);
        }
        else {
            rc = api_keys(a, rest + 5);
        }
        if (m != M_GET) {
            /* whatever the answer, the rest of the body is not wanted */
            ap_discard_request_body(r);
        }
        return rc;
    }
    if (strcmp(rest, "/inflight") == 0) {
        return api_live(a);
    }
    return json_fail(r, HTTP_NOT_FOUND, "No such API endpoint", NULL);
}
