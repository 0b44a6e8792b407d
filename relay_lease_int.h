/*
 * relay_lease_int.h - the lease core's private header: the store, grouped by
 * concern, and what the files of the core call in one another.
 *
 *   relay_lease.c          the public API: create, admit, release
 *   relay_lease_batch.c    the op queue and its batches: who leads, when
 *                          releases go (their urgency), usage sums
 *   relay_lease_wire.c     the scripts: ARGV encoding, replies, the seam in
 *                          front of Redis
 *   relay_lease_cache.c    the key cache: hash -> id, and while tracked the
 *                          key's limit, expiresAt and kept slots
 *   relay_lease_valid.c    keys lately found valid (RelayOnRedisError allow)
 *   relay_lease_tracker.c  the tracking connection and its thread
 *   relay_lease_keeper.c   the keeper thread: its timers, renewal, lost
 *                          leases, the shutdown drain
 *
 * Locking. One mutex, st->lock, guards every group of the store marked
 * "lock" below. It is never held during a Redis call: the thread making one
 * drops it and takes it again after. Every condition variable (an
 * admission's, a release waiter's, the keeper's and the tracker's wake) is
 * waited on with st->lock. The one thread leading a batch (batch.leading
 * set, see relay_lease_lead) owns batch.pool and batch.usage without the
 * lock. Groups marked "fixed" are set before any thread starts and only read
 * afterwards. Functions here that take the store "(lock held)" expect the
 * caller to hold st->lock.
 */
#ifndef RELAY_LEASE_INT_H
#define RELAY_LEASE_INT_H

#include "relay_lease.h"

#include <apr_hash.h>
#include <apr_ring.h>
#include <apr_thread_cond.h>
#include <apr_thread_mutex.h>
#include <apr_thread_proc.h>
#include <apr_time.h>

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

typedef struct lease_op lease_op;
typedef struct key_entry key_entry;
typedef struct valid_key valid_key;

APR_RING_HEAD(lease_ring, relay_lease);
APR_RING_HEAD(op_ring, lease_op);
APR_RING_HEAD(key_ring, key_entry);
APR_RING_HEAD(valid_ring, valid_key);

/* What a queued operation does; each kind is one entry in the batch script's ARGV. */
enum op_kind {
    OP_ADMIT,    /* look a key up and take a lease, if under its limits */
    OP_ADD,      /* add the lease of a request admitted from the key cache */
    OP_RELEASE,  /* give a request's lease back, and count its usage */
    OP_USAGE,    /* count a request's usage only: its lease never reached
                    Redis, or its slot was kept */
    OP_GIVE_BACK /* give back a kept slot: no request left to count */
};

/* How soon a queued op (other than an admission) must reach Redis. */
enum op_urgency {
    URGENCY_DEFERRED, /* no limit waits for it: within DEFER_MS */
    URGENCY_SOON,     /* a concurrency limit with room: within RIDE_US */
    URGENCY_NOW       /* a limit waits for it: the next batch, at once */
};

/* Who leads a batch, and how far (see relay_lease_lead). */
enum lead_role {
    LEAD_REQUEST,     /* a request thread: one batch, then hand on */
    LEAD_KEEPER,      /* the keeper: on while a limit waits for a queued op */
    LEAD_KEEPER_DRAIN /* the keeper: until the queue is empty */
};

/* A lease of a request of this child. */
struct relay_lease {
    APR_RING_ENTRY(relay_lease) link; /* in live.ring */
    const char *id;                   /* key id */
    const char *conc_key;             /* concurrency:{id} */
    const char *member;               /* this request's member */
    int released;                     /* given back already */
    lease_op *add_op;                 /* its OP_ADD, while still queued */
    int limited;                      /* its key had a concurrency limit */
    int token_limited;                /* its key had a token limit */
    int keep;                         /* its slot may be kept for the next request */
    enum op_urgency urgency;          /* how soon its release must reach Redis */
};

/* What the batch script answered for one admission. */
typedef struct {
    long code; /* the script's code, or -99: no answer */
    long long current, limit;
    const char *name;     /* key name */
    const char *found_id; /* key id, or NULL */
    const char *error;    /* sentence, for -99 and -3 */
    const char *expires;  /* the key's expiresAt, "" for never */
    int legacy;           /* a plain counter was replaced */
    int token_limited;    /* the key has a token limit */
} admit_reply;

/* The caller of relay_lease_release_sent, waiting for its release to reach Redis. */
struct release_waiter {
    apr_thread_cond_t *cond; /* signalled when sent (or failed), or promoted; made only
                                when the thread waits for another one's batch */
    int done;                /* the batch carrying it has run */
    int failed;              /* Redis did not take it */
    int promoted;            /* the waiting thread leads the next batch */
};

/*
 * A queued operation. Admissions live in the waiting request's pool; the
 * others are malloc'ed (their request is gone when they are sent) and freed
 * once sent.
 */
struct lease_op {
    APR_RING_ENTRY(lease_op) link; /* in batch.queue, then in a batch */
    enum op_kind kind;
    const char *id;      /* key id (admission: the cached one, or NULL) */
    const char *member;  /* lease member (NULL for OP_USAGE) */
    unsigned long epoch; /* track.epoch when its batch was sent */
    /* OP_ADMIT */
    const char *hash;        /* key hash */
    apr_pool_t *p;           /* the requester's pool, for the reply */
    apr_thread_cond_t *cond; /* signalled when done or promoted */
    int done;                /* reply is in */
    int promoted;            /* this requester leads the next batch */
    admit_reply reply;
    /* the others */
    enum op_urgency urgency;
    relay_usage_counts usage;      /* model copied into the same block */
    int token_limited;             /* its usage goes with it, not later */
    relay_lease *lease;            /* OP_ADD: its lease, while queued */
    struct release_waiter *waiter; /* its caller waits until it is sent, or NULL */
};

/* A kept slot: the lease of a finished request, waiting for the next one. */
typedef struct {
    char member[48];  /* its member in concurrency:{id} */
    apr_time_t since; /* when its request ended */
} kept_slot;

/*
 * A key of the key cache: one malloc'ed block (expires apart). Its id is
 * known for as long as it is cached; while tracked (Redis has not reported
 * it changed since it was read) a key without any limit is admitted from it
 * alone, one with a concurrency limit from its kept slots.
 */
struct key_entry {
    APR_RING_ENTRY(key_entry) link; /* in cache.kept_keys while it has kept slots */
    char *hash;                     /* key hash */
    char *id;                       /* key id */
    int tracked;                    /* the fields below are Redis's word */
    char *expires;                  /* expiresAt, "" for never (malloc'ed) */
    long long limit;                /* concurrencyLimit, 0 for none */
    kept_slot *kept;                /* kept slots, oldest first (malloc'ed) */
    int nkept, cap;
};

/*
 * A key Redis last reported valid and active, remembered for
 * relay_lease_recently_valid: one malloc'ed block, its expiresAt apart.
 */
struct valid_key {
    APR_RING_ENTRY(valid_key) link; /* in valid.order, oldest admission first */
    char *hash;                     /* key hash */
    char *id;                       /* key id */
    char *expires;                  /* expiresAt, "" for never (malloc'ed: it changes) */
    apr_time_t admitted;            /* when this child last admitted it */
    int changed;                    /* Redis reported the key changed since it was read */
    unsigned long changed_at;       /* track.epoch after the last such report */
};

/* The clock of the core (apr_time_now unless a test sets another). */
typedef apr_time_t (*relay_lease_clock_fn)(void);

/*
 * The seam in front of Redis: run one script, as relay_redis_script does,
 * on a connection of the store's pool. Tests put their own in front.
 */
typedef redisReply *(*relay_lease_send_fn)(relay_lease_store *st, const relay_script *s, int nkeys,
                                           const char *const *keys, int nargs,
                                           const char *const *args, apr_pool_t *p,
                                           const char **err);

struct relay_lease_store {
    struct {                              /* fixed */
        relay_redis_pool *redis;          /* where leases live */
        const relay_redis_target *target; /* where the tracking connection goes */
        int lease_ms;                     /* lease length */
        apr_interval_time_t reuse;        /* how long a finished request's slot is kept */
        char prefix[17];                  /* random per child: members are unique */
        relay_lease_clock_fn now;         /* the clock */
        relay_lease_send_fn send;         /* the seam in front of Redis */
        relay_lease_log_fn log;           /* where trouble is told, or NULL */
        void *log_baton;
    } cf;
    apr_uint32_t counter;     /* per child member counter (atomic) */
    apr_thread_mutex_t *lock; /* guards the groups marked "lock" */

    struct {                    /* lock: live leases */
        struct lease_ring ring; /* of this child's running requests */
        int count;              /* entries in ring */
    } live;

    struct {                       /* lock, but see pool and usage */
        struct op_ring queue;      /* ops not yet sent */
        int leading;               /* a thread is sending (or about to send) a batch */
        int keeper_leads;          /* the keeper is asked to send the queued ops */
        apr_time_t deferred_since; /* deferred ops wait since, or 0 */
        apr_time_t soon_since;     /* soon ops wait since, or 0 */
        apr_time_t soon_seen;      /* when a soon op was last queued */
        int usage_pending;         /* usage was counted since the last write */
        int usage_due;             /* the next batch writes the counted usage */
        apr_pool_t *pool;          /* the leader's scratch (no lock: leader only) */
        apr_pool_t *usage_pool;    /* holds usage (no lock: leader only) */
        apr_hash_t *usage;         /* "id model" -> usage sum (no lock: leader only) */
    } batch;

    struct {                       /* lock: the key cache */
        apr_pool_t *pool;          /* holds the two hashes (entries are malloc'ed) */
        apr_hash_t *by_hash;       /* key hash -> key_entry */
        apr_hash_t *by_id;         /* key id -> key_entry, tracked ones only */
        struct key_ring kept_keys; /* entries with kept slots */
        int kept;                  /* kept slots in all */
    } cache;

    struct {                     /* lock: keys lately found valid */
        apr_pool_t *pool;        /* holds the two hashes (entries are malloc'ed) */
        apr_hash_t *by_hash;     /* key hash -> valid_key */
        apr_hash_t *by_id;       /* key id -> valid_key */
        struct valid_ring order; /* the same, oldest admission first */
        int changed;             /* entries reported changed and not read again yet */
    } valid;

    struct {                     /* lock: the tracking connection */
        int on;                  /* Redis tells us of every change to apikey:* */
        int fd;                  /* its socket, while on */
        int reset;               /* reconnect it */
        unsigned long epoch;     /* counts reported changes */
        apr_thread_cond_t *wake; /* wakes the tracker to stop or reconnect */
        apr_thread_t *thread;    /* the tracking thread, or NULL */
    } track;

    struct {                     /* lock: the keeper thread */
        apr_thread_cond_t *wake; /* wakes it: ops queued, clock moved, or stop */
        apr_time_t wakes;        /* when it wakes by itself */
        apr_time_t renew_due;    /* when it renews next */
        int stopping;            /* the child is exiting */
        apr_thread_t *thread;    /* or NULL */
    } keeper;
};

/* relay_lease_wire.c: no lock needed; the calls to Redis are made without it */
apr_status_t relay_lease_scripts_init(void);
redisReply *relay_lease_send_redis(relay_lease_store *st, const relay_script *s, int nkeys,
                                   const char *const *keys, int nargs, const char *const *args,
                                   apr_pool_t *p, const char **err);
const char *relay_lease_now_iso(relay_lease_store *st, apr_pool_t *p);
long long relay_lease_reply_int(const redisReply *rep, size_t i);
const char *relay_lease_reply_text(const redisReply *rep, size_t i, apr_pool_t *p);
void relay_lease_log(relay_lease_store *st, relay_lease_log_level level, apr_pool_t *p,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
int relay_lease_send_batch(relay_lease_store *st, struct op_ring *batch, apr_hash_t *usage,
                           apr_pool_t *p);
const char *relay_lease_renew_call(relay_lease_store *st, const char **keys, const char **members,
                                   int n, apr_pool_t *p);
redisReply *relay_lease_check_call(relay_lease_store *st, const char **args, int nargs,
                                   apr_pool_t *p);
void relay_lease_usage_sum(apr_hash_t *h, apr_pool_t *p, const char *id,
                           const relay_usage_counts *u, long long requests);
void relay_lease_usage_merge(apr_hash_t *into, apr_pool_t *p, apr_hash_t *from);

/* relay_lease_batch.c: lock held (relay_lease_lead drops it while a batch is sent) */
lease_op *relay_lease_op_new(enum op_kind kind, const char *id, const char *member,
                             const relay_usage_counts *usage);
void relay_lease_queue(relay_lease_store *st, lease_op *op);
void relay_lease_lead(relay_lease_store *st, enum lead_role role);
void relay_lease_hurry(relay_lease_store *st, const redisReply *keys);

/* relay_lease_cache.c: lock held, except cache_id, cache_put_id, cache_drop: they take it */
apr_status_t relay_lease_cache_init(relay_lease_store *st, apr_pool_t *pool, apr_pool_t *pchild);
const char *relay_lease_cache_id(relay_lease_store *st, const char *hash, apr_pool_t *p);
void relay_lease_cache_put_id(relay_lease_store *st, const char *hash, const char *id);
void relay_lease_cache_drop(relay_lease_store *st, const char *hash);
key_entry *relay_lease_cache_tracked(relay_lease_store *st, const char *hash);
void relay_lease_cache_track(relay_lease_store *st, const char *hash, const char *id,
                             const char *expires, long long limit);
void relay_lease_cache_forget(relay_lease_store *st, const char *hash);
int relay_lease_cache_changed(relay_lease_store *st, const char *id, size_t idlen);
void relay_lease_cache_forget_all(relay_lease_store *st);
void relay_lease_kept_give_back(relay_lease_store *st, key_entry *e, int n);
const char *relay_lease_kept_take(relay_lease_store *st, key_entry *e, apr_pool_t *p);
int relay_lease_keep_slot(relay_lease_store *st, const relay_lease *lease);
apr_time_t relay_lease_kept_expire(relay_lease_store *st, apr_time_t now);
void relay_lease_kept_lost(relay_lease_store *st, const char *id, const char *member);

/* relay_lease_valid.c: lock held (valid_recheck drops it during its call) */
apr_status_t relay_lease_valid_init(relay_lease_store *st, apr_pool_t *pool, apr_pool_t *pchild);
void relay_lease_valid_admitted(relay_lease_store *st, const char *hash, const char *id,
                                const char *expires, unsigned long epoch);
void relay_lease_valid_forget(relay_lease_store *st, const char *hash);
void relay_lease_valid_changed(relay_lease_store *st, const char *id, size_t idlen);
void relay_lease_valid_changed_all(relay_lease_store *st);
int relay_lease_valid_recheck(relay_lease_store *st, apr_pool_t *p);

/* relay_lease_tracker.c: tracker_has_news with the lock held */
int relay_lease_tracker_has_news(relay_lease_store *st);
apr_status_t relay_lease_tracker_start(relay_lease_store *st, apr_threadattr_t *attr,
                                       apr_pool_t *pchild);

/* relay_lease_keeper.c: takes the lock */
void relay_lease_keeper_poke(relay_lease_store *st);

/*
 * For tests: put another clock or Redis seam in (NULL keeps the present
 * one). Before relay_lease_keeper_start; the clock also moves the keeper's
 * timers, so after moving it call relay_lease_keeper_poke.
 */
void relay_lease_set_seams(relay_lease_store *st, relay_lease_clock_fn now,
                           relay_lease_send_fn send);

#endif
