/*
 * relay_admin.h - the admin handler (key list, forms, JSON API).
 */
#ifndef RELAY_ADMIN_H
#define RELAY_ADMIN_H

#include <httpd.h>

/* The handler name admins set with SetHandler. */
#define RELAY_ADMIN_HANDLER "claude-relay-admin"

/* Serve the admin under the <Location> where the handler is set. */
int relay_admin_handler(request_rec *r);

#endif
