/*
 * relay_throttle.c - one log line a second per key (see the header).
 */
#include "relay_throttle.h"

#include <apr_thread_mutex.h>
#include <string.h>

/* Slots of the table: keys whose ids share a slot take turns, which only logs more. */
#define THROTTLE_SLOTS 256
#define THROTTLE_ID_MAX 64

typedef struct {
    char id[THROTTLE_ID_MAX]; /* the key id this slot counts for; "" = free */
    apr_time_t last;          /* when its last line was logged */
    unsigned long skipped;    /* refusals not logged since */
} throttle_slot;

static throttle_slot slots[THROTTLE_SLOTS];
static apr_thread_mutex_t *lock;

void relay_throttle_init(apr_pool_t *pchild)
{
    memset(slots, 0, sizeof(slots));
    if (apr_thread_mutex_create(&lock, APR_THREAD_MUTEX_DEFAULT, pchild) != APR_SUCCESS) {
        lock = NULL;
    }
}

/* The slot of an id (FNV-1a). */
static throttle_slot *slot_of(const char *id)
{
    unsigned long h = 2166136261UL;

    for (; *id; id++) {
        h = (h ^ (unsigned char)*id) * 16777619UL;
    }
    return &slots[h % THROTTLE_SLOTS];
}

int relay_throttle_pass(const char *id, apr_time_t now, unsigned long *skipped)
{
    throttle_slot *s;
    int pass;

    *skipped = 0;
    if (!id || !lock || apr_thread_mutex_lock(lock) != APR_SUCCESS) {
        return 1;
    }
    s = slot_of(id);
    if (strncmp(s->id, id, THROTTLE_ID_MAX) != 0) {
        /* a new key in this slot logs at once */
        memset(s, 0, sizeof(*s));
        strncpy(s->id, id, THROTTLE_ID_MAX - 1);
        s->last = now;
        pass = 1;
    }
    else if (now - s->last >= apr_time_from_sec(1)) {
        *skipped = s->skipped;
        s->skipped = 0;
        s->last = now;
        pass = 1;
    }
    else {
        s->skipped++;
        pass = 0;
    }
    apr_thread_mutex_unlock(lock);
    return pass;
}
