/* util — clocks, random ids, hashing, a capped buffer, a small PRNG. */
#include "banditd/util.h"
#include "banditd/err.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <sys/random.h>
#include <time.h>

double util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

double util_wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Randomness for ids comes from getrandom in 4 KiB batches (256 ids per
 * system call instead of one), kept per thread so no lock is needed. Bytes
 * are used once and wiped as they are handed out. A forked child drops what
 * its parent had buffered (pthread_atfork), so the two never share ids. */
#define RANDOM_BATCH 4096
static _Thread_local unsigned char rnd_buf[RANDOM_BATCH];
static _Thread_local size_t rnd_left; /* unused bytes at the end of rnd_buf */
static pthread_once_t rnd_once = PTHREAD_ONCE_INIT;

static void rnd_forget(void)
{
    memset(rnd_buf, 0, sizeof rnd_buf);
    rnd_left = 0;
}

static void rnd_init(void)
{
    pthread_atfork(NULL, NULL, rnd_forget);
}

/* n <= RANDOM_BATCH bytes of kernel randomness. 0 or BD_ERR_IO. */
static int rnd_take(unsigned char *dst, size_t n)
{
    assert(n <= RANDOM_BATCH);
    pthread_once(&rnd_once, rnd_init);
    if (rnd_left < n) {
        size_t got = 0;
        while (got < sizeof rnd_buf) {
            ssize_t r = getrandom(rnd_buf + got, sizeof rnd_buf - got, 0);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                rnd_forget();
                return BD_ERR_IO;
            }
            got += (size_t)r;
        }
        rnd_left = sizeof rnd_buf;
    }
    unsigned char *src = rnd_buf + sizeof rnd_buf - rnd_left;
    memcpy(dst, src, n);
    memset(src, 0, n);
    rnd_left -= n;
    return BD_OK;
}

int util_random_hex128(char out[33])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[16];
    if (rnd_take(raw, sizeof raw) != BD_OK)
        return BD_ERR_IO;
    for (size_t i = 0; i < sizeof raw; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[32] = '\0';
    return BD_OK;
}

uint64_t util_fnv1a64(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = 1469598103934665603ULL ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

int util_secret_eq(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < lb; i++) {
        unsigned char ca = i < la ? (unsigned char)a[i] : 0;
        diff |= (unsigned char)(ca ^ (unsigned char)b[i]);
    }
    return diff == 0;
}

void util_buf_init(struct util_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

static int buf_reserve(struct util_buf *b, size_t need)
{
    if (need + 1 <= b->cap)
        return BD_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need + 1)
        cap *= 2;
    if (cap > b->max + 1)
        cap = b->max + 1;
    char *p = realloc(b->data, cap);
    if (!p)
        return BD_ERR_NOMEM;
    b->data = p;
    b->cap = cap;
    return BD_OK;
}

int util_buf_append(struct util_buf *b, const void *data, size_t len)
{
    if (len > b->max - b->len)
        return BD_ERR_TOOBIG;
    int rc = buf_reserve(b, b->len + len);
    if (rc)
        return rc;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return BD_OK;
}

int util_buf_printf(struct util_buf *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return BD_ERR_INVALID;
    if ((size_t)n < sizeof small)
        return util_buf_append(b, small, (size_t)n);
    if ((size_t)n > b->max - b->len)
        return BD_ERR_TOOBIG;
    int rc = buf_reserve(b, b->len + (size_t)n);
    if (rc)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return BD_OK;
}

void util_buf_consume(struct util_buf *b, size_t n)
{
    assert(n <= b->len);
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    if (b->data)
        b->data[b->len] = '\0';
}

void util_buf_reset(struct util_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void util_buf_rearm(struct util_buf *b, size_t max)
{
    util_buf_reset(b);
    b->max = max;
}

void util_buf_free(struct util_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void util_errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void util_fmt_int(char *out, size_t cap, int v)
{
    assert(cap >= 12);
    (void)cap;
    char tmp[12];
    size_t n = 0;
    unsigned u = v < 0 ? 0u - (unsigned)v : (unsigned)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    size_t o = 0;
    if (v < 0)
        out[o++] = '-';
    while (n)
        out[o++] = tmp[--n];
    out[o] = '\0';
}

void util_fmt_fixed8(char *out, size_t cap, double x)
{
    assert(cap >= 32);
    /* y = x * 1e8 rounded; below 2^40 it is within 2^-14 of the exact
     * product, so away from .5 it rounds to the integer printf rounds the
     * exact value to. */
    if (x >= 0 && x < 1e4 && !signbit(x)) {
        double y = x * 1e8, fl = floor(y), frac = y - fl;
        if (fabs(frac - 0.5) > 1e-3) {
            uint64_t r = (uint64_t)fl + (frac > 0.5);
            uint64_t ip = r / 100000000u, fp = r % 100000000u;
            char tmp[24];
            size_t n = 0;
            do {
                tmp[n++] = (char)('0' + ip % 10);
                ip /= 10;
            } while (ip);
            size_t o = 0;
            while (n)
                out[o++] = tmp[--n];
            out[o++] = '.';
            for (int k = 7; k >= 0; k--) {
                out[o + (size_t)k] = (char)('0' + fp % 10);
                fp /= 10;
            }
            out[o + 8] = '\0';
            return;
        }
    }
    snprintf(out, cap, "%.8f", x);
}

int util_all_finite(const double *x, size_t n)
{
    size_t i = 0;
#ifdef __SSE2__
    /* v - v is +0 for a finite v and NaN otherwise: OR the differences
     * together and test once (256 values per request, from the store's
     * check of every decision's x; the branch per value cost 7 instructions). */
    __m128d acc0 = _mm_setzero_pd(), acc1 = _mm_setzero_pd();
    for (; i + 4 <= n; i += 4) {
        __m128d a = _mm_loadu_pd(x + i), b = _mm_loadu_pd(x + i + 2);
        acc0 = _mm_or_pd(acc0, _mm_sub_pd(a, a));
        acc1 = _mm_or_pd(acc1, _mm_sub_pd(b, b));
    }
    acc0 = _mm_or_pd(acc0, acc1);
    if (_mm_movemask_pd(_mm_cmpunord_pd(acc0, acc0)))
        return 0;
#endif
    for (; i < n; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

int util_copy_name(char *dst, size_t max, const char *src, int allow_empty)
{
    if (!src) {
        if (!allow_empty)
            return BD_ERR_INVALID;
        dst[0] = '\0';
        return BD_OK;
    }
    size_t n = strnlen(src, max);
    if (n >= max || (n == 0 && !allow_empty))
        return BD_ERR_INVALID;
    memcpy(dst, src, n + 1);
    return BD_OK;
}

int util_json_prescan(const char *s, size_t len, int max_depth)
{
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (ch == '\0')
            return -1;
        if (in_str) {
            if (ch == '\\' && i + 1 < len) {
                if (s[i + 1] == '\0')
                    return -1;
                i++; /* an escaped byte never ends the string */
            } else if (ch == '"') {
                in_str = 0;
            }
            continue;
        }
        if (ch == '"') {
            in_str = 1;
        } else if (ch == '{' || ch == '[') {
            if (++depth > max_depth)
                return -2;
        } else if (ch == '}' || ch == ']') {
            depth--;
        }
    }
    return 0;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void util_rng_seed(struct util_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t util_rng_next(struct util_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double util_rng_uniform(struct util_rng *r)
{
    return (double)(util_rng_next(r) >> 11) * 0x1.0p-53;
}

double util_rng_normal(struct util_rng *r)
{
    /* Box–Muller; u1 in (0,1] so log is finite. */
    double u1 = 1.0 - util_rng_uniform(r);
    double u2 = util_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
