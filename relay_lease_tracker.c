/*
 * relay_lease_tracker.c - the tracking connection: a connection on which
 * Redis pushes every change to a key hash (client-side caching, BCAST mode
 * on the prefix apikey:), and the thread that holds it.
 *
 * The key cache is Redis's word only while this connection is up and
 * answers its pings; on any trouble the cache is untracked and the relay
 * asks Redis for every request until the connection is back. The thread
 * also reads again the keys lately found valid that Redis reported changed.
 */
#include "relay_lease_int.h"
#include "relay_schema.h"

#include <apr_strings.h>
#include <errno.h>
#include <poll.h>
#include <string.h>

/* apikey:{id}: the id starts after the prefix */
#define PREFIX_LEN (sizeof(RELAY_KEY_RECORD_PREFIX) - 1)

/* how often keys Redis reported changed are read again */
#define VALID_RECHECK_MS 1000
/* after a failed read, the next one waits this long: Redis is likely down */
#define VALID_RECHECK_BACKOFF_MS 5000
/* a ping every second; no answer by the next one means Redis is stuck */
#define PING_EVERY apr_time_from_sec(1)

/*
 * Whether a message waits on the tracking connection (lock held). Redis
 * queues a key's invalidation before it answers the command that changed
 * the key, so a change whose answer anyone has seen is already readable
 * here: until the tracker has read it, nothing is admitted from the cache.
 */
int relay_lease_tracker_has_news(relay_lease_store *st)
{
    struct pollfd pfd;

    pfd.fd = st->track.fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    return poll(&pfd, 1, 0) != 0;
}

/* Handle one message on the tracking connection (lock held); *pong: it was a pong. */
static void tracker_message(relay_lease_store *st, const redisReply *m, int *pong)
{
    const redisReply *keys;
    size_t i;
    int hurry = 0;

    if (m->type != REDIS_REPLY_ARRAY || m->elements < 2 ||
        m->element[0]->type != REDIS_REPLY_STRING) {
        return;
    }
    if (strcmp(m->element[0]->str, "pong") == 0) {
        *pong = 1;
        return;
    }
    if (strcmp(m->element[0]->str, "message") != 0 || m->elements < 3) {
        return;
    }
    keys = m->element[2];
    st->track.epoch++;
    if (keys->type != REDIS_REPLY_ARRAY) {
        /* FLUSHDB, FLUSHALL: everything changed */
        relay_lease_cache_forget_all(st);
        relay_lease_valid_changed_all(st);
        return;
    }
    for (i = 0; i < keys->elements; i++) {
        const redisReply *k = keys->element[i];

        if (k->type != REDIS_REPLY_STRING || k->len <= PREFIX_LEN ||
            strncmp(k->str, RELAY_KEY_RECORD_PREFIX, PREFIX_LEN) != 0) {
            continue;
        }
        hurry |= relay_lease_cache_changed(st, k->str + PREFIX_LEN, k->len - PREFIX_LEN);
        relay_lease_valid_changed(st, k->str + PREFIX_LEN, k->len - PREFIX_LEN);
    }
    if (hurry) {
        relay_lease_hurry(st, keys);
    }
}

/* Send one command of the connection set-up; NULL (and *err) unless its reply has type. */
static redisReply *setup_command(redisContext *ctx, int type, const char *what, apr_pool_t *p,
                                 const char **err, redisReply **last, const char *cmd)
{
    redisReply *rep = redisCommand(ctx, cmd);

    *last = rep;
    if (!rep || rep->type != type) {
        *err = rep && rep->type == REDIS_REPLY_ERROR ? apr_pstrdup(p, rep->str)
                                                     : apr_pstrcat(p, what, " failed", NULL);
        return NULL;
    }
    return rep;
}

/*
 * Open the tracking connection: every change to apikey:* is pushed to it.
 * *refused: Redis answered with an error (a version or an ACL without
 * these commands), not just failed to answer.
 */
static redisContext *tracker_open(relay_lease_store *st, apr_pool_t *p, const char **err,
                                  int *refused)
{
    redisContext *ctx = relay_redis_connect(st->cf.target, p, err);
    redisReply *rep = NULL;
    const char *track;

    if (!ctx) {
        return NULL;
    }
    *refused = 0;
    if (!setup_command(ctx, REDIS_REPLY_INTEGER, "CLIENT ID", p, err, &rep, "CLIENT ID")) {
        goto fail;
    }
    track = apr_psprintf(p, "CLIENT TRACKING on REDIRECT %" APR_INT64_T_FMT " BCAST PREFIX apikey:",
                         (apr_int64_t)rep->integer);
    freeReplyObject(rep);
    if (!setup_command(ctx, REDIS_REPLY_STATUS, "CLIENT TRACKING", p, err, &rep, track)) {
        goto fail;
    }
    freeReplyObject(rep);
    if (!setup_command(ctx, REDIS_REPLY_ARRAY, "SUBSCRIBE __redis__:invalidate", p, err, &rep,
                       "SUBSCRIBE __redis__:invalidate")) {
        goto fail;
    }
    freeReplyObject(rep);
    return ctx;
fail:
    /* an answer that is an error: this Redis (version, ACL) does not allow it */
    *refused = rep && rep->type == REDIS_REPLY_ERROR;
    if (rep) {
        freeReplyObject(rep);
    }
    redisFree(ctx);
    return NULL;
}

/* Send a PING without waiting for its answer; returns 0 when the connection failed. */
static int send_ping(redisContext *ctx)
{
    int done = 0;

    if (redisAppendCommand(ctx, "PING") != REDIS_OK) {
        return 0;
    }
    while (!done) {
        if (redisBufferWrite(ctx, &done) != REDIS_OK) {
            return 0;
        }
    }
    return 1;
}

/* Read what arrived on the connection; returns 0 when it failed. */
static int read_messages(relay_lease_store *st, redisContext *ctx, int *ping_out)
{
    void *reply = NULL;

    if (redisBufferRead(ctx) != REDIS_OK) {
        return 0;
    }
    while (redisGetReplyFromReader(ctx, &reply) == REDIS_OK && reply) {
        int pong = 0;

        apr_thread_mutex_lock(st->lock);
        tracker_message(st, reply, &pong);
        apr_thread_mutex_unlock(st->lock);
        if (pong) {
            *ping_out = 0;
        }
        freeReplyObject(reply);
        reply = NULL;
    }
    return !ctx->err;
}

/*
 * Whether the tracker goes on listening; rereads the keys lately found
 * valid that Redis reported changed, when due. Here, not in the keeper,
 * whose releases must not wait behind the call.
 */
static int listening(relay_lease_store *st, apr_pool_t *rp, apr_time_t *next_recheck)
{
    int stop;

    apr_thread_mutex_lock(st->lock);
    stop = st->keeper.stopping || st->track.reset;
    if (!stop && st->valid.changed && st->cf.now() >= *next_recheck) {
        apr_pool_clear(rp);
        *next_recheck = st->cf.now() + apr_time_from_msec(relay_lease_valid_recheck(st, rp)
                                                              ? VALID_RECHECK_MS
                                                              : VALID_RECHECK_BACKOFF_MS);
    }
    apr_thread_mutex_unlock(st->lock);
    return !stop;
}

/* Listen on an open tracking connection until it fails, is reset, or the child stops. */
static void tracker_listen(relay_lease_store *st, redisContext *ctx, apr_pool_t *rp,
                           apr_time_t *next_recheck)
{
    apr_time_t last_ping = apr_time_now();
    int ping_out = 0;

    while (listening(st, rp, next_recheck)) {
        struct pollfd pfd;
        int n;

        pfd.fd = ctx->fd;
        pfd.events = POLLIN;
        pfd.revents = 0;
        n = poll(&pfd, 1, 200);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return;
        }
        if (n > 0) {
            if (!read_messages(st, ctx, &ping_out)) {
                return;
            }
            continue;
        }
        if (apr_time_now() - last_ping >= PING_EVERY) {
            /* no answer to the last ping: Redis is stuck */
            if (ping_out || !send_ping(ctx)) {
                return;
            }
            ping_out = 1;
            last_ping = apr_time_now();
        }
    }
}

/* The connection could not be opened: tell once when refused, then wait before trying again. */
static void tracker_wait(relay_lease_store *st, int refused, const char *err, int *warned,
                         apr_pool_t *p)
{
    if (refused && !*warned) {
        /* an older Redis, or an ACL without these commands */
        relay_lease_log(st, RELAY_LEASE_LOG_WARNING, p,
                        "Redis refuses to push key changes (%s); keys without a limit are read "
                        "from Redis on every request",
                        err);
        *warned = 1;
    }
    apr_thread_mutex_lock(st->lock);
    if (!st->keeper.stopping) {
        /* down: try again soon; refused: now and then */
        apr_thread_cond_timedwait(st->track.wake, st->lock,
                                  refused ? apr_time_from_sec(60) : apr_time_from_msec(500));
    }
    apr_thread_mutex_unlock(st->lock);
}

/* The tracker thread: holds the tracking connection, reopening it after trouble. */
static void *APR_THREAD_FUNC tracker_main(apr_thread_t *thd, void *data)
{
    relay_lease_store *st = data;
    apr_pool_t *p, *rp;
    apr_time_t next_recheck = 0;
    int warned = 0;

    if (apr_pool_create(&p, NULL) != APR_SUCCESS || apr_pool_create(&rp, NULL) != APR_SUCCESS) {
        apr_thread_exit(thd, APR_ENOMEM);
        return NULL;
    }
    for (;;) {
        const char *err = NULL;
        redisContext *ctx;
        int refused = 0, stop;

        apr_pool_clear(p);
        apr_thread_mutex_lock(st->lock);
        stop = st->keeper.stopping;
        apr_thread_mutex_unlock(st->lock);
        if (stop) {
            break;
        }
        if (!(ctx = tracker_open(st, p, &err, &refused))) {
            tracker_wait(st, refused, err, &warned, p);
            continue;
        }
        apr_thread_mutex_lock(st->lock);
        relay_lease_cache_forget_all(st);
        /* changes made while nobody listened were not heard: read them again */
        relay_lease_valid_changed_all(st);
        st->track.reset = 0;
        st->track.fd = ctx->fd;
        st->track.on = 1;
        apr_thread_mutex_unlock(st->lock);
        tracker_listen(st, ctx, rp, &next_recheck);
        apr_thread_mutex_lock(st->lock);
        st->track.on = 0;
        relay_lease_cache_forget_all(st);
        apr_thread_mutex_unlock(st->lock);
        redisFree(ctx);
    }
    apr_pool_destroy(rp);
    apr_pool_destroy(p);
    apr_thread_exit(thd, APR_SUCCESS);
    return NULL;
}

/* Start the tracker thread (stopped with the keeper, see relay_lease_keeper.c). */
apr_status_t relay_lease_tracker_start(relay_lease_store *st, apr_threadattr_t *attr,
                                       apr_pool_t *pchild)
{
    apr_status_t rv = apr_thread_create(&st->track.thread, attr, tracker_main, st, pchild);

    if (rv != APR_SUCCESS) {
        st->track.thread = NULL;
    }
    return rv;
}
