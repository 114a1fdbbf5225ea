/* Unit tests for health: the circuit state machine with a fake clock, and
 * the in-flight caps. */
#include "banditd/err.h"
#include "banditd/health.h"

#include <check.h>
#include <stdlib.h>

static health *mk(int n, int threshold, double cooldown, unsigned global, const unsigned *caps)
{
    struct health_params p = {threshold, cooldown, global, caps};
    health *h = health_create(n, &p);
    ck_assert_ptr_nonnull(h);
    return h;
}

/* Admit and release one call with the given outcome; returns admit's result. */
static int call(health *h, int arm, double now, enum health_outcome out)
{
    int probe = -1;
    int rc = health_admit(h, arm, now, &probe);
    if (rc == BD_OK)
        health_release(h, arm, probe, out, now);
    return rc;
}

START_TEST(test_create_invalid)
{
    struct health_params p = {0, 10, 0, NULL};
    ck_assert_ptr_null(health_create(2, &p));
    p.failure_threshold = 1;
    ck_assert_ptr_null(health_create(0, &p));
    p.cooldown_ms = -1;
    ck_assert_ptr_null(health_create(1, &p));
    health_destroy(NULL);
}
END_TEST

START_TEST(test_opens_after_threshold)
{
    health *h = mk(2, 3, 1000, 0, NULL);
    unsigned char m[2];
    ck_assert_int_eq(health_candidates(h, 0, m), 2);
    ck_assert_int_eq(call(h, 0, 1, HEALTH_FAILURE), BD_OK);
    ck_assert_int_eq(call(h, 0, 2, HEALTH_FAILURE), BD_OK);
    ck_assert_int_eq(health_consecutive_failures(h, 0), 2);
    ck_assert_int_eq(health_state_of(h, 0), HEALTH_CLOSED);
    /* A success in between resets the count: failures must be consecutive. */
    ck_assert_int_eq(call(h, 0, 3, HEALTH_SUCCESS), BD_OK);
    ck_assert_int_eq(health_consecutive_failures(h, 0), 0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(call(h, 0, 4 + i, HEALTH_FAILURE), BD_OK);
    ck_assert_int_eq(health_state_of(h, 0), HEALTH_CLOSED);
    ck_assert_int_eq(call(h, 0, 10, HEALTH_FAILURE), BD_OK);
    ck_assert_int_eq(health_state_of(h, 0), HEALTH_OPEN);
    ck_assert_uint_eq(health_opens(h, 0), 1);
    /* Open: not a candidate, not admitted, during the cool-down. */
    ck_assert_int_eq(health_candidates(h, 500, m), 1);
    ck_assert_int_eq(m[0], 0);
    ck_assert_int_eq(m[1], 1);
    ck_assert_int_eq(call(h, 0, 1009, HEALTH_SUCCESS), BD_ERR_UPSTREAM);
    /* Neutral outcomes never count. */
    ck_assert_int_eq(call(h, 1, 5, HEALTH_NEUTRAL), BD_OK);
    ck_assert_int_eq(health_consecutive_failures(h, 1), 0);
    health_destroy(h);
}
END_TEST

START_TEST(test_half_open_probe)
{
    health *h = mk(1, 1, 1000, 0, NULL);
    unsigned char m[1];
    ck_assert_int_eq(call(h, 0, 0, HEALTH_FAILURE), BD_OK);
    ck_assert_int_eq(health_state_of(h, 0), HEALTH_OPEN);
    ck_assert_int_eq(health_ready(h, 999), 0);
    ck_assert_int_eq(health_ready(h, 1000), 1);
    ck_assert_int_eq(health_candidates(h, 1000, m), 1);
    /* Exactly one probe is admitted. */
    int probe = 0, p2 = 0;
    ck_assert_int_eq(health_admit(h, 0, 1000, &probe), BD_OK);
    ck_assert_int_eq(probe, 1);
    ck_assert_int_eq(health_state_of(h, 0), HEALTH_HALF_OPEN);
    ck_assert_int_eq(health_candidates(h, 1001, m), 0);
    ck_assert_int_eq(health_admit(h, 0, 1001, &p2), BD_ERR_UPSTREAM);
    /* The probe fails: open again, a new cool-down from the failure. */
    health_release(h, 0, probe, HEALTH_FAILURE, 1500);
    ck_assert_int_eq(health_state_of(h, 0), HEALTH_OPEN);
    ck_assert_uint_eq(health_opens(h, 0), 2);
    ck_assert_int_eq(health_candidates(h, 2499, m), 0);
    ck_assert_int_eq(health_candidates(h, 2500, m), 1);
    /* Next probe succeeds: closed, traffic flows. */
    ck_assert_int_eq(health_admit(h, 0, 2500, &probe), BD_OK);
    ck_assert_int_eq(probe, 1);
    health_release(h, 0, probe, HEALTH_SUCCESS, 2600);
    ck_assert_int_eq(health_state_of(h, 0), HEALTH_CLOSED);
    ck_assert_int_eq(health_admit(h, 0, 2601, &probe), BD_OK);
    ck_assert_int_eq(probe, 0);
    ck_assert_int_eq(health_admit(h, 0, 2601, &p2), BD_OK);
    ck_assert_int_eq(p2, 0);
    health_release(h, 0, probe, HEALTH_SUCCESS, 2602);
    health_release(h, 0, p2, HEALTH_SUCCESS, 2602);
    ck_assert_uint_eq(health_inflight(h, 0), 0);
    health_destroy(h);
}
END_TEST

START_TEST(test_neutral_probe_and_stale)
{
    health *h = mk(1, 2, 100, 0, NULL);
    int a = 0, b = 0, probe = 0;
    /* Two calls in flight; both fail; the circuit opens on the second. */
    ck_assert_int_eq(health_admit(h, 0, 0, &a), BD_OK);
    ck_assert_int_eq(health_admit(h, 0, 0, &b), BD_OK);
    int c = 0;
    ck_assert_int_eq(health_admit(h, 0, 0, &c), BD_OK);
    health_release(h, 0, a, HEALTH_FAILURE, 1);
    health_release(h, 0, b, HEALTH_FAILURE, 2);
    ck_assert_int_eq(health_state_of(h, 0), HEALTH_OPEN);
    /* A late success of a call admitted before the opening does not close it. */
    health_release(h, 0, c, HEALTH_SUCCESS, 3);
    ck_assert_int_eq(health_state_of(h, 0), HEALTH_OPEN);
    /* A probe that ends neutrally leaves the arm open but probe-able at once. */
    ck_assert_int_eq(health_admit(h, 0, 102, &probe), BD_OK);
    ck_assert_int_eq(probe, 1);
    health_release(h, 0, probe, HEALTH_NEUTRAL, 103);
    ck_assert_int_eq(health_state_of(h, 0), HEALTH_OPEN);
    ck_assert_uint_eq(health_opens(h, 0), 1);
    ck_assert_int_eq(health_admit(h, 0, 103, &probe), BD_OK);
    ck_assert_int_eq(probe, 1);
    health_release(h, 0, probe, HEALTH_SUCCESS, 104);
    ck_assert_int_eq(health_state_of(h, 0), HEALTH_CLOSED);
    ck_assert_str_eq(health_state_name(HEALTH_HALF_OPEN), "half_open");
    health_destroy(h);
}
END_TEST

START_TEST(test_inflight_caps)
{
    unsigned caps[2] = {2, 0};
    health *h = mk(2, 5, 100, 3, caps);
    int p[4];
    ck_assert_int_eq(health_admit(h, 0, 0, &p[0]), BD_OK);
    ck_assert_int_eq(health_admit(h, 0, 0, &p[1]), BD_OK);
    ck_assert_int_eq(health_admit(h, 0, 0, &p[2]), BD_ERR_BUSY); /* arm cap 2 */
    ck_assert_int_eq(health_admit(h, 1, 0, &p[2]), BD_OK);
    ck_assert_int_eq(health_admit(h, 1, 0, &p[3]), BD_ERR_BUSY); /* global cap 3 */
    ck_assert_uint_eq(health_inflight(h, -1), 3);
    ck_assert_uint_eq(health_inflight(h, 0), 2);
    health_release(h, 0, p[0], HEALTH_SUCCESS, 1);
    ck_assert_int_eq(health_admit(h, 1, 1, &p[3]), BD_OK);
    health_release(h, 0, p[1], HEALTH_SUCCESS, 1);
    health_release(h, 1, p[2], HEALTH_SUCCESS, 1);
    health_release(h, 1, p[3], HEALTH_SUCCESS, 1);
    ck_assert_uint_eq(health_inflight(h, -1), 0);
    /* A busy refusal is not a failure. */
    ck_assert_int_eq(health_consecutive_failures(h, 0), 0);
    health_destroy(h);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("health");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_create_invalid);
    tcase_add_test(tc, test_opens_after_threshold);
    tcase_add_test(tc, test_half_open_probe);
    tcase_add_test(tc, test_neutral_probe_and_stale);
    tcase_add_test(tc, test_inflight_caps);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
