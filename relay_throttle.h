/*
 * relay_throttle.h - at most one log line a second per key for refusals a
 * key holder can cause at will (limits reached), with a count of the rest.
 *
 * APR only; one table per child, shared by its threads.
 */
#ifndef RELAY_THROTTLE_H
#define RELAY_THROTTLE_H

#include <apr_pools.h>
#include <apr_time.h>

/* Set the table up for this child (from child_init). */
void relay_throttle_init(apr_pool_t *pchild);

/*
 * Whether a refusal of key id may be logged at now. When it may, *skipped is
 * how many refusals of the key were not logged since its last line.
 */
int relay_throttle_pass(const char *id, apr_time_t now, unsigned long *skipped);

#endif
