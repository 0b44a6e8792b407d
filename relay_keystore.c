/*
 * relay_keystore.c - key records in Redis for the admin and relay-keys (see
 * relay_keystore.h).
 */
#include "relay_keystore.h"
#include "relay_keys.h"
#include "relay_schema.h"
#include "relay_validate.h"

#include <apr_hash.h>
#include <apr_strings.h>
#include <apr_time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    "local function live(key)\n"                                                                   \
    "  local n = redis.pcall('ZCOUNT', key, string.format('%.0f', now + 1), '+inf')\n"             \
    "  if type(n) == 'number' then return n end\n"                                                 \
    "  local v = redis.pcall('GET', key)\n"                                                        \
    "  if type(v) == 'string' and #v < 16 and string.match(v, '^%d+$') then\n"                     \
    "    return tonumber(v)\n"                                                                     \
    "  end\n"                                                                                      \
    "  return 0\n"                                                                                 \
    "end\n"

/*
 * Read keys with their live lease count and usage in one call.
 * KEYS: apikey:{id} x n, concurrency:{id} x n, usage:{id} x n,
 *       usage:daily:{id}:{today} x n, usage:monthly:{id}:{month} x n.
 * Returns n entries of {fields, live leases, total, today, month} (flat HGETALLs).
 */
static const char read_lua[] = LUA_NOW LUA_LIVE
    "local n = #KEYS / 5\n"
    "local function all(key)\n"
    "  local f = redis.pcall('HGETALL', key)\n"
    "  if type(f) ~= 'table' or f.err then return {} end\n"
    "  return f\n"
    "end\n"
    "local out = {}\n"
    "for i = 1, n do\n"
    "  out[i] = {all(KEYS[i]), live(KEYS[n + i]), all(KEYS[2 * n + i]), all(KEYS[3 * n + i]),"
    " all(KEYS[4 * n + i])}\n"
    "end\n"
    "return out\n";

/*
 * Creation times, to pick the newest keys of a long list. KEYS: apikey:{id}
 * x n. Returns n strings ("" when missing or not a hash).
 */
static const char created_lua[] =
    "local out = {}\n"
    "for i, key in ipairs(KEYS) do\n"
    "  local v = redis.pcall('HGET', key, '" RELAY_F_CREATED_AT "')\n"
    "  if type(v) ~= 'string' then v = '' end\n"
    "  out[i] = v\n"
    "end\n"
    "return out\n";

/*
 * Live columns of the list. KEYS: apikey:{id} x n, concurrency:{id} x n,
 * usage:{id} x n. Returns n entries: {0} for a missing key, else
 * {1, live leases, concurrencyLimit, totalTokens}.
 */
static const char live_lua[] = LUA_NOW LUA_LIVE
    "local n = #KEYS / 3\n"
    "local function str(v)\n"
    "  if type(v) == 'string' then return v end\n"
    "  return ''\n"
    "end\n"
    "local out = {}\n"
    "for i = 1, n do\n"
    "  if redis.call('EXISTS', KEYS[i]) == 0 then\n"
    "    out[i] = {0}\n"
    "  else\n"
    "    out[i] = {1, live(KEYS[n + i]),"
    " str(redis.pcall('HGET', KEYS[i], '" RELAY_F_CONCURRENCY_LIMIT "')),"
    " str(redis.pcall('HGET', KEYS[2 * n + i], '" RELAY_U_TOTAL_TOKENS "'))}\n"
    "  end\n"
    "end\n"
    "return out\n";

/*
 * History: KEYS = usage:daily:{id}:{date} x d, then usage:{id}:model:daily:{model}:{date}
 * for each model and date. Returns the flat HGETALL of each, in order.
 */
static const char history_lua[] =
    "local out = {}\n"
    "for i, key in ipairs(KEYS) do\n"
    "  local f = redis.pcall('HGETALL', key)\n"
    "  if type(f) ~= 'table' or f.err then f = {} end\n"
    "  out[i] = f\n"
    "end\n"
    "return out\n";

/*
 * Create: KEYS apikey:{id}, apikey:hash_map; ARGV hash, id, field, value, ...
 * Refuses (returns 0) when the id or the hash exists already, so a key can
 * never be overwritten nor two ids share one hash.
 */
static const char create_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then\n"
    "  return 0\n"
    "end\n"
    "redis.call('HSET', KEYS[1], unpack(ARGV, 3))\n"
    "redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])\n"
    "return 1\n";

/*
 * Update: KEYS apikey:{id}; ARGV field, value, ... Only an existing key
 * changes, so a key deleted meanwhile is not brought back half-empty.
 */
static const char update_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
    "redis.call('HSET', KEYS[1], unpack(ARGV))\n"
    "return 1\n";

/*
 * Delete: KEYS apikey:{id}, apikey:hash_map, concurrency:{id}; ARGV id.
 * The hash-map entry goes only if it still points at this key.
 */
static const char delete_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
    "local h = redis.call('HGET', KEYS[1], '" RELAY_F_API_KEY "')\n"
    "if h and redis.call('HGET', KEYS[2], h) == ARGV[1] then redis.call('HDEL', KEYS[2], h) end\n"
    "redis.call('DEL', KEYS[1], KEYS[3])\n"
    "return 1\n";

static relay_script read_script, history_script, create_script, update_script, delete_script,
    created_script, live_script;

void relay_keystore_init(void)
{
    if (!read_script.name) {
        relay_script_init(&read_script, "keys-read", read_lua);
        relay_script_init(&history_script, "usage-history", history_lua);
        relay_script_init(&create_script, "key-create", create_lua);
        relay_script_init(&update_script, "key-update", update_lua);
        relay_script_init(&delete_script, "key-delete", delete_lua);
        relay_script_init(&created_script, "keys-created", created_lua);
        relay_script_init(&live_script, "keys-live", live_lua);
    }
}

const char *relay_now_iso(apr_pool_t *p)
{
    apr_time_t now = apr_time_now();
    char *buf = apr_palloc(p, RELAY_ISO_LEN + 1);

    relay_iso8601((time_t)apr_time_sec(now), (int)(apr_time_usec(now) / 1000), buf);
    return buf;
}

int relay_key_enabled(const relay_key_record *k)
{
    return strcmp(k->is_active, RELAY_ACTIVE_TRUE) == 0;
}

int relay_key_expired(const char *expires_at, const char *now_iso)
{
    return expires_at && expires_at[0] && strcmp(expires_at, now_iso) < 0;
}

const char *relay_key_status(const relay_key_record *k, const char *now_iso)
{
    if (!relay_key_enabled(k)) {
        return "disabled";
    }
    if (relay_key_expired(k->expires_at, now_iso)) {
        return "expired";
    }
    return "active";
}

/* Redis key names of one key id. */
static const char *record_key(const char *id, apr_pool_t *p)
{
    return apr_pstrcat(p, RELAY_KEY_RECORD_PREFIX, id, NULL);
}

static const char *concurrency_key(const char *id, apr_pool_t *p)
{
    return apr_pstrcat(p, RELAY_CONCURRENCY_PREFIX, id, NULL);
}

static const char *usage_key(const char *id, apr_pool_t *p)
{
    return apr_pstrcat(p, RELAY_USAGE_PREFIX, id, NULL);
}

/* A reply element as a string copied into p ("" for nil or other types). */
static const char *elem_str(const redisReply *e, apr_pool_t *p)
{
    if (e && (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS)) {
        return apr_pstrmemdup(p, e->str, e->len);
    }
    if (e && e->type == REDIS_REPLY_INTEGER) {
        return apr_psprintf(p, "%" APR_INT64_T_FMT, (apr_int64_t)e->integer);
    }
    return "";
}

/* Usage counters from a flat HGETALL reply (either naming scheme). */
static void period_from(const redisReply *h, relay_usage_period *u, apr_pool_t *p)
{
    size_t i;

    memset(u, 0, sizeof(*u));
    if (!h || h->type != REDIS_REPLY_ARRAY) {
        return;
    }
    for (i = 0; i + 1 < h->elements; i += 2) {
        const char *f = elem_str(h->element[i], p);
        long long v = strtoll(elem_str(h->element[i + 1], p), NULL, 10);
        if (!strcmp(f, RELAY_U_TOTAL_TOKENS) || !strcmp(f, RELAY_U_TOKENS)) u->tokens = v;
        else if (!strcmp(f, RELAY_U_TOTAL_INPUT) || !strcmp(f, RELAY_U_INPUT)) u->input = v;
        else if (!strcmp(f, RELAY_U_TOTAL_OUTPUT) || !strcmp(f, RELAY_U_OUTPUT)) u->output = v;
        else if (!strcmp(f, RELAY_U_TOTAL_CACHE_CREATE) || !strcmp(f, RELAY_U_CACHE_CREATE))
            u->cache_create = v;
        else if (!strcmp(f, RELAY_U_TOTAL_CACHE_READ) || !strcmp(f, RELAY_U_CACHE_READ))
            u->cache_read = v;
        else if (!strcmp(f, RELAY_U_TOTAL_ALL) || !strcmp(f, RELAY_U_ALL)) u->all = v;
        else if (!strcmp(f, RELAY_U_TOTAL_REQUESTS) || !strcmp(f, RELAY_U_REQUESTS))
            u->requests = v;
    }
}

/* An empty record of id: every field "" except the limits ("0"). */
static relay_key_record *record_new(const char *id, apr_pool_t *p)
{
    relay_key_record *k = apr_pcalloc(p, sizeof(*k));

    k->id = id;
    k->name = k->description = k->key_preview = k->is_active = "";
    k->created_at = k->updated_at = k->last_used_at = k->expires_at = "";
    k->created_by = k->updated_by = "";
    k->token_limit = k->concurrency_limit = "0";
    return k;
}

/* Take one stored field into a record (apiKey, the hash, is left out). */
static void record_set(relay_key_record *k, apr_array_header_t *fields, const char *f,
                       const char *v)
{
    if (!strcmp(f, RELAY_F_API_KEY)) {
        return;
    }
    APR_ARRAY_PUSH(fields, const char *) = f;
    APR_ARRAY_PUSH(fields, const char *) = v;
    if (!strcmp(f, RELAY_F_NAME)) k->name = v;
    else if (!strcmp(f, RELAY_F_DESCRIPTION)) k->description = v;
    else if (!strcmp(f, RELAY_F_KEY_PREVIEW)) k->key_preview = v;
    else if (!strcmp(f, RELAY_F_TOKEN_LIMIT)) k->token_limit = v;
    else if (!strcmp(f, RELAY_F_CONCURRENCY_LIMIT)) k->concurrency_limit = v;
    else if (!strcmp(f, RELAY_F_IS_ACTIVE)) k->is_active = v;
    else if (!strcmp(f, RELAY_F_CREATED_AT)) k->created_at = v;
    else if (!strcmp(f, RELAY_F_UPDATED_AT)) k->updated_at = v;
    else if (!strcmp(f, RELAY_F_LAST_USED_AT)) k->last_used_at = v;
    else if (!strcmp(f, RELAY_F_EXPIRES_AT)) k->expires_at = v;
    else if (!strcmp(f, RELAY_F_CREATED_BY)) k->created_by = v;
    else if (!strcmp(f, RELAY_F_UPDATED_BY)) k->updated_by = v;
}

/* Build a record from one entry of the read script's reply; NULL if the key is gone. */
static relay_key_record *record_from(const redisReply *entry, const char *id, apr_pool_t *p)
{
    relay_key_record *k;
    apr_array_header_t *fields;
    const redisReply *h;
    size_t i;

    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 5) {
        return NULL;
    }
    h = entry->element[0];
    if (h->type != REDIS_REPLY_ARRAY || h->elements == 0) {
        return NULL;
    }
    k = record_new(id, p);
    fields = apr_array_make(p, (int)h->elements, sizeof(const char *));
    for (i = 0; i + 1 < h->elements; i += 2) {
        record_set(k, fields, elem_str(h->element[i], p), elem_str(h->element[i + 1], p));
    }
    k->fields = fields;
    k->current_concurrency = entry->element[1]->type == REDIS_REPLY_INTEGER
                                 ? (long)entry->element[1]->integer
                                 : 0;
    period_from(entry->element[2], &k->total, p);
    period_from(entry->element[3], &k->today, p);
    period_from(entry->element[4], &k->month, p);
    return k;
}

/* Read the records of the given ids in one script call. */
static apr_array_header_t *read_records(relay_redis_conn *c, const char **ids, int n,
                                        apr_pool_t *p, const char **err)
{
    apr_array_header_t *out = apr_array_make(p, n > 0 ? n : 1, sizeof(relay_key_record *));
    const char **keys, *now;
    redisReply *rep;
    int i;

    if (n == 0) {
        return out;
    }
    keys = apr_palloc(p, sizeof(*keys) * 5 * n);
    now = relay_now_iso(p);
    for (i = 0; i < n; i++) {
        keys[i] = record_key(ids[i], p);
        keys[n + i] = concurrency_key(ids[i], p);
        keys[2 * n + i] = usage_key(ids[i], p);
        keys[3 * n + i] = apr_psprintf(p, RELAY_USAGE_DAILY_PREFIX "%s:%.10s", ids[i], now);
        keys[4 * n + i] = apr_psprintf(p, RELAY_USAGE_MONTHLY_PREFIX "%s:%.7s", ids[i], now);
    }
    rep = relay_redis_script(c, &read_script, 5 * n, keys, 0, NULL, p, err);
    if (!rep) {
        return NULL;
    }
    if (rep->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(rep);
        *err = "unexpected reply reading keys";
        return NULL;
    }
    for (i = 0; i < n && (size_t)i < rep->elements; i++) {
        relay_key_record *k = record_from(rep->element[i], ids[i], p);
        if (k) {
            APR_ARRAY_PUSH(out, relay_key_record *) = k;
        }
    }
    freeReplyObject(rep);
    return out;
}

/* Newest first, then by name. */
static int record_cmp(const void *a, const void *b)
{
    const relay_key_record *x = *(relay_key_record *const *)a;
    const relay_key_record *y = *(relay_key_record *const *)b;
    int c = strcmp(y->created_at, x->created_at);
    return c ? c : strcmp(x->name, y->name);
}

/* An id with its creation time, to choose the newest keys of a long list. */
typedef struct {
    const char *id;
    const char *created_at;
} id_created;

/* Newest first, then by id, so a cut through equal times is stable. */
static int id_created_cmp(const void *a, const void *b)
{
    const id_created *x = a, *y = b;
    int c = strcmp(y->created_at, x->created_at);
    return c ? c : strcmp(x->id, y->id);
}

/*
 * Keep the `max` newest of ids (in place). Reads only createdAt of each key,
 * 1000 keys per script call. Returns 0, or -1 with *err.
 */
static int keep_newest(relay_redis_conn *c, apr_array_header_t *ids, int max, apr_pool_t *p,
                       const char **err)
{
    id_created *all = apr_pcalloc(p, sizeof(*all) * ids->nelts);
    int i, j;

    for (i = 0; i < ids->nelts; i += 1000) {
        int n = ids->nelts - i > 1000 ? 1000 : ids->nelts - i;
        const char **keys = apr_palloc(p, sizeof(*keys) * n);
        redisReply *rep;

        for (j = 0; j < n; j++) {
            all[i + j].id = APR_ARRAY_IDX(ids, i + j, const char *);
            all[i + j].created_at = "";
            keys[j] = record_key(all[i + j].id, p);
        }
        rep = relay_redis_script(c, &created_script, n, keys, 0, NULL, p, err);
        if (!rep) {
            return -1;
        }
        if (rep->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(rep);
            *err = "unexpected reply reading creation times";
            return -1;
        }
        for (j = 0; j < n && (size_t)j < rep->elements; j++) {
            all[i + j].created_at = elem_str(rep->element[j], p);
        }
        freeReplyObject(rep);
    }
    qsort(all, ids->nelts, sizeof(*all), id_created_cmp);
    for (i = 0; i < max; i++) {
        APR_ARRAY_IDX(ids, i, const char *) = all[i].id;
    }
    ids->nelts = max;
    return 0;
}

apr_array_header_t *relay_keystore_list(relay_redis_conn *c, int max, int *total, apr_pool_t *p,
                                        const char **err)
{
    static const size_t plen = sizeof(RELAY_KEY_RECORD_PREFIX) - 1;
    apr_array_header_t *ids = apr_array_make(p, 64, sizeof(const char *));
    apr_array_header_t *all = apr_array_make(p, 64, sizeof(relay_key_record *));
    apr_hash_t *seen = apr_hash_make(p);
    const char *cursor = "0";
    int i;

    *total = 0;
    do {
        const char *argv[6] = {"SCAN", cursor, "MATCH", RELAY_KEY_RECORD_PREFIX "*", "COUNT",
                               "1000"};
        size_t lens[6];
        redisReply *rep;
        size_t j;

        for (j = 0; j < 6; j++) {
            lens[j] = strlen(argv[j]);
        }
        rep = relay_redis_command(c, 6, argv, lens, p, err);
        if (!rep) {
            return NULL;
        }
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
            rep->element[1]->type != REDIS_REPLY_ARRAY) {
            *err = rep->type == REDIS_REPLY_ERROR ? apr_pstrdup(p, rep->str)
                                                  : "unexpected reply to SCAN";
            freeReplyObject(rep);
            return NULL;
        }
        cursor = elem_str(rep->element[0], p);
        for (j = 0; j < rep->element[1]->elements; j++) {
            const char *name = elem_str(rep->element[1]->element[j], p);
            /* apikey:hash_map and anything that is not a key id is skipped;
             * SCAN may name a key twice while Redis rehashes */
            if (strlen(name) > plen && relay_uuid_ok(name + plen) &&
                !apr_hash_get(seen, name + plen, APR_HASH_KEY_STRING)) {
                apr_hash_set(seen, name + plen, APR_HASH_KEY_STRING, name);
                APR_ARRAY_PUSH(ids, const char *) = name + plen;
            }
        }
        freeReplyObject(rep);
    } while (strcmp(cursor, "0") != 0);

    *total = ids->nelts;
    if (max >= 0 && ids->nelts > max && keep_newest(c, ids, max, p, err) != 0) {
        return NULL;
    }
    /* read in batches so one script call stays small */
    for (i = 0; i < ids->nelts; i += 200) {
        int n = ids->nelts - i > 200 ? 200 : ids->nelts - i;
        apr_array_header_t *part =
            read_records(c, &APR_ARRAY_IDX(ids, i, const char *), n, p, err);
        if (!part) {
            return NULL;
        }
        apr_array_cat(all, part);
    }
    qsort(all->elts, all->nelts, sizeof(relay_key_record *), record_cmp);
    return all;
}

apr_array_header_t *relay_keystore_live(relay_redis_conn *c, const char *const *ids, int n,
                                        apr_pool_t *p, const char **err)
{
    apr_array_header_t *out = apr_array_make(p, n > 0 ? n : 1, sizeof(relay_key_live));
    const char **keys;
    redisReply *rep;
    int i;

    if (n == 0) {
        return out;
    }
    keys = apr_palloc(p, sizeof(*keys) * 3 * n);
    for (i = 0; i < n; i++) {
        keys[i] = record_key(ids[i], p);
        keys[n + i] = concurrency_key(ids[i], p);
        keys[2 * n + i] = usage_key(ids[i], p);
    }
    rep = relay_redis_script(c, &live_script, 3 * n, keys, 0, NULL, p, err);
    if (!rep) {
        return NULL;
    }
    if (rep->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(rep);
        *err = "unexpected reply reading live counts";
        return NULL;
    }
    for (i = 0; i < n && (size_t)i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        relay_key_live *l;

        if (e->type != REDIS_REPLY_ARRAY || e->elements < 4 ||
            e->element[0]->type != REDIS_REPLY_INTEGER || e->element[0]->integer != 1) {
            continue;
        }
        l = apr_array_push(out);
        l->id = ids[i];
        l->current_concurrency =
            e->element[1]->type == REDIS_REPLY_INTEGER ? (long)e->element[1]->integer : 0;
        l->concurrency_limit = elem_str(e->element[2], p);
        l->total_tokens = strtoll(elem_str(e->element[3], p), NULL, 10);
    }
    freeReplyObject(rep);
    return out;
}

relay_key_record *relay_keystore_get(relay_redis_conn *c, const char *id, apr_pool_t *p,
                                     const char **err)
{
    apr_array_header_t *one;

    *err = NULL;
    one = read_records(c, &id, 1, p, err);
    if (!one || one->nelts == 0) {
        return NULL;
    }
    return APR_ARRAY_IDX(one, 0, relay_key_record *);
}

relay_ks_result relay_keystore_create(relay_redis_conn *c, const relay_key_new *nk,
                                      const char *secret,
                                      const unsigned char rnd[RELAY_KEYSTORE_RANDOM_BYTES],
                                      relay_key_record **out, const char **plain, apr_pool_t *p,
                                      const char **err)
{
    char *key = apr_palloc(p, RELAY_KEY_LEN + 1);
    char *id = apr_palloc(p, RELAY_UUID_LEN + 1);
    char *hash = apr_palloc(p, RELAY_SHA256_HEX_LEN + 1);
    char preview[32];
    const char *now = relay_now_iso(p);
    const char *keys[2];
    const char *args[2 + 2 * 13];
    apr_array_header_t *fields = apr_array_make(p, 2 * 13, sizeof(const char *));
    relay_key_record *k;
    redisReply *rep;
    long long done;
    int n = 0, i;

    relay_key_from_random(rnd, key);
    relay_uuid_from_random(rnd + RELAY_KEY_RANDOM_BYTES, id);
    relay_key_hash(key, RELAY_KEY_LEN, secret, hash);
    relay_key_preview(key, preview, sizeof(preview));

    args[n++] = hash;
    args[n++] = id;
#define PAIR(f, v) (args[n++] = (f), args[n++] = (v))
    PAIR(RELAY_F_ID, id);
    PAIR(RELAY_F_NAME, nk->name);
    PAIR(RELAY_F_DESCRIPTION, nk->description ? nk->description : "");
    PAIR(RELAY_F_API_KEY, hash);
    PAIR(RELAY_F_KEY_PREVIEW, apr_pstrdup(p, preview));
    PAIR(RELAY_F_TOKEN_LIMIT, apr_ltoa(p, nk->token_limit));
    PAIR(RELAY_F_CONCURRENCY_LIMIT, apr_ltoa(p, nk->concurrency_limit));
    PAIR(RELAY_F_IS_ACTIVE, RELAY_ACTIVE_TRUE);
    PAIR(RELAY_F_CREATED_AT, now);
    PAIR(RELAY_F_UPDATED_AT, now);
    PAIR(RELAY_F_LAST_USED_AT, "");
    PAIR(RELAY_F_EXPIRES_AT, nk->expires_at ? nk->expires_at : "");
    PAIR(RELAY_F_CREATED_BY, nk->created_by);
#undef PAIR
    keys[0] = record_key(id, p);
    keys[1] = RELAY_KEY_HASH_MAP;
    rep = relay_redis_script(c, &create_script, 2, keys, n, args, p, err);
    if (!rep) {
        return RELAY_KS_ERROR;
    }
    done = rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
    freeReplyObject(rep);
    if (done < 0) {
        *err = "unexpected reply creating a key";
        return RELAY_KS_ERROR;
    }
    if (done == 0) {
        *err = "a key with this id or key hash exists already; nothing was written";
        return RELAY_KS_EXISTS;
    }
    /* the record as written: a second read could fail and lose the only copy of the key */
    k = record_new(id, p);
    for (i = 2; i + 1 < n; i += 2) {
        record_set(k, fields, args[i], args[i + 1]);
    }
    k->fields = fields;
    *out = k;
    *plain = key;
    return RELAY_KS_DONE;
}

/* Whether value is a stored form field may take; the front ends check what people type. */
static int field_value_ok(const char *field, const char *value)
{
    char iso[RELAY_ISO_LEN + 1], num[24];
    long n;

    if (!strcmp(field, RELAY_F_NAME)) {
        return relay_check_name(value) == RELAY_VALID;
    }
    if (!strcmp(field, RELAY_F_DESCRIPTION)) {
        return relay_check_description(value) == RELAY_VALID;
    }
    if (!strcmp(field, RELAY_F_TOKEN_LIMIT) || !strcmp(field, RELAY_F_CONCURRENCY_LIMIT)) {
        /* the digits alone, as the module and claude-relay-service read them */
        if (!value[0] || relay_parse_limit(value, &n) != 0) {
            return 0;
        }
        snprintf(num, sizeof(num), "%ld", n);
        return !strcmp(num, value);
    }
    if (!strcmp(field, RELAY_F_IS_ACTIVE)) {
        return !strcmp(value, RELAY_ACTIVE_TRUE) || !strcmp(value, RELAY_ACTIVE_FALSE);
    }
    if (!strcmp(field, RELAY_F_EXPIRES_AT)) {
        return !value[0] || (relay_iso8601_normalize(value, iso) == 0 && !strcmp(iso, value));
    }
    return 0;
}

relay_ks_result relay_keystore_update(relay_redis_conn *c, const char *id,
                                      const apr_array_header_t *pairs, const char *by,
                                      apr_pool_t *p, const char **err)
{
    const char *key = record_key(id, p);
    int n = pairs->nelts + 4, i;
    const char **args = apr_palloc(p, sizeof(*args) * n);
    redisReply *rep;
    int done;

    if (pairs->nelts == 0 || pairs->nelts % 2 != 0 || !by) {
        *err = "an update needs field/value pairs and who makes it";
        return RELAY_KS_ERROR;
    }
    for (i = 0; i < pairs->nelts; i += 2) {
        const char *f = APR_ARRAY_IDX(pairs, i, const char *);
        const char *v = APR_ARRAY_IDX(pairs, i + 1, const char *);
        if (!field_value_ok(f, v)) {
            *err = apr_psprintf(p, "field %s cannot be set to that value", f);
            return RELAY_KS_ERROR;
        }
        args[i] = f;
        args[i + 1] = v;
    }
    args[i++] = RELAY_F_UPDATED_AT;
    args[i++] = relay_now_iso(p);
    args[i++] = RELAY_F_UPDATED_BY;
    args[i++] = by;
    rep = relay_redis_script(c, &update_script, 1, &key, n, args, p, err);
    if (!rep) {
        return RELAY_KS_ERROR;
    }
    done = rep->type == REDIS_REPLY_INTEGER ? (int)rep->integer : -1;
    freeReplyObject(rep);
    if (done < 0) {
        *err = "unexpected reply updating a key";
        return RELAY_KS_ERROR;
    }
    return done ? RELAY_KS_DONE : RELAY_KS_NOT_FOUND;
}

int relay_keystore_history(relay_redis_conn *c, const char *id, int ndays, apr_pool_t *p,
                           apr_array_header_t **days, apr_array_header_t **models,
                           const char **err)
{
    const char *argv[2];
    size_t lens[2];
    redisReply *rep;
    apr_array_header_t *names = apr_array_make(p, 8, sizeof(const char *));
    const char **dates = apr_palloc(p, sizeof(*dates) * ndays);
    const char **keys;
    apr_time_t now = apr_time_now();
    int i, j, nk;

    /* the models this key has used */
    argv[0] = "SMEMBERS";
    argv[1] = apr_pstrcat(p, usage_key(id, p), RELAY_USAGE_MODELS_SUFFIX, NULL);
    lens[0] = 8;
    lens[1] = strlen(argv[1]);
    rep = relay_redis_command(c, 2, argv, lens, p, err);
    if (!rep) {
        return -1;
    }
    if (rep->type == REDIS_REPLY_ARRAY) {
        for (i = 0; i < (int)rep->elements && i < 50; i++) {
            APR_ARRAY_PUSH(names, const char *) = elem_str(rep->element[i], p);
        }
    }
    freeReplyObject(rep);

    for (i = 0; i < ndays; i++) {
        char iso[RELAY_ISO_LEN + 1];
        apr_time_t t = now - apr_time_from_sec((apr_int64_t)(ndays - 1 - i) * 86400);
        relay_iso8601((time_t)apr_time_sec(t), 0, iso);
        dates[i] = apr_pstrndup(p, iso, 10);
    }
    nk = ndays * (1 + names->nelts);
    keys = apr_palloc(p, sizeof(*keys) * nk);
    for (i = 0; i < ndays; i++) {
        keys[i] = apr_pstrcat(p, RELAY_USAGE_DAILY_PREFIX, id, ":", dates[i], NULL);
        for (j = 0; j < names->nelts; j++) {
            keys[ndays * (1 + j) + i] =
                apr_pstrcat(p, usage_key(id, p), RELAY_USAGE_MODEL_DAILY_INFIX,
                            APR_ARRAY_IDX(names, j, const char *), ":", dates[i], NULL);
        }
    }
    rep = relay_redis_script(c, &history_script, nk, keys, 0, NULL, p, err);
    if (!rep) {
        return -1;
    }
    if (rep->type != REDIS_REPLY_ARRAY || (int)rep->elements != nk) {
        freeReplyObject(rep);
        *err = "unexpected reply reading the usage history";
        return -1;
    }
    *days = apr_array_make(p, ndays, sizeof(relay_usage_day));
    for (i = 0; i < ndays; i++) {
        relay_usage_day *d = apr_array_push(*days);
        d->date = dates[i];
        period_from(rep->element[i], &d->usage, p);
    }
    *models = apr_array_make(p, names->nelts + 1, sizeof(relay_usage_model));
    for (j = 0; j < names->nelts; j++) {
        relay_usage_model *m = apr_array_push(*models);
        m->model = APR_ARRAY_IDX(names, j, const char *);
        memset(&m->usage, 0, sizeof(m->usage));
        for (i = 0; i < ndays; i++) {
            relay_usage_period one;
            period_from(rep->element[ndays * (1 + j) + i], &one, p);
            m->usage.tokens += one.tokens;
            m->usage.input += one.input;
            m->usage.output += one.output;
            m->usage.cache_create += one.cache_create;
            m->usage.cache_read += one.cache_read;
            m->usage.all += one.all;
            m->usage.requests += one.requests;
        }
    }
    freeReplyObject(rep);
    return 0;
}

relay_ks_result relay_keystore_delete(relay_redis_conn *c, const char *id, apr_pool_t *p,
                                      const char **err)
{
    const char *keys[3];
    redisReply *rep;
    int done;

    keys[0] = record_key(id, p);
    keys[1] = RELAY_KEY_HASH_MAP;
    keys[2] = concurrency_key(id, p);
    rep = relay_redis_script(c, &delete_script, 3, keys, 1, &id, p, err);
    if (!rep) {
        return RELAY_KS_ERROR;
    }
    done = rep->type == REDIS_REPLY_INTEGER ? (int)rep->integer : -1;
    freeReplyObject(rep);
    if (done < 0) {
        *err = "unexpected reply deleting a key";
        return RELAY_KS_ERROR;
    }
    return done ? RELAY_KS_DONE : RELAY_KS_NOT_FOUND;
}
