/*
 * relay_keystore.c - key records in Redis for the admin (see relay_keystore.h).
 */
#include "relay_keystore.h"
#include "relay_keys.h"

#include <apr_strings.h>
#include <apr_time.h>
#include <stdlib.h>
#include <string.h>

/*
 * Read keys with their live lease count and usage totals in one call.
 * KEYS: apikey:{id} x n, concurrency:{id} x n, usage:{id} x n.
 * Returns n entries of {fields (flat HGETALL), live leases, totalTokens, totalRequests}.
 */
static const char read_lua[] =
    "local n = #KEYS / 3\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local out = {}\n"
    "for i = 1, n do\n"
    "  local live = redis.pcall('ZCOUNT', KEYS[n + i], string.format('%.0f', now + 1), '+inf')\n"
    "  if type(live) ~= 'number' then live = 0 end\n"
    "  local u = redis.pcall('HMGET', KEYS[2 * n + i], 'totalTokens', 'totalRequests')\n"
    "  local tokens, requests = '0', '0'\n"
    "  if type(u) == 'table' and not u.err then tokens = u[1] or '0'; requests = u[2] or '0' end\n"
    "  local f = redis.pcall('HGETALL', KEYS[i])\n"
    "  if type(f) ~= 'table' or f.err then f = {} end\n"
    "  out[i] = {f, live, tokens, requests}\n"
    "end\n"
    "return out\n";

/*
 * Create: KEYS apikey:{id}, apikey:hash_map; ARGV hash, id, field, value, ...
 * Refuses (returns 0) when the id or the hash exists already.
 */
static const char create_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then\n"
    "  return 0\n"
    "end\n"
    "redis.call('HSET', KEYS[1], unpack(ARGV, 3))\n"
    "redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])\n"
    "return 1\n";

/* Update: KEYS apikey:{id}; ARGV field, value, ... Only an existing key changes. */
static const char update_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
    "redis.call('HSET', KEYS[1], unpack(ARGV))\n"
    "return 1\n";

/*
 * Delete: KEYS apikey:{id}, apikey:hash_map, concurrency:{id}; ARGV id.
 * The hash-map entry goes only if it still points at this key.
 */
static const char delete_lua[] =
    "local h = redis.call('HGET', KEYS[1], 'apiKey')\n"
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
    "if h and redis.call('HGET', KEYS[2], h) == ARGV[1] then redis.call('HDEL', KEYS[2], h) end\n"
    "redis.call('DEL', KEYS[1], KEYS[3])\n"
    "return 1\n";

static relay_script read_script, create_script, update_script, delete_script;

void relay_keystore_init(void)
{
    if (!read_script.name) {
        relay_script_init(&read_script, "keys-read", read_lua);
        relay_script_init(&create_script, "key-create", create_lua);
        relay_script_init(&update_script, "key-update", update_lua);
        relay_script_init(&delete_script, "key-delete", delete_lua);
    }
}

const char *relay_now_iso(apr_pool_t *p)
{
    apr_time_t now = apr_time_now();
    char *buf = apr_palloc(p, RELAY_ISO_LEN + 1);

    relay_iso8601((time_t)apr_time_sec(now), (int)(apr_time_usec(now) / 1000), buf);
    return buf;
}

const char *relay_key_status(const relay_key_record *k, const char *now_iso)
{
    if (strcmp(k->is_active, "false") == 0) {
        return "disabled";
    }
    if (k->expires_at[0] && strcmp(k->expires_at, now_iso) < 0) {
        return "expired";
    }
    return "active";
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

/* Build a record from one entry of the read script's reply; NULL if the key is gone. */
static relay_key_record *record_from(const redisReply *entry, const char *id, apr_pool_t *p)
{
    relay_key_record *k;
    const redisReply *fields;
    size_t i;

    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 4) {
        return NULL;
    }
    fields = entry->element[0];
    if (fields->type != REDIS_REPLY_ARRAY || fields->elements == 0) {
        return NULL;
    }
    k = apr_pcalloc(p, sizeof(*k));
    k->id = id;
    k->name = k->description = k->key_preview = k->is_active = "";
    k->created_at = k->updated_at = k->last_used_at = k->expires_at = "";
    k->created_by = k->updated_by = "";
    k->token_limit = k->concurrency_limit = "0";
    k->is_active = "true";
    for (i = 0; i + 1 < fields->elements; i += 2) {
        const char *f = elem_str(fields->element[i], p);
        const char *v = elem_str(fields->element[i + 1], p);
        if (!strcmp(f, "name")) k->name = v;
        else if (!strcmp(f, "description")) k->description = v;
        else if (!strcmp(f, "keyPreview")) k->key_preview = v;
        else if (!strcmp(f, "tokenLimit")) k->token_limit = v;
        else if (!strcmp(f, "concurrencyLimit")) k->concurrency_limit = v;
        else if (!strcmp(f, "isActive")) k->is_active = v;
        else if (!strcmp(f, "createdAt")) k->created_at = v;
        else if (!strcmp(f, "updatedAt")) k->updated_at = v;
        else if (!strcmp(f, "lastUsedAt")) k->last_used_at = v;
        else if (!strcmp(f, "expiresAt")) k->expires_at = v;
        else if (!strcmp(f, "createdBy")) k->created_by = v;
        else if (!strcmp(f, "updatedBy")) k->updated_by = v;
    }
    k->current_concurrency = entry->element[1]->type == REDIS_REPLY_INTEGER
                                 ? (long)entry->element[1]->integer : 0;
    k->total_tokens = strtoll(elem_str(entry->element[2], p), NULL, 10);
    k->total_requests = strtoll(elem_str(entry->element[3], p), NULL, 10);
    return k;
}

/* Read the records of the given ids in one script call. */
static apr_array_header_t *read_records(relay_redis_conn *c, const char **ids, int n,
                                        apr_pool_t *p, const char **err)
{
    apr_array_header_t *out = apr_array_make(p, n > 0 ? n : 1, sizeof(relay_key_record *));
    const char **keys;
    redisReply *rep;
    int i;

    if (n == 0) {
        return out;
    }
    keys = apr_palloc(p, sizeof(*keys) * 3 * n);
    for (i = 0; i < n; i++) {
        keys[i] = apr_pstrcat(p, "apikey:", ids[i], NULL);
        keys[n + i] = apr_pstrcat(p, "concurrency:", ids[i], NULL);
        keys[2 * n + i] = apr_pstrcat(p, "usage:", ids[i], NULL);
    }
    rep = relay_redis_script(c, &read_script, 3 * n, keys, 0, NULL, p, err);
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

apr_array_header_t *relay_keystore_list(relay_redis_conn *c, apr_pool_t *p, const char **err)
{
    apr_array_header_t *ids = apr_array_make(p, 64, sizeof(const char *));
    apr_array_header_t *all = apr_array_make(p, 64, sizeof(relay_key_record *));
    const char *cursor = "0";
    int i;

    do {
        const char *argv[6] = {"SCAN", cursor, "MATCH", "apikey:*", "COUNT", "1000"};
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
            /* apikey:hash_map and anything that is not a key id is skipped */
            if (relay_uuid_ok(name + 7)) {
                APR_ARRAY_PUSH(ids, const char *) = name + 7;
            }
        }
        freeReplyObject(rep);
    } while (strcmp(cursor, "0") != 0);

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

relay_key_record *relay_keystore_create(relay_redis_conn *c, const relay_key_new *nk,
                                        const char *secret, const unsigned char rnd[48],
                                        const char **plain, apr_pool_t *p, const char **err)
{
    char *key = apr_palloc(p, RELAY_KEY_LEN + 1);
    char *id = apr_palloc(p, RELAY_UUID_LEN + 1);
    char *hash = apr_palloc(p, RELAY_SHA256_HEX_LEN + 1);
    char preview[32];
    const char *now = relay_now_iso(p);
    const char *keys[2];
    const char *args[32];
    int n = 0;
    redisReply *rep;
    long long done;

    relay_key_from_random(rnd, key);
    relay_uuid_from_random(rnd + 32, id);
    relay_key_hash(key, RELAY_KEY_LEN, secret, hash);
    relay_key_preview(key, preview, sizeof(preview));

    args[n++] = hash;
    args[n++] = id;
#define PAIR(f, v) (args[n++] = (f), args[n++] = (v))
    PAIR("id", id);
    PAIR("name", nk->name);
    PAIR("description", nk->description ? nk->description : "");
    PAIR("apiKey", hash);
    PAIR("keyPreview", apr_pstrdup(p, preview));
    PAIR("tokenLimit", apr_ltoa(p, nk->token_limit));
    PAIR("concurrencyLimit", apr_ltoa(p, nk->concurrency_limit));
    PAIR("isActive", "true");
    PAIR("createdAt", now);
    PAIR("updatedAt", now);
    PAIR("lastUsedAt", "");
    PAIR("expiresAt", nk->expires_at ? nk->expires_at : "");
    PAIR("createdBy", nk->created_by);
#undef PAIR
    keys[0] = apr_pstrcat(p, "apikey:", id, NULL);
    keys[1] = "apikey:hash_map";
    rep = relay_redis_script(c, &create_script, 2, keys, n, args, p, err);
    if (!rep) {
        return NULL;
    }
    done = rep->type == REDIS_REPLY_INTEGER ? rep->integer : 0;
    freeReplyObject(rep);
    if (!done) {
        *err = "a key with this id or hash exists already";
        return NULL;
    }
    *plain = key;
    return relay_keystore_get(c, id, p, err);
}

int relay_keystore_update(relay_redis_conn *c, const char *id, const apr_array_header_t *pairs,
                          const char *by, apr_pool_t *p, const char **err)
{
    const char *key = apr_pstrcat(p, "apikey:", id, NULL);
    int n = pairs->nelts + 4, i;
    const char **args = apr_palloc(p, sizeof(*args) * n);
    redisReply *rep;
    int done;

    for (i = 0; i < pairs->nelts; i++) {
        args[i] = APR_ARRAY_IDX(pairs, i, const char *);
    }
    args[i++] = "updatedAt";
    args[i++] = relay_now_iso(p);
    args[i++] = "updatedBy";
    args[i++] = by;
    rep = relay_redis_script(c, &update_script, 1, &key, n, args, p, err);
    if (!rep) {
        return -1;
    }
    done = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    freeReplyObject(rep);
    return done;
}

int relay_keystore_delete(relay_redis_conn *c, const char *id, apr_pool_t *p, const char **err)
{
    const char *keys[3];
    redisReply *rep;
    int done;

    keys[0] = apr_pstrcat(p, "apikey:", id, NULL);
    keys[1] = "apikey:hash_map";
    keys[2] = apr_pstrcat(p, "concurrency:", id, NULL);
    rep = relay_redis_script(c, &delete_script, 3, keys, 1, &id, p, err);
    if (!rep) {
        return -1;
    }
    done = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    freeReplyObject(rep);
    return done;
}
