/*
 * relay_lease_wire.c - the lease core's wire protocol: the scripts, the ARGV
 * of a batch, the replies, and the seam every script call goes through.
 */
#include "relay_lease_int.h"
#include "relay_metrics.h"
#include "relay_keys.h"

#include <apr_atomic.h>
#include <apr_strings.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/*
 * The scripts: lua/batch.lua (admissions, releases, usage in one call),
 * lua/renew.lua and lua/check.lua, embedded by scripts/embed-lua; what each
 * takes and answers is written at the top of its file.
 */
#include "relay_lease_lua.h"

static relay_script batch_script, renew_script, check_script;
static apr_uint32_t scripts_ready;

/* Hash the scripts once per process (the names appear in error sentences). */
apr_status_t relay_lease_scripts_init(void)
{
    if (!apr_atomic_read32(&scripts_ready)) {
        relay_script_init(&batch_script, "admit/release", batch_lua);
        relay_script_init(&renew_script, "renew", renew_lua);
        relay_script_init(&check_script, "recheck", check_lua);
        apr_atomic_set32(&scripts_ready, 1);
    }
    return APR_SUCCESS;
}

/* The seam's default: one script call on a connection borrowed from the store's pool. */
redisReply *relay_lease_send_redis(relay_lease_store *st, const relay_script *s, int nkeys,
                                   const char *const *keys, int nargs, const char *const *args,
                                   apr_pool_t *p, const char **err)
{
    relay_redis_conn *c = relay_redis_acquire(st->cf.redis, p, err);
    redisReply *rep;

    if (!c) {
        return NULL;
    }
    rep = relay_redis_script(c, s, nkeys, keys, nargs, args, p, err);
    relay_redis_release(st->cf.redis, c);
    return rep;
}

/* Now, on the core's clock, as the ISO-8601 text stored in key hashes. */
const char *relay_lease_now_iso(relay_lease_store *st, apr_pool_t *p)
{
    apr_time_t now = st->cf.now();
    char *buf = apr_palloc(p, RELAY_ISO_LEN + 1);

    relay_iso8601((time_t)apr_time_sec(now), (int)(apr_time_usec(now) / 1000), buf);
    return buf;
}

/* Tell the log sink, if there is one. */
void relay_lease_log(relay_lease_store *st, relay_lease_log_level level, apr_pool_t *p,
                     const char *fmt, ...)
{
    va_list ap;
    const char *msg;

    if (!st->cf.log) {
        return;
    }
    va_start(ap, fmt);
    msg = apr_pvsprintf(p, fmt, ap);
    va_end(ap);
    st->cf.log(st->cf.log_baton, level, msg);
}

/* Read an integer element of a script's array reply. */
long long relay_lease_reply_int(const redisReply *rep, size_t i)
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

/*
 * A string element of an array reply, fit for a log line: printable ASCII
 * is kept, any other byte written as \xHH, and long text cut (a record in
 * Redis may hold anything).
 */
const char *relay_lease_reply_text(const redisReply *rep, size_t i, apr_pool_t *p)
{
    const redisReply *e;
    char *out, *o;
    size_t j, n;

    if (rep->type != REDIS_REPLY_ARRAY || i >= rep->elements ||
        rep->element[i]->type != REDIS_REPLY_STRING) {
        return "";
    }
    e = rep->element[i];
    n = e->len > 120 ? 120 : e->len;
    out = o = apr_palloc(p, n * 4 + 4);
    for (j = 0; j < n; j++) {
        unsigned char c = (unsigned char)e->str[j];

        if (c >= 0x20 && c < 0x7f && c != '\\') {
            *o++ = (char)c;
        }
        else {
            o += apr_snprintf(o, 5, "\\x%02x", c);
        }
    }
    if (n < e->len) {
        memcpy(o, "...", 3);
        o += 3;
    }
    *o = '\0';
    return out;
}

/* Usage of one key and model, summed over requests (see relay_lease_usage_sum). */
typedef struct {
    const char *id;
    relay_usage_counts c; /* c.model is "" when none */
    long long requests;
} usage_entry;

/* What one batch holds, counted while its ARGV is written. */
typedef struct {
    int nadmit;   /* admissions */
    int nrelease; /* lease members given back or added */
    int nusage;   /* requests whose usage is written */
    int written;  /* keys whose usage is written */
} batch_counts;

#define PUSH_ARG(a, v) (APR_ARRAY_PUSH((a), const char *) = (v))

/* Add a lease member to its key's group in h, keeping the ids in order. */
static void add_to_group(apr_hash_t *h, apr_array_header_t *order, const char *id,
                         const char *member, apr_pool_t *p)
{
    apr_array_header_t *members = apr_hash_get(h, id, APR_HASH_KEY_STRING);

    if (!members) {
        members = apr_array_make(p, 4, sizeof(const char *));
        apr_hash_set(h, id, APR_HASH_KEY_STRING, members);
        APR_ARRAY_PUSH(order, const char *) = id;
    }
    APR_ARRAY_PUSH(members, const char *) = member;
}

/* Push the lease members of one kind of op as the script reads them: count, then per key. */
static void push_groups(apr_array_header_t *args, struct op_ring *batch, enum op_kind kind, int *n,
                        apr_pool_t *p)
{
    apr_hash_t *h = apr_hash_make(p);
    apr_array_header_t *order = apr_array_make(p, 4, sizeof(const char *));
    lease_op *op;
    int i, j;

    for (op = APR_RING_FIRST(batch); op != APR_RING_SENTINEL(batch, lease_op, link);
         op = APR_RING_NEXT(op, link)) {
        /* a kept slot given back goes with the releases */
        if (op->kind == kind || (kind == OP_RELEASE && op->kind == OP_GIVE_BACK)) {
            add_to_group(h, order, op->id, op->member, p);
            (*n)++;
        }
    }
    PUSH_ARG(args, apr_itoa(p, order->nelts));
    for (i = 0; i < order->nelts; i++) {
        const char *id = APR_ARRAY_IDX(order, i, const char *);
        apr_array_header_t *members = apr_hash_get(h, id, APR_HASH_KEY_STRING);

        PUSH_ARG(args, id);
        PUSH_ARG(args, apr_itoa(p, members->nelts));
        for (j = 0; j < members->nelts; j++) {
            PUSH_ARG(args, APR_ARRAY_IDX(members, j, const char *));
        }
    }
}

/* Push one usage record: day, month, model, the four counts, requests. */
static void push_usage_record(apr_array_header_t *args, const usage_entry *e, const char *day,
                              const char *month, apr_pool_t *p)
{
    PUSH_ARG(args, day);
    PUSH_ARG(args, month);
    PUSH_ARG(args, e->c.model);
    PUSH_ARG(args, apr_psprintf(p, "%" APR_INT64_T_FMT, (apr_int64_t)e->c.input));
    PUSH_ARG(args, apr_psprintf(p, "%" APR_INT64_T_FMT, (apr_int64_t)e->c.output));
    PUSH_ARG(args, apr_psprintf(p, "%" APR_INT64_T_FMT, (apr_int64_t)e->c.cache_create));
    PUSH_ARG(args, apr_psprintf(p, "%" APR_INT64_T_FMT, (apr_int64_t)e->c.cache_read));
    PUSH_ARG(args, apr_psprintf(p, "%" APR_INT64_T_FMT, (apr_int64_t)e->requests));
}

/* Push the usage sums, grouped by key id: count, then per key id, U, U records. */
static void push_usage(apr_array_header_t *args, apr_hash_t *usage, const char *now,
                       batch_counts *n, apr_pool_t *p)
{
    const char *day = apr_pstrndup(p, now, 10), *month = apr_pstrndup(p, now, 7);
    apr_hash_t *by_id = apr_hash_make(p);
    apr_array_header_t *ids = apr_array_make(p, 4, sizeof(const char *));
    apr_hash_index_t *hi;
    int i, j;

    for (hi = apr_hash_first(p, usage); hi; hi = apr_hash_next(hi)) {
        usage_entry *e = apr_hash_this_val(hi);
        apr_array_header_t *list = apr_hash_get(by_id, e->id, APR_HASH_KEY_STRING);

        if (!list) {
            list = apr_array_make(p, 2, sizeof(usage_entry *));
            apr_hash_set(by_id, e->id, APR_HASH_KEY_STRING, list);
            APR_ARRAY_PUSH(ids, const char *) = e->id;
        }
        APR_ARRAY_PUSH(list, usage_entry *) = e;
        n->nusage += (int)e->requests;
    }
    PUSH_ARG(args, apr_itoa(p, ids->nelts));
    for (i = 0; i < ids->nelts; i++) {
        const char *id = APR_ARRAY_IDX(ids, i, const char *);
        apr_array_header_t *list = apr_hash_get(by_id, id, APR_HASH_KEY_STRING);

        PUSH_ARG(args, id);
        PUSH_ARG(args, apr_itoa(p, list->nelts));
        for (j = 0; j < list->nelts; j++) {
            push_usage_record(args, APR_ARRAY_IDX(list, j, usage_entry *), day, month, p);
        }
    }
    n->written = ids->nelts;
}

/* The batch script's ARGV (see lua/batch.lua), with what it holds counted in *n. */
static apr_array_header_t *encode_batch(relay_lease_store *st, struct op_ring *batch,
                                        apr_hash_t *usage, batch_counts *n, apr_pool_t *p)
{
    apr_array_header_t *args = apr_array_make(p, 32, sizeof(const char *));
    const char *now = relay_lease_now_iso(st, p);
    lease_op *op;

    PUSH_ARG(args, apr_itoa(p, st->cf.lease_ms));
    PUSH_ARG(args, now);
    push_groups(args, batch, OP_RELEASE, &n->nrelease, p);
    push_groups(args, batch, OP_ADD, &n->nrelease, p);
    push_usage(args, usage, now, n, p);
    for (op = APR_RING_FIRST(batch); op != APR_RING_SENTINEL(batch, lease_op, link);
         op = APR_RING_NEXT(op, link)) {
        n->nadmit += op->kind == OP_ADMIT;
    }
    PUSH_ARG(args, apr_itoa(p, n->nadmit));
    for (op = APR_RING_FIRST(batch); op != APR_RING_SENTINEL(batch, lease_op, link);
         op = APR_RING_NEXT(op, link)) {
        if (op->kind == OP_ADMIT) {
            PUSH_ARG(args, op->hash);
            PUSH_ARG(args, op->id ? op->id : "");
            PUSH_ARG(args, op->member);
        }
    }
    return args;
}

/*
 * An admission the script refused because a record of its key is bad (code
 * -3): the key's id and the sentence for the log, from the requester's pool.
 */
static void bad_record(lease_op *op, const redisReply *e)
{
    admit_reply *r = &op->reply;
    const char *who, *bad;

    r->found_id = e->element[5]->type == REDIS_REPLY_STRING && e->element[5]->len
                      ? apr_pstrndup(op->p, e->element[5]->str, e->element[5]->len)
                      : NULL;
    who = r->found_id ? relay_lease_reply_text(e, 5, op->p)
                      : apr_psprintf(op->p, "with hash prefix %.8s", op->hash);
    bad = relay_lease_reply_text(e, 7, op->p);
    if (bad[0]) {
        r->error = apr_psprintf(op->p,
                                "key %s: the Redis key %s has the wrong type or content (%s); "
                                "only this key is refused until that record is fixed or deleted",
                                who, bad, relay_lease_reply_text(e, 8, op->p));
    }
    else {
        r->error = apr_psprintf(op->p,
                                "key %s: the admission script failed on it (%s); only this key "
                                "is refused",
                                who, relay_lease_reply_text(e, 8, op->p));
    }
}

/* Read one admission's entry of the batch reply into the op (requester's pool). */
static void decode_admission(lease_op *op, const redisReply *e)
{
    admit_reply *r = &op->reply;

    if (e->type != REDIS_REPLY_ARRAY || e->elements < 7) {
        r->code = -99;
        r->error = "unexpected reply from the admit/release script";
        return;
    }
    r->code = (long)relay_lease_reply_int(e, 0);
    if (r->code == -3) {
        /* one of this key's records is bad: only this admission is refused */
        bad_record(op, e);
        return;
    }
    r->current = relay_lease_reply_int(e, 1);
    r->limit = relay_lease_reply_int(e, 2);
    r->name = e->element[3]->type == REDIS_REPLY_STRING
                  ? apr_pstrndup(op->p, e->element[3]->str, e->element[3]->len)
                  : "";
    r->legacy = relay_lease_reply_int(e, 4) != 0;
    r->found_id = e->element[5]->type == REDIS_REPLY_STRING && e->element[5]->len
                      ? apr_pstrndup(op->p, e->element[5]->str, e->element[5]->len)
                      : NULL;
    r->token_limited = relay_lease_reply_int(e, 6) != 0;
    r->expires = e->elements > 7 && e->element[7]->type == REDIS_REPLY_STRING
                     ? apr_pstrndup(op->p, e->element[7]->str, e->element[7]->len)
                     : "";
}

/* Tell what the reply says went wrong: the batch lost, or usage records not written. */
static void log_batch_trouble(relay_lease_store *st, const redisReply *rep, const char *err,
                              const batch_counts *n, apr_pool_t *p)
{
    size_t a;

    if (!rep && (n->nrelease || n->nusage)) {
        relay_lease_log(st, RELAY_LEASE_LOG_WARNING, p,
                        "could not give back %d slot(s) and count the usage of %d request(s) "
                        "now (%s); the slots expire by themselves within their lease, that "
                        "usage is not counted",
                        n->nrelease, n->nusage, err ? err : "unknown error");
    }
    /* after the admissions: usage records a bad record kept from being written */
    for (a = (size_t)n->nadmit; rep && a < rep->elements; a++) {
        const redisReply *e = rep->element[a];

        if (e->type == REDIS_REPLY_ARRAY && e->elements >= 3) {
            relay_lease_log(st, RELAY_LEASE_LOG_WARNING, p,
                            "usage of key %s not counted in %s: that Redis key has the wrong "
                            "type or content (%s); the rest of the batch was written",
                            relay_lease_reply_text(e, 0, p), relay_lease_reply_text(e, 1, p),
                            relay_lease_reply_text(e, 2, p));
        }
    }
}

/*
 * Send one batch, with the usage sums in usage, in one script call and put
 * the replies into its admissions; a waiting release learns whether Redis
 * took it. Returns 1 when there was something to send and Redis did not
 * take it. Runs without the lock, in the leading thread.
 */
int relay_lease_send_batch(relay_lease_store *st, struct op_ring *batch, apr_hash_t *usage,
                           apr_pool_t *p)
{
    batch_counts n = {0, 0, 0, 0};
    apr_array_header_t *args = encode_batch(st, batch, usage, &n, p);
    const char *err = NULL;
    redisReply *rep = NULL;
    lease_op *op;
    size_t a = 0;

    if (n.nadmit || n.nrelease || n.written) {
        relay_metrics_batch(n.nadmit + n.nrelease + n.written);
        rep = st->cf.send(st, &batch_script, 0, NULL, args->nelts, (const char *const *)args->elts,
                          p, &err);
        if (rep && (rep->type != REDIS_REPLY_ARRAY || rep->elements < (size_t)n.nadmit)) {
            err = "unexpected reply from the admit/release script";
            freeReplyObject(rep);
            rep = NULL;
        }
        log_batch_trouble(st, rep, err, &n, p);
    }
    for (op = APR_RING_FIRST(batch); op != APR_RING_SENTINEL(batch, lease_op, link);
         op = APR_RING_NEXT(op, link)) {
        if (op->kind != OP_ADMIT) {
            if (op->waiter) {
                op->waiter->failed = !rep;
            }
        }
        else if (!rep) {
            op->reply.code = -99;
            op->reply.error = apr_pstrdup(op->p, err ? err : "Redis did not answer");
        }
        else {
            decode_admission(op, rep->element[a++]);
        }
    }
    if (rep) {
        freeReplyObject(rep);
    }
    return rep == NULL && (n.nadmit || n.nrelease || n.written);
}

/*
 * Renew leases, RENEW_BATCH to a script call; returns the first error or
 * NULL. The members Redis no longer had are set to NULL in members[].
 */
const char *relay_lease_renew_call(relay_lease_store *st, const char **keys, const char **members,
                                   int n, apr_pool_t *p)
{
    const char *err = NULL;
    int off = 0;

    while (off < n) {
        int k = n - off > RENEW_BATCH ? RENEW_BATCH : n - off, i;
        const char **args = apr_palloc(p, sizeof(*args) * (k + 1));
        redisReply *rep;
        size_t j;

        args[0] = apr_itoa(p, st->cf.lease_ms);
        for (i = 0; i < k; i++) {
            args[i + 1] = members[off + i];
        }
        rep = st->cf.send(st, &renew_script, k, keys + off, k + 1, args, p, &err);
        if (!rep) {
            return err ? err : "Redis did not answer";
        }
        relay_metrics_renewed(k);
        for (j = 0; rep->type == REDIS_REPLY_ARRAY && j < rep->elements; j++) {
            long long at = rep->element[j]->integer;

            if (rep->element[j]->type == REDIS_REPLY_INTEGER && at >= 1 && at <= k) {
                members[off + at - 1] = NULL;
            }
        }
        freeReplyObject(rep);
        off += k;
    }
    return NULL;
}

/* Read keys again with the check script (args: see lua/check.lua); NULL when Redis did not. */
redisReply *relay_lease_check_call(relay_lease_store *st, const char **args, int nargs,
                                   apr_pool_t *p)
{
    const char *err = NULL;

    return st->cf.send(st, &check_script, 0, NULL, nargs, args, p, &err);
}

/* Add the usage of `requests` requests to the sums in h (entries from p). */
void relay_lease_usage_sum(apr_hash_t *h, apr_pool_t *p, const char *id,
                           const relay_usage_counts *u, long long requests)
{
    const char *model = u->model ? u->model : "";
    const char *k = apr_pstrcat(p, id, " ", model, NULL);
    usage_entry *e = apr_hash_get(h, k, APR_HASH_KEY_STRING);

    if (!e) {
        e = apr_pcalloc(p, sizeof(*e));
        e->id = apr_pstrdup(p, id);
        e->c.model = apr_pstrdup(p, model);
        apr_hash_set(h, k, APR_HASH_KEY_STRING, e);
    }
    e->c.input += u->input;
    e->c.output += u->output;
    e->c.cache_create += u->cache_create;
    e->c.cache_read += u->cache_read;
    e->requests += requests;
}

/* Add every sum of from to into (entries from p). */
void relay_lease_usage_merge(apr_hash_t *into, apr_pool_t *p, apr_hash_t *from)
{
    apr_hash_index_t *hi;

    for (hi = apr_hash_first(p, from); hi; hi = apr_hash_next(hi)) {
        const usage_entry *e = apr_hash_this_val(hi);

        relay_lease_usage_sum(into, p, e->id, &e->c, e->requests);
    }
}
