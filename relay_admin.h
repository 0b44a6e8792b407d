/*
 * relay_admin.h - the admin handler (key list, forms, JSON API).
 */
#ifndef RELAY_ADMIN_H
#define RELAY_ADMIN_H

#include <httpd.h>

/* The handler name admins may set with SetHandler (it serves only under RelayAdmin On/Open). */
#define RELAY_ADMIN_HANDLER "claude-relay-admin"

/* Serve the admin where RelayAdmin is On or Open (404 where the handler is set without it). */
int relay_admin_handler(request_rec *r);

#endif
