/*
 * relay_redis.c - per-child Redis connection pool and script calls.
 */
#include "relay_redis.h"
#include "relay_metrics.h"

#include <apr_sha1.h>
#include <apr_strings.h>
#include <apr_thread_cond.h>
#include <apr_thread_mutex.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

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

const char *relay_redis_target_signature(const relay_redis_target *t, apr_pool_t *p)
{
    const char *sentinels = "";
    int i;

    /* with sentinels, the list and the master name say where; host/port are unused */
    for (i = 0; i < t->nsentinels; i++) {
        sentinels =
            apr_psprintf(p, "%s%s:%d,", sentinels, t->sentinels[i].host, t->sentinels[i].port);
    }
    return apr_psprintf(
        p, "%s|%s|%d|%s|%s|%s|%s|%s|%s|%d|%d", t->unix_path ? t->unix_path : "",
        t->host ? t->host : "", t->port, sentinels, t->master_name ? t->master_name : "",
        t->sentinel_username ? t->sentinel_username : "",
        t->sentinel_password ? t->sentinel_password : "", t->username ? t->username : "",
        t->password ? t->password : "", t->database, t->timeout_ms);
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
static int send_auth(redisContext *ctx, const char *user, const char *password, const char *what,
                     apr_pool_t *p, const char **err)
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
        what = apr_psprintf(p, "master '%s' at %s (named by sentinel %s:%d)", t->master_name, addr,
                            s->host, s->port);
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

/*
 * The pool. A connection is opened by the thread that borrows it, with the
 * lock released, so a connect that hangs holds up that thread alone. Each
 * connection owns a pool (with its own allocator, so threads need not share
 * one) holding what its connect allocated; it is destroyed with the
 * connection, and a failed connect leaves only its sentence in last_error.
 *
 * After a connect fails (or Redis does not answer within the timeout) the
 * pool is "failing": for a window every borrower without an idle connection
 * gets that error at once; then one borrower tries again (the probe) while
 * the others wait for its outcome, up to the timeout. So a child tries one
 * connect per window during an outage, not one per request. The window
 * starts at RETRY_MIN and doubles with each failure until Redis answers a
 * command again (a connect alone proves little), up to RETRY_MAX: a Redis
 * down for a moment is found again at once, one down for long costs a
 * connect a second. It is at least twice what the failed attempt took, so a
 * connect that hangs until the timeout holds up one thread for at most a
 * third of the time.
 *
 * Locking: lock guards the slot states, the idle stack and the failing
 * state; it is never held across a connect or a command. A borrowed slot's
 * connection and pool belong to the borrowing thread alone.
 */

/* Bounds of the time borrowers fail at once after a failed connect. */
#define RETRY_MIN apr_time_from_msec(5)
#define RETRY_MAX apr_time_from_sec(1)

/* Idle connections older than this are closed. */
#define IDLE_TTL apr_time_from_sec(300)

typedef enum {
    SLOT_CLOSED,  /* no connection; free for a borrower to open one */
    SLOT_OPENING, /* a borrower is connecting, without the lock */
    SLOT_IDLE,    /* open, on the idle stack */
    SLOT_BUSY     /* borrowed */
} slot_state;

/* One connection's place in the pool. */
typedef struct {
    relay_redis_conn conn;   /* what a borrower sees; first, so a conn is its slot */
    relay_redis_pool *owner; /* the pool it belongs to */
    apr_pool_t *pool;        /* this connection's own pool; NULL while closed */
    slot_state state;        /* guarded by owner->lock */
    int answered;            /* Redis answered on this connection (the backoff was reset) */
    apr_time_t idle_since;   /* when it was last given back */
} conn_slot;

struct relay_redis_pool {
    relay_redis_target target;  /* where connections go */
    apr_thread_mutex_t *lock;   /* guards everything below */
    apr_thread_cond_t *changed; /* a slot was given back, or a connect ended */
    conn_slot *slots;           /* max of them, allocated once */
    int max;                    /* RelayRedisConnections */
    conn_slot **idle;           /* idle connections, oldest first */
    int nidle;                  /* entries in idle */
    int failing;                /* the last connect failed, or Redis did not answer */
    int probing;                /* failing: a borrower is trying the window's connect */
    int failures;               /* failures since Redis last answered */
    apr_time_t retry_at;        /* failing: no connect before this time */
    char last_error[1024];      /* why the pool is failing */
};

/* The outcome of asking whether a borrower may connect now. */
typedef enum {
    GATE_CONNECT, /* Redis is not known to be failing: connect */
    GATE_PROBE,   /* the window is over and nobody tries: connect as the probe */
    GATE_REFUSE,  /* failing: give the last error at once */
    GATE_WAIT     /* a probe is under way: wait for its outcome */
} gate;

/* Whether a borrower may connect now (lock held); GATE_PROBE marks it the probe. */
static gate connect_gate(relay_redis_pool *pool, apr_time_t now)
{
    if (!pool->failing) {
        return GATE_CONNECT;
    }
    if (now < pool->retry_at) {
        return GATE_REFUSE;
    }
    if (pool->probing) {
        return GATE_WAIT;
    }
    pool->probing = 1;
    return GATE_PROBE;
}

/*
 * Record that Redis failed (lock held) after an attempt that took took:
 * borrowers fail at once for a window.
 */
static void note_failure_locked(relay_redis_pool *pool, const char *why, apr_interval_time_t took)
{
    apr_interval_time_t window = RETRY_MIN;
    int i;

    for (i = 0; i < pool->failures && window < RETRY_MAX; i++) {
        window *= 2;
    }
    if (window < 2 * took) {
        window = 2 * took;
    }
    if (window > RETRY_MAX) {
        window = RETRY_MAX;
    }
    pool->failures += pool->failures < 64; /* capped: past a few, RETRY_MAX holds */
    pool->failing = 1;
    pool->retry_at = apr_time_now() + window;
    apr_cpystrn(pool->last_error, why ? why : "cannot connect to Redis", sizeof(pool->last_error));
    apr_thread_cond_broadcast(pool->changed);
}

/*
 * Record the outcome of a connect that started at start; probe says whether
 * it was the window's probe.
 */
static void connect_done(relay_redis_pool *pool, int ok, int probe, const char *why,
                         apr_time_t start)
{
    apr_thread_mutex_lock(pool->lock);
    if (probe) {
        pool->probing = 0;
    }
    if (ok) {
        /* the backoff starts over only once Redis answers (note_answer) */
        pool->failing = 0;
        /* borrowers waiting for the probe may connect now */
        apr_thread_cond_broadcast(pool->changed);
    }
    else {
        note_failure_locked(pool, why, apr_time_now() - start);
    }
    apr_thread_mutex_unlock(pool->lock);
}

/* Record that Redis answered on a fresh connection: it works, the backoff starts over. */
static void note_answer(relay_redis_pool *pool)
{
    apr_thread_mutex_lock(pool->lock);
    pool->failing = 0;
    pool->failures = 0;
    apr_thread_mutex_unlock(pool->lock);
}

/* Record that a command failed after took: no answer in time, or a fresh connection dropped. */
static void note_failure(relay_redis_pool *pool, const char *why, apr_interval_time_t took)
{
    apr_thread_mutex_lock(pool->lock);
    note_failure_locked(pool, why, took);
    apr_thread_mutex_unlock(pool->lock);
}

static apr_status_t destroy_own_pool(void *data)
{
    apr_pool_destroy(data);
    return APR_SUCCESS;
}

apr_status_t relay_pool_own(apr_pool_t **out, apr_pool_t *parent)
{
    apr_allocator_t *a;
    apr_status_t rv;

    if ((rv = apr_allocator_create(&a)) != APR_SUCCESS) {
        return rv;
    }
    /* parent NULL: the global pool, whose allocator has a mutex */
    if ((rv = apr_pool_create_ex(out, NULL, NULL, a)) != APR_SUCCESS) {
        apr_allocator_destroy(a);
        return rv;
    }
    apr_allocator_owner_set(a, *out);
    if (parent) {
        apr_pool_cleanup_register(parent, *out, destroy_own_pool, apr_pool_cleanup_null);
    }
    return APR_SUCCESS;
}

/* Close a slot's connection and destroy its pool (the slot is not on the idle stack). */
static void slot_close(conn_slot *s)
{
    if (s->conn.ctx) {
        redisFree(s->conn.ctx);
        s->conn.ctx = NULL;
    }
    if (s->pool) {
        apr_pool_destroy(s->pool);
        s->pool = NULL;
    }
}

/* Close idle connections unused for IDLE_TTL (lock held; the oldest are first). */
static void expire_idle(relay_redis_pool *pool, apr_time_t now)
{
    int n = 0, i;

    while (n < pool->nidle && now - pool->idle[n]->idle_since > IDLE_TTL) {
        slot_close(pool->idle[n]);
        pool->idle[n]->state = SLOT_CLOSED;
        n++;
    }
    if (n > 0) {
        for (i = n; i < pool->nidle; i++) {
            pool->idle[i - n] = pool->idle[i];
        }
        pool->nidle -= n;
    }
}

/* A closed slot, or NULL when every slot is open or opening (lock held). */
static conn_slot *closed_slot(relay_redis_pool *pool)
{
    int i;

    for (i = 0; i < pool->max; i++) {
        if (pool->slots[i].state == SLOT_CLOSED) {
            return &pool->slots[i];
        }
    }
    return NULL;
}

/*
 * Open a connection in a slot the caller marked SLOT_OPENING, without the
 * lock. On failure the slot is closed again and *err (from p) says why.
 */
static int slot_open(relay_redis_pool *pool, conn_slot *s, int probe, apr_pool_t *p,
                     const char **err)
{
    const char *why = NULL;
    redisContext *ctx = NULL;
    apr_time_t start = apr_time_now();
    apr_status_t rv = relay_pool_own(&s->pool, NULL);

    if (rv == APR_SUCCESS) {
        ctx = relay_redis_connect(&pool->target, s->pool, &why);
    }
    else {
        s->pool = NULL;
        why = "out of memory creating a Redis connection";
    }
    if (ctx) {
        s->conn.ctx = ctx;
        s->conn.broken = 0;
        s->conn.uses = 0;
        s->answered = 0;
    }
    else {
        /* the sentence outlives the connection's pool in last_error and in p */
        *err = apr_pstrdup(p, why);
        slot_close(s);
    }
    apr_thread_mutex_lock(pool->lock);
    s->state = ctx ? SLOT_BUSY : SLOT_CLOSED;
    if (probe) {
        pool->probing = 0;
    }
    if (ctx) {
        /* others may connect again; the backoff starts over only once Redis answers */
        pool->failing = 0;
    }
    else {
        note_failure_locked(pool, *err, apr_time_now() - start);
    }
    /* a closed slot, or the end of a probe: waiters look again */
    apr_thread_cond_broadcast(pool->changed);
    apr_thread_mutex_unlock(pool->lock);
    return ctx ? 0 : -1;
}

/* Child exit: close the idle connections. */
static apr_status_t pool_cleanup(void *data)
{
    relay_redis_pool *pool = data;
    int i;

    for (i = 0; i < pool->nidle; i++) {
        slot_close(pool->idle[i]);
        pool->idle[i]->state = SLOT_CLOSED;
    }
    pool->nidle = 0;
    return APR_SUCCESS;
}

apr_status_t relay_redis_pool_create(relay_redis_pool **out, const relay_redis_target *t, int max,
                                     apr_pool_t *p)
{
    relay_redis_pool *pool = apr_pcalloc(p, sizeof(*pool));
    apr_status_t rv;
    int i;

    pool->target = *t;
    if (max < 1) {
        max = 1;
    }
    pool->max = max;
    if ((rv = apr_thread_mutex_create(&pool->lock, APR_THREAD_MUTEX_DEFAULT, p)) != APR_SUCCESS ||
        (rv = apr_thread_cond_create(&pool->changed, p)) != APR_SUCCESS) {
        return rv;
    }
    /* all the pool's own memory, now: nothing is allocated from p later */
    pool->slots = apr_pcalloc(p, sizeof(*pool->slots) * max);
    pool->idle = apr_pcalloc(p, sizeof(*pool->idle) * max);
    for (i = 0; i < max; i++) {
        pool->slots[i].owner = pool;
        pool->slots[i].conn.target = &pool->target;
        pool->slots[i].conn.pooled = 1;
        pool->slots[i].state = SLOT_CLOSED;
    }
    apr_pool_cleanup_register(p, pool, pool_cleanup, apr_pool_cleanup_null);
    *out = pool;
    return APR_SUCCESS;
}

const relay_redis_target *relay_redis_pool_target(const relay_redis_pool *pool)
{
    return &pool->target;
}

relay_redis_conn *relay_redis_acquire(relay_redis_pool *pool, apr_pool_t *p, const char **err)
{
    apr_time_t now = apr_time_now();
    apr_time_t deadline = now + apr_time_from_msec(pool->target.timeout_ms);
    conn_slot *s;
    int probe;

    apr_thread_mutex_lock(pool->lock);
    for (;;) {
        expire_idle(pool, now);
        if (pool->nidle > 0) {
            /* the most recently used: the least likely to have gone stale */
            s = pool->idle[--pool->nidle];
            s->state = SLOT_BUSY;
            apr_thread_mutex_unlock(pool->lock);
            return &s->conn;
        }
        s = closed_slot(pool);
        if (s) {
            gate g = connect_gate(pool, now);

            if (g == GATE_REFUSE) {
                *err = apr_pstrdup(p, pool->last_error);
                apr_thread_mutex_unlock(pool->lock);
                return NULL;
            }
            if (g != GATE_WAIT) {
                probe = g == GATE_PROBE;
                s->state = SLOT_OPENING;
                apr_thread_mutex_unlock(pool->lock);
                return slot_open(pool, s, probe, p, err) == 0 ? &s->conn : NULL;
            }
        }
        else if (pool->failing && now < pool->retry_at) {
            /* all slots taken and Redis failing: no point waiting for one */
            *err = apr_pstrdup(p, pool->last_error);
            apr_thread_mutex_unlock(pool->lock);
            return NULL;
        }
        if (now >= deadline) {
            *err = pool->failing ? apr_pstrdup(p, pool->last_error)
                                 : "no free Redis connection in this server process";
            apr_thread_mutex_unlock(pool->lock);
            return NULL;
        }
        apr_thread_cond_timedwait(pool->changed, pool->lock, deadline - now);
        now = apr_time_now();
    }
}

void relay_redis_release(relay_redis_pool *pool, relay_redis_conn *c)
{
    conn_slot *s = (conn_slot *)c;

    if (!c) {
        return;
    }
    /* the slot knows its pool; the argument is kept for the callers */
    pool = s->owner;
    if (c->broken || !c->ctx || c->ctx->err) {
        /* the slot is still the caller's: close it without the lock */
        slot_close(s);
        apr_thread_mutex_lock(pool->lock);
        s->state = SLOT_CLOSED;
    }
    else {
        apr_thread_mutex_lock(pool->lock);
        s->state = SLOT_IDLE;
        s->idle_since = apr_time_now();
        pool->idle[pool->nidle++] = s;
    }
    apr_thread_cond_broadcast(pool->changed);
    apr_thread_mutex_unlock(pool->lock);
}

/*
 * Reopen a borrowed connection (its old one is closed), unless the pool is
 * failing: then wait for the window's probe or give its error at once.
 */
static int reopen(conn_slot *s, apr_pool_t *p, const char **err)
{
    relay_redis_pool *pool = s->owner;
    apr_time_t now = apr_time_now();
    apr_time_t deadline = now + apr_time_from_msec(pool->target.timeout_ms), start;
    const char *why = NULL;
    gate g;

    apr_thread_mutex_lock(pool->lock);
    while ((g = connect_gate(pool, now)) == GATE_WAIT && now < deadline) {
        apr_thread_cond_timedwait(pool->changed, pool->lock, deadline - now);
        now = apr_time_now();
    }
    if (g == GATE_REFUSE || g == GATE_WAIT) {
        *err = apr_pstrdup(p, pool->last_error);
        apr_thread_mutex_unlock(pool->lock);
        return -1;
    }
    apr_thread_mutex_unlock(pool->lock);
    start = apr_time_now();
    /* what the previous connect allocated is of no use now */
    apr_pool_clear(s->pool);
    s->conn.ctx = relay_redis_connect(s->conn.target, s->pool, &why);
    s->conn.uses = 0;
    s->answered = 0;
    if (!s->conn.ctx) {
        *err = apr_pstrdup(p, why);
    }
    connect_done(pool, s->conn.ctx != NULL, g == GATE_PROBE, s->conn.ctx ? NULL : *err, start);
    return s->conn.ctx ? 0 : -1;
}

/* Whether the last failed call on ctx ran out of the I/O timeout. */
static int timed_out(const redisContext *ctx, int saved_errno)
{
#ifdef REDIS_ERR_TIMEOUT
    if (ctx->err == REDIS_ERR_TIMEOUT) {
        return 1;
    }
#endif
    return ctx->err == REDIS_ERR_IO &&
           (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK || saved_errno == ETIMEDOUT);
}

redisReply *relay_redis_command(relay_redis_conn *c, int argc, const char **argv,
                                const size_t *argvlen, apr_pool_t *p, const char **err)
{
    /* a pool's connection is its slot; a program's own has no pool to tell */
    conn_slot *s = c->pooled ? (conn_slot *)c : NULL;
    redisReply *rep;
    const char *refusal = NULL;
    apr_time_t start = apr_time_now();
    int again = 0, e;

    if (!c->ctx) {
        /* an earlier reconnect on this connection failed */
        c->broken = 1;
        *err = "the Redis connection is closed";
        return NULL;
    }
    rep = relay_metrics_command(c->ctx, argc, argv, argvlen);
    e = errno;
    if (!rep && timed_out(c->ctx, e)) {
        /*
         * Redis is stuck or out of reach: a reconnect would wait as long
         * again. The pool does not fail fast for it: one slow answer (a busy
         * Redis, a loaded machine) must not refuse every request of the child
         * for a window; each request is bounded by the timeout instead.
         */
        c->broken = 1;
        *err = apr_psprintf(p, "Redis did not answer within %d ms", c->target->timeout_ms);
        return NULL;
    }
    if (!rep && c->uses > 0) {
        /* a connection that worked before has gone stale */
        again = 1;
    }
    else if (reply_wants_reconnect(rep)) {
        /* a failover demoted this server, or it is not ready: find the master again */
        refusal = apr_pstrndup(p, rep->str, rep->len);
        freeReplyObject(rep);
        rep = NULL;
        again = 1;
    }
    if (again) {
        /* one fresh try */
        redisFree(c->ctx);
        c->ctx = NULL;
        if (s ? reopen(s, p, err) != 0 : !(c->ctx = relay_redis_connect(c->target, p, err))) {
            c->broken = 1;
            if (refusal) {
                *err = apr_psprintf(p, "Redis answered %s; reconnecting failed: %s", refusal, *err);
            }
            return NULL;
        }
        start = apr_time_now();
        rep = relay_metrics_command(c->ctx, argc, argv, argvlen);
        e = errno;
    }
    if (!rep) {
        /*
         * A fresh connection failed its first command: whatever accepted it
         * (a Redis at maxclients, a TLS tunnel whose Redis is down) cannot
         * serve, so the pool fails fast as after a failed connect.
         */
        c->broken = 1;
        if (timed_out(c->ctx, e)) {
            *err = apr_psprintf(p, "Redis did not answer within %d ms", c->target->timeout_ms);
        }
        else {
            *err = apr_psprintf(p, "Redis I/O error: %s",
                                c->ctx->errstr[0] ? c->ctx->errstr : "connection lost");
        }
        if (s && !timed_out(c->ctx, e)) {
            note_failure(s->owner, *err, apr_time_now() - start);
        }
        return NULL;
    }
    if (reply_wants_reconnect(rep)) {
        /* still not a usable master: the caller sees the error; do not pool this one */
        c->broken = 1;
    }
    else if (s && !s->answered && rep->type != REDIS_REPLY_ERROR) {
        /* a connection's first good answer (later ones need no lock) */
        s->answered = 1;
        note_answer(s->owner);
    }
    c->uses++;
    return rep;
}

/* Send EVALSHA or EVAL with the given keys and args. */
static redisReply *eval(relay_redis_conn *c, const relay_script *s, int use_sha, int nkeys,
                        const char *const *keys, int nargs, const char *const *args, apr_pool_t *p,
                        const char **err)
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
