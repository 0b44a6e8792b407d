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
    RELAY_ADMIT_OK = 1,        /* lease taken */
    RELAY_ADMIT_NOT_FOUND,     /* no key with that hash */
    RELAY_ADMIT_DISABLED,      /* isActive is "false" */
    RELAY_ADMIT_EXPIRED,       /* expiresAt is in the past */
    RELAY_ADMIT_LIMITED,       /* concurrency limit reached; nothing taken */
    RELAY_ADMIT_TOKENS,        /* token limit reached; nothing taken */
    RELAY_ADMIT_ERROR          /* Redis unreachable or failing */
} relay_admit_code;

typedef struct {
    relay_admit_code code;
    const char *id;            /* key id (when found) */
    const char *name;          /* key name (when found) */
    long long current;         /* in flight (incl. this request); tokens used for _TOKENS */
    long long limit;           /* concurrencyLimit (0 = unlimited); tokenLimit for _TOKENS */
    int legacy_replaced;       /* a plain-counter concurrency key was replaced */
    int known;                 /* admitted by the child alone, for a key Redis has not
                                  reported changed since it was read: one without any
                                  limit, or one with a limit on a kept slot (see
                                  relay_lease_release); current is then 0 */
    const char *error;         /* sentence, for RELAY_ADMIT_ERROR */
} relay_admit_result;

/* Called by the keeper thread to report trouble; level is an APLOG_* value. */
typedef void (*relay_log_fn)(void *baton, int level, const char *msg);

/*
 * Create the store of one child for one Redis pool. reuse_ms: how long a
 * finished request's slot is kept for the next request of its key (0: never);
 * see relay_lease_release.
 */
apr_status_t relay_lease_store_create(relay_lease_store **out, relay_redis_pool *pool,
                                      int lease_seconds, int reuse_ms, apr_pool_t *pchild);

/*
 * Start the keeper thread: it sends queued releases and summed usage, and
 * renews the leases of this child's live requests, all of them in one Redis
 * command per interval. It stops when pchild is destroyed, after sending
 * what is still queued.
 */
apr_status_t relay_lease_keeper_start(relay_lease_store *store, relay_log_fn log, void *baton,
                                      apr_pool_t *pchild);

/*
 * Authenticate a key by its stored hash and, if it is usable and under its
 * limit, take a lease in one atomic script call -- the child's next batch,
 * which this thread sends itself unless another thread's call is under way.
 * A key Redis has not reported changed since the child read it is admitted
 * without a call: one without any limit, or one with a slot this child kept
 * (see relay_lease_release). On RELAY_ADMIT_OK *lease is the lease,
 * allocated from p; give it back with relay_lease_release.
 */
relay_admit_code relay_lease_admit(relay_lease_store *store, const char *hash, apr_pool_t *p,
                                   relay_admit_result *res, relay_lease **lease);

/* What one request consumed, as the upstream reported it. */
typedef struct {
    long long input;           /* input_tokens */
    long long output;          /* output_tokens */
    long long cache_create;    /* cache_creation_input_tokens */
    long long cache_read;      /* cache_read_input_tokens */
    const char *model;         /* the model that answered, or NULL */
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

/* The lease's member in concurrency:{id} (for log lines and tests). */
const char *relay_lease_member(const relay_lease *lease);

/* The Redis pool behind a store (the admin borrows connections from it). */
relay_redis_pool *relay_lease_store_redis(relay_lease_store *store);

/* How many leases this child holds now. */
int relay_lease_live_count(relay_lease_store *store);

#endif
