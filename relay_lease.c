/*
 * relay_lease.c - per-key concurrency leases in Redis (see relay_lease.h).
 */
#include "relay_lease.h"
#include "relay_keys.h"

#include <apr_atomic.h>
#include <apr_general.h>
#include <apr_hash.h>
#include <apr_ring.h>
#include <apr_strings.h>
#include <apr_thread_cond.h>
#include <apr_thread_mutex.h>
#include <apr_thread_proc.h>
#include <apr_time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* the warning level of httpd's http_log.h, without including it */
#define LEASE_LOG_WARNING 4

/* ids cached per child before the cache is emptied and refilled */
#define ID_CACHE_MAX 10000
/* leases renewed per script call; more are sent in further calls */
#define RENEW_BATCH 4000

/*
 * Admit: check the key and take a lease atomically.
 * KEYS[1] apikey:{id}  KEYS[2] concurrency:{id}  KEYS[3] usage:{id}
 * ARGV[1] key hash  ARGV[2] lease member  ARGV[3] lease ms  ARGV[4] now, ISO-8601
 * Returns {code, current, limit, name, legacy}: code 1 admitted, 0 unknown,
 * -1 disabled, -2 expired, 2 over the concurrency limit, 3 over the token
 * limit (then current/limit are the tokens used and the token limit).
 * Nothing is taken unless the request is admitted. Only live leases count
 * (scored on Redis's own clock); expired ones are swept on one admission in
 * sixteen, and the set disappears by itself once its last lease is given back.
 */
static const char admit_lua[] =
    "local k = redis.call('HMGET', KEYS[1], 'apiKey', 'isActive', 'expiresAt',"
    " 'concurrencyLimit', 'name', 'tokenLimit')\n"
    "if k[1] ~= ARGV[1] then return {0, 0, 0, '', 0} end\n"
    "local name = k[5] or ''\n"
    "if k[2] == 'false' then return {-1, 0, 0, name, 0} end\n"
    "if k[3] and k[3] ~= '' and k[3] < ARGV[4] then return {-2, 0, 0, name, 0} end\n"
    "local tlimit = math.floor(tonumber(k[6]) or 0)\n"
    "if tlimit > 0 then\n"
    "  local used = redis.pcall('HGET', KEYS[3], 'totalTokens')\n"
    "  used = math.floor(tonumber(used) or 0)\n"
    "  if used >= tlimit then return {3, used, tlimit, name, 0} end\n"
    "end\n"
    "local limit = math.floor(tonumber(k[4]) or 0)\n"
    "if limit < 0 then limit = 0 end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local stamp = string.format('%.0f', now)\n"
    "local legacy = 0\n"
    /* live leases only; expired ones (a killed child's) are swept now and then */
    "local n = redis.pcall('ZCOUNT', KEYS[2], '(' .. stamp, '+inf')\n"
    "if type(n) == 'table' and n.err then\n"
    "  redis.call('DEL', KEYS[2])\n"
    "  legacy = 1\n"
    "  n = 0\n"
    "elseif tonumber(t[2]) % 16 == 0 then\n"
    "  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', stamp)\n"
    "end\n"
    "if limit > 0 and n >= limit then return {2, n, limit, name, legacy} end\n"
    "redis.call('ZADD', KEYS[2], string.format('%.0f', now + tonumber(ARGV[3])), ARGV[2])\n"
    "return {1, n + 1, limit, name, legacy}\n";

/*
 * Release: drop the lease, note when the key was last used and add what the
 * request consumed to its usage counters -- only if the key still exists, so
 * a deleted key is not brought back half-empty.
 * KEYS[1] concurrency:{id}  KEYS[2] apikey:{id}  KEYS[3] usage:{id}
 * KEYS[4] usage:daily:{id}:{day}  KEYS[5] usage:monthly:{id}:{month}
 * KEYS[6] usage:{id}:model:daily:{model}:{day}  KEYS[7] usage:{id}:models
 * ARGV[1] member  ARGV[2] now ISO  ARGV[3] "1" to count the request
 * ARGV[4..7] input, output, cache creation, cache read tokens  ARGV[8] model or ""
 */
static const char release_lua[] =
    "redis.pcall('ZREM', KEYS[1], ARGV[1])\n"
    "local k = redis.call('HMGET', KEYS[2], 'id', 'lastUsedAt')\n"
    "if not k[1] then return 0 end\n"
    /* lastUsedAt to the second: busy keys are not rewritten on every request */
    "if not k[2] or string.sub(k[2], 1, 19) ~= string.sub(ARGV[2], 1, 19) then\n"
    "  redis.call('HSET', KEYS[2], 'lastUsedAt', ARGV[2])\n"
    "end\n"
    "if ARGV[3] ~= '1' then return 1 end\n"
    "local i, o = tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "local cc, cr = tonumber(ARGV[6]), tonumber(ARGV[7])\n"
    "local all = i + o + cc + cr\n"
    "local names = {'totalTokens', 'totalInputTokens', 'totalOutputTokens',"
    " 'totalCacheCreateTokens', 'totalCacheReadTokens', 'totalAllTokens', 'totalRequests',"
    " 'tokens', 'inputTokens', 'outputTokens', 'cacheCreateTokens', 'cacheReadTokens',"
    " 'allTokens', 'requests'}\n"
    "local deltas = {i + o, i, o, cc, cr, all, 1}\n"
    "local last = 5\n"
    "if ARGV[8] ~= '' then\n"
    "  last = 6\n"
    "  redis.call('SADD', KEYS[7], ARGV[8])\n"
    "end\n"
    /* zero deltas are skipped: a request without usage costs one call per hash */
    "for j = 3, last do\n"
    "  local base = j == 3 and 0 or 7\n"
    "  for f = 1, 7 do\n"
    "    if deltas[f] ~= 0 then redis.call('HINCRBY', KEYS[j], names[base + f], deltas[f]) end\n"
    "  end\n"
    "end\n"
    "return 1\n";

/*
 * Renew: push the expiry of live leases forward. ZADD XX never re-adds a
 * lease that was already given back or lost, so nothing is counted twice.
 * The sets carry no TTL (a TTL could drop a live lease of another child);
 * expired leases are swept here and on one admission in sixteen.
 * KEYS[i] concurrency:{id}  ARGV[1] lease ms  ARGV[i+1] member of KEYS[i]
 */
static const char renew_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local score = string.format('%.0f', now + tonumber(ARGV[1]))\n"
    "local stamp = string.format('%.0f', now)\n"
    "local renewed, swept = 0, {}\n"
    "for i, key in ipairs(KEYS) do\n"
    "  local r = redis.pcall('ZADD', key, 'XX', 'CH', score, ARGV[i + 1])\n"
    "  if type(r) == 'number' then renewed = renewed + 1 end\n"
    "end\n"
    /* then sweep each set once: a killed child's leases go once they expire */
    "for i, key in ipairs(KEYS) do\n"
    "  if not swept[key] then\n"
    "    swept[key] = true\n"
    "    redis.pcall('ZREMRANGEBYSCORE', key, '-inf', stamp)\n"
    "  end\n"
    "end\n"
    "return renewed\n";

static relay_script admit_script, release_script, renew_script;
static apr_uint32_t scripts_ready;

APR_RING_HEAD(lease_ring, relay_lease);

struct relay_lease {
    APR_RING_ENTRY(relay_lease) link;  /* in the store's list of live leases */
    const char *id;                    /* key id */
    const char *conc_key;              /* concurrency:{id} */
    const char *key_key;               /* apikey:{id} */
    const char *member;                /* this request's member */
    int released;                      /* given back already */
};

struct relay_lease_store {
    relay_redis_pool *redis;           /* where leases live */
    int lease_ms;                      /* lease length */
    char prefix[17];                   /* random per child: members are unique */
    apr_uint32_t counter;              /* per child member counter */
    apr_thread_mutex_t *lock;          /* guards ring, live, cache */
    struct lease_ring ring;            /* live leases of this child */
    int live;                          /* entries in ring */
    apr_pool_t *cache_pool;            /* holds the id cache */
    apr_hash_t *id_cache;              /* key hash -> key id */
    apr_thread_cond_t *wake;           /* wakes the keeper to stop */
    int stopping;                      /* the child is exiting */
    apr_thread_t *keeper;              /* renewal thread, or NULL */
    relay_log_fn log;                  /* keeper's log sink */
    void *log_baton;
};

apr_status_t relay_lease_store_create(relay_lease_store **out, relay_redis_pool *pool,
                                      int lease_seconds, apr_pool_t *pchild)
{
    relay_lease_store *st = apr_pcalloc(pchild, sizeof(*st));
    unsigned char rnd[8];
    apr_status_t rv;

    if (!apr_atomic_read32(&scripts_ready)) {
        relay_script_init(&admit_script, "admit", admit_lua);
        relay_script_init(&release_script, "release", release_lua);
        relay_script_init(&renew_script, "renew", renew_lua);
        apr_atomic_set32(&scripts_ready, 1);
    }
    st->redis = pool;
    st->lease_ms = lease_seconds * 1000;
    if ((rv = apr_generate_random_bytes(rnd, sizeof(rnd))) != APR_SUCCESS) {
        return rv;
    }
    relay_hex(rnd, sizeof(rnd), st->prefix);
    if ((rv = apr_thread_mutex_create(&st->lock, APR_THREAD_MUTEX_DEFAULT, pchild)) !=
        APR_SUCCESS) {
        return rv;
    }
    if ((rv = apr_thread_cond_create(&st->wake, pchild)) != APR_SUCCESS) {
        return rv;
    }
    APR_RING_INIT(&st->ring, relay_lease, link);
    if ((rv = apr_pool_create(&st->cache_pool, pchild)) != APR_SUCCESS) {
        return rv;
    }
    st->id_cache = apr_hash_make(st->cache_pool);
    *out = st;
    return APR_SUCCESS;
}

/* The cached id of a key hash, copied into p, or NULL. */
static const char *cache_get(relay_lease_store *st, const char *hash, apr_pool_t *p)
{
    const char *id;

    apr_thread_mutex_lock(st->lock);
    id = apr_hash_get(st->id_cache, hash, APR_HASH_KEY_STRING);
    if (id) {
        id = apr_pstrdup(p, id);
    }
    apr_thread_mutex_unlock(st->lock);
    return id;
}

/* Remember hash -> id; an id never changes for a hash, only disappears. */
static void cache_put(relay_lease_store *st, const char *hash, const char *id)
{
    apr_thread_mutex_lock(st->lock);
    if (apr_hash_count(st->id_cache) >= ID_CACHE_MAX) {
        apr_pool_clear(st->cache_pool);
        st->id_cache = apr_hash_make(st->cache_pool);
    }
    apr_hash_set(st->id_cache, apr_pstrdup(st->cache_pool, hash), APR_HASH_KEY_STRING,
                 apr_pstrdup(st->cache_pool, id));
    apr_thread_mutex_unlock(st->lock);
}

/* Forget a hash whose key was deleted. */
static void cache_drop(relay_lease_store *st, const char *hash)
{
    apr_thread_mutex_lock(st->lock);
    apr_hash_set(st->id_cache, hash, APR_HASH_KEY_STRING, NULL);
    apr_thread_mutex_unlock(st->lock);
}

/* Now as the ISO-8601 text stored in key hashes. */
static const char *now_iso(apr_pool_t *p)
{
    apr_time_t now = apr_time_now();
    char *buf = apr_palloc(p, RELAY_ISO_LEN + 1);

    relay_iso8601((time_t)apr_time_sec(now), (int)(apr_time_usec(now) / 1000), buf);
    return buf;
}

/* Read an integer element of a script's array reply. */
static long long reply_int(const redisReply *rep, size_t i)
{
    const redisReply *e;

    if (rep->type != REDIS_REPLY_ARRAY || i >= rep->elements) {
        return 0;
    }
    e = rep->element[i];
    if (e->type == REDIS_REPLY_INTEGER) {
        return e->integer;
    }
    if (e->type == REDIS_REPLY_STRING) {
        return strtoll(e->str, NULL, 10);
    }
    return 0;
}

/* Look the key's id up in apikey:hash_map; NULL if unknown or on error. */
static const char *lookup_id(relay_redis_conn *c, const char *hash, apr_pool_t *p,
                             const char **err, int *failed)
{
    const char *argv[3] = {"HGET", "apikey:hash_map", hash};
    size_t lens[3] = {4, 15, strlen(hash)};
    redisReply *rep = relay_redis_command(c, 3, argv, lens, p, err);
    const char *id = NULL;

    if (!rep) {
        *failed = 1;
        return NULL;
    }
    if (rep->type == REDIS_REPLY_STRING) {
        id = apr_pstrndup(p, rep->str, rep->len);
    }
    else if (rep->type == REDIS_REPLY_ERROR) {
        *err = apr_psprintf(p, "Redis refused the key lookup: %.*s", (int)rep->len, rep->str);
        *failed = 1;
    }
    freeReplyObject(rep);
    return id;
}

relay_admit_code relay_lease_admit(relay_lease_store *st, const char *hash, apr_pool_t *p,
                                   relay_admit_result *res, relay_lease **lease_out)
{
    relay_redis_conn *c;
    const char *id, *err = NULL;
    const char *keys[3], *args[4];
    redisReply *rep;
    relay_lease *lease;
    int cached = 1, failed = 0;
    long code;

    memset(res, 0, sizeof(*res));
    *lease_out = NULL;
    c = relay_redis_acquire(st->redis, p, &err);
    if (!c) {
        res->code = RELAY_ADMIT_ERROR;
        res->error = err;
        return res->code;
    }
    id = cache_get(st, hash, p);
    if (!id) {
        cached = 0;
        id = lookup_id(c, hash, p, &err, &failed);
        if (!id) {
            relay_redis_release(st->redis, c);
            res->code = failed ? RELAY_ADMIT_ERROR : RELAY_ADMIT_NOT_FOUND;
            res->error = err;
            return res->code;
        }
    }
    lease = apr_pcalloc(p, sizeof(*lease));
    lease->id = id;
    lease->key_key = apr_pstrcat(p, "apikey:", id, NULL);
    lease->conc_key = apr_pstrcat(p, "concurrency:", id, NULL);
    /* random per child, the pid for people reading it, a counter per request */
    lease->member = apr_psprintf(p, "%s-%" APR_PID_T_FMT "-%u", st->prefix, getpid(),
                                 apr_atomic_inc32(&st->counter));
    keys[0] = lease->key_key;
    keys[1] = lease->conc_key;
    keys[2] = apr_pstrcat(p, "usage:", id, NULL);
    args[0] = hash;
    args[1] = lease->member;
    args[2] = apr_itoa(p, st->lease_ms);
    args[3] = now_iso(p);
    rep = relay_redis_script(c, &admit_script, 3, keys, 4, args, p, &err);
    relay_redis_release(st->redis, c);
    if (!rep) {
        res->code = RELAY_ADMIT_ERROR;
        res->error = err;
        return res->code;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 5) {
        freeReplyObject(rep);
        res->code = RELAY_ADMIT_ERROR;
        res->error = "unexpected reply from the admit script";
        return res->code;
    }
    code = reply_int(rep, 0);
    res->id = id;
    res->current = reply_int(rep, 1);
    res->limit = reply_int(rep, 2);
    if (rep->element[3]->type == REDIS_REPLY_STRING) {
        res->name = apr_pstrndup(p, rep->element[3]->str, rep->element[3]->len);
    }
    else {
        res->name = "";
    }
    res->legacy_replaced = reply_int(rep, 4) != 0;
    freeReplyObject(rep);

    switch (code) {
    case 1:
        res->code = RELAY_ADMIT_OK;
        if (!cached) {
            cache_put(st, hash, id);
        }
        apr_thread_mutex_lock(st->lock);
        APR_RING_INSERT_TAIL(&st->ring, lease, relay_lease, link);
        st->live++;
        apr_thread_mutex_unlock(st->lock);
        *lease_out = lease;
        break;
    case 2:
    case 3:
        res->code = code == 2 ? RELAY_ADMIT_LIMITED : RELAY_ADMIT_TOKENS;
        if (!cached) {
            cache_put(st, hash, id);
        }
        break;
    case -1:
        res->code = RELAY_ADMIT_DISABLED;
        break;
    case -2:
        res->code = RELAY_ADMIT_EXPIRED;
        break;
    default:
        /* the key was deleted (or never matched): forget what we cached */
        if (cached) {
            cache_drop(st, hash);
        }
        res->id = NULL;
        res->code = RELAY_ADMIT_NOT_FOUND;
        break;
    }
    return res->code;
}

apr_status_t relay_lease_release(relay_lease_store *st, relay_lease *lease,
                                 const relay_usage_counts *usage, apr_pool_t *p, const char **err)
{
    relay_redis_conn *c;
    const char *keys[7], *args[8];
    const char *now = now_iso(p);
    const char *day = apr_pstrndup(p, now, 10), *month = apr_pstrndup(p, now, 7);
    const char *model = usage && usage->model ? usage->model : "";
    redisReply *rep;

    apr_thread_mutex_lock(st->lock);
    if (lease->released) {
        apr_thread_mutex_unlock(st->lock);
        return APR_SUCCESS;
    }
    lease->released = 1;
    APR_RING_REMOVE(lease, link);
    st->live--;
    apr_thread_mutex_unlock(st->lock);

    c = relay_redis_acquire(st->redis, p, err);
    if (!c) {
        /* the lease expires by itself within one lease length */
        return APR_EGENERAL;
    }
    keys[0] = lease->conc_key;
    keys[1] = lease->key_key;
    keys[2] = apr_pstrcat(p, "usage:", lease->id, NULL);
    keys[3] = apr_pstrcat(p, "usage:daily:", lease->id, ":", day, NULL);
    keys[4] = apr_pstrcat(p, "usage:monthly:", lease->id, ":", month, NULL);
    keys[5] = apr_pstrcat(p, "usage:", lease->id, ":model:daily:", model, ":", day, NULL);
    keys[6] = apr_pstrcat(p, "usage:", lease->id, ":models", NULL);
    args[0] = lease->member;
    args[1] = now;
    args[2] = usage ? "1" : "0";
    args[3] = apr_psprintf(p, "%" APR_INT64_T_FMT, usage ? (apr_int64_t)usage->input : 0);
    args[4] = apr_psprintf(p, "%" APR_INT64_T_FMT, usage ? (apr_int64_t)usage->output : 0);
    args[5] = apr_psprintf(p, "%" APR_INT64_T_FMT, usage ? (apr_int64_t)usage->cache_create : 0);
    args[6] = apr_psprintf(p, "%" APR_INT64_T_FMT, usage ? (apr_int64_t)usage->cache_read : 0);
    args[7] = model;
    rep = relay_redis_script(c, &release_script, 7, keys, 8, args, p, err);
    relay_redis_release(st->redis, c);
    if (!rep) {
        return APR_EGENERAL;
    }
    freeReplyObject(rep);
    return APR_SUCCESS;
}

const char *relay_lease_member(const relay_lease *lease)
{
    return lease->member;
}

relay_redis_pool *relay_lease_store_redis(relay_lease_store *st)
{
    return st->redis;
}

int relay_lease_live_count(relay_lease_store *st)
{
    int n;

    apr_thread_mutex_lock(st->lock);
    n = st->live;
    apr_thread_mutex_unlock(st->lock);
    return n;
}

/* Renew a snapshot of live leases in batches; returns the first error or NULL. */
static const char *renew_snapshot(relay_lease_store *st, const char **keys, const char **members,
                                  int n, apr_pool_t *p)
{
    const char *err = NULL;
    relay_redis_conn *c = relay_redis_acquire(st->redis, p, &err);
    int off = 0;

    if (!c) {
        return err;
    }
    while (off < n) {
        int k = n - off > RENEW_BATCH ? RENEW_BATCH : n - off, i;
        const char **args = apr_palloc(p, sizeof(*args) * (k + 1));
        redisReply *rep;

        args[0] = apr_itoa(p, st->lease_ms);
        for (i = 0; i < k; i++) {
            args[i + 1] = members[off + i];
        }
        rep = relay_redis_script(c, &renew_script, k, keys + off, k + 1, args, p, &err);
        if (!rep) {
            break;
        }
        freeReplyObject(rep);
        off += k;
    }
    relay_redis_release(st->redis, c);
    return off < n ? err : NULL;
}

/* The keeper: every third of a lease, renew all live leases of this child. */
static void *APR_THREAD_FUNC keeper_main(apr_thread_t *thd, void *data)
{
    relay_lease_store *st = data;
    apr_interval_time_t every = apr_time_from_msec(st->lease_ms / 3);
    apr_pool_t *p;

    if (every < apr_time_from_msec(200)) {
        every = apr_time_from_msec(200);
    }
    if (apr_pool_create(&p, NULL) != APR_SUCCESS) {
        apr_thread_exit(thd, APR_ENOMEM);
        return NULL;
    }
    apr_thread_mutex_lock(st->lock);
    while (!st->stopping) {
        relay_lease *l;
        const char **keys, **members, *err;
        int n = 0;

        apr_thread_cond_timedwait(st->wake, st->lock, every);
        if (st->stopping || st->live == 0) {
            continue;
        }
        apr_pool_clear(p);
        keys = apr_palloc(p, sizeof(*keys) * st->live);
        members = apr_palloc(p, sizeof(*members) * st->live);
        for (l = APR_RING_FIRST(&st->ring); l != APR_RING_SENTINEL(&st->ring, relay_lease, link);
             l = APR_RING_NEXT(l, link)) {
            keys[n] = apr_pstrdup(p, l->conc_key);
            members[n] = apr_pstrdup(p, l->member);
            n++;
        }
        apr_thread_mutex_unlock(st->lock);
        err = renew_snapshot(st, keys, members, n, p);
        if (err && st->log) {
            st->log(st->log_baton, LEASE_LOG_WARNING,
                    apr_psprintf(p, "cannot renew %d lease(s); they expire unless Redis "
                                    "answers again soon: %s", n, err));
        }
        apr_thread_mutex_lock(st->lock);
    }
    apr_thread_mutex_unlock(st->lock);
    apr_pool_destroy(p);
    apr_thread_exit(thd, APR_SUCCESS);
    return NULL;
}

/* Stop and join the keeper before the child's pool goes away. */
static apr_status_t keeper_stop(void *data)
{
    relay_lease_store *st = data;
    apr_status_t ret;

    apr_thread_mutex_lock(st->lock);
    st->stopping = 1;
    apr_thread_cond_broadcast(st->wake);
    apr_thread_mutex_unlock(st->lock);
    if (st->keeper) {
        apr_thread_join(&ret, st->keeper);
        st->keeper = NULL;
    }
    return APR_SUCCESS;
}

apr_status_t relay_lease_keeper_start(relay_lease_store *st, relay_log_fn log, void *baton,
                                      apr_pool_t *pchild)
{
    apr_threadattr_t *attr;
    apr_status_t rv;

    st->log = log;
    st->log_baton = baton;
    if ((rv = apr_threadattr_create(&attr, pchild)) != APR_SUCCESS) {
        return rv;
    }
    if ((rv = apr_thread_create(&st->keeper, attr, keeper_main, st, pchild)) != APR_SUCCESS) {
        return rv;
    }
    apr_pool_pre_cleanup_register(pchild, st, keeper_stop);
    return APR_SUCCESS;
}
