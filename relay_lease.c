/*
 * relay_lease.c - per-key concurrency leases in Redis: the public API (see
 * relay_lease.h). An admission is answered from the key cache when Redis's
 * word on the key still holds, and otherwise joins the child's next batch;
 * a release is queued with the urgency its key's limits ask for. The files
 * of the core are listed in relay_lease_int.h.
 */
#include "relay_lease_int.h"
#include "relay_schema.h"
#include "relay_keys.h"

#include <apr_atomic.h>
#include <apr_general.h>
#include <apr_strings.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The lock, the condition variables and the pools of a new store. */
static apr_status_t store_parts(relay_lease_store *st, apr_pool_t *pchild)
{
    apr_pool_t *cache_pool, *valid_pool;
    apr_status_t rv;

    if ((rv = apr_thread_mutex_create(&st->lock, APR_THREAD_MUTEX_DEFAULT, pchild)) !=
            APR_SUCCESS ||
        (rv = apr_thread_cond_create(&st->keeper.wake, pchild)) != APR_SUCCESS ||
        (rv = apr_thread_cond_create(&st->track.wake, pchild)) != APR_SUCCESS) {
        return rv;
    }
    if ((rv = relay_pool_own(&st->batch.pool, pchild)) != APR_SUCCESS ||
        (rv = relay_pool_own(&st->batch.usage_pool, pchild)) != APR_SUCCESS ||
        (rv = relay_pool_own(&cache_pool, pchild)) != APR_SUCCESS ||
        (rv = relay_pool_own(&valid_pool, pchild)) != APR_SUCCESS) {
        return rv;
    }
    APR_RING_INIT(&st->live.ring, relay_lease, link);
    APR_RING_INIT(&st->batch.queue, lease_op, link);
    st->batch.usage = apr_hash_make(st->batch.usage_pool);
    if ((rv = relay_lease_cache_init(st, cache_pool, pchild)) != APR_SUCCESS) {
        return rv;
    }
    return relay_lease_valid_init(st, valid_pool, pchild);
}

apr_status_t relay_lease_store_create(relay_lease_store **out, relay_redis_pool *pool,
                                      int lease_seconds, int reuse_ms, apr_pool_t *pchild)
{
    relay_lease_store *st = apr_pcalloc(pchild, sizeof(*st));
    unsigned char rnd[8];
    apr_status_t rv;

    relay_lease_scripts_init();
    st->cf.redis = pool;
    st->cf.target = relay_redis_pool_target(pool);
    st->cf.lease_ms = lease_seconds * 1000;
    st->cf.reuse = apr_time_from_msec(reuse_ms);
    st->cf.now = apr_time_now;
    st->cf.send = relay_lease_send_redis;
    if ((rv = apr_generate_random_bytes(rnd, sizeof(rnd))) != APR_SUCCESS) {
        return rv;
    }
    relay_hex(rnd, sizeof(rnd), st->cf.prefix);
    if ((rv = store_parts(st, pchild)) != APR_SUCCESS) {
        return rv;
    }
    *out = st;
    return APR_SUCCESS;
}

void relay_lease_set_seams(relay_lease_store *st, relay_lease_clock_fn now,
                           relay_lease_send_fn send)
{
    if (now) {
        st->cf.now = now;
    }
    if (send) {
        st->cf.send = send;
    }
}

/* Count a new lease as live (lock held). */
static void lease_live(relay_lease_store *st, relay_lease *lease)
{
    APR_RING_INSERT_TAIL(&st->live.ring, lease, relay_lease, link);
    st->live.count++;
}

/*
 * Admit a request of a tracked key, unchanged since Redis last said so
 * (Redis tells the tracking connection of every change), without asking
 * Redis (lock held): a key without any limit, whose lease is added to Redis
 * with a later batch, or a key with a limit, on the slot its last request
 * left. Returns 0 when out of memory.
 */
static int admit_known(relay_lease_store *st, key_entry *e, const char *member, apr_pool_t *p,
                       relay_admit_result *res, relay_lease **lease_out)
{
    relay_lease *lease = apr_pcalloc(p, sizeof(*lease));

    lease->id = apr_pstrdup(p, e->id);
    lease->conc_key = apr_pstrcat(p, RELAY_CONCURRENCY_PREFIX, e->id, NULL);
    if (e->limit) {
        /* kept only at a quarter of the limit or less: its release may ride */
        lease->member = relay_lease_kept_take(st, e, p);
        lease->limited = lease->keep = 1;
        lease->urgency = URGENCY_SOON;
    }
    else {
        lease_op *add = relay_lease_op_new(OP_ADD, e->id, member, NULL);

        if (!add) {
            return 0;
        }
        add->urgency = URGENCY_DEFERRED;
        add->lease = lease;
        lease->member = member;
        lease->add_op = add;
        lease->urgency = URGENCY_DEFERRED;
        relay_lease_queue(st, add);
    }
    lease_live(st, lease);
    res->code = RELAY_ADMIT_OK;
    res->id = lease->id;
    res->name = "";
    res->current = 0;
    res->limit = e->limit;
    res->known = 1;
    *lease_out = lease;
    return 1;
}

/*
 * Admit from the key cache when Redis's word on the key holds (lock held).
 * Returns 1 when admitted; 0 when Redis must be asked.
 */
static int admit_cached(relay_lease_store *st, const char *hash, const char *member, apr_pool_t *p,
                        relay_admit_result *res, relay_lease **lease_out)
{
    key_entry *e;

    if (!st->track.on || !(e = relay_lease_cache_tracked(st, hash))) {
        return 0;
    }
    if (relay_lease_tracker_has_news(st)) {
        /*
         * Redis has news the tracker has not read: perhaps of this key.
         * Its kept slots go back first, so that Redis counts only the
         * requests in flight when it decides under what it now holds.
         */
        if (e->nkept) {
            relay_lease_kept_give_back(st, e, e->nkept);
        }
        return 0;
    }
    if ((e->expires[0] && strcmp(e->expires, relay_lease_now_iso(st, p)) < 0) ||
        (e->limit && !e->nkept) || !admit_known(st, e, member, p, res, lease_out)) {
        return 0;
    }
    /* unchanged since Redis read it valid: as good as its word now */
    relay_lease_valid_admitted(st, hash, e->id, e->expires, st->track.epoch);
    return 1;
}

/*
 * Join the queue with an admission and wait for its batch (lock held):
 * lead one if nobody does, or when promoted. Returns 0 when it cannot wait.
 */
static int admit_in_batch(relay_lease_store *st, lease_op *op, apr_pool_t *p)
{
    if (apr_thread_cond_create(&op->cond, p) != APR_SUCCESS) {
        return 0;
    }
    APR_RING_INSERT_TAIL(&st->batch.queue, op, lease_op, link);
    if (!st->batch.leading) {
        st->batch.leading = 1;
        relay_lease_lead(st, LEAD_REQUEST);
    }
    while (!op->done) {
        if (op->promoted) {
            op->promoted = 0;
            relay_lease_lead(st, LEAD_REQUEST);
            continue;
        }
        apr_thread_cond_wait(op->cond, st->lock);
    }
    return 1;
}

/* The lease Redis granted an admission, counted live and its key cached as it allows. */
static relay_lease *admitted(relay_lease_store *st, const lease_op *op, apr_pool_t *p)
{
    const admit_reply *r = &op->reply;
    relay_lease *lease = apr_pcalloc(p, sizeof(*lease));
    int roomy;

    lease->id = r->found_id;
    lease->conc_key = apr_pstrcat(p, RELAY_CONCURRENCY_PREFIX, r->found_id, NULL);
    lease->member = op->member;
    lease->limited = r->limit > 0;
    lease->token_limited = r->token_limited;
    roomy = lease->limited && r->current * 2 <= r->limit;
    lease->keep = st->cf.reuse > 0 && lease->limited && !lease->token_limited &&
                  r->limit >= REUSE_MIN_LIMIT && r->current * 4 <= r->limit;
    /* a token limit needs the usage now; a limit without room its slot */
    lease->urgency = lease->token_limited || (lease->limited && !roomy) ? URGENCY_NOW
                     : lease->limited                                   ? URGENCY_SOON
                                                                        : URGENCY_DEFERRED;
    apr_thread_mutex_lock(st->lock);
    /*
     * Nothing changed since Redis said so: track a key without any limit,
     * or one whose slots may be kept; a key busier than that keeps none.
     */
    if (r->found_id) {
        relay_lease_valid_admitted(st, op->hash, r->found_id, r->expires ? r->expires : "",
                                   op->epoch);
    }
    if ((lease->keep || (!lease->limited && !lease->token_limited)) && st->track.on &&
        st->track.epoch == op->epoch) {
        relay_lease_cache_track(st, op->hash, r->found_id, r->expires ? r->expires : "", r->limit);
    }
    else if (lease->limited) {
        relay_lease_cache_forget(st, op->hash);
    }
    lease_live(st, lease);
    apr_thread_mutex_unlock(st->lock);
    return lease;
}

/* Turn the script's code for an admission into the API's answer. */
static relay_admit_code take_reply(relay_lease_store *st, lease_op *op, apr_pool_t *p,
                                   relay_admit_result *res, relay_lease **lease_out)
{
    const admit_reply *r = &op->reply;

    res->id = r->found_id;
    res->current = r->current;
    res->limit = r->limit;
    res->name = r->name ? r->name : "";
    res->legacy_replaced = r->legacy;
    if ((r->code == 1 || r->code == 2 || r->code == 3) && !op->id && r->found_id) {
        relay_lease_cache_put_id(st, op->hash, r->found_id);
    }
    switch (r->code) {
    case 1:
        *lease_out = admitted(st, op, p);
        return RELAY_ADMIT_OK;
    case 2:
    case 3:
        apr_thread_mutex_lock(st->lock);
        relay_lease_cache_forget(st, op->hash);
        apr_thread_mutex_unlock(st->lock);
        return r->code == 2 ? RELAY_ADMIT_LIMITED : RELAY_ADMIT_TOKENS;
    case -1:
        return RELAY_ADMIT_DISABLED;
    case -2:
        return RELAY_ADMIT_EXPIRED;
    case -3:
        /* a record of this key is bad (the sentence names it); other keys go on */
        res->error = r->error;
        res->record_bad = 1;
        return RELAY_ADMIT_ERROR;
    default:
        /* the key was deleted (or never matched): forget what we cached */
        if (op->id) {
            relay_lease_cache_drop(st, op->hash);
        }
        res->id = NULL;
        return RELAY_ADMIT_NOT_FOUND;
    }
}

relay_admit_code relay_lease_admit(relay_lease_store *st, const char *hash, apr_pool_t *p,
                                   relay_admit_result *res, relay_lease **lease_out)
{
    lease_op *op = apr_pcalloc(p, sizeof(*op));
    int waited;

    memset(res, 0, sizeof(*res));
    *lease_out = NULL;
    op->kind = OP_ADMIT;
    op->hash = hash;
    op->p = p;
    op->id = relay_lease_cache_id(st, hash, p);
    /* random per child, the pid for people reading it, a counter per request */
    op->member = apr_psprintf(p, "%s-%" APR_PID_T_FMT "-%u", st->cf.prefix, getpid(),
                              apr_atomic_inc32(&st->counter));

    apr_thread_mutex_lock(st->lock);
    if (admit_cached(st, hash, op->member, p, res, lease_out)) {
        apr_thread_mutex_unlock(st->lock);
        return res->code;
    }
    waited = admit_in_batch(st, op, p);
    apr_thread_mutex_unlock(st->lock);
    if (!waited || op->reply.code == -99) {
        res->code = RELAY_ADMIT_ERROR;
        res->error = waited ? op->reply.error : "cannot create a condition variable";
        return res->code;
    }
    res->code = take_reply(st, op, p, res, lease_out);
    if (res->code != RELAY_ADMIT_OK && res->code != RELAY_ADMIT_LIMITED) {
        /*
         * Redis just said this hash is not usable; and one over its token
         * limit would go uncounted in an outage: neither is vouched for
         */
        apr_thread_mutex_lock(st->lock);
        relay_lease_cache_forget(st, hash);
        relay_lease_valid_forget(st, hash);
        apr_thread_mutex_unlock(st->lock);
    }
    return res->code;
}

/*
 * Give a lease back (lock held). With a waiter, a release that a limit
 * counts goes out now and the waiter is told when it is in Redis; without
 * one the release is queued with its lease's urgency. Returns the queued op
 * that carries a waiter, or NULL when there is nothing to wait for.
 */
static lease_op *give_back(relay_lease_store *st, relay_lease *lease,
                           const relay_usage_counts *usage, struct release_waiter *waiter,
                           const char **err)
{
    lease_op *op;
    int sent = 1;

    if (lease->released) {
        return NULL;
    }
    lease->released = 1;
    APR_RING_REMOVE(lease, link);
    st->live.count--;
    if (lease->add_op) {
        /* its lease never reached Redis: drop both; only the usage is sent */
        APR_RING_REMOVE(lease->add_op, link);
        free(lease->add_op);
        lease->add_op = NULL;
        sent = 0;
    }
    else if (relay_lease_keep_slot(st, lease)) {
        /* the slot stays taken, for the next request: only the usage is sent */
        sent = 0;
    }
    /* one block: the request and its pool are gone when this is sent */
    op = relay_lease_op_new(sent ? OP_RELEASE : OP_USAGE, lease->id, sent ? lease->member : NULL,
                            usage);
    if (!op) {
        *err = "out of memory";
        return NULL;
    }
    op->token_limited = lease->token_limited;
    op->urgency = sent ? lease->urgency : lease->token_limited ? URGENCY_NOW : URGENCY_DEFERRED;
    if (!op->token_limited) {
        st->batch.usage_pending = 1;
    }
    if (waiter && ((lease->limited && sent) || lease->token_limited)) {
        /* a limit counts it: in Redis before the caller goes on, sent by the caller
           (relay_lease_release_sent) or riding on a batch under way */
        op->urgency = URGENCY_NOW;
        op->waiter = waiter;
        APR_RING_INSERT_TAIL(&st->batch.queue, op, lease_op, link);
        return op;
    }
    relay_lease_queue(st, op);
    return NULL;
}

apr_status_t relay_lease_release(relay_lease_store *st, relay_lease *lease,
                                 const relay_usage_counts *usage, const char **err)
{
    const char *why = NULL;

    apr_thread_mutex_lock(st->lock);
    give_back(st, lease, usage, NULL, &why);
    apr_thread_mutex_unlock(st->lock);
    if (why) {
        *err = why;
        return APR_ENOMEM;
    }
    return APR_SUCCESS;
}

apr_status_t relay_lease_release_sent(relay_lease_store *st, relay_lease *lease,
                                      const relay_usage_counts *usage, apr_pool_t *p, int *waited,
                                      const char **err)
{
    struct release_waiter w;
    const char *why = NULL;

    memset(&w, 0, sizeof(w));
    if (waited) {
        *waited = 0;
    }
    apr_thread_mutex_lock(st->lock);
    if (!give_back(st, lease, usage, &w, &why)) {
        apr_thread_mutex_unlock(st->lock);
        if (why) {
            *err = why;
            return APR_ENOMEM;
        }
        return APR_SUCCESS;
    }
    if (waited) {
        *waited = 1;
    }
    /* lead a batch if nobody does; else the leader's next batch carries it */
    if (!st->batch.leading) {
        st->batch.leading = 1;
        relay_lease_lead(st, LEAD_REQUEST);
    }
    while (!w.done) {
        if (w.promoted) {
            /* the last leader handed on to this thread: it sends the next batch */
            w.promoted = 0;
            relay_lease_lead(st, LEAD_REQUEST);
            continue;
        }
        /*
         * Another thread sends it: wait to be told. The condition is made
         * only now, under the lock, so nobody signals it before it exists
         * (and a release that was not kept waiting needs none).
         */
        if (!w.cond && apr_thread_cond_create(&w.cond, p) != APR_SUCCESS) {
            w.cond = NULL;
            apr_thread_mutex_unlock(st->lock);
            apr_sleep(100);
            apr_thread_mutex_lock(st->lock);
            continue;
        }
        apr_thread_cond_wait(w.cond, st->lock);
    }
    apr_thread_mutex_unlock(st->lock);
    if (w.cond) {
        apr_thread_cond_destroy(w.cond);
    }
    if (w.failed) {
        *err = "Redis did not answer; the slot expires by itself within its lease";
        return APR_EGENERAL;
    }
    return APR_SUCCESS;
}

const char *relay_lease_member(const relay_lease *lease)
{
    return lease->member;
}

relay_redis_pool *relay_lease_store_redis(relay_lease_store *st)
{
    return st->cf.redis;
}

int relay_lease_live_count(relay_lease_store *st)
{
    int n;

    apr_thread_mutex_lock(st->lock);
    n = st->live.count;
    apr_thread_mutex_unlock(st->lock);
    return n;
}
