/*
 * relay_keystore.c - key records in Redis for the admin and relay-keys (see
 * relay_keystore.h): reading one key, creating, changing, regenerating,
 * releasing and deleting. Lists are in relay_keystore_list.c.
 */
#include "relay_keystore.h"
#include "relay_keystore_int.h"
#include "relay_keys.h"
#include "relay_schema.h"
#include "relay_validate.h"

#include <apr_hash.h>
#include <apr_strings.h>
#include <apr_time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
 * History: KEYS = usage:daily:{id}:{date} x d, then usage:{id}:model:daily:{model}:{date}
 * for each model and date. Returns the flat HGETALL of each, in order.
 */
static const char history_lua[] = "local out = {}\n"
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
static const char update_lua[] = "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
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

/*
 * Regenerate: KEYS apikey:{id}, apikey:hash_map; ARGV new hash, id, preview,
 * updatedAt, updatedBy. Returns 0 when the key does not exist, -1 when the
 * new hash is taken (nothing written), 1 when done: the old hash leaves the
 * map (if it still names this key) as the new one enters, in one step.
 */
static const char regenerate_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
    "if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return -1 end\n"
    "local old = redis.call('HGET', KEYS[1], '" RELAY_F_API_KEY "')\n"
    "if old and redis.call('HGET', KEYS[2], old) == ARGV[2] then\n"
    "  redis.call('HDEL', KEYS[2], old)\n"
    "end\n"
    "redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])\n"
    "redis.call('HSET', KEYS[1], '" RELAY_F_API_KEY "', ARGV[1],"
    " '" RELAY_F_KEY_PREVIEW "', ARGV[3],"
    " '" RELAY_F_UPDATED_AT "', ARGV[4], '" RELAY_F_UPDATED_BY "', ARGV[5])\n"
    "return 1\n";

/*
 * Release slots: KEYS apikey:{id}, concurrency:{id}; ARGV updatedAt,
 * updatedBy. Returns -1 when the key does not exist, else the live leases
 * deleted. Writing the record makes every relay server hear of the change
 * (and give back slots it keeps for the key).
 */
static const char release_lua[] = LUA_NOW LUA_LIVE
    "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end\n"
    "local n = live(KEYS[2])\n"
    "redis.call('DEL', KEYS[2])\n"
    "redis.call('HSET', KEYS[1], '" RELAY_F_UPDATED_AT "', ARGV[1], '" RELAY_F_UPDATED_BY "',"
    " ARGV[2])\n"
    "return n\n";

static relay_script read_script, history_script, create_script, update_script, delete_script,
    regenerate_script, release_script;

void relay_keystore_init(void)
{
    if (!read_script.name) {
        relay_script_init(&read_script, "keys-read", read_lua);
        relay_script_init(&history_script, "usage-history", history_lua);
        relay_script_init(&create_script, "key-create", create_lua);
        relay_script_init(&update_script, "key-update", update_lua);
        relay_script_init(&delete_script, "key-delete", delete_lua);
        relay_script_init(&regenerate_script, "key-regenerate", regenerate_lua);
        relay_script_init(&release_script, "key-release", release_lua);
        relay_keystore_list_init();
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
const char *relay_ks_record_key(const char *id, apr_pool_t *p)
{
    return apr_pstrcat(p, RELAY_KEY_RECORD_PREFIX, id, NULL);
}

const char *relay_ks_concurrency_key(const char *id, apr_pool_t *p)
{
    return apr_pstrcat(p, RELAY_CONCURRENCY_PREFIX, id, NULL);
}

const char *relay_ks_usage_key(const char *id, apr_pool_t *p)
{
    return apr_pstrcat(p, RELAY_USAGE_PREFIX, id, NULL);
}

const char **relay_ks_key_groups(const char *const *ids, int n, int groups, apr_pool_t *p)
{
    const char **keys = apr_palloc(p, sizeof(*keys) * groups * n);
    int i;

    for (i = 0; i < n; i++) {
        keys[i] = relay_ks_record_key(ids[i], p);
        keys[n + i] = relay_ks_concurrency_key(ids[i], p);
        keys[2 * n + i] = relay_ks_usage_key(ids[i], p);
    }
    return keys;
}

redisReply *relay_ks_array_call(relay_redis_conn *c, const relay_script *s, int nkeys,
                                const char **keys, const char *what, apr_pool_t *p,
                                const char **err)
{
    redisReply *rep = relay_redis_script(c, s, nkeys, keys, 0, NULL, p, err);

    if (rep && rep->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(rep);
        *err = apr_pstrcat(p, "unexpected reply ", what, NULL);
        return NULL;
    }
    return rep;
}

/* Run a key-store script whose answer is an integer: 0 and *out, or -1 and *err ("... what"). */
static int int_call(relay_redis_conn *c, const relay_script *s, int nkeys, const char **keys,
                    int nargs, const char **args, const char *what, apr_pool_t *p, long long *out,
                    const char **err)
{
    redisReply *rep = relay_redis_script(c, s, nkeys, keys, nargs, args, p, err);
    int ok;

    if (!rep) {
        return -1;
    }
    ok = rep->type == REDIS_REPLY_INTEGER;
    *out = ok ? rep->integer : 0;
    freeReplyObject(rep);
    if (!ok) {
        *err = apr_pstrcat(p, "unexpected reply ", what, NULL);
        return -1;
    }
    return 0;
}

/* A reply element as a string copied into p ("" for nil or other types). */
const char *relay_ks_elem_str(const redisReply *e, apr_pool_t *p)
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
        const char *f = relay_ks_elem_str(h->element[i], p);
        long long v = strtoll(relay_ks_elem_str(h->element[i + 1], p), NULL, 10);
        if (!strcmp(f, RELAY_U_TOTAL_TOKENS) || !strcmp(f, RELAY_U_TOKENS))
            u->tokens = v;
        else if (!strcmp(f, RELAY_U_TOTAL_INPUT) || !strcmp(f, RELAY_U_INPUT))
            u->input = v;
        else if (!strcmp(f, RELAY_U_TOTAL_OUTPUT) || !strcmp(f, RELAY_U_OUTPUT))
            u->output = v;
        else if (!strcmp(f, RELAY_U_TOTAL_CACHE_CREATE) || !strcmp(f, RELAY_U_CACHE_CREATE))
            u->cache_create = v;
        else if (!strcmp(f, RELAY_U_TOTAL_CACHE_READ) || !strcmp(f, RELAY_U_CACHE_READ))
            u->cache_read = v;
        else if (!strcmp(f, RELAY_U_TOTAL_ALL) || !strcmp(f, RELAY_U_ALL))
            u->all = v;
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
    if (!strcmp(f, RELAY_F_NAME))
        k->name = v;
    else if (!strcmp(f, RELAY_F_DESCRIPTION))
        k->description = v;
    else if (!strcmp(f, RELAY_F_KEY_PREVIEW))
        k->key_preview = v;
    else if (!strcmp(f, RELAY_F_TOKEN_LIMIT))
        k->token_limit = v;
    else if (!strcmp(f, RELAY_F_CONCURRENCY_LIMIT))
        k->concurrency_limit = v;
    else if (!strcmp(f, RELAY_F_IS_ACTIVE))
        k->is_active = v;
    else if (!strcmp(f, RELAY_F_CREATED_AT))
        k->created_at = v;
    else if (!strcmp(f, RELAY_F_UPDATED_AT))
        k->updated_at = v;
    else if (!strcmp(f, RELAY_F_LAST_USED_AT))
        k->last_used_at = v;
    else if (!strcmp(f, RELAY_F_EXPIRES_AT))
        k->expires_at = v;
    else if (!strcmp(f, RELAY_F_CREATED_BY))
        k->created_by = v;
    else if (!strcmp(f, RELAY_F_UPDATED_BY))
        k->updated_by = v;
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
        record_set(k, fields, relay_ks_elem_str(h->element[i], p),
                   relay_ks_elem_str(h->element[i + 1], p));
    }
    k->fields = fields;
    k->current_concurrency =
        entry->element[1]->type == REDIS_REPLY_INTEGER ? (long)entry->element[1]->integer : 0;
    period_from(entry->element[2], &k->total, p);
    period_from(entry->element[3], &k->today, p);
    period_from(entry->element[4], &k->month, p);
    return k;
}

/* Read the records of the given ids in one script call. */
apr_array_header_t *relay_ks_read_records(relay_redis_conn *c, const char *const *ids, int n,
                                          apr_pool_t *p, const char **err)
{
    apr_array_header_t *out = apr_array_make(p, n > 0 ? n : 1, sizeof(relay_key_record *));
    const char **keys, *now;
    redisReply *rep;
    int i;

    if (n == 0) {
        return out;
    }
    keys = relay_ks_key_groups(ids, n, 5, p);
    now = relay_now_iso(p);
    for (i = 0; i < n; i++) {
        keys[3 * n + i] = apr_psprintf(p, RELAY_USAGE_DAILY_PREFIX "%s:%.10s", ids[i], now);
        keys[4 * n + i] = apr_psprintf(p, RELAY_USAGE_MONTHLY_PREFIX "%s:%.7s", ids[i], now);
    }
    rep = relay_ks_array_call(c, &read_script, 5 * n, keys, "reading keys", p, err);
    if (!rep) {
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

relay_key_record *relay_keystore_get(relay_redis_conn *c, const char *id, apr_pool_t *p,
                                     const char **err)
{
    apr_array_header_t *one;

    *err = NULL;
    one = relay_ks_read_records(c, &id, 1, p, err);
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
    keys[0] = relay_ks_record_key(id, p);
    keys[1] = RELAY_KEY_HASH_MAP;
    if (int_call(c, &create_script, 2, keys, n, args, "creating a key", p, &done, err) != 0) {
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
    const char *key = relay_ks_record_key(id, p);
    int n = pairs->nelts + 4, i;
    const char **args = apr_palloc(p, sizeof(*args) * n);
    long long done;

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
    if (int_call(c, &update_script, 1, &key, n, args, "updating a key", p, &done, err) != 0) {
        return RELAY_KS_ERROR;
    }
    return done ? RELAY_KS_DONE : RELAY_KS_NOT_FOUND;
}

int relay_keystore_history(relay_redis_conn *c, const char *id, int ndays, apr_pool_t *p,
                           apr_array_header_t **days, apr_array_header_t **models, const char **err)
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
    argv[1] = apr_pstrcat(p, relay_ks_usage_key(id, p), RELAY_USAGE_MODELS_SUFFIX, NULL);
    lens[0] = 8;
    lens[1] = strlen(argv[1]);
    rep = relay_redis_command(c, 2, argv, lens, p, err);
    if (!rep) {
        return -1;
    }
    if (rep->type == REDIS_REPLY_ARRAY) {
        for (i = 0; i < (int)rep->elements && i < 50; i++) {
            APR_ARRAY_PUSH(names, const char *) = relay_ks_elem_str(rep->element[i], p);
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
                apr_pstrcat(p, relay_ks_usage_key(id, p), RELAY_USAGE_MODEL_DAILY_INFIX,
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
    long long done;

    keys[0] = relay_ks_record_key(id, p);
    keys[1] = RELAY_KEY_HASH_MAP;
    keys[2] = relay_ks_concurrency_key(id, p);
    if (int_call(c, &delete_script, 3, keys, 1, &id, "deleting a key", p, &done, err) != 0) {
        return RELAY_KS_ERROR;
    }
    return done ? RELAY_KS_DONE : RELAY_KS_NOT_FOUND;
}

relay_ks_result relay_keystore_regenerate(relay_redis_conn *c, const char *id, const char *secret,
                                          const unsigned char rnd[RELAY_KEY_RANDOM_BYTES],
                                          const char *by, const char **plain, const char **preview,
                                          apr_pool_t *p, const char **err)
{
    char *key = apr_palloc(p, RELAY_KEY_LEN + 1);
    char *hash = apr_palloc(p, RELAY_SHA256_HEX_LEN + 1);
    char *pre = apr_palloc(p, 32);
    const char *keys[2], *args[5];
    long long done;

    relay_key_from_random(rnd, key);
    relay_key_hash(key, RELAY_KEY_LEN, secret, hash);
    relay_key_preview(key, pre, 32);
    keys[0] = relay_ks_record_key(id, p);
    keys[1] = RELAY_KEY_HASH_MAP;
    args[0] = hash;
    args[1] = id;
    args[2] = pre;
    args[3] = relay_now_iso(p);
    args[4] = by;
    if (int_call(c, &regenerate_script, 2, keys, 5, args, "regenerating a key", p, &done, err) !=
        0) {
        return RELAY_KS_ERROR;
    }
    if (done == -1) {
        *err = "the new key's hash is taken already; nothing was written";
        return RELAY_KS_EXISTS;
    }
    if (done == 0) {
        return RELAY_KS_NOT_FOUND;
    }
    *plain = key;
    *preview = pre;
    return RELAY_KS_DONE;
}

relay_ks_result relay_keystore_release(relay_redis_conn *c, const char *id, const char *by,
                                       long *released, apr_pool_t *p, const char **err)
{
    const char *keys[2], *args[2];
    redisReply *rep;
    long long n;

    *released = 0;
    keys[0] = relay_ks_record_key(id, p);
    keys[1] = relay_ks_concurrency_key(id, p);
    args[0] = relay_now_iso(p);
    args[1] = by;
    rep = relay_redis_script(c, &release_script, 2, keys, 2, args, p, err);
    if (!rep) {
        return RELAY_KS_ERROR;
    }
    if (rep->type != REDIS_REPLY_INTEGER) {
        freeReplyObject(rep);
        *err = "unexpected reply releasing a key's slots";
        return RELAY_KS_ERROR;
    }
    n = rep->integer;
    freeReplyObject(rep);
    if (n < 0) {
        return RELAY_KS_NOT_FOUND;
    }
    *released = (long)n;
    return RELAY_KS_DONE;
}
