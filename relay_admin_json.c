/*
 * relay_admin_json.c - what the JSON API's handlers share: answers in the
 * {"success":...} shape, a key as JSON, reading a JSON body, and checking its
 * members against the field rules the forms use.
 */
#include "relay_admin_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Send a JSON document with a status. */
int relay_admin_json_send(request_rec *r, int status, json_object *doc)
{
    const char *text = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN);

    r->status = status;
    ap_set_content_type(r, "application/json");
    ap_rputs(text, r);
    json_object_put(doc);
    return OK;
}

/* {"success":false,"error":...,"field":...} */
int relay_admin_json_fail(request_rec *r, int status, const char *error, const char *field)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "success", json_object_new_boolean(0));
    json_object_object_add(o, "error", json_object_new_string(error));
    if (field) {
        json_object_object_add(o, "field", json_object_new_string(field));
    }
    return relay_admin_json_send(r, status, o);
}

/* {"success":true,"data":...} */
int relay_admin_json_ok(request_rec *r, int status, json_object *data)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "success", json_object_new_boolean(1));
    json_object_object_add(o, "data", data);
    return relay_admin_json_send(r, status, o);
}

/* 405 naming what the path allows. */
int relay_admin_json_method(request_rec *r, apr_int64_t allowed, const char *allow)
{
    r->allowed = allowed;
    apr_table_setn(r->headers_out, "Allow", allow);
    return relay_admin_json_fail(r, HTTP_METHOD_NOT_ALLOWED, "Method not allowed here", NULL);
}

/* Answer 400 naming the field; returns 1, "answered", for the callers that check. */
int relay_admin_json_refused(request_rec *r, int status, const char *error, const char *field)
{
    relay_admin_json_fail(r, status, error, field);
    return 1;
}

json_object *relay_admin_json_str(const char *s)
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
json_object *relay_admin_key_json(const admin_ctx *a, const relay_key_record *k)
{
    json_object *o = json_object_new_object();
    json_object *usage = json_object_new_object();

    json_object_object_add(o, "id", relay_admin_json_str(k->id));
    json_object_object_add(o, "name", relay_admin_json_str(k->name));
    json_object_object_add(o, "description", relay_admin_json_str(k->description));
    json_object_object_add(o, "keyPreview", relay_admin_json_str(k->key_preview));
    json_object_object_add(o, "tokenLimit", json_object_new_int64(atoll(k->token_limit)));
    json_object_object_add(o, "concurrencyLimit",
                           json_object_new_int64(atoll(k->concurrency_limit)));
    json_object_object_add(o, "isActive", json_object_new_boolean(relay_key_enabled(k)));
    json_object_object_add(o, "status", relay_admin_json_str(relay_key_status(k, a->now_iso)));
    json_object_object_add(o, "currentConcurrency", json_object_new_int64(k->current_concurrency));
    json_object_object_add(o, "createdAt", relay_admin_json_str(k->created_at));
    json_object_object_add(o, "updatedAt", relay_admin_json_str(k->updated_at));
    json_object_object_add(o, "lastUsedAt", relay_admin_json_str(k->last_used_at));
    json_object_object_add(o, "expiresAt", relay_admin_json_str(k->expires_at));
    json_object_object_add(o, "createdBy", relay_admin_json_str(k->created_by));
    json_object_object_add(o, "updatedBy", relay_admin_json_str(k->updated_by));
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
int relay_admin_read_json(request_rec *r, int may_be_empty, json_object **obj, const char **why)
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
int relay_admin_check_body(admin_ctx *a, json_object *body, int create, const char **stored)
{
    request_rec *r = a->r;
    const char *why;
    int f;

    json_object_object_foreach(body, member, val)
    {
        (void)val;
        f = relay_field_find(member);
        if (f < 0 || (create && !relay_field_rules[f].on_create)) {
            return relay_admin_json_refused(
                r, HTTP_BAD_REQUEST,
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
            return relay_admin_json_refused(r, HTTP_BAD_REQUEST,
                                            apr_pstrcat(r->pool, name, " ", why, NULL), name);
        }
        iv = relay_field_check((relay_field)f, typed, a->now_iso, buf, &stored[f]);
        if (iv != RELAY_VALID) {
            return relay_admin_json_refused(
                r, HTTP_BAD_REQUEST,
                apr_pstrcat(r->pool, name, ": ", relay_admin_invalid_text(a, f, iv, LANG_EN), NULL),
                name);
        }
    }
    return 0;
}
