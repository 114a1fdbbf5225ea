/* Shared helpers of the libFuzzer harnesses in tests/fuzz/. A failed check
 * aborts, so libFuzzer records the input as a crash (unlike assert, it does
 * not vanish under -DNDEBUG). */
#ifndef BANDITD_FUZZ_H
#define BANDITD_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* 1 if buf (of cap bytes) holds a NUL, i.e. is a terminated C string. */
static inline int fuzz_terminated(const char *buf, size_t cap)
{
    return memchr(buf, '\0', cap) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
