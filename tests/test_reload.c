/* Unit tests for live reconfiguration: router_reconfigure (state kept by arm
 * name), decisions_remap_arms and reload_check_restart_fields. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "banditd/config.h"
#include "banditd/decisions.h"
#include "banditd/err.h"
#include "banditd/reload.h"
#include "banditd/router.h"

#define DIM 16

static struct config *cfg_with(const char *const *names, int n)
{
    struct config *c = config_defaults();
    ck_assert_ptr_nonnull(c);
    c->router.dim = DIM;
    c->n_arms = (size_t)n;
    for (int i = 0; i < n; i++) {
        snprintf(c->arms[i].name, sizeof c->arms[i].name, "%s", names[i]);
        c->arms[i].price_in_per_mtok = 1.0 + i;
        c->arms[i].price_out_per_mtok = 2.0 + i;
    }
    return c;
}

static void feature(double *x, int k)
{
    memset(x, 0, DIM * sizeof *x);
    x[0] = 1.0;
    x[1 + k % (DIM - 1)] = 1.0;
}

static void score_of(const router *r, int arm, const double *x, double *mean, double *width)
{
    linucb_score(router_model(r, arm), x, mean, width);
}

START_TEST(test_reconfigure_keeps_state_by_name)
{
    const char *a[] = {"a", "b", "c"};
    struct config *c1 = cfg_with(a, 3);
    router *r = router_create(c1);
    ck_assert_ptr_nonnull(r);
    double x[DIM];
    for (int i = 0; i < 20; i++) {
        feature(x, i);
        ck_assert_int_eq(router_feedback(r, 0, x, 0.9), BD_OK);
        ck_assert_int_eq(router_feedback(r, 1, x, 0.1), BD_OK);
    }
    router_observe(r, 1, 100, 10, 50);
    feature(x, 3);
    double ma, wa, mb, wb;
    score_of(r, 0, x, &ma, &wa);
    score_of(r, 1, x, &mb, &wb);
    struct router_arm_stats sb;
    router_arm_stats(r, 1, &sb);

    /* New order: new arm first, "b", "a"; "c" removed; a's price changes. */
    const char *n2[] = {"new", "b", "a"};
    struct config *c2 = cfg_with(n2, 3);
    c2->arms[2].price_in_per_mtok = 9.0;
    c2->arms[0].has_prior = 1;
    c2->arms[0].prior_quality = 1.0;
    int map[ROUTER_MAX_ARMS];
    ck_assert_int_eq(router_reconfigure(r, c2, map), BD_OK);
    ck_assert_int_eq(router_n_arms(r), 3);
    ck_assert_int_eq(map[0], 2);  /* a */
    ck_assert_int_eq(map[1], 1);  /* b */
    ck_assert_int_eq(map[2], -1); /* c removed */
    ck_assert_str_eq(router_arm_name(r, 0), "new");
    ck_assert_int_eq(router_arm_index(r, "a"), 2);
    ck_assert_int_eq(router_arm_index(r, "c"), -1);
    double m2, w2;
    score_of(r, 2, x, &m2, &w2);
    ck_assert(m2 == ma && w2 == wa); /* bit-identical model */
    score_of(r, 1, x, &m2, &w2);
    ck_assert(m2 == mb && w2 == wb);
    struct router_arm_stats sb2;
    router_arm_stats(r, 1, &sb2);
    ck_assert_uint_eq(sb2.feedback, sb.feedback);
    ck_assert(sb2.reward_sum == sb.reward_sum && sb2.latency_ms == sb.latency_ms);
    ck_assert_uint_eq(linucb_count(router_model(r, 0)), 0);
    /* The new arm's prior: predicts about 1.0 on the bias feature. */
    double xb[DIM] = {1.0};
    score_of(r, 0, xb, &m2, &w2);
    ck_assert(fabs(m2 - 1.0) < 0.2);
    /* The new price is used: cost of a (index 2) with 1e6 prompt tokens. */
    struct pref_weights w = {0, 1, 0, 0, 0.0};
    struct router_decision d;
    ck_assert_int_eq(router_decide(r, x, &w, 1000000, NULL, -1, &d), BD_OK);
    ck_assert(d.s[2].cost > 9.0 - 1e-9);

    /* Re-adding "c" brings its (untrained) model back; removing "a" retires it,
     * and adding "a" again restores its learned state. */
    const char *n3[] = {"b", "c"};
    struct config *c3 = cfg_with(n3, 2);
    ck_assert_int_eq(router_reconfigure(r, c3, map), BD_OK);
    ck_assert_int_eq(map[2], -1); /* a retired */
    const char *n4[] = {"a", "b", "c"};
    struct config *c4 = cfg_with(n4, 3);
    ck_assert_int_eq(router_reconfigure(r, c4, NULL), BD_OK);
    score_of(r, 0, x, &m2, &w2);
    ck_assert(m2 == ma && w2 == wa);

    /* Refused: a dim change, duplicate names; the router is unchanged. */
    struct config *bad = cfg_with(n4, 3);
    bad->router.dim = DIM * 2;
    ck_assert_int_eq(router_reconfigure(r, bad, map), BD_ERR_INVALID);
    bad->router.dim = DIM;
    snprintf(bad->arms[2].name, sizeof bad->arms[2].name, "a");
    ck_assert_int_eq(router_reconfigure(r, bad, map), BD_ERR_INVALID);
    ck_assert_int_eq(router_n_arms(r), 3);
    ck_assert_str_eq(router_arm_name(r, 2), "c");
    score_of(r, 0, x, &m2, &w2);
    ck_assert(m2 == ma && w2 == wa);

    router_destroy(r);
    config_destroy(c1);
    config_destroy(c2);
    config_destroy(c3);
    config_destroy(c4);
    config_destroy(bad);
}
END_TEST

START_TEST(test_decisions_remap)
{
    decisions *ds = decisions_create(DIM, 100, 3600);
    ck_assert_ptr_nonnull(ds);
    double x[DIM] = {1.0};
    for (int i = 0; i < 6; i++) {
        struct decision d;
        memset(&d, 0, sizeof d);
        snprintf(d.id, sizeof d.id, "%032d", i);
        d.arm = i % 3;
        d.x = x;
        d.created_s = 1000.0;
        ck_assert_int_eq(decisions_add(ds, &d), BD_OK);
    }
    int map[3] = {2, -1, 0};
    ck_assert_uint_eq(decisions_remap_arms(ds, map, 3), 2);
    ck_assert_uint_eq(decisions_pending(ds), 4);
    for (int i = 0; i < 6; i++) {
        char id[33];
        snprintf(id, sizeof id, "%032d", i);
        const struct decision *out;
        int rc = decisions_find(ds, id, 1001.0, &out);
        if (i % 3 == 1) {
            ck_assert_int_eq(rc, BD_ERR_EXPIRED);
        } else {
            ck_assert_int_eq(rc, BD_OK);
            ck_assert_int_eq(out->arm, map[i % 3]);
        }
    }
    decisions_destroy(ds);
}
END_TEST

START_TEST(test_restart_fields)
{
    const char *a[] = {"a"};
    struct config *c1 = cfg_with(a, 1), *c2 = cfg_with(a, 1);
    char err[256];
    ck_assert_int_eq(reload_check_restart_fields(c1, c2, 0, err, sizeof err), BD_OK);
    c2->listen_port = c1->listen_port + 1;
    ck_assert_int_eq(reload_check_restart_fields(c1, c2, 0, err, sizeof err), BD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "listen"));
    ck_assert_int_eq(reload_check_restart_fields(c1, c2, 1, err, sizeof err), BD_OK);
    c2->listen_port = c1->listen_port;
    c2->router.dim = 32;
    ck_assert_int_eq(reload_check_restart_fields(c1, c2, 0, err, sizeof err), BD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "router.dim"));
    c2->router.dim = c1->router.dim;
    snprintf(c2->store.path, sizeof c2->store.path, "/tmp/x.db");
    ck_assert_int_eq(reload_check_restart_fields(c1, c2, 0, err, sizeof err), BD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "store.path"));
    config_destroy(c1);
    config_destroy(c2);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("reload");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_reconfigure_keeps_state_by_name);
    tcase_add_test(tc, test_decisions_remap);
    tcase_add_test(tc, test_restart_fields);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
