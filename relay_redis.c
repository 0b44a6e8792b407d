/*
 * relay_redis.c - per-child Redis connection pool and script calls.
 */
#include "relay_redis.h"
#include "relay_metrics.h"

#include <apr_sha1.h>
#include <apr_strings.h>
#include <apr_thread_mutex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

struct relay_redis_pool {
    apr_reslist_t *list;        /* idle and borrowed connections */
    relay_redis_target target;  /* where they go */
    apr_pool_t *pool;           /* owns the reslist */
    apr_thread_mutex_t *lock;   /* guards last_error */
    char last_error[512];       /* why the latest connect failed */
};

void relay_script_init(relay_script *s, const char *name, const char *source)
{
    unsigned char digest[APR_SHA1_DIGESTSIZE];
    apr_sha1_ctx_t ctx;
    static const char hex[] = "0123456789abcdef";
    int i;

    s->name = name;
    s->source = source;
    apr_sha1_init(&ctx);
    apr_sha1_update_binary(&ctx, (const unsigned char *)source, (unsigned int)strlen(source));
    apr_sha1_final(digest, &ctx);
    for (i = 0; i < APR_SHA1_DIGESTSIZE; i++) {
        s->sha1[2 * i] = hex[digest[i] >> 4];
        s->sha1[2 * i + 1] = hex[digest[i] & 0x0f];
    }
    s->sha1[40] = '\0';
}

/* The sentinel list of a target, as written in RelayRedisSentinel. */
static const char *sentinel_list(const relay_redis_target *t, apr_pool_t *p)
{
    const char *list = "";
    int i;

    for (i = 0; i < t->nsentinels; i++) {
        list = apr_psprintf(p, "%s%s%s:%d", list, i ? "," : "", t->sentinels[i].host,
                            t->sentinels[i].port);
    }
    return list;
}

const char *relay_redis_target_str(const relay_redis_target *t, apr_pool_t *p)
{
    if (t->nsentinels > 0) {
        return apr_psprintf(p, "master '%s' of the sentinels %s", t->master_name,
                            sentinel_list(t, p));
    }
    if (t->unix_path) {
        return apr_pstrcat(p, "unix:", t->unix_path, NULL);
    }
    return apr_psprintf(p, "%s:%d", t->host, t->port);
}

/* A reply that is an error, as a sentence (or NULL when it is not one). */
static const char *reply_error(redisReply *rep, apr_pool_t *p)
{
    if (rep && rep->type == REDIS_REPLY_ERROR) {
        return apr_pstrndup(p, rep->str, rep->len);
    }
    return NULL;
}

/* Whether an error reply starts with the given error code (READONLY, ...). */
static int error_code_is(const redisReply *rep, const char *code)
{
    size_t n = strlen(code);

    return rep && rep->type == REDIS_REPLY_ERROR && rep->len >= n &&
           memcmp(rep->str, code, n) == 0 && (rep->len == n || rep->str[n] == ' ');
}

/*
 * Whether an error reply means this server cannot serve the command now but
 * a fresh connection may find one that can: a master demoted to a replica by
 * a failover (READONLY), a replica cut off from its master (MASTERDOWN), or a
 * server still loading its data set (LOADING).
 */
static int reply_wants_reconnect(const redisReply *rep)
{
    return error_code_is(rep, "READONLY") || error_code_is(rep, "MASTERDOWN") ||
           error_code_is(rep, "LOADING");
}

/* The target's timeout as a timeval. */
static struct timeval target_timeout(const relay_redis_target *t)
{
    struct timeval tv;

    tv.tv_sec = t->timeout_ms / 1000;
    tv.tv_usec = (t->timeout_ms % 1000) * 1000;
    return tv;
}

/*
 * Open a socket to host:port (or unix_path) with the target's connect and I/O
 * timeouts. what names the server in the error sentence ("Redis at ...").
 */
static redisContext *open_socket(const relay_redis_target *t, const char *host, int port,
                                 const char *unix_path, const char *what, apr_pool_t *p,
                                 const char **err)
{
    struct timeval tv = target_timeout(t);
    redisContext *ctx;

    if (unix_path) {
        ctx = redisConnectUnixWithTimeout(unix_path, tv);
    }
    else {
        ctx = redisConnectWithTimeout(host, port, tv);
    }
    if (!ctx) {
        *err = "out of memory creating a Redis context";
        return NULL;
    }
    if (ctx->err) {
        *err = apr_psprintf(p, "cannot connect to %s: %s", what, ctx->errstr);
        redisFree(ctx);
        return NULL;
    }
    if (redisSetTimeout(ctx, tv) != REDIS_OK) {
        *err = apr_psprintf(p, "cannot set the I/O timeout for %s: %s", what, ctx->errstr);
        redisFree(ctx);
        return NULL;
    }
    return ctx;
}

/* AUTH [user] password on a fresh connection; 0 on success, else -1 with *err. */
static int send_auth(redisContext *ctx, const char *user, const char *password,
                     const char *what, apr_pool_t *p, const char **err)
{
    redisReply *rep;
    const char *e;

    if (user) {
        rep = redisCommand(ctx, "AUTH %s %s", user, password);
    }
    else {
        rep = redisCommand(ctx, "AUTH %s", password);
    }
    if (!rep || (e = reply_error(rep, p)) != NULL) {
        *err = apr_psprintf(p, "%s refused AUTH: %s", what, rep ? e : ctx->errstr);
        if (rep) {
            freeReplyObject(rep);
        }
        return -1;
    }
    freeReplyObject(rep);
    return 0;
}

/* AUTH and SELECT on a fresh data connection; 0 on success, else -1 with *err. */
static int auth_and_select(redisContext *ctx, const relay_redis_target *t, const char *what,
                           apr_pool_t *p, const char **err)
{
    redisReply *rep;
    const char *e;

    if (t->password && send_auth(ctx, t->username, t->password, what, p, err) < 0) {
        return -1;
    }
    if (t->database > 0) {
        rep = redisCommand(ctx, "SELECT %d", t->database);
        if (!rep || (e = reply_error(rep, p)) != NULL) {
            *err = apr_psprintf(p, "%s refused SELECT %d: %s", what, t->database,
                                rep ? e : ctx->errstr);
            if (rep) {
                freeReplyObject(rep);
            }
            return -1;
        }
        freeReplyObject(rep);
    }
    return 0;
}

/* Whether the server answers ROLE as a master; 0 with *why (what it is) if not. */
static int is_master(redisContext *ctx, apr_pool_t *p, const char **why)
{
    redisReply *rep = redisCommand(ctx, "ROLE");
    redisReply *r0;
    int ok = 0;

    if (!rep) {
        *why = apr_psprintf(p, "it did not answer ROLE: %s", ctx->errstr);
        return 0;
    }
    if (error_code_is(rep, "NOPERM")) {
        /* an ACL user without ROLE: trust the sentinel; READONLY still catches a replica */
        freeReplyObject(rep);
        return 1;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        *why = apr_psprintf(p, "it refused ROLE: %.*s", (int)rep->len, rep->str);
    }
    else if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 ||
             ((r0 = rep->element[0])->type != REDIS_REPLY_STRING &&
              r0->type != REDIS_REPLY_STATUS)) {
        *why = "it gave an unexpected answer to ROLE";
    }
    else if (r0->len == 6 && memcmp(r0->str, "master", 6) == 0) {
        ok = 1;
    }
    else if (r0->len == 5 && memcmp(r0->str, "slave", 5) == 0) {
        *why = "it is a replica, not a master (the sentinel's view is stale)";
    }
    else {
        *why = apr_psprintf(p, "its ROLE is %.*s, not master", (int)r0->len, r0->str);
    }
    freeReplyObject(rep);
    return ok;
}

/*
 * Ask one sentinel for the master's address. Returns 1 with *host and *port
 * set, 0 when the sentinel does not know the master name, or -1 with *why.
 */
static int ask_sentinel(const relay_redis_target *t, const relay_redis_addr *s, apr_pool_t *p,
                        const char **host, int *port, const char **why)
{
    const char *what = apr_psprintf(p, "sentinel %s:%d", s->host, s->port);
    const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", t->master_name};
    size_t lens[3] = {8, 23, strlen(t->master_name)};
    redisContext *ctx = open_socket(t, s->host, s->port, NULL, what, p, why);
    redisReply *rep;
    int rc = -1;
    char *end;
    long v;

    if (!ctx) {
        return -1;
    }
    if (t->sentinel_password &&
        send_auth(ctx, t->sentinel_username, t->sentinel_password, what, p, why) < 0) {
        redisFree(ctx);
        return -1;
    }
    rep = redisCommandArgv(ctx, 3, argv, lens);
    if (!rep) {
        *why = apr_psprintf(p, "%s did not answer: %s", what, ctx->errstr);
    }
    else if (rep->type == REDIS_REPLY_NIL) {
        rc = 0;
    }
    else if (rep->type == REDIS_REPLY_ERROR) {
        *why = apr_psprintf(p, "%s answered %.*s", what, (int)rep->len, rep->str);
    }
    else if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
             rep->element[0]->type != REDIS_REPLY_STRING ||
             rep->element[1]->type != REDIS_REPLY_STRING) {
        *why = apr_psprintf(p, "%s gave an unexpected answer", what);
    }
    else {
        v = strtol(rep->element[1]->str, &end, 10);
        if (rep->element[0]->len == 0 || *end != '\0' || v < 1 || v > 65535) {
            *why = apr_psprintf(p, "%s named a bad address", what);
        }
        else {
            *host = apr_pstrndup(p, rep->element[0]->str, rep->element[0]->len);
            *port = (int)v;
            rc = 1;
        }
    }
    if (rep) {
        freeReplyObject(rep);
    }
    redisFree(ctx);
    return rc;
}

/*
 * Connect to the master the sentinels name: each sentinel in turn until one
 * names a server that takes AUTH/SELECT and answers ROLE as a master.
 */
static redisContext *connect_via_sentinels(const relay_redis_target *t, apr_pool_t *p,
                                           const char **err)
{
    const char **tried = apr_pcalloc(p, sizeof(*tried) * t->nsentinels);
    const char *reasons = "", *why = NULL, *host = NULL;
    int i, j, unknown = 0, port = 0;

    for (i = 0; i < t->nsentinels; i++) {
        const relay_redis_addr *s = &t->sentinels[i];
        const char *addr, *what;
        redisContext *ctx;
        int rc = ask_sentinel(t, s, p, &host, &port, &why);

        if (rc == 0) {
            unknown++;
            why = apr_psprintf(p, "sentinel %s:%d does not know it", s->host, s->port);
        }
        if (rc <= 0) {
            reasons = apr_psprintf(p, "%s%s%s", reasons, *reasons ? "; " : "", why);
            continue;
        }
        addr = apr_psprintf(p, "%s:%d", host, port);
        for (j = 0; j < i; j++) {
            if (tried[j] && strcmp(tried[j], addr) == 0) {
                break;
            }
        }
        if (j < i) {
            /* an earlier sentinel named the same server, and it failed: no second wait */
            continue;
        }
        tried[i] = addr;
        what = apr_psprintf(p, "master '%s' at %s (named by sentinel %s:%d)", t->master_name,
                            addr, s->host, s->port);
        ctx = open_socket(t, host, port, NULL, what, p, &why);
        if (ctx && auth_and_select(ctx, t, what, p, &why) == 0) {
            if (is_master(ctx, p, &why)) {
                return ctx;
            }
            why = apr_psprintf(p, "%s: %s", what, why);
        }
        if (ctx) {
            redisFree(ctx);
        }
        reasons = apr_psprintf(p, "%s%s%s", reasons, *reasons ? "; " : "", why);
    }
    if (unknown == t->nsentinels) {
        *err = apr_psprintf(p, "no sentinel of %s knows master '%s'", sentinel_list(t, p),
                            t->master_name);
    }
    else {
        *err = apr_psprintf(p, "no sentinel of %s led to a usable master '%s': %s",
                            sentinel_list(t, p), t->master_name, reasons);
    }
    return NULL;
}

redisContext *relay_redis_connect(const relay_redis_target *t, apr_pool_t *p, const char **err)
{
    redisContext *ctx;
    const char *what;

    if (t->nsentinels > 0) {
        return connect_via_sentinels(t, p, err);
    }
    what = apr_pstrcat(p, "Redis at ", relay_redis_target_str(t, p), NULL);
    ctx = open_socket(t, t->host, t->port, t->unix_path, what, p, err);
    if (ctx && auth_and_select(ctx, t, what, p, err) != 0) {
        redisFree(ctx);
        ctx = NULL;
    }
    return ctx;
}

/* Reslist constructor: opens a connection when none is idle. */
static apr_status_t conn_make(void **res, void *params, apr_pool_t *p)
{
    relay_redis_pool *pool = params;
    relay_redis_conn *c;
    const char *err = NULL;
    redisContext *ctx;

    ctx = relay_redis_connect(&pool->target, p, &err);
    if (!ctx) {
        apr_thread_mutex_lock(pool->lock);
        apr_cpystrn(pool->last_error, err, sizeof(pool->last_error));
        apr_thread_mutex_unlock(pool->lock);
        return APR_ECONNREFUSED;
    }
    c = apr_pcalloc(p, sizeof(*c));
    c->ctx = ctx;
    c->target = &pool->target;
    *res = c;
    return APR_SUCCESS;
}

/* Reslist destructor: closes a connection. */
static apr_status_t conn_close(void *res, void *params, apr_pool_t *p)
{
    relay_redis_conn *c = res;
    (void)params;
    (void)p;
    if (c->ctx) {
        redisFree(c->ctx);
        c->ctx = NULL;
    }
    return APR_SUCCESS;
}

apr_status_t relay_redis_pool_create(relay_redis_pool **out, const relay_redis_target *t, int max,
                                     apr_pool_t *p)
{
    relay_redis_pool *pool = apr_pcalloc(p, sizeof(*pool));
    apr_status_t rv;

    pool->target = *t;
    pool->pool = p;
    if (max < 1) {
        max = 1;
    }
    rv = apr_thread_mutex_create(&pool->lock, APR_THREAD_MUTEX_DEFAULT, p);
    if (rv != APR_SUCCESS) {
        return rv;
    }
    /* min 0: start without Redis; idle connections close after 5 minutes */
    rv = apr_reslist_create(&pool->list, 0, max, max, apr_time_from_sec(300), conn_make,
                            conn_close, pool, p);
    if (rv != APR_SUCCESS) {
        return rv;
    }
    /* never wait forever for a free connection */
    apr_reslist_timeout_set(pool->list, apr_time_from_msec(t->timeout_ms));
    *out = pool;
    return APR_SUCCESS;
}

const relay_redis_target *relay_redis_pool_target(const relay_redis_pool *pool)
{
    return &pool->target;
}

relay_redis_conn *relay_redis_acquire(relay_redis_pool *pool, apr_pool_t *p, const char **err)
{
    void *res = NULL;
    apr_status_t rv;

    rv = apr_reslist_acquire(pool->list, &res);
    if (rv != APR_SUCCESS) {
        if (APR_STATUS_IS_TIMEUP(rv)) {
            *err = "no free Redis connection in this server process";
        }
        else {
            apr_thread_mutex_lock(pool->lock);
            *err = apr_pstrdup(p, pool->last_error[0] ? pool->last_error : "cannot connect to Redis");
            apr_thread_mutex_unlock(pool->lock);
        }
        return NULL;
    }
    return res;
}

void relay_redis_release(relay_redis_pool *pool, relay_redis_conn *c)
{
    if (!c) {
        return;
    }
    if (c->broken || !c->ctx || c->ctx->err) {
        apr_reslist_invalidate(pool->list, c);
    }
    else {
        apr_reslist_release(pool->list, c);
    }
}

redisReply *relay_redis_command(relay_redis_conn *c, int argc, const char **argv,
                                const size_t *argvlen, apr_pool_t *p, const char **err)
{
    redisReply *rep;
    const char *refusal = NULL;
    int reopen = 0;

    if (!c->ctx) {
        /* an earlier reconnect on this connection failed */
        c->broken = 1;
        *err = "the Redis connection is closed";
        return NULL;
    }
    rep = relay_metrics_command(c->ctx, argc, argv, argvlen);
    if (!rep && c->uses > 0) {
        /* a connection that worked before has gone stale */
        reopen = 1;
    }
    else if (reply_wants_reconnect(rep)) {
        /* a failover demoted this server, or it is not ready: find the master again */
        refusal = apr_pstrndup(p, rep->str, rep->len);
        freeReplyObject(rep);
        rep = NULL;
        reopen = 1;
    }
    if (reopen) {
        /* one fresh try */
        redisFree(c->ctx);
        c->ctx = relay_redis_connect(c->target, p, err);
        c->uses = 0;
        if (!c->ctx) {
            c->broken = 1;
            if (refusal) {
                *err = apr_psprintf(p, "Redis answered %s; reconnecting failed: %s", refusal,
                                    *err);
            }
            return NULL;
        }
        rep = relay_metrics_command(c->ctx, argc, argv, argvlen);
    }
    if (!rep) {
        c->broken = 1;
        *err = apr_psprintf(p, "Redis I/O error: %s",
                            c->ctx->errstr[0] ? c->ctx->errstr : "connection lost");
        return NULL;
    }
    if (reply_wants_reconnect(rep)) {
        /* still not a usable master: the caller sees the error; do not pool this one */
        c->broken = 1;
    }
    c->uses++;
    return rep;
}

/* Send EVALSHA or EVAL with the given keys and args. */
static redisReply *eval(relay_redis_conn *c, const relay_script *s, int use_sha, int nkeys,
                        const char *const *keys, int nargs, const char *const *args,
                        apr_pool_t *p, const char **err)
{
    int argc = 3 + nkeys + nargs, i, n = 0;
    const char **argv = apr_palloc(p, sizeof(*argv) * argc);
    size_t *lens = apr_palloc(p, sizeof(*lens) * argc);

    argv[n++] = use_sha ? "EVALSHA" : "EVAL";
    argv[n++] = use_sha ? s->sha1 : s->source;
    argv[n++] = apr_itoa(p, nkeys);
    for (i = 0; i < nkeys; i++) {
        argv[n++] = keys[i];
    }
    for (i = 0; i < nargs; i++) {
        argv[n++] = args[i];
    }
    for (i = 0; i < argc; i++) {
        lens[i] = strlen(argv[i]);
    }
    return relay_redis_command(c, argc, argv, lens, p, err);
}

redisReply *relay_redis_script(relay_redis_conn *c, const relay_script *s, int nkeys,
                               const char *const *keys, int nargs, const char *const *args,
                               apr_pool_t *p, const char **err)
{
    redisReply *rep = eval(c, s, 1, nkeys, keys, nargs, args, p, err);

    if (rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        /* Redis restarted or its script cache was flushed: EVAL loads it again */
        freeReplyObject(rep);
        rep = eval(c, s, 0, nkeys, keys, nargs, args, p, err);
    }
    if (rep && rep->type == REDIS_REPLY_ERROR) {
        *err = apr_psprintf(p, "Redis script %s failed: %.*s", s->name, (int)rep->len, rep->str);
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}
