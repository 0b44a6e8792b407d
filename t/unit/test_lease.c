/*
 * test_lease.c - the lease core below httpd: relay_lease*.c, relay_redis.c
 * and APR against a throwaway redis-server this program starts on a free
 * loopback port (and stops). The core's clock is a fake one the tests move,
 * and every script call goes through a seam here that counts the calls,
 * reads what each batch carries, can hold a batch in flight, and can make
 * Redis "not answer".
 *
 *   build/test_lease [redis-server]
 *
 * Each test asserts what the API answered and what Redis holds.
 */
#include "relay_lease_int.h"
#include "check.h"

#include <apr_portable.h>

#include <apr_atomic.h>
#include <apr_strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the redis-server ---------------------------------------------------- */

static pid_t redis_pid;
static int redis_port;
static redisContext *R; /* the test's own connection */

/* A free loopback port: bound once by the kernel's choice, then let go. */
static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        perror("free_port");
        exit(2);
    }
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static void stop_redis(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
        redis_pid = 0;
    }
}

/* Start redis-server without persistence and wait (10 s at most) until it answers. */
static void start_redis(const char *bin)
{
    char port[16];
    int i;

    redis_port = free_port();
    snprintf(port, sizeof(port), "%d", redis_port);
    if ((redis_pid = fork()) == 0) {
        /* a test that crashes takes its redis-server along */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (!freopen("/dev/null", "w", stdout)) {
            _exit(127);
        }
        execlp(bin, bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    atexit(stop_redis);
    for (i = 0; i < 1000; i++) {
        struct timeval tv = {1, 0};

        R = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
        if (R && !R->err) {
            redisReply *rep = redisCommand(R, "PING");

            if (rep && rep->type == REDIS_REPLY_STATUS) {
                freeReplyObject(rep);
                return;
            }
            if (rep) {
                freeReplyObject(rep);
            }
        }
        if (R) {
            redisFree(R);
            R = NULL;
        }
        usleep(10000);
    }
    fprintf(stderr, "test_lease: %s did not start on port %d\n", bin, redis_port);
    exit(2);
}

/* An integer answer of a command on the test's connection (-1 on error). */
static long long rint_(const char *fmt, ...)
{
    va_list ap;
    redisReply *rep;
    long long v = -1;

    va_start(ap, fmt);
    rep = redisvCommand(R, fmt, ap);
    va_end(ap);
    if (rep && rep->type == REDIS_REPLY_INTEGER) {
        v = rep->integer;
    }
    else if (rep && rep->type == REDIS_REPLY_STRING) {
        v = strtoll(rep->str, NULL, 10);
    }
    else if (rep && rep->type == REDIS_REPLY_NIL) {
        v = 0;
    }
    if (rep) {
        freeReplyObject(rep);
    }
    return v;
}

/* Now on Redis's clock, in milliseconds (the scores of leases). */
static long long redis_ms(void)
{
    redisReply *rep = redisCommand(R, "TIME");
    long long ms = 0;

    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2) {
        ms = strtoll(rep->element[0]->str, NULL, 10) * 1000 +
             strtoll(rep->element[1]->str, NULL, 10) / 1000;
    }
    if (rep) {
        freeReplyObject(rep);
    }
    return ms;
}

/* Run a command on the test's connection, answer ignored. */
static void rcmd(const char *fmt, ...)
{
    va_list ap;
    redisReply *rep;

    va_start(ap, fmt);
    rep = redisvCommand(R, fmt, ap);
    va_end(ap);
    if (rep) {
        freeReplyObject(rep);
    }
}

/* A key in Redis as the relay reads it; the hash is made from the id. */
typedef struct {
    char id[40];
    char hash[65];
} test_key;

static void make_key(test_key *k, const char *id, int limit, int token_limit)
{
    size_t i;

    snprintf(k->id, sizeof(k->id), "%s", id);
    for (i = 0; i < 64; i++) {
        k->hash[i] = "0123456789abcdef"[(id[i % strlen(id)] + i) & 15];
    }
    k->hash[64] = '\0';
    rcmd("HSET apikey:%s id %s apiKey %s isActive true concurrencyLimit %d tokenLimit %d name %s",
         k->id, k->id, k->hash, limit, token_limit, k->id);
    rcmd("HSET apikey:hash_map %s %s", k->hash, k->id);
}

static long long leases(const test_key *k)
{
    return rint_("ZCARD concurrency:%s", k->id);
}

/* ---- the fake clock, the seam, the log sink ------------------------------ */

static apr_time_t fake_now;

static apr_time_t fake_clock(void)
{
    return __atomic_load_n(&fake_now, __ATOMIC_SEQ_CST);
}

/* Move the core's clock forward and wake the keeper to look at it. */
static void advance(relay_lease_store *st, apr_interval_time_t by)
{
    __atomic_add_fetch(&fake_now, by, __ATOMIC_SEQ_CST);
    relay_lease_keeper_poke(st);
}

/* What one batch call carried (see lua/batch.lua for the layout). */
typedef struct {
    int releases, adds, usage_keys, admissions;
} batch_shape;

#define MAX_SHAPES 256

static struct {
    apr_thread_mutex_t *mu;
    apr_thread_cond_t *cond;
    int batches, renews, rechecks; /* script calls, by script */
    batch_shape shape[MAX_SHAPES]; /* of each batch call */
    int renewed;                   /* leases sent to the renew script */
    int hold;                      /* batch calls wait while set */
    int held;                      /* batch calls waiting now */
    int fail;                      /* calls to answer as Redis down: -1 all, n the next n */
    apr_os_thread_t last_sender;   /* the thread that sent the last batch call */
} seam;

/* Count a group section of the batch ARGV: returns the members, moves *i past it. */
static int groups(const char *const *args, int *i)
{
    int g = atoi(args[(*i)++]), n = 0;

    while (g-- > 0) {
        int m = atoi(args[*i + 1]);

        n += m;
        *i += 2 + m;
    }
    return n;
}

static batch_shape shape_of(int nargs, const char *const *args)
{
    batch_shape s = {0, 0, 0, 0};
    int i = 2, g;

    s.releases = groups(args, &i);
    s.adds = groups(args, &i);
    for (g = atoi(args[i++]); g > 0; g--) {
        s.usage_keys++;
        i += 2 + 8 * atoi(args[i + 1]);
    }
    s.admissions = i < nargs ? atoi(args[i]) : -1;
    return s;
}

static redisReply *seam_send(relay_lease_store *st, const relay_script *s, int nkeys,
                             const char *const *keys, int nargs, const char *const *args,
                             apr_pool_t *p, const char **err)
{
    int down;

    apr_thread_mutex_lock(seam.mu);
    if (strcmp(s->name, "admit/release") == 0) {
        if (seam.batches < MAX_SHAPES) {
            seam.shape[seam.batches] = shape_of(nargs, args);
        }
        seam.batches++;
        seam.last_sender = apr_os_thread_current();
        while (seam.hold) {
            seam.held++;
            apr_thread_cond_broadcast(seam.cond);
            apr_thread_cond_wait(seam.cond, seam.mu);
            seam.held--;
        }
    }
    else if (strcmp(s->name, "renew") == 0) {
        seam.renews++;
        seam.renewed += nkeys;
    }
    else {
        seam.rechecks++;
    }
    down = seam.fail != 0;
    if (seam.fail > 0) {
        seam.fail--;
    }
    apr_thread_mutex_unlock(seam.mu);
    if (down) {
        *err = "injected: Redis did not answer";
        return NULL;
    }
    return relay_lease_send_redis(st, s, nkeys, keys, nargs, args, p, err);
}

static int seam_get(const int *v)
{
    int n;

    apr_thread_mutex_lock(seam.mu);
    n = *v;
    apr_thread_mutex_unlock(seam.mu);
    return n;
}

static void seam_set(int *v, int n)
{
    apr_thread_mutex_lock(seam.mu);
    *v = n;
    apr_thread_cond_broadcast(seam.cond);
    apr_thread_mutex_unlock(seam.mu);
}

static char logged[8192];

static void log_sink(void *baton, relay_lease_log_level level, const char *msg)
{
    (void)baton;
    apr_thread_mutex_lock(seam.mu);
    if (level == RELAY_LEASE_LOG_WARNING && strlen(logged) + strlen(msg) + 2 < sizeof(logged)) {
        strcat(logged, msg);
        strcat(logged, "\n");
    }
    apr_thread_mutex_unlock(seam.mu);
}

static int log_has(const char *what)
{
    int yes;

    apr_thread_mutex_lock(seam.mu);
    yes = strstr(logged, what) != NULL;
    apr_thread_mutex_unlock(seam.mu);
    return yes;
}

/* ---- polling --------------------------------------------------------------- */

/* Poll a condition every 2 ms for at most 10 s; returns its last value. */
#define WAIT_FOR(cond)                                                                             \
    ({                                                                                             \
        int _i, _ok = 0;                                                                           \
        for (_i = 0; _i < 5000 && !(_ok = (cond)); _i++) {                                         \
            usleep(2000);                                                                          \
        }                                                                                          \
        _ok;                                                                                       \
    })

/* Whether the keeper has read the clock and set its timers. */
static int keeper_running(relay_lease_store *st)
{
    int on;

    apr_thread_mutex_lock(st->lock);
    on = st->keeper.renew_due != 0;
    apr_thread_mutex_unlock(st->lock);
    return on;
}

static int tracking(relay_lease_store *st)
{
    int on;

    apr_thread_mutex_lock(st->lock);
    on = st->track.on;
    apr_thread_mutex_unlock(st->lock);
    return on;
}

/* Ops waiting in a store's queue. */
static int queued(relay_lease_store *st)
{
    lease_op *op;
    int n = 0;

    apr_thread_mutex_lock(st->lock);
    for (op = APR_RING_FIRST(&st->batch.queue);
         op != APR_RING_SENTINEL(&st->batch.queue, lease_op, link); op = APR_RING_NEXT(op, link)) {
        n++;
    }
    apr_thread_mutex_unlock(st->lock);
    return n;
}

/* ---- a child: a store with its keeper, in a pool of its own -------------- */

static apr_pool_t *root;
static relay_redis_target target;

typedef struct {
    apr_pool_t *pool; /* its "pchild" */
    relay_redis_pool *redis;
    relay_lease_store *st;
} child;

static void child_start(child *c, int lease_seconds, int reuse_ms)
{
    apr_pool_create(&c->pool, root);
    if (relay_redis_pool_create(&c->redis, &target, 4, c->pool) != APR_SUCCESS ||
        relay_lease_store_create(&c->st, c->redis, lease_seconds, reuse_ms, c->pool) !=
            APR_SUCCESS) {
        fprintf(stderr, "test_lease: cannot create a store\n");
        exit(2);
    }
    relay_lease_set_seams(c->st, fake_clock, seam_send);
    relay_lease_keeper_start(c->st, log_sink, NULL, c->pool);
    CHECK(WAIT_FOR(tracking(c->st)), "the tracking connection comes up");
    /* its timers count from the clock it read when it started: before any advance() */
    CHECK(WAIT_FOR(keeper_running(c->st)), "the keeper runs");
}

/* The child exits: its keeper drains the queue before the pool goes. */
static void child_stop(child *c)
{
    apr_pool_destroy(c->pool);
    c->pool = NULL;
}

/* Start a test afresh: an empty Redis, the seam reset. */
static void fresh(const char *name)
{
    printf("# %s\n", name);
    rcmd("FLUSHALL");
    apr_thread_mutex_lock(seam.mu);
    seam.batches = seam.renews = seam.rechecks = seam.renewed = 0;
    seam.hold = seam.held = seam.fail = 0;
    logged[0] = '\0';
    apr_thread_mutex_unlock(seam.mu);
}

static relay_admit_code admit(child *c, const test_key *k, apr_pool_t *p, relay_admit_result *res,
                              relay_lease **lease)
{
    return relay_lease_admit(c->st, k->hash, p, res, lease);
}

/* An admission on a thread of its own (for the batching tests). */
typedef struct {
    child *c;
    const test_key *k;
    apr_pool_t *p;
    relay_admit_result res;
    relay_lease *lease;
    relay_admit_code code;
} admit_job;

static void *APR_THREAD_FUNC admit_thread(apr_thread_t *t, void *data)
{
    admit_job *j = data;

    j->code = relay_lease_admit(j->c->st, j->k->hash, j->p, &j->res, &j->lease);
    apr_thread_exit(t, APR_SUCCESS);
    return NULL;
}

static apr_thread_t *admit_async(admit_job *j, child *c, const test_key *k, apr_pool_t *p)
{
    apr_thread_t *t;

    memset(j, 0, sizeof(*j));
    j->c = c;
    j->k = k;
    /* a pool of its own: APR pools are not shared between threads */
    apr_pool_create(&j->p, p);
    apr_thread_create(&t, NULL, admit_thread, j, p);
    return t;
}

/* A release at the answer's end, on a thread of its own. */
typedef struct {
    child *c;
    relay_lease *lease;
    apr_pool_t *p;
    apr_status_t rv;
    apr_os_thread_t self;
} release_job;

static void *APR_THREAD_FUNC release_thread(apr_thread_t *t, void *data)
{
    release_job *j = data;
    const char *err = NULL;

    j->self = apr_os_thread_current();
    j->rv = relay_lease_release_sent(j->c->st, j->lease, NULL, j->p, NULL, &err);
    apr_thread_exit(t, APR_SUCCESS);
    return NULL;
}

static void join(apr_thread_t *t)
{
    apr_status_t rv;

    apr_thread_join(&rv, t);
}

static const relay_usage_counts no_usage = {0, 0, 0, 0, NULL};

/* ---- the tests ----------------------------------------------------------- */

/* A limit holds within one store; a slot given back at the answer's end is free at once. */
static void test_within_store(apr_pool_t *p)
{
    relay_lease *a, *b, *x;
    relay_admit_result res;
    const char *err = NULL;
    test_key k;
    child c;

    fresh("admissions and releases within a store");
    make_key(&k, "within", 2, 0);
    child_start(&c, 30, 0);
    CHECK(admit(&c, &k, p, &res, &a) == RELAY_ADMIT_OK && res.current == 1 && res.limit == 2 &&
              !res.known && strcmp(res.id, "within") == 0,
          "first admission: OK, 1 of 2 (got %d/%lld)", res.code, res.current);
    CHECK(admit(&c, &k, p, &res, &b) == RELAY_ADMIT_OK && res.current == 2,
          "second admission: OK, 2 of 2");
    CHECK(admit(&c, &k, p, &res, &x) == RELAY_ADMIT_LIMITED && res.current == 2 && !x,
          "third admission: over the limit, nothing taken (got %d)", res.code);
    CHECK(leases(&k) == 2, "Redis holds 2 leases (holds %lld)", leases(&k));
    CHECK(relay_lease_live_count(c.st) == 2, "the store counts 2 live leases");
    CHECK(relay_lease_release_sent(c.st, a, &no_usage, p, NULL, &err) == APR_SUCCESS &&
              leases(&k) == 1,
          "a release at the answer's end is in Redis when it returns (%lld leases)", leases(&k));
    CHECK(relay_lease_release(c.st, a, &no_usage, &err) == APR_SUCCESS && leases(&k) == 1 &&
              relay_lease_live_count(c.st) == 1,
          "a second release of the same lease does nothing");
    CHECK(admit(&c, &k, p, &res, &x) == RELAY_ADMIT_OK && res.current == 2,
          "the slot given back admits the next request");
    child_stop(&c);
    CHECK(leases(&k) == 2, "the leases of running requests stay when the child goes");
}

/* Two stores (two children) on one Redis count the same leases. */
static void test_across_stores(apr_pool_t *p)
{
    relay_lease *a, *b;
    relay_admit_result res;
    const char *err = NULL;
    test_key k;
    child c1, c2;

    fresh("admissions and releases across stores");
    make_key(&k, "across", 1, 0);
    child_start(&c1, 30, 0);
    child_start(&c2, 30, 0);
    CHECK(admit(&c1, &k, p, &res, &a) == RELAY_ADMIT_OK, "child 1 takes the only slot");
    CHECK(admit(&c2, &k, p, &res, &b) == RELAY_ADMIT_LIMITED && res.current == 1,
          "child 2 is refused while child 1 holds it");
    CHECK(relay_lease_release_sent(c1.st, a, &no_usage, p, NULL, &err) == APR_SUCCESS,
          "child 1 gives it back at the answer's end");
    CHECK(admit(&c2, &k, p, &res, &b) == RELAY_ADMIT_OK, "child 2 takes it at once");
    relay_lease_release(c2.st, b, &no_usage, &err);
    CHECK(WAIT_FOR(leases(&k) == 0),
          "a release a limit waits for is sent by the keeper without a clock tick");
    CHECK(admit(&c1, &k, p, &res, &a) == RELAY_ADMIT_OK, "child 1 takes it again");
    child_stop(&c1);
    child_stop(&c2);
}

/* Admissions waiting behind a batch in flight share the next script call. */
static void test_batching(apr_pool_t *p)
{
    admit_job jobs[6];
    apr_thread_t *t[6];
    test_key k;
    child c;
    int i, ok = 0;

    fresh("concurrent admissions share one script call");
    make_key(&k, "batched", 100, 0);
    child_start(&c, 30, 0);
    seam_set(&seam.hold, 1);
    t[0] = admit_async(&jobs[0], &c, &k, p);
    CHECK(WAIT_FOR(seam_get(&seam.held) == 1), "the first admission's call is in flight");
    for (i = 1; i < 6; i++) {
        t[i] = admit_async(&jobs[i], &c, &k, p);
    }
    CHECK(WAIT_FOR(queued(c.st) == 5), "five admissions wait in the queue");
    seam_set(&seam.hold, 0);
    for (i = 0; i < 6; i++) {
        join(t[i]);
        ok += jobs[i].code == RELAY_ADMIT_OK;
    }
    CHECK(ok == 6 && leases(&k) == 6, "all six admitted, six leases (%d, %lld)", ok, leases(&k));
    CHECK(seam.batches == 2 && seam.shape[1].admissions == 5,
          "two script calls, the second with the five waiting admissions (%d calls, %d)",
          seam.batches, seam.shape[1].admissions);
    child_stop(&c);
}

/* Releases go before the admissions of their batch: a slot given back is free for them. */
static void test_release_first(apr_pool_t *p)
{
    relay_admit_result res;
    relay_lease *l;
    admit_job ja, jb;
    apr_thread_t *ta, *tb;
    const char *err = NULL;
    test_key k, other;
    child c;

    fresh("a release goes before the admissions of its batch");
    make_key(&k, "one-slot", 1, 0);
    make_key(&other, "other", 0, 0);
    child_start(&c, 30, 0);
    CHECK(admit(&c, &k, p, &res, &l) == RELAY_ADMIT_OK, "the only slot is taken");
    seam_set(&seam.hold, 1);
    ta = admit_async(&ja, &c, &other, p);
    CHECK(WAIT_FOR(seam_get(&seam.held) == 1), "another key's batch is in flight");
    relay_lease_release(c.st, l, &no_usage, &err);
    tb = admit_async(&jb, &c, &k, p);
    CHECK(WAIT_FOR(queued(c.st) == 2), "the release, then an admission, wait in the queue");
    seam_set(&seam.hold, 0);
    join(ta);
    join(tb);
    CHECK(jb.code == RELAY_ADMIT_OK && leases(&k) == 1,
          "the admission queued after the release is admitted (code %d)", jb.code);
    CHECK(seam.batches == 3 && seam.shape[2].releases == 1 && seam.shape[2].admissions == 1,
          "both went in one script call (%d calls)", seam.batches);
    child_stop(&c);
}

/* How soon a release goes: now, within RIDE_US, within DEFER_MS; usage once a second. */
static void test_release_urgency(apr_pool_t *p)
{
    relay_usage_counts u = {10, 5, 0, 0, "m1"};
    relay_admit_result res;
    relay_lease *a, *b, *r, *f;
    const char *err = NULL;
    test_key busy, roomy, free_;
    child c;
    int n;

    fresh("releases go as soon as their limits ask");
    make_key(&busy, "busy", 2, 0);
    make_key(&roomy, "roomy", 100, 0);
    make_key(&free_, "free", 0, 0);
    child_start(&c, 30, 0);
    admit(&c, &busy, p, &res, &a);
    admit(&c, &busy, p, &res, &b);
    relay_lease_release(c.st, b, &u, &err);
    CHECK(WAIT_FOR(leases(&busy) == 1), "at its limit: the release goes at once");

    admit(&c, &roomy, p, &res, &r);
    n = seam_get(&seam.batches);
    relay_lease_release(c.st, r, &u, &err);
    CHECK(seam_get(&seam.batches) == n && leases(&roomy) == 1,
          "with room to spare: the release waits for a batch to ride on");
    admit(&c, &free_, p, &res, &f);
    CHECK(leases(&roomy) == 0 && seam.shape[n].releases == 1 && seam.shape[n].admissions == 1,
          "and rides on the next admission's call");

    n = seam_get(&seam.batches);
    relay_lease_release(c.st, f, &u, &err);
    CHECK(seam_get(&seam.batches) == n && leases(&free_) == 1,
          "without any limit: the release is deferred");
    advance(c.st, apr_time_from_msec(DEFER_MS));
    CHECK(WAIT_FOR(leases(&free_) == 0), "and sent by the keeper within DEFER_MS");
    CHECK(rint_("HGET usage:free totalRequests") == 0, "its usage is not written yet");
    advance(c.st, apr_time_from_msec(USAGE_EVERY_MS));
    CHECK(WAIT_FOR(rint_("HGET usage:free totalRequests") == 1),
          "the summed usage is written once a second");
    CHECK(rint_("HGET usage:roomy totalInputTokens") == 10 &&
              rint_("HGET usage:roomy totalOutputTokens") == 5 &&
              rint_("HGET usage:busy totalRequests") == 1 &&
              rint_("SISMEMBER usage:roomy:models m1") == 1,
          "with its tokens and model");
    child_stop(&c);
}

/* Kept slots: reused while the key is unchanged, given back when it changes or idles. */
static void test_kept_slots(apr_pool_t *p)
{
    relay_admit_result res;
    relay_lease *l1, *l2, *l3, *l4;
    const char *err = NULL, *m1;
    unsigned long epoch;
    test_key k;
    child c;
    int n;

    fresh("kept slots under invalidation");
    make_key(&k, "kept", 100, 0);
    /* RelayReuseSlots shorter than the usage timer: a lastUsedAt write gives kept slots back */
    child_start(&c, 30, 500);
    CHECK(admit(&c, &k, p, &res, &l1) == RELAY_ADMIT_OK && !res.known, "admitted by Redis");
    m1 = relay_lease_member(l1);
    relay_lease_release(c.st, l1, &no_usage, &err);
    CHECK(leases(&k) == 1, "its slot is kept, still counted in Redis");
    n = seam_get(&seam.batches);
    CHECK(admit(&c, &k, p, &res, &l2) == RELAY_ADMIT_OK && res.known &&
              strcmp(relay_lease_member(l2), m1) == 0 && seam_get(&seam.batches) == n,
          "the next request takes the kept slot without a script call");
    relay_lease_release(c.st, l2, &no_usage, &err);
    apr_thread_mutex_lock(c.st->lock);
    epoch = c.st->track.epoch;
    apr_thread_mutex_unlock(c.st->lock);
    rcmd("HSET apikey:kept concurrencyLimit 1");
    CHECK(WAIT_FOR(leases(&k) == 0), "the key changed: the kept slot goes back at once");
    CHECK(admit(&c, &k, p, &res, &l3) == RELAY_ADMIT_OK && !res.known && res.current == 1,
          "the next request is decided by Redis under the new limit");
    CHECK(admit(&c, &k, p, &res, &l4) == RELAY_ADMIT_LIMITED, "which holds: limit 1");
    relay_lease_release(c.st, l3, &no_usage, &err);
    CHECK(WAIT_FOR(leases(&k) == 0), "given back");

    rcmd("HSET apikey:kept concurrencyLimit 100");
    CHECK(WAIT_FOR(c.st->track.epoch > epoch + 1), "the tracker heard both changes");
    admit(&c, &k, p, &res, &l1);
    relay_lease_release(c.st, l1, &no_usage, &err);
    CHECK(leases(&k) == 1, "a slot is kept again");
    advance(c.st, apr_time_from_msec(499));
    CHECK(leases(&k) == 1, "kept until RelayReuseSlots has passed");
    advance(c.st, apr_time_from_msec(2));
    CHECK(WAIT_FOR(leases(&k) == 0), "a kept slot nobody takes goes back after RelayReuseSlots");
    child_stop(&c);
}

/* Renewal: all leases in one call; one gone from Redis is told; a failed renewal too. */
static void test_renewal(apr_pool_t *p)
{
    relay_admit_result res;
    relay_lease *l[7];
    test_key k1, k2, k3;
    long long soon;
    child c;
    int i;

    fresh("renewal batching and lost leases");
    make_key(&k1, "renew1", 5, 0);
    make_key(&k2, "renew2", 5, 0);
    make_key(&k3, "renew3", 0, 0);
    child_start(&c, 30, 0);
    for (i = 0; i < 7; i++) {
        admit(&c, i < 3 ? &k1 : i < 6 ? &k2 : &k3, p, &res, &l[i]);
    }
    /* expiring in 5 s on Redis's clock: a renewal moves that to 30 s */
    soon = redis_ms() + 5000;
    for (i = 0; i < 7; i++) {
        rcmd("ZADD concurrency:%s XX %lld %s", l[i]->id, soon, relay_lease_member(l[i]));
    }
    rcmd("ZREM concurrency:%s %s", k2.id, relay_lease_member(l[3]));
    advance(c.st, apr_time_from_sec(10));
    CHECK(WAIT_FOR(log_has("1 lease(s) of running requests were gone from Redis")),
          "the lease Redis lost is told");
    CHECK(seam.renews == 1 && seam.renewed == 7, "seven leases renewed in one call (%d, %d)",
          seam.renews, seam.renewed);
    CHECK(rint_("ZSCORE concurrency:%s %s", k1.id, relay_lease_member(l[0])) > soon + 20000 &&
              rint_("ZSCORE concurrency:%s %s", k3.id, relay_lease_member(l[6])) > soon + 20000,
          "their expiry moved forward");
    CHECK(leases(&k2) == 2, "the lost lease is not brought back");
    seam_set(&seam.fail, -1);
    advance(c.st, apr_time_from_sec(10));
    CHECK(WAIT_FOR(log_has("cannot renew 7 lease(s)")), "a renewal Redis does not answer is told");
    seam_set(&seam.fail, 0);
    child_stop(&c);
}

/* The child exits: queued releases, kept slots and summed usage reach Redis. */
static void test_shutdown_drain(apr_pool_t *p)
{
    relay_usage_counts u = {7, 3, 0, 0, NULL};
    relay_admit_result res;
    relay_lease *a, *b;
    const char *err = NULL;
    test_key k, kk;
    child c;

    fresh("the shutdown drain");
    make_key(&k, "drain", 0, 0);
    make_key(&kk, "drain-kept", 100, 0);
    child_start(&c, 30, 3000);
    /* both admitted first: a deferred release rides on the next admission's call */
    admit(&c, &k, p, &res, &a);
    admit(&c, &kk, p, &res, &b);
    relay_lease_release(c.st, a, &u, &err);
    relay_lease_release(c.st, b, &u, &err);
    CHECK(leases(&k) == 1 && leases(&kk) == 1 && rint_("HGET usage:drain totalRequests") == 0,
          "before: a deferred release, a kept slot, no usage written");
    child_stop(&c);
    CHECK(leases(&k) == 0 && leases(&kk) == 0, "after: both slots given back (%lld, %lld)",
          leases(&k), leases(&kk));
    CHECK(rint_("HGET usage:drain totalRequests") == 1 &&
              rint_("HGET usage:drain totalTokens") == 10 &&
              rint_("HGET usage:drain-kept totalRequests") == 1,
          "and the usage counted so far written");
}

/* relay_lease_release_sent: what a limit counts is in Redis on return. */
static void test_release_sent(apr_pool_t *p)
{
    relay_usage_counts u = {100, 50, 0, 0, NULL};
    relay_admit_result res;
    relay_lease *l;
    const char *err = NULL;
    release_job rj;
    admit_job aj;
    apr_thread_t *ta, *tr;
    test_key lim, tok, free_, free2;
    child c;
    int n, waited;

    fresh("the release at the answer's end");
    make_key(&lim, "sent-lim", 1, 0);
    make_key(&tok, "sent-tok", 0, 1000);
    make_key(&free_, "sent-free", 0, 0);
    make_key(&free2, "sent-free2", 0, 0);
    child_start(&c, 30, 0);
    admit(&c, &tok, p, &res, &l);
    CHECK(relay_lease_release_sent(c.st, l, &u, p, NULL, &err) == APR_SUCCESS &&
              rint_("HGET usage:sent-tok totalTokens") == 150,
          "a token limit: the usage is in Redis on return");
    admit(&c, &free_, p, &res, &l);
    n = seam_get(&seam.batches);
    waited = -1;
    CHECK(relay_lease_release_sent(c.st, l, &u, p, &waited, &err) == APR_SUCCESS &&
              seam_get(&seam.batches) == n && leases(&free_) == 1 && waited == 0,
          "no limit: nothing to wait for, the release is deferred, and it says so");
    admit(&c, &lim, p, &res, &l);
    CHECK(relay_lease_release_sent(c.st, l, &no_usage, p, &waited, &err) == APR_SUCCESS &&
              leases(&lim) == 0 && waited == 1,
          "a concurrency limit: in Redis on return, and it says it waited");
    admit(&c, &lim, p, &res, &l);
    seam_set(&seam.fail, -1);
    CHECK(relay_lease_release_sent(c.st, l, &no_usage, p, NULL, &err) == APR_EGENERAL &&
              strstr(err, "expires by itself"),
          "Redis not answering: told, the slot expires by itself");
    seam_set(&seam.fail, 0);
    rcmd("DEL concurrency:sent-lim");

    admit(&c, &lim, p, &res, &l);
    seam_set(&seam.hold, 1);
    ta = admit_async(&aj, &c, &free2, p);
    CHECK(WAIT_FOR(seam_get(&seam.held) == 1), "another batch is in flight");
    memset(&rj, 0, sizeof(rj));
    rj.c = &c;
    rj.lease = l;
    apr_pool_create(&rj.p, p);
    rj.rv = -1;
    apr_thread_create(&tr, NULL, release_thread, &rj, p);
    CHECK(WAIT_FOR(queued(c.st) == 1), "the release waits behind it");
    seam_set(&seam.hold, 0);
    join(ta);
    join(tr);
    CHECK(rj.rv == APR_SUCCESS && leases(&lim) == 0,
          "and is in Redis when it returns (rv %d, %lld leases)", rj.rv, leases(&lim));
    CHECK(apr_os_thread_equal(seam.last_sender, rj.self),
          "the batch leader handed on to the waiting thread, which sent its release itself "
          "(no hop through the keeper thread)");
    child_stop(&c);
}

/* Redis not answering, and a bad record: who is refused, and what is remembered. */
static void test_redis_trouble(apr_pool_t *p)
{
    relay_admit_result res;
    relay_lease *l;
    const char *err = NULL, *id = NULL;
    admit_job ja, jb, jc;
    apr_thread_t *ta, *tb, *tc;
    test_key k, bad, other;
    child c;

    fresh("Redis not answering, a bad record");
    make_key(&k, "good", 5, 0);
    make_key(&bad, "bad", 5, 0);
    make_key(&other, "stranger", 5, 0);
    child_start(&c, 30, 0);
    admit(&c, &k, p, &res, &l);
    relay_lease_release_sent(c.st, l, &no_usage, p, NULL, &err);
    seam_set(&seam.fail, -1);
    CHECK(admit(&c, &k, p, &res, &l) == RELAY_ADMIT_ERROR && res.error && !res.record_bad,
          "Redis not answering: an error, not a refusal of the key");
    CHECK(relay_lease_recently_valid(c.st, k.hash, 60000, p, &id) && strcmp(id, "good") == 0,
          "a key admitted lately is remembered as valid");
    CHECK(!relay_lease_recently_valid(c.st, other.hash, 60000, p, &id) && !id,
          "a key never admitted is not");
    seam_set(&seam.fail, 0);
    CHECK(WAIT_FOR(tracking(c.st)), "the tracking connection is back after the failed batch");

    rcmd("DEL apikey:bad");
    rcmd("SET apikey:bad x");
    seam_set(&seam.hold, 1);
    ta = admit_async(&ja, &c, &other, p);
    CHECK(WAIT_FOR(seam_get(&seam.held) == 1), "a batch is in flight");
    tb = admit_async(&jb, &c, &bad, p);
    tc = admit_async(&jc, &c, &k, p);
    CHECK(WAIT_FOR(queued(c.st) == 2), "two admissions wait for the next");
    seam_set(&seam.hold, 0);
    join(ta);
    join(tb);
    join(tc);
    CHECK(jb.code == RELAY_ADMIT_ERROR && jb.res.record_bad &&
              strstr(jb.res.error, "apikey:bad") != NULL,
          "the key with a bad record is refused, the record named (%s)",
          jb.res.error ? jb.res.error : "");
    CHECK(jc.code == RELAY_ADMIT_OK && seam.shape[seam.batches - 1].admissions == 2,
          "the other admission of the same call goes through");
    child_stop(&c);
}

static void run_cases(void)
{
    apr_pool_t *p;

    apr_pool_create(&p, root);
    test_within_store(p);
    test_across_stores(p);
    test_batching(p);
    test_release_first(p);
    test_release_urgency(p);
    test_kept_slots(p);
    test_renewal(p);
    test_shutdown_drain(p);
    test_release_sent(p);
    test_redis_trouble(p);
    apr_pool_destroy(p);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    apr_initialize();
    atexit(apr_terminate);
    apr_pool_create(&root, NULL);
    apr_thread_mutex_create(&seam.mu, APR_THREAD_MUTEX_DEFAULT, root);
    apr_thread_cond_create(&seam.cond, root);
    fake_now = apr_time_now();
    start_redis(argc > 1 ? argv[1] : "redis-server");
    target.host = "127.0.0.1";
    target.port = redis_port;
    target.timeout_ms = 2000;

    run_cases();

    printf("%d passed, %d failed\n", passed, failed);
    redisFree(R);
    stop_redis();
    return failed ? 1 : 0;
}
