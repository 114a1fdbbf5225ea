/* test_util — clocks, random ids, the capped buffer, the JSON pre-scan, the PRNG. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "banditd/err.h"
#include "banditd/util.h"

START_TEST(test_buf_cap)
{
    struct util_buf b;
    util_buf_init(&b, 10);
    ck_assert_int_eq(util_buf_append(&b, "hello", 5), BD_OK);
    ck_assert_int_eq(util_buf_append(&b, "world", 5), BD_OK);
    ck_assert_uint_eq(b.len, 10);
    ck_assert_str_eq(b.data, "helloworld");
    /* One byte over the cap: refused whole, nothing appended. */
    ck_assert_int_eq(util_buf_append(&b, "!", 1), BD_ERR_TOOBIG);
    ck_assert_uint_eq(b.len, 10);
    ck_assert_str_eq(b.data, "helloworld");
    util_buf_consume(&b, 5);
    ck_assert_str_eq(b.data, "world");
    ck_assert_int_eq(util_buf_printf(&b, "%d", 12345), BD_OK);
    ck_assert_str_eq(b.data, "world12345");
    ck_assert_int_eq(util_buf_printf(&b, "%s", "x"), BD_ERR_TOOBIG);
    util_buf_reset(&b);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_str_eq(b.data, "");
    /* Re-armed with a smaller cap: the memory stays, the new cap holds. */
    const char *mem = b.data;
    util_buf_rearm(&b, 3);
    ck_assert_ptr_eq(b.data, mem);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_int_eq(util_buf_append(&b, "abcd", 4), BD_ERR_TOOBIG);
    ck_assert_int_eq(util_buf_append(&b, "abc", 3), BD_OK);
    ck_assert_str_eq(b.data, "abc");
    ck_assert_ptr_eq(b.data, mem);
    util_buf_free(&b);
    ck_assert_ptr_null(b.data);
    util_buf_rearm(&b, 5); /* a freed buffer too */
    ck_assert_int_eq(util_buf_append(&b, "12345", 5), BD_OK);
    ck_assert_int_eq(util_buf_append(&b, "6", 1), BD_ERR_TOOBIG);
    util_buf_free(&b);
}
END_TEST

START_TEST(test_buf_long_printf)
{
    /* Longer than printf's stack buffer: takes the second path. */
    struct util_buf b;
    util_buf_init(&b, 4096);
    char big[2000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ck_assert_int_eq(util_buf_printf(&b, "<%s>", big), BD_OK);
    ck_assert_uint_eq(b.len, sizeof big + 1);
    ck_assert_int_eq(b.data[0], '<');
    ck_assert_int_eq(b.data[b.len - 1], '>');
    ck_assert_int_eq(b.data[b.len], '\0');
    ck_assert_int_eq(util_buf_printf(&b, "%s%s", big, big), BD_ERR_TOOBIG);
    ck_assert_uint_eq(b.len, sizeof big + 1);
    util_buf_free(&b);
}
END_TEST

static int all_hex(const char *s)
{
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
            return 0;
    return 1;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

START_TEST(test_random_ids)
{
    enum { N = 5000 };
    char(*ids)[33] = malloc(sizeof *ids * N);
    ck_assert_ptr_nonnull(ids);
    size_t ones = 0;
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(util_random_hex128(ids[i]), BD_OK);
        ck_assert_uint_eq(strlen(ids[i]), 32);
        ck_assert(all_hex(ids[i]));
        for (int k = 0; k < 32; k++) {
            int v = ids[i][k] <= '9' ? ids[i][k] - '0' : ids[i][k] - 'a' + 10;
            ones += (size_t)__builtin_popcount((unsigned)v);
        }
    }
    qsort(ids, N, sizeof *ids, cmp_id);
    for (int i = 1; i < N; i++)
        ck_assert_msg(strcmp(ids[i - 1], ids[i]) != 0, "duplicate id %s", ids[i]);
    /* 640k random bits: the share of ones is 0.5 within many sigmas. */
    double share = (double)ones / (N * 128.0);
    ck_assert_msg(fabs(share - 0.5) < 0.01, "bit share %f", share);
    free(ids);
}
END_TEST

START_TEST(test_random_after_fork)
{
    /* A forked child must not hand out the ids its parent's buffer holds. */
    char parent_first[33];
    ck_assert_int_eq(util_random_hex128(parent_first), BD_OK);
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        char id[33];
        int ok = util_random_hex128(id) == BD_OK;
        if (write(fds[1], id, 33) != 33)
            ok = 0;
        _exit(ok ? 0 : 1);
    }
    char child[33], parent_next[33];
    ck_assert_int_eq(read(fds[0], child, 33), 33);
    int st = 0;
    waitpid(pid, &st, 0);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ck_assert_int_eq(util_random_hex128(parent_next), BD_OK);
    ck_assert_str_ne(child, parent_next);
    close(fds[0]);
    close(fds[1]);
}
END_TEST

START_TEST(test_secret_eq)
{
    ck_assert(util_secret_eq("sk-abc", "sk-abc"));
    ck_assert(!util_secret_eq("sk-abd", "sk-abc"));
    ck_assert(!util_secret_eq("sk-ab", "sk-abc"));
    ck_assert(!util_secret_eq("sk-abcd", "sk-abc"));
    ck_assert(!util_secret_eq("", "x"));
    ck_assert(util_secret_eq("", ""));
}
END_TEST

START_TEST(test_json_prescan)
{
    ck_assert_int_eq(util_json_prescan("{\"a\":[1,2]}", 11, 2), 0);
    ck_assert_int_eq(util_json_prescan("{\"a\":[1,2]}", 11, 1), -2);
    /* Brackets inside strings do not count, escaped quotes do not end them. */
    const char *s = "{\"a\":\"[[[[\\\"]]]]{\"}";
    ck_assert_int_eq(util_json_prescan(s, strlen(s), 1), 0);
    /* A NUL byte anywhere, also right after a backslash. */
    const char nul[] = {'{', '"', 'a', '\0', '"', '}'};
    ck_assert_int_eq(util_json_prescan(nul, sizeof nul, 8), -1);
    const char esc_nul[] = {'"', '\\', '\0', '"'};
    ck_assert_int_eq(util_json_prescan(esc_nul, sizeof esc_nul, 8), -1);
    /* Never reads past len: a trailing backslash at the end of the input. */
    char *tail = malloc(2);
    tail[0] = '"';
    tail[1] = '\\';
    ck_assert_int_eq(util_json_prescan(tail, 2, 8), 0);
    free(tail);
    char deep[300];
    memset(deep, '[', sizeof deep);
    ck_assert_int_eq(util_json_prescan(deep, sizeof deep, 299), -2);
    ck_assert_int_eq(util_json_prescan(deep, sizeof deep, 300), 0);
}
END_TEST

START_TEST(test_rng_reference)
{
    /* First outputs of xoshiro256** seeded through splitmix64(1), computed by
     * an independent implementation (scripts/demo_client.py's Rng, Python). */
    struct util_rng r;
    util_rng_seed(&r, 1);
    ck_assert_uint_eq(util_rng_next(&r), 12966619160104079557ULL);
    ck_assert_uint_eq(util_rng_next(&r), 9600361134598540522ULL);
    ck_assert_uint_eq(util_rng_next(&r), 10590380919521690900ULL);
}
END_TEST

START_TEST(test_rng_distributions)
{
    struct util_rng r;
    util_rng_seed(&r, 42);
    enum { N = 200000 };
    double su = 0, sn = 0, sn2 = 0;
    for (int i = 0; i < N; i++) {
        double u = util_rng_uniform(&r);
        ck_assert(u >= 0.0 && u < 1.0);
        su += u;
        double z = util_rng_normal(&r);
        ck_assert(isfinite(z));
        sn += z;
        sn2 += z * z;
    }
    ck_assert_msg(fabs(su / N - 0.5) < 0.005, "uniform mean %f", su / N);
    ck_assert_msg(fabs(sn / N) < 0.01, "normal mean %f", sn / N);
    ck_assert_msg(fabs(sn2 / N - 1.0) < 0.02, "normal variance %f", sn2 / N);
}
END_TEST

START_TEST(test_clocks)
{
    double a = util_now_ms(), b = util_now_ms();
    ck_assert(b >= a);
    ck_assert(util_wall_s() > 1.6e9); /* after 2020 */
    ck_assert_uint_ne(util_fnv1a64("a", 1, 0), util_fnv1a64("b", 1, 0));
    ck_assert_uint_ne(util_fnv1a64("a", 1, 0), util_fnv1a64("a", 1, 1));
}
END_TEST

/* The printf-free formatters give printf's bytes: random values over many
 * magnitudes, exact ties (k + 0.5e-8 representable), values near ties,
 * zero, -0, negatives, huge values, NaN and infinities. */
START_TEST(test_fmt)
{
    struct util_rng rng;
    util_rng_seed(&rng, 99);
    char a[64], b[64];
    for (int i = 0; i < 60000; i++) {
        double x;
        switch (i % 4) {
        case 0:
            x = util_rng_uniform(&rng) * pow(10, (double)(util_rng_next(&rng) % 14) - 9);
            break;
        case 1: /* at or next to a tie at the 9th decimal */
            x = ((double)(util_rng_next(&rng) % 2000000) + 0.5) / 1e8;
            x = i % 8 == 1 ? x : nextafter(x, i % 16 == 3 ? 0 : 1);
            break;
        case 2: /* n / 2^k: exact binary fractions, ties included */
            x = (double)(util_rng_next(&rng) % 100000) / (double)(1u << (util_rng_next(&rng) % 31));
            break;
        default:
            x = (double)(util_rng_next(&rng) % 1000000) * 1e-8;
        }
        util_fmt_fixed8(a, sizeof a, x);
        snprintf(b, sizeof b, "%.8f", x);
        ck_assert_msg(strcmp(a, b) == 0, "%s vs %s for %.17g", a, b, x);
    }
    const double odd[] = {0.0,         -0.0,        -1.5,       1e4,       9999.999999995,
                          1e300,       NAN,         INFINITY,   -INFINITY, 0.000000005,
                          0.000000015, 0.000000025, 1.000000005};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        util_fmt_fixed8(a, sizeof a, odd[i]);
        snprintf(b, sizeof b, "%.8f", odd[i]);
        ck_assert_str_eq(a, b);
    }
    const int ints[] = {0, 1, -1, 9, 10, 99, 100, 12345, -2147483647 - 1, 2147483647};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        util_fmt_int(a, sizeof a, ints[i]);
        snprintf(b, sizeof b, "%d", ints[i]);
        ck_assert_str_eq(a, b);
    }
}
END_TEST

START_TEST(test_all_finite)
{
    double x[40] = {0};
    const double bad[] = {INFINITY, -INFINITY, NAN, -NAN};
    for (size_t n = 0; n <= 40; n++) {
        for (size_t i = 0; i < n; i++) /* large, negative, subnormal, zero */
            x[i] = i == 3 ? DBL_MAX : i == 5 ? DBL_MIN / 4 : (double)i * (i % 2 ? -1.5 : 1e300);
        ck_assert_int_eq(util_all_finite(x, n), 1);
        for (size_t at = 0; at < n; at++) {
            for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
                double keep = x[at];
                x[at] = bad[k];
                ck_assert_int_eq(util_all_finite(x, n), 0);
                ck_assert_int_eq(util_all_finite(x, at), 1); /* before it: fine */
                x[at] = keep;
            }
        }
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("util");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_buf_cap);
    tcase_add_test(tc, test_buf_long_printf);
    tcase_add_test(tc, test_random_ids);
    tcase_add_test(tc, test_random_after_fork);
    tcase_add_test(tc, test_secret_eq);
    tcase_add_test(tc, test_json_prescan);
    tcase_add_test(tc, test_rng_reference);
    tcase_add_test(tc, test_rng_distributions);
    tcase_add_test(tc, test_clocks);
    tcase_add_test(tc, test_all_finite);
    tcase_add_test(tc, test_fmt);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
