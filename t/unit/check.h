/*
 * check.h - the unit tests' one assertion: count a check, print where a
 * failed one stands. Each test prints "N passed, M failed" at its end.
 */
#ifndef RELAY_TEST_CHECK_H
#define RELAY_TEST_CHECK_H

#include <stdio.h>

static int passed, failed;

/* CHECK(condition, printf format and arguments saying what is checked) */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            passed++;                                                                              \
        }                                                                                          \
        else {                                                                                     \
            failed++;                                                                              \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

#endif
