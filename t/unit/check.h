/*
 * check.h - the unit tests' one assertion: count a check, print where a
 * failed one stands. Each test prints "N passed, M failed" at its end.
 */
#ifndef RELAY_TEST_CHECK_H
#define RELAY_TEST_CHECK_H

#include <stdio.h>

static int passed, failed;

#define CHECK(cond, what)                                                                          \
    do {                                                                                           \
        if (cond) {                                                                                \
            passed++;                                                                              \
        }                                                                                          \
        else {                                                                                     \
            failed++;                                                                              \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, what);                                  \
        }                                                                                          \
    } while (0)

#endif
