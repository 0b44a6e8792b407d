/*
 * relay_schema.h - the names of everything the relay keeps in Redis, in the
 * schema shared with claude-relay-service. The module, the admin and
 * relay-keys spell a Redis key or field only through these macros, so the
 * schema lives in one place (the Lua in relay_lease.c writes the same names).
 *
 *   apikey:{id}                              hash: one key (RELAY_F_* fields)
 *   apikey:hash_map                          hash: stored key hash -> id
 *   concurrency:{id}                         sorted set: leases, score = expiry (ms)
 *   usage:{id}                               hash: totals (RELAY_U_TOTAL_*)
 *   usage:daily:{id}:{YYYY-MM-DD}            hash: one day (RELAY_U_*)
 *   usage:monthly:{id}:{YYYY-MM}             hash: one month (RELAY_U_*)
 *   usage:{id}:models                        set: models a key has used
 *   usage:{id}:model:daily:{model}:{date}    hash: one model's day (RELAY_U_*)
 *   usage:{id}:model:alltime:{model}         hash: one model's totals (RELAY_U_*)
 *   metrics:outcomes:{id}                    hash: requests by outcome (relay_metrics.c)
 *
 * Plain macros (string literals), so they join other literals, Lua text
 * included, at compile time.
 */
#ifndef RELAY_SCHEMA_H
#define RELAY_SCHEMA_H

/* Redis keys: prefixes to which the key id (and a date) is appended. */
#define RELAY_KEY_RECORD_PREFIX "apikey:"
#define RELAY_KEY_HASH_MAP "apikey:hash_map"
#define RELAY_CONCURRENCY_PREFIX "concurrency:"
#define RELAY_USAGE_PREFIX "usage:"
#define RELAY_USAGE_DAILY_PREFIX "usage:daily:"
#define RELAY_USAGE_MONTHLY_PREFIX "usage:monthly:"
/* after usage:{id} */
#define RELAY_USAGE_MODELS_SUFFIX ":models"
#define RELAY_USAGE_MODEL_DAILY_INFIX ":model:daily:"
#define RELAY_USAGE_MODEL_ALLTIME_INFIX ":model:alltime:"
/* requests of a key by outcome: field = outcome name (relay_metrics.c), value = count */
#define RELAY_METRICS_OUTCOMES_PREFIX "metrics:outcomes:"

/* Fields of apikey:{id}. */
#define RELAY_F_ID "id"
#define RELAY_F_NAME "name"
#define RELAY_F_DESCRIPTION "description"
#define RELAY_F_API_KEY "apiKey" /* the key's hash, never the key */
#define RELAY_F_KEY_PREVIEW "keyPreview"
#define RELAY_F_TOKEN_LIMIT "tokenLimit"
#define RELAY_F_CONCURRENCY_LIMIT "concurrencyLimit"
#define RELAY_F_IS_ACTIVE "isActive" /* enabled only when exactly "true" */
#define RELAY_F_CREATED_AT "createdAt"
#define RELAY_F_UPDATED_AT "updatedAt"
#define RELAY_F_LAST_USED_AT "lastUsedAt"
#define RELAY_F_EXPIRES_AT "expiresAt"
#define RELAY_F_CREATED_BY "createdBy"
#define RELAY_F_UPDATED_BY "updatedBy"

/* The values of isActive this software writes. */
#define RELAY_ACTIVE_TRUE "true"
#define RELAY_ACTIVE_FALSE "false"

/* Fields of usage:{id} (totals). */
#define RELAY_U_TOTAL_TOKENS "totalTokens"
#define RELAY_U_TOTAL_INPUT "totalInputTokens"
#define RELAY_U_TOTAL_OUTPUT "totalOutputTokens"
#define RELAY_U_TOTAL_CACHE_CREATE "totalCacheCreateTokens"
#define RELAY_U_TOTAL_CACHE_READ "totalCacheReadTokens"
#define RELAY_U_TOTAL_ALL "totalAllTokens"
#define RELAY_U_TOTAL_REQUESTS "totalRequests"

/* Fields of the daily, monthly and per-model hashes. */
#define RELAY_U_TOKENS "tokens"
#define RELAY_U_INPUT "inputTokens"
#define RELAY_U_OUTPUT "outputTokens"
#define RELAY_U_CACHE_CREATE "cacheCreateTokens"
#define RELAY_U_CACHE_READ "cacheReadTokens"
#define RELAY_U_ALL "allTokens"
#define RELAY_U_REQUESTS "requests"

#endif
