/*
 * relay_lease_keeper.c - the keeper thread of a child: it sends the ops no
 * request thread sends, writes the summed usage, gives back kept slots when
 * due, renews the leases of live requests (telling of the ones Redis lost),
 * and when the child exits sends what is still queued.
 */
#include "relay_lease_int.h"
#include "relay_schema.h"
#include "relay_metrics.h"

#include <apr_strings.h>
#include <string.h>

/*
 * The keeper's timers. Each pass it fills the table from the store, serves
 * the first timer due in this order, and otherwise sleeps until the
 * earliest one; a request thread that needs it sooner wakes it.
 */
enum keeper_timer {
    TIMER_RENEW,    /* renew live leases and kept slots: every third of a lease */
    TIMER_KEPT,     /* give back slots kept longer than RelayReuseSlots */
    TIMER_USAGE,    /* write the summed usage: every USAGE_EVERY_MS */
    TIMER_DEFERRED, /* send ops no limit waits for: DEFER_MS after the first was queued */
    TIMER_SOON,     /* send ops of limits with room: RIDE_US after the first was queued */
    TIMER_TICK,     /* such ops came lately: wake every RIDE_US, so that the next need not
                       wake us */
    TIMER_COUNT
};

/* When each timer is due next; 0 when it is not armed. */
typedef struct {
    apr_time_t due[TIMER_COUNT];
} keeper_timers;

/* Whether timer t is armed and due. */
static int timer_due(const keeper_timers *k, enum keeper_timer t, apr_time_t now)
{
    return k->due[t] && now >= k->due[t];
}

/* Arm the timers of the queued ops from what the batch group holds (lock held). */
static void timers_of_queue(relay_lease_store *st, keeper_timers *k, apr_time_t now)
{
    k->due[TIMER_DEFERRED] =
        st->batch.deferred_since ? st->batch.deferred_since + apr_time_from_msec(DEFER_MS) : 0;
    k->due[TIMER_SOON] = st->batch.soon_since ? st->batch.soon_since + RIDE_US : 0;
    k->due[TIMER_TICK] =
        now < st->batch.soon_seen + apr_time_from_msec(DEFER_MS) ? now + RIDE_US : 0;
}

/* The earliest armed timer. */
static apr_time_t timers_next(const keeper_timers *k)
{
    apr_time_t until = 0;
    int t;

    for (t = 0; t < TIMER_COUNT; t++) {
        if (k->due[t] && (!until || k->due[t] < until)) {
            until = k->due[t];
        }
    }
    return until;
}

/* Wake the keeper: ops queued, the clock moved (tests), or stop. Takes the lock. */
void relay_lease_keeper_poke(relay_lease_store *st)
{
    apr_thread_mutex_lock(st->lock);
    apr_thread_cond_signal(st->keeper.wake);
    apr_thread_mutex_unlock(st->lock);
}

/*
 * After a renewal: a lease of a concurrency limit that Redis no longer had
 * while its request still runs expired (the keeper was held up past the
 * lease) or was lost with Redis's data. Its slot is no longer counted, so
 * the admin hears of it (lock held). Only those leases count: they reach
 * Redis with their admission, before the request runs.
 */
static void report_lost(relay_lease_store *st, const char **keys, const char **members,
                        const char **was, int n, apr_pool_t *p)
{
    const char *first = NULL;
    apr_hash_t *running = NULL;
    int i, lost = 0;

    for (i = 0; i < n; i++) {
        if (members[i]) {
            continue;
        }
        if (!running) {
            relay_lease *l;

            running = apr_hash_make(p);
            for (l = APR_RING_FIRST(&st->live.ring);
                 l != APR_RING_SENTINEL(&st->live.ring, relay_lease, link);
                 l = APR_RING_NEXT(l, link)) {
                if (l->limited) {
                    apr_hash_set(running, l->member, APR_HASH_KEY_STRING, l);
                }
            }
        }
        if (apr_hash_get(running, was[i], APR_HASH_KEY_STRING)) {
            lost++;
            first = first ? first : keys[i];
        }
    }
    relay_metrics_lost(lost);
    if (lost) {
        relay_lease_log(st, RELAY_LEASE_LOG_WARNING, p,
                        "%d lease(s) of running requests were gone from Redis when renewed "
                        "(first: %s), so those requests no longer count against their limit; "
                        "RelayLeaseSeconds %d may be too short for this load, or Redis lost its "
                        "data",
                        lost, first, (int)(st->cf.lease_ms / 1000));
    }
}

/* What is renewed: the live leases in Redis first (nlive of them), then the kept slots. */
typedef struct {
    const char **keys;    /* concurrency:{id} */
    const char **members; /* set to NULL when Redis no longer had it */
    const char **was;     /* the members, as they were */
    int n, nlive;
} renewal;

/* Copy the leases to renew into p (lock held). */
static void renewal_snapshot(relay_lease_store *st, renewal *rn, apr_pool_t *p)
{
    int max = st->live.count + st->cache.kept, i;
    relay_lease *l;
    key_entry *e;

    rn->keys = apr_palloc(p, sizeof(*rn->keys) * max);
    rn->members = apr_palloc(p, sizeof(*rn->members) * max);
    rn->was = apr_palloc(p, sizeof(*rn->was) * max);
    rn->n = 0;
    for (l = APR_RING_FIRST(&st->live.ring);
         l != APR_RING_SENTINEL(&st->live.ring, relay_lease, link); l = APR_RING_NEXT(l, link)) {
        if (l->add_op) {
            continue; /* not in Redis yet; its add sets the expiry */
        }
        rn->keys[rn->n] = apr_pstrdup(p, l->conc_key);
        rn->members[rn->n] = rn->was[rn->n] = apr_pstrdup(p, l->member);
        rn->n++;
    }
    rn->nlive = rn->n;
    for (e = APR_RING_FIRST(&st->cache.kept_keys);
         e != APR_RING_SENTINEL(&st->cache.kept_keys, key_entry, link);
         e = APR_RING_NEXT(e, link)) {
        for (i = 0; i < e->nkept; i++) {
            rn->keys[rn->n] = apr_pstrcat(p, RELAY_CONCURRENCY_PREFIX, e->id, NULL);
            rn->members[rn->n] = rn->was[rn->n] = apr_pstrdup(p, e->kept[i].member);
            rn->n++;
        }
    }
}

/*
 * Renew every live lease and kept slot of this child (lock held; released
 * during the calls), then tell of the leases of running requests Redis
 * lost and forget the kept slots it lost.
 */
static void renew_leases(relay_lease_store *st, apr_pool_t *p)
{
    renewal rn;
    const char *err;
    int i;

    apr_pool_clear(p);
    renewal_snapshot(st, &rn, p);
    apr_thread_mutex_unlock(st->lock);
    err = relay_lease_renew_call(st, rn.keys, rn.members, rn.n, p);
    if (err) {
        relay_lease_log(st, RELAY_LEASE_LOG_WARNING, p,
                        "cannot renew %d lease(s); they expire unless Redis answers again soon: "
                        "%s",
                        rn.n, err);
    }
    apr_thread_mutex_lock(st->lock);
    report_lost(st, rn.keys, rn.members, rn.was, rn.nlive, p);
    for (i = rn.nlive; i < rn.n; i++) {
        if (!rn.members[i]) {
            relay_lease_kept_lost(st, rn.keys[i] + sizeof(RELAY_CONCURRENCY_PREFIX) - 1, rn.was[i]);
        }
    }
}

/* The usage timer fired (lock held): the next batch writes the usage counted since the last. */
static void usage_due(relay_lease_store *st)
{
    if (!st->batch.usage_pending) {
        return;
    }
    st->batch.usage_pending = 0;
    st->batch.usage_due = 1;
    if (!st->batch.leading) {
        st->batch.leading = 1;
        relay_lease_lead(st, LEAD_KEEPER);
    }
}

/*
 * One pass of the keeper (lock held): serve what is due. Returns 1 when it
 * served something (look again at once), 0 when there was nothing to do,
 * -1 when the child stops.
 */
static int keeper_pass(relay_lease_store *st, keeper_timers *k, apr_interval_time_t every,
                       apr_time_t now, apr_pool_t *p)
{
    /* renewal first: a steady stream of releases must not starve it */
    st->keeper.renew_due = k->due[TIMER_RENEW];
    if (timer_due(k, TIMER_RENEW, now) && !st->keeper.stopping) {
        k->due[TIMER_RENEW] = now + every;
        if (st->live.count > 0 || st->cache.kept > 0) {
            renew_leases(st, p);
        }
        return 1;
    }
    k->due[TIMER_KEPT] = relay_lease_kept_expire(st, now);
    if (st->batch.keeper_leads) {
        st->batch.keeper_leads = 0;
        relay_lease_lead(st, LEAD_KEEPER);
        return 1;
    }
    if (st->keeper.stopping) {
        return -1;
    }
    if (timer_due(k, TIMER_USAGE, now)) {
        k->due[TIMER_USAGE] = now + apr_time_from_msec(USAGE_EVERY_MS);
        usage_due(st);
        return 1;
    }
    timers_of_queue(st, k, now);
    if (!st->batch.leading &&
        (timer_due(k, TIMER_DEFERRED, now) || timer_due(k, TIMER_SOON, now))) {
        st->batch.leading = 1;
        relay_lease_lead(st, LEAD_KEEPER_DRAIN);
        return 1;
    }
    return 0;
}

/*
 * The child is going (lock held): send what is queued, kept slots and the
 * usage counted so far. Giving back the kept slots (here or in the tracker
 * as it stops) hands the lead to the keeper: it leads then, as asked.
 */
static void keeper_drain(relay_lease_store *st)
{
    relay_lease_cache_forget_all(st);
    st->batch.usage_due = 1;
    for (;;) {
        if (st->batch.keeper_leads) {
            st->batch.keeper_leads = 0;
            relay_lease_lead(st, LEAD_KEEPER_DRAIN);
            continue;
        }
        if (st->batch.leading ||
            (!st->batch.usage_due && APR_RING_EMPTY(&st->batch.queue, lease_op, link))) {
            return;
        }
        st->batch.leading = 1;
        relay_lease_lead(st, LEAD_KEEPER_DRAIN);
    }
}

/* The keeper thread: serves its timers until the child stops, then drains. */
static void *APR_THREAD_FUNC keeper_main(apr_thread_t *thd, void *data)
{
    relay_lease_store *st = data;
    apr_interval_time_t every = apr_time_from_msec(st->cf.lease_ms / 3);
    keeper_timers k;
    apr_pool_t *p;

    if (every < apr_time_from_msec(200)) {
        every = apr_time_from_msec(200);
    }
    if (apr_pool_create(&p, NULL) != APR_SUCCESS) {
        apr_thread_exit(thd, APR_ENOMEM);
        return NULL;
    }
    memset(&k, 0, sizeof(k));
    k.due[TIMER_RENEW] = st->cf.now() + every;
    k.due[TIMER_USAGE] = st->cf.now() + apr_time_from_msec(USAGE_EVERY_MS);
    apr_thread_mutex_lock(st->lock);
    for (;;) {
        apr_time_t now = st->cf.now(), until;
        int served = keeper_pass(st, &k, every, now, p);

        if (served < 0) {
            break;
        }
        if (served) {
            continue;
        }
        until = timers_next(&k);
        st->keeper.wakes = until;
        apr_thread_cond_timedwait(st->keeper.wake, st->lock, until > now ? until - now : 1);
    }
    keeper_drain(st);
    apr_thread_mutex_unlock(st->lock);
    apr_pool_destroy(p);
    apr_thread_exit(thd, APR_SUCCESS);
    return NULL;
}

/* Stop and join the tracker and the keeper before the child's pool goes away. */
static apr_status_t keeper_stop(void *data)
{
    relay_lease_store *st = data;
    apr_status_t ret;

    apr_thread_mutex_lock(st->lock);
    st->keeper.stopping = 1;
    st->track.on = 0;
    apr_thread_cond_broadcast(st->keeper.wake);
    apr_thread_cond_broadcast(st->track.wake);
    apr_thread_mutex_unlock(st->lock);
    if (st->track.thread) {
        apr_thread_join(&ret, st->track.thread);
        st->track.thread = NULL;
    }
    if (st->keeper.thread) {
        apr_thread_join(&ret, st->keeper.thread);
        st->keeper.thread = NULL;
    }
    return APR_SUCCESS;
}

apr_status_t relay_lease_keeper_start(relay_lease_store *st, relay_lease_log_fn log, void *baton,
                                      apr_pool_t *pchild)
{
    apr_threadattr_t *attr;
    apr_status_t rv;

    st->cf.log = log;
    st->cf.log_baton = baton;
    if ((rv = apr_threadattr_create(&attr, pchild)) != APR_SUCCESS) {
        return rv;
    }
    if ((rv = apr_thread_create(&st->keeper.thread, attr, keeper_main, st, pchild)) !=
        APR_SUCCESS) {
        return rv;
    }
    apr_pool_pre_cleanup_register(pchild, st, keeper_stop);
    return relay_lease_tracker_start(st, attr, pchild);
}
