/* linucb — one arm's ridge-regression quality model (see linucb.h).
 *
 * Storage: A, A⁻¹ (full d×d, row-major, symmetric), b, θ. A⁻¹ is kept by
 * Sherman–Morrison (O(d²) per update) and re-derived from A by Cholesky
 * (LAPACK dpotrf + dpotri from OpenBLAS) every `refactor_every` updates and
 * whenever an update looks numerically unhealthy (denominator < 1 or not
 * finite, a diagonal of A⁻¹ <= 0).
 *
 * Forgetting γ < 1: γA + (1−γ)λI + xxᵀ is not a rank-one change of A, so
 * A⁻¹ cannot follow it by Sherman–Morrison. We apply the exact update to A
 * and b and re-derive A⁻¹ by Cholesky after every update: O(d³) per
 * update (measured in docs/router.md), affordable for small d or low
 * feedback rates. γ = 1 (the default) stays on the O(d²) path.
 *
 * Scoring reads a packed single-precision copy of the upper triangle of A⁻¹
 * (`P`, refreshed from A⁻¹ after every change): xᵀA⁻¹x then streams d²/2
 * floats instead of d² doubles, a quarter of the memory traffic, which is
 * what bounds a decision over many arms (8 arms at d=256: 1 MiB instead of
 * 4 MiB). The relative error of width² is ~1e-6, far below anything that
 * matters to a ranking by mean + α·width.
 *
 * Decisions first read an 8-bit copy of A⁻¹ (linucb_score_approx*, a quarter
 * of P's bytes: 8 arms at d=256 fit a 512 KiB L2), integer products
 * (vpmaddwd) against a 16-bit quantization of x, with a rigorous bound on the
 * difference to linucb_score's width² (score_quant); a second 8-bit plane
 * makes it a 16-bit copy (linucb_score_fine_many) for the arms the coarse
 * bound leaves undecided; the router falls back to linucb_score only when
 * that does not settle the argmax either. */
#include "banditd/linucb.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "banditd/err.h"

/* LAPACK (Fortran interface, provided by OpenBLAS). */
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info);

struct linucb {
    int d;
    double lambda, mu0, gamma;
    int refactor_every; /* <= 0: only when unhealthy */
    uint64_t n;
    uint64_t since_refactor;
    double *A, *Ainv, *b, *theta;
    double *u;    /* d scratch (update) */
    double *work; /* d×d scratch (Cholesky) */
    float *P;     /* packed upper triangle of A⁻¹, rows i = 0..d-1, cols j >= i */
    float *xs;    /* dp scratch (score), zero-padded; mutated by the const score: single owner */
    /* Quantized copy for linucb_score_approx (x86-64 with AVX2 only, else
     * NULL). H = s·A⁻¹, s = 1/max diag (so |H| <= 1). Off the diagonal, row i
     * of the upper triangle is Q_ij·m2_i with Q_ij = round(H_ij/m2_i), an
     * integer of at most 32512 in magnitude (m2_i = max_j |H_ij| / 32512),
     * split as Q = 256·q1 + q2 with q1 in [-127, 127] and q2 in [-128, 127]:
     * the coarse plane Q1 holds q1 (values q1·m1_i, m1 = 256·m2: 8 bits per
     * entry, half the bytes of half precision), the fine plane Q2 holds q2
     * (with Q1, 16 bits per entry). The diagonal is hd, in single
     * precision. A plane is in blocks of 32 rows, column pair by column
     * pair, so that the kernel keeps one row per 32-bit lane for the whole
     * block (no horizontal sums) and streams the plane linearly: block b
     * (rows i0 = 32b .. i0+31) holds first the columns i0..i0+15 of its rows
     * i0..i0+15 (8 steps of 32 bytes), then the columns i0+16..dp-1 of all
     * 32 rows (steps of 64 bytes). A step is one column pair (j, j+1): row
     * i0+r at bytes 2r (column j) and 2r+1 (j+1). Entries at and below the
     * diagonal, and padding, are zero. */
    int8_t *Q1, *Q2;
    int8_t *rows;  /* 2 × 32 × dp bytes (refresh scratch: a block's rows of q1, q2) */
    float *aux;    /* 6 arrays of dp, zero-padded: hd, hsd = sqrt(hd), m1, m2, R1, R2
                    * (R_L: row sums of the stored |values| of plane level L) */
    int16_t *xi;   /* dp scratch (score: quantized x; refresh: one row of Q) */
    double hinv;   /* 1/s */
    double enorm1; /* >= ‖E₁‖₂, E₁ = (coarse values) − H off the diagonal */
    double enorm2; /* >= ‖E₂‖₂, the same for the fine values Q·m2 */
    int dp;        /* d rounded up to a multiple of 32 */
};

/* Bytes of the block of a plane that starts at row i0 (see struct linucb). */
static size_t block_bytes(int dp, int i0)
{
    return 256 + 32 * (size_t)(dp - i0 - 16);
}

static int all_finite(const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return 0;
    return 1;
}

static int refresh_half(linucb *m);
static int half_supported(void);

/* Refresh P (and the quantized copy, which also writes P while each row of
 * A⁻¹ is in cache, when there is one). */
static void refresh_packed(linucb *m)
{
    if (refresh_half(m))
        return;
    int d = m->d;
    float *p = m->P;
    for (int i = 0; i < d; i++) {
        const double *row = m->Ainv + (size_t)i * d;
        for (int j = i; j < d; j++)
            *p++ = (float)row[j];
    }
}

static void recompute_theta(linucb *m)
{
    cblas_dsymv(CblasRowMajor, CblasUpper, m->d, 1.0, m->Ainv, m->d, m->b, 1, 0.0, m->theta, 1);
}

/* Invert the SPD matrix src into m->Ainv via m->work. On failure m->Ainv is
 * untouched and BD_ERR_NUMERIC is returned. */
static int invert_from(linucb *m, const double *src)
{
    int d = m->d, info = 0;
    size_t dd = (size_t)d * d;
    memcpy(m->work, src, dd * sizeof(double));
    /* Row-major upper == column-major lower for a symmetric matrix. */
    dpotrf_("L", &d, m->work, &d, &info);
    if (info != 0)
        return BD_ERR_NUMERIC;
    dpotri_("L", &d, m->work, &d, &info);
    if (info != 0)
        return BD_ERR_NUMERIC;
    /* Column-major lower = row-major upper: mirror it into the lower half. */
    for (int i = 0; i < d; i++) {
        double *row = m->work + (size_t)i * d;
        if (!(row[i] > 0.0) || !isfinite(row[i]))
            return BD_ERR_NUMERIC;
        for (int j = i + 1; j < d; j++)
            m->work[(size_t)j * d + i] = row[j];
    }
    if (!all_finite(m->work, dd))
        return BD_ERR_NUMERIC;
    memcpy(m->Ainv, m->work, dd * sizeof(double));
    return BD_OK;
}

int linucb_refactor(linucb *m)
{
    assert(m != NULL);
    int rc = invert_from(m, m->A);
    if (rc != BD_OK)
        return rc;
    m->since_refactor = 0;
    recompute_theta(m);
    refresh_packed(m);
    return BD_OK;
}

static void reset_state(linucb *m)
{
    int d = m->d;
    size_t dd = (size_t)d * d;
    memset(m->A, 0, dd * sizeof(double));
    memset(m->Ainv, 0, dd * sizeof(double));
    for (int i = 0; i < d; i++) {
        m->A[(size_t)i * d + i] = m->lambda;
        m->Ainv[(size_t)i * d + i] = 1.0 / m->lambda;
    }
    memset(m->b, 0, (size_t)d * sizeof(double));
    memset(m->theta, 0, (size_t)d * sizeof(double));
    m->n = 0;
    m->since_refactor = 0;
    refresh_packed(m);
}

linucb *linucb_create(int dim, double lambda, double mu0, double forgetting, int refactor_every)
{
    if (dim < 1 || dim > 65536 || !(lambda > 0.0) || !isfinite(lambda) || !isfinite(mu0) ||
        !(forgetting > 0.0 && forgetting <= 1.0))
        return NULL;
    /* Level-2 BLAS at d <= a few thousand gains nothing from threads, and
     * OpenBLAS's spinning workers would steal the event loop's cores. */
    static int blas_single = 0;
    if (!blas_single) {
        openblas_set_num_threads(1);
        blas_single = 1;
    }
    linucb *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    size_t d = (size_t)dim, dd = d * d;
    m->d = dim;
    m->lambda = lambda;
    m->mu0 = mu0;
    m->gamma = forgetting;
    m->refactor_every = refactor_every;
    m->A = malloc(dd * sizeof(double));
    m->Ainv = malloc(dd * sizeof(double));
    m->work = malloc(dd * sizeof(double));
    m->b = malloc(d * sizeof(double));
    m->theta = malloc(d * sizeof(double));
    m->u = malloc(d * sizeof(double));
    m->P = malloc(d * (d + 1) / 2 * sizeof(float));
    m->dp = (int)((d + 31) / 32 * 32);
    m->xs = calloc((size_t)m->dp, sizeof(float));
    if (!m->A || !m->Ainv || !m->work || !m->b || !m->theta || !m->u || !m->P || !m->xs) {
        linucb_destroy(m);
        return NULL;
    }
    if (half_supported()) {
        size_t bytes = 0;
        for (int i0 = 0; i0 < m->dp; i0 += 32)
            bytes += block_bytes(m->dp, i0);
        /* 64-byte aligned (a multiple of 64 bytes, as aligned_alloc wants) */
        bytes = (bytes + 63) / 64 * 64;
        m->Q1 = aligned_alloc(64, bytes);
        m->Q2 = aligned_alloc(64, bytes);
        m->rows = malloc(64 * (size_t)m->dp);
        m->aux = calloc(6 * (size_t)m->dp, sizeof(float));
        m->xi = calloc((size_t)m->dp, sizeof(int16_t));
        if (!m->Q1 || !m->Q2 || !m->rows || !m->aux || !m->xi) {
            linucb_destroy(m);
            return NULL;
        }
    }
    reset_state(m);
    return m;
}

void linucb_destroy(linucb *m)
{
    if (m == NULL)
        return;
    free(m->A);
    free(m->Ainv);
    free(m->work);
    free(m->b);
    free(m->theta);
    free(m->u);
    free(m->P);
    free(m->xs);
    free(m->Q1);
    free(m->Q2);
    free(m->rows);
    free(m->aux);
    free(m->xi);
    free(m);
}

static int update_forgetting(linucb *m, const double *x, double y)
{
    int d = m->d;
    double g = m->gamma, add = (1.0 - g) * m->lambda;
    for (int i = 0; i < d; i++) {
        double *row = m->A + (size_t)i * d;
        for (int j = 0; j < d; j++)
            row[j] = g * row[j] + x[i] * x[j];
        row[i] += add;
        m->b[i] = g * m->b[i] + y * x[i];
    }
    m->n++;
    return linucb_refactor(m);
}

int linucb_update(linucb *m, const double *x, double reward)
{
    assert(m != NULL && x != NULL);
    int d = m->d;
    if (!isfinite(reward) || !all_finite(x, (size_t)d))
        return BD_ERR_INVALID;
    double y = reward - m->mu0;
    if (m->gamma < 1.0)
        return update_forgetting(m, x, y);

    cblas_dger(CblasRowMajor, d, d, 1.0, x, 1, x, 1, m->A, d);
    cblas_daxpy(d, y, x, 1, m->b, 1);
    m->n++;
    m->since_refactor++;

    int need_refactor = m->refactor_every > 0 && m->since_refactor >= (uint64_t)m->refactor_every;
    if (!need_refactor) {
        /* u = A⁻¹x; A⁻¹ ← A⁻¹ − uuᵀ/(1 + xᵀu). xᵀu >= 0 in exact arithmetic. */
        cblas_dsymv(CblasRowMajor, CblasUpper, d, 1.0, m->Ainv, d, x, 1, 0.0, m->u, 1);
        double denom = 1.0 + cblas_ddot(d, x, 1, m->u, 1);
        if (!(denom >= 1.0) || !isfinite(denom)) {
            need_refactor = 1;
        } else {
            cblas_dger(CblasRowMajor, d, d, -1.0 / denom, m->u, 1, m->u, 1, m->Ainv, d);
            for (int i = 0; i < d; i++) {
                double a = m->Ainv[(size_t)i * d + i];
                if (!(a > 0.0) || !isfinite(a)) {
                    need_refactor = 1;
                    break;
                }
            }
        }
    }
    if (need_refactor)
        return linucb_refactor(m);
    recompute_theta(m);
    refresh_packed(m);
    return BD_OK;
}

/* xᵀPx for the packed upper triangle P: Σ_i x_i·(2·Σ_{j>=i} P_ij x_j − P_ii x_i).
 * Row sums in single precision, the outer sum in double. */
static double quad_packed_generic(const float *P, const float *x, int d)
{
    double total = 0.0;
    const float *p = P;
    for (int i = 0; i < d; i++) {
        int len = d - i;
        const float *xr = x + i;
        float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int j = 0;
        for (; j + 8 <= len; j += 8)
            for (int k = 0; k < 8; k++)
                s[k] += p[j + k] * xr[j + k];
        float r = 0.0f;
        for (; j < len; j++)
            r += p[j] * xr[j];
        double row = (double)((s[0] + s[4]) + (s[1] + s[5])) +
                     (double)((s[2] + s[6]) + (s[3] + s[7])) + (double)r;
        total += (double)x[i] * (2.0 * row - (double)p[0] * (double)x[i]);
        p += len;
    }
    return total;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(BANDITD_NO_SIMD)
#include <immintrin.h>
#define HAVE_AVX2_KERNEL 1

static const int32_t tail_mask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/* Fold 2·x_i·(row sum r) into the double accumulator t. */
__attribute__((target("avx2,fma"))) static inline __m256d fold_row(__m256d t, __m256 r, double xi)
{
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
    return _mm256_fmadd_pd(_mm256_set1_pd(2.0 * xi), _mm256_cvtps_pd(h), t);
}

/* The same with AVX2+FMA (chosen at run time). Rows go four at a time so that
 * each load of x serves four rows (5 loads per 4 FMAs instead of 2 per 1);
 * each row's first few entries (the 4×4 corner) are scalar, tails use masked
 * loads, and row sums fold into double accumulators. */
__attribute__((target("avx2,fma"))) static double quad_packed_avx2(const float *P, const float *x,
                                                                   int d)
{
    __m256d t = _mm256_setzero_pd();
    double corner = 0.0, diag = 0.0;
    const float *p = P;
    int i = 0;
    for (; i + 4 <= d; i += 4) {
        const float *p0 = p, *p1 = p0 + (d - i), *p2 = p1 + (d - i - 1), *p3 = p2 + (d - i - 2);
        /* corner: row k, columns k..i+3 */
        for (int k = 0; k < 4; k++) {
            const float *pk = k == 0 ? p0 : k == 1 ? p1 : k == 2 ? p2 : p3;
            double xk = (double)x[i + k], off = 0.0;
            for (int c = 1; c < 4 - k; c++)
                off += (double)pk[c] * (double)x[i + k + c];
            diag += (double)pk[0] * xk * xk;
            corner += 2.0 * xk * off;
        }
        /* common columns i+4 .. d-1 */
        int s = i + 4, len = d - s, j = 0;
        const float *q0 = p0 + 4, *q1 = p1 + 3, *q2 = p2 + 2, *q3 = p3 + 1, *xr = x + s;
        __m256 r0 = _mm256_setzero_ps(), r1 = _mm256_setzero_ps();
        __m256 r2 = _mm256_setzero_ps(), r3 = _mm256_setzero_ps();
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
        for (; j + 16 <= len; j += 16) {
            __m256 xv = _mm256_loadu_ps(xr + j), xw = _mm256_loadu_ps(xr + j + 8);
            r0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + j), xv, r0);
            r1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + j), xv, r1);
            r2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + j), xv, r2);
            r3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + j), xv, r3);
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + j + 8), xw, s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + j + 8), xw, s1);
            s2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + j + 8), xw, s2);
            s3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + j + 8), xw, s3);
        }
        r0 = _mm256_add_ps(r0, s0);
        r1 = _mm256_add_ps(r1, s1);
        r2 = _mm256_add_ps(r2, s2);
        r3 = _mm256_add_ps(r3, s3);
        for (; j + 8 <= len; j += 8) {
            __m256 xv = _mm256_loadu_ps(xr + j);
            r0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + j), xv, r0);
            r1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + j), xv, r1);
            r2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + j), xv, r2);
            r3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + j), xv, r3);
        }
        int rem = len - j;
        if (rem > 0) {
            __m256i m = _mm256_loadu_si256((const __m256i *)(tail_mask + 8 - rem));
            __m256 xv = _mm256_maskload_ps(xr + j, m);
            r0 = _mm256_fmadd_ps(_mm256_maskload_ps(q0 + j, m), xv, r0);
            r1 = _mm256_fmadd_ps(_mm256_maskload_ps(q1 + j, m), xv, r1);
            r2 = _mm256_fmadd_ps(_mm256_maskload_ps(q2 + j, m), xv, r2);
            r3 = _mm256_fmadd_ps(_mm256_maskload_ps(q3 + j, m), xv, r3);
        }
        t = fold_row(t, r0, (double)x[i]);
        t = fold_row(t, r1, (double)x[i + 1]);
        t = fold_row(t, r2, (double)x[i + 2]);
        t = fold_row(t, r3, (double)x[i + 3]);
        p = p3 + (d - i - 3);
    }
    double v[4];
    _mm256_storeu_pd(v, t);
    double total = (v[0] + v[1]) + (v[2] + v[3]) + corner + diag;
    /* the last d mod 4 rows: the bottom-right corner */
    for (; i < d; i++) {
        int len = d - i;
        double xi = (double)x[i], row = 0.0;
        for (int j = 1; j < len; j++)
            row += (double)p[j] * (double)x[i + j];
        total += xi * ((double)p[0] * xi + 2.0 * row);
        p += len;
    }
    return total;
}
/* ---- quantized copy: refresh, kernel, approximate scores ---- */

/* Row i of P, (float)row[i..d-1], into p; returns max_{j in (i, d)} |sc·row[j]|. */
__attribute__((target("avx2,fma"))) static double pack_absmax(const double *row, int i, int d,
                                                              double sc, float *p)
{
    const __m256d absmask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL));
    __m256d mx = _mm256_setzero_pd();
    *p++ = (float)row[i];
    int j = i + 1;
    for (; j + 4 <= d; j += 4, p += 4) {
        __m256d v = _mm256_loadu_pd(row + j);
        _mm_storeu_ps(p, _mm256_cvtpd_ps(v));
        mx = _mm256_max_pd(mx, _mm256_and_pd(v, absmask));
    }
    double t[4];
    _mm256_storeu_pd(t, mx);
    double m = fmax(fmax(t[0], t[1]), fmax(t[2], t[3]));
    for (; j < d; j++) {
        *p++ = (float)row[j];
        m = fmax(m, fabs(row[j]));
    }
    return m * sc;
}

/* Horizontal sum of eight 32-bit lanes, in 64 bits. */
__attribute__((target("avx2,fma"))) static int64_t hsum_epi32(__m256i v)
{
    int32_t t[8];
    _mm256_storeu_si256((__m256i *)(void *)t, v);
    int64_t s = 0;
    for (int k = 0; k < 8; k++)
        s += t[k];
    return s;
}

/* Row i of Q from row i of P (p: P_ii, P_i,i+1, ..., P_i,d-1): Q_ij =
 * round(P_ij·k) clamped to ±32512 (single precision, k = s/m2_i), zero for j
 * <= i and j >= d, split into bytes Q = 256·q1 + q2 with q1 = floor((Q +
 * 128)/256) (an arithmetic shift), q2 = Q − 256·q1: q1 into p1[i0..dp-1], q2
 * into p2[i0..dp-1]. sums = {Σ|q1|, Σ|q2|, Σ q2²} (each below 2^31 for dp <=
 * 65536). */
__attribute__((target("avx2,fma"))) static void quant_row(const float *p, int i, int d, int i0,
                                                          int dp, float k, int8_t *p1, int8_t *p2,
                                                          int64_t sums[3])
{
    const __m256i r = _mm256_set1_epi16(128), one = _mm256_set1_epi16(1);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i vi = _mm256_set1_epi32(i), vd = _mm256_set1_epi32(d);
    const __m256 vk = _mm256_set1_ps(k), lim = _mm256_set1_ps(32512.0f),
                 nlim = _mm256_set1_ps(-32512.0f);
    __m256i a1 = _mm256_setzero_si256(), a2 = a1, s2 = a1;
    int c0 = (i + 1) / 16 * 16;
    memset(p1 + i0, 0, (size_t)(c0 - i0));
    memset(p2 + i0, 0, (size_t)(c0 - i0));
    for (int c = c0; c < dp; c += 16) {
        const float *q = p + (c - i); /* P_ic */
        __m256 v0, v1;
        if (c > i && c + 16 <= d) {
            v0 = _mm256_loadu_ps(q);
            v1 = _mm256_loadu_ps(q + 8);
        } else { /* the lanes with i < j < d only */
            __m256i j0 = _mm256_add_epi32(_mm256_set1_epi32(c), lane);
            __m256i j1 = _mm256_add_epi32(j0, _mm256_set1_epi32(8));
            __m256i m0 = _mm256_and_si256(_mm256_cmpgt_epi32(j0, vi), _mm256_cmpgt_epi32(vd, j0));
            __m256i m1 = _mm256_and_si256(_mm256_cmpgt_epi32(j1, vi), _mm256_cmpgt_epi32(vd, j1));
            v0 = _mm256_maskload_ps(q, m0);
            v1 = _mm256_maskload_ps(q + 8, m1);
        }
        v0 = _mm256_min_ps(lim, _mm256_max_ps(nlim, _mm256_mul_ps(v0, vk)));
        v1 = _mm256_min_ps(lim, _mm256_max_ps(nlim, _mm256_mul_ps(v1, vk)));
        /* packs interleaves the 128-bit lanes: put them back in order */
        __m256i qv = _mm256_permute4x64_epi64(
            _mm256_packs_epi32(_mm256_cvtps_epi32(v0), _mm256_cvtps_epi32(v1)), 0xd8);
        __m256i hi = _mm256_srai_epi16(_mm256_add_epi16(qv, r), 8);
        __m256i lo = _mm256_sub_epi16(qv, _mm256_slli_epi16(hi, 8));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_abs_epi16(hi), one));
        a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_abs_epi16(lo), one));
        s2 = _mm256_add_epi32(s2, _mm256_madd_epi16(lo, lo));
        /* (hi 0-7, lo 0-7, hi 8-15, lo 8-15) */
        __m256i b = _mm256_permute4x64_epi64(_mm256_packs_epi16(hi, lo), 0xd8);
        _mm_storeu_si128((__m128i *)(void *)(p1 + c), _mm256_castsi256_si128(b));
        _mm_storeu_si128((__m128i *)(void *)(p2 + c), _mm256_extracti128_si256(b, 1));
    }
    sums[0] = hsum_epi32(a1);
    sums[1] = hsum_epi32(a2);
    sums[2] = hsum_epi32(s2);
}

/* 8 rows (src, src + stride, ...) × 16 bytes, read as 8 column pairs of 2
 * bytes, transposed: out + p·ostride gets column pair p of the 8 rows (16
 * bytes, row r at 2r). */
__attribute__((target("avx2,fma"), always_inline)) static inline void
transpose_pairs(const int8_t *src, int stride, int8_t *out, int ostride)
{
#define LD(k) _mm_loadu_si128((const __m128i *)(const void *)(src + (size_t)(k)*stride))
#define ST(k, v) _mm_storeu_si128((__m128i *)(void *)(out + (size_t)(k)*ostride), v)
    __m128i r0 = LD(0), r1 = LD(1), r2 = LD(2), r3 = LD(3);
    __m128i r4 = LD(4), r5 = LD(5), r6 = LD(6), r7 = LD(7);
    /* rows 2k, 2k+1 interleaved: pairs 0-3 (t·0), pairs 4-7 (t·1) */
    __m128i t00 = _mm_unpacklo_epi16(r0, r1), t01 = _mm_unpackhi_epi16(r0, r1);
    __m128i t10 = _mm_unpacklo_epi16(r2, r3), t11 = _mm_unpackhi_epi16(r2, r3);
    __m128i t20 = _mm_unpacklo_epi16(r4, r5), t21 = _mm_unpackhi_epi16(r4, r5);
    __m128i t30 = _mm_unpacklo_epi16(r6, r7), t31 = _mm_unpackhi_epi16(r6, r7);
    /* rows 0-3 (u0·) and 4-7 (u1·): pairs (0,1), (2,3), (4,5), (6,7) */
    __m128i u00 = _mm_unpacklo_epi32(t00, t10), u01 = _mm_unpackhi_epi32(t00, t10);
    __m128i u02 = _mm_unpacklo_epi32(t01, t11), u03 = _mm_unpackhi_epi32(t01, t11);
    __m128i u10 = _mm_unpacklo_epi32(t20, t30), u11 = _mm_unpackhi_epi32(t20, t30);
    __m128i u12 = _mm_unpacklo_epi32(t21, t31), u13 = _mm_unpackhi_epi32(t21, t31);
    ST(0, _mm_unpacklo_epi64(u00, u10));
    ST(1, _mm_unpackhi_epi64(u00, u10));
    ST(2, _mm_unpacklo_epi64(u01, u11));
    ST(3, _mm_unpackhi_epi64(u01, u11));
    ST(4, _mm_unpacklo_epi64(u02, u12));
    ST(5, _mm_unpackhi_epi64(u02, u12));
    ST(6, _mm_unpacklo_epi64(u03, u13));
    ST(7, _mm_unpackhi_epi64(u03, u13));
#undef LD
#undef ST
}

/* One plane's block at row i0 (see struct linucb) from its rows' bytes
 * (rows: 32 rows of dp bytes, columns i0..dp-1 used). */
__attribute__((target("avx2,fma"))) static void store_block(const int8_t *rows, int i0, int dp,
                                                            int8_t *out)
{
    for (int s = 0; s < 4; s++) /* rows i0+8s .. i0+8s+7 */
        for (int c = s < 2 ? i0 : i0 + 16; c < dp; c += 16) {
            if (c < i0 + 16)
                transpose_pairs(rows + (size_t)8 * s * dp + c, dp, out + 16 * s, 32);
            else
                transpose_pairs(rows + (size_t)8 * s * dp + c, dp,
                                out + 256 + (size_t)(c - i0 - 16) * 32 + 16 * s, 64);
        }
}

/* Rebuild P and the quantized copy from A⁻¹ (see struct linucb): hd, hsd, the row
 * multipliers m1, m2, the planes, the row sums R1, R2 of |stored values| (R2
 * bounded: |Q·m2| <= |q1·m1| + 128·m2) and the bounds enorm1, enorm2 on the
 * spectral norms of the storage errors E_L = H_L − s·A⁻¹ (symmetric, zero
 * diagonal) by their Frobenius norms, both from |Q_ij·m2_i − H_ij| <= e·m2_i,
 * e = 1/2 + 2^-7. Q is the nearest integer to fl(P_ij·k), and P_ij =
 * fp32(A⁻¹_ij), k = fp32(s/m2_i) and the product are within 3.01·2^-24
 * (relative) of H_ij/m2_i, which is at most 32512·(1 + 2^-23) in magnitude
 * (m2_i is max_j |H_ij|/32512 rounded to single precision): < 0.006 off,
 * and the clamp to ±32512 stays within that too. E2 is that error, and E1 =
 * q1·m1 − H = −q2·m2 + (Q·m2 − H), so |E1_ij| <= (|q2_ij| + e)·m2_i and
 * Σ_j E1_ij² <= m2_i²·(Σ q2² + 2e·Σ|q2| + n_i·e²) over the n_i = d−1−i
 * stored entries of row i (q2 = 0 elsewhere; the integer sums are exact). */
__attribute__((target("avx2,fma"))) static void refresh_quant(linucb *m)
{
    int d = m->d, dp = m->dp;
    const double *Ai = m->Ainv;
    double mx = 0.0;
    for (int i = 0; i < d; i++)
        if (Ai[(size_t)i * d + i] > mx)
            mx = Ai[(size_t)i * d + i];
    if (!(mx > 0.0) || !isfinite(mx))
        mx = 1.0;
    double sc = 1.0 / mx;
    m->hinv = mx;
    float *hd = m->aux, *hsd = hd + dp, *m1 = hsd + dp, *m2 = m1 + dp, *R1 = m2 + dp, *R2 = R1 + dp;
    double fro1 = 0.0, fro2 = 0.0, e = 0.5 + 0x1p-7;
    int8_t *rows1 = m->rows, *rows2 = m->rows + (size_t)32 * dp;
    int8_t *p1 = m->Q1, *p2 = m->Q2;
    for (int i0 = 0; i0 < dp; i0 += 32) {
        for (int k = 0; k < 32; k++) {
            int i = i0 + k;
            int64_t q[3] = {0, 0, 0};
            int8_t *o1 = rows1 + (size_t)k * dp, *o2 = rows2 + (size_t)k * dp;
            if (i >= d) {
                memset(o1 + i0, 0, (size_t)(dp - i0));
                memset(o2 + i0, 0, (size_t)(dp - i0));
                continue;
            }
            const double *row = Ai + (size_t)i * d;
            /* the next row's upper part, while this one is processed */
            if (i + 1 < d)
                for (int j = i + 2; j < d; j += 8)
                    _mm_prefetch((const char *)(row + d + j), _MM_HINT_T0);
            double v = sc * row[i];
            hd[i] = (float)(v > 0.0 ? v : 0.0);
            hsd[i] = (float)sqrt((double)hd[i]);
            float *prow = m->P + (size_t)i * d - (size_t)i * (i - 1) / 2;
            m2[i] = (float)(pack_absmax(row, i, d, sc, prow) / 32512.0);
            m1[i] = 256.0f * m2[i];
            quant_row(prow, i, d, i0, dp, m2[i] > 0.0f ? (float)(sc / (double)m2[i]) : 0.0f, o1, o2,
                      q);
            double n = (double)(d - 1 - i), u = (double)m2[i];
            fro1 += u * u * ((double)q[2] + 2.0 * e * (double)q[1] + n * e * e);
            fro2 += n * e * e * u * u;
            /* rounded up: they only enter the bound */
            double r1 = (double)q[0] * (double)m1[i];
            R1[i] = (float)(r1 * (1.0 + 0x1p-20));
            R2[i] = (float)((r1 + 128.0 * n * u) * (1.0 + 0x1p-20));
        }
        store_block(rows1, i0, dp, p1);
        store_block(rows2, i0, dp, p2);
        p1 += block_bytes(dp, i0);
        p2 += block_bytes(dp, i0);
    }
    /* ‖E‖₂ <= ‖E‖_F, and E has both triangles: ‖E‖_F² = 2·Σ over the upper
     * one. 2^-30 covers the double products and sums (< 2^-36 relative for
     * d <= 65536). */
    m->enorm1 = sqrt(2.0 * fro1) * (1.0 + 0x1p-30);
    m->enorm2 = sqrt(2.0 * fro2) * (1.0 + 0x1p-30);
}

/* out[k] = the eight lanes of v_k summed in double, in order. */
__attribute__((target("avx2,fma"))) static void lane_sums4(__m256 v0, __m256 v1, __m256 v2,
                                                           __m256 v3, double out[4])
{
    __m256 v[4] = {v0, v1, v2, v3};
    for (int k = 0; k < 4; k++) {
        float f[8];
        _mm256_storeu_ps(f, v[k]);
        double sum = 0.0;
        for (int l = 0; l < 8; l++)
            sum += f[l];
        out[k] = sum;
    }
}

/* Broadcast of the 16-bit pair (ξ_j, ξ_j+1) to the eight 32-bit lanes. */
__attribute__((target("avx2,fma"))) static inline __m256i xpair(const int16_t *xi)
{
    int32_t v;
    memcpy(&v, xi, sizeof v);
    return _mm256_set1_epi32(v);
}

/* The running sums of quad_i8. */
struct qsums {
    __m256d tot;             /* Σ c_i·S_i, four double lanes */
    __m256 sc, sq, st1, st2; /* score_quant's rs, eight single lanes */
};

/* Rows g..g+7 of quad_i8: S (one row per lane) into the sums. */
__attribute__((target("avx2,fma"))) static inline void fold_rows(struct qsums *u, __m256i s, int g,
                                                                 const float *mult, const float *xs,
                                                                 int dp, const float *aux)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 xv = _mm256_loadu_ps(xs + g);
    __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(xv, _mm256_loadu_ps(mult + g)));
    u->tot = _mm256_add_pd(u->tot, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(p)),
                                                 _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1))));
    if (aux != NULL) { /* the sums of score_quant's rs */
        __m256 xa = _mm256_and_ps(xv, absmask);
        u->sc = _mm256_fmadd_ps(_mm256_loadu_ps(aux + dp + g), xa, u->sc);
        u->sq = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(aux + g), xv), xv, u->sq);
        u->st1 = _mm256_fmadd_ps(_mm256_loadu_ps(aux + 4 * dp + g), xa, u->st1);
        u->st2 = _mm256_fmadd_ps(_mm256_loadu_ps(aux + 5 * dp + g), xa, u->st2);
    }
}

/* Σ_i c_i·S_i with S_i = Σ_{j>i} q_ij·ξ_j (q: one plane, ξ: quantized x,
 * both exact integers, summed exactly in 32 bits: |S_i| < 2^31 by the choice
 * of ξ's range) and c_i = xs_i·mult_i in single precision; each 8 rows add
 * their eight c_i·S_i in double. A block of 32 rows keeps row i0+8a+r in
 * lane r of accumulator a; a step (one column pair, 16 bytes per 8 rows) is
 * widened to 16-bit and multiplied by the pair (ξ_j, ξ_j+1) (vpmaddwd), two
 * steps at a time (every partial sum is one of S_i's terms' partial sums, so
 * within the same 31 bits). */
__attribute__((target("avx2,fma"))) static double quad_i8(const int8_t *Q, const float *mult,
                                                          const int16_t *xi, const float *xs,
                                                          int dp, const float *aux, double rs[4])
{
    const __m128i *h = (const __m128i *)(const void *)Q;
    struct qsums u = {.tot = _mm256_setzero_pd(), .sc = _mm256_setzero_ps()};
    u.sq = u.st1 = u.st2 = u.sc;
#define MADD(k, x) _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_load_si128(h + (k))), x)
    for (int i0 = 0; i0 < dp; i0 += 32) {
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        /* columns i0..i0+15: rows i0..i0+15 only */
        for (int j = i0; j < i0 + 16; j += 4, h += 4) {
            __m256i xv = xpair(xi + j), xw = xpair(xi + j + 2);
            a0 = _mm256_add_epi32(a0, _mm256_add_epi32(MADD(0, xv), MADD(2, xw)));
            a1 = _mm256_add_epi32(a1, _mm256_add_epi32(MADD(1, xv), MADD(3, xw)));
        }
        for (int j = i0 + 16; j < dp; j += 4, h += 8) {
            __m256i xv = xpair(xi + j), xw = xpair(xi + j + 2);
            a0 = _mm256_add_epi32(a0, _mm256_add_epi32(MADD(0, xv), MADD(4, xw)));
            a1 = _mm256_add_epi32(a1, _mm256_add_epi32(MADD(1, xv), MADD(5, xw)));
            a2 = _mm256_add_epi32(a2, _mm256_add_epi32(MADD(2, xv), MADD(6, xw)));
            a3 = _mm256_add_epi32(a3, _mm256_add_epi32(MADD(3, xv), MADD(7, xw)));
        }
        fold_rows(&u, a0, i0, mult, xs, dp, aux);
        fold_rows(&u, a1, i0 + 8, mult, xs, dp, aux);
        fold_rows(&u, a2, i0 + 16, mult, xs, dp, aux);
        fold_rows(&u, a3, i0 + 24, mult, xs, dp, aux);
    }
#undef MADD
    if (aux != NULL)
        lane_sums4(u.sc, u.sq, u.st1, u.st2, rs);
    double v[4];
    _mm256_storeu_pd(v, u.tot);
    return (v[0] + v[1]) + (v[2] + v[3]);
}

static int avx2_supported(void)
{
    static int have = -1; /* benign race: every thread computes the same value */
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return have;
}

/* The quantized copy needs nothing beyond AVX2+FMA. */
static int half_supported(void)
{
    return avx2_supported();
}

static int refresh_half(linucb *m)
{
    if (m->Q1 == NULL)
        return 0;
    refresh_quant(m);
    return 1;
}
#else
static int half_supported(void)
{
    return 0;
}

static int refresh_half(linucb *m)
{
    (void)m;
    return 0;
}
#endif

static double quad_packed(const float *P, const float *x, int d)
{
#ifdef HAVE_AVX2_KERNEL
    if (avx2_supported())
        return quad_packed_avx2(P, x, d);
#endif
    return quad_packed_generic(P, x, d);
}

/* θᵀx (returned) and xs = (float)x. The sum order is fixed (four lanes, then
 * pairwise), the same for both score paths, so their means are identical. */
static double prologue_generic(const linucb *m, const double *x)
{
    int d = m->d, i = 0;
    double t[4] = {0, 0, 0, 0};
    for (; i + 4 <= d; i += 4)
        for (int k = 0; k < 4; k++)
            t[k] += m->theta[i + k] * x[i + k];
    double dot = (t[0] + t[2]) + (t[1] + t[3]);
    for (; i < d; i++)
        dot += m->theta[i] * x[i];
    for (i = 0; i < d; i++)
        m->xs[i] = (float)x[i];
    return dot;
}

#ifdef HAVE_AVX2_KERNEL
/* θᵀx in the same per-lane order as prologue_generic: lane k sums i+k, i+4+k,
 * ..., then (lane 0 + lane 2) + (lane 1 + lane 3), then the tail. */
__attribute__((target("avx2,fma"))) static double theta_dot_avx2(const linucb *m, const double *x)
{
    int d = m->d, i = 0;
    __m256d t = _mm256_setzero_pd();
    for (; i + 8 <= d; i += 8) {
        t = _mm256_add_pd(t, _mm256_mul_pd(_mm256_loadu_pd(m->theta + i), _mm256_loadu_pd(x + i)));
        t = _mm256_add_pd(
            t, _mm256_mul_pd(_mm256_loadu_pd(m->theta + i + 4), _mm256_loadu_pd(x + i + 4)));
    }
    double v[4];
    _mm256_storeu_pd(v, t);
    double dot = (v[0] + v[2]) + (v[1] + v[3]);
    for (; i + 4 <= d; i += 4) { /* cannot happen with the lanes above unless d%8 >= 4 */
        for (int k = 0; k < 4; k++)
            v[k] = m->theta[i + k] * x[i + k];
        dot += (v[0] + v[2]) + (v[1] + v[3]);
    }
    for (; i < d; i++)
        dot += m->theta[i] * x[i];
    return dot;
}

/* xs = (float)x; returns Σ xs_i² (eight single-precision lanes, then the
 * tail, summed in double), the ‖x‖² of the error bound. */
__attribute__((target("avx2,fma"))) static double convert_x_avx2(float *xs, const double *x, int d)
{
    __m256 l = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= d; i += 8) {
        __m128 lo = _mm256_cvtpd_ps(_mm256_loadu_pd(x + i));
        __m128 hi = _mm256_cvtpd_ps(_mm256_loadu_pd(x + i + 4));
        __m256 xf = _mm256_set_m128(hi, lo);
        _mm256_storeu_ps(xs + i, xf);
        l = _mm256_fmadd_ps(xf, xf, l);
    }
    float lv[8];
    _mm256_storeu_ps(lv, l);
    double ll = 0.0;
    for (int k = 0; k < 8; k++)
        ll += lv[k];
    for (; i < d; i++) {
        xs[i] = (float)x[i];
        ll += (double)xs[i] * (double)xs[i];
    }
    return ll;
}

/* x as the quantized scores see it (one per decision, shared by the arms). */
struct xquant {
    const float *xs;   /* (float)x, zero-padded to dp */
    const int16_t *xi; /* ξ_j = round(xs_j/sx), |ξ_j| <= ximax (zero-padded) */
    double l2;         /* Σ xs_i² */
    double maxabs;     /* max |xs_i| */
    double sx;         /* the step: x̃_j = sx·ξ_j, |x̃_j − xs_j| <= 0.502·sx */
};

/* xi from xs (dp entries) with ximax = min(32767, 2^24/dp − 1), so that
 * every S_i of quad_i8 (<= 128·ximax·dp in magnitude) fits 31 bits. The
 * product xs·inv is rounded once in single precision (<= 32767·2^-24 < 0.002
 * off), then to the nearest integer: |ξ_j − xs_j/sx| <= 0.502 with
 * sx = 1/inv exactly. */
__attribute__((target("avx2,fma"))) static void quantize_x_avx2(struct xquant *q, int16_t *xi,
                                                                int dp)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 mx = _mm256_setzero_ps();
    for (int i = 0; i < dp; i += 8)
        mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(q->xs + i), absmask));
    float f[8];
    _mm256_storeu_ps(f, mx);
    float m = 0.0f;
    for (int k = 0; k < 8; k++)
        m = f[k] > m ? f[k] : m;
    int ximax = 16777216 / dp - 1;
    if (ximax > 32767)
        ximax = 32767;
    float inv = m > 0.0f ? (float)ximax / m : 0.0f;
    q->maxabs = (double)m;
    q->sx = inv > 0.0f ? 1.0 / (double)inv : 0.0;
    const __m256 iv = _mm256_set1_ps(inv);
    for (int i = 0; i < dp; i += 16) {
        __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(q->xs + i), iv));
        __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(q->xs + i + 8), iv));
        /* packs interleaves the 128-bit lanes: put them back in order */
        __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8);
        _mm256_storeu_si256((__m256i *)(void *)(xi + i), p);
    }
    q->xi = xi;
}

__attribute__((target("avx2,fma"))) static double prologue_avx2(const linucb *m, const double *x)
{
    double dot = theta_dot_avx2(m, x);
    convert_x_avx2(m->xs, x, m->d);
    return dot;
}
#endif

static double prologue(const linucb *m, const double *x)
{
#ifdef HAVE_AVX2_KERNEL
    if (avx2_supported())
        return prologue_avx2(m, x);
#endif
    return prologue_generic(m, x);
}

void linucb_score(const linucb *m, const double *x, double *mean, double *width)
{
    assert(m != NULL && x != NULL);
    int d = m->d;
    double dot = prologue(m, x);
    if (mean != NULL)
        *mean = m->mu0 + dot;
    if (width != NULL) {
        double q = quad_packed(m->P, m->xs, d);
        *width = sqrt(q > 0.0 ? q : 0.0);
    }
}

#ifdef HAVE_AVX2_KERNEL
/* One model's quantized score (fine: both planes, else the coarse one): see
 * linucb_score_approx and linucb_score_fine_many.
 *
 * The bound, in the scaled units of H = s·A⁻¹ (s = 1/hinv), between
 *   Q̃ = 2·sx·fl(Σ_i xs_i·m_i·S_i) + fl(Σ hd_i·xs_i²)   (this function),
 *       S_i = Σ_{j>i} q_ij·ξ_j, i.e. Q̃ ≈ 2·Σ_{i<j} H̃_ij·xs_i·x̃_j + diagonal,
 *   Q  = s·fl(xsᵀ·P·xs), P = fp32(A⁻¹)                  (linucb_score),
 * both on the same xs (so x's rounding to single precision does not count):
 * - storage: H̃ − H = E off the diagonal, so |xsᵀ·E·xs| <= enorm·l2 (enorm
 *   from the row multipliers and the stored integers, refresh_quant); hd
 *   and P are H and A⁻¹ rounded
 *   to single precision (<= 2^-24 relative each).
 * - x's quantization: |2·Σ_{i<j} H̃_ij·xs_i·(x̃_j − xs_j)| <= 1.004·sx·Σ_i
 *   |xs_i|·R_i = 1.004·sx·t (R_i = Σ_{j>i} |H̃_ij|, rounded up).
 * - the products c_i = xs_i·m_i, float(S_i) and c_i·S_i: 3 roundings per
 *   row (S_i itself is exact), on Σ|terms| <= maxabs·t, twice (Q̃ has 2·):
 *   <= 6.1·2^-24·maxabs·t < 2^-20·maxabs·t (the fine level has two planes:
 *   t1 + t2).
 * - single-precision sums of the diagonal (<= dp/8 + 3 roundings per term)
 *   and of linucb_score (<= d/16 + 5, quad_packed_avx2), and the rounding
 *   of hd and P: (dp/8 + d/16 + 10)·2^-24 times Σ|H_ij||xs_i||xs_j| <= cs²
 *   (|H_ij| <= sqrt(H_ii·H_jj), H being positive semi-definite).
 * The sums l2, cs and t (<= dp/8 + 2 roundings, < 2^-11 for d <= 65536) and
 * the products by hinv are covered by the factor 1 + 2^-10, and products
 * that underflow (< 2^-126) by the absolute 2^-100·(1 + hinv). */
static void score_quant(const linucb *m, const double *x, const struct xquant *xq, int fine,
                        double *mean, double *width, double *qerr)
{
    int dp = m->dp;
    const float *m1 = m->aux + 2 * dp, *m2 = m->aux + 3 * dp;
    *mean = m->mu0 + theta_dot_avx2(m, x);
    /* rs = {Σ hsd_i·|xs_i|, Σ hd_i·xs_i², Σ R1_i·|xs_i|, Σ R2_i·|xs_i|}
     * over the dp (zero-padded) entries, eight single-precision lanes each,
     * the lanes summed in double */
    double rs[4];
    double k = quad_i8(m->Q1, m1, xq->xi, xq->xs, dp, m->aux, rs);
    if (fine)
        k += quad_i8(m->Q2, m2, xq->xi, xq->xs, dp, NULL, NULL);
    double q = (2.0 * xq->sx * k + rs[1]) * m->hinv;
    *width = sqrt(q > 0.0 ? q : 0.0);
    double sums = ((double)dp / 8.0 + (double)m->d / 16.0 + 12.0) * 0x1p-24 * rs[0] * rs[0];
    double e =
        fine ? m->enorm2 * xq->l2 + 1.004 * xq->sx * rs[3] + 0x1p-20 * xq->maxabs * (rs[2] + rs[3])
             : m->enorm1 * xq->l2 + (1.004 * xq->sx + 0x1p-20 * xq->maxabs) * rs[2];
    *qerr = (e + sums) * (1.0 + 0x1p-10) * m->hinv + 0x1p-100 * (1.0 + m->hinv);
}
#endif

/* linucb_score_approx_many (fine = 0) and linucb_score_fine_many (1). */
static void approx_many(const linucb *const *ms, int n, const double *x, int fine, double *mean,
                        double *width, double *qerr)
{
    assert(n >= 0 &&
           (n == 0 || (ms != NULL && x != NULL && mean != NULL && width != NULL && qerr != NULL)));
#ifdef HAVE_AVX2_KERNEL
    if (n > 0 && ms[0]->Q1 != NULL) { /* then every model has the copy (half_supported) */
        /* x converted and quantized once, into the first model's scratch */
        struct xquant xq = {.xs = ms[0]->xs};
        xq.l2 = convert_x_avx2(ms[0]->xs, x, ms[0]->d);
        quantize_x_avx2(&xq, ms[0]->xi, ms[0]->dp);
        for (int k = 0; k < n; k++) {
            assert(ms[k]->d == ms[0]->d);
            score_quant(ms[k], x, &xq, fine, &mean[k], &width[k], &qerr[k]);
        }
        return;
    }
#else
    (void)fine;
#endif
    for (int k = 0; k < n; k++) {
        linucb_score(ms[k], x, &mean[k], &width[k]);
        qerr[k] = 0.0;
    }
}

void linucb_score_approx_many(const linucb *const *ms, int n, const double *x, double *mean,
                              double *width, double *qerr)
{
    approx_many(ms, n, x, 0, mean, width, qerr);
}

void linucb_score_fine_many(const linucb *const *ms, int n, const double *x, double *mean,
                            double *width, double *qerr)
{
    approx_many(ms, n, x, 1, mean, width, qerr);
}

void linucb_score_approx(const linucb *m, const double *x, double *mean, double *width,
                         double *qerr)
{
    assert(m != NULL && x != NULL && mean != NULL && width != NULL && qerr != NULL);
    linucb_score_approx_many(&m, 1, x, mean, width, qerr);
}

int linucb_dim(const linucb *m)
{
    return m->d;
}

uint64_t linucb_count(const linucb *m)
{
    return m->n;
}

double linucb_mu0(const linucb *m)
{
    return m->mu0;
}

const double *linucb_A(const linucb *m)
{
    return m->A;
}

const double *linucb_Ainv(const linucb *m)
{
    return m->Ainv;
}

const double *linucb_b(const linucb *m)
{
    return m->b;
}

const double *linucb_theta(const linucb *m)
{
    return m->theta;
}

int linucb_set_state(linucb *m, const double *A, const double *b, uint64_t n)
{
    assert(m != NULL && A != NULL && b != NULL);
    size_t d = (size_t)m->d, dd = d * d;
    if (!all_finite(A, dd) || !all_finite(b, d))
        return BD_ERR_INVALID;
    /* Check that A is SPD before touching the model: on failure the old state
     * stays. */
    int rc = invert_from(m, A);
    if (rc != BD_OK)
        return rc;
    /* Only the upper triangle of A is read (as by the inversion above). */
    memcpy(m->A, A, dd * sizeof(double));
    for (size_t i = 0; i < d; i++)
        for (size_t j = i + 1; j < d; j++)
            m->A[j * d + i] = m->A[i * d + j];
    memcpy(m->b, b, d * sizeof(double));
    m->n = n;
    m->since_refactor = 0;
    recompute_theta(m);
    refresh_packed(m);
    return BD_OK;
}

void linucb_set_prior(linucb *m, double prior_quality)
{
    assert(m != NULL);
    if (!isfinite(prior_quality))
        return;
    m->b[0] += m->lambda * (prior_quality - m->mu0);
    recompute_theta(m);
}
