/*
 * fuzz_usage.c - libFuzzer target for relay_usage.c.
 *
 * The first input byte picks the mode (low bit) and how the rest is cut into
 * chunks (the other bits seed the chunk sizes). Each chunk is fed from a heap
 * copy of exactly its size, so a read past a chunk's end is caught by
 * AddressSanitizer. The same body is also fed whole, and both runs must end
 * with the same figures: the parser may not depend on where chunks split.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I. \
 *       t/fuzz/fuzz_usage.c relay_usage.c -o /tmp/fuzz_usage
 *   cp -r t/fuzz/corpus_usage /tmp/corpus_usage
 *   /tmp/fuzz_usage -max_total_time=60 -max_len=65536 /tmp/corpus_usage
 */
#include "relay_usage.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Stop the run: libFuzzer reports the input that got here. */
static void fail(void)
{
    abort();
}

/* The invariants any parse must end with, whatever it was fed. */
static void check_invariants(const relay_usage *u)
{
    const long long counts[4] = {u->input_tokens, u->output_tokens, u->cache_creation_input_tokens,
                                 u->cache_read_input_tokens};
    size_t i, n;
    int k;

    for (k = 0; k < 4; k++) {
        if (counts[k] < 0 || counts[k] > RELAY_USAGE_MAX_COUNT) {
            fail();
        }
    }
    if (memchr(u->model, '\0', sizeof(u->model)) == NULL) {
        fail();
    }
    n = strlen(u->model);
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)u->model[i];
        if (c < 0x20 || c >= 0x7f) {
            fail();
        }
    }
    if ((u->seen_usage & ~1) || (u->complete & ~1) || (u->error & ~1) || (u->overflow & ~1)) {
        fail();
    }
    if (!u->seen_usage && (counts[0] || counts[1] || counts[2] || counts[3])) {
        fail();
    }
}

/* Feed one chunk from a heap copy of exactly its size. */
static void feed_exact(relay_usage *u, const uint8_t *p, size_t n)
{
    char *copy = malloc(n ? n : 1);

    if (copy == NULL) {
        fail();
    }
    if (n) {
        memcpy(copy, p, n);
    }
    relay_usage_feed(u, copy, n);
    free(copy);
}

/* One fuzz input: a selector byte, then the body. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static relay_usage whole, cut;
    relay_usage_mode mode;
    uint32_t x;
    unsigned maxlog;
    size_t off;

    if (size < 1) {
        return 0;
    }
    mode = (data[0] & 1) ? RELAY_USAGE_JSON : RELAY_USAGE_SSE;
    /* chunk sizes up to 1, 2, 4 ... 2048 bytes, from a generator seeded by the input */
    maxlog = (data[0] >> 1) % 12;
    x = 2166136261u ^ data[0] ^ (uint32_t)size * 16777619u;
    data++;
    size--;

    relay_usage_init(&whole, mode);
    feed_exact(&whole, data, size);
    relay_usage_finish(&whole);
    check_invariants(&whole);

    relay_usage_init(&cut, mode);
    for (off = 0; off < size;) {
        size_t n;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        n = 1 + x % (1u << maxlog);
        if (n > size - off) {
            n = size - off;
        }
        feed_exact(&cut, data + off, n);
        off += n;
    }
    relay_usage_finish(&cut);
    check_invariants(&cut);

    if (whole.input_tokens != cut.input_tokens || whole.output_tokens != cut.output_tokens ||
        whole.cache_creation_input_tokens != cut.cache_creation_input_tokens ||
        whole.cache_read_input_tokens != cut.cache_read_input_tokens ||
        strcmp(whole.model, cut.model) != 0 || whole.seen_usage != cut.seen_usage ||
        whole.complete != cut.complete || whole.error != cut.error ||
        whole.overflow != cut.overflow) {
        fail();
    }
    return 0;
}
