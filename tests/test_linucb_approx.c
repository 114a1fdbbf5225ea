/* Unit tests for linucb_score_approx (the 8-bit width), linucb_score_fine_many
 * (the 16-bit one) and the router's use of them: the approximate width² must
 * lie within the returned bound of linucb_score's, the bound must not be
 * vacuous, and router_decide must choose the arm that exact widths would
 * choose (reference computed here from linucb_score, with the documented
 * score formula). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "banditd/config.h"
#include "banditd/err.h"
#include "banditd/linucb.h"
#include "banditd/router.h"
#include "banditd/util.h"

static void random_unit(struct util_rng *rng, double *x, int d, double spread)
{
    double n = 0.0;
    for (int i = 0; i < d; i++) {
        x[i] = (util_rng_uniform(rng) - 0.5) * (i % 7 == 0 ? spread : 1.0);
        n += x[i] * x[i];
    }
    for (int i = 0; i < d; i++)
        x[i] /= sqrt(n);
}

static void check_dim(int d, int updates, double lambda)
{
    struct util_rng rng;
    util_rng_seed(&rng, (uint64_t)(d * 1000 + updates));
    linucb *m = linucb_create(d, lambda, 1.0, 1.0, 50);
    ck_assert_ptr_nonnull(m);
    double *x = malloc(sizeof(double) * (size_t)d);
    ck_assert_ptr_nonnull(x);
    for (int t = 0; t < updates; t++) {
        random_unit(&rng, x, d, 4.0);
        ck_assert_int_eq(linucb_update(m, x, util_rng_uniform(&rng)), BD_OK);
    }
    for (int t = 0; t < 50; t++) {
        random_unit(&rng, x, d, t % 2 ? 10.0 : 1.0);
        double me, we, ma, wa, q, mf, wf, qf;
        const linucb *one = m;
        linucb_score(m, x, &me, &we);
        linucb_score_approx(m, x, &ma, &wa, &q);
        linucb_score_fine_many(&one, 1, x, &mf, &wf, &qf);
        ck_assert_double_eq_tol(ma, me, 1e-12);
        ck_assert_msg(memcmp(&ma, &mf, sizeof ma) == 0, "fine mean differs");
        ck_assert_msg(q >= 0.0 && qf >= 0.0, "negative bound");
        double dq = fabs(wa * wa - we * we), dqf = fabs(wf * wf - we * we);
        ck_assert_msg(dq <= q, "d=%d: |Δw²| %.3g > bound %.3g", d, dq, q);
        ck_assert_msg(dqf <= qf, "d=%d fine: |Δw²| %.3g > bound %.3g", d, dqf, qf);
        /* the bounds are not vacuous (8 bits: a few % of w² on these models;
         * 16 bits: ~100 times less), and the actual errors are small */
        ck_assert_msg(q <= 0.5 * we * we + 1e-12, "d=%d: bound %.3g vs w² %.3g", d, q, we * we);
        ck_assert_msg(qf <= 0.01 * we * we + 1e-12, "d=%d fine: bound %.3g vs w² %.3g", d, qf,
                      we * we);
        ck_assert_msg(dq <= 2e-2 * we * we + 1e-12, "d=%d: |Δw²| %.3g vs w² %.3g", d, dq, we * we);
        ck_assert_msg(dqf <= 2e-4 * we * we + 1e-12, "d=%d fine: |Δw²| %.3g vs w² %.3g", d, dqf,
                      we * we);
        if (t == 0)
            printf("d=%d updates=%d: bound/w² coarse %.3g fine %.3g; |Δw²|/w² coarse %.3g fine "
                   "%.3g\n",
                   d, updates, q / (we * we), qf / (we * we), dq / (we * we), dqf / (we * we));
    }
    free(x);
    linucb_destroy(m);
}

START_TEST(approx_within_bound)
{
    check_dim(1, 5, 1.0); /* no off-diagonal entry at all */
    check_dim(8, 0, 1.0);
    check_dim(13, 40, 1.0);  /* d not a multiple of 8: padded rows */
    check_dim(24, 60, 1.0);  /* a multiple of 8, not of 16: padded columns */
    check_dim(40, 80, 1.0);  /* one whole block of 32 rows and a partial one */
    check_dim(96, 150, 1.0); /* three whole blocks */
    check_dim(64, 200, 0.5);
    check_dim(256, 300, 1.0);
    check_dim(256, 20, 2.0);
    check_dim(200, 2000, 1.0); /* many updates: large off-diagonal terms */
}
END_TEST

START_TEST(approx_follows_state_changes)
{
    /* after set_state / refactor the half copy is refreshed too */
    int d = 16;
    linucb *m = linucb_create(d, 1.0, 1.0, 1.0, 0);
    ck_assert_ptr_nonnull(m);
    double *A = calloc((size_t)(d * d), sizeof(double)), b[16] = {0}, x[16];
    ck_assert_ptr_nonnull(A);
    for (int i = 0; i < d; i++)
        A[i * d + i] = 4.0; /* A⁻¹ = I/4: w² = |x|²/4 */
    ck_assert_int_eq(linucb_set_state(m, A, b, 3), BD_OK);
    for (int i = 0; i < d; i++)
        x[i] = i == 3 ? 1.0 : 0.0;
    double mean, w, q;
    linucb_score_approx(m, x, &mean, &w, &q);
    ck_assert_msg(fabs(w * w - 0.25) <= q, "w² %.9g", w * w);
    ck_assert_double_eq_tol(w, 0.5, 1e-3);
    free(A);
    linucb_destroy(m);
}
END_TEST

static struct config *make_config(int n_arms, int d)
{
    struct config *cfg = calloc(1, sizeof(*cfg));
    ck_assert_ptr_nonnull(cfg);
    cfg->n_arms = (size_t)n_arms;
    for (int i = 0; i < n_arms; i++) {
        snprintf(cfg->arms[i].name, sizeof(cfg->arms[i].name), "arm%d", i);
        /* nearly equal prices: scores close, so refinement is exercised */
        cfg->arms[i].price_in_per_mtok = 1.0 + 0.001 * i;
        cfg->arms[i].price_out_per_mtok = 2.0;
    }
    cfg->router.policy = CONFIG_POLICY_LINUCB;
    cfg->router.alpha = 2.0; /* a large α makes widths decide */
    cfg->router.lambda = 1.0;
    cfg->router.mu0 = 1.0;
    cfg->router.dim = d;
    cfg->router.forgetting = 1.0;
    cfg->router.thompson_v = 0.1;
    cfg->router.seed = 1;
    cfg->router.refactor_every = 100;
    return cfg;
}

/* n_arms arms of dimension d (<= 256), a few updates each (3 + arm index),
 * then 400 decisions checked against exact twins. Returns the router's
 * refinement counts. */
static struct router_refine_stats check_argmax(int n_arms, int d)
{
    struct config *cfg = make_config(n_arms, d);
    router *r = router_create(cfg);
    ck_assert_ptr_nonnull(r);
    /* twins: the same models outside the router, scored exactly */
    linucb *twin[ROUTER_MAX_ARMS];
    for (int a = 0; a < n_arms; a++) {
        twin[a] =
            linucb_create(d, cfg->router.lambda, cfg->router.mu0, 1.0, cfg->router.refactor_every);
        ck_assert_ptr_nonnull(twin[a]);
    }
    struct util_rng rng;
    util_rng_seed(&rng, 99);
    double x[256];
    for (int a = 0; a < n_arms; a++)
        for (int t = 0; t < 3 + a; t++) {
            random_unit(&rng, x, d, 1.0);
            ck_assert_int_eq(router_feedback(r, a, x, 0.5), BD_OK);
            ck_assert_int_eq(linucb_update(twin[a], x, 0.5), BD_OK);
        }
    struct pref_weights w = {.quality = 1.0}; /* quality only */
    int close_calls = 0;
    for (int t = 0; t < 400; t++) {
        random_unit(&rng, x, d, t % 3 ? 1.0 : 6.0);
        struct router_decision dec;
        ck_assert_int_eq(router_decide(r, x, &w, 100, NULL, -1, &dec), BD_OK);
        ck_assert_int_eq(dec.n, n_arms);
        /* reference argmax of μ₀ + θᵀx + α·width with exact widths (ties to the
         * lower index, as the router documents) */
        int best = -1;
        double best_q = -INFINITY, second = -INFINITY;
        for (int a = 0; a < n_arms; a++) {
            double mean, width;
            linucb_score(twin[a], x, &mean, &width);
            double q = mean + cfg->router.alpha * width;
            if (q > best_q) {
                second = best_q;
                best_q = q;
                best = a;
            } else if (q > second) {
                second = q;
            }
        }
        if (best_q - second < 1e-2)
            close_calls++;
        /* exact except for differences at the level of rounding in the sums */
        if (best_q - second > 1e-12)
            ck_assert_msg(dec.order[0] == best, "t=%d: chose %d, exact best %d (gap %.3g)", t,
                          dec.order[0], best, best_q - second);
        int seen[ROUTER_MAX_ARMS] = {0};
        for (int k = 0; k < n_arms; k++)
            seen[dec.order[k]]++;
        for (int a = 0; a < n_arms; a++)
            ck_assert_int_eq(seen[a], 1);
    }
    /* the data must contain near ties, or the test proves nothing */
    ck_assert_msg(close_calls > 5, "only %d close calls", close_calls);
    struct router_refine_stats st;
    router_refine_stats(r, &st);
    printf("argmax d=%d arms=%d: %d close calls; refined: fine %llu decisions (%llu arms), "
           "exact %llu (%llu arms)\n",
           d, n_arms, close_calls, (unsigned long long)st.fine_decisions,
           (unsigned long long)st.fine_arms, (unsigned long long)st.exact_decisions,
           (unsigned long long)st.exact_arms);
    for (int a = 0; a < n_arms; a++)
        linucb_destroy(twin[a]);
    router_destroy(r);
    free(cfg);
    return st;
}

START_TEST(router_argmax_is_exact)
{
    struct router_refine_stats a = check_argmax(8, 32);
    struct router_refine_stats b = check_argmax(8, 61);   /* padded rows and columns */
    struct router_refine_stats c = check_argmax(16, 256); /* the benchmark's dimension */
    /* both refinement stages ran (on the fine copy, then exactly), so the
     * exactness above covers them; when the exact path runs (no AVX2) there
     * is nothing to refine */
    const linucb *probe_m = NULL;
    linucb *probe = linucb_create(8, 1.0, 1.0, 1.0, 0);
    ck_assert_ptr_nonnull(probe);
    probe_m = probe;
    double xp[8] = {1, 0, 0, 0, 0, 0, 0, 0}, mp, wp, qp;
    linucb_score_approx_many(&probe_m, 1, xp, &mp, &wp, &qp);
    linucb_destroy(probe);
    if (qp > 0.0) {
        ck_assert(a.fine_decisions + b.fine_decisions + c.fine_decisions > 0);
        ck_assert(a.exact_decisions + b.exact_decisions + c.exact_decisions > 0);
        ck_assert(a.exact_decisions <= a.fine_decisions && c.exact_arms <= c.fine_arms);
    } else {
        ck_assert(a.fine_decisions + b.fine_decisions + c.fine_decisions == 0);
    }
}
END_TEST

/* linucb_score_approx_many (one x, several models, x converted once) gives
 * bit-for-bit what linucb_score_approx gives model by model (and
 * linucb_score_fine_many what it gives for one model at a time), whatever the
 * order of the models and the dimension (padded or not). */
START_TEST(many_equals_one_by_one)
{
    static const int dims[] = {8, 13, 24, 61, 256};
    for (size_t k = 0; k < sizeof(dims) / sizeof(dims[0]); k++) {
        int d = dims[k];
        struct util_rng rng;
        util_rng_seed(&rng, (uint64_t)(77 + d));
        enum { N = 5 };
        linucb *m[N];
        const linucb *ms[N];
        double *x = malloc(sizeof(double) * (size_t)d);
        ck_assert_ptr_nonnull(x);
        for (int a = 0; a < N; a++) {
            m[a] = linucb_create(d, 1.0, 1.0, 1.0, 50);
            ck_assert_ptr_nonnull(m[a]);
            for (int t = 0; t < 10 * (a + 1); t++) {
                random_unit(&rng, x, d, 3.0);
                ck_assert_int_eq(linucb_update(m[a], x, util_rng_uniform(&rng)), BD_OK);
            }
            ms[N - 1 - a] = m[a]; /* reversed: the scratch comes from another model */
        }
        for (int t = 0; t < 20; t++) {
            random_unit(&rng, x, d, t % 2 ? 10.0 : 1.0);
            double mean[N], width[N], qerr[N];
            linucb_score_approx_many(ms, N, x, mean, width, qerr);
            for (int a = 0; a < N; a++) {
                double me, we, qe;
                linucb_score_approx(ms[a], x, &me, &we, &qe);
                ck_assert_msg(memcmp(&me, &mean[a], sizeof me) == 0 &&
                                  memcmp(&we, &width[a], sizeof we) == 0 &&
                                  memcmp(&qe, &qerr[a], sizeof qe) == 0,
                              "d=%d model %d: many (%.17g, %.17g, %.17g) != one (%.17g, %.17g, "
                              "%.17g)",
                              d, a, mean[a], width[a], qerr[a], me, we, qe);
            }
            /* the same for the fine copy */
            linucb_score_fine_many(ms, N, x, mean, width, qerr);
            for (int a = 0; a < N; a++) {
                double me, we, qe;
                linucb_score_fine_many(&ms[a], 1, x, &me, &we, &qe);
                ck_assert_msg(memcmp(&me, &mean[a], sizeof me) == 0 &&
                                  memcmp(&we, &width[a], sizeof we) == 0 &&
                                  memcmp(&qe, &qerr[a], sizeof qe) == 0,
                              "fine d=%d model %d differs", d, a);
            }
        }
        for (int a = 0; a < N; a++)
            linucb_destroy(m[a]);
        free(x);
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("linucb_approx");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, approx_within_bound);
    tcase_add_test(tc, approx_follows_state_changes);
    tcase_add_test(tc, router_argmax_is_exact);
    tcase_add_test(tc, many_equals_one_by_one);
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
