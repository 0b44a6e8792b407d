/*
 * relay_redis.c - per-child Redis connection pool and script calls.
 */
#include "relay_redis.h"

#include <apr_sha1.h>
#include <apr_strings.h>
#include <apr_thread_mutex.h>
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

const char *relay_redis_target_str(const relay_redis_target *t, apr_pool_t *p)
{
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

redisContext *relay_redis_connect(const relay_redis_target *t, apr_pool_t *p, const char **err)
{
    struct timeval tv;
    redisContext *ctx;
    redisReply *rep;
    const char *e;

    tv.tv_sec = t->timeout_ms / 1000;
    tv.tv_usec = (t->timeout_ms % 1000) * 1000;
    if (t->unix_path) {
        ctx = redisConnectUnixWithTimeout(t->unix_path, tv);
    }
    else {
        ctx = redisConnectWithTimeout(t->host, t->port, tv);
    }
    if (!ctx) {
        *err = "out of memory creating a Redis context";
        return NULL;
    }
    if (ctx->err) {
        *err = apr_psprintf(p, "cannot connect to Redis at %s: %s", relay_redis_target_str(t, p),
                            ctx->errstr);
        redisFree(ctx);
        return NULL;
    }
    if (redisSetTimeout(ctx, tv) != REDIS_OK) {
        *err = apr_psprintf(p, "cannot set the Redis I/O timeout: %s", ctx->errstr);
        redisFree(ctx);
        return NULL;
    }
    if (t->password) {
        if (t->username) {
            rep = redisCommand(ctx, "AUTH %s %s", t->username, t->password);
        }
        else {
            rep = redisCommand(ctx, "AUTH %s", t->password);
        }
        if (!rep || (e = reply_error(rep, p)) != NULL) {
            *err = apr_psprintf(p, "Redis at %s refused AUTH: %s", relay_redis_target_str(t, p),
                                rep ? e : ctx->errstr);
            if (rep) {
                freeReplyObject(rep);
            }
            redisFree(ctx);
            return NULL;
        }
        freeReplyObject(rep);
    }
    if (t->database > 0) {
        rep = redisCommand(ctx, "SELECT %d", t->database);
        if (!rep || (e = reply_error(rep, p)) != NULL) {
            *err = apr_psprintf(p, "Redis at %s refused SELECT %d: %s",
                                relay_redis_target_str(t, p), t->database, rep ? e : ctx->errstr);
            if (rep) {
                freeReplyObject(rep);
            }
            redisFree(ctx);
            return NULL;
        }
        freeReplyObject(rep);
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

    rep = redisCommandArgv(c->ctx, argc, argv, argvlen);
    if (!rep && c->uses > 0) {
        /* a connection that worked before has gone stale: one fresh try */
        redisFree(c->ctx);
        c->ctx = relay_redis_connect(c->target, p, err);
        c->uses = 0;
        if (!c->ctx) {
            c->broken = 1;
            return NULL;
        }
        rep = redisCommandArgv(c->ctx, argc, argv, argvlen);
    }
    if (!rep) {
        c->broken = 1;
        *err = apr_psprintf(p, "Redis I/O error: %s",
                            c->ctx->errstr[0] ? c->ctx->errstr : "connection lost");
        return NULL;
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
