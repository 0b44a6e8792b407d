/*
 * relay_config.h - the module's configuration: server-wide settings (Redis,
 * secrets, lease length) and per-location policy.
 */
#ifndef RELAY_CONFIG_H
#define RELAY_CONFIG_H

#include "relay_endpoints.h"
#include "relay_lease.h"
#include "relay_redis.h"

#include <httpd.h>
#include <http_config.h>

#define RELAY_UNSET (-1)

#define RELAY_DEFAULT_REDIS_HOST "127.0.0.1"
#define RELAY_DEFAULT_REDIS_PORT 6379
#define RELAY_MAX_SENTINELS 32
#define RELAY_DEFAULT_TIMEOUT_MS 1000
#define RELAY_DEFAULT_LEASE_SECONDS 300
/* how long a finished request's slot waits for the next request of its key */
#define RELAY_DEFAULT_REUSE_MS 20
#define RELAY_DEFAULT_CONNECTIONS 8
#ifndef RELAY_ASSETS_DIR
#define RELAY_ASSETS_DIR "/usr/share/mod_claude_relay/htdocs"
#endif

/* What to do when Redis cannot be reached. */
typedef enum {
    RELAY_ONERR_UNSET = RELAY_UNSET,
    RELAY_ONERR_DENY = 0, /* answer 503 */
    RELAY_ONERR_ALLOW = 1 /* let the request through, unlimited, with a warning */
} relay_onerr;

/* Whether a section serves the admin (RelayAdmin). */
typedef enum {
    RELAY_ADMIN_UNSET = RELAY_UNSET,
    RELAY_ADMIN_OFF = 0, /* never: SetHandler claude-relay-admin gets 404 here */
    RELAY_ADMIN_ON = 1,  /* to users Apache has authenticated (r->user); 500 without one */
    RELAY_ADMIN_OPEN = 2 /* to anyone, changes recorded as made by "anonymous" */
} relay_admin_mode;

/* Server-wide settings: one Redis, one secret, per virtual host. */
typedef struct {
    relay_redis_target redis; /* RelayRedisServer/Sentinel/Password/Username/Database/
                                 Timeout: host and unix_path NULL and no sentinels = unset,
                                 passwords and users NULL = unset, database and timeout_ms
                                 RELAY_UNSET; relay_config_check fills the defaults in */
    int connections;          /* RelayRedisConnections: pool size per child; RELAY_UNSET */
    const char *secret;       /* RelayKeyHashSecret; NULL = unset */
    int lease_seconds;        /* RelayLeaseSeconds; RELAY_UNSET = default */
    int reuse_ms;             /* RelayReuseSlots; RELAY_UNSET = default */
    int engine_seen;          /* a RelayEngine On appears in this server's sections */
    const char *admin_assets; /* RelayAdminAssets: folder of admin.css/admin.js; NULL = default */
} relay_server_conf;

/* Per-location policy. */
typedef struct {
    int engine;                    /* RelayEngine: RELAY_UNSET, 0 or 1 */
    const char *upstream_key;      /* RelayUpstreamApiKey value; NULL = unset */
    const char *upstream_bearer;   /* RelayUpstreamBearer value; NULL = unset */
    relay_onerr on_redis_error;    /* RelayOnRedisError */
    apr_array_header_t *endpoints; /* RelayAllowEndpoints: relay_endpoint; NULL = default */
    const char *location;          /* the <Location> path RelayEngine was set in; NULL when
                                      set in another kind of section (a regex, a directory) */
    relay_admin_mode admin;        /* RelayAdmin; never from .htaccess */
} relay_dir_conf;

extern module AP_MODULE_DECLARE_DATA claude_relay_module;

/* The directive table, defined in relay_config.c. */
extern const command_rec relay_cmds[];

void *relay_create_server_conf(apr_pool_t *p, server_rec *s);
void *relay_merge_server_conf(apr_pool_t *p, void *basev, void *addv);
void *relay_create_dir_conf(apr_pool_t *p, char *dir);
void *relay_merge_dir_conf(apr_pool_t *p, void *basev, void *addv);

/* Whether any RelayEngine On was seen in the main server's own sections. */
int relay_engine_in_main(void);

/*
 * check_config: fill in the Redis defaults of every server, then refuse a
 * configuration that cannot work (RelayEngine On without a secret, a Redis
 * user without a password, ...) in any server that gets a Redis pool.
 * Returns OK or HTTP_INTERNAL_SERVER_ERROR after logging why.
 */
int relay_config_check(server_rec *s);

/* Whether a server needs Redis: a RelayEngine On in reach, or an admin (which needs the secret). */
int relay_needs_redis(server_rec *s);

/* Forget what an earlier configuration pass saw (called from pre_config). */
void relay_config_reset(void);

/* Where the admin's static files are read from. */
const char *relay_admin_assets(const relay_server_conf *sc);

/* The endpoints a location relays: its RelayAllowEndpoints, or the default list. */
const relay_endpoint *relay_endpoints(const relay_dir_conf *dc, size_t *n);
/* Effective RelayAdmin of a location (Off when unset). */
relay_admin_mode relay_admin_mode_of(const relay_dir_conf *dc);

/* Effective lease length of a server config. */
int relay_lease_seconds(const relay_server_conf *sc);

/* Effective RelayReuseSlots of a server config, in milliseconds (0 = off). */
int relay_reuse_ms(const relay_server_conf *sc);

/*
 * The lease store of a server in this child process: built by child_init
 * (in mod_claude_relay.c), one per distinct Redis target, and only read
 * after; NULL for a server without the relay or when it could not be built.
 */
relay_lease_store *relay_server_store(const server_rec *s);

#endif
