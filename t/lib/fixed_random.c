/*
 * fixed_random.c - a test shim, loaded with LD_PRELOAD into httpd or
 * relay-keys, so a test can make two key creations collide.
 *
 * A request for exactly RELAY_KEYSTORE_RANDOM_BYTES (48) random bytes, what
 * a new key is made of, gets the first 48 bytes of the file named by
 * RELAY_TEST_RANDOM_FILE, read at every call so the test can change them
 * between calls. Any other request, or a missing file, gets APR's own bytes.
 * keystore_same.t compiles it; nothing ships it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_NEXT */
#endif
#include <apr_general.h>

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#define KEY_BYTES 48

typedef apr_status_t (*random_fn)(unsigned char *, apr_size_t);

/* Fixed bytes for a new key, APR's bytes for everything else. */
apr_status_t apr_generate_random_bytes(unsigned char *buf, apr_size_t length)
{
    static random_fn real;
    const char *path = getenv("RELAY_TEST_RANDOM_FILE");

    if (path != NULL && length == KEY_BYTES) {
        FILE *f = fopen(path, "rb");
        if (f != NULL) {
            size_t n = fread(buf, 1, length, f);
            fclose(f);
            if (n == length) {
                return APR_SUCCESS;
            }
        }
    }
    if (real == NULL) {
        real = (random_fn)dlsym(RTLD_NEXT, "apr_generate_random_bytes");
        if (real == NULL) {
            return APR_ENOTIMPL;
        }
    }
    return real(buf, length);
}
