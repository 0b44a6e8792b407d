/*
 * relay_admin_api.c - the admin's JSON API under /api: list (search, order,
 * pages, overview), create, read, edit, delete, release slots, regenerate,
 * and the live counts the list page polls. Writes take only
 * application/json bodies (which a cross-site form cannot send) and refuse a
 * foreign Origin; fields are checked by the same rules as the forms, and
 * refused with the same messages, in English.
 */
#include "relay_admin_int.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

APLOG_USE_MODULE(claude_relay);

#define UNREACHABLE "The key store cannot be reached"

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
        return relay_admin_json_fail(
            r, HTTP_BAD_REQUEST,
            apr_psprintf(r->pool,
                         "%s is not valid (search: text of at most %d characters; "
                         "sort: created, name, inFlight, tokensToday or lastUsed; "
                         "order: asc or desc; page: from 1; perPage: 1 to %d)",
                         bad, RELAY_SEARCH_MAX_CHARS, RELAY_KEYSTORE_PAGE_MAX),
            bad);
    }
    if (!(c = relay_admin_redis(a, &err)) || relay_keystore_query(c, &q, &pg, r->pool, &err)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin API: cannot list keys: %s", err);
        return relay_admin_json_fail(r, HTTP_SERVICE_UNAVAILABLE, UNREACHABLE, NULL);
    }
    list = json_object_new_array();
    for (i = 0; i < pg.keys->nelts; i++) {
        json_object_array_add(
            list, relay_admin_key_json(a, APR_ARRAY_IDX(pg.keys, i, relay_key_record *)));
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
    json_object_object_add(doc, "sort", relay_admin_json_str(relay_key_sort_names[q.sort]));
    json_object_object_add(doc, "order", relay_admin_json_str(q.descending ? "desc" : "asc"));
    json_object_object_add(doc, "overview", ov);
    return relay_admin_json_send(r, HTTP_OK, doc);
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

    if ((rc = relay_admin_read_json(r, 0, &body, &why)) != OK) {
        return relay_admin_json_fail(r, rc, why, NULL);
    }
    if (relay_admin_check_body(a, body, 1, stored)) {
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
        return relay_admin_json_fail(r, HTTP_INTERNAL_SERVER_ERROR, "No random bytes available",
                                     NULL);
    }
    if ((c = relay_admin_redis(a, &err))) {
        done = relay_keystore_create(c, &nk, a->sc->secret, rnd, &k, &plain, r->pool, &err);
    }
    if (done != RELAY_KS_DONE) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, RLOG "admin API: cannot create a key: %s", err);
        return done == RELAY_KS_EXISTS
                   ? relay_admin_json_fail(
                         r, HTTP_CONFLICT,
                         "A key with this id or key hash exists already; nothing was "
                         "changed. Try again.",
                         NULL)
                   : relay_admin_json_fail(r, HTTP_SERVICE_UNAVAILABLE, UNREACHABLE, NULL);
    }
    relay_admin_audit(a,
                      "created key %s (%s) through the API, concurrency limit %ld, token "
                      "limit %ld",
                      k->id, ap_escape_logitem(r->pool, k->name), nk.concurrency_limit,
                      nk.token_limit);
    data = relay_admin_key_json(a, k);
    json_object_object_add(data, "apiKey", relay_admin_json_str(plain));
    return relay_admin_json_ok(r, HTTP_CREATED, data);
}

/* The key's record as the API shows it, or the error answer. */
static int api_get(admin_ctx *a, const char *id)
{
    const char *err = NULL;
    relay_redis_conn *c = relay_admin_redis(a, &err);
    relay_key_record *k = c ? relay_keystore_get(c, id, a->r->pool, &err) : NULL;

    if (!k) {
        return err ? relay_admin_json_fail(a->r, HTTP_SERVICE_UNAVAILABLE, UNREACHABLE, NULL)
                   : relay_admin_json_fail(a->r, HTTP_NOT_FOUND, "No key with this id", "id");
    }
    return relay_admin_json_ok(a->r, HTTP_OK, relay_admin_key_json(a, k));
}

/* Answer a key-store result other than RELAY_KS_DONE. */
static int api_store_failed(admin_ctx *a, relay_ks_result done, const char *doing, const char *id,
                            const char *err)
{
    if (done == RELAY_KS_NOT_FOUND) {
        return relay_admin_json_fail(a->r, HTTP_NOT_FOUND, "No key with this id", "id");
    }
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, a->r, RLOG "admin API: cannot %s key %s: %s", doing, id,
                  err);
    if (done == RELAY_KS_EXISTS) {
        return relay_admin_json_fail(a->r, HTTP_CONFLICT,
                                     "The new key's hash is taken; nothing was changed. "
                                     "Try again.",
                                     NULL);
    }
    return relay_admin_json_fail(a->r, HTTP_SERVICE_UNAVAILABLE, UNREACHABLE, NULL);
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

    if ((rc = relay_admin_read_json(r, 0, &body, &why)) != OK) {
        return relay_admin_json_fail(r, rc, why, NULL);
    }
    if (relay_admin_check_body(a, body, 0, stored)) {
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
        return relay_admin_json_fail(r, HTTP_BAD_REQUEST,
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

    if ((rc = relay_admin_read_json(a->r, 1, &body, &why)) != OK) {
        return relay_admin_json_refused(a->r, rc, why, NULL);
    }
    if (body) {
        json_object_object_foreach(body, member, val)
        {
            (void)val;
            return relay_admin_json_refused(a->r, HTTP_BAD_REQUEST,
                                            apr_psprintf(a->r->pool, "Unknown field: %s", member),
                                            member);
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
    relay_admin_audit(a,
                      "released the slots of key %s through the API (%ld in flight, now "
                      "uncounted)",
                      id, released);
    data = json_object_new_object();
    json_object_object_add(data, "id", relay_admin_json_str(id));
    json_object_object_add(data, "released", json_object_new_int64(released));
    return relay_admin_json_ok(a->r, HTTP_OK, data);
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
        return relay_admin_json_fail(r, HTTP_INTERNAL_SERVER_ERROR, "No random bytes available",
                                     NULL);
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
    data = relay_admin_key_json(a, k);
    json_object_object_add(data, "apiKey", relay_admin_json_str(plain));
    return relay_admin_json_ok(r, HTTP_OK, data);
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
        return relay_admin_json_fail(r, HTTP_NOT_FOUND, "No key with this id (ids are UUIDs)",
                                     "id");
    }
    if (action) {
        if (strcmp(action, "release-slots") != 0 && strcmp(action, "regenerate") != 0) {
            return relay_admin_json_fail(r, HTTP_NOT_FOUND, "No such API endpoint", NULL);
        }
        if (m != M_POST) {
            return relay_admin_json_method(r, AP_METHOD_BIT << M_POST, "POST");
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
        return relay_admin_json_ok(r, HTTP_OK, json_object_new_object());
    }
    if (m != M_GET) {
        return relay_admin_json_method(
            r, (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_PUT) | (AP_METHOD_BIT << M_DELETE),
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
        return relay_admin_json_method(r, AP_METHOD_BIT << M_GET, "GET, HEAD");
    }
    args = apr_pstrdup(r->pool, r->args ? r->args : "");
    for (pair = apr_strtok(args, "&", &state); pair; pair = apr_strtok(NULL, "&", &state)) {
        char *id, *idstate;

        if (strncmp(pair, "ids=", 4) != 0) {
            continue;
        }
        if (ap_unescape_url(pair + 4) != OK) {
            return relay_admin_json_fail(r, HTTP_BAD_REQUEST,
                                         "ids is not a valid URL-encoded value", "ids");
        }
        for (id = apr_strtok(pair + 4, ",", &idstate); id; id = apr_strtok(NULL, ",", &idstate)) {
            if (!relay_uuid_ok(id)) {
                return relay_admin_json_fail(
                    r, HTTP_BAD_REQUEST, "ids must be key ids (UUIDs) separated by commas", "ids");
            }
            if (ids->nelts == RELAY_KEYSTORE_LIVE_MAX) {
                return relay_admin_json_fail(
                    r, HTTP_BAD_REQUEST,
                    apr_psprintf(r->pool, "At most %d ids per call", RELAY_KEYSTORE_LIVE_MAX),
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
        return relay_admin_json_fail(r, HTTP_SERVICE_UNAVAILABLE, UNREACHABLE, NULL);
    }
    list = json_object_new_array();
    for (i = 0; i < live->nelts; i++) {
        const relay_key_live *l = &APR_ARRAY_IDX(live, i, relay_key_live);
        json_object *o = json_object_new_object();

        json_object_object_add(o, "id", relay_admin_json_str(l->id));
        json_object_object_add(o, "currentConcurrency",
                               json_object_new_int64(l->current_concurrency));
        json_object_object_add(o, "concurrencyLimit",
                               json_object_new_int64(atoll(l->concurrency_limit)));
        json_object_object_add(o, "totalTokens", json_object_new_int64(l->total_tokens));
        json_object_array_add(list, o);
    }
    return relay_admin_json_ok(r, HTTP_OK, list);
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
            return relay_admin_json_method(
                a->r, (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_POST), "GET, HEAD, POST");
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
            return relay_admin_json_fail(r, HTTP_METHOD_NOT_ALLOWED, "Method not allowed", NULL);
        }
        /* browsers send Origin with cross-site writes: refuse any from elsewhere */
        if (m != M_GET && !relay_admin_same_origin(r)) {
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                          RLOG "admin API: refused a %s from a foreign origin", r->method);
            rc = relay_admin_json_fail(r, HTTP_FORBIDDEN, "Cross-site requests are refused", NULL);
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
    return relay_admin_json_fail(r, HTTP_NOT_FOUND, "No such API endpoint", NULL);
}
