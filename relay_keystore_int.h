/*
 * relay_keystore_int.h - what the key store's files share (relay_keystore.c:
 * one key and its changes; relay_keystore_list.c: lists). Not for the front
 * ends: they use relay_keystore.h.
 */
#ifndef RELAY_KEYSTORE_INT_H
#define RELAY_KEYSTORE_INT_H

#include "relay_keystore.h"

/* Lua: `now`, Redis's clock in whole milliseconds, as the leases are scored. */
#define LUA_NOW                                                                                    \
    "local t = redis.call('TIME')\n"                                                               \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

/*
 * Lua: live(key), the leases of a concurrency:{id} set alive at `now`. A plain
 * counter an older relay left there counts as its value until the module
 * replaces it; anything else counts as 0.
 */
#define LUA_LIVE                                                                                   \
    "local live_from = string.format('%.0f', now + 1)\n"                                           \
    "local function live(key)\n"                                                                   \
    "  local n = redis.pcall('ZCOUNT', key, live_from, '+inf')\n"                                  \
    "  if type(n) == 'number' then return n end\n"                                                 \
    "  local v = redis.pcall('GET', key)\n"                                                        \
    "  if type(v) == 'string' and #v < 16 and string.match(v, '^%d+$') then\n"                     \
    "    return tonumber(v)\n"                                                                     \
    "  end\n"                                                                                      \
    "  return 0\n"                                                                                 \
    "end\n"

/* Redis key names of one key id. */
const char *relay_ks_record_key(const char *id, apr_pool_t *p);
const char *relay_ks_concurrency_key(const char *id, apr_pool_t *p);
const char *relay_ks_usage_key(const char *id, apr_pool_t *p);

/*
 * The KEYS of a script that reads n keys at once: groups of n names, the
 * first three the record, concurrency and usage keys of ids; the caller
 * fills the groups after those.
 */
const char **relay_ks_key_groups(const char *const *ids, int n, int groups, apr_pool_t *p);

/* Run a key-store script whose answer is an array; NULL and *err ("... what") otherwise. */
redisReply *relay_ks_array_call(relay_redis_conn *c, const relay_script *s, int nkeys,
                                const char **keys, const char *what, apr_pool_t *p,
                                const char **err);

/* A reply element as a string copied into p ("" for nil or other types). */
const char *relay_ks_elem_str(const redisReply *e, apr_pool_t *p);

/* The records of n ids, in their order (missing keys left out), in one script call. */
apr_array_header_t *relay_ks_read_records(relay_redis_conn *c, const char *const *ids, int n,
                                          apr_pool_t *p, const char **err);

/* Load the list scripts' SHA1s (from relay_keystore_init). */
void relay_keystore_list_init(void);

#endif
