/* xblob — exact compact feature vectors. Contract: include/banditd/xblob.h;
 * the byte layout is part of the store's schema (docs/state.md). */
#include "banditd/xblob.h"
#include "banditd/err.h"

#include <stdint.h>
#include <string.h>

#define XBLOB_MAX_K 255
#define XBLOB_SLOTS 512 /* open-addressing table (9-bit hash), > 2 * XBLOB_MAX_K */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define XBLOB_LE 1
#else
#define XBLOB_LE 0
#endif

static uint64_t load_le64(const unsigned char *p)
{
    uint64_t u = 0;
#if XBLOB_LE
    memcpy(&u, p, 8);
#else
    for (int k = 7; k >= 0; k--)
        u = u << 8 | p[k];
#endif
    return u;
}

static void store_le64(unsigned char *p, uint64_t u)
{
#if XBLOB_LE
    memcpy(p, &u, 8);
#else
    for (int k = 0; k < 8; k++)
        p[k] = (unsigned char)(u >> (8 * k));
#endif
}

void xblob_put_le(unsigned char *out, const double *x, size_t n)
{
#if XBLOB_LE
    memcpy(out, x, n * sizeof(double));
#else
    for (size_t i = 0; i < n; i++) {
        uint64_t u;
        memcpy(&u, &x[i], 8);
        store_le64(out + 8 * i, u);
    }
#endif
}

void xblob_get_le(double *x, const unsigned char *in, size_t n)
{
#if XBLOB_LE
    memcpy(x, in, n * sizeof(double));
#else
    for (size_t i = 0; i < n; i++) {
        uint64_t u = load_le64(in + 8 * i);
        memcpy(&x[i], &u, 8);
    }
#endif
}

static size_t dict_len(size_t dim, size_t k)
{
    return 2 + 8 * k + dim;
}

size_t xblob_encode(unsigned char *out, const double *x, size_t dim, unsigned char *idx)
{
    /* Open addressing on the bit patterns themselves (0 = free: +0.0 never
     * enters the dictionary), with each pattern's index beside it, so that a
     * hit costs one probe and no dependent load. */
    uint64_t key[XBLOB_SLOTS];
    unsigned char val[XBLOB_SLOTS]; /* dictionary index + 1 of key[h] */
    uint64_t dict[XBLOB_MAX_K];     /* the patterns in first-occurrence order */
    size_t k = 0;
    if (dict_len(dim, 1) >= dim * 8)
        goto raw; /* too small to gain anything */
    memset(key, 0, sizeof key);
    for (size_t i = 0; i < dim; i++) {
        uint64_t u;
        memcpy(&u, &x[i], 8);
        if (u == 0) {
            idx[i] = 0;
            continue;
        }
        size_t h = (size_t)((u * 0x9E3779B97F4A7C15ull) >> 55); /* 9 bits */
        while (key[h] != u) {
            if (key[h] == 0) { /* a new pattern */
                if (k == XBLOB_MAX_K || dict_len(dim, k + 1) >= dim * 8)
                    goto raw;
                dict[k] = u;
                key[h] = u;
                val[h] = (unsigned char)++k;
                break;
            }
            h = (h + 1) % XBLOB_SLOTS;
        }
        idx[i] = val[h];
    }
    out[0] = XBLOB_DICT;
    out[1] = (unsigned char)k;
    for (size_t j = 0; j < k; j++) /* the same bytes as in raw */
        store_le64(out + 2 + 8 * j, dict[j]);
    memcpy(out + 2 + 8 * k, idx, dim);
    return dict_len(dim, k);
raw:
    xblob_put_le(out, x, dim);
    return dim * 8;
}

int xblob_all_finite(const unsigned char *blob, size_t len, size_t dim)
{
    if (!blob)
        return 0;
    size_t n = dim;
    const unsigned char *p = blob;
    if (len != dim * 8) {
        if (len < 2 || blob[0] != XBLOB_DICT || len != dict_len(dim, blob[1]))
            return 0; /* neither form */
        n = blob[1];
        p = blob + 2;
    }
    for (size_t i = 0; i < n; i++) {
        /* exponent all ones = Inf or NaN */
        if ((load_le64(p + 8 * i) >> 52 & 0x7ff) == 0x7ff)
            return 0;
    }
    return 1;
}

int xblob_decode(double *x, const unsigned char *blob, size_t len, size_t dim)
{
    if (blob && len == dim * 8) {
        xblob_get_le(x, blob, dim);
        return 0;
    }
    if (!blob || len < 2 || blob[0] != XBLOB_DICT || len != dict_len(dim, blob[1]))
        return BD_ERR_CORRUPT;
    size_t k = blob[1];
    uint64_t dict[XBLOB_MAX_K + 1]; /* [0] = +0.0 */
    dict[0] = 0;
    for (size_t j = 0; j < k; j++)
        dict[j + 1] = load_le64(blob + 2 + 8 * j);
    const unsigned char *idx = blob + 2 + 8 * k;
    for (size_t i = 0; i < dim; i++) {
        if (idx[i] > k)
            return BD_ERR_CORRUPT;
        memcpy(&x[i], &dict[idx[i]], 8);
    }
    return 0;
}
