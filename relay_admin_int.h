/*
 * relay_admin_int.h - what the admin's files share. The admin is split by
 * concern:
 *
 *   relay_admin.c         the handler: who may enter, routing, security
 *                         headers, CSRF and origin checks, the request's
 *                         Redis connection, list parameters, messages
 *   relay_admin_html.c    the page frame and the key list (overview, search,
 *                         order, pages)
 *   relay_admin_forms.c   the key forms: new, edit, enable/disable, delete,
 *                         release slots, regenerate
 *   relay_admin_chart.c   a key's last 30 days and its split by model
 *   relay_admin_api.c     the JSON API
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

#define RLOG "mod_claude_relay: "
/* the largest form or JSON body the admin reads */
#define ADMIN_MAX_BODY (64 * 1024)

/* What one admin request needs. */
typedef struct {
    request_rec *r;
    relay_server_conf *sc;
    const char *base;     /* the admin's URL path, without a trailing slash */
    const char *sub;      /* the rest of the path after base */
    const char *user;     /* authenticated user, or "anonymous" under RelayAdmin Open */
    admin_lang lang;      /* the pages' language, from Accept-Language */
    const char *now_iso;  /* the request's time, as stored times are written */
    unsigned char csrf_key[RELAY_SHA256_LEN]; /* HMAC(secret, CSRF_KEY_LABEL) */
    relay_redis_conn *redis; /* borrowed at the first use, given back by an r->pool cleanup */
} admin_ctx;

/* --- relay_admin.c ------------------------------------------------------ */

/* A message in the request's language. */
const char *relay_admin_text(const admin_ctx *a, admin_msg m);

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

/* "3 / 5", "3 / unlimited": a key's requests in flight against its limit. */
const char *relay_admin_in_flight_text(admin_ctx *a, long current, const char *limit);

/* GET /: the key list with the overview, search, order and pages. */
int relay_admin_list_page(admin_ctx *a);

/* --- relay_admin_forms.c ------------------------------------------------ */

/* /new: the create form (GET) and the creation (POST). */
int relay_admin_new_key(admin_ctx *a);

/*
 * /keys/{id}/ACTION for ACTION edit, toggle, delete, release or regenerate;
 * HTTP_NOT_FOUND for another action.
 */
int relay_admin_key_action(admin_ctx *a, const char *id, const char *action);

/* --- relay_admin_chart.c ------------------------------------------------ */

/* A key's last 30 days as an inline SVG bar chart, and its split by model. */
void relay_admin_usage_history(admin_ctx *a, const relay_key_record *k);

/* --- relay_admin_api.c -------------------------------------------------- */

/* /api/...: the JSON API; rest is the path after /api. */
int relay_admin_api(admin_ctx *a, const char *rest);

/* --- relay_admin_static.c ----------------------------------------------- */

/* /static/NAME: admin.css or admin.js from RelayAdminAssets. */
int relay_admin_static(admin_ctx *a, const char *name);

#endif
