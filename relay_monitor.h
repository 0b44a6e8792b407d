/*
 * relay_monitor.h - the relay's figures for monitoring: the
 * claude-relay-metrics handler (Prometheus), its section of mod_status's
 * /server-status, and the shared memory behind them (relay_metrics.c).
 */
#ifndef RELAY_MONITOR_H
#define RELAY_MONITOR_H

#include <apr_pools.h>
#include <httpd.h>

/* The handler name: SetHandler claude-relay-metrics. */
#define RELAY_METRICS_HANDLER "claude-relay-metrics"

/* Register the handler, the mod_status hook and the shared memory's set-up. */
void relay_monitor_register_hooks(apr_pool_t *p);

/*
 * In a child, once its lease stores are built: start counting per key for
 * each distinct Redis of the servers (s and its virtual hosts).
 */
void relay_monitor_child_init(apr_pool_t *pchild, server_rec *s);

#endif
