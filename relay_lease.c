/*
 * relay_lease.c - per-key concurrency leases in Redis (see relay_lease.h).
 */
#include "relay_lease.h"
#include "relay_keys.h"

#include <apr_atomic.h>
#include <apr_general.h>
#include <apr_hash.h>
#include <apr_ring.h>
#include <apr_strings.h>
#include <apr_thread_cond.h>
#include <apr_thread_mutex.h>
#include <apr_thread_proc.h>
#include <apr_time.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* the warning level of httpd's http_log.h, without including it */
#define LEASE_LOG_WARNING 4

/* ids cached per child before the cache is emptied and refilled */
#define ID_CACHE_MAX 10000
/* leases renewed per script call; more are sent in further calls */
#define RENEW_BATCH 4000
/* admissions and releases sent in one script call at most */
#define BATCH_MAX 256
/* how long the release of a lease without any limit may wait for a batch */
#define DEFER_MS 100
/*
 * how long the release of a lease admitted with its key at half its limit or
 * less may wait to ride on the next batch (an admission usually comes sooner)
 */
#define RIDE_US 2000
/*
 * A finished request's slot is kept for the next request of its key (for
 * RelayReuseSlots) only when the key's concurrency limit is at least this
 * and the request was admitted with at most a quarter of it in use.
 */
#define REUSE_MIN_LIMIT 32
/* how often counted usage without a token limit is written */
#define USAGE_EVERY_MS 1000
/* keys remembered as valid per child (relay_lease_recently_valid); the oldest go first */
#define VALID_MAX 4096
/* how often keys Redis reported changed are read again, and how many at most per call */
#define VALID_RECHECK_MS 1000
#define VALID_RECHECK_MAX 512
/* after a failed read, the next one waits this long: Redis is likely down */
#define VALID_RECHECK_BACKOFF_MS 5000

/*
 * The scripts: lua/batch.lua (admissions, releases, usage in one call),
 * lua/renew.lua and lua/check.lua, embedded by scripts/embed-lua; what each
 * takes and answers is written at the top of its file.
 */
#include "relay_lease_lua.h"

static relay_script batch_script, renew_script, check_script;
static apr_uint32_t scripts_ready;

APR_RING_HEAD(lease_ring, relay_lease);

struct relay_lease {
    APR_RING_ENTRY(relay_lease) link;  /* in the store's list of live leases */
    const char *id;                    /* key id */
    const char *conc_key;              /* concurrency:{id} */
    const char *member;                /* this request's member */
    int released;                      /* given back already */
    struct lease_op *add_op;           /* its add, while still queued */
    int limited;                       /* its key had a concurrency limit */
    int roomy;                         /* admitted at half that limit or less */
    int keep;                          /* its slot may be kept for the next request */
    int token_limited;                 /* its key had a token limit */
};

/*
 * A queued admission or release. Admissions live in the waiting request's
 * pool; releases are malloc'ed (their request is gone when they are sent)
 * and freed once sent.
 */
typedef struct lease_op lease_op;
APR_RING_HEAD(op_ring, lease_op);

struct lease_op {
    APR_RING_ENTRY(lease_op) link;     /* in the queue, then in a batch */
    int admit;                         /* 1 admission, 0 release */
    const char *id;                    /* key id (admission: cached one, or NULL) */
    const char *member;                /* lease member */
    /* admission */
    const char *hash;                  /* key hash */
    apr_pool_t *p;                     /* the requester's pool, for the results */
    apr_thread_cond_t *cond;           /* signalled when done or promoted */
    int done;                          /* results are in */
    int promoted;                      /* this requester leads the next batch */
    long code;                         /* the script's code, or -99 on error */
    long long current, limit;
    const char *name, *found_id, *error;
    int legacy;
    /* release */
    relay_usage_counts usage;          /* model copied into the same block */
    int urgent;                        /* a limit waits for it: send now */
    int soon;                          /* a limit with room: send within RIDE_US */
    int add;                           /* adds the lease of a locally admitted request */
    int kept;                          /* gives back a kept slot: no request to count */
    relay_lease *lease;                /* for an add: its lease, while queued */
    unsigned long epoch;               /* admission: st->epoch when sent */
    const char *expires;               /* admission: the key's expiresAt */
    int token_limited;                 /* its usage goes with it, not later */
    struct release_waiter *waiter;     /* a release whose caller waits until it is sent */
};

/* The caller of relay_lease_release_sent, waiting for its release to reach Redis. */
struct release_waiter {
    apr_thread_cond_t *cond;           /* signalled when sent (or failed) */
    int done;                          /* the batch carrying it has run */
    int failed;                        /* Redis did not take it */
};

typedef struct known_key known_key;
APR_RING_HEAD(known_ring, known_key);

/*
 * A key Redis last reported valid and active, remembered for
 * relay_lease_recently_valid: one malloc'ed block, its expiresAt apart.
 */
typedef struct valid_key valid_key;
APR_RING_HEAD(valid_ring, valid_key);

struct valid_key {
    APR_RING_ENTRY(valid_key) link;    /* in st->valid_order, oldest admission first */
    char *hash;                        /* key hash */
    char *id;                          /* key id */
    char *expires;                     /* expiresAt, "" for never (malloc'ed: it changes) */
    apr_time_t admitted;               /* when this child last admitted it */
    int changed;                       /* Redis reported the key changed since it was read */
    unsigned long changed_at;          /* st->epoch after the last such report */
};

struct relay_lease_store {
    relay_redis_pool *redis;           /* where leases live */
    int lease_ms;                      /* lease length */
    apr_interval_time_t reuse;         /* how long a finished request's slot is kept */
    char prefix[17];                   /* random per child: members are unique */
    apr_uint32_t counter;              /* per child member counter */
    apr_thread_mutex_t *lock;          /* guards everything below */
    struct lease_ring ring;            /* live leases of this child */
    int live;                          /* entries in ring */
    apr_pool_t *cache_pool;            /* holds the id cache */
    apr_hash_t *id_cache;              /* key hash -> key id */
    struct op_ring queue;              /* admissions and releases not yet sent */
    int leading;                       /* some thread is sending (or about to send) a batch */
    int keeper_leads;                  /* the keeper is asked to send the queued releases */
    apr_time_t renew_due;              /* when the keeper renews next */
    apr_time_t deferred_since;         /* releases without a limit wait since, or 0 */
    apr_time_t soon_since;             /* releases of limits with room wait since, or 0 */
    apr_time_t soon_seen;              /* when such a release was last queued */
    apr_time_t keeper_wakes;           /* when the sleeping keeper wakes by itself */
    int usage_pending;                 /* usage was counted since the last write */
    int usage_due;                     /* the next batch writes the counted usage */
    apr_pool_t *batch_pool;            /* scratch of the leading thread */
    apr_pool_t *usage_pool;            /* counted usage, owned by the leading thread */
    apr_hash_t *usage;                 /* "id model" -> usage_entry */
    /* keys without any limit, admitted without asking Redis while tracked */
    const relay_redis_target *target;  /* where the tracking connection goes */
    int tracking;                      /* Redis tells us of every change to apikey:* */
    int tracker_fd;                    /* the tracking connection's socket, while tracking */
    int tracker_reset;                 /* reconnect the tracking connection */
    unsigned long epoch;               /* counts invalidations */
    apr_pool_t *known_pool;            /* holds the two hashes below (entries are malloc'ed) */
    apr_hash_t *known;                 /* key hash -> known_key */
    apr_hash_t *known_by_id;           /* key id -> known_key */
    struct known_ring idle_keys;       /* cached keys with kept slots */
    int idle_count;                    /* kept slots in all */
    /* keys Redis last reported valid and active (see relay_lease_recently_valid) */
    apr_pool_t *valid_pool;            /* holds the two hashes below (entries are malloc'ed) */
    apr_hash_t *valid;                 /* key hash -> valid_key */
    apr_hash_t *valid_by_id;           /* key id -> valid_key */
    struct valid_ring valid_order;     /* the same, oldest admission first */
    int valid_changed;                 /* entries reported changed and not read again yet */
    apr_thread_cond_t *tracker_wake;   /* wakes the tracker to stop */
    apr_thread_t *tracker;             /* the tracking thread, or NULL */
    apr_thread_cond_t *wake;           /* wakes the keeper: releases queued, or stop */
    int stopping;                      /* the child is exiting */
    apr_thread_t *keeper;              /* renewal and release thread, or NULL */
    relay_log_fn log;                  /* keeper's log sink */
    void *log_baton;
};

static apr_status_t destroy_pool(void *data)
{
    apr_pool_destroy(data);
    return APR_SUCCESS;
}

/*
 * A pool with an allocator of its own, destroyed with pchild. The child's
 * pool shares an allocator without a mutex; these pools are used by
 * whichever thread holds the lock or leads a batch, so they must not share it.
 */
static apr_status_t own_pool(apr_pool_t **out, apr_pool_t *pchild)
{
    apr_allocator_t *a;
    apr_status_t rv;

    if ((rv = apr_allocator_create(&a)) != APR_SUCCESS) {
        return rv;
    }
    if ((rv = apr_pool_create_ex(out, NULL, NULL, a)) != APR_SUCCESS) {
        apr_allocator_destroy(a);
        return rv;
    }
    apr_allocator_owner_set(a, *out);
    apr_pool_cleanup_register(pchild, *out, destroy_pool, apr_pool_cleanup_null);
    return APR_SUCCESS;
}

/* A kept slot: the lease of a finished request, waiting for the next one. */
typedef struct {
    char member[48];                   /* its member in concurrency:{id} */
    apr_time_t since;                  /* when its request ended */
} idle_slot;

/*
 * A cached key: one malloc'ed block. A key without any limit is admitted
 * from it alone; a key with a concurrency limit from its kept slots.
 */
struct known_key {
    APR_RING_ENTRY(known_key) link;    /* in st->idle_keys while it has kept slots */
    char *hash;                        /* key hash */
    char *id;                          /* key id */
    char *expires;                     /* expiresAt, "" for never */
    long long limit;                   /* concurrencyLimit, 0 for none */
    idle_slot *idle;                   /* kept slots, oldest first (malloc'ed) */
    int nidle, cap;
};

/* Queue a release (lock held); see relay_lease_release. */
static void queue_release(relay_lease_store *st, lease_op *op);

/* A release of one lease member of key id, or of usage only (member NULL). */
static lease_op *release_op(const char *id, const char *member, const relay_usage_counts *usage)
{
    size_t idlen = strlen(id) + 1, mlen = member ? strlen(member) + 1 : 0;
    size_t modlen = usage && usage->model ? strlen(usage->model) + 1 : 0;
    lease_op *op = malloc(sizeof(*op) + idlen + mlen + modlen);
    char *buf;

    if (!op) {
        return NULL;
    }
    memset(op, 0, sizeof(*op));
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
 * Give back the first n kept slots of a key (lock held): at once, since
 * other servers count them.
 */
static void idle_give_back(relay_lease_store *st, known_key *f, int n)
{
    int i;

    for (i = 0; i < n; i++) {
        lease_op *op = release_op(f->id, f->idle[i].member, NULL);

        if (op) {
            op->urgent = op->kept = 1;
            queue_release(st, op);
        }
    }
    /* f->idle is NULL for a key that never kept a slot: no memmove of nothing */
    if (n > 0 && f->nidle > n) {
        memmove(f->idle, f->idle + n, sizeof(*f->idle) * (size_t)(f->nidle - n));
    }
    f->nidle -= n;
    st->idle_count -= n;
    if (!f->nidle && n) {
        APR_RING_REMOVE(f, link);
    }
}

/* Forget one cached key, giving back its kept slots (lock held). */
static void known_drop(relay_lease_store *st, known_key *f)
{
    apr_hash_set(st->known, f->hash, APR_HASH_KEY_STRING, NULL);
    apr_hash_set(st->known_by_id, f->id, APR_HASH_KEY_STRING, NULL);
    idle_give_back(st, f, f->nidle);
    free(f->idle);
    free(f);
}

/* Forget every cached key (lock held). */
static void known_clear(relay_lease_store *st)
{
    apr_hash_index_t *hi = apr_hash_first(NULL, st->known);

    while (hi) {
        known_key *f = apr_hash_this_val(hi);

        hi = apr_hash_next(hi);
        known_drop(st, f);
    }
    st->epoch++;
}

/* Remember a key, with its concurrency limit or 0 (lock held). */
static void known_put(relay_lease_store *st, const char *hash, const char *id,
                      const char *expires, long long limit)
{
    size_t hl = strlen(hash) + 1, il = strlen(id) + 1, el = strlen(expires) + 1;
    known_key *old = apr_hash_get(st->known, hash, APR_HASH_KEY_STRING), *f;

    if (old && old->limit == limit && strcmp(old->expires, expires) == 0) {
        return;
    }
    if (!old && apr_hash_count(st->known) >= ID_CACHE_MAX) {
        known_clear(st);
    }
    f = malloc(sizeof(*f) + hl + il + el);
    if (!f) {
        if (old) {
            known_drop(st, old);
        }
        return;
    }
    memset(f, 0, sizeof(*f));
    f->hash = memcpy((char *)(f + 1), hash, hl);
    f->id = memcpy(f->hash + hl, id, il);
    f->expires = memcpy(f->id + il, expires, el);
    f->limit = limit;
    if (old) {
        /* same key, newer fields: its kept slots stay with it */
        f->idle = old->idle;
        f->nidle = old->nidle;
        f->cap = old->cap;
        if (f->nidle) {
            APR_RING_INSERT_BEFORE(old, f, link);
            APR_RING_REMOVE(old, link);
        }
        free(old);
    }
    apr_hash_set(st->known, f->hash, APR_HASH_KEY_STRING, f);
    apr_hash_set(st->known_by_id, f->id, APR_HASH_KEY_STRING, f);
}

/* Forget a key remembered as valid (lock held). */
static void valid_drop(relay_lease_store *st, valid_key *v)
{
    apr_hash_set(st->valid, v->hash, APR_HASH_KEY_STRING, NULL);
    apr_hash_set(st->valid_by_id, v->id, APR_HASH_KEY_STRING, NULL);
    APR_RING_REMOVE(v, link);
    if (v->changed) {
        st->valid_changed--;
    }
    free(v->expires);
    free(v);
}

/* Forget a hash Redis reported unusable: unknown, disabled, expired, bad (lock held). */
static void valid_forget(relay_lease_store *st, const char *hash)
{
    valid_key *v = apr_hash_get(st->valid, hash, APR_HASH_KEY_STRING);

    if (v) {
        valid_drop(st, v);
    }
}

/* Give an entry a new expiresAt; returns 0 (entry dropped) when out of memory (lock held). */
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

/*
 * This child admitted a key Redis read as valid and active (lock held).
 * epoch: st->epoch when the batch that read it was sent. A change Redis
 * reported after that may be newer than what it read: then an entry stays
 * marked changed, and a key not remembered yet is not added (its change
 * could not be told apart from another key's).
 */
static void valid_admitted(relay_lease_store *st, const char *hash, const char *id,
                           const char *expires, unsigned long epoch)
{
    valid_key *v = apr_hash_get(st->valid, hash, APR_HASH_KEY_STRING), *other;
    size_t hl = strlen(hash) + 1, il = strlen(id) + 1;

    if (v && strcmp(v->id, id) != 0) {
        /* the hash now names another key: start afresh */
        valid_drop(st, v);
        v = NULL;
    }
    if (v) {
        if (v->changed) {
            if (v->changed_at > epoch) {
                return;
            }
            v->changed = 0;
            st->valid_changed--;
        }
        if (valid_set_expires(st, v, expires)) {
            v->admitted = apr_time_now();
            APR_RING_REMOVE(v, link);
            APR_RING_INSERT_TAIL(&st->valid_order, v, valid_key, link);
        }
        return;
    }
    if (st->epoch != epoch) {
        return;
    }
    if ((other = apr_hash_get(st->valid_by_id, id, APR_HASH_KEY_STRING))) {
        /* the key's hash was replaced: the old one is no longer valid */
        valid_drop(st, other);
    }
    if (apr_hash_count(st->valid) >= VALID_MAX) {
        valid_drop(st, APR_RING_FIRST(&st->valid_order));
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
    v->admitted = apr_time_now();
    APR_RING_INSERT_TAIL(&st->valid_order, v, valid_key, link);
    apr_hash_set(st->valid, v->hash, APR_HASH_KEY_STRING, v);
    apr_hash_set(st->valid_by_id, v->id, APR_HASH_KEY_STRING, v);
}

/* Redis reported a remembered key changed: not valid until read again (lock held). */
static void valid_mark(relay_lease_store *st, valid_key *v)
{
    if (!v->changed) {
        v->changed = 1;
        st->valid_changed++;
    }
    v->changed_at = st->epoch;
}

/* Every remembered key may have changed: a flush, or changes we could not hear (lock held). */
static void valid_mark_all(relay_lease_store *st)
{
    valid_key *v;

    for (v = APR_RING_FIRST(&st->valid_order);
         v != APR_RING_SENTINEL(&st->valid_order, valid_key, link); v = APR_RING_NEXT(v, link)) {
        valid_mark(st, v);
    }
}

/* Drop the keys last admitted longer ago than anyone may ask about (lock held). */
static void valid_expire(relay_lease_store *st, apr_time_t now)
{
    while (!APR_RING_EMPTY(&st->valid_order, valid_key, link)) {
        valid_key *v = APR_RING_FIRST(&st->valid_order);

        if (v->admitted + apr_time_from_msec(RELAY_LEASE_VALID_KEEP_MS) >= now) {
            break;
        }
        valid_drop(st, v);
    }
}

/* Free every remembered key when the child's pool goes. */
static apr_status_t valid_free_all(void *data)
{
    relay_lease_store *st = data;

    while (!APR_RING_EMPTY(&st->valid_order, valid_key, link)) {
        valid_drop(st, APR_RING_FIRST(&st->valid_order));
    }
    return APR_SUCCESS;
}

/* Forget a key if cached, giving back its kept slots (lock held). */
static void known_forget(relay_lease_store *st, const char *hash)
{
    known_key *f = apr_hash_get(st->known, hash, APR_HASH_KEY_STRING);

    if (f) {
        known_drop(st, f);
    }
}

apr_status_t relay_lease_store_create(relay_lease_store **out, relay_redis_pool *pool,
                                      int lease_seconds, int reuse_ms, apr_pool_t *pchild)
{
    relay_lease_store *st = apr_pcalloc(pchild, sizeof(*st));
    unsigned char rnd[8];
    apr_status_t rv;

    if (!apr_atomic_read32(&scripts_ready)) {
        relay_script_init(&batch_script, "admit/release", batch_lua);
        relay_script_init(&renew_script, "renew", renew_lua);
        relay_script_init(&check_script, "recheck", check_lua);
        apr_atomic_set32(&scripts_ready, 1);
    }
    st->redis = pool;
    st->lease_ms = lease_seconds * 1000;
    st->reuse = apr_time_from_msec(reuse_ms);
    if ((rv = apr_generate_random_bytes(rnd, sizeof(rnd))) != APR_SUCCESS) {
        return rv;
    }
    relay_hex(rnd, sizeof(rnd), st->prefix);
    if ((rv = apr_thread_mutex_create(&st->lock, APR_THREAD_MUTEX_DEFAULT, pchild)) !=
        APR_SUCCESS) {
        return rv;
    }
    if ((rv = apr_thread_cond_create(&st->wake, pchild)) != APR_SUCCESS ||
        (rv = apr_thread_cond_create(&st->tracker_wake, pchild)) != APR_SUCCESS) {
        return rv;
    }
    APR_RING_INIT(&st->ring, relay_lease, link);
    APR_RING_INIT(&st->queue, lease_op, link);
    APR_RING_INIT(&st->idle_keys, known_key, link);
    APR_RING_INIT(&st->valid_order, valid_key, link);
    if ((rv = own_pool(&st->cache_pool, pchild)) != APR_SUCCESS ||
        (rv = own_pool(&st->batch_pool, pchild)) != APR_SUCCESS ||
        (rv = own_pool(&st->usage_pool, pchild)) != APR_SUCCESS ||
        (rv = own_pool(&st->known_pool, pchild)) != APR_SUCCESS ||
        (rv = own_pool(&st->valid_pool, pchild)) != APR_SUCCESS) {
        return rv;
    }
    st->usage = apr_hash_make(st->usage_pool);
    st->id_cache = apr_hash_make(st->cache_pool);
    st->known = apr_hash_make(st->known_pool);
    st->known_by_id = apr_hash_make(st->known_pool);
    st->valid = apr_hash_make(st->valid_pool);
    st->valid_by_id = apr_hash_make(st->valid_pool);
    /* registered after valid_pool, so it runs before that pool goes */
    apr_pool_cleanup_register(pchild, st, valid_free_all, apr_pool_cleanup_null);
    st->target = relay_redis_pool_target(pool);
    *out = st;
    return APR_SUCCESS;
}

/* The cached id of a key hash, copied into p, or NULL. */
static const char *cache_get(relay_lease_store *st, const char *hash, apr_pool_t *p)
{
    const char *id;

    apr_thread_mutex_lock(st->lock);
    id = apr_hash_get(st->id_cache, hash, APR_HASH_KEY_STRING);
    if (id) {
        id = apr_pstrdup(p, id);
    }
    apr_thread_mutex_unlock(st->lock);
    return id;
}

/* Remember hash -> id; an id never changes for a hash, only disappears. */
static void cache_put(relay_lease_store *st, const char *hash, const char *id)
{
    apr_thread_mutex_lock(st->lock);
    if (apr_hash_count(st->id_cache) >= ID_CACHE_MAX) {
        apr_pool_clear(st->cache_pool);
        st->id_cache = apr_hash_make(st->cache_pool);
    }
    apr_hash_set(st->id_cache, apr_pstrdup(st->cache_pool, hash), APR_HASH_KEY_STRING,
                 apr_pstrdup(st->cache_pool, id));
    apr_thread_mutex_unlock(st->lock);
}

/* Forget a hash whose key was deleted. */
static void cache_drop(relay_lease_store *st, const char *hash)
{
    apr_thread_mutex_lock(st->lock);
    apr_hash_set(st->id_cache, hash, APR_HASH_KEY_STRING, NULL);
    apr_thread_mutex_unlock(st->lock);
}

/* Now as the ISO-8601 text stored in key hashes. */
static const char *now_iso(apr_pool_t *p)
{
    apr_time_t now = apr_time_now();
    char *buf = apr_palloc(p, RELAY_ISO_LEN + 1);

    relay_iso8601((time_t)apr_time_sec(now), (int)(apr_time_usec(now) / 1000), buf);
    return buf;
}

/* Read an integer element of a script's array reply. */
static long long reply_int(const redisReply *rep, size_t i)
{
    const redisReply *e;

    if (rep->type != REDIS_REPLY_ARRAY || i >= rep->elements) {
        return 0;
    }
    e = rep->element[i];
    if (e->type == REDIS_REPLY_INTEGER) {
        return e->integer;
    }
    if (e->type == REDIS_REPLY_STRING) {
        return strtoll(e->str, NULL, 10);
    }
    return 0;
}

/*
 * A string element of an array reply, fit for a log line: printable ASCII
 * is kept, any other byte written as \xHH, and long text cut (a record in
 * Redis may hold anything).
 */
static const char *reply_text(const redisReply *rep, size_t i, apr_pool_t *p)
{
    const redisReply *e;
    char *out, *o;
    size_t j, n;

    if (rep->type != REDIS_REPLY_ARRAY || i >= rep->elements ||
        rep->element[i]->type != REDIS_REPLY_STRING) {
        return "";
    }
    e = rep->element[i];
    n = e->len > 120 ? 120 : e->len;
    out = o = apr_palloc(p, n * 4 + 4);
    for (j = 0; j < n; j++) {
        unsigned char c = (unsigned char)e->str[j];

        if (c >= 0x20 && c < 0x7f && c != '\\') {
            *o++ = (char)c;
        }
        else {
            o += apr_snprintf(o, 5, "\\x%02x", c);
        }
    }
    if (n < e->len) {
        memcpy(o, "...", 3);
        o += 3;
    }
    *o = '\0';
    return out;
}

/*
 * An admission the script refused because a record of its key is bad (code
 * -3): the key's id and the sentence for the log, from the requester's pool.
 */
static void bad_record(lease_op *op, const redisReply *e)
{
    const char *who, *bad;

    op->found_id = e->element[5]->type == REDIS_REPLY_STRING && e->element[5]->len
                       ? apr_pstrndup(op->p, e->element[5]->str, e->element[5]->len)
                       : NULL;
    who = op->found_id ? reply_text(e, 5, op->p)
                       : apr_psprintf(op->p, "with hash prefix %.8s", op->hash);
    bad = reply_text(e, 7, op->p);
    if (bad[0]) {
        op->error = apr_psprintf(op->p,
                                 "key %s: the Redis key %s has the wrong type or content (%s); "
                                 "only this key is refused until that record is fixed or deleted",
                                 who, bad, reply_text(e, 8, op->p));
    }
    else {
        op->error = apr_psprintf(op->p,
                                 "key %s: the admission script failed on it (%s); only this key "
                                 "is refused",
                                 who, reply_text(e, 8, op->p));
    }
}

/* Usage of one key and model, summed over requests. */
typedef struct {
    const char *id;
    relay_usage_counts c;              /* c.model is "" when none */
    long long requests;
} usage_entry;

/* Add the usage of `requests` requests to the sums in h (entries from p). */
static void usage_sum(apr_hash_t *h, apr_pool_t *p, const char *id,
                      const relay_usage_counts *u, long long requests)
{
    const char *model = u->model ? u->model : "";
    const char *k = apr_pstrcat(p, id, " ", model, NULL);
    usage_entry *e = apr_hash_get(h, k, APR_HASH_KEY_STRING);

    if (!e) {
        e = apr_pcalloc(p, sizeof(*e));
        e->id = apr_pstrdup(p, id);
        e->c.model = apr_pstrdup(p, model);
        apr_hash_set(h, k, APR_HASH_KEY_STRING, e);
    }
    e->c.input += u->input;
    e->c.output += u->output;
    e->c.cache_create += u->cache_create;
    e->c.cache_read += u->cache_read;
    e->requests += requests;
}

/* Add a lease member to its key's group in h, keeping the ids in order. */
static void add_to_group(apr_hash_t *h, apr_array_header_t *order, const char *id,
                         const char *member, apr_pool_t *p)
{
    apr_array_header_t *members = apr_hash_get(h, id, APR_HASH_KEY_STRING);

    if (!members) {
        members = apr_array_make(p, 4, sizeof(const char *));
        apr_hash_set(h, id, APR_HASH_KEY_STRING, members);
        APR_ARRAY_PUSH(order, const char *) = id;
    }
    APR_ARRAY_PUSH(members, const char *) = member;
}

#define PUSH_ARG(a, v) (APR_ARRAY_PUSH((a), const char *) = (v))

/* Push groups as the script reads them: count, then per key id, M, members. */
static void push_groups(apr_array_header_t *args, apr_hash_t *h, apr_array_header_t *order,
                        apr_pool_t *p)
{
    int i, j;

    PUSH_ARG(args, apr_itoa(p, order->nelts));
    for (i = 0; i < order->nelts; i++) {
        const char *id = APR_ARRAY_IDX(order, i, const char *);
        apr_array_header_t *members = apr_hash_get(h, id, APR_HASH_KEY_STRING);

        PUSH_ARG(args, id);
        PUSH_ARG(args, apr_itoa(p, members->nelts));
        for (j = 0; j < members->nelts; j++) {
            PUSH_ARG(args, APR_ARRAY_IDX(members, j, const char *));
        }
    }
}

/*
 * Send one batch in one script call and put the results into its
 * admissions; release entries are freed. with_usage: also write the usage
 * summed since the last write. Runs without the store's lock, in the one
 * thread leading now (which alone touches st->usage).
 */
static int run_batch(relay_lease_store *st, struct op_ring *batch, int with_usage)
{
    apr_pool_t *p = st->batch_pool;
    apr_hash_t *groups = apr_hash_make(p);        /* id -> array of members */
    apr_hash_t *adds = apr_hash_make(p);          /* id -> array of members */
    apr_array_header_t *add_order = apr_array_make(p, 4, sizeof(const char *));
    apr_hash_t *now_usage = apr_hash_make(p);     /* usage written in this batch */
    apr_array_header_t *args = apr_array_make(p, 32, sizeof(const char *));
    apr_array_header_t *order = apr_array_make(p, 4, sizeof(const char *));
    const char *now = now_iso(p), *err = NULL;
    const char *day = apr_pstrndup(p, now, 10), *month = apr_pstrndup(p, now, 7);
    relay_redis_conn *c;
    redisReply *rep = NULL;
    apr_hash_index_t *hi;
    lease_op *op, *next;
    int i, nadmit = 0, nrelease = 0, nusage = 0, written = 0;
    size_t a;

    PUSH_ARG(args, apr_itoa(p, st->lease_ms));
    PUSH_ARG(args, now);
    for (op = APR_RING_FIRST(batch); op != APR_RING_SENTINEL(batch, lease_op, link);
         op = APR_RING_NEXT(op, link)) {
        if (op->admit) {
            nadmit++;
            continue;
        }
        if (op->add) {
            add_to_group(adds, add_order, op->id, op->member, p);
            nrelease++;
            continue;
        }
        if (!op->member) {
            /* a lease that never reached Redis: only its usage */
            usage_sum(st->usage, st->usage_pool, op->id, &op->usage, 1);
            continue;
        }
        nrelease++;
        add_to_group(groups, order, op->id, op->member, p);
        /* a token limit needs the usage now; the rest is summed and written later */
        if (op->kept) {
            /* a kept slot given back: its requests were counted already */
        }
        else if (op->token_limited) {
            usage_sum(now_usage, p, op->id, &op->usage, 1);
        }
        else {
            usage_sum(st->usage, st->usage_pool, op->id, &op->usage, 1);
        }
    }
    push_groups(args, groups, order, p);
    push_groups(args, adds, add_order, p);
    if (with_usage) {
        /* the sums so far join this batch's (copied: st->usage is emptied) */
        for (hi = apr_hash_first(p, st->usage); hi; hi = apr_hash_next(hi)) {
            const usage_entry *e = apr_hash_this_val(hi);

            usage_sum(now_usage, p, e->id, &e->c, e->requests);
        }
        apr_pool_clear(st->usage_pool);
        st->usage = apr_hash_make(st->usage_pool);
    }
    /* usage grouped by key id */
    {
        apr_hash_t *by_id = apr_hash_make(p);
        apr_array_header_t *ids = apr_array_make(p, 4, sizeof(const char *));

        for (hi = apr_hash_first(p, now_usage); hi; hi = apr_hash_next(hi)) {
            usage_entry *e = apr_hash_this_val(hi);
            apr_array_header_t *list = apr_hash_get(by_id, e->id, APR_HASH_KEY_STRING);

            if (!list) {
                list = apr_array_make(p, 2, sizeof(usage_entry *));
                apr_hash_set(by_id, e->id, APR_HASH_KEY_STRING, list);
                APR_ARRAY_PUSH(ids, const char *) = e->id;
            }
            APR_ARRAY_PUSH(list, usage_entry *) = e;
            nusage += (int)e->requests;
        }
        PUSH_ARG(args, apr_itoa(p, ids->nelts));
        for (i = 0; i < ids->nelts; i++) {
            const char *id = APR_ARRAY_IDX(ids, i, const char *);
            apr_array_header_t *list = apr_hash_get(by_id, id, APR_HASH_KEY_STRING);
            int j;

            PUSH_ARG(args, id);
            PUSH_ARG(args, apr_itoa(p, list->nelts));
            for (j = 0; j < list->nelts; j++) {
                const usage_entry *e = APR_ARRAY_IDX(list, j, usage_entry *);

                PUSH_ARG(args, day);
                PUSH_ARG(args, month);
                PUSH_ARG(args, e->c.model);
                PUSH_ARG(args, apr_psprintf(p, "%" APR_INT64_T_FMT, (apr_int64_t)e->c.input));
                PUSH_ARG(args, apr_psprintf(p, "%" APR_INT64_T_FMT, (apr_int64_t)e->c.output));
                PUSH_ARG(args,
                         apr_psprintf(p, "%" APR_INT64_T_FMT, (apr_int64_t)e->c.cache_create));
                PUSH_ARG(args,
                         apr_psprintf(p, "%" APR_INT64_T_FMT, (apr_int64_t)e->c.cache_read));
                PUSH_ARG(args, apr_psprintf(p, "%" APR_INT64_T_FMT, (apr_int64_t)e->requests));
            }
        }
        written = ids->nelts;
    }
    PUSH_ARG(args, apr_itoa(p, nadmit));
    for (op = APR_RING_FIRST(batch); op != APR_RING_SENTINEL(batch, lease_op, link);
         op = APR_RING_NEXT(op, link)) {
        if (op->admit) {
            PUSH_ARG(args, op->hash);
            PUSH_ARG(args, op->id ? op->id : "");
            PUSH_ARG(args, op->member);
        }
    }

    if (nadmit || nrelease || written) {
        c = relay_redis_acquire(st->redis, p, &err);
        if (c) {
            rep = relay_redis_script(c, &batch_script, 0, NULL, args->nelts,
                                     (const char *const *)args->elts, p, &err);
            relay_redis_release(st->redis, c);
        }
        if (rep && (rep->type != REDIS_REPLY_ARRAY || rep->elements < (size_t)nadmit)) {
            err = "unexpected reply from the admit/release script";
            freeReplyObject(rep);
            rep = NULL;
        }
        if (!rep && (nrelease || nusage) && st->log) {
            st->log(st->log_baton, LEASE_LOG_WARNING,
                    apr_psprintf(p, "could not give back %d slot(s) and count the usage of %d "
                                    "request(s) now (%s); the slots expire by themselves within "
                                    "their lease, that usage is not counted",
                                 nrelease, nusage, err ? err : "unknown error"));
        }
        /* after the admissions: usage records a bad record kept from being written */
        for (a = nadmit; rep && a < rep->elements; a++) {
            const redisReply *e = rep->element[a];

            if (st->log && e->type == REDIS_REPLY_ARRAY && e->elements >= 3) {
                st->log(st->log_baton, LEASE_LOG_WARNING,
                        apr_psprintf(p, "usage of key %s not counted in %s: that Redis key has "
                                        "the wrong type or content (%s); the rest of the batch "
                                        "was written",
                                     reply_text(e, 0, p), reply_text(e, 1, p),
                                     reply_text(e, 2, p)));
            }
        }
    }

    a = 0;
    for (op = APR_RING_FIRST(batch); op != APR_RING_SENTINEL(batch, lease_op, link); op = next) {
        next = APR_RING_NEXT(op, link);
        if (!op->admit) {
            if (op->waiter) {
                /* lead() tells its caller, with the lock held */
                op->waiter->failed = !rep;
                continue;
            }
            APR_RING_REMOVE(op, link);
            free(op);
            continue;
        }
        if (!rep) {
            op->code = -99;
            op->error = apr_pstrdup(op->p, err ? err : "Redis did not answer");
            continue;
        }
        else {
            const redisReply *e = rep->element[a++];

            if (e->type != REDIS_REPLY_ARRAY || e->elements < 7) {
                op->code = -99;
                op->error = "unexpected reply from the admit/release script";
                continue;
            }
            op->code = (long)reply_int(e, 0);
            if (op->code == -3) {
                /* one of this key's records is bad: only this admission is refused */
                bad_record(op, e);
                continue;
            }
            op->current = reply_int(e, 1);
            op->limit = reply_int(e, 2);
            op->name = e->element[3]->type == REDIS_REPLY_STRING
                           ? apr_pstrndup(op->p, e->element[3]->str, e->element[3]->len)
                           : "";
            op->legacy = reply_int(e, 4) != 0;
            op->found_id = e->element[5]->type == REDIS_REPLY_STRING && e->element[5]->len
                               ? apr_pstrndup(op->p, e->element[5]->str, e->element[5]->len)
                               : NULL;
            op->token_limited = reply_int(e, 6) != 0;
            op->expires = e->elements > 7 && e->element[7]->type == REDIS_REPLY_STRING
                              ? apr_pstrndup(op->p, e->element[7]->str, e->element[7]->len)
                              : "";
        }
    }
    if (rep) {
        freeReplyObject(rep);
    }
    apr_pool_clear(p);
    return rep == NULL && (nadmit || nrelease || written);
}

/*
 * A release of a limit with room was queued (lock held): it goes within
 * RIDE_US. While such releases keep coming the keeper wakes every RIDE_US
 * anyway, so it is woken only when it sleeps longer than that.
 */
static void soon_queued(relay_lease_store *st)
{
    apr_time_t now = apr_time_now();

    st->soon_seen = now;
    if (!st->soon_since) {
        st->soon_since = now;
        if (st->keeper_wakes > now + RIDE_US) {
            apr_thread_cond_signal(st->wake);
        }
    }
}

/*
 * Send batches while this thread leads. Called with the lock held and
 * st->leading set; returns with the lock held. After its first batch a
 * request thread hands on: to the first waiting admission, or to the keeper
 * when releases a limit waits for are left. Releases no limit waits for
 * stay queued for the next batch, for at most DEFER_MS. drain: send all.
 */
static void lead(relay_lease_store *st, int keeper, int drain)
{
    for (;;) {
        struct op_ring batch;
        lease_op *op;
        int n = 0, with_usage, urgent = 0, soon = 0, failed;

        if (APR_RING_EMPTY(&st->queue, lease_op, link) && !st->usage_due) {
            st->leading = 0;
            st->deferred_since = 0;
            st->soon_since = 0;
            return;
        }
        /* take the queue, up to a bound that keeps a script call short */
        APR_RING_INIT(&batch, lease_op, link);
        while (!APR_RING_EMPTY(&st->queue, lease_op, link) && n < BATCH_MAX) {
            op = APR_RING_FIRST(&st->queue);
            APR_RING_REMOVE(op, link);
            APR_RING_INSERT_TAIL(&batch, op, lease_op, link);
            op->epoch = st->epoch;
            if (op->add) {
                /* on its way: a release from now on is sent after it */
                op->lease->add_op = NULL;
                op->lease = NULL;
            }
            n++;
        }
        if (APR_RING_EMPTY(&st->queue, lease_op, link)) {
            st->deferred_since = 0;
            st->soon_since = 0;
        }
        with_usage = st->usage_due;
        st->usage_due = 0;
        apr_thread_mutex_unlock(st->lock);
        failed = run_batch(st, &batch, with_usage);
        apr_thread_mutex_lock(st->lock);
        if (failed && st->tracking) {
            /* what Redis says of the keys is in doubt: ask it again */
            st->tracking = 0;
            st->tracker_reset = 1;
            known_clear(st);
            apr_thread_cond_signal(st->tracker_wake);
        }
        while (!APR_RING_EMPTY(&batch, lease_op, link)) {
            op = APR_RING_FIRST(&batch);
            APR_RING_REMOVE(op, link);
            if (op->waiter) {
                op->waiter->done = 1;
                apr_thread_cond_signal(op->waiter->cond);
                free(op);
                continue;
            }
            op->done = 1;
            apr_thread_cond_signal(op->cond);
        }
        if (APR_RING_EMPTY(&st->queue, lease_op, link) && !st->usage_due) {
            st->leading = 0;
            return;
        }
        for (op = APR_RING_FIRST(&st->queue); op != APR_RING_SENTINEL(&st->queue, lease_op, link);
             op = APR_RING_NEXT(op, link)) {
            if (op->admit) {
                op->promoted = 1;
                apr_thread_cond_signal(op->cond);
                return;
            }
            urgent |= op->urgent;
            soon |= op->soon;
        }
        if (urgent || st->usage_due || drain) {
            if (keeper && !st->stopping && apr_time_now() >= st->renew_due) {
                /* still leading; the keeper renews, then goes on */
                st->keeper_leads = 1;
                return;
            }
            if (keeper) {
                continue;
            }
            st->keeper_leads = 1;
            apr_thread_cond_signal(st->wake);
            return;
        }
        /* only releases no limit waits for yet: they ride on a later batch */
        st->leading = 0;
        if (soon) {
            soon_queued(st);
        }
        if (!st->deferred_since) {
            st->deferred_since = apr_time_now();
            apr_thread_cond_signal(st->wake);
        }
        return;
    }
}

/*
 * Whether a message waits on the tracking connection (lock held). Redis
 * queues a key's invalidation before it answers the command that changed
 * the key, so a change whose answer anyone has seen is already readable
 * here: until the tracker has read it, nothing is admitted from the cache.
 */
static int tracker_has_news(relay_lease_store *st)
{
    struct pollfd pfd;

    pfd.fd = st->tracker_fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    return poll(&pfd, 1, 0) != 0;
}

/*
 * Admit a request of a cached key, unchanged since Redis last said so (Redis
 * tells the tracking connection of every change), without asking Redis
 * (lock held): a key without any limit, whose lease is added to Redis with
 * the next batch, or a key with a limit, on the slot its last request left.
 * Returns 0 when out of memory.
 */
static int admit_known(relay_lease_store *st, known_key *f, const char *member, apr_pool_t *p,
                       relay_admit_result *res, relay_lease **lease_out)
{
    relay_lease *lease = apr_pcalloc(p, sizeof(*lease));

    lease->id = apr_pstrdup(p, f->id);
    lease->conc_key = apr_pstrcat(p, "concurrency:", f->id, NULL);
    if (f->limit) {
        /* the newest kept slot: the oldest ones are the first to go back */
        f->nidle--;
        st->idle_count--;
        lease->member = apr_pstrdup(p, f->idle[f->nidle].member);
        lease->limited = lease->roomy = lease->keep = 1;
        if (!f->nidle) {
            APR_RING_REMOVE(f, link);
        }
    }
    else {
        lease_op *add = release_op(f->id, member, NULL);

        if (!add) {
            return 0;
        }
        add->add = 1;
        add->lease = lease;
        lease->member = member;
        lease->add_op = add;
        APR_RING_INSERT_TAIL(&st->queue, add, lease_op, link);
        if (!st->leading && !st->deferred_since) {
            st->deferred_since = apr_time_now();
            apr_thread_cond_signal(st->wake);
        }
    }
    APR_RING_INSERT_TAIL(&st->ring, lease, relay_lease, link);
    st->live++;
    res->code = RELAY_ADMIT_OK;
    res->id = lease->id;
    res->name = "";
    res->current = 0;
    res->limit = f->limit;
    res->known = 1;
    *lease_out = lease;
    return 1;
}

relay_admit_code relay_lease_admit(relay_lease_store *st, const char *hash, apr_pool_t *p,
                                   relay_admit_result *res, relay_lease **lease_out)
{
    lease_op *op = apr_pcalloc(p, sizeof(*op));
    relay_lease *lease;
    apr_status_t rv;

    memset(res, 0, sizeof(*res));
    *lease_out = NULL;
    op->admit = 1;
    op->hash = hash;
    op->p = p;
    op->id = cache_get(st, hash, p);
    /* random per child, the pid for people reading it, a counter per request */
    op->member = apr_psprintf(p, "%s-%" APR_PID_T_FMT "-%u", st->prefix, getpid(),
                              apr_atomic_inc32(&st->counter));

    apr_thread_mutex_lock(st->lock);
    if (st->tracking) {
        known_key *f = apr_hash_get(st->known, hash, APR_HASH_KEY_STRING);

        if (f && tracker_has_news(st)) {
            /*
             * Redis has news the tracker has not read: perhaps of this key.
             * Its kept slots go back first, so that Redis counts only the
             * requests in flight when it decides under what it now holds.
             */
            if (f->nidle) {
                idle_give_back(st, f, f->nidle);
            }
        }
        else if (f && (!f->expires[0] || strcmp(f->expires, now_iso(p)) >= 0) &&
                 (!f->limit || f->nidle)) {
            if (admit_known(st, f, op->member, p, res, lease_out)) {
                /* unchanged since Redis read it valid: as good as its word now */
                valid_admitted(st, hash, f->id, f->expires, st->epoch);
                apr_thread_mutex_unlock(st->lock);
                return res->code;
            }
        }
    }

    /* join the queue; lead a batch if nobody does, else wait for one */
    if ((rv = apr_thread_cond_create(&op->cond, p)) != APR_SUCCESS) {
        apr_thread_mutex_unlock(st->lock);
        res->code = RELAY_ADMIT_ERROR;
        res->error = "cannot create a condition variable";
        return res->code;
    }
    APR_RING_INSERT_TAIL(&st->queue, op, lease_op, link);
    if (!st->leading) {
        st->leading = 1;
        lead(st, 0, 0);
    }
    while (!op->done) {
        if (op->promoted) {
            op->promoted = 0;
            lead(st, 0, 0);
            continue;
        }
        apr_thread_cond_wait(op->cond, st->lock);
    }
    apr_thread_mutex_unlock(st->lock);

    if (op->code == -99) {
        res->code = RELAY_ADMIT_ERROR;
        res->error = op->error;
        return res->code;
    }
    res->id = op->found_id;
    res->current = op->current;
    res->limit = op->limit;
    res->name = op->name ? op->name : "";
    res->legacy_replaced = op->legacy;

    switch (op->code) {
    case 1:
        res->code = RELAY_ADMIT_OK;
        if (!op->id && op->found_id) {
            cache_put(st, hash, op->found_id);
        }
        lease = apr_pcalloc(p, sizeof(*lease));
        lease->id = op->found_id;
        lease->conc_key = apr_pstrcat(p, "concurrency:", op->found_id, NULL);
        lease->member = op->member;
        lease->limited = op->limit > 0;
        lease->roomy = lease->limited && op->current * 2 <= op->limit;
        lease->token_limited = op->token_limited;
        lease->keep = st->reuse > 0 && lease->limited && !lease->token_limited &&
                      op->limit >= REUSE_MIN_LIMIT && op->current * 4 <= op->limit;
        apr_thread_mutex_lock(st->lock);
        /*
         * Nothing changed since Redis said so: cache a key without any limit,
         * or one whose slots may be kept; a key busier than that keeps none.
         */
        if (op->found_id) {
            valid_admitted(st, hash, op->found_id, op->expires ? op->expires : "", op->epoch);
        }
        if ((lease->keep || (!lease->limited && !lease->token_limited)) && st->tracking &&
            st->epoch == op->epoch) {
            known_put(st, hash, op->found_id, op->expires ? op->expires : "", op->limit);
        }
        else if (lease->limited) {
            known_forget(st, hash);
        }
        APR_RING_INSERT_TAIL(&st->ring, lease, relay_lease, link);
        st->live++;
        apr_thread_mutex_unlock(st->lock);
        *lease_out = lease;
        break;
    case 2:
    case 3:
        res->code = op->code == 2 ? RELAY_ADMIT_LIMITED : RELAY_ADMIT_TOKENS;
        if (!op->id && op->found_id) {
            cache_put(st, hash, op->found_id);
        }
        apr_thread_mutex_lock(st->lock);
        known_forget(st, hash);
        apr_thread_mutex_unlock(st->lock);
        break;
    case -1:
        res->code = RELAY_ADMIT_DISABLED;
        break;
    case -2:
        res->code = RELAY_ADMIT_EXPIRED;
        break;
    case -3:
        /* a record of this key is bad (the sentence names it); other keys go on */
        res->code = RELAY_ADMIT_ERROR;
        res->error = op->error;
        res->record_bad = 1;
        break;
    default:
        /* the key was deleted (or never matched): forget what we cached */
        if (op->id) {
            cache_drop(st, hash);
        }
        res->id = NULL;
        res->code = RELAY_ADMIT_NOT_FOUND;
        break;
    }
    if (res->code != RELAY_ADMIT_OK && res->code != RELAY_ADMIT_LIMITED) {
        /*
         * Redis just said this hash is not usable; and one over its token
         * limit would go uncounted in an outage: neither is vouched for
         */
        apr_thread_mutex_lock(st->lock);
        known_forget(st, hash);
        valid_forget(st, hash);
        apr_thread_mutex_unlock(st->lock);
    }
    return res->code;
}

/*
 * Keep the slot of a finished request for the next request of its key
 * (lock held): only while its key is cached, so unchanged since its lease
 * was taken with the key at a quarter of its limit or less. Returns 0 when
 * the slot must go back.
 */
static int keep_slot(relay_lease_store *st, const relay_lease *lease)
{
    known_key *f;
    apr_time_t now;

    if (!lease->keep || !st->tracking || st->stopping ||
        !(f = apr_hash_get(st->known_by_id, lease->id, APR_HASH_KEY_STRING)) || !f->limit ||
        strlen(lease->member) >= sizeof(f->idle->member)) {
        return 0;
    }
    if (f->nidle == f->cap) {
        int cap = f->cap ? f->cap * 2 : 4;
        idle_slot *idle = realloc(f->idle, sizeof(*idle) * (size_t)cap);

        if (!idle) {
            return 0;
        }
        f->idle = idle;
        f->cap = cap;
    }
    now = apr_time_now();
    strcpy(f->idle[f->nidle].member, lease->member);
    f->idle[f->nidle].since = now;
    if (!f->nidle++) {
        APR_RING_INSERT_TAIL(&st->idle_keys, f, known_key, link);
    }
    if (!st->idle_count++ && st->keeper_wakes > now + st->reuse) {
        /* the keeper gives back slots kept too long: it must wake in time */
        apr_thread_cond_signal(st->wake);
    }
    return 1;
}

static void queue_release(relay_lease_store *st, lease_op *op)
{
    /*
     * A limit waits for it: if no batch is under way the keeper sends it
     * now. Otherwise it rides on the next batch, within RIDE_US or DEFER_MS.
     */
    APR_RING_INSERT_TAIL(&st->queue, op, lease_op, link);
    if (!st->leading) {
        if (op->urgent) {
            st->leading = 1;
            st->keeper_leads = 1;
            apr_thread_cond_signal(st->wake);
        }
        else if (op->soon) {
            soon_queued(st);
        }
        else if (!st->deferred_since) {
            st->deferred_since = apr_time_now();
            apr_thread_cond_signal(st->wake);
        }
    }
}

/*
 * Give a lease back (lock held). With a waiter, a release that a limit
 * counts goes out now and the waiter is told when it is in Redis; without
 * one the release is scheduled as relay_lease_release says. Returns the
 * queued op that carries a waiter, or NULL when there is nothing to wait for.
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
    st->live--;
    if (lease->add_op) {
        /* its lease never reached Redis: drop both; only the usage is sent */
        lease_op *add = lease->add_op;

        APR_RING_REMOVE(add, link);
        lease->add_op = NULL;
        free(add);
        sent = 0;
    }
    else if (keep_slot(st, lease)) {
        /* the slot stays taken, for the next request: only the usage is sent */
        sent = 0;
    }

    /* one block: the request and its pool are gone when this is sent */
    op = release_op(lease->id, sent ? lease->member : NULL, usage);
    if (!op) {
        *err = "out of memory";
        return NULL;
    }
    /*
     * A token limit needs its usage now, and a concurrency limit its slot,
     * unless the key had room to spare: then the release rides on the next
     * admission, within RIDE_US, sparing a call of its own.
     */
    op->token_limited = lease->token_limited;
    op->urgent = (lease->limited && !lease->roomy && sent) || lease->token_limited;
    op->soon = lease->limited && sent && !op->urgent;
    if (waiter && ((lease->limited && sent) || lease->token_limited)) {
        /* a limit counts it: in Redis before the caller goes on */
        op->urgent = 1;
        op->soon = 0;
        op->waiter = waiter;
    }
    if (!op->token_limited) {
        st->usage_pending = 1;
    }
    if (op->waiter) {
        /* its caller sends it (relay_lease_release_sent), or rides on a batch under way */
        APR_RING_INSERT_TAIL(&st->queue, op, lease_op, link);
        return op;
    }
    queue_release(st, op);
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
                                      const relay_usage_counts *usage, apr_pool_t *p,
                                      const char **err)
{
    struct release_waiter w;
    const char *why = NULL;
    apr_status_t rv;

    memset(&w, 0, sizeof(w));
    if ((rv = apr_thread_cond_create(&w.cond, p)) != APR_SUCCESS) {
        /* cannot wait: give it back the ordinary way */
        return relay_lease_release(st, lease, usage, err);
    }
    apr_thread_mutex_lock(st->lock);
    if (!give_back(st, lease, usage, &w, &why)) {
        apr_thread_mutex_unlock(st->lock);
        apr_thread_cond_destroy(w.cond);
        if (why) {
            *err = why;
            return APR_ENOMEM;
        }
        return APR_SUCCESS;
    }
    /* lead a batch if nobody does; else the leader's next batch carries it */
    if (!st->leading) {
        st->leading = 1;
        lead(st, 0, 0);
    }
    while (!w.done) {
        apr_thread_cond_wait(w.cond, st->lock);
    }
    apr_thread_mutex_unlock(st->lock);
    apr_thread_cond_destroy(w.cond);
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
    return st->redis;
}

int relay_lease_live_count(relay_lease_store *st)
{
    int n;

    apr_thread_mutex_lock(st->lock);
    n = st->live;
    apr_thread_mutex_unlock(st->lock);
    return n;
}

int relay_lease_recently_valid(relay_lease_store *st, const char *hash, apr_int64_t max_age_ms,
                               apr_pool_t *p, const char **id)
{
    const char *now = now_iso(p);
    apr_time_t t = apr_time_now();
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
    v = apr_hash_get(st->valid, hash, APR_HASH_KEY_STRING);
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

/*
 * Read again the remembered keys Redis reported changed, newest admission
 * first (lock held; released during the call). Returns 0 when Redis did not
 * answer.
 */
static int valid_recheck(relay_lease_store *st, apr_pool_t *p)
{
    unsigned long epoch = st->epoch;
    const char **args, *err = NULL;
    relay_redis_conn *c;
    redisReply *rep = NULL;
    valid_key *v;
    int n = 0, i;

    valid_expire(st, apr_time_now());
    args = apr_palloc(p, sizeof(*args) * (1 + 2 * VALID_RECHECK_MAX));
    args[0] = now_iso(p);
    for (v = APR_RING_LAST(&st->valid_order);
         v != APR_RING_SENTINEL(&st->valid_order, valid_key, link) && n < VALID_RECHECK_MAX;
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
    if ((c = relay_redis_acquire(st->redis, p, &err))) {
        rep = relay_redis_script(c, &check_script, 0, NULL, 1 + 2 * n, args, p, &err);
        relay_redis_release(st->redis, c);
    }
    apr_thread_mutex_lock(st->lock);
    if (!rep) {
        return 0;
    }
    for (i = 0; rep->type == REDIS_REPLY_ARRAY && i < n && (size_t)i < rep->elements; i++) {
        const redisReply *e = rep->element[i];

        v = apr_hash_get(st->valid, args[1 + 2 * i], APR_HASH_KEY_STRING);
        /* a change reported after the read may be newer than what was read */
        if (!v || !v->changed || v->changed_at > epoch || strcmp(v->id, args[2 + 2 * i]) != 0) {
            continue;
        }
        if (reply_int(e, 0) == 1 && e->elements >= 2 &&
            e->element[1]->type == REDIS_REPLY_STRING) {
            if (valid_set_expires(st, v, e->element[1]->str)) {
                v->changed = 0;
                st->valid_changed--;
            }
        }
        else {
            valid_drop(st, v);
        }
    }
    freeReplyObject(rep);
    return 1;
}

/*
 * Renew a snapshot of live leases in batches; returns the first error or
 * NULL. The members Redis no longer had are set to NULL in members[].
 */
static const char *renew_snapshot(relay_lease_store *st, const char **keys, const char **members,
                                  int n, apr_pool_t *p)
{
    const char *err = NULL;
    relay_redis_conn *c = relay_redis_acquire(st->redis, p, &err);
    int off = 0;

    if (!c) {
        return err;
    }
    while (off < n) {
        int k = n - off > RENEW_BATCH ? RENEW_BATCH : n - off, i;
        const char **args = apr_palloc(p, sizeof(*args) * (k + 1));
        redisReply *rep;

        args[0] = apr_itoa(p, st->lease_ms);
        for (i = 0; i < k; i++) {
            args[i + 1] = members[off + i];
        }
        rep = relay_redis_script(c, &renew_script, k, keys + off, k + 1, args, p, &err);
        if (!rep) {
            break;
        }
        if (rep->type == REDIS_REPLY_ARRAY) {
            size_t j;

            for (j = 0; j < rep->elements; j++) {
                long long at = rep->element[j]->integer;

                if (rep->element[j]->type == REDIS_REPLY_INTEGER && at >= 1 && at <= k) {
                    members[off + at - 1] = NULL;
                }
            }
        }
        freeReplyObject(rep);
        off += k;
    }
    relay_redis_release(st->redis, c);
    return off < n ? err : NULL;
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
            for (l = APR_RING_FIRST(&st->ring);
                 l != APR_RING_SENTINEL(&st->ring, relay_lease, link);
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
    if (lost && st->log) {
        st->log(st->log_baton, LEASE_LOG_WARNING,
                apr_psprintf(p, "%d lease(s) of running requests were gone from Redis when "
                                "renewed (first: %s), so those requests no longer count "
                                "against their limit; RelayLeaseSeconds %d may be too short "
                                "for this load, or Redis lost its data",
                             lost, first, (int)(st->lease_ms / 1000)));
    }
}

/*
 * Give back the slots kept longer than RelayReuseSlots (lock held). Returns
 * when the next kept slot is due, or 0 when none is kept.
 */
static apr_time_t idle_expire(relay_lease_store *st, apr_time_t now)
{
    known_key *f, *next;
    apr_time_t due = 0;

    for (f = APR_RING_FIRST(&st->idle_keys); f != APR_RING_SENTINEL(&st->idle_keys, known_key, link);
         f = next) {
        int n = 0;

        next = APR_RING_NEXT(f, link);
        while (n < f->nidle && f->idle[n].since + st->reuse <= now) {
            n++;
        }
        if (n) {
            idle_give_back(st, f, n);
        }
        if (f->nidle && (!due || f->idle[0].since + st->reuse < due)) {
            due = f->idle[0].since + st->reuse;
        }
    }
    return due;
}

/* A kept slot Redis no longer had (expired, or data lost): forget it (lock held). */
static void idle_lost(relay_lease_store *st, const char *id, const char *member)
{
    known_key *f = apr_hash_get(st->known_by_id, id, APR_HASH_KEY_STRING);
    int i;

    for (i = 0; f && i < f->nidle; i++) {
        if (strcmp(f->idle[i].member, member) == 0) {
            if (f->nidle - i - 1 > 0) {
                memmove(f->idle + i, f->idle + i + 1,
                        sizeof(*f->idle) * (size_t)(f->nidle - i - 1));
            }
            st->idle_count--;
            if (!--f->nidle) {
                APR_RING_REMOVE(f, link);
            }
            return;
        }
    }
}

/*
 * The keeper: sends the releases a limit waits for when no batch is under
 * way, those of limits with room within RIDE_US, the others within
 * DEFER_MS, the summed usage every USAGE_EVERY_MS,
 * and every third of a lease renews all live leases of this child in one
 * call.
 */
static void *APR_THREAD_FUNC keeper_main(apr_thread_t *thd, void *data)
{
    relay_lease_store *st = data;
    apr_interval_time_t every = apr_time_from_msec(st->lease_ms / 3);
    apr_time_t next_renewal, next_usage;
    apr_pool_t *p;

    if (every < apr_time_from_msec(200)) {
        every = apr_time_from_msec(200);
    }
    if (apr_pool_create(&p, NULL) != APR_SUCCESS) {
        apr_thread_exit(thd, APR_ENOMEM);
        return NULL;
    }
    next_renewal = apr_time_now() + every;
    next_usage = apr_time_now() + apr_time_from_msec(USAGE_EVERY_MS);
    apr_thread_mutex_lock(st->lock);
    for (;;) {
        apr_time_t now = apr_time_now(), until, idle_due;

        /* renewal first: a steady stream of releases must not starve it */
        st->renew_due = next_renewal;
        if (now >= next_renewal && !st->stopping) {
            next_renewal = now + every;
            if (st->live > 0 || st->idle_count > 0) {
                relay_lease *l;
                known_key *f;
                const char **keys, **members, **was, *err;
                int n = 0, nlive, i;

                apr_pool_clear(p);
                keys = apr_palloc(p, sizeof(*keys) * (st->live + st->idle_count));
                members = apr_palloc(p, sizeof(*members) * (st->live + st->idle_count));
                was = apr_palloc(p, sizeof(*was) * (st->live + st->idle_count));
                for (l = APR_RING_FIRST(&st->ring);
                     l != APR_RING_SENTINEL(&st->ring, relay_lease, link);
                     l = APR_RING_NEXT(l, link)) {
                    if (l->add_op) {
                        continue;    /* not in Redis yet; its add sets the expiry */
                    }
                    keys[n] = apr_pstrdup(p, l->conc_key);
                    members[n] = was[n] = apr_pstrdup(p, l->member);
                    n++;
                }
                nlive = n;
                for (f = APR_RING_FIRST(&st->idle_keys);
                     f != APR_RING_SENTINEL(&st->idle_keys, known_key, link);
                     f = APR_RING_NEXT(f, link)) {
                    for (i = 0; i < f->nidle; i++) {
                        keys[n] = apr_pstrcat(p, "concurrency:", f->id, NULL);
                        members[n] = was[n] = apr_pstrdup(p, f->idle[i].member);
                        n++;
                    }
                }
                apr_thread_mutex_unlock(st->lock);
                err = renew_snapshot(st, keys, members, n, p);
                if (err && st->log) {
                    st->log(st->log_baton, LEASE_LOG_WARNING,
                            apr_psprintf(p, "cannot renew %d lease(s); they expire unless Redis "
                                            "answers again soon: %s", n, err));
                }
                apr_thread_mutex_lock(st->lock);
                report_lost(st, keys, members, was, nlive, p);
                for (i = nlive; i < n; i++) {
                    if (!members[i]) {
                        idle_lost(st, keys[i] + sizeof("concurrency:") - 1, was[i]);
                    }
                }
            }
            continue;
        }
        idle_due = idle_expire(st, now);
        if (st->keeper_leads) {
            st->keeper_leads = 0;
            lead(st, 1, 0);
            continue;
        }
        if (st->stopping) {
            break;
        }
        if (now >= next_usage) {
            next_usage = now + apr_time_from_msec(USAGE_EVERY_MS);
            if (st->usage_pending) {
                st->usage_pending = 0;
                st->usage_due = 1;
                if (!st->leading) {
                    st->leading = 1;
                    lead(st, 1, 0);
                }
            }
            continue;
        }
        if (!st->leading &&
            ((st->deferred_since && now >= st->deferred_since + apr_time_from_msec(DEFER_MS)) ||
             (st->soon_since && now >= st->soon_since + RIDE_US))) {
            st->leading = 1;
            lead(st, 1, 1);
            continue;
        }
        until = next_renewal < next_usage ? next_renewal : next_usage;
        if (st->deferred_since && st->deferred_since + apr_time_from_msec(DEFER_MS) < until) {
            until = st->deferred_since + apr_time_from_msec(DEFER_MS);
        }
        if (st->soon_since && st->soon_since + RIDE_US < until) {
            until = st->soon_since + RIDE_US;
        }
        if (idle_due && idle_due < until) {
            until = idle_due;
        }
        /* such releases came lately: tick, so that the next need not wake us */
        if (now < st->soon_seen + apr_time_from_msec(DEFER_MS) && now + RIDE_US < until) {
            until = now + RIDE_US;
        }
        st->keeper_wakes = until;
        apr_thread_cond_timedwait(st->wake, st->lock, until > now ? until - now : 1);
    }
    /* the child is going: send what is queued, kept slots and the usage counted so far */
    known_clear(st);
    st->usage_due = 1;
    while (!st->leading && (st->usage_due || !APR_RING_EMPTY(&st->queue, lease_op, link))) {
        st->leading = 1;
        lead(st, 1, 1);
    }
    apr_thread_mutex_unlock(st->lock);
    apr_pool_destroy(p);
    apr_thread_exit(thd, APR_SUCCESS);
    return NULL;
}

/* Handle one message on the tracking connection (lock held). */
/*
 * A key that had no limit changed: its queued lease adds and releases go to
 * Redis now, not within DEFER_MS, so a limit just set counts exactly the
 * requests in flight (lock held).
 */
static void hurry_queued(relay_lease_store *st, const redisReply *keys)
{
    lease_op *op;
    int any = 0;
    size_t i;

    for (op = APR_RING_FIRST(&st->queue); op != APR_RING_SENTINEL(&st->queue, lease_op, link);
         op = APR_RING_NEXT(op, link)) {
        if (op->admit || op->urgent) {
            continue;
        }
        for (i = 0; i < keys->elements; i++) {
            const redisReply *k = keys->element[i];

            if (k->type == REDIS_REPLY_STRING && k->len > 7 && strcmp(k->str + 7, op->id) == 0) {
                op->urgent = 1;
                any = 1;
                break;
            }
        }
    }
    if (any && !st->leading) {
        st->leading = 1;
        st->keeper_leads = 1;
        apr_thread_cond_signal(st->wake);
    }
}

static void tracker_message(relay_lease_store *st, const redisReply *m, int *pong)
{
    const redisReply *keys;
    size_t i;
    int hurry;

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
    st->epoch++;
    hurry = 0;
    if (keys->type != REDIS_REPLY_ARRAY) {
        /* FLUSHDB, FLUSHALL: everything changed */
        known_clear(st);
        valid_mark_all(st);
        return;
    }
    for (i = 0; i < keys->elements; i++) {
        const redisReply *k = keys->element[i];
        known_key *f;
        valid_key *v;

        if (k->type != REDIS_REPLY_STRING || k->len <= 7 || strncmp(k->str, "apikey:", 7) != 0) {
            continue;
        }
        f = apr_hash_get(st->known_by_id, k->str + 7, (apr_ssize_t)k->len - 7);
        if (f) {
            known_drop(st, f);
            hurry = 1;
        }
        v = apr_hash_get(st->valid_by_id, k->str + 7, (apr_ssize_t)k->len - 7);
        if (v) {
            /* lastUsedAt writes land here too: read again soon, not forgotten */
            valid_mark(st, v);
        }
    }
    if (hurry) {
        hurry_queued(st, keys);
    }
}

/* Open the tracking connection: every change to apikey:* is pushed to it. */
static redisContext *tracker_open(relay_lease_store *st, apr_pool_t *p, const char **err,
                                  int *refused)
{
    redisContext *ctx = relay_redis_connect(st->target, p, err);
    redisReply *rep;
    long long id;

    if (!ctx) {
        return NULL;
    }
    *refused = 0;
    rep = redisCommand(ctx, "CLIENT ID");
    if (!rep || rep->type != REDIS_REPLY_INTEGER) {
        *err = rep && rep->type == REDIS_REPLY_ERROR ? apr_pstrdup(p, rep->str)
                                                       : "CLIENT ID failed";
        goto fail;
    }
    id = rep->integer;
    freeReplyObject(rep);
    rep = redisCommand(ctx, "CLIENT TRACKING on REDIRECT %lld BCAST PREFIX apikey:", id);
    if (!rep || rep->type != REDIS_REPLY_STATUS) {
        *err = rep && rep->type == REDIS_REPLY_ERROR ? apr_pstrdup(p, rep->str)
                                                       : "CLIENT TRACKING failed";
        goto fail;
    }
    freeReplyObject(rep);
    rep = redisCommand(ctx, "SUBSCRIBE __redis__:invalidate");
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        *err = rep && rep->type == REDIS_REPLY_ERROR ? apr_pstrdup(p, rep->str)
                                                       : "SUBSCRIBE __redis__:invalidate failed";
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

/*
 * The tracker: holds a connection on which Redis pushes every change to a
 * key hash (client-side caching, BCAST mode), and forgets the cached keys it
 * names. The cache is used only while this connection is up and answers its
 * pings; on any trouble it is emptied and the relay asks Redis for every
 * request until the connection is back.
 */
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
        apr_time_t last_ping;
        int ping_out = 0, refused = 0;

        apr_pool_clear(p);
        apr_thread_mutex_lock(st->lock);
        if (st->stopping) {
            apr_thread_mutex_unlock(st->lock);
            break;
        }
        apr_thread_mutex_unlock(st->lock);
        ctx = tracker_open(st, p, &err, &refused);
        if (!ctx) {
            if (refused && !warned && st->log) {
                /* an older Redis, or an ACL without these commands */
                st->log(st->log_baton, LEASE_LOG_WARNING,
                        apr_psprintf(p, "Redis refuses to push key changes (%s); keys without "
                                        "a limit are read from Redis on every request", err));
                warned = 1;
            }
            apr_thread_mutex_lock(st->lock);
            if (!st->stopping) {
                /* down: try again soon; refused: now and then */
                apr_thread_cond_timedwait(st->tracker_wake, st->lock,
                                          apr_time_from_sec(refused ? 60 : 1) / (refused ? 1 : 2));
            }
            apr_thread_mutex_unlock(st->lock);
            continue;
        }
        apr_thread_mutex_lock(st->lock);
        known_clear(st);
        /* changes made while nobody listened were not heard: read them again */
        valid_mark_all(st);
        st->tracker_reset = 0;
        st->tracker_fd = ctx->fd;
        st->tracking = 1;
        apr_thread_mutex_unlock(st->lock);
        last_ping = apr_time_now();

        for (;;) {
            struct pollfd pfd;
            int n, stop;
            void *reply;

            apr_thread_mutex_lock(st->lock);
            stop = st->stopping || st->tracker_reset;
            if (!stop && st->valid_changed && apr_time_now() >= next_recheck) {
                /*
                 * Keys reported changed are read again here, not by the
                 * keeper, whose releases must not wait behind the call.
                 */
                apr_pool_clear(rp);
                next_recheck = apr_time_now() +
                               apr_time_from_msec(valid_recheck(st, rp) ? VALID_RECHECK_MS
                                                                        : VALID_RECHECK_BACKOFF_MS);
            }
            apr_thread_mutex_unlock(st->lock);
            if (stop) {
                break;
            }
            pfd.fd = ctx->fd;
            pfd.events = POLLIN;
            pfd.revents = 0;
            n = poll(&pfd, 1, 200);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0) {
                break;
            }
            if (n == 0) {
                if (apr_time_now() - last_ping >= apr_time_from_sec(1)) {
                    int done = 0;

                    if (ping_out) {
                        break;        /* no answer to the last ping: Redis is stuck */
                    }
                    if (redisAppendCommand(ctx, "PING") != REDIS_OK) {
                        break;
                    }
                    while (!done) {
                        if (redisBufferWrite(ctx, &done) != REDIS_OK) {
                            break;
                        }
                    }
                    if (!done) {
                        break;
                    }
                    ping_out = 1;
                    last_ping = apr_time_now();
                }
                continue;
            }
            if (redisBufferRead(ctx) != REDIS_OK) {
                break;
            }
            reply = NULL;
            while (redisGetReplyFromReader(ctx, &reply) == REDIS_OK && reply) {
                int pong = 0;

                apr_thread_mutex_lock(st->lock);
                tracker_message(st, reply, &pong);
                apr_thread_mutex_unlock(st->lock);
                if (pong) {
                    ping_out = 0;
                }
                freeReplyObject(reply);
                reply = NULL;
            }
            if (ctx->err) {
                break;
            }
        }
        apr_thread_mutex_lock(st->lock);
        st->tracking = 0;
        known_clear(st);
        apr_thread_mutex_unlock(st->lock);
        redisFree(ctx);
    }
    apr_pool_destroy(rp);
    apr_pool_destroy(p);
    apr_thread_exit(thd, APR_SUCCESS);
    return NULL;
}

/* Stop and join the keeper before the child's pool goes away. */
static apr_status_t keeper_stop(void *data)
{
    relay_lease_store *st = data;
    apr_status_t ret;

    apr_thread_mutex_lock(st->lock);
    st->stopping = 1;
    st->tracking = 0;
    apr_thread_cond_broadcast(st->wake);
    apr_thread_cond_broadcast(st->tracker_wake);
    apr_thread_mutex_unlock(st->lock);
    if (st->tracker) {
        apr_thread_join(&ret, st->tracker);
        st->tracker = NULL;
    }
    if (st->keeper) {
        apr_thread_join(&ret, st->keeper);
        st->keeper = NULL;
    }
    return APR_SUCCESS;
}

apr_status_t relay_lease_keeper_start(relay_lease_store *st, relay_log_fn log, void *baton,
                                      apr_pool_t *pchild)
{
    apr_threadattr_t *attr;
    apr_status_t rv;

    st->log = log;
    st->log_baton = baton;
    if ((rv = apr_threadattr_create(&attr, pchild)) != APR_SUCCESS) {
        return rv;
    }
    if ((rv = apr_thread_create(&st->keeper, attr, keeper_main, st, pchild)) != APR_SUCCESS) {
        return rv;
    }
    apr_pool_pre_cleanup_register(pchild, st, keeper_stop);
    if ((rv = apr_thread_create(&st->tracker, attr, tracker_main, st, pchild)) != APR_SUCCESS) {
        st->tracker = NULL;
        return rv;
    }
    return APR_SUCCESS;
}
