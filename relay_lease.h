/*
 * relay_lease.h - per-key concurrency in Redis: admit a request by taking a
 * lease, give it back, and keep the leases of live requests from expiring.
 *
 * A lease is a member of the sorted set concurrency:{id} whose score is its
 * expiry in milliseconds on Redis's own clock, so every Apache server sharing
 * the Redis counts the same in-flight requests, and a killed child's leases
 * vanish on their own.
 *
 * Uses APR and hiredis only (no httpd header).
 */
#ifndef RELAY_LEASE_H
#define RELAY_LEASE_H

#include "relay_redis.h"

#include <apr_pools.h>

typedef struct relay_lease_store relay_lease_store;
typedef struct relay_lease relay_lease;

/* Outcome of an admission attempt. */
typedef enum {
    RELAY_ADMIT_OK = 1,    /* lease taken */
    RELAY_ADMIT_NOT_FOUND, /* no key with that hash */
    RELAY_ADMIT_DISABLED,  /* isActive is anything but "true" */
    RELAY_ADMIT_EXPIRED,   /* expiresAt is in the past */
    RELAY_ADMIT_LIMITED,   /* concurrency limit reached; nothing taken */
    RELAY_ADMIT_TOKENS,    /* token limit reached; nothing taken */
    RELAY_ADMIT_ERROR      /* Redis unreachable or failing, or a record of this key
                              unusable (error names the key and the Redis key) */
} relay_admit_code;

typedef struct {
    relay_admit_code code;
    const char *id;      /* key id (when found) */
    const char *name;    /* key name (when found) */
    long long current;   /* in flight (incl. this request); tokens used for _TOKENS */
    long long limit;     /* concurrencyLimit (0 = unlimited); tokenLimit for _TOKENS */
    int legacy_replaced; /* a plain-counter concurrency key was replaced */
    int known;           /* admitted by the child alone, for a key Redis has not
                            reported changed since it was read: one without any
                            limit, or one with a limit on a kept slot (see
                            relay_lease_release); current is then 0 */
    const char *error;   /* sentence, for RELAY_ADMIT_ERROR; safe to log as is */
    int record_bad;      /* RELAY_ADMIT_ERROR because a record of this key is unusable
                            (Redis answered): no outage, so RelayOnRedisError allow
                            should not let it through */
} relay_admit_result;

/* How serious a line the lease core reports is; the caller maps it to its own levels. */
typedef enum {
    RELAY_LEASE_LOG_ERROR = 1, /* something the relay promised did not happen */
    RELAY_LEASE_LOG_WARNING,   /* trouble the core rides out: Redis slow, a record bad */
    RELAY_LEASE_LOG_NOTICE     /* worth knowing once: a Redis without tracking */
} relay_lease_log_level;

/*
 * Where the lease core reports trouble, one line per call, from any of its
 * threads (the line names key ids, never a key).
 */
typedef void (*relay_lease_log_fn)(void *baton, relay_lease_log_level level, const char *msg);

/*
 * Create the store of one child for one Redis pool. reuse_ms: how long a
 * finished request's slot is kept for the next request of its key (0: never);
 * see relay_lease_release.
 */
apr_status_t relay_lease_store_create(relay_lease_store **out, relay_redis_pool *pool,
                                      int lease_seconds, int reuse_ms, apr_pool_t *pchild);

/*
 * Start the keeper thread and the tracking thread, and say where trouble is
 * told. The keeper sends the queued releases no request sends (within
 * 100 ms at most), the summed usage once a second, gives back kept slots
 * when they are due, and every third of a lease renews the leases of this
 * child's live requests and kept slots, 4000 to a script call. The tracker
 * holds a connection on which Redis tells of every change to a key. Both
 * stop when pchild is destroyed, the keeper after sending what is still
 * queued.
 */
apr_status_t relay_lease_keeper_start(relay_lease_store *store, relay_lease_log_fn log, void *baton,
                                      apr_pool_t *pchild);

/*
 * Authenticate a key by its stored hash and, if it is usable and under its
 * limit, take a lease in one atomic script call -- the child's next batch,
 * which this thread sends itself unless another thread's call is under way.
 * A key Redis has not reported changed since the child read it is admitted
 * without a call: one without any limit, or one with a slot this child kept
 * (see relay_lease_release). On RELAY_ADMIT_OK *lease is the lease,
 * allocated from p; give it back with relay_lease_release.
 *
 * A record of the wrong type (apikey:{id}, apikey:hash_map, or usage:{id} of
 * a key with a token limit; or a totalTokens there that is not a number)
 * refuses only the admissions that need it: RELAY_ADMIT_ERROR, with
 * res->error naming the key id (or the hash prefix when the id is not known)
 * and the Redis key. The other admissions, releases and usage of the batch
 * go through; usage that a bad usage record keeps out is logged through the
 * keeper's log function, naming the key id and the Redis key.
 */
relay_admit_code relay_lease_admit(relay_lease_store *store, const char *hash, apr_pool_t *p,
                                   relay_admit_result *res, relay_lease **lease);

/* What one request consumed, as the upstream reported it. */
typedef struct {
    long long input;        /* input_tokens */
    long long output;       /* output_tokens */
    long long cache_create; /* cache_creation_input_tokens */
    long long cache_read;   /* cache_read_input_tokens */
    const char *model;      /* the model that answered, or NULL */
} relay_usage_counts;

/*
 * Give a lease back (once; later calls do nothing) and, when usage is given,
 * count the request and its tokens. The release is queued and sent by the
 * child's next batch: at once when the key has a token limit or is more than
 * half way to its concurrency limit, within 2 ms when it had more room,
 * within 100 ms without any limit; the usage of keys without a token limit
 * is summed and written once a second. Nothing of the caller's is kept.
 *
 * A slot is kept instead, for reuse_ms, when the key has no token limit, a
 * concurrency limit of at least 32, was at a quarter of it or less when the
 * lease was taken, and Redis has not reported the key changed since: the
 * next request of the key in this child takes it without a Redis call. Kept
 * slots stay counted in Redis, so the limit holds across servers; any
 * change to the key gives them back before Redis decides again.
 */
apr_status_t relay_lease_release(relay_lease_store *store, relay_lease *lease,
                                 const relay_usage_counts *usage, const char **err);

/*
 * Like relay_lease_release, but a release that a concurrency or token limit
 * counts is in Redis when this returns (a kept slot stays kept): called as
 * the answer's end passes, before the client can see it, so a client that
 * waits for its answer is never refused by its own finished request. Keys
 * without any limit are released as by relay_lease_release. Waits at most
 * one batch; p gives the condition variable. *waited (when not NULL) tells
 * whether the release went to Redis before returning.
 */
apr_status_t relay_lease_release_sent(relay_lease_store *store, relay_lease *lease,
                                      const relay_usage_counts *usage, apr_pool_t *p, int *waited,
                                      const char **err);

/* The lease's member in concurrency:{id} (for log lines and tests). */
const char *relay_lease_member(const relay_lease *lease);

/* The Redis pool behind a store (the admin borrows connections from it). */
relay_redis_pool *relay_lease_store_redis(relay_lease_store *store);

/* How many leases this child holds now. */
int relay_lease_live_count(relay_lease_store *store);

/* relay_lease_recently_valid remembers an admission at most this long. */
#define RELAY_LEASE_VALID_KEEP_MS (15 * 60 * 1000)

/*
 * Whether this child admitted a key with this hash, found valid and active by Redis,
 * within the last max_age_ms; *id is its id (from p).
 *
 * For RelayOnRedisError allow: during an outage, only keys known good pass.
 * Each child remembers, per hash, its last admission that Redis read valid
 * and active (admitted by the script, or from the child's tracked cache of
 * the key), for at most RELAY_LEASE_VALID_KEEP_MS (a larger max_age_ms
 * counts as that) and 4096 hashes (the oldest admission is dropped first).
 * A hash not remembered yet is not added by an admission during which the
 * tracking connection reported any change (it might have been this key's):
 * the next admission adds it. Answers 0 (and *id NULL) when:
 *  - this child has not remembered an admission of the hash (see above), or
 *    it was longer ago than max_age_ms (max_age_ms <= 0: always 0);
 *  - Redis last answered for this hash: not found, disabled, expired, over
 *    its token limit (its requests would go uncounted), or a record of the
 *    key unusable (RELAY_ADMIT_ERROR naming it); the hash is forgotten at
 *    once. An unanswered call (the outage itself) changes nothing;
 *  - the remembered expiresAt has passed;
 *  - the tracking connection reported apikey:{id} changed (or a flush, or it
 *    reconnected after missing changes) and Redis has not read the key valid
 *    since: the entry is marked, not forgotten, because the relay's own
 *    lastUsedAt writes change the key about once a second. The tracking
 *    thread reads marked keys again, 512 at most, newest first (one
 *    read-only call a second at most while some are marked and the tracking
 *    connection is up; 5 s after a failed one): still valid and active
 *    clears the mark, anything else forgets the hash. A change reported
 *    after the read began keeps the mark.
 * Without a tracking connection (a Redis before 6, or an ACL without
 * CLIENT/SUBSCRIBE) a change is seen only by the next admission of the key
 * through Redis: max_age_ms then bounds how stale the answer may be.
 * A concurrency or token limit is not checked here. Thread-safe.
 */
int relay_lease_recently_valid(relay_lease_store *store, const char *hash, apr_int64_t max_age_ms,
                               apr_pool_t *p, const char **id);

#endif
