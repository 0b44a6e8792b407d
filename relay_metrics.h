/*
 * relay_metrics.h - what the relay counts, and how a scrape reads it.
 *
 * Two kinds of figures:
 *  - per server (this httpd, all its children): requests by outcome, Redis
 *    round trips, errors and latency, batch sizes, leases held, renewals and
 *    lost leases. They live in one shared-memory segment that the httpd
 *    parent creates once and keeps across graceful restarts; every child adds
 *    to it with atomic operations, so a scrape in any child reads the sum.
 *  - per key: requests by outcome, in flight, limits, tokens by model. They
 *    live in Redis, beside the key (metrics:outcomes:{id} and the usage
 *    hashes), so they are the same on every server sharing the Redis and
 *    survive any restart. Each child counts its keys' outcomes in memory and
 *    adds them to Redis once a second, in one script call.
 *
 * Uses APR and hiredis only (no httpd header): relay-keys links it with
 * relay_redis.c, where it only times commands (without shared memory every
 * count is a no-op).
 */
#ifndef RELAY_METRICS_H
#define RELAY_METRICS_H

#include "relay_redis.h"

#include <apr_pools.h>
#include <apr_time.h>
#include <hiredis/hiredis.h>

/*
 * What became of a request at the relay's door. New capabilities add a row
 * here and in the table of names in relay_metrics.c (before
 * RELAY_OUTCOME_COUNT); shared memory has room for RELAY_OUTCOME_SLOTS.
 */
typedef enum {
    RELAY_OUTCOME_ADMITTED = 0,        /* a slot was taken, the request goes upstream */
    RELAY_OUTCOME_ADMITTED_UNCHECKED,  /* Redis down, RelayOnRedisError allow let it through */
    RELAY_OUTCOME_CONCURRENCY_LIMITED, /* 429: the key's concurrency limit */
    RELAY_OUTCOME_TOKEN_LIMITED,       /* 429: the key's token limit */
    RELAY_OUTCOME_DISABLED,            /* 401: isActive is not "true" */
    RELAY_OUTCOME_EXPIRED,             /* 401: expiresAt has passed */
    RELAY_OUTCOME_UNAUTHORIZED,        /* 401: no key, a malformed key, an unknown key */
    RELAY_OUTCOME_NOT_ALLOWED,         /* 404/405: an endpoint or method not relayed */
    RELAY_OUTCOME_UNAVAILABLE,         /* 503: Redis unreachable, or a record unusable */
    RELAY_OUTCOME_COUNT
} relay_outcome;

/* Outcomes shared memory has room for: more rows need no new layout. */
#define RELAY_OUTCOME_SLOTS 32

/* The outcome's label value ("admitted", "concurrency_limited", ...). */
const char *relay_outcome_name(relay_outcome o);

/* The outcome as a word of a mod_status ?auto line ("Admitted", ...). */
const char *relay_outcome_title(relay_outcome o);

/* Bytes of shared memory for `slots` child processes. */
apr_size_t relay_metrics_shm_size(int slots);

/*
 * Use the segment at base (size bytes) for the server figures. A segment
 * that does not hold this layout yet (new, or left by another version) is
 * set to zero first. Called in the httpd parent, before the children fork.
 */
void relay_metrics_shm_attach(void *base, apr_size_t size, int slots);

/*
 * Count a request's outcome: for this server, and for the key when key_id
 * is given and pool is a Redis pool this child flushes (see
 * relay_metrics_child_start); the key's count reaches Redis within a second.
 */
void relay_metrics_request(relay_redis_pool *pool, const char *key_id, relay_outcome o);

/*
 * redisCommandArgv, timed and counted as one Redis round trip: an I/O error
 * or an error reply (but NOSCRIPT, which the caller answers with EVAL)
 * counts as an error.
 */
redisReply *relay_metrics_command(redisContext *ctx, int argc, const char **argv,
                                  const size_t *argvlen);

/* One batch script call carried `ops` admissions, releases and usage records. */
void relay_metrics_batch(int ops);

/* The keeper sent `leases` leases to be renewed. */
void relay_metrics_renewed(int leases);

/* `leases` leases of running requests were gone from Redis when renewed. */
void relay_metrics_lost(int leases);

/* How many leases this child's running requests hold now. */
typedef int (*relay_metrics_leases_fn)(void *baton);

/*
 * In a child: take a slot of shared memory (when there is a segment), and
 * start the thread that every second writes the per-key counts of each pool
 * to Redis and this child's leases (from leases(baton)) to its slot. When
 * pchild goes the thread stops after a last write and the slot is given
 * back. Call it after the pools are created with pchild, so that its
 * cleanup runs before theirs.
 */
apr_status_t relay_metrics_child_start(apr_pool_t *pchild, relay_redis_pool *const *pools,
                                       int npools, relay_metrics_leases_fn leases, void *baton);

/* Histogram buckets: upper bounds of Redis latency (µs) and of batch sizes. */
#define RELAY_METRICS_LATENCY_BUCKETS 14
#define RELAY_METRICS_BATCH_BUCKETS 9

/* The server figures, read at one moment (sums over all children). */
typedef struct {
    int shared; /* 0: no shared memory, all below is 0 */
    apr_uint64_t outcomes[RELAY_OUTCOME_COUNT];
    apr_uint64_t redis_commands; /* round trips */
    apr_uint64_t redis_errors;
    apr_uint64_t redis_latency_us;                           /* sum over the round trips */
    apr_uint64_t latency[RELAY_METRICS_LATENCY_BUCKETS + 1]; /* per bucket, +Inf last */
    apr_uint64_t batches;                                    /* batch script calls */
    apr_uint64_t batch_ops;                                  /* their operations in all */
    apr_uint64_t batch[RELAY_METRICS_BATCH_BUCKETS + 1];     /* per bucket, +Inf last */
    apr_uint64_t renewed, lost;
    apr_uint64_t key_writes_failed; /* per-key count writes Redis did not take */
    apr_uint64_t leases_held;       /* sum over the live children */
    apr_uint64_t children;          /* live children with a slot */
} relay_metrics_server;

void relay_metrics_server_read(relay_metrics_server *out);

/* Upper bounds of the buckets, for rendering. */
extern const apr_uint64_t relay_metrics_latency_bounds_us[RELAY_METRICS_LATENCY_BUCKETS];
extern const apr_uint64_t relay_metrics_batch_bounds[RELAY_METRICS_BATCH_BUCKETS];

/* Tokens of one key and one model, since the relay counts them by model. */
typedef struct {
    const char *model;
    long long input, output, cache_create, cache_read;
} relay_metrics_model;

/* One key as a scrape reads it from Redis. */
typedef struct {
    const char *id;
    const char *name;
    long long concurrency_limit;             /* 0: none */
    long long token_limit;                   /* 0: none */
    long long in_flight;                     /* live leases */
    long long outcomes[RELAY_OUTCOME_COUNT]; /* -1: never happened */
    const relay_metrics_model *models;
    int nmodels;
} relay_metrics_key;

/* What a scrape read of the keys: every key of one Redis, sorted by id. */
typedef struct {
    int ok; /* 0: Redis failed; error says why */
    const char *error;
    const relay_metrics_key *keys;
    int nkeys;
    double seconds; /* how long the read from Redis took */
    int calls;      /* its Redis round trips */
    apr_time_t at;  /* when it was read */
} relay_metrics_keys;

/*
 * Call fn with the keys of pool's Redis: read afresh when this child's last
 * read is a second old or more, else that read again (so scrapes, however
 * many, cost Redis at most one read per child and second). A read costs one
 * HVALS of apikey:hash_map and one script call per 500 keys. fn runs with
 * this child's read locked: it must copy what it keeps, not write to a
 * client. A pool this child does not flush is read without the cache.
 */
void relay_metrics_keys_with(relay_redis_pool *pool, apr_pool_t *p,
                             void (*fn)(const relay_metrics_keys *keys, void *baton), void *baton);

/* Where rendered text goes. */
typedef void (*relay_metrics_write_fn)(void *baton, const char *text, apr_size_t len);

/*
 * The Prometheus text exposition format (version 0.0.4) of the server
 * figures and, when keys is not NULL, of the per-key figures.
 */
void relay_metrics_render(const relay_metrics_server *srv, const relay_metrics_keys *keys,
                          relay_metrics_write_fn write, void *baton, apr_pool_t *p);

/*
 * A label value as the exposition format wants it: backslash, double quote
 * and line feed escaped; bytes that are not UTF-8 (a NUL included) become
 * U+FFFD, so Prometheus never refuses the scrape.
 */
const char *relay_metrics_label(const char *s, apr_size_t len, apr_pool_t *p);

#endif
