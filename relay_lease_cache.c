/*
 * relay_lease_cache.c - the key cache of a child: per key hash, the key's id
 * (so an admission need not look it up in apikey:hash_map), and while the
 * tracking connection vouches that Redis has not changed the key since it
 * was read, its concurrency limit, expiresAt and kept slots.
 *
 * An id never changes for a hash, it only disappears (the key deleted, or
 * its hash replaced): the id stays cached until an admission finds the
 * hash unknown. What else is cached is Redis's word only while tracked; any
 * change Redis reports, a failed batch or a lost tracking connection
 * untracks it and gives its kept slots back before Redis decides again.
 *
 * Everything here is called with st->lock held, unless said otherwise.
 */
#include "relay_lease_int.h"

#include <apr_strings.h>
#include <stdlib.h>
#include <string.h>

/* keys cached per child before the cache is emptied and refilled */
#define CACHE_MAX 10000

/*
 * Give back the first n kept slots of a key: at once, since other servers
 * count them.
 */
void relay_lease_kept_give_back(relay_lease_store *st, key_entry *e, int n)
{
    int i;

    for (i = 0; i < n; i++) {
        lease_op *op = relay_lease_op_new(OP_GIVE_BACK, e->id, e->kept[i].member, NULL);

        if (op) {
            op->urgency = URGENCY_NOW;
            relay_lease_queue(st, op);
        }
    }
    /* e->kept is NULL for a key that never kept a slot: no memmove of nothing */
    if (n > 0 && e->nkept > n) {
        memmove(e->kept, e->kept + n, sizeof(*e->kept) * (size_t)(e->nkept - n));
    }
    e->nkept -= n;
    st->cache.kept -= n;
    if (!e->nkept && n) {
        APR_RING_REMOVE(e, link);
    }
}

/* Redis's word on a key is in doubt: give its kept slots back and keep only its id. */
static void untrack(relay_lease_store *st, key_entry *e)
{
    if (!e->tracked) {
        return;
    }
    apr_hash_set(st->cache.by_id, e->id, APR_HASH_KEY_STRING, NULL);
    relay_lease_kept_give_back(st, e, e->nkept);
    free(e->kept);
    free(e->expires);
    e->kept = NULL;
    e->expires = NULL;
    e->nkept = e->cap = 0;
    e->limit = 0;
    e->tracked = 0;
}

/* Forget a key altogether. */
static void entry_drop(relay_lease_store *st, key_entry *e)
{
    untrack(st, e);
    apr_hash_set(st->cache.by_hash, e->hash, APR_HASH_KEY_STRING, NULL);
    free(e);
}

/* Forget every key: the cache is full. */
static void cache_empty(relay_lease_store *st)
{
    apr_hash_index_t *hi = apr_hash_first(NULL, st->cache.by_hash);

    while (hi) {
        key_entry *e = apr_hash_this_val(hi);

        hi = apr_hash_next(hi);
        entry_drop(st, e);
    }
    st->track.epoch++;
}

/* The entry of hash, made for id when there is none (NULL when out of memory). */
static key_entry *entry_for(relay_lease_store *st, const char *hash, const char *id)
{
    key_entry *e = apr_hash_get(st->cache.by_hash, hash, APR_HASH_KEY_STRING);
    size_t hl = strlen(hash) + 1, il = strlen(id) + 1;

    if (e && strcmp(e->id, id) == 0) {
        return e;
    }
    if (e) {
        entry_drop(st, e);
    }
    else if (apr_hash_count(st->cache.by_hash) >= CACHE_MAX) {
        cache_empty(st);
    }
    if (!(e = malloc(sizeof(*e) + hl + il))) {
        return NULL;
    }
    memset(e, 0, sizeof(*e));
    e->hash = memcpy((char *)(e + 1), hash, hl);
    e->id = memcpy(e->hash + hl, id, il);
    apr_hash_set(st->cache.by_hash, e->hash, APR_HASH_KEY_STRING, e);
    return e;
}

/* The cached id of a key hash, copied into p, or NULL. Takes the lock. */
const char *relay_lease_cache_id(relay_lease_store *st, const char *hash, apr_pool_t *p)
{
    key_entry *e;
    const char *id = NULL;

    apr_thread_mutex_lock(st->lock);
    e = apr_hash_get(st->cache.by_hash, hash, APR_HASH_KEY_STRING);
    if (e) {
        id = apr_pstrdup(p, e->id);
    }
    apr_thread_mutex_unlock(st->lock);
    return id;
}

/* Remember hash -> id. Takes the lock. */
void relay_lease_cache_put_id(relay_lease_store *st, const char *hash, const char *id)
{
    apr_thread_mutex_lock(st->lock);
    entry_for(st, hash, id);
    apr_thread_mutex_unlock(st->lock);
}

/* Forget a hash whose key was deleted (or never matched), kept slots first. Takes the lock. */
void relay_lease_cache_drop(relay_lease_store *st, const char *hash)
{
    key_entry *e;

    apr_thread_mutex_lock(st->lock);
    if ((e = apr_hash_get(st->cache.by_hash, hash, APR_HASH_KEY_STRING))) {
        entry_drop(st, e);
    }
    apr_thread_mutex_unlock(st->lock);
}

/* The entry of a hash while Redis's word on it holds, or NULL. */
key_entry *relay_lease_cache_tracked(relay_lease_store *st, const char *hash)
{
    key_entry *e = apr_hash_get(st->cache.by_hash, hash, APR_HASH_KEY_STRING);

    return e && e->tracked ? e : NULL;
}

/*
 * Redis just read this key valid, and nothing has changed since: remember
 * its concurrency limit (or 0) and expiresAt. Its kept slots stay with it.
 */
void relay_lease_cache_track(relay_lease_store *st, const char *hash, const char *id,
                             const char *expires, long long limit)
{
    key_entry *e = entry_for(st, hash, id), *other;
    char *ex;

    if (!e || (e->tracked && e->limit == limit && strcmp(e->expires, expires) == 0)) {
        return;
    }
    if (!(ex = strdup(expires))) {
        untrack(st, e);
        return;
    }
    other = apr_hash_get(st->cache.by_id, id, APR_HASH_KEY_STRING);
    if (other && other != e) {
        /* the key's hash was replaced: the old one is Redis's word no longer */
        untrack(st, other);
    }
    free(e->expires);
    e->expires = ex;
    e->limit = limit;
    e->tracked = 1;
    apr_hash_set(st->cache.by_id, e->id, APR_HASH_KEY_STRING, e);
}

/* Untrack a key by its hash, if tracked, giving back its kept slots. */
void relay_lease_cache_forget(relay_lease_store *st, const char *hash)
{
    key_entry *e = apr_hash_get(st->cache.by_hash, hash, APR_HASH_KEY_STRING);

    if (e) {
        untrack(st, e);
    }
}

/* Redis reported apikey:{id} changed: untrack it. Returns 1 when it was tracked. */
int relay_lease_cache_changed(relay_lease_store *st, const char *id, size_t idlen)
{
    key_entry *e = apr_hash_get(st->cache.by_id, id, (apr_ssize_t)idlen);

    if (!e) {
        return 0;
    }
    untrack(st, e);
    return 1;
}

/* Untrack every key: Redis's word on all of them is in doubt. */
void relay_lease_cache_forget_all(relay_lease_store *st)
{
    apr_hash_index_t *hi = apr_hash_first(NULL, st->cache.by_id);

    while (hi) {
        key_entry *e = apr_hash_this_val(hi);

        hi = apr_hash_next(hi);
        untrack(st, e);
    }
    st->track.epoch++;
}

/* Take the newest kept slot of a key (the oldest are the first to go back); from p. */
const char *relay_lease_kept_take(relay_lease_store *st, key_entry *e, apr_pool_t *p)
{
    e->nkept--;
    st->cache.kept--;
    if (!e->nkept) {
        APR_RING_REMOVE(e, link);
    }
    return apr_pstrdup(p, e->kept[e->nkept].member);
}

/*
 * Keep the slot of a finished request for the next request of its key:
 * only while its key is tracked, so unchanged since its lease was taken
 * with the key at a quarter of its limit or less. Returns 0 when the slot
 * must go back.
 */
int relay_lease_keep_slot(relay_lease_store *st, const relay_lease *lease)
{
    key_entry *e;
    apr_time_t now;

    if (!lease->keep || !st->track.on || st->keeper.stopping ||
        !(e = apr_hash_get(st->cache.by_id, lease->id, APR_HASH_KEY_STRING)) || !e->limit ||
        strlen(lease->member) >= sizeof(e->kept->member)) {
        return 0;
    }
    if (e->nkept == e->cap) {
        int cap = e->cap ? e->cap * 2 : 4;
        kept_slot *kept = realloc(e->kept, sizeof(*kept) * (size_t)cap);

        if (!kept) {
            return 0;
        }
        e->kept = kept;
        e->cap = cap;
    }
    now = st->cf.now();
    strcpy(e->kept[e->nkept].member, lease->member);
    e->kept[e->nkept].since = now;
    if (!e->nkept++) {
        APR_RING_INSERT_TAIL(&st->cache.kept_keys, e, key_entry, link);
    }
    if (!st->cache.kept++ && st->keeper.wakes > now + st->cf.reuse) {
        /* the keeper gives back slots kept too long: it must wake in time */
        apr_thread_cond_signal(st->keeper.wake);
    }
    return 1;
}

/*
 * Give back the slots kept longer than RelayReuseSlots. Returns when the
 * next kept slot is due, or 0 when none is kept.
 */
apr_time_t relay_lease_kept_expire(relay_lease_store *st, apr_time_t now)
{
    key_entry *e, *next;
    apr_time_t due = 0;

    for (e = APR_RING_FIRST(&st->cache.kept_keys);
         e != APR_RING_SENTINEL(&st->cache.kept_keys, key_entry, link); e = next) {
        int n = 0;

        next = APR_RING_NEXT(e, link);
        while (n < e->nkept && e->kept[n].since + st->cf.reuse <= now) {
            n++;
        }
        if (n) {
            relay_lease_kept_give_back(st, e, n);
        }
        if (e->nkept && (!due || e->kept[0].since + st->cf.reuse < due)) {
            due = e->kept[0].since + st->cf.reuse;
        }
    }
    return due;
}

/* A kept slot Redis no longer had (expired, or data lost): forget it. */
void relay_lease_kept_lost(relay_lease_store *st, const char *id, const char *member)
{
    key_entry *e = apr_hash_get(st->cache.by_id, id, APR_HASH_KEY_STRING);
    int i;

    for (i = 0; e && i < e->nkept; i++) {
        if (strcmp(e->kept[i].member, member) == 0) {
            if (e->nkept - i - 1 > 0) {
                memmove(e->kept + i, e->kept + i + 1,
                        sizeof(*e->kept) * (size_t)(e->nkept - i - 1));
            }
            st->cache.kept--;
            if (!--e->nkept) {
                APR_RING_REMOVE(e, link);
            }
            return;
        }
    }
}

/* Free every cached key when the child's pool goes (the threads are gone by then). */
static apr_status_t cache_free_all(void *data)
{
    relay_lease_store *st = data;
    apr_hash_index_t *hi = apr_hash_first(NULL, st->cache.by_hash);

    while (hi) {
        key_entry *e = apr_hash_this_val(hi);

        hi = apr_hash_next(hi);
        free(e->kept);
        free(e->expires);
        free(e);
    }
    return APR_SUCCESS;
}

/* Set the cache up in pool (a relay_pool_own pool of the store), emptied when pchild goes. */
apr_status_t relay_lease_cache_init(relay_lease_store *st, apr_pool_t *pool, apr_pool_t *pchild)
{
    st->cache.pool = pool;
    st->cache.by_hash = apr_hash_make(pool);
    st->cache.by_id = apr_hash_make(pool);
    APR_RING_INIT(&st->cache.kept_keys, key_entry, link);
    /* registered after the pool's own cleanup, so it runs before that pool goes */
    apr_pool_cleanup_register(pchild, st, cache_free_all, apr_pool_cleanup_null);
    return APR_SUCCESS;
}
