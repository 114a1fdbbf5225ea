/* util — small shared helpers: clocks, random ids, a capped byte buffer. */
#ifndef BANDITD_UTIL_H
#define BANDITD_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Monotonic clock in milliseconds (fractional). */
double util_now_ms(void);
/* Wall clock, seconds since the epoch (fractional). */
double util_wall_s(void);

/* Fill out[0..32] with 32 lowercase hex chars of 128 random bits from the
 * kernel (getrandom) plus a NUL. Returns 0 or BD_ERR_IO. */
int util_random_hex128(char out[33]);

/* 64-bit FNV-1a hash of bytes. */
uint64_t util_fnv1a64(const void *data, size_t len, uint64_t seed);

/* Constant-time comparison of two NUL-terminated secrets: returns 1 if equal.
 * Runs in time that depends only on the length of `b` (the secret). */
int util_secret_eq(const char *a, const char *b);

/* A growable byte buffer with a hard cap. Always NUL-terminated after a
 * successful append (the NUL is not counted in len). */
struct util_buf {
    char *data;
    size_t len;
    size_t cap; /* bytes allocated */
    size_t max; /* hard limit on len */
};

/* Initialise an empty buffer that may grow up to `max` bytes. No allocation. */
void util_buf_init(struct util_buf *b, size_t max);
/* Append len bytes. Returns 0, BD_ERR_TOOBIG (nothing appended) when len would
 * exceed max, or BD_ERR_NOMEM. */
int util_buf_append(struct util_buf *b, const void *data, size_t len);
/* printf-style append, same return values. */
int util_buf_printf(struct util_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drop the first n bytes (n <= len). */
void util_buf_consume(struct util_buf *b, size_t n);
void util_buf_reset(struct util_buf *b);
/* Empty the buffer for a new use with a new cap, keeping its memory (a
 * zeroed or freed buffer is fine too). */
void util_buf_rearm(struct util_buf *b, size_t max);
/* Free memory; the buffer is left empty and reusable. */
void util_buf_free(struct util_buf *b);

/* Write a printf-style message into a caller's error buffer (err may be NULL
 * or errlen 0: then nothing is written). */
void util_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* snprintf(out, cap, "%.8f", x), the same bytes, without printf's machinery
 * for the common case (0 <= x < 10,000 and not within 1e-3 of a rounding
 * tie at the 8th decimal; otherwise it calls snprintf). cap >= 32. */
void util_fmt_fixed8(char *out, size_t cap, double x);
/* snprintf(out, cap, "%d", v), the same bytes. cap >= 12. */
void util_fmt_int(char *out, size_t cap, int v);

/* 1 if all n values are finite. */
int util_all_finite(const double *x, size_t n);

/* Copy the NUL-terminated src of 1..max-1 bytes (0 bytes too when allow_empty;
 * src NULL then means ""). Returns 0 or BD_ERR_INVALID (dst untouched). */
int util_copy_name(char *dst, size_t max, const char *src, int allow_empty);

/* One pass over JSON text, without recursion, before handing it to cJSON:
 * returns 0, -1 when it holds a NUL byte, -2 when arrays/objects nest deeper
 * than max_depth. Brackets inside strings do not count. Never reads past len. */
int util_json_prescan(const char *s, size_t len, int max_depth);

/* Small deterministic PRNG (xoshiro256**), for sampling and shuffles. */
struct util_rng {
    uint64_t s[4];
};
void util_rng_seed(struct util_rng *r, uint64_t seed);
uint64_t util_rng_next(struct util_rng *r);
double util_rng_uniform(struct util_rng *r); /* [0,1) */
double util_rng_normal(struct util_rng *r);  /* N(0,1) */

#endif
