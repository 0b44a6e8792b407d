/*
 * relay_admin_int.h - what the admin's files share. The admin is split by
 * concern:
 *
 *   relay_admin.c         the handler: who may enter, routing, security
 *                         headers, CSRF and origin checks, the request's
 *                         Redis connection, list parameters, messages
 *   relay_admin_html.c    the page frame and the key list (overview, search,
 *                         order, pages)
 *   relay_admin_forms.c   the key forms: new and edit, drawn from the field rules
 *   relay_admin_actions.c enable/disable, delete, release slots, regenerate
 *   relay_admin_chart.c   a key's last 30 days and its split by model
 *   relay_admin_api.c     the JSON API's routes and handlers
 *   relay_admin_json.c    JSON answers, bodies and their checks
 *   relay_admin_static.c  admin.css and admin.js
 *
 * Not for the rest of the module, which calls relay_admin_handler only.
 */
#ifndef RELAY_ADMIN_INT_H
#define RELAY_ADMIN_INT_H

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
#include <httpd.h>
#include <json-c/json.h>

#define RLOG "mod_claude_relay: "
/* the largest form or JSON body the admin reads */
#define ADMIN_MAX_BODY (64 * 1024)

/* What one admin request needs. */
typedef struct {
    request_rec *r;
    relay_server_conf *sc;
    const char *base;    /* the admin's URL path, without a trailing slash */
    const char *sub;     /* the rest of the path after base */
    const char *user;    /* authenticated user, or "anonymous" under RelayAdmin Open */
    admin_lang lang;     /* the pages' language, from Accept-Language */
    const char *now_iso; /* the request's time, as stored times are written */
    unsigned char csrf_key[RELAY_SHA256_LEN]; /* HMAC(secret, CSRF_KEY_LABEL) */
    relay_redis_conn *redis; /* borrowed at the first use, given back by an r->pool cleanup */
} admin_ctx;

/* --- relay_admin.c ------------------------------------------------------ */

/* A message in the request's language. */
const char *relay_admin_text(const admin_ctx *a, admin_msg m);
/* A message of the table filled in, as printf does (from the request's pool). */
const char *relay_admin_textf(const admin_ctx *a, admin_msg m, ...);

/* s escaped for HTML text and attributes (quotes included); UTF-8 passes as is. */
const char *relay_admin_escape(const admin_ctx *a, const char *s);

/*
 * The request's Redis connection: borrowed from the child's pool at the first
 * call, given back when the request's pool goes (as mod_dbd's ap_dbd_acquire
 * does). NULL with *err when Redis cannot be reached.
 */
relay_redis_conn *relay_admin_redis(admin_ctx *a, const char **err);

/* The user's CSRF token for forms made now. */
const char *relay_admin_csrf_token(const admin_ctx *a);

/*
 * Whether a form POST may change something: Origin and Referer (when sent)
 * name this host, and token is the user's current or previous CSRF token.
 */
int relay_admin_form_trusted(const admin_ctx *a, const char *token);

/* Whether Origin and Referer, when present, name this host. */
int relay_admin_same_origin(request_rec *r);

/*
 * Why a value of field f was refused, from the shared table of messages
 * (relay_admin_i18n.h) and rules (relay_validate.c), in lang; NULL for
 * RELAY_VALID.
 */
const char *relay_admin_invalid_text(const admin_ctx *a, relay_field f, relay_invalid v,
                                     admin_lang lang);

/*
 * The list parameters of the query string (search, sort, order, page,
 * perPage) into q, with the defaults for those not given. Returns NULL, or
 * the name of a parameter whose value is not valid (q then unusable).
 */
const char *relay_admin_list_params(admin_ctx *a, relay_key_query *q);

/*
 * Read a POSTed form of csrf and the n fields named, checking origin and
 * token. Returns 0 to go on with *form, or 1 when it answered (a body that is
 * not a form: 400/413; a forged or stale form: 403, nothing changed).
 */
int relay_admin_read_trusted_form(admin_ctx *a, const char *const *names, int n, const char *what,
                                  apr_table_t **form);

/* A change made by the admin, as a notice in the error log: "admin audit: USER <what>". */
void relay_admin_audit(const admin_ctx *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* --- relay_admin_html.c ------------------------------------------------- */

/* The page frame: head, header with navigation, then the caller's content. */
void relay_admin_page_start(admin_ctx *a, const char *title);
void relay_admin_page_end(admin_ctx *a);

/* A short page with one message (errors, refusals); returns OK after setting status. */
int relay_admin_message_page(admin_ctx *a, int status, const char *text);

/* The hidden CSRF field of every form that changes something. */
void relay_admin_csrf_field(admin_ctx *a);

/* The page that shows a new key once, with a copy button. */
void relay_admin_show_key_once(admin_ctx *a, admin_msg title, const char *name, const char *plain);

/* A key for a page; NULL after sending the error page (404, or 503), with *rc to return. */
relay_key_record *relay_admin_load_key(admin_ctx *a, const char *id, int *rc);

/* The page for a key-store result other than RELAY_KS_DONE (404, 409, 503); returns OK. */
int relay_admin_store_failed(admin_ctx *a, relay_ks_result done, const char *doing, const char *id,
                             const char *err);

/* Send the browser to path under the admin after a change: 303. */
int relay_admin_see_other(admin_ctx *a, const char *path);

/* "3 / 5", "3 / unlimited": a key's requests in flight against its limit. */
const char *relay_admin_in_flight_text(admin_ctx *a, long current, const char *limit);

/* GET /: the key list with the overview, search, order and pages. */
int relay_admin_list_page(admin_ctx *a);

/* --- relay_admin_forms.c ------------------------------------------------ */

/* /new: the create form (GET) and the creation (POST). */
int relay_admin_new_key(admin_ctx *a);

/* /keys/{id}/edit: the edit form (GET) and the change (POST). */
int relay_admin_edit_key(admin_ctx *a, const char *id);

/*
 * Write a key's changed fields (pairs: field, value, ...) and the audit line
 * "USER <what> key ID: field=value, ...". Returns 0, or 1 when it answered
 * with an error page.
 */
int relay_admin_save_fields(admin_ctx *a, const char *id, apr_array_header_t *pairs,
                            const char *what);

/* --- relay_admin_actions.c ---------------------------------------------- */

/*
 * /keys/{id}/ACTION for ACTION edit, toggle, delete, release or regenerate;
 * HTTP_NOT_FOUND for another action.
 */
int relay_admin_key_action(admin_ctx *a, const char *id, const char *action);

/* --- relay_admin_chart.c ------------------------------------------------ */

/* A key's last 30 days as an inline SVG bar chart, and its split by model. */
void relay_admin_usage_history(admin_ctx *a, const relay_key_record *k);

/* --- relay_admin_json.c ------------------------------------------------- */

/* Send a JSON document with a status (frees doc); returns OK. */
int relay_admin_json_send(request_rec *r, int status, json_object *doc);

/* {"success":false,"error":...,"field":...} with a status; returns OK. */
int relay_admin_json_fail(request_rec *r, int status, const char *error, const char *field);

/* {"success":true,"data":...} with a status; returns OK. */
int relay_admin_json_ok(request_rec *r, int status, json_object *data);

/* 405 naming what the path allows (an Allow header value); returns OK. */
int relay_admin_json_method(request_rec *r, apr_int64_t allowed, const char *allow);

/* relay_admin_json_fail, returning 1, "answered", for callers that check. */
int relay_admin_json_refused(request_rec *r, int status, const char *error, const char *field);

/* A JSON string of s ("" for NULL). */
json_object *relay_admin_json_str(const char *s);

/* A key as the API shows it: never its hash. */
json_object *relay_admin_key_json(const admin_ctx *a, const relay_key_record *k);

/*
 * Read a JSON object body (at most ADMIN_MAX_BODY); with may_be_empty, no
 * body gives OK and *obj NULL. Returns OK, or an HTTP status with *why set.
 */
int relay_admin_read_json(request_rec *r, int may_be_empty, json_object **obj, const char **why);

/*
 * Check a body's members against the field rules: every member a field that
 * may be set (on create: those with on_create; absent ones are checked too,
 * so a name is required). Returns 0 with stored[f] holding each value to
 * write (NULL: not given), or 1 when it answered 400 naming the field.
 */
int relay_admin_check_body(admin_ctx *a, json_object *body, int create, const char **stored);

/* --- relay_admin_api.c -------------------------------------------------- */

/* /api/...: the JSON API; rest is the path after /api. */
int relay_admin_api(admin_ctx *a, const char *rest);

/* --- relay_admin_static.c ----------------------------------------------- */

/* /static/NAME: admin.css or admin.js from RelayAdminAssets. */
int relay_admin_static(admin_ctx *a, const char *name);

#endif
