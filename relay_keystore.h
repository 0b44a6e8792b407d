/*
 * relay_keystore.h - reading and changing key records in Redis, for the
 * admin pages and the JSON API. Each operation is one atomic script call.
 *
 * Uses APR and hiredis only (no httpd header).
 */
#ifndef RELAY_KEYSTORE_H
#define RELAY_KEYSTORE_H

#include "relay_redis.h"

#include <apr_pools.h>
#include <apr_tables.h>

/* Usage counters of one period, as relay_lease's release script keeps them. */
typedef struct {
    long long tokens;          /* input + output */
    long long input, output, cache_create, cache_read;
    long long all;             /* every kind */
    long long requests;
} relay_usage_period;

/* One key as the admin shows it (all strings, as stored; never the hash). */
typedef struct {
    const char *id;
    const char *name;
    const char *description;
    const char *key_preview;
    const char *token_limit;       /* "0" = unlimited */
    const char *concurrency_limit; /* "0" or "" = unlimited */
    const char *is_active;         /* "true" = enabled; anything else (or missing) = disabled */
    const char *created_at;
    const char *updated_at;
    const char *last_used_at;
    const char *expires_at;        /* "" = never */
    const char *created_by;
    const char *updated_by;
    long current_concurrency;      /* live leases now */
    relay_usage_period total;      /* usage:{id} */
    relay_usage_period today;      /* usage:daily:{id}:{today, UTC} */
    relay_usage_period month;      /* usage:monthly:{id}:{this month, UTC} */
} relay_key_record;

/* Fields of a new key, already validated. */
typedef struct {
    const char *name;
    const char *description;
    long token_limit;
    long concurrency_limit;
    const char *expires_at;        /* "" or canonical ISO-8601 */
    const char *created_by;
} relay_key_new;

/* Load the scripts' SHA1s (once per process). */
void relay_keystore_init(void);

/* The most keys one list reads (the newest); pagination is still to come. */
#define RELAY_KEYSTORE_LIST_MAX 1000

/* The most keys one live-count call may ask about. */
#define RELAY_KEYSTORE_LIVE_MAX 200

/*
 * The newest `max` keys (all of them when max < 0), sorted by creation time
 * (newest first), with the number of keys in Redis in *total; *err on failure.
 */
apr_array_header_t *relay_keystore_list(relay_redis_conn *c, int max, int *total, apr_pool_t *p,
                                        const char **err);

/* What the list's live columns show of one key. */
typedef struct {
    const char *id;
    long current_concurrency;      /* live leases now */
    const char *concurrency_limit; /* as stored; "0" or "" = unlimited */
    long long total_tokens;        /* usage:{id} totalTokens */
} relay_key_live;

/*
 * The live counts of n keys (ids already checked as UUIDs), in one script
 * call; keys that do not exist are left out. NULL with *err on failure.
 */
apr_array_header_t *relay_keystore_live(relay_redis_conn *c, const char *const *ids, int n,
                                        apr_pool_t *p, const char **err);

/* One key, or NULL (with *err NULL when it does not exist). */
relay_key_record *relay_keystore_get(relay_redis_conn *c, const char *id, apr_pool_t *p,
                                     const char **err);

/*
 * Create a key from random bytes the caller supplies (32 for the key, 16
 * for the id). *plain receives the key, to show once. Returns the record.
 */
relay_key_record *relay_keystore_create(relay_redis_conn *c, const relay_key_new *nk,
                                        const char *secret, const unsigned char rnd[48],
                                        const char **plain, apr_pool_t *p, const char **err);

/*
 * Set some fields of an existing key (pairs: field, value, ...), plus
 * updatedAt and updatedBy. Returns 1 when done, 0 when the key does not exist,
 * -1 on error.
 */
int relay_keystore_update(relay_redis_conn *c, const char *id, const apr_array_header_t *pairs,
                          const char *by, apr_pool_t *p, const char **err);

/* One day of a key's usage history. */
typedef struct {
    const char *date;              /* YYYY-MM-DD */
    relay_usage_period usage;
} relay_usage_day;

/* One model's share over a period. */
typedef struct {
    const char *model;
    relay_usage_period usage;
} relay_usage_model;

/*
 * The last `days` days of a key (oldest first, ending today, UTC) in *days,
 * and the split of those days by model in *models. Returns 0, or -1 with *err.
 */
int relay_keystore_history(relay_redis_conn *c, const char *id, int ndays, apr_pool_t *p,
                           apr_array_header_t **days, apr_array_header_t **models,
                           const char **err);

/* Delete a key, its hash-map entry and its leases: 1 done, 0 unknown, -1 error. */
int relay_keystore_delete(relay_redis_conn *c, const char *id, apr_pool_t *p, const char **err);

/* Whether a key is enabled: isActive is exactly "true" (claude-relay-service's rule). */
int relay_key_enabled(const relay_key_record *k);

/* "active", "disabled" or "expired" (now_iso: the current time, ISO-8601). */
const char *relay_key_status(const relay_key_record *k, const char *now_iso);

/* The current time in the stored ISO-8601 form. */
const char *relay_now_iso(apr_pool_t *p);

#endif
