/*
 * relay_keystore.h - the one key store: reading and changing key records in
 * Redis, for the admin pages, the JSON API and the relay-keys tool alike.
 * Each change is one atomic script call; a list reads 200 keys per call.
 *
 * Uses APR, APR-util and hiredis only (no httpd header), so relay-keys links
 * it with relay_redis.c outside httpd.
 */
#ifndef RELAY_KEYSTORE_H
#define RELAY_KEYSTORE_H

#include "relay_keys.h"
#include "relay_redis.h"

#include <apr_pools.h>
#include <apr_tables.h>

/* Usage counters of one period, as relay_lease's release script keeps them. */
typedef struct {
    long long tokens; /* input + output */
    long long input, output, cache_create, cache_read;
    long long all; /* every kind */
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
    const char *expires_at; /* "" = never */
    const char *created_by;
    const char *updated_by;
    /* every stored field but apiKey, as read: name, value, name, value, ... */
    const apr_array_header_t *fields;
    long current_concurrency; /* live leases (an older relay's plain counter: its value) */
    relay_usage_period total; /* usage:{id} */
    relay_usage_period today; /* usage:daily:{id}:{today, UTC} */
    relay_usage_period month; /* usage:monthly:{id}:{this month, UTC} */
} relay_key_record;

/* Fields of a new key, already validated. */
typedef struct {
    const char *name;
    const char *description;
    long token_limit;
    long concurrency_limit;
    const char *expires_at; /* "" or canonical ISO-8601 */
    const char *created_by;
} relay_key_new;

/* What a call that changes the store came to. */
typedef enum {
    RELAY_KS_ERROR = -1,    /* Redis failed, or bad arguments; *err says why */
    RELAY_KS_NOT_FOUND = 0, /* no key with this id; nothing written */
    RELAY_KS_DONE = 1,
    RELAY_KS_EXISTS = 2 /* create: the id or the key hash is taken; nothing written */
} relay_ks_result;

/* Load the scripts' SHA1s (once per process). */
void relay_keystore_init(void);

/* The most keys one live-count call may ask about, and one list page may hold. */
#define RELAY_KEYSTORE_LIVE_MAX 200
#define RELAY_KEYSTORE_PAGE_MAX RELAY_KEYSTORE_LIVE_MAX
/* the keys a list page shows unless asked otherwise */
#define RELAY_KEYSTORE_PAGE_DEFAULT 50

/* How a list is ordered; ties go by creation time, then id. */
typedef enum {
    RELAY_SORT_CREATED = 0,  /* createdAt */
    RELAY_SORT_NAME,         /* name, ASCII letters without regard to case */
    RELAY_SORT_IN_FLIGHT,    /* requests in flight now */
    RELAY_SORT_TOKENS_TODAY, /* tokens of the current UTC day */
    RELAY_SORT_LAST_USED,    /* lastUsedAt; never used sorts as the oldest */
    RELAY_SORT_COUNT
} relay_key_sort;

/* What the front ends call each sort ("created", "name", "inFlight", "tokensToday", "lastUsed"). */
extern const char *const relay_key_sort_names[RELAY_SORT_COUNT];

/* The sort called name, or -1. */
int relay_key_sort_find(const char *name);

/* Which keys a list shows, in what order, and which page of them. */
typedef struct {
    const char *search;  /* NULL or "": every key; else a key matches when its id starts with it,
                            or its name or description holds it (ASCII letters without regard
                            to case) */
    relay_key_sort sort; /* the order */
    int descending;      /* largest first (newest, most in flight, ...) */
    int page;            /* from 1; a page past the last one is empty */
    int per_page;        /* 1..RELAY_KEYSTORE_PAGE_MAX; 0 = every match, on one page */
} relay_key_query;

/* Figures across every key in the store, whatever the search. */
typedef struct {
    long keys;                /* key records */
    long keys_in_flight;      /* keys with at least one request in flight */
    long long in_flight;      /* requests in flight, all keys together */
    long long requests_today; /* requests of the current UTC day */
    long long tokens_today;   /* tokens of the current UTC day */
} relay_key_overview;

/* One page of a list. */
typedef struct {
    apr_array_header_t *keys;    /* relay_key_record *, in the query's order */
    long matched;                /* keys that match the search, on every page */
    int page;                    /* the page asked for */
    int pages;                   /* pages the matches fill (at least 1) */
    relay_key_overview overview; /* the whole store */
} relay_key_page;

/*
 * One page of keys, with the overview. A page reads only what ordering and
 * searching need of each key (one script call per 500 keys; names and
 * descriptions only for a search or a sort by name), then the page's own
 * records in one call; per_page 0 reads every record (200 per call) instead.
 * Returns 0, or -1 with *err.
 */
int relay_keystore_query(relay_redis_conn *c, const relay_key_query *q, relay_key_page *out,
                         apr_pool_t *p, const char **err);

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

/* Random bytes a new key is made of: the key, then the id. */
#define RELAY_KEYSTORE_RANDOM_BYTES 48

/*
 * Create a key from random bytes the caller supplies (32 for the key, 16
 * for the id), refusing it (RELAY_KS_EXISTS, nothing written) when the id or
 * the key's hash is stored already. On RELAY_KS_DONE *out is the record as
 * written and *plain the key, to show once.
 */
relay_ks_result relay_keystore_create(relay_redis_conn *c, const relay_key_new *nk,
                                      const char *secret,
                                      const unsigned char rnd[RELAY_KEYSTORE_RANDOM_BYTES],
                                      relay_key_record **out, const char **plain, apr_pool_t *p,
                                      const char **err);

/*
 * Set some fields of an existing key (pairs: field, value, ...), plus
 * updatedAt and updatedBy = by. Only name, description, tokenLimit,
 * concurrencyLimit, isActive and expiresAt may change, each to a value of its
 * stored form; anything else is RELAY_KS_ERROR and writes nothing.
 */
relay_ks_result relay_keystore_update(relay_redis_conn *c, const char *id,
                                      const apr_array_header_t *pairs, const char *by,
                                      apr_pool_t *p, const char **err);

/* One day of a key's usage history. */
typedef struct {
    const char *date; /* YYYY-MM-DD */
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

/*
 * Give key id a new key made of rnd (RELAY_KEY_RANDOM_BYTES), keeping its id,
 * limits, usage and leases: in one script call, apikey:hash_map loses the old
 * hash and gains the new one, and the record's apiKey and keyPreview change
 * (with updatedAt and updatedBy = by). The old key is refused from the next
 * request on. On RELAY_KS_DONE *plain is the new key, to show once, and
 * *preview its preview; RELAY_KS_EXISTS (nothing written) when the new hash
 * is taken.
 */
relay_ks_result relay_keystore_regenerate(relay_redis_conn *c, const char *id, const char *secret,
                                          const unsigned char rnd[RELAY_KEY_RANDOM_BYTES],
                                          const char *by, const char **plain, const char **preview,
                                          apr_pool_t *p, const char **err);

/*
 * Free every slot of key id now: delete concurrency:{id} (and set updatedAt,
 * updatedBy = by, which tells every relay server the key changed). Requests
 * in flight go on, uncounted, until they end. *released: the leases that were
 * live.
 */
relay_ks_result relay_keystore_release(relay_redis_conn *c, const char *id, const char *by,
                                       long *released, apr_pool_t *p, const char **err);

/* Delete a key, its hash-map entry and its leases. */
relay_ks_result relay_keystore_delete(relay_redis_conn *c, const char *id, apr_pool_t *p,
                                      const char **err);

/* Whether a key is enabled: isActive is exactly "true" (claude-relay-service's rule). */
int relay_key_enabled(const relay_key_record *k);

/*
 * Whether an expiresAt value has passed at now_iso (relay_now_iso's form):
 * set and sorting before now as bytes, the comparison the admission script
 * makes, so what a front end shows is what a request meets.
 */
int relay_key_expired(const char *expires_at, const char *now_iso);

/* "active", "disabled" or "expired" (now_iso: the current time, ISO-8601). */
const char *relay_key_status(const relay_key_record *k, const char *now_iso);

/* The current time in the stored ISO-8601 form (this machine's clock, UTC). */
const char *relay_now_iso(apr_pool_t *p);

#endif
