/*
 * relay_metrics.c - counting what the relay does, and reading it for a
 * scrape (see relay_metrics.h).
 */
#include "relay_metrics.h"
#include "relay_schema.h"

#include <apr_general.h>
#include <apr_hash.h>
#include <apr_lib.h>
#include <apr_strings.h>
#include <apr_thread_cond.h>
#include <apr_thread_mutex.h>
#include <apr_thread_proc.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Key ids per script call, when reading keys or writing their counts. */
#define IDS_PER_CALL 500
/* Longest key id a scrape reports; anything longer is not an id this software wrote. */
#define ID_MAX 256
/* A name is cut to this many bytes in the figures. */
#define NAME_MAX_BYTES 256
/* Models reported per key at most. */
#define MODELS_MAX 256
/* A read of the keys serves further scrapes in this child for this long. */
#define READ_FRESH_MS 1000
/* A read no scrape wanted for this long is freed. */
#define READ_KEEP_MS 2000
/* How often a child writes its keys' counts to Redis. */
#define FLUSH_EVERY_MS 1000

/* The outcomes' label values and ?auto words, in the order of relay_outcome. */
static const struct {
    const char *name;  /* label value of outcome="..." */
    const char *title; /* word of a mod_status ?auto line */
} outcomes[RELAY_OUTCOME_COUNT] = {
    {"admitted", "Admitted"},
    {"admitted_unchecked", "AdmittedUnchecked"},
    {"concurrency_limited", "ConcurrencyLimited"},
    {"token_limited", "TokenLimited"},
    {"disabled", "Disabled"},
    {"expired", "Expired"},
    {"unauthorized", "Unauthorized"},
    {"not_allowed", "NotAllowed"},
    {"unavailable", "Unavailable"},
};

/* a row added to relay_outcome must find room in shared memory */
typedef char outcome_room_check[RELAY_OUTCOME_COUNT <= RELAY_OUTCOME_SLOTS ? 1 : -1];

const apr_uint64_t relay_metrics_latency_bounds_us[RELAY_METRICS_LATENCY_BUCKETS] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000};
const apr_uint64_t relay_metrics_batch_bounds[RELAY_METRICS_BATCH_BUCKETS] = {1,  2,  4,   8,  16,
                                                                              32, 64, 128, 256};

/* The same bounds as le="..." values, written once: a series must keep its label. */
static const char *const latency_le[RELAY_METRICS_LATENCY_BUCKETS] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
    "0.025",  "0.05",    "0.1",    "0.25",  "0.5",    "1",     "2.5"};
static const char *const batch_le[RELAY_METRICS_BATCH_BUCKETS] = {"1",  "2",  "4",   "8",  "16",
                                                                  "32", "64", "128", "256"};

const char *relay_outcome_name(relay_outcome o)
{
    return o < RELAY_OUTCOME_COUNT ? outcomes[o].name : "unknown";
}

const char *relay_outcome_title(relay_outcome o)
{
    return o < RELAY_OUTCOME_COUNT ? outcomes[o].title : "Unknown";
}

/*
 * Shared memory. The layout number changes whenever the struct does: a
 * graceful restart into another version of the module then starts from
 * zero instead of reading counters where they are not.
 */
#define SHM_MAGIC 0x52454c4dU /* "RELM" */
#define SHM_LAYOUT 1U

/* One child process: its pid while it lives, and the leases it holds. */
typedef struct {
    apr_int32_t pid; /* 0: free */
    apr_uint32_t leases;
} child_slot;

typedef struct {
    apr_uint32_t magic;
    apr_uint32_t layout;
    apr_uint32_t nslots;
    apr_uint32_t spare;
    apr_uint64_t outcomes[RELAY_OUTCOME_SLOTS];
    apr_uint64_t redis_commands, redis_errors, redis_latency_us;
    apr_uint64_t latency[RELAY_METRICS_LATENCY_BUCKETS + 1];
    apr_uint64_t batches, batch_ops;
    apr_uint64_t batch[RELAY_METRICS_BATCH_BUCKETS + 1];
    apr_uint64_t renewed, lost, key_writes_failed;
    child_slot slots[];
} shm_layout;

static shm_layout *shm;

/* Add to a counter that every child shares. */
static void add(apr_uint64_t *c, apr_uint64_t n)
{
    __atomic_fetch_add(c, n, __ATOMIC_RELAXED);
}

static apr_uint64_t load(const apr_uint64_t *c)
{
    return __atomic_load_n(c, __ATOMIC_RELAXED);
}

apr_size_t relay_metrics_shm_size(int slots)
{
    return sizeof(shm_layout) + sizeof(child_slot) * (apr_size_t)(slots > 0 ? slots : 1);
}

void relay_metrics_shm_attach(void *base, apr_size_t size, int slots)
{
    shm_layout *m = base;

    if (!base || size < relay_metrics_shm_size(slots)) {
        shm = NULL;
        return;
    }
    if (m->magic != SHM_MAGIC || m->layout != SHM_LAYOUT || m->nslots != (apr_uint32_t)slots) {
        memset(base, 0, size);
        m->magic = SHM_MAGIC;
        m->layout = SHM_LAYOUT;
        m->nslots = (apr_uint32_t)slots;
    }
    shm = m;
}

/* The bucket of a value among ascending upper bounds; n is +Inf. */
static int bucket_of(apr_uint64_t v, const apr_uint64_t *bounds, int n)
{
    int i;

    for (i = 0; i < n && v > bounds[i]; i++) {
    }
    return i;
}

/*
 * One child's per-key counts for one Redis, and its last read of the keys.
 * Request threads add to counts under lock; the flush thread swaps the two
 * pools, so it writes one set while the threads fill the other.
 */
typedef struct {
    apr_uint64_t n[RELAY_OUTCOME_COUNT];
} key_counts;

typedef struct {
    relay_redis_pool *pool;    /* the Redis these keys live in */
    apr_thread_mutex_t *lock;  /* guards the three fields below */
    apr_pool_t *count_pool[2]; /* counts[cur] lives in count_pool[cur] */
    int cur;
    apr_hash_t *counts;            /* key id -> key_counts, not written yet */
    apr_thread_mutex_t *read_lock; /* guards the read below; held while reading */
    apr_pool_t *read_pool;         /* holds the read; NULL when there is none */
    relay_metrics_keys read;
} sink;

/* The child's state: its sinks, its slot, and the flush thread. */
static struct {
    sink *sinks;
    int nsinks;
    child_slot *slot; /* in shared memory, or NULL */
    relay_metrics_leases_fn leases;
    void *baton;
    apr_thread_mutex_t *lock; /* guards stopping */
    apr_thread_cond_t *wake;
    int stopping;
    apr_thread_t *thread;
    apr_pool_t *work; /* the flush thread's scratch */
} child;

/*
 * Per-key scripts. Keys are named from the ids inside them (one Redis or
 * one Sentinel-managed master; not Redis Cluster), as relay_lease's are.
 *
 * Write: ARGV groups of: key id, M, then M pairs of outcome name and count.
 * Only keys that still exist are counted, so a deleted key is not brought back.
 */
/* clang-format off */
static const char write_lua[] =
    "local i = 1\n"
    "while i <= #ARGV do\n"
    "  local id, m = ARGV[i], tonumber(ARGV[i + 1])\n"
    "  if redis.call('EXISTS', '" RELAY_KEY_RECORD_PREFIX "' .. id) == 1 then\n"
    "    for j = 0, m - 1 do\n"
    /* a record of the wrong type loses only its own counts */
    "      redis.pcall('HINCRBY', '" RELAY_METRICS_OUTCOMES_PREFIX "' .. id, ARGV[i + 2 + 2 * j],"
    " ARGV[i + 3 + 2 * j])\n"
    "    end\n"
    "  end\n"
    "  i = i + 2 + 2 * m\n"
    "end\n"
    "return 1\n";

/*
 * Read: ARGV key ids. Returns, per key that exists and has a hash:
 * {id, name, concurrencyLimit, tokenLimit, in flight,
 *  {outcome, count, ...}, {model, input, output, cache create, cache read, ...}}.
 * In flight counts live leases only (an older relay's plain counter: its
 * value). Records of the wrong type read as empty: a scrape never fails
 * for one bad key.
 */
static const char read_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))\n"
    "local function list(r)\n"
    "  if type(r) ~= 'table' or r.err then return {} end\n"
    "  return r\n"
    "end\n"
    "local res = {}\n"
    "for i = 1, #ARGV do\n"
    "  local id = ARGV[i]\n"
    "  local k = list(redis.pcall('HMGET', '" RELAY_KEY_RECORD_PREFIX "' .. id, '" RELAY_F_API_KEY
    "', '" RELAY_F_NAME "', '" RELAY_F_CONCURRENCY_LIMIT "', '" RELAY_F_TOKEN_LIMIT "'))\n"
    "  if k[1] then\n"
    "    local ckey = '" RELAY_CONCURRENCY_PREFIX "' .. id\n"
    "    local n = redis.pcall('ZCOUNT', ckey, '(' .. now, '+inf')\n"
    "    if type(n) ~= 'number' then n = tonumber(redis.pcall('GET', ckey)) or 0 end\n"
    "    local tok = {}\n"
    "    local models = list(redis.pcall('SMEMBERS', '" RELAY_USAGE_PREFIX
    "' .. id .. '" RELAY_USAGE_MODELS_SUFFIX "'))\n"
    "    for j = 1, math.min(#models, " APR_STRINGIFY(MODELS_MAX) ") do\n"
    "      local h = list(redis.pcall('HMGET', '" RELAY_USAGE_PREFIX
    "' .. id .. '" RELAY_USAGE_MODEL_ALLTIME_INFIX "' .. models[j], '" RELAY_U_INPUT "', '" RELAY_U_OUTPUT
    "', '" RELAY_U_CACHE_CREATE "', '" RELAY_U_CACHE_READ "'))\n"
    "      if h[1] or h[2] or h[3] or h[4] then\n"
    "        for _, v in ipairs({models[j], h[1] or '0', h[2] or '0', h[3] or '0',"
    " h[4] or '0'}) do tok[#tok + 1] = v end\n"
    "      end\n"
    "    end\n"
    "    res[#res + 1] = {id, k[2] or '', k[3] or '', k[4] or '', n,"
    " list(redis.pcall('HGETALL', '" RELAY_METRICS_OUTCOMES_PREFIX "' .. id)), tok}\n"
    "  end\n"
    "end\n"
    "return res\n";
/* clang-format on */

static relay_script write_script, read_script;
static apr_uint32_t scripts_ready;

/* The scripts' SHA1s, computed once per process. */
static void scripts_init(void)
{
    if (!__atomic_load_n(&scripts_ready, __ATOMIC_ACQUIRE)) {
        relay_script_init(&write_script, "metrics_write", write_lua);
        relay_script_init(&read_script, "metrics_read", read_lua);
        __atomic_store_n(&scripts_ready, 1, __ATOMIC_RELEASE);
    }
}

/* The sink of a Redis pool in this child, or NULL. */
static sink *sink_of(relay_redis_pool *pool)
{
    int i;

    for (i = 0; pool && i < child.nsinks; i++) {
        if (child.sinks[i].pool == pool) {
            return &child.sinks[i];
        }
    }
    return NULL;
}

void relay_metrics_request(relay_redis_pool *pool, const char *key_id, relay_outcome o)
{
    sink *k;
    key_counts *c;

    if (o >= RELAY_OUTCOME_COUNT) {
        return;
    }
    if (shm) {
        add(&shm->outcomes[o], 1);
    }
    if (!key_id || !*key_id || !(k = sink_of(pool))) {
        return;
    }
    apr_thread_mutex_lock(k->lock);
    c = apr_hash_get(k->counts, key_id, APR_HASH_KEY_STRING);
    if (!c) {
        c = apr_pcalloc(k->count_pool[k->cur], sizeof(*c));
        apr_hash_set(k->counts, apr_pstrdup(k->count_pool[k->cur], key_id), APR_HASH_KEY_STRING, c);
    }
    c->n[o]++;
    apr_thread_mutex_unlock(k->lock);
}

redisReply *relay_metrics_command(redisContext *ctx, int argc, const char **argv,
                                  const size_t *argvlen)
{
    apr_time_t t0;
    apr_uint64_t us;
    redisReply *rep;
    int saved;

    if (!shm) {
        return redisCommandArgv(ctx, argc, argv, argvlen);
    }
    t0 = apr_time_now();
    rep = redisCommandArgv(ctx, argc, argv, argvlen);
    saved = errno;
    us = (apr_uint64_t)(apr_time_now() - t0);
    add(&shm->redis_commands, 1);
    add(&shm->redis_latency_us, us);
    add(&shm->latency[bucket_of(us, relay_metrics_latency_bounds_us,
                                RELAY_METRICS_LATENCY_BUCKETS)],
        1);
    if (!rep || (rep->type == REDIS_REPLY_ERROR &&
                 !(rep->len >= 8 && memcmp(rep->str, "NOSCRIPT", 8) == 0))) {
        add(&shm->redis_errors, 1);
    }
    /* the caller tells a time-out by errno */
    errno = saved;
    return rep;
}

void relay_metrics_batch(int ops)
{
    if (!shm || ops < 0) {
        return;
    }
    add(&shm->batches, 1);
    add(&shm->batch_ops, (apr_uint64_t)ops);
    add(&shm->batch[bucket_of((apr_uint64_t)ops, relay_metrics_batch_bounds,
                              RELAY_METRICS_BATCH_BUCKETS)],
        1);
}

void relay_metrics_renewed(int leases)
{
    if (shm && leases > 0) {
        add(&shm->renewed, (apr_uint64_t)leases);
    }
}

void relay_metrics_lost(int leases)
{
    if (shm && leases > 0) {
        add(&shm->lost, (apr_uint64_t)leases);
    }
}

/* Whether the process of a slot still runs (every child runs as the same user). */
static int alive(apr_int32_t pid)
{
    return pid > 0 && kill((pid_t)pid, 0) == 0;
}

void relay_metrics_server_read(relay_metrics_server *out)
{
    apr_uint32_t i;
    int o;

    memset(out, 0, sizeof(*out));
    if (!shm) {
        return;
    }
    out->shared = 1;
    for (o = 0; o < RELAY_OUTCOME_COUNT; o++) {
        out->outcomes[o] = load(&shm->outcomes[o]);
    }
    out->redis_commands = load(&shm->redis_commands);
    out->redis_errors = load(&shm->redis_errors);
    out->redis_latency_us = load(&shm->redis_latency_us);
    for (o = 0; o <= RELAY_METRICS_LATENCY_BUCKETS; o++) {
        out->latency[o] = load(&shm->latency[o]);
    }
    out->batches = load(&shm->batches);
    out->batch_ops = load(&shm->batch_ops);
    for (o = 0; o <= RELAY_METRICS_BATCH_BUCKETS; o++) {
        out->batch[o] = load(&shm->batch[o]);
    }
    out->renewed = load(&shm->renewed);
    out->lost = load(&shm->lost);
    out->key_writes_failed = load(&shm->key_writes_failed);
    if (child.slot && child.leases) {
        /* this child's own figure is read now, the others' within a second */
        __atomic_store_n(&child.slot->leases, (apr_uint32_t)child.leases(child.baton),
                         __ATOMIC_RELAXED);
    }
    for (i = 0; i < shm->nslots; i++) {
        apr_int32_t pid = __atomic_load_n(&shm->slots[i].pid, __ATOMIC_ACQUIRE);

        if (alive(pid)) {
            out->children++;
            out->leases_held += __atomic_load_n(&shm->slots[i].leases, __ATOMIC_RELAXED);
        }
    }
}

/* Take a slot for this child: a free one, else one whose process is gone (killed). */
static child_slot *claim_slot(void)
{
    apr_int32_t me = (apr_int32_t)getpid();
    apr_uint32_t i;
    int pass;

    for (pass = 0; pass < 2; pass++) {
        for (i = 0; i < shm->nslots; i++) {
            apr_int32_t pid = __atomic_load_n(&shm->slots[i].pid, __ATOMIC_ACQUIRE);

            if ((pass == 0 && pid != 0) || (pass == 1 && (pid == 0 || alive(pid)))) {
                continue;
            }
            if (__atomic_compare_exchange_n(&shm->slots[i].pid, &pid, me, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                __atomic_store_n(&shm->slots[i].leases, 0, __ATOMIC_RELAXED);
                return &shm->slots[i];
            }
        }
    }
    return NULL;
}

/* Add counts back for the next write (lock held): Redis did not take them. */
static void merge_back(sink *k, apr_hash_t *old, apr_pool_t *p)
{
    apr_hash_index_t *hi;

    for (hi = apr_hash_first(p, old); hi; hi = apr_hash_next(hi)) {
        const char *id = apr_hash_this_key(hi);
        const key_counts *from = apr_hash_this_val(hi);
        key_counts *c = apr_hash_get(k->counts, id, APR_HASH_KEY_STRING);
        int o;

        if (!c) {
            c = apr_pcalloc(k->count_pool[k->cur], sizeof(*c));
            apr_hash_set(k->counts, apr_pstrdup(k->count_pool[k->cur], id), APR_HASH_KEY_STRING, c);
        }
        for (o = 0; o < RELAY_OUTCOME_COUNT; o++) {
            c->n[o] += from->n[o];
        }
    }
}

#define PUSH_ARG(a, v) (APR_ARRAY_PUSH((a), const char *) = (v))

/* Send the argument list of one write; 0 when Redis did not take it. */
static int write_call(relay_redis_conn *c, apr_array_header_t *args, apr_pool_t *p)
{
    const char *err = NULL;
    redisReply *rep;

    if (!args->nelts) {
        return 1;
    }
    rep = relay_redis_script(c, &write_script, 0, NULL, args->nelts,
                             (const char *const *)args->elts, p, &err);
    if (!rep) {
        return 0;
    }
    freeReplyObject(rep);
    args->nelts = 0;
    return 1;
}

/* Write a sink's counts to Redis: one script call per IDS_PER_CALL keys. */
static void flush_sink(sink *k, apr_pool_t *p)
{
    apr_hash_t *old;
    apr_hash_index_t *hi;
    apr_array_header_t *args;
    relay_redis_conn *c;
    const char *err = NULL;
    int ids = 0, ok = 1;

    apr_thread_mutex_lock(k->lock);
    if (!apr_hash_count(k->counts)) {
        apr_thread_mutex_unlock(k->lock);
        return;
    }
    /* old stays in its pool until the swap after next clears it */
    old = k->counts;
    k->cur ^= 1;
    apr_pool_clear(k->count_pool[k->cur]);
    k->counts = apr_hash_make(k->count_pool[k->cur]);
    apr_thread_mutex_unlock(k->lock);

    c = relay_redis_acquire(k->pool, p, &err);
    args = apr_array_make(p, 64, sizeof(const char *));
    for (hi = apr_hash_first(p, old); c && ok && hi; hi = apr_hash_next(hi)) {
        const key_counts *n = apr_hash_this_val(hi);
        int o, m = 0, at;

        PUSH_ARG(args, apr_hash_this_key(hi));
        at = args->nelts;
        PUSH_ARG(args, "0");
        for (o = 0; o < RELAY_OUTCOME_COUNT; o++) {
            if (n->n[o]) {
                PUSH_ARG(args, outcomes[o].name);
                PUSH_ARG(args, apr_psprintf(p, "%" APR_UINT64_T_FMT, n->n[o]));
                m++;
            }
        }
        APR_ARRAY_IDX(args, at, const char *) = apr_itoa(p, m);
        if (++ids % IDS_PER_CALL == 0) {
            ok = write_call(c, args, p);
        }
    }
    if (c && ok) {
        ok = write_call(c, args, p);
    }
    relay_redis_release(k->pool, c);
    if (!c || !ok) {
        /*
         * Kept for the next write (a second later): a Redis that is down
         * for a while loses none. A call that failed after Redis applied it
         * would count twice; that needs a reply lost in flight.
         */
        if (shm) {
            add(&shm->key_writes_failed, 1);
        }
        apr_thread_mutex_lock(k->lock);
        merge_back(k, old, p);
        apr_thread_mutex_unlock(k->lock);
    }
}

/* Free a read no scrape wanted lately (the flush thread, every second). */
static void drop_stale_read(sink *k, apr_time_t now)
{
    apr_thread_mutex_lock(k->read_lock);
    if (k->read_pool && now - k->read.at >= apr_time_from_msec(READ_KEEP_MS)) {
        apr_pool_destroy(k->read_pool);
        k->read_pool = NULL;
    }
    apr_thread_mutex_unlock(k->read_lock);
}

/* Every second: this child's leases into its slot, its keys' counts into Redis. */
static void *APR_THREAD_FUNC flush_main(apr_thread_t *thd, void *data)
{
    int i, stop = 0;

    (void)data;
    while (!stop) {
        apr_thread_mutex_lock(child.lock);
        if (!child.stopping) {
            apr_thread_cond_timedwait(child.wake, child.lock, apr_time_from_msec(FLUSH_EVERY_MS));
        }
        stop = child.stopping;
        apr_thread_mutex_unlock(child.lock);
        if (child.slot && child.leases) {
            __atomic_store_n(&child.slot->leases, (apr_uint32_t)child.leases(child.baton),
                             __ATOMIC_RELAXED);
        }
        for (i = 0; i < child.nsinks; i++) {
            flush_sink(&child.sinks[i], child.work);
            drop_stale_read(&child.sinks[i], apr_time_now());
            apr_pool_clear(child.work);
        }
    }
    apr_thread_exit(thd, APR_SUCCESS);
    return NULL;
}

/* pchild cleanup: the last write, then the slot goes back. */
static apr_status_t child_stop(void *data)
{
    apr_status_t rv;
    int i;

    (void)data;
    if (child.thread) {
        apr_thread_mutex_lock(child.lock);
        child.stopping = 1;
        apr_thread_cond_signal(child.wake);
        apr_thread_mutex_unlock(child.lock);
        apr_thread_join(&rv, child.thread);
        child.thread = NULL;
    }
    for (i = 0; i < child.nsinks; i++) {
        if (child.sinks[i].read_pool) {
            apr_pool_destroy(child.sinks[i].read_pool);
            child.sinks[i].read_pool = NULL;
        }
    }
    if (child.slot) {
        __atomic_store_n(&child.slot->leases, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&child.slot->pid, 0, __ATOMIC_RELEASE);
        child.slot = NULL;
    }
    child.nsinks = 0;
    return APR_SUCCESS;
}

apr_status_t relay_metrics_child_start(apr_pool_t *pchild, relay_redis_pool *const *pools,
                                       int npools, relay_metrics_leases_fn leases, void *baton)
{
    apr_status_t rv;
    int i;

    scripts_init();
    if (npools < 1) {
        return APR_SUCCESS;
    }
    memset(&child, 0, sizeof(child));
    child.sinks = apr_pcalloc(pchild, sizeof(*child.sinks) * (apr_size_t)npools);
    for (i = 0; i < npools; i++) {
        sink *k = &child.sinks[i];

        k->pool = pools[i];
        if ((rv = apr_thread_mutex_create(&k->lock, APR_THREAD_MUTEX_DEFAULT, pchild)) ||
            (rv = apr_thread_mutex_create(&k->read_lock, APR_THREAD_MUTEX_DEFAULT, pchild)) ||
            (rv = relay_pool_own(&k->count_pool[0], pchild)) ||
            (rv = relay_pool_own(&k->count_pool[1], pchild))) {
            return rv;
        }
        k->counts = apr_hash_make(k->count_pool[0]);
    }
    if ((rv = apr_thread_mutex_create(&child.lock, APR_THREAD_MUTEX_DEFAULT, pchild)) ||
        (rv = apr_thread_cond_create(&child.wake, pchild)) ||
        (rv = relay_pool_own(&child.work, pchild))) {
        return rv;
    }
    child.leases = leases;
    child.baton = baton;
    child.slot = shm ? claim_slot() : NULL;
    /* sinks are looked up without a lock: they are all in place before any request */
    child.nsinks = npools;
    /*
     * a pre-cleanup: it runs before the child's subpools (the flush thread's
     * among them) and the Redis pools go, so the thread is joined while its
     * pool lives and the last write still has a connection
     */
    apr_pool_pre_cleanup_register(pchild, NULL, child_stop);
    return apr_thread_create(&child.thread, NULL, flush_main, NULL, pchild);
}

/* A reply element as a number: an integer, or a string of digits; else 0. */
static long long reply_num(const redisReply *r)
{
    char buf[32], *end;
    long long v;

    if (r->type == REDIS_REPLY_INTEGER) {
        return r->integer;
    }
    if (r->type != REDIS_REPLY_STRING || r->len == 0 || r->len >= sizeof(buf)) {
        return 0;
    }
    memcpy(buf, r->str, r->len);
    buf[r->len] = '\0';
    errno = 0;
    v = strtoll(buf, &end, 10);
    return errno || *end || v < 0 ? 0 : v;
}

/* A reply element as a string (cut to max bytes), or "". */
static const char *reply_str(const redisReply *r, apr_size_t max, apr_pool_t *p)
{
    if (r->type != REDIS_REPLY_STRING) {
        return "";
    }
    return apr_pstrmemdup(p, r->str, r->len < max ? r->len : max);
}

/* One key of the read script's reply; 0 when the entry has not its shape. */
static int parse_key(const redisReply *e, relay_metrics_key *k, apr_pool_t *p)
{
    const redisReply *oc, *tok;
    relay_metrics_model *models;
    size_t i;
    int o;

    if (e->type != REDIS_REPLY_ARRAY || e->elements < 7 ||
        e->element[0]->type != REDIS_REPLY_STRING) {
        return 0;
    }
    memset(k, 0, sizeof(*k));
    k->id = reply_str(e->element[0], ID_MAX, p);
    k->name = reply_str(e->element[1], NAME_MAX_BYTES, p);
    k->concurrency_limit = reply_num(e->element[2]);
    k->token_limit = reply_num(e->element[3]);
    k->in_flight = reply_num(e->element[4]);
    for (o = 0; o < RELAY_OUTCOME_COUNT; o++) {
        k->outcomes[o] = -1;
    }
    oc = e->element[5];
    for (i = 0; oc->type == REDIS_REPLY_ARRAY && i + 1 < oc->elements; i += 2) {
        const redisReply *f = oc->element[i];

        for (o = 0; f->type == REDIS_REPLY_STRING && o < RELAY_OUTCOME_COUNT; o++) {
            if (strlen(outcomes[o].name) == f->len &&
                memcmp(outcomes[o].name, f->str, f->len) == 0) {
                k->outcomes[o] = reply_num(oc->element[i + 1]);
                break;
            }
        }
    }
    tok = e->element[6];
    if (tok->type == REDIS_REPLY_ARRAY && tok->elements >= 5) {
        models = apr_pcalloc(p, sizeof(*models) * (tok->elements / 5));
        for (i = 0; i + 4 < tok->elements; i += 5) {
            relay_metrics_model *m = &models[k->nmodels++];

            m->model = reply_str(tok->element[i], 128, p);
            m->input = reply_num(tok->element[i + 1]);
            m->output = reply_num(tok->element[i + 2]);
            m->cache_create = reply_num(tok->element[i + 3]);
            m->cache_read = reply_num(tok->element[i + 4]);
        }
        k->models = models;
    }
    return 1;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Read every key of a Redis: HVALS of the hash map, then the keys 500 per script call. */
static void read_keys(relay_redis_pool *pool, apr_pool_t *p, relay_metrics_keys *out)
{
    static const char *const hvals[] = {"HVALS", RELAY_KEY_HASH_MAP};
    static const size_t hvals_len[] = {5, sizeof(RELAY_KEY_HASH_MAP) - 1};
    apr_time_t t0 = apr_time_now();
    apr_array_header_t *ids, *keys;
    relay_redis_conn *c;
    redisReply *rep;
    const char *err = NULL;
    size_t i;
    int n, off;

    memset(out, 0, sizeof(*out));
    out->at = t0;
    if (!(c = relay_redis_acquire(pool, p, &err))) {
        out->error = err;
        return;
    }
    rep = relay_redis_command(c, 2, (const char **)hvals, hvals_len, p, &err);
    out->calls++;
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        out->error = rep ? apr_psprintf(p, "%s is not a hash", RELAY_KEY_HASH_MAP) : err;
        if (rep) {
            freeReplyObject(rep);
        }
        relay_redis_release(pool, c);
        return;
    }
    ids = apr_array_make(p, (int)rep->elements + 1, sizeof(const char *));
    for (i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i];

        /* an id with a NUL byte cannot be passed on; none of this software's has one */
        if (e->type == REDIS_REPLY_STRING && e->len > 0 && e->len <= ID_MAX &&
            !memchr(e->str, '\0', e->len)) {
            APR_ARRAY_PUSH(ids, const char *) = apr_pstrmemdup(p, e->str, e->len);
        }
    }
    freeReplyObject(rep);
    qsort(ids->elts, (size_t)ids->nelts, sizeof(const char *), cmp_str);
    /* an id named by two hashes (a key whose hash was replaced) is read once */
    for (n = 0, off = 0; off < ids->nelts; off++) {
        if (!n || strcmp(APR_ARRAY_IDX(ids, n - 1, const char *),
                         APR_ARRAY_IDX(ids, off, const char *)) != 0) {
            APR_ARRAY_IDX(ids, n++, const char *) = APR_ARRAY_IDX(ids, off, const char *);
        }
    }
    ids->nelts = n;

    keys = apr_array_make(p, n + 1, sizeof(relay_metrics_key));
    for (off = 0; off < n; off += IDS_PER_CALL) {
        int k = n - off > IDS_PER_CALL ? IDS_PER_CALL : n - off;

        rep = relay_redis_script(c, &read_script, 0, NULL, k, (const char *const *)ids->elts + off,
                                 p, &err);
        out->calls++;
        if (!rep) {
            break;
        }
        for (i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
            relay_metrics_key key;

            if (parse_key(rep->element[i], &key, p)) {
                APR_ARRAY_PUSH(keys, relay_metrics_key) = key;
            }
        }
        freeReplyObject(rep);
    }
    relay_redis_release(pool, c);
    if (off < n) {
        out->error = err ? err : "Redis did not answer";
        return;
    }
    out->ok = 1;
    out->keys = (const relay_metrics_key *)keys->elts;
    out->nkeys = keys->nelts;
    out->seconds = (double)(apr_time_now() - t0) / APR_USEC_PER_SEC;
}

void relay_metrics_keys_with(relay_redis_pool *pool, apr_pool_t *p,
                             void (*fn)(const relay_metrics_keys *keys, void *baton), void *baton)
{
    sink *k = sink_of(pool);
    relay_metrics_keys once;
    apr_time_t now;

    scripts_init();
    if (!pool) {
        memset(&once, 0, sizeof(once));
        once.error = "this server has no Redis";
        fn(&once, baton);
        return;
    }
    if (!k) {
        read_keys(pool, p, &once);
        fn(&once, baton);
        return;
    }
    /* one read at a time per child; the scrapes that wait for it take its figures */
    apr_thread_mutex_lock(k->read_lock);
    now = apr_time_now();
    if (!k->read_pool || now - k->read.at >= apr_time_from_msec(READ_FRESH_MS) ||
        now < k->read.at) {
        if (k->read_pool) {
            apr_pool_destroy(k->read_pool);
            k->read_pool = NULL;
        }
        if (relay_pool_own(&k->read_pool, NULL) != APR_SUCCESS) {
            k->read_pool = NULL;
            apr_thread_mutex_unlock(k->read_lock);
            read_keys(pool, p, &once);
            fn(&once, baton);
            return;
        }
        read_keys(pool, k->read_pool, &k->read);
    }
    fn(&k->read, baton);
    apr_thread_mutex_unlock(k->read_lock);
}

/* Length of a valid UTF-8 sequence at s (at most n bytes), or 0. */
static apr_size_t utf8_len(const unsigned char *s, apr_size_t n)
{
    apr_size_t len, i;
    unsigned int cp;

    if (s[0] < 0x80) {
        return s[0] ? 1 : 0;
    }
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2, cp = s[0] & 0x1f;
    }
    else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3, cp = s[0] & 0x0f;
    }
    else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4, cp = s[0] & 0x07;
    }
    else {
        return 0;
    }
    if (n < len) {
        return 0;
    }
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* no overlong forms, no surrogates, nothing above U+10FFFF */
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
        return 0;
    }
    return len;
}

const char *relay_metrics_label(const char *s, apr_size_t len, apr_pool_t *p)
{
    const unsigned char *u = (const unsigned char *)s;
    char *out = apr_palloc(p, len * 3 + 1), *o = out;
    apr_size_t i = 0;

    while (i < len) {
        apr_size_t n = utf8_len(u + i, len - i);

        if (n == 0) {
            /* U+FFFD REPLACEMENT CHARACTER */
            memcpy(o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
        else if (u[i] == '\\' || u[i] == '"') {
            *o++ = '\\';
            *o++ = (char)u[i++];
        }
        else if (u[i] == '\n') {
            *o++ = '\\';
            *o++ = 'n';
            i++;
        }
        else {
            memcpy(o, u + i, n);
            o += n;
            i += n;
        }
    }
    *o = '\0';
    return out;
}

/* Where rendered text goes, and a line buffer. */
typedef struct {
    relay_metrics_write_fn write;
    void *baton;
} out_t;

static void outf(out_t *o, const char *fmt, ...)
{
    char buf[4096];
    va_list ap;
    apr_size_t n;

    va_start(ap, fmt);
    n = (apr_size_t)apr_vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    o->write(o->baton, buf, n);
}

/* HELP and TYPE of a family. */
static void family(out_t *o, const char *name, const char *type, const char *help)
{
    outf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A family of one sample without labels. */
static void scalar(out_t *o, const char *name, const char *type, const char *help,
                   apr_uint64_t value)
{
    family(o, name, type, help);
    outf(o, "%s %" APR_UINT64_T_FMT "\n", name, value);
}

/* A histogram from per-bucket counts (the last is +Inf). */
static void histogram(out_t *o, const char *name, const apr_uint64_t *counts, const char *const *le,
                      int n, const char *sum)
{
    apr_uint64_t total = 0;
    int i;

    for (i = 0; i < n; i++) {
        total += counts[i];
        outf(o, "%s_bucket{le=\"%s\"} %" APR_UINT64_T_FMT "\n", name, le[i], total);
    }
    total += counts[n];
    outf(o, "%s_bucket{le=\"+Inf\"} %" APR_UINT64_T_FMT "\n", name, total);
    outf(o, "%s_sum %s\n", name, sum);
    outf(o, "%s_count %" APR_UINT64_T_FMT "\n", name, total);
}

/* The per-key families. */
static void render_keys(out_t *o, const relay_metrics_keys *keys, apr_pool_t *p)
{
    static const char *const types[] = {"input", "output", "cache_creation", "cache_read"};
    const char **labels;
    apr_pool_t *sp;
    int i, j, t, oc;

    family(o, "claude_relay_keys_read_ok", "gauge",
           "Whether this scrape could read the keys from Redis (1) or not (0).");
    outf(o, "claude_relay_keys_read_ok %d\n", keys->ok ? 1 : 0);
    if (!keys->ok) {
        return;
    }
    family(o, "claude_relay_keys_read_seconds", "gauge",
           "How long the read of the keys from Redis took (shared by the scrapes of one second "
           "in one httpd child).");
    outf(o, "claude_relay_keys_read_seconds %.6f\n", keys->seconds);
    family(o, "claude_relay_keys_read_redis_calls", "gauge",
           "Redis round trips of that read: one, plus one per 500 keys.");
    outf(o, "claude_relay_keys_read_redis_calls %d\n", keys->calls);
    family(o, "claude_relay_keys", "gauge", "Keys in Redis (apikey:hash_map).");
    outf(o, "claude_relay_keys %d\n", keys->nkeys);

    /* the labels of each key, escaped once */
    apr_pool_create(&sp, p);
    labels = apr_palloc(p, sizeof(*labels) * (apr_size_t)(keys->nkeys + 1));
    for (i = 0; i < keys->nkeys; i++) {
        const relay_metrics_key *k = &keys->keys[i];

        labels[i] = apr_pstrcat(p, "key_id=\"", relay_metrics_label(k->id, strlen(k->id), sp),
                                "\",key_name=\"", relay_metrics_label(k->name, strlen(k->name), sp),
                                "\"", NULL);
        apr_pool_clear(sp);
    }
    apr_pool_destroy(sp);

    family(o, "claude_relay_key_requests_total", "counter",
           "Requests of a key by outcome, counted by every relay server sharing the Redis.");
    for (i = 0; i < keys->nkeys; i++) {
        const relay_metrics_key *k = &keys->keys[i];

        for (oc = 0; oc < RELAY_OUTCOME_COUNT; oc++) {
            /* admitted always, the others once they happened */
            if (k->outcomes[oc] >= 0 || oc == RELAY_OUTCOME_ADMITTED) {
                outf(o, "claude_relay_key_requests_total{%s,outcome=\"%s\"} %" APR_INT64_T_FMT "\n",
                     labels[i], outcomes[oc].name,
                     (apr_int64_t)(k->outcomes[oc] > 0 ? k->outcomes[oc] : 0));
            }
        }
    }
    family(o, "claude_relay_key_in_flight", "gauge",
           "Live leases of a key in Redis: its requests in flight on every server (kept slots "
           "included).");
    for (i = 0; i < keys->nkeys; i++) {
        outf(o, "claude_relay_key_in_flight{%s} %" APR_INT64_T_FMT "\n", labels[i],
             (apr_int64_t)keys->keys[i].in_flight);
    }
    family(o, "claude_relay_key_concurrency_limit", "gauge",
           "A key's concurrency limit (0: none).");
    for (i = 0; i < keys->nkeys; i++) {
        outf(o, "claude_relay_key_concurrency_limit{%s} %" APR_INT64_T_FMT "\n", labels[i],
             (apr_int64_t)keys->keys[i].concurrency_limit);
    }
    family(o, "claude_relay_key_token_limit", "gauge", "A key's token limit (0: none).");
    for (i = 0; i < keys->nkeys; i++) {
        outf(o, "claude_relay_key_token_limit{%s} %" APR_INT64_T_FMT "\n", labels[i],
             (apr_int64_t)keys->keys[i].token_limit);
    }
    family(o, "claude_relay_key_tokens_total", "counter",
           "Tokens of a key by model and type, as the upstream reported them "
           "(usage:{id}:model:alltime:{model}).");
    apr_pool_create(&sp, p);
    for (i = 0; i < keys->nkeys; i++) {
        const relay_metrics_key *k = &keys->keys[i];

        for (j = 0; j < k->nmodels; j++) {
            const relay_metrics_model *m = &k->models[j];
            const long long v[4] = {m->input, m->output, m->cache_create, m->cache_read};
            const char *model = relay_metrics_label(m->model, strlen(m->model), sp);

            for (t = 0; t < 4; t++) {
                outf(o,
                     "claude_relay_key_tokens_total{%s,model=\"%s\",type=\"%s\"} %" APR_INT64_T_FMT
                     "\n",
                     labels[i], model, types[t], (apr_int64_t)v[t]);
            }
            apr_pool_clear(sp);
        }
    }
    apr_pool_destroy(sp);
}

void relay_metrics_render(const relay_metrics_server *srv, const relay_metrics_keys *keys,
                          relay_metrics_write_fn write, void *baton, apr_pool_t *p)
{
    out_t o = {write, baton};
    char sum[64];
    int i;

    family(&o, "claude_relay_requests_total", "counter",
           "Requests by what the relay decided, in this httpd (all its children) since it "
           "started.");
    for (i = 0; i < RELAY_OUTCOME_COUNT; i++) {
        outf(&o, "claude_relay_requests_total{outcome=\"%s\"} %" APR_UINT64_T_FMT "\n",
             outcomes[i].name, srv->outcomes[i]);
    }
    scalar(&o, "claude_relay_redis_commands_total", "counter",
           "Redis round trips of this httpd's connection pools.", srv->redis_commands);
    scalar(&o, "claude_relay_redis_errors_total", "counter",
           "Redis round trips that failed: no answer, or an error reply.", srv->redis_errors);
    family(&o, "claude_relay_redis_latency_seconds", "histogram",
           "Time of each Redis round trip, as the httpd child saw it.");
    apr_snprintf(sum, sizeof(sum), "%.6f", (double)srv->redis_latency_us / APR_USEC_PER_SEC);
    histogram(&o, "claude_relay_redis_latency_seconds", srv->latency, latency_le,
              RELAY_METRICS_LATENCY_BUCKETS, sum);
    family(&o, "claude_relay_batch_operations", "histogram",
           "Admissions, releases and usage records carried by each batch script call.");
    apr_snprintf(sum, sizeof(sum), "%" APR_UINT64_T_FMT, srv->batch_ops);
    histogram(&o, "claude_relay_batch_operations", srv->batch, batch_le,
              RELAY_METRICS_BATCH_BUCKETS, sum);
    scalar(&o, "claude_relay_leases_held", "gauge",
           "Leases of the running requests of this httpd (each child's figure at most a second "
           "old).",
           srv->leases_held);
    scalar(&o, "claude_relay_lease_renewals_total", "counter",
           "Leases the keepers sent to Redis to be renewed.", srv->renewed);
    scalar(&o, "claude_relay_leases_lost_total", "counter",
           "Leases of running requests that were gone from Redis when renewed.", srv->lost);
    scalar(&o, "claude_relay_key_count_writes_failed_total", "counter",
           "Writes of per-key counts to Redis that failed (the counts wait for the next one).",
           srv->key_writes_failed);
    scalar(&o, "claude_relay_processes", "gauge",
           "httpd children whose figures the server figures sum.", srv->children);
    if (keys) {
        render_keys(&o, keys, p);
    }
}
