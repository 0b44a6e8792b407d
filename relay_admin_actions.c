/*
 * relay_admin_actions.c - the one-button actions on a key: enable/disable
 * from the list, and delete, release slots and regenerate, each behind a
 * confirmation page that says what it does; every one a POST with the CSRF
 * token, and an audit line.
 */
#include "relay_admin_int.h"

#include <stdlib.h>
#include <string.h>

APLOG_USE_MODULE(claude_relay);

/* the field of the list's enable/disable button */
static const char *const toggle_fields[] = {"active"};

/* /keys/{id}/toggle: the list's enable/disable button. */
static int toggle_key(admin_ctx *a, const char *id)
{
    apr_table_t *form;
    apr_array_header_t *pairs;
    const char *active;

    if (relay_admin_read_trusted_form(a, toggle_fields, 1, "a key enable/disable", &form)) {
        return OK;
    }
    active = apr_table_get(form, "active");
    if (!active ||
        (strcmp(active, RELAY_ACTIVE_TRUE) != 0 && strcmp(active, RELAY_ACTIVE_FALSE) != 0)) {
        return relay_admin_message_page(a, HTTP_BAD_REQUEST, relay_admin_text(a, AM_ERR_FORM));
    }
    pairs = apr_array_make(a->r->pool, 2, sizeof(const char *));
    APR_ARRAY_PUSH(pairs, const char *) = RELAY_F_IS_ACTIVE;
    APR_ARRAY_PUSH(pairs, const char *) = active;
    if (relay_admin_save_fields(a, id, pairs,
                                strcmp(active, RELAY_ACTIVE_TRUE) == 0 ? "enabled" : "disabled")) {
        return OK;
    }
    return relay_admin_see_other(a, "/");
}

/* A confirmation page: a sentence and one button that POSTs the action. */
static int confirm_page(admin_ctx *a, const relay_key_record *k, admin_msg title,
                        const char *sentence, const char *action, admin_msg button)
{
    request_rec *r = a->r;

    relay_admin_page_start(a, relay_admin_text(a, title));
    ap_rprintf(r,
               "<h1>%s</h1><p><strong>%s</strong> <code>%s</code></p><p class=\"confirm\">%s</p>"
               "<form method=\"post\" action=\"%s/keys/%s/%s\">",
               relay_admin_text(a, title), relay_admin_escape(a, k->name),
               relay_admin_escape(a, k->key_preview), relay_admin_escape(a, sentence),
               relay_admin_escape(a, a->base), k->id, action);
    relay_admin_csrf_field(a);
    ap_rprintf(r,
               "<div class=\"buttons\"><button class=\"danger\" type=\"submit\">%s</button>"
               " <a class=\"button secondary\" href=\"%s/keys/%s/edit\">%s</a></div></form>",
               relay_admin_text(a, button), relay_admin_escape(a, a->base), k->id,
               relay_admin_text(a, AM_CANCEL));
    relay_admin_page_end(a);
    return OK;
}

/* /keys/{id}/delete: the confirmation (GET) and the deletion (POST). */
static int delete_key(admin_ctx *a, const char *id)
{
    apr_table_t *form;
    relay_key_record *k;
    relay_redis_conn *c;
    const char *err = NULL;
    relay_ks_result done = RELAY_KS_ERROR;
    int rc = OK;

    if (a->r->method_number == M_GET) {
        if (!(k = relay_admin_load_key(a, id, &rc))) {
            return rc;
        }
        return confirm_page(a, k, AM_DELETE_TITLE, relay_admin_text(a, AM_DELETE_CONFIRM), "delete",
                            AM_DELETE);
    }
    if (relay_admin_read_trusted_form(a, NULL, 0, "a key deletion", &form)) {
        return OK;
    }
    if ((c = relay_admin_redis(a, &err))) {
        done = relay_keystore_delete(c, id, a->r->pool, &err);
    }
    if (done != RELAY_KS_DONE) {
        return relay_admin_store_failed(a, done, "delete", id, err);
    }
    relay_admin_audit(a, "deleted key %s", id);
    return relay_admin_see_other(a, "/");
}

/* /keys/{id}/release: the confirmation (GET) and the release of the key's slots (POST). */
static int release_key(admin_ctx *a, const char *id)
{
    request_rec *r = a->r;
    apr_table_t *form;
    relay_key_record *k;
    relay_redis_conn *c;
    const char *err = NULL;
    relay_ks_result done = RELAY_KS_ERROR;
    long released = 0;
    int rc = OK;

    if (r->method_number == M_GET) {
        if (!(k = relay_admin_load_key(a, id, &rc))) {
            return rc;
        }
        return confirm_page(a, k, AM_RELEASE_TITLE,
                            relay_admin_textf(a, AM_RELEASE_CONFIRM, k->current_concurrency,
                                              atol(k->concurrency_limit) > 0
                                                  ? k->concurrency_limit
                                                  : relay_admin_text(a, AM_UNLIMITED)),
                            "release", AM_RELEASE);
    }
    if (relay_admin_read_trusted_form(a, NULL, 0, "a release of slots", &form)) {
        return OK;
    }
    if ((c = relay_admin_redis(a, &err))) {
        done = relay_keystore_release(c, id, a->user, &released, r->pool, &err);
    }
    if (done != RELAY_KS_DONE) {
        return relay_admin_store_failed(a, done, "release the slots of", id, err);
    }
    relay_admin_audit(a, "released the slots of key %s (%ld in flight, now uncounted)", id,
                      released);
    return relay_admin_see_other(a,
                                 apr_psprintf(r->pool, "/keys/%s/edit?released=%ld", id, released));
}

/* /keys/{id}/regenerate: the confirmation (GET) and the new key, shown once (POST). */
static int regenerate_key(admin_ctx *a, const char *id)
{
    request_rec *r = a->r;
    apr_table_t *form;
    relay_key_record *k;
    relay_redis_conn *c;
    unsigned char rnd[RELAY_KEY_RANDOM_BYTES];
    const char *err = NULL, *plain = NULL, *preview = NULL;
    relay_ks_result done = RELAY_KS_ERROR;
    int rc = OK;

    if (r->method_number == M_GET) {
        if (!(k = relay_admin_load_key(a, id, &rc))) {
            return rc;
        }
        return confirm_page(a, k, AM_REGENERATE_TITLE, relay_admin_text(a, AM_REGENERATE_CONFIRM),
                            "regenerate", AM_REGENERATE);
    }
    if (relay_admin_read_trusted_form(a, NULL, 0, "a key regeneration", &form)) {
        return OK;
    }
    if (!(k = relay_admin_load_key(a, id, &rc))) {
        return rc;
    }
    if (apr_generate_random_bytes(rnd, sizeof(rnd)) != APR_SUCCESS) {
        return relay_admin_message_page(a, HTTP_INTERNAL_SERVER_ERROR,
                                        relay_admin_text(a, AM_UNAVAILABLE));
    }
    if ((c = relay_admin_redis(a, &err))) {
        done = relay_keystore_regenerate(c, id, a->sc->secret, rnd, a->user, &plain, &preview,
                                         r->pool, &err);
    }
    memset(rnd, 0, sizeof(rnd));
    if (done != RELAY_KS_DONE) {
        return relay_admin_store_failed(a, done, "regenerate", id, err);
    }
    relay_admin_audit(a, "regenerated key %s: the old key is refused from now on", id);
    relay_admin_show_key_once(a, AM_REGENERATED_TITLE, k->name, plain);
    return OK;
}

int relay_admin_key_action(admin_ctx *a, const char *id, const char *action)
{
    int post = a->r->method_number == M_POST;

    if (strcmp(action, "edit") == 0) {
        return relay_admin_edit_key(a, id);
    }
    if (strcmp(action, "toggle") == 0) {
        return post ? toggle_key(a, id) : HTTP_METHOD_NOT_ALLOWED;
    }
    if (strcmp(action, "delete") == 0) {
        return delete_key(a, id);
    }
    if (strcmp(action, "release") == 0) {
        return release_key(a, id);
    }
    if (strcmp(action, "regenerate") == 0) {
        return regenerate_key(a, id);
    }
    return HTTP_NOT_FOUND;
}
