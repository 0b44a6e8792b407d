/*
 * relay_redis.h - a per-child pool of Redis connections and the one way the
 * module talks to Redis: argv-form commands and cached Lua scripts.
 *
 * Uses APR and hiredis only (no httpd header), so relay-keys and the C lease
 * test (t/unit/test_lease.c) link it without httpd.
 */
#ifndef RELAY_REDIS_H
#define RELAY_REDIS_H

#include <apr_pools.h>
#include <hiredis/hiredis.h>

/* A TCP address: one sentinel of a RelayRedisSentinel list. */
typedef struct {
    const char *host; /* host name or address */
    int port;         /* TCP port */
} relay_redis_addr;

/* Where and how to reach Redis; filled from the server config. */
typedef struct {
    const char *host;                  /* host name or address; NULL when unix_path is set */
    int port;                          /* TCP port */
    const char *unix_path;             /* unix socket path, or NULL */
    const char *username;              /* ACL user for AUTH, or NULL */
    const char *password;              /* AUTH password, or NULL */
    int database;                      /* SELECT index, 0 = default */
    int timeout_ms;                    /* connect and I/O timeout */
    const relay_redis_addr *sentinels; /* sentinels naming the master; NULL = use host/port */
    int nsentinels;          /* entries in sentinels; > 0 means host/port/unix_path are unused */
    const char *master_name; /* the name the sentinels monitor the master under */
    const char *sentinel_username; /* ACL user for AUTH on the sentinels, or NULL */
    const char *sentinel_password; /* AUTH password of the sentinels, or NULL */
} relay_redis_target;

/* A Lua script with its SHA1, so calls can use EVALSHA. */
typedef struct {
    const char *name;   /* for error messages */
    const char *source; /* the Lua text */
    char sha1[41];      /* lowercase hex SHA1 of source */
} relay_script;

typedef struct relay_redis_pool relay_redis_pool;

/*
 * One connection: borrowed from a pool (relay_redis_acquire), or a single
 * one of a program's own (relay-keys: ctx from relay_redis_connect, pooled 0).
 */
typedef struct {
    redisContext *ctx;
    const relay_redis_target *target; /* for reconnecting */
    int broken;                       /* set when the connection must not be reused */
    unsigned long uses;               /* commands sent; > 0 means it may have gone stale */
    int pooled;                       /* it is a pool's (set by the pool only) */
} relay_redis_conn;

/*
 * A pool with an allocator of its own (a child's pool shares one without a
 * mutex, and these are used by other threads), destroyed with parent when
 * parent is not NULL.
 */
apr_status_t relay_pool_own(apr_pool_t **out, apr_pool_t *parent);

/* Compute the SHA1 of a script's source once, at start-up. */
void relay_script_init(relay_script *s, const char *name, const char *source);

/*
 * Describe a target for log lines ("127.0.0.1:6379", "unix:/path", or
 * "master 'mymaster' of the sentinels 127.0.0.1:26379,127.0.0.1:26380").
 */
const char *relay_redis_target_str(const relay_redis_target *t, apr_pool_t *p);

/*
 * A text naming a target fully (address or sentinels, users, passwords,
 * database, timeout), so that servers with the same target share one pool.
 * It holds the passwords: never log it.
 */
const char *relay_redis_target_signature(const relay_redis_target *t, apr_pool_t *p);

/*
 * Open a single connection (connect, timeouts, AUTH, SELECT). With sentinels,
 * the sentinels are asked in turn for the master's address until one names a
 * server that answers ROLE as a master. On failure returns NULL and sets *err
 * to a sentence allocated from p.
 */
redisContext *relay_redis_connect(const relay_redis_target *t, apr_pool_t *p, const char **err);

/*
 * Create a pool holding at most max connections, opened lazily by the
 * borrowing thread (never under a lock other threads wait on). Its memory is
 * taken from p once; each connection has a pool of its own, destroyed with it.
 */
apr_status_t relay_redis_pool_create(relay_redis_pool **out, const relay_redis_target *t, int max,
                                     apr_pool_t *p);

const relay_redis_target *relay_redis_pool_target(const relay_redis_pool *pool);

/*
 * Borrow a connection, opening one when none is idle; *err (from p) says why
 * when it fails. Waits at most the target's timeout for a free connection.
 * After a failed connect, or a command Redis did not answer within the
 * timeout, borrowers without an idle connection get that error at once for
 * a window (twice what the failed attempt took, from 50 ms to 1 s); then one
 * borrower tries to connect and the others wait for its outcome.
 */
relay_redis_conn *relay_redis_acquire(relay_redis_pool *pool, apr_pool_t *p, const char **err);

/* Give a connection back; a broken one is closed instead of reused. */
void relay_redis_release(relay_redis_pool *pool, relay_redis_conn *c);

/*
 * Run a command given as argv. A pooled connection that fails (Redis
 * restarted, or dropped the idle connection), or whose server answers
 * READONLY, MASTERDOWN or LOADING (a master demoted by a failover, or not
 * ready yet), is reopened (through the sentinels when configured) and the
 * command sent once more; a connection that still fails is marked broken.
 * No answer within the timeout is not retried: the connection is marked
 * broken and the pool fails fast as after a failed connect.
 * Returns the reply (caller frees with freeReplyObject; an error reply is a
 * reply) or NULL with *err set.
 */
redisReply *relay_redis_command(relay_redis_conn *c, int argc, const char **argv,
                                const size_t *argvlen, apr_pool_t *p, const char **err);

/*
 * Run a script with EVALSHA, falling back to EVAL when Redis answers NOSCRIPT
 * (after a restart or SCRIPT FLUSH). keys and args are NUL-terminated strings.
 * An error reply from the script itself is returned as NULL with *err set.
 */
redisReply *relay_redis_script(relay_redis_conn *c, const relay_script *s, int nkeys,
                               const char *const *keys, int nargs, const char *const *args,
                               apr_pool_t *p, const char **err);

#endif
