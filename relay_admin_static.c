/*
 * relay_admin_static.c - the admin's two static files, admin.css and
 * admin.js, read from RelayAdminAssets. No other name is served, so no path
 * a client sends can reach another file.
 */
#include "relay_admin_int.h"

#include <string.h>

APLOG_USE_MODULE(claude_relay);

int relay_admin_static(admin_ctx *a, const char *name)
{
    request_rec *r = a->r;
    const char *type, *path;
    apr_file_t *f;
    apr_finfo_t fi;
    apr_size_t sent;
    apr_status_t rv;

    if (strcmp(name, "admin.css") == 0) {
        type = "text/css; charset=utf-8";
    }
    else if (strcmp(name, "admin.js") == 0) {
        type = "text/javascript; charset=utf-8";
    }
    else {
        return HTTP_NOT_FOUND;
    }
    if (r->method_number != M_GET) {
        r->allowed = AP_METHOD_BIT << M_GET;
        return HTTP_METHOD_NOT_ALLOWED;
    }
    path = apr_pstrcat(r->pool, relay_admin_assets(a->sc), "/", name, NULL);
    rv = apr_file_open(&f, path, APR_FOPEN_READ | APR_FOPEN_SENDFILE_ENABLED, 0, r->pool);
    if (rv != APR_SUCCESS || apr_file_info_get(&fi, APR_FINFO_SIZE, f) != APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, rv, r,
                      RLOG "admin: cannot read %s (see RelayAdminAssets)", path);
        return HTTP_NOT_FOUND;
    }
    ap_set_content_type(r, type);
    ap_set_content_length(r, fi.size);
    /* the pages change only with the module: a short cache is safe (replaces no-store) */
    apr_table_setn(r->err_headers_out, "Cache-Control", "max-age=300");
    if (!r->header_only) {
        ap_send_fd(f, r, 0, (apr_size_t)fi.size, &sent);
    }
    return OK;
}
