/*
 * relay_lease_valid.c - the keys a child lately found valid and active, for
 * RelayOnRedisError allow (see relay_lease_recently_valid): at most
 * VALID_MAX of them, for at most RELAY_LEASE_VALID_KEEP_MS, oldest admission
 * dropped first. A change Redis reports marks a key until the tracking
 * thread has read it again (relay_lease_valid_recheck).
 *
 * Everything here is called with st->lock held, unless said otherwise.
 */
#include "relay_lease_int.h"

#include <apr_strings.h>
#include <stdlib.h>
#include <string.h>

/* keys remembered as valid per child; the oldest go first */
#define VALID_MAX 4096
/* keys Redis reported changed read again per call, at most */
#define VALID_RECHECK_MAX 512

/* Forget a key remembered as valid. */
static void valid_drop(relay_lease_store *st, valid_key *v)
{
    apr_hash_set(st->valid.by_hash, v->hash, APR_HASH_KEY_STRING, NULL);
    apr_hash_set(st->valid.by_id, v->id, APR_HASH_KEY_STRING, NULL);
    APR_RING_REMOVE(v, link);
    if (v->changed) {
        st->valid.changed--;
    }
    free(v->expires);
    free(v);
}

/* Forget a hash Redis reported unusable: unknown, disabled, expired, bad. */
void relay_lease_valid_forget(relay_lease_store *st, const char *hash)
{
    valid_key *v = apr_hash_get(st->valid.by_hash, hash, APR_HASH_KEY_STRING);

    if (v) {
        valid_drop(st, v);
    }
}

/* Give an entry a new expiresAt; returns 0 (entry dropped) when out of memory. */
static int valid_set_expires(relay_lease_store *st, valid_key *v, const char *expires)
{
    char *e;

    if (v->expires && strcmp(v->expires, expires) == 0) {
        return 1;
    }
    if (!(e = strdup(expires))) {
        valid_drop(st, v);
        return 0;
    }
    free(v->expires);
    v->expires = e;
    return 1;
}

/* Remember a key not remembered yet, dropping the oldest when full. */
static void valid_add(relay_lease_store *st, const char *hash, const char *id, const char *expires)
{
    size_t hl = strlen(hash) + 1, il = strlen(id) + 1;
    valid_key *v, *other;

    if ((other = apr_hash_get(st->valid.by_id, id, APR_HASH_KEY_STRING))) {
        /* the key's hash was replaced: the old one is no longer valid */
        valid_drop(st, other);
    }
    if (apr_hash_count(st->valid.by_hash) >= VALID_MAX) {
        valid_drop(st, APR_RING_FIRST(&st->valid.order));
    }
    if (!(v = malloc(sizeof(*v) + hl + il))) {
        return;
    }
    memset(v, 0, sizeof(*v));
    if (!(v->expires = strdup(expires))) {
        free(v);
        return;
    }
    v->hash = memcpy((char *)(v + 1), hash, hl);
    v->id = memcpy(v->hash + hl, id, il);
    v->admitted = st->cf.now();
    APR_RING_INSERT_TAIL(&st->valid.order, v, valid_key, link);
    apr_hash_set(st->valid.by_hash, v->hash, APR_HASH_KEY_STRING, v);
    apr_hash_set(st->valid.by_id, v->id, APR_HASH_KEY_STRING, v);
}

/*
 * This child admitted a key Redis read as valid and active. epoch:
 * track.epoch when the batch that read it was sent. A change Redis reported
 * after that may be newer than what it read: then an entry stays marked
 * changed, and a key not remembered yet is not added (its change could not
 * be told apart from another key's).
 */
void relay_lease_valid_admitted(relay_lease_store *st, const char *hash, const char *id,
                                const char *expires, unsigned long epoch)
{
    valid_key *v = apr_hash_get(st->valid.by_hash, hash, APR_HASH_KEY_STRING);

    if (v && strcmp(v->id, id) != 0) {
        /* the hash now names another key: start afresh */
        valid_drop(st, v);
        v = NULL;
    }
    if (!v) {
        if (st->track.epoch == epoch) {
            valid_add(st, hash, id, expires);
        }
        return;
    }
    if (v->changed) {
        if (v->changed_at > epoch) {
            return;
        }
        v->changed = 0;
        st->valid.changed--;
    }
    if (valid_set_expires(st, v, expires)) {
        v->admitted = st->cf.now();
        APR_RING_REMOVE(v, link);
        APR_RING_INSERT_TAIL(&st->valid.order, v, valid_key, link);
    }
}

/* Redis reported a remembered key changed: not valid until read again. */
static void valid_mark(relay_lease_store *st, valid_key *v)
{
    if (!v->changed) {
        v->changed = 1;
        st->valid.changed++;
    }
    v->changed_at = st->track.epoch;
}

/* Redis reported apikey:{id} changed (lastUsedAt writes land here too: marked, not forgotten). */
void relay_lease_valid_changed(relay_lease_store *st, const char *id, size_t idlen)
{
    valid_key *v = apr_hash_get(st->valid.by_id, id, (apr_ssize_t)idlen);

    if (v) {
        valid_mark(st, v);
    }
}

/* Every remembered key may have changed: a flush, or changes nobody heard. */
void relay_lease_valid_changed_all(relay_lease_store *st)
{
    valid_key *v;

    for (v = APR_RING_FIRST(&st->valid.order);
         v != APR_RING_SENTINEL(&st->valid.order, valid_key, link); v = APR_RING_NEXT(v, link)) {
        valid_mark(st, v);
    }
}

/* Drop the keys last admitted longer ago than anyone may ask about. */
static void valid_expire(relay_lease_store *st, apr_time_t now)
{
    while (!APR_RING_EMPTY(&st->valid.order, valid_key, link)) {
        valid_key *v = APR_RING_FIRST(&st->valid.order);

        if (v->admitted + apr_time_from_msec(RELAY_LEASE_VALID_KEEP_MS) >= now) {
            break;
        }
        valid_drop(st, v);
    }
}

int relay_lease_recently_valid(relay_lease_store *st, const char *hash, apr_int64_t max_age_ms,
                               apr_pool_t *p, const char **id)
{
    const char *now = relay_lease_now_iso(st, p);
    apr_time_t t = st->cf.now();
    valid_key *v;
    int ok = 0;

    if (id) {
        *id = NULL;
    }
    if (!hash || max_age_ms <= 0) {
        return 0;
    }
    if (max_age_ms > RELAY_LEASE_VALID_KEEP_MS) {
        max_age_ms = RELAY_LEASE_VALID_KEEP_MS;
    }
    apr_thread_mutex_lock(st->lock);
    v = apr_hash_get(st->valid.by_hash, hash, APR_HASH_KEY_STRING);
    if (v && !v->changed && t - v->admitted <= apr_time_from_msec(max_age_ms) &&
        (!v->expires[0] || strcmp(v->expires, now) >= 0)) {
        ok = 1;
        if (id) {
            *id = apr_pstrdup(p, v->id);
        }
    }
    apr_thread_mutex_unlock(st->lock);
    return ok;
}

/* Take the check script's answer for the n pairs in args (see lua/check.lua). */
static void recheck_answered(relay_lease_store *st, const redisReply *rep, const char **args, int n,
                             unsigned long epoch)
{
    int i;

    for (i = 0; rep->type == REDIS_REPLY_ARRAY && i < n && (size_t)i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        valid_key *v = apr_hash_get(st->valid.by_hash, args[1 + 2 * i], APR_HASH_KEY_STRING);

        /* a change reported after the read may be newer than what was read */
        if (!v || !v->changed || v->changed_at > epoch || strcmp(v->id, args[2 + 2 * i]) != 0) {
            continue;
        }
        if (relay_lease_reply_int(e, 0) == 1 && e->elements >= 2 &&
            e->element[1]->type == REDIS_REPLY_STRING) {
            if (valid_set_expires(st, v, e->element[1]->str)) {
                v->changed = 0;
                st->valid.changed--;
            }
        }
        else {
            valid_drop(st, v);
        }
    }
}

/*
 * Read again the remembered keys Redis reported changed, newest admission
 * first (released during the call). Returns 0 when Redis did not answer.
 */
int relay_lease_valid_recheck(relay_lease_store *st, apr_pool_t *p)
{
    unsigned long epoch = st->track.epoch;
    const char **args;
    redisReply *rep;
    valid_key *v;
    int n = 0;

    valid_expire(st, st->cf.now());
    args = apr_palloc(p, sizeof(*args) * (1 + 2 * VALID_RECHECK_MAX));
    args[0] = relay_lease_now_iso(st, p);
    for (v = APR_RING_LAST(&st->valid.order);
         v != APR_RING_SENTINEL(&st->valid.order, valid_key, link) && n < VALID_RECHECK_MAX;
         v = APR_RING_PREV(v, link)) {
        if (v->changed) {
            args[1 + 2 * n] = apr_pstrdup(p, v->hash);
            args[2 + 2 * n] = apr_pstrdup(p, v->id);
            n++;
        }
    }
    if (!n) {
        return 1;
    }
    apr_thread_mutex_unlock(st->lock);
    rep = relay_lease_check_call(st, args, 1 + 2 * n, p);
    apr_thread_mutex_lock(st->lock);
    if (!rep) {
        return 0;
    }
    recheck_answered(st, rep, args, n, epoch);
    freeReplyObject(rep);
    return 1;
}

/* Free every remembered key when the child's pool goes. */
static apr_status_t valid_free_all(void *data)
{
    relay_lease_store *st = data;

    while (!APR_RING_EMPTY(&st->valid.order, valid_key, link)) {
        valid_drop(st, APR_RING_FIRST(&st->valid.order));
    }
    return APR_SUCCESS;
}

/* Set the memory up in pool (a relay_pool_own pool of the store), emptied when pchild goes. */
apr_status_t relay_lease_valid_init(relay_lease_store *st, apr_pool_t *pool, apr_pool_t *pchild)
{
    st->valid.pool = pool;
    st->valid.by_hash = apr_hash_make(pool);
    st->valid.by_id = apr_hash_make(pool);
    APR_RING_INIT(&st->valid.order, valid_key, link);
    /* registered after the pool's own cleanup, so it runs before that pool goes */
    apr_pool_cleanup_register(pchild, st, valid_free_all, apr_pool_cleanup_null);
    return APR_SUCCESS;
}
