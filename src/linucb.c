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
 * matters to a ranking by mean + α·width. */
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
    /* Half-precision copy for linucb_score_approx (x86-64 with F16C only,
     * else NULL): H = fp16(s·A⁻¹) with s = 1/max diag (so |H| <= 1), the
     * diagonal halved and the lower triangle zero, in groups of 8 rows; group g
     * holds rows 8g..8g+7, columns 8g..dp-1, stored chunk by chunk (8 columns ×
     * 8 rows = 64 halves) so the kernel streams it linearly. */
    uint16_t *H;
    float *hsd;  /* sqrt of the scaled diagonal s·A⁻¹_ii (for the error bound) */
    double hinv; /* 1/s */
    int dp;      /* d rounded up to a multiple of 8 */
};

static int all_finite(const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return 0;
    return 1;
}

static void refresh_half(linucb *m);
static int half_supported(void);

static void refresh_packed(linucb *m)
{
    refresh_half(m);
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
    m->dp = (int)((d + 7) / 8 * 8);
    m->xs = calloc((size_t)m->dp, sizeof(float));
    if (!m->A || !m->Ainv || !m->work || !m->b || !m->theta || !m->u || !m->P || !m->xs) {
        linucb_destroy(m);
        return NULL;
    }
    if (half_supported()) {
        size_t g = (size_t)m->dp / 8;
        m->H = malloc(32 * g * (g + 1) * sizeof(uint16_t));
        m->hsd = malloc(d * sizeof(float));
        if (!m->H || !m->hsd) {
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
    free(m->H);
    free(m->hsd);
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

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
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
/* ---- half-precision copy: refresh, kernel, approximate score ---- */

__attribute__((target("avx2,fma,f16c"))) static void refresh_half_f16c(linucb *m)
{
    int d = m->d, dp = m->dp, G = dp / 8;
    const double *Ai = m->Ainv;
    double mx = 0.0;
    for (int i = 0; i < d; i++)
        if (Ai[(size_t)i * d + i] > mx)
            mx = Ai[(size_t)i * d + i];
    if (!(mx > 0.0) || !isfinite(mx))
        mx = 1.0;
    double sc = 1.0 / mx;
    m->hinv = mx;
    for (int i = 0; i < d; i++) {
        double v = sc * Ai[(size_t)i * d + i];
        m->hsd[i] = (float)sqrt(v > 0.0 ? v : 0.0);
    }
    uint16_t *h = m->H;
    const __m256d s4 = _mm256_set1_pd(sc);
    for (int g = 0; g < G; g++) {
        for (int c = g; c < G; c++) {
            for (int k = 0; k < 8; k++) {
                int i = 8 * g + k, j0 = 8 * c;
                __m256 v;
                if (c > g && i < d && j0 + 8 <= d) {
                    const double *row = Ai + (size_t)i * d + j0;
                    __m128 lo = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_loadu_pd(row), s4));
                    __m128 hi = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_loadu_pd(row + 4), s4));
                    v = _mm256_set_m128(hi, lo);
                } else {
                    float t[8];
                    for (int u = 0; u < 8; u++) {
                        int j = j0 + u;
                        double a = (i < d && j < d && j >= i) ? sc * Ai[(size_t)i * d + j] : 0.0;
                        t[u] = (float)(j == i ? 0.5 * a : a);
                    }
                    v = _mm256_loadu_ps(t);
                }
                _mm_storeu_si128((__m128i *)h, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
                h += 8;
            }
        }
    }
}

/* xᵀHx/2 summed as Σ_g Σ_c (Σ_k x_{8g+k}·H[8g+k][8c..8c+7]) · x[8c..8c+7]: each
 * chunk of 64 halves is read once, in storage order. */
__attribute__((target("avx2,fma,f16c"))) static double quad_half_f16c(const uint16_t *H,
                                                                      const float *x, int dp)
{
    int G = dp / 8;
    const uint16_t *h = H;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
#define HV(o) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + (o))))
    for (int g = 0; g < G; g++) {
        const float *xg = x + 8 * g;
        __m256 b0 = _mm256_broadcast_ss(xg), b1 = _mm256_broadcast_ss(xg + 1);
        __m256 b2 = _mm256_broadcast_ss(xg + 2), b3 = _mm256_broadcast_ss(xg + 3);
        __m256 b4 = _mm256_broadcast_ss(xg + 4), b5 = _mm256_broadcast_ss(xg + 5);
        __m256 b6 = _mm256_broadcast_ss(xg + 6), b7 = _mm256_broadcast_ss(xg + 7);
        int c = g;
        for (; c + 1 < G; c += 2) {
            __m256 y0 = _mm256_mul_ps(HV(0), b0), y1 = _mm256_mul_ps(HV(8), b1);
            __m256 z0 = _mm256_mul_ps(HV(64), b0), z1 = _mm256_mul_ps(HV(72), b1);
            y0 = _mm256_fmadd_ps(HV(16), b2, y0);
            y1 = _mm256_fmadd_ps(HV(24), b3, y1);
            z0 = _mm256_fmadd_ps(HV(80), b2, z0);
            z1 = _mm256_fmadd_ps(HV(88), b3, z1);
            y0 = _mm256_fmadd_ps(HV(32), b4, y0);
            y1 = _mm256_fmadd_ps(HV(40), b5, y1);
            z0 = _mm256_fmadd_ps(HV(96), b4, z0);
            z1 = _mm256_fmadd_ps(HV(104), b5, z1);
            y0 = _mm256_fmadd_ps(HV(48), b6, y0);
            y1 = _mm256_fmadd_ps(HV(56), b7, y1);
            z0 = _mm256_fmadd_ps(HV(112), b6, z0);
            z1 = _mm256_fmadd_ps(HV(120), b7, z1);
            acc0 = _mm256_fmadd_ps(_mm256_add_ps(y0, y1), _mm256_loadu_ps(x + 8 * c), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_add_ps(z0, z1), _mm256_loadu_ps(x + 8 * c + 8), acc1);
            h += 128;
        }
        if (c < G) {
            __m256 y0 = _mm256_mul_ps(HV(0), b0), y1 = _mm256_mul_ps(HV(8), b1);
            y0 = _mm256_fmadd_ps(HV(16), b2, y0);
            y1 = _mm256_fmadd_ps(HV(24), b3, y1);
            y0 = _mm256_fmadd_ps(HV(32), b4, y0);
            y1 = _mm256_fmadd_ps(HV(40), b5, y1);
            y0 = _mm256_fmadd_ps(HV(48), b6, y0);
            y1 = _mm256_fmadd_ps(HV(56), b7, y1);
            acc0 = _mm256_fmadd_ps(_mm256_add_ps(y0, y1), _mm256_loadu_ps(x + 8 * c), acc0);
            h += 64;
        }
    }
#undef HV
    __m256 a = _mm256_add_ps(acc0, acc1);
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    float v[4];
    _mm_storeu_ps(v, q);
    return 2.0 * (((double)v[0] + (double)v[1]) + ((double)v[2] + (double)v[3]));
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

/* F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports does
 * not know "f16c". AVX2 being usable implies the OS saves the AVX state. */
static int half_supported(void)
{
    static int have = -1; /* benign race: every thread computes the same value */
    if (have < 0) {
        unsigned int eax, ebx, ecx = 0, edx;
        int f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
        have = avx2_supported() && f16c;
    }
    return have;
}

static void refresh_half(linucb *m)
{
    if (m->H != NULL)
        refresh_half_f16c(m);
}
#else
static int half_supported(void)
{
    return 0;
}

static void refresh_half(linucb *m)
{
    (void)m;
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

/* xs = (float)x; returns Σ|xs_i| (eight single-precision lanes summed in
 * order, then the tail in double), the l1 of the error bound. */
__attribute__((target("avx2,fma"))) static double convert_x_avx2(float *xs, const double *x, int d)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 l = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= d; i += 8) {
        __m128 lo = _mm256_cvtpd_ps(_mm256_loadu_pd(x + i));
        __m128 hi = _mm256_cvtpd_ps(_mm256_loadu_pd(x + i + 4));
        __m256 xf = _mm256_set_m128(hi, lo);
        _mm256_storeu_ps(xs + i, xf);
        l = _mm256_add_ps(l, _mm256_and_ps(xf, absmask));
    }
    float lv[8];
    _mm256_storeu_ps(lv, l);
    double ll = 0.0;
    for (int k = 0; k < 8; k++)
        ll += lv[k];
    for (; i < d; i++) {
        xs[i] = (float)x[i];
        ll += fabs((double)xs[i]);
    }
    return ll;
}

/* Σ hsd_i·|xs_i| in the same order as convert_x_avx2's sum. */
__attribute__((target("avx2,fma"))) static double hsd_sum_avx2(const float *hsd, const float *xs,
                                                               int d)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 c = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= d; i += 8)
        c = _mm256_fmadd_ps(_mm256_loadu_ps(hsd + i),
                            _mm256_and_ps(_mm256_loadu_ps(xs + i), absmask), c);
    float cv[8];
    _mm256_storeu_ps(cv, c);
    double cc = 0.0;
    for (int k = 0; k < 8; k++)
        cc += cv[k];
    for (; i < d; i++)
        cc += (double)hsd[i] * fabs((double)xs[i]);
    return cc;
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
/* One model's half-precision score on xs = (float)x (zero-padded to dp), with
 * l1 = Σ|xs_i| rounded up: see linucb_score_approx. */
static void score_half(const linucb *m, const double *x, const float *xs, double l1, double *mean,
                       double *width, double *qerr)
{
    *mean = m->mu0 + theta_dot_avx2(m, x);
    /* single-precision partial sums of <= d/8 terms: 1e-5 covers them */
    double cs = hsd_sum_avx2(m->hsd, xs, m->d) * (1.0 + 1e-5);
    double q = quad_half_f16c(m->H, xs, m->dp) * m->hinv;
    *width = sqrt(q > 0.0 ? q : 0.0);
    /* |H̃ − H| <= 2^-11·|H| per normal half (|H_ij| <= sqrt(H_ii·H_jj) as H is
     * PSD, so Σ|H_ij||x_i||x_j| <= cs²), <= 2^-25 absolute for subnormals;
     * 2^-14·cs² covers the single-precision sums and x's rounding (and the
     * exact kernel's own rounding, so the interval also holds its value). */
    *qerr = ((0x1p-11 + 0x1p-14) * cs * cs + 0x1p-24 * l1 * l1) * m->hinv;
}
#endif

void linucb_score_approx_many(const linucb *const *ms, int n, const double *x, double *mean,
                              double *width, double *qerr)
{
    assert(n >= 0 &&
           (n == 0 || (ms != NULL && x != NULL && mean != NULL && width != NULL && qerr != NULL)));
#ifdef HAVE_AVX2_KERNEL
    if (n > 0 && ms[0]->H != NULL) { /* then every model has H (half_supported) */
        /* x converted once, into the first model's scratch */
        float *xs = ms[0]->xs;
        double l1 = convert_x_avx2(xs, x, ms[0]->d) * (1.0 + 1e-5);
        for (int k = 0; k < n; k++) {
            assert(ms[k]->d == ms[0]->d);
            score_half(ms[k], x, xs, l1, &mean[k], &width[k], &qerr[k]);
        }
        return;
    }
#endif
    for (int k = 0; k < n; k++) {
        linucb_score(ms[k], x, &mean[k], &width[k]);
        qerr[k] = 0.0;
    }
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
