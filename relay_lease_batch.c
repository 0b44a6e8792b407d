/*
 * relay_lease_batch.c - the op queue of a child and its batches.
 *
 * Admissions, releases, lease adds and kept slots given back wait in one
 * queue; one thread at a time (the leader) takes up to BATCH_MAX of them and
 * sends them in one script call, so concurrent requests share a round trip.
 * An admission's own thread leads when nobody does, and hands on to the next
 * thread waiting for its op (an admission or a release at the answer's end);
 * other releases are sent as their urgency says: at once by the keeper when
 * a limit waits for them, otherwise riding on a later batch within RIDE_US
 * or DEFER_MS.
 */
#include "relay_lease_int.h"

#include <stdlib.h>
#include <string.h>

/* A malloc'ed op of one lease member of key id, or of usage only (member NULL). */
lease_op *relay_lease_op_new(enum op_kind kind, const char *id, const char *member,
                             const relay_usage_counts *usage)
{
    size_t idlen = strlen(id) + 1, mlen = member ? strlen(member) + 1 : 0;
    size_t modlen = usage && usage->model ? strlen(usage->model) + 1 : 0;
    lease_op *op = malloc(sizeof(*op) + idlen + mlen + modlen);
    char *buf;

    if (!op) {
        return NULL;
    }
    memset(op, 0, sizeof(*op));
    op->kind = kind;
    buf = (char *)(op + 1);
    op->id = memcpy(buf, id, idlen);
    op->member = member ? memcpy(buf + idlen, member, mlen) : NULL;
    if (usage) {
        op->usage = *usage;
        op->usage.model = modlen ? memcpy(buf + idlen + mlen, usage->model, modlen) : NULL;
    }
    return op;
}

/*
 * An op of URGENCY_SOON was queued (lock held): it goes within RIDE_US.
 * While such ops keep coming the keeper wakes every RIDE_US anyway, so it
 * is woken only when it sleeps longer than that.
 */
static void soon_queued(relay_lease_store *st)
{
    apr_time_t now = st->cf.now();

    st->batch.soon_seen = now;
    if (!st->batch.soon_since) {
        st->batch.soon_since = now;
        if (st->keeper.wakes > now + RIDE_US) {
            apr_thread_cond_signal(st->keeper.wake);
        }
    }
}

/* Deferred ops wait from now on, if none did (lock held): the keeper sends them in time. */
static void deferred_queued(relay_lease_store *st)
{
    if (!st->batch.deferred_since) {
        st->batch.deferred_since = st->cf.now();
        apr_thread_cond_signal(st->keeper.wake);
    }
}

/*
 * Queue an op other than an admission (lock held). When no batch is under
 * way, the keeper sends an op a limit waits for now; the others ride on the
 * next batch, within RIDE_US or DEFER_MS as their urgency says.
 */
void relay_lease_queue(relay_lease_store *st, lease_op *op)
{
    APR_RING_INSERT_TAIL(&st->batch.queue, op, lease_op, link);
    if (st->batch.leading) {
        return;
    }
    switch (op->urgency) {
    case URGENCY_NOW:
        st->batch.leading = 1;
        st->batch.keeper_leads = 1;
        apr_thread_cond_signal(st->keeper.wake);
        break;
    case URGENCY_SOON:
        soon_queued(st);
        break;
    case URGENCY_DEFERRED:
        deferred_queued(st);
        break;
    }
}

/*
 * Send one batch in one script call. with_usage: also write the usage
 * summed since the last write. Runs without the lock, in the one thread
 * leading now (which alone touches batch.usage). The ops other than
 * admissions and waited-for releases are freed. Returns 1 when Redis did
 * not take it.
 */
static int run_batch(relay_lease_store *st, struct op_ring *batch, int with_usage)
{
    apr_pool_t *p = st->batch.pool;
    apr_hash_t *now_usage = apr_hash_make(p); /* usage written in this batch */
    lease_op *op, *next;
    int failed;

    for (op = APR_RING_FIRST(batch); op != APR_RING_SENTINEL(batch, lease_op, link);
         op = APR_RING_NEXT(op, link)) {
        if (op->kind == OP_USAGE) {
            relay_lease_usage_sum(st->batch.usage, st->batch.usage_pool, op->id, &op->usage, 1);
        }
        else if (op->kind == OP_RELEASE) {
            /* a token limit needs the usage now; the rest is summed and written later */
            relay_lease_usage_sum(op->token_limited ? now_usage : st->batch.usage,
                                  op->token_limited ? p : st->batch.usage_pool, op->id, &op->usage,
                                  1);
        }
        /* a kept slot given back: its requests were counted already */
    }
    if (with_usage) {
        /* the sums so far join this batch's (copied: batch.usage is emptied) */
        relay_lease_usage_merge(now_usage, p, st->batch.usage);
        apr_pool_clear(st->batch.usage_pool);
        st->batch.usage = apr_hash_make(st->batch.usage_pool);
    }
    failed = relay_lease_send_batch(st, batch, now_usage, p);
    for (op = APR_RING_FIRST(batch); op != APR_RING_SENTINEL(batch, lease_op, link); op = next) {
        next = APR_RING_NEXT(op, link);
        if (op->kind != OP_ADMIT && !op->waiter) {
            APR_RING_REMOVE(op, link);
            free(op);
        }
    }
    apr_pool_clear(p);
    return failed;
}

/* Move up to BATCH_MAX queued ops into batch (lock held). */
static void take_batch(relay_lease_store *st, struct op_ring *batch)
{
    int n = 0;

    APR_RING_INIT(batch, lease_op, link);
    while (!APR_RING_EMPTY(&st->batch.queue, lease_op, link) && n < BATCH_MAX) {
        lease_op *op = APR_RING_FIRST(&st->batch.queue);

        APR_RING_REMOVE(op, link);
        APR_RING_INSERT_TAIL(batch, op, lease_op, link);
        op->epoch = st->track.epoch;
        if (op->kind == OP_ADD) {
            /* on its way: a release from now on is sent after it */
            op->lease->add_op = NULL;
            op->lease = NULL;
        }
        n++;
    }
    if (APR_RING_EMPTY(&st->batch.queue, lease_op, link)) {
        st->batch.deferred_since = 0;
        st->batch.soon_since = 0;
    }
}

/* Tell the ops of a batch sent (lock held): admissions and waiters wake. */
static void batch_done(relay_lease_store *st, struct op_ring *batch, int failed)
{
    if (failed && st->track.on) {
        /* what Redis says of the keys is in doubt: ask it again */
        st->track.on = 0;
        st->track.reset = 1;
        relay_lease_cache_forget_all(st);
        apr_thread_cond_signal(st->track.wake);
    }
    while (!APR_RING_EMPTY(batch, lease_op, link)) {
        lease_op *op = APR_RING_FIRST(batch);

        APR_RING_REMOVE(op, link);
        if (op->waiter) {
            /* no condition yet: its thread leads, or has not waited yet */
            op->waiter->done = 1;
            if (op->waiter->cond) {
                apr_thread_cond_signal(op->waiter->cond);
            }
            free(op);
            continue;
        }
        op->done = 1;
        apr_thread_cond_signal(op->cond);
    }
}

/*
 * After a batch, with ops still queued (lock held): hand on to the first
 * thread waiting for a queued op (an admission, or a release at the
 * answer's end), which sends the next batch itself; else find how urgent
 * the rest is. Returns 1 when a waiting thread now leads.
 */
static int hand_on(relay_lease_store *st, enum op_urgency *most)
{
    lease_op *op;

    *most = URGENCY_DEFERRED;
    for (op = APR_RING_FIRST(&st->batch.queue);
         op != APR_RING_SENTINEL(&st->batch.queue, lease_op, link); op = APR_RING_NEXT(op, link)) {
        if (op->kind == OP_ADMIT) {
            op->promoted = 1;
            apr_thread_cond_signal(op->cond);
            return 1;
        }
        if (op->waiter) {
            op->waiter->promoted = 1;
            if (op->waiter->cond) {
                apr_thread_cond_signal(op->waiter->cond);
            }
            return 1;
        }
        if (op->urgency > *most) {
            *most = op->urgency;
        }
    }
    return 0;
}

/*
 * Send batches while this thread leads. Called with the lock held and
 * batch.leading set; returns with the lock held. After its first batch a
 * request thread hands on: to the first waiting admission, or to the keeper
 * when ops a limit waits for are left. Ops no limit waits for stay queued
 * for the next batch, for at most DEFER_MS. LEAD_KEEPER_DRAIN sends all.
 */
void relay_lease_lead(relay_lease_store *st, enum lead_role role)
{
    for (;;) {
        struct op_ring batch;
        enum op_urgency most;
        int with_usage, failed;

        if (APR_RING_EMPTY(&st->batch.queue, lease_op, link) && !st->batch.usage_due) {
            st->batch.leading = 0;
            st->batch.deferred_since = 0;
            st->batch.soon_since = 0;
            return;
        }
        /* take the queue, up to a bound that keeps a script call short */
        take_batch(st, &batch);
        with_usage = st->batch.usage_due;
        st->batch.usage_due = 0;
        apr_thread_mutex_unlock(st->lock);
        failed = run_batch(st, &batch, with_usage);
        apr_thread_mutex_lock(st->lock);
        batch_done(st, &batch, failed);
        if (APR_RING_EMPTY(&st->batch.queue, lease_op, link) && !st->batch.usage_due) {
            st->batch.leading = 0;
            return;
        }
        if (hand_on(st, &most)) {
            return;
        }
        if (most == URGENCY_NOW || st->batch.usage_due || role == LEAD_KEEPER_DRAIN) {
            if (role != LEAD_REQUEST && !st->keeper.stopping &&
                st->cf.now() >= st->keeper.renew_due) {
                /* still leading; the keeper renews, then goes on */
                st->batch.keeper_leads = 1;
                return;
            }
            if (role != LEAD_REQUEST) {
                continue;
            }
            st->batch.keeper_leads = 1;
            apr_thread_cond_signal(st->keeper.wake);
            return;
        }
        /* only ops no limit waits for yet: they ride on a later batch */
        st->batch.leading = 0;
        if (most == URGENCY_SOON) {
            soon_queued(st);
        }
        deferred_queued(st);
        return;
    }
}

/*
 * Redis reported keys changed, one of which had no limit: their queued lease
 * adds and releases go to Redis now, not within DEFER_MS, so a limit just
 * set counts exactly the requests in flight (lock held). keys: the
 * invalidation message's list of apikey:{id} names.
 */
void relay_lease_hurry(relay_lease_store *st, const redisReply *keys)
{
    lease_op *op;
    int any = 0;
    size_t i;

    for (op = APR_RING_FIRST(&st->batch.queue);
         op != APR_RING_SENTINEL(&st->batch.queue, lease_op, link); op = APR_RING_NEXT(op, link)) {
        if (op->kind == OP_ADMIT || op->urgency == URGENCY_NOW) {
            continue;
        }
        for (i = 0; i < keys->elements; i++) {
            const redisReply *k = keys->element[i];

            if (k->type == REDIS_REPLY_STRING && k->len > 7 && strcmp(k->str + 7, op->id) == 0) {
                op->urgency = URGENCY_NOW;
                any = 1;
                break;
            }
        }
    }
    if (any && !st->batch.leading) {
        st->batch.leading = 1;
        st->batch.keeper_leads = 1;
        apr_thread_cond_signal(st->keeper.wake);
    }
}
