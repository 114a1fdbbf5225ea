/* Unit tests for stats: the /stats document built from a router, a
 * decisions table and the circuit breakers, checked field by field against
 * the values fed in. */
#include "banditd/config.h"
#include "banditd/decisions.h"
#include "banditd/err.h"
#include "banditd/health.h"
#include "banditd/router.h"
#include "banditd/stats.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#define DIM 16

static struct config *cfg;
static router *rt;

static void setup(void)
{
    cfg = config_defaults();
    ck_assert_ptr_nonnull(cfg);
    cfg->n_arms = 2;
    snprintf(cfg->arms[0].name, sizeof cfg->arms[0].name, "cheap");
    snprintf(cfg->arms[0].model, sizeof cfg->arms[0].model, "small-model");
    snprintf(cfg->arms[1].name, sizeof cfg->arms[1].name, "strong");
    snprintf(cfg->arms[1].model, sizeof cfg->arms[1].model, "big-model");
    cfg->arms[0].price_in_per_mtok = 0.5;
    cfg->arms[0].price_out_per_mtok = 1.5;
    cfg->arms[1].price_in_per_mtok = 5;
    cfg->arms[1].price_out_per_mtok = 15;
    cfg->router.dim = DIM;
    rt = router_create(cfg);
    ck_assert_ptr_nonnull(rt);
}

static void teardown(void)
{
    router_destroy(rt);
    free(cfg);
}

static cJSON *parse_stats(const decisions *ds, const health *h, double now, size_t inflight,
                          size_t conns)
{
    char *s = stats_json(cfg, rt, ds, h, now, inflight, conns);
    ck_assert_ptr_nonnull(s);
    cJSON *root = cJSON_Parse(s);
    free(s);
    ck_assert_ptr_nonnull(root);
    return root;
}

static const cJSON *arm(const cJSON *root, int i)
{
    const cJSON *arms = cJSON_GetObjectItemCaseSensitive(root, "arms");
    ck_assert(cJSON_IsArray(arms));
    ck_assert_int_eq(cJSON_GetArraySize(arms), 2);
    const cJSON *a = cJSON_GetArrayItem(arms, i);
    ck_assert(cJSON_IsObject(a));
    return a;
}

static double num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    ck_assert_msg(cJSON_IsNumber(v), "%s is not a number", k);
    return v->valuedouble;
}

static const char *str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    ck_assert_msg(cJSON_IsString(v), "%s is not a string", k);
    return v->valuestring;
}

static int flag(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    ck_assert_msg(cJSON_IsBool(v), "%s is not a boolean", k);
    return cJSON_IsTrue(v);
}

/* Without breakers: names, prices, counts, mean reward null then the mean
 * of the rewards fed, every arm closed and healthy, ready. */
START_TEST(test_arms_and_feedback)
{
    double x[DIM] = {0};
    x[0] = 1.0;
    cJSON *root = parse_stats(NULL, NULL, 0, 3, 7);
    ck_assert_str_eq(str(arm(root, 0), "name"), "cheap");
    ck_assert_str_eq(str(arm(root, 1), "model"), "big-model");
    ck_assert(num(arm(root, 1), "price_out_per_mtok") == 15);
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(arm(root, 0), "mean_reward")));
    ck_assert(num(arm(root, 0), "feedback") == 0);
    for (int i = 0; i < 2; i++) {
        ck_assert(flag(arm(root, i), "healthy"));
        ck_assert_str_eq(str(arm(root, i), "circuit"), "closed");
        ck_assert(num(arm(root, i), "circuit_opens") == 0);
    }
    ck_assert(num(root, "inflight") == 3);
    ck_assert(num(root, "connections") == 7);
    ck_assert(num(root, "decisions_pending") == 0);
    ck_assert(flag(root, "ready"));
    cJSON_Delete(root);

    ck_assert_int_eq(router_feedback(rt, 1, x, 1.0), BD_OK);
    ck_assert_int_eq(router_feedback(rt, 1, x, 0.25), BD_OK);
    root = parse_stats(NULL, NULL, 0, 0, 0);
    ck_assert(num(arm(root, 1), "feedback") == 2);
    ck_assert(num(arm(root, 1), "mean_reward") == 0.625);
    ck_assert(num(arm(root, 0), "feedback") == 0);
    cJSON_Delete(root);
}
END_TEST

/* With breakers: an arm whose circuit opened is not healthy and says so;
 * ready only while some arm admits calls; pending decisions counted. */
START_TEST(test_circuits_and_ready)
{
    struct health_params p = {2, 1000, 0, NULL};
    health *h = health_create(2, &p);
    ck_assert_ptr_nonnull(h);
    decisions *ds = decisions_create(DIM, 100, 60);
    ck_assert_ptr_nonnull(ds);
    double x[DIM] = {0};
    struct decision d;
    memset(&d, 0, sizeof d);
    snprintf(d.id, sizeof d.id, "%032x", 1u);
    d.x = x;
    d.arm = 0;
    d.created_s = 1;
    ck_assert_int_eq(decisions_add(ds, &d), BD_OK);

    int probe = -1;
    for (int k = 0; k < 2; k++) { /* two failures in a row open arm 1 */
        ck_assert_int_eq(health_admit(h, 1, 10, &probe), BD_OK);
        health_release(h, 1, probe, HEALTH_FAILURE, 10);
    }
    ck_assert_int_eq(health_admit(h, 0, 10, &probe), BD_OK); /* one call in flight on arm 0 */
    cJSON *root = parse_stats(ds, h, 20, 1, 1);
    ck_assert(flag(arm(root, 0), "healthy"));
    ck_assert(num(arm(root, 0), "arm_inflight") == 1);
    ck_assert(!flag(arm(root, 1), "healthy"));
    ck_assert_str_eq(str(arm(root, 1), "circuit"), "open");
    ck_assert(num(arm(root, 1), "circuit_opens") == 1);
    ck_assert(num(arm(root, 1), "consecutive_failures") == 0); /* restarts as it opens */
    ck_assert(num(root, "decisions_pending") == 1);
    ck_assert(flag(root, "ready"));
    cJSON_Delete(root);

    health_release(h, 0, probe, HEALTH_FAILURE, 20);
    root = parse_stats(ds, h, 20, 0, 0);
    ck_assert_str_eq(str(arm(root, 0), "circuit"), "closed");
    ck_assert(num(arm(root, 0), "consecutive_failures") == 1);
    ck_assert(num(arm(root, 0), "arm_inflight") == 0);
    cJSON_Delete(root);
    ck_assert_int_eq(health_admit(h, 0, 20, &probe), BD_OK);
    health_release(h, 0, probe, HEALTH_FAILURE, 20);
    root = parse_stats(ds, h, 30, 0, 0); /* both open and cooling down */
    ck_assert_str_eq(str(arm(root, 0), "circuit"), "open");
    ck_assert(!flag(root, "ready"));
    cJSON_Delete(root);
    root = parse_stats(ds, h, 5000, 0, 0); /* cool-down over: a probe may go */
    ck_assert(flag(root, "ready"));
    cJSON_Delete(root);

    decisions_destroy(ds);
    health_destroy(h);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("stats");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_arms_and_feedback);
    tcase_add_test(tc, test_circuits_and_ready);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
