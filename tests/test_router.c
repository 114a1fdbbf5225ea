/* Unit tests for router: learning (regret), preferences, mechanics. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "banditd/config.h"
#include "banditd/err.h"
#include "banditd/router.h"
#include "banditd/util.h"

static struct config *make_cfg(int n_arms, int dim, enum config_policy policy)
{
    struct config *cfg = calloc(1, sizeof(*cfg));
    ck_assert_ptr_nonnull(cfg);
    cfg->n_arms = (size_t)n_arms;
    for (int i = 0; i < n_arms; i++) {
        cfg->arms[i].price_in_per_mtok = 1.0;
        cfg->arms[i].price_out_per_mtok = 1.0;
    }
    cfg->router.policy = policy;
    cfg->router.alpha = 0.1;
    cfg->router.lambda = 1.0;
    cfg->router.mu0 = 1.0;
    cfg->router.dim = dim;
    cfg->router.forgetting = 1.0;
    cfg->router.thompson_v = 0.1;
    cfg->router.seed = 1;
    cfg->router.refactor_every = 1000;
    return cfg;
}

static const struct pref_weights QUALITY_ONLY = {1.0, 0.0, 0.0, 0, 0.0};

/* x = (1/√2, z/√2) with z uniform on the unit sphere of R^(d-1): unit norm,
 * with a constant "bias" coordinate so that arm intercepts are linear. */
static void context(struct util_rng *rng, double *x, int d)
{
    double n = 0.0;
    for (int i = 1; i < d; i++) {
        x[i] = util_rng_normal(rng);
        n += x[i] * x[i];
    }
    x[0] = sqrt(0.5);
    for (int i = 1; i < d; i++)
        x[i] *= sqrt(0.5) / sqrt(n);
}

/* ---- synthetic linear bandit ----
 * 4 arms, d = 16. Expected reward of arm a: μ_a(x) = θ*_aᵀx with
 * θ*_a = (√2·c_a, 0.3·√2·u_a), c_a ∈ {0.45..0.55}, u_a a unit vector, so
 * μ_a(x) = c_a + 0.3·u_aᵀz ∈ [0.15, 0.85]; the reward adds uniform noise in
 * ±0.1 (no clipping needed: the model is exactly linear). Regret is measured
 * on expected rewards. */
enum { BA = 4, BD = 16 };

static void make_bandit(double theta[BA][BD], struct util_rng *rng)
{
    for (int a = 0; a < BA; a++) {
        double z[BD], n = 0.0;
        for (int i = 1; i < BD; i++) {
            z[i] = util_rng_normal(rng);
            n += z[i] * z[i];
        }
        theta[a][0] = sqrt(2.0) * (0.45 + 0.033 * a);
        for (int i = 1; i < BD; i++)
            theta[a][i] = sqrt(2.0) * 0.3 * z[i] / sqrt(n);
    }
}

static double expected(const double *th, const double *x)
{
    double s = 0.0;
    for (int i = 0; i < BD; i++)
        s += th[i] * x[i];
    return s;
}

/* Cumulative regret after 5k and 20k rounds. policy < 0: uniform random. */
static void run_bandit(int policy, double *reg5k, double *reg20k)
{
    struct util_rng rng, env;
    util_rng_seed(&env, 2024);
    util_rng_seed(&rng, 77);
    double theta[BA][BD];
    make_bandit(theta, &env);
    struct config *cfg =
        make_cfg(BA, BD, policy == 1 ? CONFIG_POLICY_THOMPSON : CONFIG_POLICY_LINUCB);
    router *r = router_create(cfg);
    ck_assert_ptr_nonnull(r);
    double x[BD], regret = 0.0;
    struct router_decision dec;
    for (int t = 1; t <= 20000; t++) {
        context(&env, x, BD);
        int arm;
        if (policy < 0) {
            arm = (int)(util_rng_next(&rng) % BA);
        } else {
            ck_assert_int_eq(router_decide(r, x, &QUALITY_ONLY, 100, NULL, -1, &dec), BD_OK);
            arm = dec.order[0];
        }
        double best = -1.0;
        for (int a = 0; a < BA; a++)
            if (expected(theta[a], x) > best)
                best = expected(theta[a], x);
        double mu = expected(theta[arm], x);
        regret += best - mu;
        double reward = mu + 0.2 * (util_rng_uniform(&env) - 0.5);
        if (policy >= 0)
            ck_assert_int_eq(router_feedback(r, arm, x, reward), BD_OK);
        if (t == 5000)
            *reg5k = regret;
    }
    *reg20k = regret;
    router_destroy(r);
    free(cfg);
}

/* Bounds. A learner with regret O(√T·polylog) has R(20k)/R(5k) ≈ 2 (√4);
 * one that stops improving has linear regret and a ratio of 4, so < 2.5
 * separates "still learning at the √T rate or better" from "stuck". Random
 * play has linear regret with slope E[max − mean] (≈ 0.2 here); a learner that
 * has identified the arms should be far below it: < 0.3×. */
START_TEST(test_regret_linucb)
{
    double r5, r20, q5, q20;
    run_bandit(0, &r5, &r20);
    run_bandit(-1, &q5, &q20);
    printf("regret LinUCB: R(5k)=%.1f R(20k)=%.1f ratio=%.2f; random R(20k)=%.1f (%.3fx)\n", r5,
           r20, r20 / r5, q20, r20 / q20);
    ck_assert_msg(r20 / r5 < 2.5, "LinUCB regret ratio %g (R5k=%g R20k=%g)", r20 / r5, r5, r20);
    ck_assert_msg(r20 < 0.3 * q20, "LinUCB regret %g vs random %g", r20, q20);
}
END_TEST

START_TEST(test_regret_thompson)
{
    double r5, r20, q5, q20;
    run_bandit(1, &r5, &r20);
    run_bandit(-1, &q5, &q20);
    printf("regret Thompson: R(5k)=%.1f R(20k)=%.1f ratio=%.2f; random R(20k)=%.1f (%.3fx)\n", r5,
           r20, r20 / r5, q20, r20 / q20);
    ck_assert_msg(r20 / r5 < 2.5, "Thompson regret ratio %g (R5k=%g R20k=%g)", r20 / r5, r5, r20);
    ck_assert_msg(r20 < 0.3 * q20, "Thompson regret %g vs random %g", r20, q20);
}
END_TEST

/* ---- preferences: cheap-but-worse vs costly-but-better ----
 * Two prompt types (clusters in feature space). Type A: both arms have
 * quality 0.9. Type B: cheap 0.2, strong 0.9. Strong costs ~50× more. */
enum { PD = 16 };

static void typed_context(struct util_rng *rng, int type_b, double *x)
{
    double n = 0.0;
    for (int i = 0; i < PD; i++)
        x[i] = 0.05 * util_rng_normal(rng);
    x[0] = 1.0;
    x[type_b ? 2 : 1] += 1.0;
    for (int i = 0; i < PD; i++)
        n += x[i] * x[i];
    for (int i = 0; i < PD; i++)
        x[i] /= sqrt(n);
}

START_TEST(test_preference_sweep)
{
    struct config *cfg = make_cfg(2, PD, CONFIG_POLICY_LINUCB);
    cfg->arms[0].price_in_per_mtok = 0.1; /* cheap */
    cfg->arms[0].price_out_per_mtok = 0.3;
    cfg->arms[1].price_in_per_mtok = 5.0; /* strong */
    cfg->arms[1].price_out_per_mtok = 15.0;
    router *r = router_create(cfg);
    ck_assert_ptr_nonnull(r);
    struct util_rng rng;
    util_rng_seed(&rng, 11);
    double x[PD];
    struct router_decision dec;
    /* training: the router decides (with a mid preference) but both arms get
     * feedback on both types, via pinning on alternate rounds */
    struct pref_weights mid = {0.7, 0.3, 0.0, 0, 0.0};
    for (int t = 0; t < 2000; t++) {
        int type_b = t % 4 >= 2;
        int arm = t % 2;
        typed_context(&rng, type_b, x);
        ck_assert_int_eq(router_decide(r, x, &mid, 500, NULL, arm, &dec), BD_OK);
        ck_assert_int_eq(dec.order[0], arm);
        double q = (type_b && arm == 0) ? 0.2 : 0.9;
        double reward = q + 0.1 * (util_rng_uniform(&rng) - 0.5);
        ck_assert_int_eq(router_feedback(r, arm, x, reward), BD_OK);
    }
    /* frozen evaluation: the same 200 prompts at each of 11 preferences */
    double xs[200][PD];
    for (int k = 0; k < 200; k++)
        typed_context(&rng, k % 2, xs[k]);
    double prev_share = 2.0;
    for (int s = 10; s >= 0; s--) {
        double wq = s / 10.0;
        struct pref_weights w = {wq, 1.0 - wq, 0.0, 0, 0.0};
        int strong_a = 0, strong_b = 0;
        for (int k = 0; k < 200; k++) {
            ck_assert_int_eq(router_decide(r, xs[k], &w, 500, NULL, -1, &dec), BD_OK);
            if (dec.order[0] == 1) {
                if (k % 2)
                    strong_b++;
                else
                    strong_a++;
            }
        }
        double share = (strong_a + strong_b) / 200.0;
        ck_assert_msg(share <= prev_share, "strong share rose from %g to %g at w=%g", prev_share,
                      share, wq);
        prev_share = share;
        if (s == 10)
            ck_assert_int_eq(strong_b, 100); /* quality only: every B to strong */
        if (s == 7) {
            /* the point of the product: strong only where it matters */
            ck_assert_int_ge(strong_b, 95);
            ck_assert_int_le(strong_a, 5);
        }
        if (s == 0)
            ck_assert_int_eq(strong_a + strong_b, 0); /* cost only: all cheap */
    }
    router_destroy(r);
    free(cfg);
}
END_TEST

/* ---- mechanics ---- */

START_TEST(test_ties_lower_index)
{
    struct config *cfg = make_cfg(3, 16, CONFIG_POLICY_LINUCB);
    router *r = router_create(cfg);
    ck_assert_ptr_nonnull(r);
    double x[16] = {1.0};
    struct router_decision dec;
    struct pref_weights w = {0.5, 0.5, 0.0, 0, 0.0};
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(router_decide(r, x, &w, 10, NULL, -1, &dec), BD_OK);
        ck_assert_int_eq(dec.n, 3);
        ck_assert_int_eq(dec.order[0], 0);
        ck_assert_int_eq(dec.order[1], 1);
        ck_assert_int_eq(dec.order[2], 2);
        ck_assert_double_eq(dec.s[0].score, dec.s[2].score);
    }
    unsigned char healthy[3] = {0, 1, 1};
    ck_assert_int_eq(router_decide(r, x, &w, 10, healthy, -1, &dec), BD_OK);
    ck_assert_int_eq(dec.n, 2);
    ck_assert_int_eq(dec.order[0], 1);
    ck_assert_int_eq(dec.order[1], 2);
    struct router_arm_stats st;
    router_arm_stats(r, 0, &st);
    ck_assert_uint_eq(st.pulls, 3);
    router_arm_stats(r, 1, &st);
    ck_assert_uint_eq(st.pulls, 1);
    router_destroy(r);
    free(cfg);
}
END_TEST

START_TEST(test_healthy_pinned_notfound)
{
    struct config *cfg = make_cfg(3, 16, CONFIG_POLICY_LINUCB);
    router *r = router_create(cfg);
    ck_assert_ptr_nonnull(r);
    double x[16] = {1.0};
    struct router_decision dec;
    /* make arm 2 clearly the best and arm 0 the worst */
    for (int t = 0; t < 50; t++) {
        ck_assert_int_eq(router_feedback(r, 2, x, 1.0), BD_OK);
        ck_assert_int_eq(router_feedback(r, 0, x, 0.0), BD_OK);
        ck_assert_int_eq(router_feedback(r, 1, x, 0.5), BD_OK);
    }
    ck_assert_int_eq(router_decide(r, x, &QUALITY_ONLY, 10, NULL, -1, &dec), BD_OK);
    ck_assert_int_eq(dec.order[0], 2);
    ck_assert_int_eq(dec.order[1], 1);
    ck_assert_int_eq(dec.order[2], 0);
    ck_assert_double_gt(dec.s[2].mean, dec.s[1].mean);
    /* the best arm unhealthy: never chosen, not in the order */
    unsigned char healthy[3] = {1, 1, 0};
    ck_assert_int_eq(router_decide(r, x, &QUALITY_ONLY, 10, healthy, -1, &dec), BD_OK);
    ck_assert_int_eq(dec.n, 2);
    ck_assert_int_eq(dec.order[0], 1);
    ck_assert_int_eq(dec.order[1], 0);
    /* pinned: the worst arm is forced first; it is still scored; the rest
     * follow by score */
    ck_assert_int_eq(router_decide(r, x, &QUALITY_ONLY, 10, NULL, 0, &dec), BD_OK);
    ck_assert_int_eq(dec.n, 3);
    ck_assert_int_eq(dec.order[0], 0);
    ck_assert_int_eq(dec.order[1], 2);
    ck_assert_int_eq(dec.order[2], 1);
    ck_assert_double_gt(dec.s[0].width, 0.0);
    ck_assert_double_lt(dec.s[0].mean, 0.5);
    struct router_arm_stats st;
    router_arm_stats(r, 0, &st);
    ck_assert_uint_eq(st.pulls, 1);
    ck_assert_uint_eq(st.feedback, 50);
    ck_assert_double_eq_tol(st.reward_sum, 0.0, 1e-12);
    router_arm_stats(r, 1, &st);
    ck_assert_double_eq_tol(st.reward_sum, 25.0, 1e-12);
    /* no healthy arm */
    unsigned char none[3] = {0, 0, 0};
    ck_assert_int_eq(router_decide(r, x, &QUALITY_ONLY, 10, none, -1, &dec), BD_ERR_NOTFOUND);
    ck_assert_int_eq(router_decide(r, x, &QUALITY_ONLY, 10, NULL, 3, &dec), BD_ERR_INVALID);
    router_destroy(r);
    free(cfg);
}
END_TEST

START_TEST(test_feedback_validation)
{
    struct config *cfg = make_cfg(2, 16, CONFIG_POLICY_LINUCB);
    router *r = router_create(cfg);
    ck_assert_ptr_nonnull(r);
    double x[16] = {1.0};
    ck_assert_int_eq(router_feedback(r, 2, x, 0.5), BD_ERR_INVALID);
    ck_assert_int_eq(router_feedback(r, -1, x, 0.5), BD_ERR_INVALID);
    ck_assert_int_eq(router_feedback(r, 0, x, 1.5), BD_ERR_INVALID);
    ck_assert_int_eq(router_feedback(r, 0, x, -0.1), BD_ERR_INVALID);
    ck_assert_int_eq(router_feedback(r, 0, x, NAN), BD_ERR_INVALID);
    ck_assert_int_eq(router_feedback(r, 0, NULL, 0.5), BD_ERR_INVALID);
    ck_assert_uint_eq(linucb_count(router_model(r, 0)), 0);
    ck_assert_int_eq(router_feedback(r, 0, x, 1.0), BD_OK);
    ck_assert_uint_eq(linucb_count(router_model(r, 0)), 1);
    ck_assert_ptr_eq(router_model(r, 1), router_model_mut(r, 1));
    ck_assert_ptr_null(router_model(r, 2));
    ck_assert_int_eq(router_n_arms(r), 2);
    ck_assert_int_eq(router_dim(r), 16);
    router_destroy(r);
    free(cfg);
}
END_TEST

START_TEST(test_cost_and_latency_models)
{
    struct config *cfg = make_cfg(2, 16, CONFIG_POLICY_LINUCB);
    cfg->arms[0].price_in_per_mtok = 2.0;
    cfg->arms[0].price_out_per_mtok = 6.0;
    cfg->arms[1].price_in_per_mtok = 0.0;
    cfg->arms[1].price_out_per_mtok = 0.0;
    router *r = router_create(cfg);
    ck_assert_ptr_nonnull(r);
    double x[16] = {1.0};
    struct router_decision dec;
    struct router_arm_stats st;
    /* prior: 256 completion tokens with the weight of one observation */
    ck_assert_int_eq(router_decide(r, x, &QUALITY_ONLY, 1000, NULL, -1, &dec), BD_OK);
    ck_assert_double_eq_tol(dec.s[0].cost, (1000 * 2.0 + 256 * 6.0) / 1e6, 1e-15);
    ck_assert_double_eq(dec.s[0].latency, 0.0);
    router_observe(r, 0, 100, 20.0, 200.0);
    router_observe(r, 0, 300, -1.0, 400.0);
    router_observe(r, 0, -1, 30.0, -1.0); /* unknown usage and total */
    router_arm_stats(r, 0, &st);
    ck_assert_uint_eq(st.usage_obs, 2);
    ck_assert_double_eq_tol(st.exp_completion_tokens, (256.0 + 100 + 300) / 3.0, 1e-12);
    /* first observation taken as is, then EWMA */
    ck_assert_double_eq_tol(st.latency_ms, 200.0 + 0.1 * (400.0 - 200.0), 1e-12);
    ck_assert_double_eq_tol(st.ttfb_ms, 20.0 + 0.1 * (30.0 - 20.0), 1e-12);
    router_observe_failure(r, 0, 1000.0);
    router_arm_stats(r, 0, &st);
    ck_assert_double_eq_tol(st.latency_ms, 220.0 + 0.1 * (1000.0 - 220.0), 1e-12);
    ck_assert_int_eq(router_decide(r, x, &QUALITY_ONLY, 1000, NULL, -1, &dec), BD_OK);
    ck_assert_double_eq_tol(dec.s[0].cost, (1000 * 2.0 + st.exp_completion_tokens * 6.0) / 1e6,
                            1e-15);
    ck_assert_double_eq_tol(dec.s[0].latency, st.latency_ms, 1e-12);
    /* a latency-only preference avoids the slow arm (arm 1 unobserved: 0) */
    struct pref_weights lat = {0.0, 0.0, 1.0, 0, 0.0};
    ck_assert_int_eq(router_decide(r, x, &lat, 1000, NULL, -1, &dec), BD_OK);
    ck_assert_int_eq(dec.order[0], 1);
    ck_assert_double_lt(dec.s[0].score, 0.0);
    ck_assert_double_ge(dec.s[0].score, -1.5);
    router_destroy(r);
    free(cfg);
}
END_TEST

START_TEST(test_prior_quality)
{
    struct config *cfg = make_cfg(2, 16, CONFIG_POLICY_LINUCB);
    cfg->arms[1].has_prior = 1;
    cfg->arms[1].prior_quality = 0.3;
    router *r = router_create(cfg);
    ck_assert_ptr_nonnull(r);
    double x[16] = {1.0};
    struct router_decision dec;
    ck_assert_int_eq(router_decide(r, x, &QUALITY_ONLY, 10, NULL, -1, &dec), BD_OK);
    ck_assert_double_eq_tol(dec.s[0].mean, 1.0, 1e-12);
    ck_assert_double_eq_tol(dec.s[1].mean, 0.3, 1e-12);
    ck_assert_int_eq(dec.order[0], 0);
    router_destroy(r);
    free(cfg);
}
END_TEST

/* router.alpha_base: an arm whose base rate rests on a few bad answers in one
 * context (arm 0: 4 rewards of 0.1 at x_a) is retried in another context
 * (x_b) against a well-known arm (arm 1: 200 rewards of 0.9 on random
 * contexts) only with the base-rate bonus. Numbers (worked by hand, λ = 1):
 * arm 0 at x_b has mean 0.54, width 0.82, base width 0.8·sqrt(0.488) = 0.56;
 * arm 1 mean ≈ 0.9 with small widths, so Q0 ≈ 0.62 < Q1 ≈ 0.92 at α_b = 0
 * and Q0 ≈ 1.07 > Q1 ≈ 0.99 at α_b = 0.8. The quality term is checked
 * against its formula. */
START_TEST(test_alpha_base)
{
    int first[2];
    for (int k = 0; k < 2; k++) {
        struct config *cfg = make_cfg(2, 16, CONFIG_POLICY_LINUCB);
        cfg->router.alpha_base = k ? 0.8 : 0.0;
        router *r = router_create(cfg);
        ck_assert_ptr_nonnull(r);
        double xa[16] = {0.8, 0.6}, xb[16] = {0.8, 0.0, 0.6}, x[16];
        for (int t = 0; t < 4; t++)
            ck_assert_int_eq(router_feedback(r, 0, xa, 0.1), BD_OK);
        struct util_rng rng;
        util_rng_seed(&rng, 5);
        for (int t = 0; t < 200; t++) {
            context(&rng, x, 16);
            ck_assert_int_eq(router_feedback(r, 1, x, 0.9), BD_OK);
        }
        struct router_decision dec;
        ck_assert_int_eq(router_decide(r, xb, &QUALITY_ONLY, 10, NULL, -1, &dec), BD_OK);
        for (int a = 0; a < 2; a++) {
            const struct router_arm_score *s = &dec.s[a];
            double base = 0.8 * sqrt(linucb_Ainv(router_model(r, a))[0]);
            double want = s->mean + 0.1 * s->width + cfg->router.alpha_base * base;
            ck_assert_double_eq_tol(s->quality, want, 1e-9);
        }
        ck_assert_double_eq_tol(dec.s[0].mean, 0.539, 2e-3);
        first[k] = dec.order[0];
        router_destroy(r);
        free(cfg);
    }
    ck_assert_int_eq(first[0], 1);
    ck_assert_int_eq(first[1], 0);
}
END_TEST

/* The tolerance form: the cheapest arm whose quality term is within the
 * tolerance (relative) of the best arm's. Bias-only x: mean = prior and
 * width = 1/sqrt(λ) = 1 exactly, so Q = prior + α = 1.00, 0.98, 0.80. */
START_TEST(test_tolerance_choice)
{
    struct config *cfg = make_cfg(3, 16, CONFIG_POLICY_LINUCB);
    const double prior[3] = {0.90, 0.88, 0.70}, price[3] = {10.0, 2.0, 0.1};
    for (int i = 0; i < 3; i++) {
        cfg->arms[i].has_prior = 1;
        cfg->arms[i].prior_quality = prior[i];
        cfg->arms[i].price_in_per_mtok = cfg->arms[i].price_out_per_mtok = price[i];
    }
    router *r = router_create(cfg);
    ck_assert_ptr_nonnull(r);
    double x[16] = {1.0};
    struct router_decision dec;
    struct pref_weights w = pref_from_tolerance(0.0);
    ck_assert_int_eq(router_decide(r, x, &w, 100, NULL, -1, &dec), BD_OK);
    ck_assert_double_eq_tol(dec.s[1].quality, 0.98, 1e-9);
    ck_assert_int_eq(dec.order[0], 0); /* only the best qualifies */
    w = pref_from_tolerance(0.03);     /* floor 0.97: arms 0 and 1 */
    ck_assert_int_eq(router_decide(r, x, &w, 100, NULL, -1, &dec), BD_OK);
    ck_assert_int_eq(dec.order[0], 1);
    ck_assert_int_eq(dec.order[1], 0);
    ck_assert_int_eq(dec.order[2], 2);
    w = pref_from_tolerance(0.25); /* floor 0.75: every arm */
    ck_assert_int_eq(router_decide(r, x, &w, 100, NULL, -1, &dec), BD_OK);
    ck_assert_int_eq(dec.order[0], 2);
    ck_assert_int_eq(dec.order[1], 1);
    unsigned char healthy[3] = {1, 1, 0}; /* the cheapest arm is down */
    ck_assert_int_eq(router_decide(r, x, &w, 100, healthy, -1, &dec), BD_OK);
    ck_assert_int_eq(dec.n, 2);
    ck_assert_int_eq(dec.order[0], 1);
    router_destroy(r);
    free(cfg);
}
END_TEST

START_TEST(test_create_invalid)
{
    struct config *cfg = make_cfg(2, 16, CONFIG_POLICY_LINUCB);
    cfg->n_arms = 0;
    ck_assert_ptr_null(router_create(cfg));
    cfg->n_arms = 2;
    cfg->router.lambda = 0.0;
    ck_assert_ptr_null(router_create(cfg));
    cfg->router.lambda = 1.0;
    cfg->arms[1].price_in_per_mtok = -1.0;
    ck_assert_ptr_null(router_create(cfg));
    cfg->arms[1].price_in_per_mtok = 1.0;
    cfg->router.forgetting = 0.0;
    ck_assert_ptr_null(router_create(cfg));
    ck_assert_ptr_null(router_create(NULL));
    free(cfg);
}
END_TEST

/* Thompson draws from the seeded RNG: the same seed gives the same choices. */
START_TEST(test_thompson_seeded)
{
    struct config *cfg = make_cfg(4, 16, CONFIG_POLICY_THOMPSON);
    cfg->router.seed = 123;
    router *r1 = router_create(cfg), *r2 = router_create(cfg);
    ck_assert(r1 && r2);
    struct util_rng rng;
    util_rng_seed(&rng, 3);
    double x[16];
    struct router_decision d1, d2;
    int differs_from_ucb = 0;
    for (int t = 0; t < 200; t++) {
        context(&rng, x, 16);
        ck_assert_int_eq(router_decide(r1, x, &QUALITY_ONLY, 10, NULL, -1, &d1), BD_OK);
        ck_assert_int_eq(router_decide(r2, x, &QUALITY_ONLY, 10, NULL, -1, &d2), BD_OK);
        ck_assert_int_eq(d1.order[0], d2.order[0]);
        for (int a = 0; a < 4; a++)
            differs_from_ucb += d1.s[a].quality != d1.s[a].mean;
    }
    ck_assert_int_gt(differs_from_ucb, 0);
    router_destroy(r1);
    router_destroy(r2);
    free(cfg);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("router");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_regret_linucb);
    tcase_add_test(tc, test_regret_thompson);
    tcase_add_test(tc, test_preference_sweep);
    tcase_add_test(tc, test_ties_lower_index);
    tcase_add_test(tc, test_healthy_pinned_notfound);
    tcase_add_test(tc, test_feedback_validation);
    tcase_add_test(tc, test_cost_and_latency_models);
    tcase_add_test(tc, test_prior_quality);
    tcase_add_test(tc, test_alpha_base);
    tcase_add_test(tc, test_tolerance_choice);
    tcase_add_test(tc, test_create_invalid);
    tcase_add_test(tc, test_thompson_seeded);
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
