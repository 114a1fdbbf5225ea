/* Unit tests for linucb: against an independent reference written here
 * (plain-loop Cholesky solves; no code shared with src/linucb.c). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "banditd/err.h"
#include "banditd/linucb.h"
#include "banditd/util.h"

/* ---- reference linear algebra (row-major, plain loops) ---- */

/* In-place Cholesky A = LLᵀ (lower triangle of a holds L). 0 or -1. */
static int ref_cholesky(double *a, int n)
{
    for (int j = 0; j < n; j++) {
        double s = a[j * n + j];
        for (int k = 0; k < j; k++)
            s -= a[j * n + k] * a[j * n + k];
        if (!(s > 0.0))
            return -1;
        double l = sqrt(s);
        a[j * n + j] = l;
        for (int i = j + 1; i < n; i++) {
            double t = a[i * n + j];
            for (int k = 0; k < j; k++)
                t -= a[i * n + k] * a[j * n + k];
            a[i * n + j] = t / l;
        }
    }
    return 0;
}

/* Solve LLᵀ y = rhs with the factor from ref_cholesky. */
static void ref_chol_solve(const double *l, int n, const double *rhs, double *y)
{
    for (int i = 0; i < n; i++) {
        double s = rhs[i];
        for (int k = 0; k < i; k++)
            s -= l[i * n + k] * y[k];
        y[i] = s / l[i * n + i];
    }
    for (int i = n - 1; i >= 0; i--) {
        double s = y[i];
        for (int k = i + 1; k < n; k++)
            s -= l[k * n + i] * y[k];
        y[i] = s / l[i * n + i];
    }
}

/* θ = A⁻¹b and the full inverse, by Cholesky solves. */
static int ref_solve(const double *A, const double *b, int n, double *theta, double *inv)
{
    double *l = malloc(sizeof(double) * n * n), *e = calloc(n, sizeof(double)),
           *col = malloc(sizeof(double) * n);
    ck_assert(l && e && col);
    memcpy(l, A, sizeof(double) * n * n);
    int rc = ref_cholesky(l, n);
    if (rc == 0) {
        ref_chol_solve(l, n, b, theta);
        for (int j = 0; j < n; j++) {
            e[j] = 1.0;
            ref_chol_solve(l, n, e, col);
            e[j] = 0.0;
            for (int i = 0; i < n; i++)
                inv[i * n + j] = col[i];
        }
    }
    free(l);
    free(e);
    free(col);
    return rc;
}

static double max_abs(const double *v, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        if (fabs(v[i]) > m)
            m = fabs(v[i]);
    return m;
}

static double max_abs_diff(const double *a, const double *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        if (fabs(a[i] - b[i]) > m)
            m = fabs(a[i] - b[i]);
    return m;
}

static void random_unit(struct util_rng *rng, double *x, int d)
{
    double n = 0.0;
    for (int i = 0; i < d; i++) {
        x[i] = util_rng_normal(rng);
        n += x[i] * x[i];
    }
    for (int i = 0; i < d; i++)
        x[i] /= sqrt(n);
}

/* N random updates on the model and on a reference (A, b) kept here; then
 * compare θ, A⁻¹, the score's mean and width. */
static void check_against_reference(int d, int refactor_every, double lambda, double mu0)
{
    const int N = 500;
    struct util_rng rng;
    util_rng_seed(&rng, 1000 + (uint64_t)d + (uint64_t)refactor_every);
    linucb *m = linucb_create(d, lambda, mu0, 1.0, refactor_every);
    ck_assert_ptr_nonnull(m);
    size_t dd = (size_t)d * d;
    double *A = calloc(dd, sizeof(double)), *b = calloc(d, sizeof(double));
    double *theta = calloc(d, sizeof(double)), *inv = calloc(dd, sizeof(double));
    double *x = calloc(d, sizeof(double));
    ck_assert(A && b && theta && inv && x);
    for (int i = 0; i < d; i++)
        A[i * d + i] = lambda;
    for (int t = 0; t < N; t++) {
        random_unit(&rng, x, d);
        /* vary the scale a little: not every x is exactly unit */
        double s = 0.5 + util_rng_uniform(&rng);
        for (int i = 0; i < d; i++)
            x[i] *= s;
        double r = util_rng_uniform(&rng);
        ck_assert_int_eq(linucb_update(m, x, r), BD_OK);
        for (int i = 0; i < d; i++) {
            for (int j = 0; j < d; j++)
                A[i * d + j] += x[i] * x[j];
            b[i] += (r - mu0) * x[i];
        }
    }
    ck_assert_uint_eq(linucb_count(m), (uint64_t)N);
    ck_assert_int_eq(ref_solve(A, b, d, theta, inv), 0);

    ck_assert_double_le(max_abs_diff(linucb_A(m), A, dd), 1e-12 * max_abs(A, dd));
    ck_assert_double_le(max_abs_diff(linucb_b(m), b, d), 1e-12 * max_abs(b, d));
    double terr = max_abs_diff(linucb_theta(m), theta, d) / max_abs(theta, d);
    double ierr = max_abs_diff(linucb_Ainv(m), inv, dd) / max_abs(inv, dd);
    ck_assert_msg(terr < 1e-9, "theta rel err %g (d=%d, refactor_every=%d)", terr, d,
                  refactor_every);
    ck_assert_msg(ierr < 1e-9, "Ainv rel err %g (d=%d, refactor_every=%d)", ierr, d,
                  refactor_every);

    /* mean and width at fresh points */
    for (int k = 0; k < 20; k++) {
        random_unit(&rng, x, d);
        double mean, width, q = 0.0, dot = 0.0;
        linucb_score(m, x, &mean, &width);
        for (int i = 0; i < d; i++) {
            dot += theta[i] * x[i];
            for (int j = 0; j < d; j++)
                q += x[i] * inv[i * d + j] * x[j];
        }
        ck_assert_double_eq_tol(mean, mu0 + dot, 1e-9);
        /* width uses a single-precision copy of A⁻¹: ~1e-6 relative */
        ck_assert_msg(fabs(width - sqrt(q)) <= 1e-5 * sqrt(q), "width %.9g vs %.9g", width,
                      sqrt(q));
    }
    free(A);
    free(b);
    free(theta);
    free(inv);
    free(x);
    linucb_destroy(m);
}

START_TEST(test_sherman_morrison_d16)
{
    check_against_reference(16, 1 << 30, 1.0, 1.0);
}
END_TEST

START_TEST(test_sherman_morrison_d64)
{
    check_against_reference(64, 1 << 30, 0.5, 1.0);
}
END_TEST

START_TEST(test_refactor_path_d16)
{
    check_against_reference(16, 7, 1.0, 0.0);
}
END_TEST

START_TEST(test_refactor_path_d64)
{
    check_against_reference(64, 1, 2.0, 1.0);
}
END_TEST

START_TEST(test_fresh_model)
{
    linucb *m = linucb_create(8, 2.0, 1.0, 1.0, 100);
    ck_assert_ptr_nonnull(m);
    double x[8] = {0.6, 0.8, 0, 0, 0, 0, 0, 0}, mean, width;
    linucb_score(m, x, &mean, &width);
    /* A = 2I: θ = 0, width = sqrt(|x|²/2) */
    ck_assert_double_eq_tol(mean, 1.0, 1e-15);
    ck_assert_double_eq_tol(width, sqrt(0.5), 1e-7);
    ck_assert_int_eq(linucb_dim(m), 8);
    ck_assert_double_eq(linucb_mu0(m), 1.0);
    ck_assert_uint_eq(linucb_count(m), 0);
    linucb_destroy(m);
}
END_TEST

START_TEST(test_invalid_params)
{
    ck_assert_ptr_null(linucb_create(0, 1.0, 1.0, 1.0, 10));
    ck_assert_ptr_null(linucb_create(8, 0.0, 1.0, 1.0, 10));
    ck_assert_ptr_null(linucb_create(8, -1.0, 1.0, 1.0, 10));
    ck_assert_ptr_null(linucb_create(8, 1.0, 1.0, 0.0, 10));
    ck_assert_ptr_null(linucb_create(8, 1.0, 1.0, 1.5, 10));
    ck_assert_ptr_null(linucb_create(8, 1.0, NAN, 1.0, 10));
    linucb *m = linucb_create(4, 1.0, 1.0, 1.0, 10);
    ck_assert_ptr_nonnull(m);
    double x[4] = {1, 0, 0, 0};
    ck_assert_int_eq(linucb_update(m, x, NAN), BD_ERR_INVALID);
    x[2] = INFINITY;
    ck_assert_int_eq(linucb_update(m, x, 0.5), BD_ERR_INVALID);
    ck_assert_uint_eq(linucb_count(m), 0);
    ck_assert_double_eq(linucb_A(m)[0], 1.0);
    linucb_destroy(m);
}
END_TEST

/* γ = 0.999 over 10⁶ updates (TEST_LINUCB_UPDATES) at d = 8: A stays ⪰ λI (Cholesky of A − 0.999λI
 * succeeds), A matches the recursion computed here, A⁻¹ matches A. */
START_TEST(test_forgetting_stays_positive_definite)
{
    enum { D = 8 };
    const double lambda = 1.0, g = 0.999;
    linucb *m = linucb_create(D, lambda, 1.0, g, 1000);
    ck_assert_ptr_nonnull(m);
    struct util_rng rng;
    util_rng_seed(&rng, 7);
    double A[D * D] = {0}, b[D] = {0}, x[D];
    for (int i = 0; i < D; i++)
        A[i * D + i] = lambda;
    /* TEST_LINUCB_UPDATES shrinks the run for slow builds (make check's ASan phase). */
    const char *env = getenv("TEST_LINUCB_UPDATES");
    long n_updates = env && atol(env) > 0 ? atol(env) : 1000000;
    for (long t = 0; t < n_updates; t++) {
        /* a degenerate stream: mostly a few axis directions */
        if (t % 4 == 0) {
            random_unit(&rng, x, D);
        } else {
            memset(x, 0, sizeof(x));
            x[t % 3] = 1.0;
        }
        double r = (double)(t % 5) / 4.0;
        ck_assert_int_eq(linucb_update(m, x, r), BD_OK);
        for (int i = 0; i < D; i++) {
            for (int j = 0; j < D; j++)
                A[i * D + j] = g * A[i * D + j] + x[i] * x[j];
            A[i * D + i] += (1.0 - g) * lambda;
            b[i] = g * b[i] + (r - 1.0) * x[i];
        }
    }
    const double *Am = linucb_A(m);
    ck_assert_double_le(max_abs_diff(Am, A, D * D), 1e-9 * max_abs(A, D * D));
    ck_assert_double_le(max_abs_diff(linucb_b(m), b, D), 1e-9 * (1.0 + max_abs(b, D)));
    double shifted[D * D];
    memcpy(shifted, Am, sizeof(shifted));
    for (int i = 0; i < D; i++) {
        ck_assert_double_ge(Am[i * D + i], lambda * (1.0 - 1e-9));
        shifted[i * D + i] -= 0.999 * lambda;
    }
    ck_assert_int_eq(ref_cholesky(shifted, D), 0);
    double theta[D], inv[D * D];
    ck_assert_int_eq(ref_solve(Am, linucb_b(m), D, theta, inv), 0);
    ck_assert_double_le(max_abs_diff(linucb_Ainv(m), inv, D * D), 1e-9 * max_abs(inv, D * D));
    ck_assert_double_le(max_abs_diff(linucb_theta(m), theta, D), 1e-9 * max_abs(theta, D));
    linucb_destroy(m);
}
END_TEST

START_TEST(test_set_state_round_trip)
{
    enum { D = 24 };
    struct util_rng rng;
    util_rng_seed(&rng, 99);
    linucb *m1 = linucb_create(D, 1.0, 1.0, 1.0, 50);
    linucb *m2 = linucb_create(D, 1.0, 1.0, 1.0, 50);
    ck_assert(m1 && m2);
    double x[D];
    for (int t = 0; t < 300; t++) {
        random_unit(&rng, x, D);
        ck_assert_int_eq(linucb_update(m1, x, util_rng_uniform(&rng)), BD_OK);
    }
    ck_assert_int_eq(linucb_set_state(m2, linucb_A(m1), linucb_b(m1), linucb_count(m1)), BD_OK);
    ck_assert_uint_eq(linucb_count(m2), 300);
    /* A may differ by rounding below the diagonal: set_state keeps the upper half */
    ck_assert_double_le(max_abs_diff(linucb_A(m1), linucb_A(m2), D * D),
                        1e-14 * max_abs(linucb_A(m1), D * D));
    ck_assert_double_le(max_abs_diff(linucb_Ainv(m1), linucb_Ainv(m2), D * D),
                        1e-10 * max_abs(linucb_Ainv(m1), D * D));
    ck_assert_double_le(max_abs_diff(linucb_theta(m1), linucb_theta(m2), D),
                        1e-10 * max_abs(linucb_theta(m1), D));
    /* both continue identically (up to rounding) */
    random_unit(&rng, x, D);
    ck_assert_int_eq(linucb_update(m1, x, 0.3), BD_OK);
    ck_assert_int_eq(linucb_update(m2, x, 0.3), BD_OK);
    double mu1, w1, mu2, w2;
    linucb_score(m1, x, &mu1, &w1);
    linucb_score(m2, x, &mu2, &w2);
    ck_assert_double_eq_tol(mu1, mu2, 1e-10);
    ck_assert_double_eq_tol(w1, w2, 1e-6 * w1);

    /* a non-SPD or non-finite state is refused and the old state stays */
    double bad[D * D] = {0}, b[D] = {0};
    bad[0] = -1.0;
    double theta_before[D];
    memcpy(theta_before, linucb_theta(m2), sizeof(theta_before));
    ck_assert_int_eq(linucb_set_state(m2, bad, b, 5), BD_ERR_NUMERIC);
    bad[0] = NAN;
    ck_assert_int_eq(linucb_set_state(m2, bad, b, 5), BD_ERR_INVALID);
    ck_assert_uint_eq(linucb_count(m2), 301);
    ck_assert_double_le(max_abs_diff(linucb_theta(m2), theta_before, D), 0.0);
    linucb_destroy(m1);
    linucb_destroy(m2);
}
END_TEST

START_TEST(test_prior)
{
    linucb *m = linucb_create(10, 2.0, 1.0, 1.0, 100);
    ck_assert_ptr_nonnull(m);
    linucb_set_prior(m, 0.6);
    /* b = λ(prior − μ₀)e₀, θ = b/λ: the prediction at e₀ is the prior */
    ck_assert_double_eq_tol(linucb_b(m)[0], 2.0 * (0.6 - 1.0), 1e-15);
    double e0[10] = {1}, mean, width;
    linucb_score(m, e0, &mean, &width);
    ck_assert_double_eq_tol(mean, 0.6, 1e-12);
    /* other directions are unaffected */
    double e3[10] = {0, 0, 0, 1};
    linucb_score(m, e3, &mean, &width);
    ck_assert_double_eq_tol(mean, 1.0, 1e-15);
    /* the prior survives refactoring (it lives in b) */
    ck_assert_int_eq(linucb_refactor(m), BD_OK);
    linucb_score(m, e0, &mean, &width);
    ck_assert_double_eq_tol(mean, 0.6, 1e-12);
    linucb_destroy(m);
}
END_TEST

/* Learning: with noise-free linear rewards the fitted θ approaches the truth. */
START_TEST(test_learns_linear_function)
{
    enum { D = 12 };
    struct util_rng rng;
    util_rng_seed(&rng, 5);
    double truth[D], x[D];
    random_unit(&rng, truth, D);
    linucb *m = linucb_create(D, 1.0, 0.5, 1.0, 100);
    ck_assert_ptr_nonnull(m);
    for (int t = 0; t < 5000; t++) {
        random_unit(&rng, x, D);
        double r = 0.5;
        for (int i = 0; i < D; i++)
            r += 0.3 * truth[i] * x[i];
        ck_assert_int_eq(linucb_update(m, x, r), BD_OK);
    }
    for (int i = 0; i < D; i++)
        ck_assert_double_eq_tol(linucb_theta(m)[i], 0.3 * truth[i], 0.01);
    linucb_destroy(m);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("linucb");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_sherman_morrison_d16);
    tcase_add_test(tc, test_sherman_morrison_d64);
    tcase_add_test(tc, test_refactor_path_d16);
    tcase_add_test(tc, test_refactor_path_d64);
    tcase_add_test(tc, test_fresh_model);
    tcase_add_test(tc, test_invalid_params);
    tcase_add_test(tc, test_forgetting_stays_positive_definite);
    tcase_add_test(tc, test_set_state_round_trip);
    tcase_add_test(tc, test_prior);
    tcase_add_test(tc, test_learns_linear_function);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
