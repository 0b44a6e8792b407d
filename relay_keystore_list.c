/*
 * relay_keystore_list.c - lists of keys for the admin and relay-keys (see
 * relay_keystore.h): search, order and pages over thousands of keys, the
 * overview across all of them, and the live counts a list page polls.
 */
#include "relay_keystore_int.h"
#include "relay_schema.h"

#include <apr_hash.h>
#include <apr_strings.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* the Lua is laid out as Lua, not as C */
/* clang-format off */
/*
 * What ordering, searching and the overview need of each key, and no more.
 * KEYS: apikey:{id} x n, concurrency:{id} x n, usage:daily:{id}:{today} x n.
 * ARGV[1]: the text to return too: 0 none, 1 the name, 2 name and description.
 * Returns one flat array, 8 elements per key that exists (a missing or
 * unreadable key is left out): its position in KEYS, createdAt, lastUsedAt,
 * live leases, tokens today, requests today, name, description ("" when not
 * asked for). Flat, because a table per key costs Redis more than the reads.
 */
static const char fields_lua[] = LUA_NOW LUA_LIVE
    "local n = #KEYS / 3\n"
    "local text = tonumber(ARGV[1]) or 0\n"
    "local out, o = {}, 0\n"
    "for i = 1, n do\n"
    "  local f = redis.pcall('HMGET', KEYS[i], '" RELAY_F_CREATED_AT "',"
    " '" RELAY_F_LAST_USED_AT "',"
    " '" RELAY_F_NAME "', '" RELAY_F_DESCRIPTION "')\n"
    "  if type(f) == 'table' and not f.err and (f[1] or f[2] or f[3] or f[4] or"
    " redis.call('EXISTS', KEYS[i]) == 1) then\n"
    "    local d = redis.pcall('HMGET', KEYS[2 * n + i], '" RELAY_U_TOKENS "',"
    " '" RELAY_U_REQUESTS "')\n"
    "    if type(d) ~= 'table' or d.err then d = {} end\n"
    "    out[o + 1] = i\n"
    "    out[o + 2] = f[1] or ''\n"
    "    out[o + 3] = f[2] or ''\n"
    "    out[o + 4] = live(KEYS[n + i])\n"
    "    out[o + 5] = tonumber(d[1]) or 0\n"
    "    out[o + 6] = tonumber(d[2]) or 0\n"
    "    out[o + 7] = text >= 1 and f[3] or ''\n"
    "    out[o + 8] = text >= 2 and f[4] or ''\n"
    "    o = o + 8\n"
    "  end\n"
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
/* clang-format on */

static relay_script fields_script, live_script;

void relay_keystore_list_init(void)
{
    relay_script_init(&fields_script, "keys-fields", fields_lua);
    relay_script_init(&live_script, "keys-live", live_lua);
}

const char *const relay_key_sort_names[RELAY_SORT_COUNT] = {
    [RELAY_SORT_CREATED] = "created",    [RELAY_SORT_NAME] = "name",
    [RELAY_SORT_IN_FLIGHT] = "inFlight", [RELAY_SORT_TOKENS_TODAY] = "tokensToday",
    [RELAY_SORT_LAST_USED] = "lastUsed",
};

int relay_key_sort_find(const char *name)
{
    int s;

    for (s = 0; name && s < RELAY_SORT_COUNT; s++) {
        if (strcmp(name, relay_key_sort_names[s]) == 0) {
            return s;
        }
    }
    return -1;
}

/* One key as a list orders, searches and counts it. */
typedef struct {
    const char *id;
    const char *name, *description; /* "" when not read */
    const char *created_at, *last_used_at;
    long long in_flight, tokens_today, requests_today;
    relay_key_record *rec; /* the whole record, when a full list read it */
} list_entry;

/* The SCAN pages of apikey:*: every key id (apikey:hash_map and non-UUIDs left out). */
static apr_array_header_t *scan_ids(relay_redis_conn *c, apr_pool_t *p, const char **err)
{
    static const size_t plen = sizeof(RELAY_KEY_RECORD_PREFIX) - 1;
    apr_array_header_t *ids = apr_array_make(p, 64, sizeof(const char *));
    apr_hash_t *seen = apr_hash_make(p);
    const char *cursor = "0";

    do {
        const char *argv[6] = {"SCAN",  cursor, "MATCH", RELAY_KEY_RECORD_PREFIX "*",
                               "COUNT", "5000"};
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
        cursor = relay_ks_elem_str(rep->element[0], p);
        for (j = 0; j < rep->element[1]->elements; j++) {
            const redisReply *e = rep->element[1]->element[j];
            const char *id;

            /* SCAN may name a key twice while Redis rehashes */
            if (e->type != REDIS_REPLY_STRING || e->len != plen + RELAY_UUID_LEN) {
                continue;
            }
            id = apr_pstrmemdup(p, e->str + plen, RELAY_UUID_LEN);
            if (relay_uuid_ok(id) && !apr_hash_get(seen, id, APR_HASH_KEY_STRING)) {
                apr_hash_set(seen, id, APR_HASH_KEY_STRING, id);
                APR_ARRAY_PUSH(ids, const char *) = id;
            }
        }
        freeReplyObject(rep);
    } while (strcmp(cursor, "0") != 0);
    return ids;
}

/*
 * the most keys one fields call reads: Redis runs nothing else meanwhile, and
 * 500 keys take it about 2.5 ms on a small VM (20 calls for 10,000 keys)
 */
#define FIELDS_CHUNK 500
/* the most keys one read of whole records takes */
#define RECORDS_CHUNK 200

/*
 * The list entries of ids (missing keys left out): one fields call per
 * FIELDS_CHUNK keys. text: 0, 1 (names) or 2 (names and descriptions).
 */
static apr_array_header_t *read_entries(relay_redis_conn *c, const apr_array_header_t *ids,
                                        int text, const char *today, apr_pool_t *p,
                                        const char **err)
{
    apr_array_header_t *out = apr_array_make(p, ids->nelts + 1, sizeof(list_entry));
    const char *arg = apr_itoa(p, text);
    int i, j;

    for (i = 0; i < ids->nelts; i += FIELDS_CHUNK) {
        int n = ids->nelts - i > FIELDS_CHUNK ? FIELDS_CHUNK : ids->nelts - i;
        const char **keys = apr_palloc(p, sizeof(*keys) * 3 * n);
        redisReply *rep;

        for (j = 0; j < n; j++) {
            const char *id = APR_ARRAY_IDX(ids, i + j, const char *);
            keys[j] = relay_ks_record_key(id, p);
            keys[n + j] = relay_ks_concurrency_key(id, p);
            keys[2 * n + j] = apr_pstrcat(p, RELAY_USAGE_DAILY_PREFIX, id, ":", today, NULL);
        }
        rep = relay_redis_script(c, &fields_script, 3 * n, keys, 1, &arg, p, err);
        if (!rep) {
            return NULL;
        }
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements % 8 != 0) {
            freeReplyObject(rep);
            *err = "unexpected reply reading the list";
            return NULL;
        }
        for (j = 0; (size_t)j < rep->elements; j += 8) {
            redisReply **e = rep->element + j;
            list_entry *le;
            long long pos = e[0]->type == REDIS_REPLY_INTEGER ? e[0]->integer : 0;

            if (pos < 1 || pos > n) {
                continue;
            }
            le = apr_array_push(out);
            le->id = APR_ARRAY_IDX(ids, i + pos - 1, const char *);
            le->created_at = relay_ks_elem_str(e[1], p);
            le->last_used_at = relay_ks_elem_str(e[2], p);
            le->in_flight = e[3]->type == REDIS_REPLY_INTEGER ? e[3]->integer : 0;
            le->tokens_today = e[4]->type == REDIS_REPLY_INTEGER ? e[4]->integer : 0;
            le->requests_today = e[5]->type == REDIS_REPLY_INTEGER ? e[5]->integer : 0;
            le->name = relay_ks_elem_str(e[6], p);
            le->description = relay_ks_elem_str(e[7], p);
            le->rec = NULL;
        }
        freeReplyObject(rep);
    }
    return out;
}

/* The list entries of ids from their whole records (missing keys left out), 200 per call. */
static apr_array_header_t *read_full_entries(relay_redis_conn *c, const apr_array_header_t *ids,
                                             apr_pool_t *p, const char **err)
{
    apr_array_header_t *out = apr_array_make(p, ids->nelts + 1, sizeof(list_entry));
    int i, j;

    for (i = 0; i < ids->nelts; i += RECORDS_CHUNK) {
        int n = ids->nelts - i > RECORDS_CHUNK ? RECORDS_CHUNK : ids->nelts - i;
        apr_array_header_t *part =
            relay_ks_read_records(c, &APR_ARRAY_IDX(ids, i, const char *), n, p, err);

        if (!part) {
            return NULL;
        }
        for (j = 0; j < part->nelts; j++) {
            relay_key_record *k = APR_ARRAY_IDX(part, j, relay_key_record *);
            list_entry *le = apr_array_push(out);

            le->id = k->id;
            le->name = k->name;
            le->description = k->description;
            le->created_at = k->created_at;
            le->last_used_at = k->last_used_at;
            le->in_flight = k->current_concurrency;
            le->tokens_today = k->today.tokens;
            le->requests_today = k->today.requests;
            le->rec = k;
        }
    }
    return out;
}

/* ch in lower case when it is an ASCII letter (no locale: UTF-8 bytes pass as they are). */
static char ascii_lower(char ch)
{
    return ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
}

/* Whether hay starts with needle, ASCII letters without regard to case. */
static int starts_with_nocase(const char *hay, const char *needle, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (!hay[i] || ascii_lower(hay[i]) != ascii_lower(needle[i])) {
            return 0;
        }
    }
    return 1;
}

/* Whether hay holds needle (n bytes), ASCII letters without regard to case. */
static int holds_nocase(const char *hay, const char *needle, size_t n)
{
    for (; *hay; hay++) {
        if (starts_with_nocase(hay, needle, n)) {
            return 1;
        }
    }
    return 0;
}

/* Whether an entry matches a search (n bytes, not empty). */
static int entry_matches(const list_entry *e, const char *search, size_t n)
{
    return starts_with_nocase(e->id, search, n) || holds_nocase(e->name, search, n) ||
           holds_nocase(e->description, search, n);
}

/* The usual tie-break: older first, then by id, so equal values keep one order. */
static int by_created(const void *a, const void *b)
{
    const list_entry *x = a, *y = b;
    int c = strcmp(x->created_at, y->created_at);
    return c ? c : strcmp(x->id, y->id);
}

/* By name, ASCII letters without regard to case, then as bytes. */
static int by_name(const void *a, const void *b)
{
    const list_entry *x = a, *y = b;
    int c = strcasecmp(x->name, y->name);
    if (!c) {
        c = strcmp(x->name, y->name);
    }
    return c ? c : by_created(a, b);
}

/* By a number of two entries, then the usual tie-break. */
static int by_number(long long x, long long y, const void *a, const void *b)
{
    return x < y ? -1 : x > y ? 1 : by_created(a, b);
}

/* By requests in flight now. */
static int by_in_flight(const void *a, const void *b)
{
    return by_number(((const list_entry *)a)->in_flight, ((const list_entry *)b)->in_flight, a, b);
}

/* By tokens of the current UTC day. */
static int by_tokens_today(const void *a, const void *b)
{
    return by_number(((const list_entry *)a)->tokens_today, ((const list_entry *)b)->tokens_today,
                     a, b);
}

/* By lastUsedAt; never used ("") sorts first. */
static int by_last_used(const void *a, const void *b)
{
    const list_entry *x = a, *y = b;
    int c = strcmp(x->last_used_at, y->last_used_at);
    return c ? c : by_created(a, b);
}

/* Order entries as the query asks: ascending, then the whole order turned for descending. */
static void sort_entries(apr_array_header_t *e, const relay_key_query *q)
{
    static int (*const cmp[RELAY_SORT_COUNT])(const void *, const void *) = {
        [RELAY_SORT_CREATED] = by_created,     [RELAY_SORT_NAME] = by_name,
        [RELAY_SORT_IN_FLIGHT] = by_in_flight, [RELAY_SORT_TOKENS_TODAY] = by_tokens_today,
        [RELAY_SORT_LAST_USED] = by_last_used,
    };
    list_entry *v = (list_entry *)e->elts, t;
    int i, n = e->nelts;

    qsort(v, n, sizeof(*v), cmp[q->sort < RELAY_SORT_COUNT ? q->sort : RELAY_SORT_CREATED]);
    for (i = 0; q->descending && i < n / 2; i++) {
        t = v[i];
        v[i] = v[n - 1 - i];
        v[n - 1 - i] = t;
    }
}

/* The search without the blanks around it; NULL when nothing is left. */
static const char *trimmed(const char *s, apr_pool_t *p)
{
    const char *e;

    if (!s) {
        return NULL;
    }
    while (*s == ' ' || *s == '\t') {
        s++;
    }
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t')) {
        e--;
    }
    return e > s ? apr_pstrmemdup(p, s, e - s) : NULL;
}

int relay_keystore_query(relay_redis_conn *c, const relay_key_query *q, relay_key_page *out,
                         apr_pool_t *p, const char **err)
{
    const char *search = trimmed(q->search, p);
    size_t slen = search ? strlen(search) : 0;
    int full = q->per_page <= 0;
    /* names and descriptions cross the wire only when a search or the order needs them */
    int text = search ? 2 : q->sort == RELAY_SORT_NAME ? 1 : 0;
    apr_array_header_t *ids, *all, *hits;
    const char **page_ids;
    long first;
    int i, n;

    memset(out, 0, sizeof(*out));
    if (q->page < 1 || q->per_page > RELAY_KEYSTORE_PAGE_MAX) {
        *err = apr_psprintf(p, "a list page starts at 1 and holds at most %d keys",
                            RELAY_KEYSTORE_PAGE_MAX);
        return -1;
    }
    if (!(ids = scan_ids(c, p, err))) {
        return -1;
    }
    all = full ? read_full_entries(c, ids, p, err)
               : read_entries(c, ids, text, apr_pstrndup(p, relay_now_iso(p), 10), p, err);
    if (!all) {
        return -1;
    }
    hits = apr_array_make(p, all->nelts + 1, sizeof(list_entry));
    for (i = 0; i < all->nelts; i++) {
        const list_entry *e = &APR_ARRAY_IDX(all, i, list_entry);

        out->overview.keys++;
        out->overview.in_flight += e->in_flight;
        out->overview.keys_in_flight += e->in_flight > 0;
        out->overview.requests_today += e->requests_today;
        out->overview.tokens_today += e->tokens_today;
        if (!search || entry_matches(e, search, slen)) {
            *(list_entry *)apr_array_push(hits) = *e;
        }
    }
    sort_entries(hits, q);
    out->matched = hits->nelts;
    out->page = full ? 1 : q->page;
    out->pages = full || !hits->nelts ? 1 : (int)((hits->nelts + q->per_page - 1) / q->per_page);
    if (full) {
        out->keys = apr_array_make(p, hits->nelts + 1, sizeof(relay_key_record *));
        for (i = 0; i < hits->nelts; i++) {
            APR_ARRAY_PUSH(out->keys, relay_key_record *) = APR_ARRAY_IDX(hits, i, list_entry).rec;
        }
        return 0;
    }
    first = (long)(q->page - 1) * q->per_page;
    n = first >= hits->nelts
            ? 0
            : (int)(hits->nelts - first < q->per_page ? hits->nelts - first : q->per_page);
    page_ids = apr_palloc(p, sizeof(*page_ids) * (n + 1));
    for (i = 0; i < n; i++) {
        page_ids[i] = APR_ARRAY_IDX(hits, first + i, list_entry).id;
    }
    /* the page's records, in one call; a key deleted meanwhile is left out */
    out->keys = relay_ks_read_records(c, page_ids, n, p, err);
    return out->keys ? 0 : -1;
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
    keys = relay_ks_key_groups(ids, n, 3, p);
    rep = relay_ks_array_call(c, &live_script, 3 * n, keys, "reading live counts", p, err);
    if (!rep) {
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
        l->concurrency_limit = relay_ks_elem_str(e->element[2], p);
        l->total_tokens = strtoll(relay_ks_elem_str(e->element[3], p), NULL, 10);
    }
    freeReplyObject(rep);
    return out;
}
