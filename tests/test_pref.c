/* Unit tests for pref: X-Bandit-Preference parsing. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "banditd/err.h"
#include "banditd/pref.h"

#define EPS 1e-12

static const struct pref_profile PROFILES[] = {
    {"cheap", {0.2, 0.8, 0.0, 0, 0.0}},
    {"balanced", {0.7, 0.3, 0.0, 0, 0.0}},
    {"best", {1.0, 0.0, 0.0, 0, 0.0}},
    {"fast", {0.5, 0.0, 0.5, 0, 0.0}},
};
#define NPROF (sizeof PROFILES / sizeof PROFILES[0])

static int parse(const char *s, struct pref_weights *w, char *err, size_t errlen)
{
    return pref_parse(s, strlen(s), PROFILES, NPROF, w, err, errlen);
}

static void expect_weights(const char *s, double q, double c, double l)
{
    struct pref_weights w = {-1, -1, -1, 0, 0.0};
    char err[256] = "";
    int rc = parse(s, &w, err, sizeof err);
    ck_assert_msg(rc == 0, "'%s' rejected: %s", s, err);
    ck_assert_msg(fabs(w.quality - q) < EPS && fabs(w.cost - c) < EPS && fabs(w.latency - l) < EPS,
                  "'%s' -> (%g,%g,%g), want (%g,%g,%g)", s, w.quality, w.cost, w.latency, q, c, l);
}

static void expect_invalid(const char *s, size_t len, const char *needle)
{
    struct pref_weights w = {0.25, 0.25, 0.5, 0, 0.0};
    char err[256] = "";
    int rc = pref_parse(s, len, PROFILES, NPROF, &w, err, sizeof err);
    ck_assert_msg(rc == BD_ERR_INVALID, "'%.*s' accepted (rc %d)", (int)len, s, rc);
    ck_assert_msg(err[0] != '\0', "no message for '%.*s'", (int)len, s);
    if (needle)
        ck_assert_msg(strstr(err, needle) != NULL, "message for '%.*s' lacks '%s': %s", (int)len, s,
                      needle, err);
    /* The output is untouched on failure. */
    ck_assert(w.quality == 0.25 && w.cost == 0.25 && w.latency == 0.5);
}

START_TEST(test_scalar)
{
    expect_weights("0", 0.0, 1.0, 0.0);
    expect_weights("1", 1.0, 0.0, 0.0);
    expect_weights("0.7", 0.7, 0.3, 0.0);
    expect_weights(".25", 0.25, 0.75, 0.0);
    expect_weights("  0.5\t", 0.5, 0.5, 0.0);
    expect_weights("1e-1", 0.1, 0.9, 0.0);
    expect_weights("1.0", 1.0, 0.0, 0.0);
    struct pref_weights w = pref_from_scalar(0.35);
    ck_assert(fabs(w.quality - 0.35) < EPS && fabs(w.cost - 0.65) < EPS && w.latency == 0.0);
    /* "-0" is zero, not a negative weight. */
    expect_weights("-0", 0.0, 1.0, 0.0);
    ck_assert(!signbit(pref_from_scalar(-0.0).quality));
}
END_TEST

START_TEST(test_profiles)
{
    expect_weights("cheap", 0.2, 0.8, 0.0);
    expect_weights("balanced", 0.7, 0.3, 0.0);
    expect_weights("best", 1.0, 0.0, 0.0);
    expect_weights(" fast ", 0.5, 0.0, 0.5);
    /* Names are exact and case-sensitive; a prefix is not a name. */
    expect_invalid("Cheap", 5, "profile");
    expect_invalid("bes", 3, "profile");
    expect_invalid("unknown", 7, "cheap, balanced, best, fast");
    /* No profiles configured at all. */
    struct pref_weights w;
    char err[256];
    ck_assert_int_eq(pref_parse("best", 4, NULL, 0, &w, err, sizeof err), BD_ERR_INVALID);
    ck_assert_int_eq(pref_parse("0.4", 3, NULL, 0, &w, err, sizeof err), 0);
    ck_assert(fabs(w.quality - 0.4) < EPS);
}
END_TEST

START_TEST(test_explicit)
{
    expect_weights("quality=0.6,cost=0.3,latency=0.1", 0.6, 0.3, 0.1);
    /* Normalised: 0.5+0.25+0.25 = 1 already; 1,1,2 -> 0.25,0.25,0.5. */
    expect_weights("quality=1,cost=1,latency=1", 1.0 / 3, 1.0 / 3, 1.0 / 3);
    expect_weights("latency=1, quality = 0.5 ,cost=0.5", 0.25, 0.25, 0.5);
    /* Missing keys are 0. */
    expect_weights("quality=0.2", 1.0, 0.0, 0.0);
    expect_weights("cost=0.3,latency=0.1", 0.0, 0.75, 0.25);
    expect_weights("quality=0,cost=0.4", 0.0, 1.0, 0.0);
    /* The result always sums to 1. */
    struct pref_weights w;
    char err[128];
    ck_assert_int_eq(parse("quality=0.3,cost=0.3,latency=0.3", &w, err, sizeof err), 0);
    ck_assert(fabs(w.quality + w.cost + w.latency - 1.0) < EPS);
}
END_TEST

START_TEST(test_invalid)
{
    const char *bad[] = {"",
                         "   ",
                         "1.5",
                         "-0.1",
                         "nan",
                         "NaN",
                         "inf",
                         "-inf",
                         "infinity",
                         "1e999",
                         "0x0.8",
                         "0.5abc",
                         "0.5 0.2",
                         "quality=2",
                         "quality=-0.1",
                         "quality=nan",
                         "quality=",
                         "quality=0.5x",
                         "quality=0,cost=0",
                         "quality=0,cost=0,latency=0",
                         "quality=0.5,quality=0.5",
                         "quality=0.5,speed=0.5",
                         "quality=0.5,",
                         ",quality=0.5",
                         "quality=0.5,,cost=0.5",
                         "quality=0.5,cost",
                         "=0.5",
                         "quality:0.5",
                         "premium",
                         "cheap,best",
                         "0.5,0.5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_invalid(bad[i], strlen(bad[i]), NULL);
    expect_invalid("quality=0.5,quality=0.5", 23, "more than once");
    expect_invalid("quality=0.5,speed=0.5", 21, "unknown key");
    expect_invalid("quality=0,cost=0", 16, "sum");
    expect_invalid("1.5", 3, "[0,1]");
    expect_invalid("quality=2", 9, "quality");
    expect_invalid("", 0, "empty");
}
END_TEST

START_TEST(test_nul_and_length)
{
    /* A NUL byte inside the value is rejected, even if the prefix is valid. */
    expect_invalid("0.5\0", 4, "NUL");
    expect_invalid("best\0x", 6, "NUL");
    expect_invalid("\0", 1, "NUL");

    /* Over-long values are rejected; PREF_HEADER_MAX itself is accepted. */
    char *big = malloc(PREF_HEADER_MAX + 2);
    ck_assert_ptr_nonnull(big);
    memset(big, ' ', PREF_HEADER_MAX + 1);
    big[0] = '1';
    big[PREF_HEADER_MAX + 1] = '\0';
    expect_invalid(big, PREF_HEADER_MAX + 1, "longer");
    struct pref_weights w;
    char err[256];
    ck_assert_int_eq(pref_parse(big, PREF_HEADER_MAX, PROFILES, NPROF, &w, err, sizeof err), 0);
    ck_assert(w.quality == 1.0);
    free(big);
}
END_TEST

START_TEST(test_len_is_respected)
{
    /* Only len bytes are read: the rest of the buffer must not matter. */
    struct pref_weights w;
    char err[128];
    const char *s = "0.25junk";
    ck_assert_int_eq(pref_parse(s, 4, PROFILES, NPROF, &w, err, sizeof err), 0);
    ck_assert(fabs(w.quality - 0.25) < EPS);
    ck_assert_int_eq(pref_parse("bestXYZ", 4, PROFILES, NPROF, &w, err, sizeof err), 0);
    ck_assert(w.quality == 1.0);
    /* A heap buffer with no terminator at all (ASan catches an over-read). */
    char *h = malloc(8);
    ck_assert_ptr_nonnull(h);
    memcpy(h, "cost=0.5", 8);
    ck_assert_int_eq(pref_parse(h, 8, PROFILES, NPROF, &w, err, sizeof err), 0);
    ck_assert(w.cost == 1.0 && w.quality == 0.0);
    memcpy(h, "0.123456", 8);
    ck_assert_int_eq(pref_parse(h, 8, PROFILES, NPROF, &w, err, sizeof err), 0);
    ck_assert(fabs(w.quality - 0.123456) < EPS);
    free(h);
    /* Tiny error buffers are fine, NULL ones too. */
    char one[1];
    ck_assert_int_eq(pref_parse("2", 1, PROFILES, NPROF, &w, one, sizeof one), BD_ERR_INVALID);
    ck_assert_int_eq(one[0], '\0');
    ck_assert_int_eq(pref_parse("2", 1, PROFILES, NPROF, &w, NULL, 0), BD_ERR_INVALID);
}
END_TEST

/* The tolerance form: alone, in [0,1]; the weights form never sets it. */
START_TEST(test_tolerance_form)
{
    struct pref_weights w = {-1, -1, -1, -1, -1};
    char err[256] = "";
    ck_assert_int_eq(parse("tolerance=0.03", &w, err, sizeof err), 0);
    ck_assert_int_eq(w.has_tolerance, 1);
    ck_assert(fabs(w.tolerance - 0.03) < EPS);
    ck_assert(w.quality == 1.0 && w.cost == 0.0 && w.latency == 0.0);
    ck_assert_int_eq(parse(" tolerance = 0 ", &w, err, sizeof err), 0);
    ck_assert_int_eq(w.has_tolerance, 1);
    ck_assert(w.tolerance == 0.0);
    ck_assert_int_eq(parse("quality=0.5,cost=0.5", &w, err, sizeof err), 0);
    ck_assert_int_eq(w.has_tolerance, 0);
    ck_assert_int_eq(parse("0.7", &w, err, sizeof err), 0);
    ck_assert_int_eq(w.has_tolerance, 0);
    expect_invalid("tolerance=0.1,cost=0.5", 22, "combined");
    expect_invalid("quality=1,tolerance=0.1", 23, "combined");
    expect_invalid("tolerance=1.5", 13, "[0,1]");
    expect_invalid("tolerance=-0.1", 14, "[0,1]");
    expect_invalid("tolerance=0.1,tolerance=0.2", 27, "more than once");
    struct pref_weights t = pref_from_tolerance(0.25);
    ck_assert(t.has_tolerance == 1 && t.tolerance == 0.25 && t.quality == 1.0);
}
END_TEST

static Suite *pref_suite(void)
{
    Suite *s = suite_create("pref");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_scalar);
    tcase_add_test(tc, test_profiles);
    tcase_add_test(tc, test_explicit);
    tcase_add_test(tc, test_invalid);
    tcase_add_test(tc, test_nul_and_length);
    tcase_add_test(tc, test_len_is_respected);
    tcase_add_test(tc, test_tolerance_form);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(pref_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
