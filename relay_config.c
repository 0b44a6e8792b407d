/*
 * relay_config.c - directives, their validation, and config create/merge.
 *
 * Every setter rejects a bad value with a sentence that names the directive,
 * so `apachectl configtest` stops on it.
 */
#include "relay_config.h"
#include "relay_keys.h"

#include <apr_file_io.h>
#include <apr_strings.h>
#include <errno.h>
#include <http_log.h>
#include <stdlib.h>
#include <string.h>

APLOG_USE_MODULE(claude_relay);

/* set when RelayEngine On appears outside any virtual host */
static int engine_in_main;

int relay_engine_in_main(void)
{
    return engine_in_main;
}

void relay_config_reset(void)
{
    engine_in_main = 0;
}

void *relay_create_server_conf(apr_pool_t *p, server_rec *s)
{
    relay_server_conf *sc = apr_pcalloc(p, sizeof(*sc));

    (void)s;
    sc->redis.database = RELAY_UNSET;
    sc->redis.timeout_ms = RELAY_UNSET;
    sc->lease_seconds = RELAY_UNSET;
    sc->reuse_ms = RELAY_UNSET;
    sc->connections = RELAY_UNSET;
    return sc;
}

/* Whether a server's own configuration says where Redis is. */
static int redis_where_set(const relay_server_conf *sc)
{
    return sc->redis.host || sc->redis.unix_path || sc->redis.nsentinels > 0;
}

void *relay_merge_server_conf(apr_pool_t *p, void *basev, void *addv)
{
    relay_server_conf *base = basev, *add = addv;
    relay_server_conf *sc = apr_pcalloc(p, sizeof(*sc));
    /* where: host, port, socket and sentinels travel together */
    const relay_server_conf *from = redis_where_set(add) ? add : base;

    sc->redis.host = from->redis.host;
    sc->redis.port = from->redis.port;
    sc->redis.unix_path = from->redis.unix_path;
    sc->redis.sentinels = from->redis.sentinels;
    sc->redis.nsentinels = from->redis.nsentinels;
    sc->redis.master_name = from->redis.master_name;
    sc->redis.password = add->redis.password ? add->redis.password : base->redis.password;
    sc->redis.username = add->redis.username ? add->redis.username : base->redis.username;
    sc->redis.sentinel_password =
        add->redis.sentinel_password ? add->redis.sentinel_password : base->redis.sentinel_password;
    sc->redis.sentinel_username =
        add->redis.sentinel_username ? add->redis.sentinel_username : base->redis.sentinel_username;
    sc->redis.database =
        add->redis.database != RELAY_UNSET ? add->redis.database : base->redis.database;
    sc->redis.timeout_ms =
        add->redis.timeout_ms != RELAY_UNSET ? add->redis.timeout_ms : base->redis.timeout_ms;
    sc->secret = add->secret ? add->secret : base->secret;
    sc->admin_assets = add->admin_assets ? add->admin_assets : base->admin_assets;
    sc->lease_seconds =
        add->lease_seconds != RELAY_UNSET ? add->lease_seconds : base->lease_seconds;
    sc->reuse_ms = add->reuse_ms != RELAY_UNSET ? add->reuse_ms : base->reuse_ms;
    sc->connections = add->connections != RELAY_UNSET ? add->connections : base->connections;
    /* engine_seen describes the sections of this server only: not inherited */
    sc->engine_seen = add->engine_seen;
    return sc;
}

/* The defaults of what no server set (the main server is never merged). */
static void redis_defaults(relay_redis_target *t)
{
    if (!t->host && !t->unix_path && t->nsentinels == 0) {
        t->host = RELAY_DEFAULT_REDIS_HOST;
        t->port = RELAY_DEFAULT_REDIS_PORT;
    }
    if (t->database == RELAY_UNSET) {
        t->database = 0;
    }
    if (t->timeout_ms == RELAY_UNSET) {
        t->timeout_ms = RELAY_DEFAULT_TIMEOUT_MS;
    }
}

/* Whether a server may run the engine (its own sections, or the main server's). */
static int engine_possible(server_rec *s)
{
    relay_server_conf *sc = ap_get_module_config(s->module_config, &claude_relay_module);
    return engine_in_main || sc->engine_seen;
}

int relay_needs_redis(server_rec *s)
{
    relay_server_conf *sc = ap_get_module_config(s->module_config, &claude_relay_module);
    return engine_possible(s) || sc->secret != NULL;
}

/* Log why a server's configuration cannot work; returns HTTP_INTERNAL_SERVER_ERROR. */
static int refuse_config(server_rec *v, const char *why)
{
    ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, NULL,
                 "%s (server %s, defined at %s:%d)", why,
                 v->server_hostname ? v->server_hostname : "(main)",
                 v->defn_name ? v->defn_name : "main config", v->defn_line_number);
    return HTTP_INTERNAL_SERVER_ERROR;
}

int relay_config_check(server_rec *s)
{
    server_rec *v;

    for (v = s; v; v = v->next) {
        relay_server_conf *sc = ap_get_module_config(v->module_config, &claude_relay_module);
        const relay_redis_target *t = &sc->redis;

        redis_defaults(&sc->redis);
        if (engine_possible(v) && !sc->secret) {
            return refuse_config(v, "RelayKeyHashSecret: required when RelayEngine On is used");
        }
        if (!relay_needs_redis(v)) {
            continue;
        }
        /* every server that gets a Redis pool in its children */
        if (t->username && !t->password) {
            return refuse_config(v, "RelayRedisUsername: needs RelayRedisPassword as well");
        }
        if (t->sentinel_username && !t->sentinel_password) {
            return refuse_config(v, "RelayRedisSentinelUsername: needs RelayRedisSentinelPassword "
                                    "as well");
        }
        if (t->sentinel_password && t->nsentinels == 0) {
            return refuse_config(v, "RelayRedisSentinelPassword: there is no RelayRedisSentinel to "
                                    "use it with");
        }
    }
    return OK;
}

void *relay_create_dir_conf(apr_pool_t *p, char *dir)
{
    relay_dir_conf *dc = apr_pcalloc(p, sizeof(*dc));

    (void)dir;
    dc->engine = RELAY_UNSET;
    dc->on_redis_error = RELAY_ONERR_UNSET;
    dc->admin = RELAY_ADMIN_UNSET;
    return dc;
}

void *relay_merge_dir_conf(apr_pool_t *p, void *basev, void *addv)
{
    relay_dir_conf *base = basev, *add = addv;
    relay_dir_conf *dc = apr_pcalloc(p, sizeof(*dc));

    dc->engine = add->engine != RELAY_UNSET ? add->engine : base->engine;
    /* the two credential forms replace each other as one setting */
    dc->upstream_key =
        add->upstream_key || add->upstream_bearer ? add->upstream_key : base->upstream_key;
    dc->upstream_bearer =
        add->upstream_key || add->upstream_bearer ? add->upstream_bearer : base->upstream_bearer;
    dc->on_redis_error =
        add->on_redis_error != RELAY_ONERR_UNSET ? add->on_redis_error : base->on_redis_error;
    dc->endpoints = add->endpoints ? add->endpoints : base->endpoints;
    /* the location travels with the RelayEngine that named it */
    dc->location = add->engine != RELAY_UNSET ? add->location : base->location;
    dc->admin = add->admin != RELAY_ADMIN_UNSET ? add->admin : base->admin;
    return dc;
}

const relay_endpoint *relay_endpoints(const relay_dir_conf *dc, size_t *n)
{
    if (dc->endpoints) {
        *n = (size_t)dc->endpoints->nelts;
        return (const relay_endpoint *)dc->endpoints->elts;
    }
    *n = relay_default_endpoints_count;
    return relay_default_endpoints;
}

const char *relay_admin_assets(const relay_server_conf *sc)
{
    return sc->admin_assets ? sc->admin_assets : RELAY_ASSETS_DIR;
}

relay_admin_mode relay_admin_mode_of(const relay_dir_conf *dc)
{
    return dc && dc->admin != RELAY_ADMIN_UNSET ? dc->admin : RELAY_ADMIN_OFF;
}

int relay_lease_seconds(const relay_server_conf *sc)
{
    return sc->lease_seconds == RELAY_UNSET ? RELAY_DEFAULT_LEASE_SECONDS : sc->lease_seconds;
}

int relay_reuse_ms(const relay_server_conf *sc)
{
    return sc->reuse_ms == RELAY_UNSET ? RELAY_DEFAULT_REUSE_MS : sc->reuse_ms;
}

/* The server config of the server a directive appears in. */
static relay_server_conf *server_conf(cmd_parms *cmd)
{
    return ap_get_module_config(cmd->server->module_config, &claude_relay_module);
}

/* Parse a whole number in [min, max]; NULL on success, else the sentence. */
static const char *parse_int(cmd_parms *cmd, const char *arg, long min, long max, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(arg, &end, 10);
    if (*arg == '\0' || *end != '\0' || errno != 0 || v < min || v > max) {
        return apr_psprintf(cmd->pool, "%s: '%s' is not a whole number from %ld to %ld",
                            cmd->cmd->name, arg, min, max);
    }
    *out = (int)v;
    return NULL;
}

/*
 * A secret given inline, as env:VAR or as file:/path; a file holds it on one
 * line and is read by relay_secret_read, as relay-keys --secret-file is, so
 * both see the same secret. Read once, at configuration time. *source names
 * where the value came from, for messages; *out is set only on success.
 */
static const char *resolve_secret_from(cmd_parms *cmd, const char *arg, const char **out,
                                       const char **source)
{
    const char *v;

    if (strncmp(arg, "env:", 4) == 0) {
        const char *name = arg + 4;
        if (*name == '\0') {
            return apr_psprintf(cmd->pool, "%s: env: needs a variable name", cmd->cmd->name);
        }
        v = getenv(name);
        if (!v || *v == '\0') {
            return apr_psprintf(cmd->pool,
                                "%s: the environment variable %s is not set or empty "
                                "(httpd reads it when it starts)",
                                cmd->cmd->name, name);
        }
        v = apr_pstrdup(cmd->pool, v);
        *source = apr_psprintf(cmd->pool, "the environment variable %s", name);
    }
    else if (strncmp(arg, "file:", 5) == 0) {
        const char *path = ap_server_root_relative(cmd->temp_pool, arg + 5);
        size_t whylen, len;
        char *buf, *why;

        if (!path || arg[5] == '\0') {
            return apr_psprintf(cmd->pool, "%s: file: needs a path", cmd->cmd->name);
        }
        whylen = strlen(path) + 200;
        why = apr_palloc(cmd->temp_pool, whylen);
        buf = apr_palloc(cmd->temp_pool, RELAY_SECRET_FILE_MAX + 1);
        if (relay_secret_read(path, buf, RELAY_SECRET_FILE_MAX + 1, &len, why, whylen) != 0) {
            return apr_psprintf(cmd->pool, "%s: %s", cmd->cmd->name, why);
        }
        v = apr_pstrmemdup(cmd->pool, buf, len);
        /* the temporary pool is reused, not wiped */
        memset(buf, 0, len);
        *source = apr_psprintf(cmd->pool, "the file %s", path);
    }
    else {
        if (*arg == '\0') {
            return apr_psprintf(cmd->pool, "%s: the value is empty", cmd->cmd->name);
        }
        v = arg;
        *source = "the value";
    }
    if (strpbrk(v, "\r\n") != NULL) {
        return apr_psprintf(cmd->pool, "%s: the value contains a line break", cmd->cmd->name);
    }
    *out = v;
    return NULL;
}

/* A secret for a directive with no rule beyond resolve_secret_from's (e.g. a Redis password). */
static const char *resolve_secret(cmd_parms *cmd, const char *arg, const char **out)
{
    const char *source;

    return resolve_secret_from(cmd, arg, out, &source);
}

/* RelayRedisServer host[:port] | unix:/path */
static const char *set_redis_server(cmd_parms *cmd, void *dummy, const char *arg)
{
    relay_server_conf *sc = server_conf(cmd);
    (void)dummy;

    if (sc->redis.nsentinels > 0) {
        return "RelayRedisServer: cannot be combined with RelayRedisSentinel in the same "
               "server (which one wins would be ambiguous); keep one of them";
    }
    if (strncmp(arg, "unix:", 5) == 0) {
        if (arg[5] != '/') {
            return apr_psprintf(
                cmd->pool, "RelayRedisServer: '%s' needs an absolute socket path after unix:", arg);
        }
        sc->redis.unix_path = arg + 5;
        sc->redis.host = NULL;
    }
    else {
        char *host = NULL, *scope = NULL;
        apr_port_t port = 0;
        apr_status_t rv = apr_parse_addr_port(&host, &scope, &port, arg, cmd->pool);
        if (rv != APR_SUCCESS || !host || scope) {
            return apr_psprintf(cmd->pool,
                                "RelayRedisServer: '%s' is not host[:port] or unix:/path", arg);
        }
        sc->redis.host = host;
        sc->redis.port = port ? port : RELAY_DEFAULT_REDIS_PORT;
        sc->redis.unix_path = NULL;
    }
    return NULL;
}

/* RelayRedisSentinel host:port[,host:port...] master-name */
static const char *set_redis_sentinel(cmd_parms *cmd, void *dummy, int argc, char *const argv[])
{
    relay_server_conf *sc = server_conf(cmd);
    const char *usage = "(RelayRedisSentinel host:port[,host:port...] master-name)";
    apr_array_header_t *addrs;
    char *list, *item, *last = NULL;
    const char *name;
    (void)dummy;

    if (sc->redis.host || sc->redis.unix_path) {
        return "RelayRedisSentinel: cannot be combined with RelayRedisServer in the same "
               "server (which one wins would be ambiguous); keep one of them";
    }
    if (argc == 0) {
        return apr_psprintf(
            cmd->pool, "RelayRedisSentinel: needs a sentinel list and a master name %s", usage);
    }
    if (argc == 1) {
        return apr_psprintf(cmd->pool, "RelayRedisSentinel: '%s' needs a master name after it %s",
                            argv[0], usage);
    }
    if (argc > 2) {
        return apr_psprintf(cmd->pool,
                            "RelayRedisSentinel: takes 2 words, got %d; write the sentinel list "
                            "without spaces %s",
                            argc, usage);
    }
    name = argv[1];
    if (*name == '\0' || strpbrk(name, " \t\r\n")) {
        return apr_psprintf(cmd->pool, "RelayRedisSentinel: the master name must be one word %s",
                            usage);
    }
    addrs = apr_array_make(cmd->pool, 3, sizeof(relay_redis_addr));
    list = apr_pstrdup(cmd->temp_pool, argv[0]);
    if (*list == '\0' || *list == ',' || list[strlen(list) - 1] == ',' || strstr(list, ",,")) {
        return apr_psprintf(cmd->pool,
                            "RelayRedisSentinel: the sentinel list '%s' is empty or has an empty "
                            "entry %s",
                            argv[0], usage);
    }
    for (item = apr_strtok(list, ",", &last); item; item = apr_strtok(NULL, ",", &last)) {
        char *host = NULL, *scope = NULL;
        apr_port_t port = 0;
        apr_status_t rv = apr_parse_addr_port(&host, &scope, &port, item, cmd->pool);
        relay_redis_addr *a;

        if (rv != APR_SUCCESS || !host || scope || port == 0) {
            return apr_psprintf(cmd->pool,
                                "RelayRedisSentinel: '%s' in the sentinel list is not host:port %s",
                                item, usage);
        }
        if (addrs->nelts >= RELAY_MAX_SENTINELS) {
            return apr_psprintf(cmd->pool, "RelayRedisSentinel: at most %d sentinels",
                                RELAY_MAX_SENTINELS);
        }
        a = apr_array_push(addrs);
        a->host = host;
        a->port = port;
    }
    sc->redis.sentinels = (const relay_redis_addr *)addrs->elts;
    sc->redis.nsentinels = addrs->nelts;
    sc->redis.master_name = name;
    return NULL;
}

/* RelayRedisPassword secret (also env:VAR, file:/path) */
static const char *set_redis_password(cmd_parms *cmd, void *dummy, const char *arg)
{
    relay_server_conf *sc = server_conf(cmd);
    (void)dummy;
    return resolve_secret(cmd, arg, &sc->redis.password);
}

/* RelayRedisUsername name, RelayRedisSentinelUsername name */
static const char *set_redis_username(cmd_parms *cmd, void *dummy, const char *arg)
{
    relay_server_conf *sc = server_conf(cmd);
    int sentinel = cmd->info != NULL;
    (void)dummy;
    if (*arg == '\0' || strpbrk(arg, " \t\r\n")) {
        return apr_psprintf(cmd->pool, "%s: the user name must be one word", cmd->cmd->name);
    }
    if (sentinel) {
        sc->redis.sentinel_username = arg;
    }
    else {
        sc->redis.username = arg;
    }
    return NULL;
}

/* RelayRedisSentinelPassword secret (also env:VAR, file:/path) */
static const char *set_sentinel_password(cmd_parms *cmd, void *dummy, const char *arg)
{
    relay_server_conf *sc = server_conf(cmd);
    (void)dummy;
    return resolve_secret(cmd, arg, &sc->redis.sentinel_password);
}

/* RelayRedisDatabase N */
static const char *set_redis_database(cmd_parms *cmd, void *dummy, const char *arg)
{
    relay_server_conf *sc = server_conf(cmd);
    (void)dummy;
    return parse_int(cmd, arg, 0, 10000, &sc->redis.database);
}

/* RelayRedisTimeout ms */
static const char *set_redis_timeout(cmd_parms *cmd, void *dummy, const char *arg)
{
    relay_server_conf *sc = server_conf(cmd);
    (void)dummy;
    return parse_int(cmd, arg, 1, 600000, &sc->redis.timeout_ms);
}

/* RelayKeyHashSecret secret (also env:VAR, file:/path) */
static const char *set_secret(cmd_parms *cmd, void *dummy, const char *arg)
{
    relay_server_conf *sc = server_conf(cmd);
    const char *v, *source, *err;
    size_t whylen;
    char *why;
    (void)dummy;

    err = resolve_secret_from(cmd, arg, &v, &source);
    if (err) {
        return err;
    }
    whylen = strlen(source) + 200;
    why = apr_palloc(cmd->temp_pool, whylen);
    /* the same rule as relay-keys, so a secret one accepts the other accepts */
    if (relay_key_secret_check(v, strlen(v), source, why, whylen) != 0) {
        return apr_psprintf(cmd->pool, "%s: %s", cmd->cmd->name, why);
    }
    sc->secret = v;
    return NULL;
}

/* RelayRedisConnections N */
static const char *set_redis_connections(cmd_parms *cmd, void *dummy, const char *arg)
{
    relay_server_conf *sc = server_conf(cmd);
    (void)dummy;
    return parse_int(cmd, arg, 1, 1024, &sc->connections);
}

/* RelayLeaseSeconds N */
static const char *set_lease_seconds(cmd_parms *cmd, void *dummy, const char *arg)
{
    relay_server_conf *sc = server_conf(cmd);
    (void)dummy;
    return parse_int(cmd, arg, 1, 86400, &sc->lease_seconds);
}

/* RelayReuseSlots MS | Off */
static const char *set_reuse_slots(cmd_parms *cmd, void *dummy, const char *arg)
{
    relay_server_conf *sc = server_conf(cmd);
    (void)dummy;
    if (strcasecmp(arg, "off") == 0) {
        sc->reuse_ms = 0;
        return NULL;
    }
    if (parse_int(cmd, arg, 0, 60000, &sc->reuse_ms)) {
        return apr_psprintf(cmd->pool,
                            "RelayReuseSlots: '%s' is neither Off nor a whole number "
                            "of milliseconds from 0 to 60000",
                            arg);
    }
    return NULL;
}

/* RelayAdminAssets /folder */
static const char *set_admin_assets(cmd_parms *cmd, void *dummy, const char *arg)
{
    relay_server_conf *sc = server_conf(cmd);
    const char *path = ap_server_root_relative(cmd->pool, arg);
    apr_finfo_t fi;
    (void)dummy;

    if (!path || apr_stat(&fi, path, APR_FINFO_TYPE, cmd->temp_pool) != APR_SUCCESS ||
        fi.filetype != APR_DIR) {
        return apr_psprintf(cmd->pool, "RelayAdminAssets: '%s' is not a folder", arg);
    }
    sc->admin_assets = path;
    return NULL;
}

/* RelayEngine On|Off */
static const char *set_engine(cmd_parms *cmd, void *dcv, int flag)
{
    relay_dir_conf *dc = dcv;
    const ap_directive_t *section = cmd->directive ? cmd->directive->parent : NULL;

    dc->engine = flag;
    /* a plain <Location> tells where the upstream paths start; a regex does not */
    dc->location = NULL;
    if (section && strcasecmp(section->directive, "<Location") == 0 && cmd->path &&
        cmd->path[0] == '/' && section->args && section->args[0] != '~') {
        dc->location = cmd->path;
    }
    if (flag) {
        if (cmd->server->is_virtual) {
            server_conf(cmd)->engine_seen = 1;
        }
        else {
            engine_in_main = 1;
        }
    }
    return NULL;
}

/* RelayUpstreamApiKey value | env:VAR | file:/path */
static const char *set_upstream_key(cmd_parms *cmd, void *dcv, const char *arg)
{
    relay_dir_conf *dc = dcv;
    const char *err = resolve_secret(cmd, arg, &dc->upstream_key);

    if (err) {
        return err;
    }
    if (strncmp(dc->upstream_key, "cr_", 3) == 0) {
        return "RelayUpstreamApiKey: the value is a relay key (cr_...), not an upstream "
               "credential";
    }
    dc->upstream_bearer = NULL;
    return NULL;
}

/* RelayUpstreamBearer value | env:VAR | file:/path */
static const char *set_upstream_bearer(cmd_parms *cmd, void *dcv, const char *arg)
{
    relay_dir_conf *dc = dcv;
    const char *err = resolve_secret(cmd, arg, &dc->upstream_bearer);

    if (err) {
        return err;
    }
    if (strncmp(dc->upstream_bearer, "cr_", 3) == 0) {
        return "RelayUpstreamBearer: the value is a relay key (cr_...), not an upstream "
               "credential";
    }
    dc->upstream_key = NULL;
    return NULL;
}

/* RelayOnRedisError deny|allow */
static const char *set_on_redis_error(cmd_parms *cmd, void *dcv, const char *arg)
{
    relay_dir_conf *dc = dcv;
    (void)cmd;

    if (strcasecmp(arg, "deny") == 0) {
        dc->on_redis_error = RELAY_ONERR_DENY;
    }
    else if (strcasecmp(arg, "allow") == 0) {
        dc->on_redis_error = RELAY_ONERR_ALLOW;
    }
    else {
        return apr_psprintf(cmd->pool, "RelayOnRedisError: '%s' is neither deny nor allow", arg);
    }
    return NULL;
}

/*
 * RelayAllowEndpoints "METHOD /path" ... (or METHOD /path pairs): the
 * endpoints this location relays, replacing the default list.
 */
static const char *set_allow_endpoints(cmd_parms *cmd, void *dcv, int argc, char *const argv[])
{
    relay_dir_conf *dc = dcv;
    int i;

    if (argc == 0) {
        return "RelayAllowEndpoints: name at least one endpoint, such as \"POST /v1/messages\"";
    }
    if (!dc->endpoints) {
        dc->endpoints = apr_array_make(cmd->pool, argc, sizeof(relay_endpoint));
    }
    for (i = 0; i < argc; i++) {
        const char *text = argv[i];
        relay_endpoint *e = apr_array_push(dc->endpoints);
        const char *why;

        /* METHOD and /path given as two words */
        if (!strchr(text, ' ') && text[0] != '/' && i + 1 < argc && argv[i + 1][0] == '/') {
            text = apr_pstrcat(cmd->temp_pool, text, " ", argv[i + 1], NULL);
            i++;
        }
        why = relay_endpoint_parse(text, e);
        if (why) {
            return apr_psprintf(cmd->pool, "RelayAllowEndpoints: '%s': %s", text, why);
        }
    }
    return NULL;
}

/*
 * RelayAdmin Off|On|Open. The directive table allows it in the server
 * configuration only (never OR_FILEINFO), so an .htaccess that sets the admin
 * handler can never also switch the admin on.
 */
static const char *set_admin(cmd_parms *cmd, void *dcv, const char *arg)
{
    relay_dir_conf *dc = dcv;

    if (strcasecmp(arg, "off") == 0) {
        dc->admin = RELAY_ADMIN_OFF;
    }
    else if (strcasecmp(arg, "on") == 0) {
        dc->admin = RELAY_ADMIN_ON;
    }
    else if (strcasecmp(arg, "open") == 0) {
        dc->admin = RELAY_ADMIN_OPEN;
    }
    else {
        return apr_psprintf(cmd->pool,
                            "RelayAdmin: '%s' is not Off, On (for users Apache has "
                            "authenticated) or Open (for anyone)",
                            arg);
    }
    return NULL;
}

const command_rec relay_cmds[] = {
    AP_INIT_TAKE1("RelayRedisServer", set_redis_server, NULL, RSRC_CONF,
                  "Redis holding keys and leases: host[:port] or unix:/path"),
    AP_INIT_TAKE_ARGV("RelayRedisSentinel", set_redis_sentinel, NULL, RSRC_CONF,
                      "Sentinels that name the Redis master, and its name: "
                      "host:port[,host:port...] master-name"),
    AP_INIT_TAKE1("RelayRedisPassword", set_redis_password, NULL, RSRC_CONF,
                  "Redis AUTH password (value, env:VAR or file:/path)"),
    AP_INIT_TAKE1("RelayRedisUsername", set_redis_username, NULL, RSRC_CONF,
                  "Redis ACL user name for AUTH"),
    AP_INIT_TAKE1("RelayRedisSentinelPassword", set_sentinel_password, NULL, RSRC_CONF,
                  "AUTH password of the sentinels (value, env:VAR or file:/path)"),
    AP_INIT_TAKE1("RelayRedisSentinelUsername", set_redis_username, "sentinel", RSRC_CONF,
                  "ACL user name for AUTH on the sentinels"),
    AP_INIT_TAKE1("RelayRedisDatabase", set_redis_database, NULL, RSRC_CONF,
                  "Redis database index to SELECT"),
    AP_INIT_TAKE1("RelayRedisTimeout", set_redis_timeout, NULL, RSRC_CONF,
                  "Redis connect and I/O timeout in milliseconds"),
    AP_INIT_TAKE1("RelayRedisConnections", set_redis_connections, NULL, RSRC_CONF,
                  "Most Redis connections each httpd child keeps (threads wait briefly for one)"),
    AP_INIT_TAKE1("RelayKeyHashSecret", set_secret, NULL, RSRC_CONF,
                  "Secret mixed into relay key hashes (value, env:VAR or file:/path)"),
    AP_INIT_TAKE1("RelayLeaseSeconds", set_lease_seconds, NULL, RSRC_CONF,
                  "Seconds a concurrency slot survives without renewal"),
    AP_INIT_TAKE1("RelayReuseSlots", set_reuse_slots, NULL, RSRC_CONF,
                  "Milliseconds a finished request's slot is kept for the next request of its "
                  "key (keys with a concurrency limit of 32 or more, at most a quarter in use); "
                  "Off or 0 gives every slot back at once"),
    AP_INIT_TAKE1("RelayAdminAssets", set_admin_assets, NULL, RSRC_CONF,
                  "Folder holding the admin's admin.css and admin.js"),
    AP_INIT_FLAG("RelayEngine", set_engine, NULL, ACCESS_CONF,
                 "Authenticate relay keys and enforce their limits here"),
    AP_INIT_TAKE1("RelayUpstreamApiKey", set_upstream_key, NULL, ACCESS_CONF,
                  "Credential sent upstream as x-api-key (value, env:VAR or file:/path)"),
    AP_INIT_TAKE1("RelayUpstreamBearer", set_upstream_bearer, NULL, ACCESS_CONF,
                  "Credential sent upstream as Authorization: Bearer (value, env:VAR or "
                  "file:/path)"),
    AP_INIT_TAKE1("RelayOnRedisError", set_on_redis_error, NULL, ACCESS_CONF,
                  "deny (503) or allow (unlimited, with a warning) when Redis is unreachable"),
    AP_INIT_TAKE_ARGV("RelayAllowEndpoints", set_allow_endpoints, NULL, ACCESS_CONF,
                      "Endpoints relayed here, as \"METHOD /path\" (a path ending in /* covers "
                      "everything below it); others get 404"),
    AP_INIT_TAKE1("RelayAdmin", set_admin, NULL, RSRC_CONF | ACCESS_CONF,
                  "Serve the admin here: Off, On (users Apache has authenticated) or Open "
                  "(anyone)"),
    {NULL}};
