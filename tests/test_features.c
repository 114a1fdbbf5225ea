/* Unit tests for features: determinism, shape, equivalences, odd input. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "banditd/err.h"
#include "banditd/features.h"

#define D 256

static double norm2(const double *x, int d)
{
    double s = 0.0;
    for (int i = 0; i < d; i++)
        s += x[i] * x[i];
    return sqrt(s);
}

static double cosine(const double *a, const double *b, int d)
{
    double s = 0.0;
    for (int i = 0; i < d; i++)
        s += a[i] * b[i];
    return s / (norm2(a, d) * norm2(b, d));
}

static void check_shape(const double *x, int d)
{
    for (int i = 0; i < d; i++)
        ck_assert_msg(isfinite(x[i]), "x[%d] not finite", i);
    ck_assert_double_eq_tol(norm2(x, d), 1.0, 1e-12);
    ck_assert_double_gt(x[0], 0.0);
}

static int from_json(const char *json, double *x, int d)
{
    cJSON *req = cJSON_Parse(json);
    ck_assert_ptr_nonnull(req);
    int rc = features_from_request(req, x, d);
    cJSON_Delete(req);
    return rc;
}

/* The hashed block weighs half the bias (docs/router.md, docs/results.md),
 * whatever the prompt's length: ||x[1+N_DENSE..)|| / x[0] = 0.5 before and
 * after the final normalisation (it scales both alike). */
START_TEST(test_text_block_weight)
{
    static char longp[8192];
    for (size_t i = 0; i + 1 < sizeof(longp); i++)
        longp[i] = "the quick brown fox jumps over 13 lazy dogs "[i % 44];
    const char *prompts[] = {"hi", "What is 2+2?", longp};
    for (size_t k = 0; k < sizeof(prompts) / sizeof(prompts[0]); k++) {
        double x[D];
        ck_assert_int_eq(features_from_prompt(prompts[k], x, D), BD_OK);
        check_shape(x, D);
        double h = norm2(x + 1 + FEATURES_N_DENSE, D - 1 - FEATURES_N_DENSE);
        ck_assert_double_eq_tol(h / x[0], 0.5, 1e-12);
    }
}
END_TEST

START_TEST(test_deterministic_and_shape)
{
    double a[D], b[D];
    const char *p = "Explain the difference between TCP and UDP. Give 3 examples?";
    ck_assert_int_eq(features_from_prompt(p, a, D), BD_OK);
    ck_assert_int_eq(features_from_prompt(p, b, D), BD_OK);
    ck_assert_mem_eq(a, b, sizeof(a));
    check_shape(a, D);
    /* hashed slots are populated, not just the dense ones */
    int nz = 0;
    for (int i = 1 + FEATURES_N_DENSE; i < D; i++)
        nz += a[i] != 0.0;
    ck_assert_int_gt(nz, 20);
}
END_TEST

START_TEST(test_prompt_equals_request)
{
    const char *prompts[] = {"", "hi", "What is 2+2?\nShow `code`:\n```py\nprint(1)\n```",
                             "Ünïcödé wörds — and émojis 😀 too", "a\tb  c\r\nd"};
    for (size_t k = 0; k < sizeof(prompts) / sizeof(prompts[0]); k++) {
        for (int d = FEATURES_MIN_DIM; d <= 1024; d *= 4) {
            double a[1024], b[1024];
            cJSON *req = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(req, "messages");
            cJSON *m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "role", "user");
            cJSON_AddStringToObject(m, "content", prompts[k]);
            cJSON_AddItemToArray(msgs, m);
            ck_assert_int_eq(features_from_prompt(prompts[k], a, d), BD_OK);
            ck_assert_int_eq(features_from_request(req, b, d), BD_OK);
            ck_assert_mem_eq(a, b, sizeof(double) * d);
            check_shape(a, d);
            cJSON_Delete(req);
        }
    }
}
END_TEST

START_TEST(test_array_parts_equal_string)
{
    double a[D], b[D];
    ck_assert_int_eq(from_json("{\"messages\":[{\"role\":\"user\",\"content\":\"sort a list in "
                               "python\"}]}",
                               a, D),
                     BD_OK);
    ck_assert_int_eq(from_json("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                               "\"text\",\"text\":\"sort a list in python\"},{\"type\":"
                               "\"image_url\",\"image_url\":{\"url\":\"http://x/y.png\"}}]}]}",
                               b, D),
                     BD_OK);
    ck_assert_mem_eq(a, b, sizeof(a));
}
END_TEST

START_TEST(test_different_prompts_differ)
{
    double a[D], b[D], c[D];
    features_from_prompt("How do I sort a list of numbers in Python?", a, D);
    features_from_prompt("How do I sort a list of strings in Python quickly?", b, D);
    features_from_prompt("Write a short poem about the autumn sea.", c, D);
    ck_assert(memcmp(a, b, sizeof(a)) != 0);
    ck_assert(memcmp(a, c, sizeof(a)) != 0);
    /* shared words and n-grams make related prompts closer */
    ck_assert_double_gt(cosine(a, b, D), cosine(a, c, D) + 0.1);
    ck_assert_double_lt(cosine(a, c, D), 0.9);
}
END_TEST

START_TEST(test_case_insensitive)
{
    double a[D], b[D];
    features_from_prompt("Hello World, HOW are you?", a, D);
    features_from_prompt("hello world, how are you?", b, D);
    ck_assert_mem_eq(a, b, sizeof(a));
}
END_TEST

START_TEST(test_only_user_text_is_hashed)
{
    double a[D], b[D];
    /* the assistant's words do not enter the vector (only its turn count) */
    from_json("{\"messages\":[{\"role\":\"user\",\"content\":\"tell me a joke\"},"
              "{\"role\":\"assistant\",\"content\":\"why did the chicken\"},"
              "{\"role\":\"user\",\"content\":\"another\"}]}",
              a, D);
    from_json("{\"messages\":[{\"role\":\"user\",\"content\":\"tell me a joke\"},"
              "{\"role\":\"assistant\",\"content\":\"something else entirely\"},"
              "{\"role\":\"user\",\"content\":\"another\"}]}",
              b, D);
    ck_assert_mem_eq(a, b, sizeof(a));
    /* a different user turn changes it */
    from_json("{\"messages\":[{\"role\":\"user\",\"content\":\"tell me a joke\"},"
              "{\"role\":\"assistant\",\"content\":\"why did the chicken\"},"
              "{\"role\":\"user\",\"content\":\"explain it\"}]}",
              b, D);
    ck_assert(memcmp(a, b, sizeof(a)) != 0);
}
END_TEST

START_TEST(test_dense_cues_change_vector)
{
    double base[D], v[D];
    const char *u = "{\"role\":\"user\",\"content\":\"summarise this\"}";
    char buf[512];
    snprintf(buf, sizeof(buf), "{\"messages\":[%s]}", u);
    from_json(buf, base, D);
    /* each variant: text before and after the user message */
    const char *variants[][2] = {
        {"{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},", "]}"},
        {"{\"messages\":[", "],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}"},
        {"{\"messages\":[", "],\"max_tokens\":100}"},
        {"{\"messages\":[", "],\"max_completion_tokens\":100}"},
    };
    for (size_t k = 0; k < sizeof(variants) / sizeof(variants[0]); k++) {
        snprintf(buf, sizeof(buf), "%s%s%s", variants[k][0], u, variants[k][1]);
        ck_assert_int_eq(from_json(buf, v, D), BD_OK);
        check_shape(v, D);
        ck_assert_msg(memcmp(base, v, sizeof(v)) != 0, "variant %zu did not change x", k);
        /* the hashed text part keeps its direction */
        ck_assert_double_gt(cosine(base, v, D), 0.5);
    }
    /* an empty tools array is no tools */
    snprintf(buf, sizeof(buf), "{\"messages\":[%s],\"tools\":[]}", u);
    from_json(buf, v, D);
    ck_assert_mem_eq(base, v, sizeof(v));
}
END_TEST

START_TEST(test_odd_input_is_safe)
{
    double x[D];
    /* invalid UTF-8, control bytes, lone continuation bytes, only punctuation */
    const char *odd[] = {"\xff\xfe\xfd",
                         "\x80\x80\x80\x80 abc \xc3",
                         "\x01\x02\x03\x7f",
                         "?!?!...;;;",
                         "```",
                         "``````````",
                         "   \t\n  ",
                         "x"};
    for (size_t k = 0; k < sizeof(odd) / sizeof(odd[0]); k++) {
        ck_assert_int_eq(features_from_prompt(odd[k], x, D), BD_OK);
        check_shape(x, D);
    }
    /* odd JSON shapes: messages that are not objects, missing roles/content */
    ck_assert_int_eq(from_json("{\"messages\":[1,\"x\",null,{},{\"role\":5},{\"role\":"
                               "\"user\"},{\"role\":\"user\",\"content\":null},{\"role\":"
                               "\"user\",\"content\":[1,{\"type\":\"text\"},{\"type\":"
                               "\"text\",\"text\":7}]}]}",
                               x, D),
                     BD_OK);
    check_shape(x, D);
    ck_assert_int_eq(from_json("{\"messages\":[]}", x, D), BD_OK);
    check_shape(x, D);
}
END_TEST

START_TEST(test_text_cap)
{
    /* only the first 64 KiB of a message is read: a different tail after the
     * cap does not change x */
    size_t n = 64 * 1024;
    char *a = malloc(n + 100), *b = malloc(n + 100);
    ck_assert(a && b);
    for (size_t i = 0; i < n; i++)
        a[i] = b[i] = "lorem ipsum dolor sit amet "[i % 27];
    strcpy(a + n, " completely different ending");
    strcpy(b + n, " another tail 12345 ???");
    double xa[D], xb[D];
    features_from_prompt(a, xa, D);
    features_from_prompt(b, xb, D);
    ck_assert_mem_eq(xa, xb, sizeof(xa));
    check_shape(xa, D);
    /* ...but a difference inside the cap does */
    b[10] = 'Q';
    features_from_prompt(b, xb, D);
    ck_assert(memcmp(xa, xb, sizeof(xa)) != 0);
    free(a);
    free(b);
}
END_TEST

START_TEST(test_dim_range_and_errors)
{
    static double x[FEATURES_MAX_DIM + 1];
    ck_assert_int_eq(features_from_prompt("hi", x, FEATURES_MIN_DIM - 1), BD_ERR_INVALID);
    ck_assert_int_eq(features_from_prompt("hi", x, FEATURES_MAX_DIM + 1), BD_ERR_INVALID);
    ck_assert_int_eq(features_from_prompt("hi", x, 0), BD_ERR_INVALID);
    ck_assert_int_eq(features_from_prompt("hi", x, FEATURES_MIN_DIM), BD_OK);
    check_shape(x, FEATURES_MIN_DIM);
    ck_assert_int_eq(features_from_prompt("hi", x, FEATURES_MAX_DIM), BD_OK);
    check_shape(x, FEATURES_MAX_DIM);
    ck_assert_int_eq(features_from_prompt(NULL, x, D), BD_ERR_INVALID);
    ck_assert_int_eq(from_json("{\"model\":\"auto\"}", x, D), BD_ERR_INVALID);
    ck_assert_int_eq(from_json("{\"messages\":{}}", x, D), BD_ERR_INVALID);
    ck_assert_int_eq(from_json("{\"messages\":\"hi\"}", x, D), BD_ERR_INVALID);
    ck_assert_int_eq(from_json("[1,2]", x, D), BD_ERR_INVALID);
    ck_assert_int_eq(features_from_request(NULL, x, D), BD_ERR_INVALID);
}
END_TEST

/* The hash spreads n-grams over the slots: a long varied text touches most
 * hashed slots, and the +/- signs are balanced. */
START_TEST(test_hash_spread)
{
    char text[8192];
    size_t o = 0;
    for (int i = 0; i < 600 && o + 16 < sizeof(text); i++)
        o += (size_t)snprintf(text + o, sizeof(text) - o, "w%dx%d ", i * 7919 % 1000, i % 13);
    double x[D];
    features_from_prompt(text, x, D);
    int nz = 0, pos = 0;
    for (int i = 1 + FEATURES_N_DENSE; i < D; i++) {
        nz += x[i] != 0.0;
        pos += x[i] > 0.0;
    }
    int slots = D - 1 - FEATURES_N_DENSE;
    ck_assert_int_gt(nz, slots * 9 / 10);
    ck_assert_int_gt(pos, nz / 3);
    ck_assert_int_lt(pos, nz * 2 / 3);
}
END_TEST

/* Golden vectors: x must stay bit for bit what it has been (stored vectors,
 * replays and documented figures depend on it), whichever scan runs (AVX2 or
 * byte by byte). Each case is a digest of the bit patterns of x, recorded
 * from the byte-by-byte scan. The texts reach every path: word and block
 * (512 bytes) edges, whitespace runs, fences, UTF-8, the 64 KiB cap. */
static uint64_t digest(const double *x, int d)
{
    uint64_t f = 0xcbf29ce484222325ULL;
    for (int i = 0; i < d; i++) {
        uint64_t b;
        memcpy(&b, &x[i], sizeof(b));
        f = (f ^ b) * 0x100000001b3ULL;
    }
    return f;
}

/* n bytes of mixed text from a fixed generator (no NUL). */
static char *mixed_text(size_t n, uint64_t seed)
{
    static const char *pieces[] = {
        "The ",         "quick ",   "BROWN ",       "fox_42 ",     "  ",    "\t\n",
        "```",          "`",        "x=y+z*2/3^4 ", "<a>$%\\ ",    "why? ", "caf\xc3\xa9 ",
        "\xe2\x80\x94", "\xff\x80", ", ",           "2024-11-28 ", "a",     "supercalifragilistic ",
        "\r\n    ",     "__init__("};
    char *s = malloc(n + 1);
    ck_assert_ptr_nonnull(s);
    size_t o = 0;
    while (o < n) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        const char *pc = pieces[(seed >> 33) % (sizeof(pieces) / sizeof(pieces[0]))];
        for (; *pc != '\0' && o < n; pc++)
            s[o++] = *pc;
    }
    s[n] = '\0';
    return s;
}

START_TEST(test_golden_vectors)
{
    static const uint64_t want[] = {
        0x6bd3e2de1a183843ULL, 0x9fb197e9da8a1b83ULL, 0x1e874dc13eb1cf83ULL, 0x09b3644480c11786ULL,
        0xdcc718982eb26bc5ULL, 0xb9c4c2227143f444ULL, 0x814c14de9ea91825ULL, 0x28251213dc1d5c5bULL,
        0x529aa2f583998d43ULL, 0x0001719c870c562bULL, 0x9b941f28b65dc7c3ULL, 0x1b57d5e30d126615ULL,
        0x2e60dbbcf0e4799bULL, 0x317dac9d40a027beULL, 0x78e9366a40a57e03ULL, 0xe347c0fa203ad9f8ULL,
        0x401a03c6ba4e087dULL, 0xe65006438ce36626ULL, 0xaf6165947f380cb4ULL, 0xbf642f906866f1efULL,
        0x56a2be626984840fULL, 0x6a866ff4483ab47bULL, 0xadd1d223e9449b3bULL, 0x8bfabd29df23d0c2ULL,
        0x6e42424d13cf4a4cULL, 0xa82c2da979dff2f7ULL, 0x441eadb594f9c71cULL, 0x1d186a39fc93535bULL,
        0x7af4e3741bd50496ULL, 0xc7baa7593e3a700dULL, 0x01e855429d89cc99ULL, 0xc3150fce7f9c5a97ULL,
        0x2f8fe7af3a79645bULL, 0x6daf42d59ca3d1e9ULL, 0x06e86fa85fc4769eULL, 0x47ee57896a6d78eeULL,
        0xc74840e4d03e0426ULL, 0xc7da2e34963d7262ULL, 0x7859befcb80b1d5bULL, 0x5989c5957211d6e3ULL,
        0x0b43b9a40ed8bb47ULL, 0x7fb7ae65c412fdf0ULL, 0xff9b6e163b61ab54ULL, 0xf81f14c33600277dULL,
    };
    static double x[FEATURES_MAX_DIM];
    const size_t lens[] = {0, 1, 2, 3, 40, 511, 512, 513, 1500, 3000, 66000};
    const int dims[] = {FEATURES_MIN_DIM, 256, FEATURES_MAX_DIM};
    size_t w = 0;
    char got[4096] = "";
    int bad = 0;
    for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
        char *s = mixed_text(lens[l], l + 1);
        for (size_t d = 0; d < sizeof(dims) / sizeof(dims[0]); d++) {
            ck_assert_int_eq(features_from_prompt_tw(s, x, dims[d], d == 1 ? 0.5 : 2.0), BD_OK);
            uint64_t v = digest(x, dims[d]);
            bad |= w >= sizeof(want) / sizeof(want[0]) || want[w] != v;
            w++;
            snprintf(got + strlen(got), sizeof(got) - strlen(got), "0x%016llxULL, ",
                     (unsigned long long)v);
        }
        /* the same text as a request: split into content parts, with the other cues */
        cJSON *req = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(req, "messages");
        cJSON *sys = cJSON_CreateObject(), *m = cJSON_CreateObject();
        cJSON_AddStringToObject(sys, "role", "system");
        cJSON_AddStringToObject(sys, "content", "Be brief.");
        cJSON_AddItemToArray(msgs, sys);
        cJSON_AddStringToObject(m, "role", "user");
        cJSON *parts = cJSON_AddArrayToObject(m, "content");
        for (size_t at = 0, k = 0; at < lens[l] || k == 0; k++) {
            size_t cut =
                at + (lens[l] - at) / 2 + 1 > lens[l] ? lens[l] : at + (lens[l] - at) / 2 + 1;
            char save = s[cut];
            s[cut] = '\0';
            cJSON *pt = cJSON_CreateObject();
            cJSON_AddStringToObject(pt, "type", "text");
            cJSON_AddStringToObject(pt, "text", s + at);
            cJSON_AddItemToArray(parts, pt);
            s[cut] = save;
            at = cut;
        }
        cJSON_AddItemToArray(msgs, m);
        cJSON_AddNumberToObject(req, "max_tokens", 300);
        ck_assert_int_eq(features_from_request(req, x, 256), BD_OK);
        uint64_t v = digest(x, 256);
        bad |= w >= sizeof(want) / sizeof(want[0]) || want[w] != v;
        w++;
        snprintf(got + strlen(got), sizeof(got) - strlen(got), "0x%016llxULL, ",
                 (unsigned long long)v);
        cJSON_Delete(req);
        free(s);
    }
    ck_assert_msg(!bad && w == sizeof(want) / sizeof(want[0]), "digests: %s", got);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("features");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_deterministic_and_shape);
    tcase_add_test(tc, test_text_block_weight);
    tcase_add_test(tc, test_prompt_equals_request);
    tcase_add_test(tc, test_array_parts_equal_string);
    tcase_add_test(tc, test_different_prompts_differ);
    tcase_add_test(tc, test_case_insensitive);
    tcase_add_test(tc, test_only_user_text_is_hashed);
    tcase_add_test(tc, test_dense_cues_change_vector);
    tcase_add_test(tc, test_odd_input_is_safe);
    tcase_add_test(tc, test_text_cap);
    tcase_add_test(tc, test_dim_range_and_errors);
    tcase_add_test(tc, test_hash_spread);
    tcase_add_test(tc, test_golden_vectors);
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
