/* Unit tests of the dataset loader (src/dataset.c). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "banditd/dataset.h"
#include "banditd/err.h"

static char tmpdir[256];

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_dataset.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

static const char *write_file(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
    return path;
}

static const char SMALL[] =
    "{\"id\": \"r1\", \"prompt\": \"What is 2+2?\", \"source\": \"maths\", \"extra\": [1,2],"
    " \"outcomes\": {\"big\": {\"quality\": 1.0, \"prompt_tokens\": 10, \"completion_tokens\": 5,"
    " \"cost_usd\": 0.00025, \"latency_ms\": null, \"response\": \"4\"},"
    " \"small\": {\"quality\": 0.0, \"prompt_tokens\": 10, \"completion_tokens\": 7,"
    " \"cost_usd\": 0.0000102, \"response\": \"5\"}}}\n"
    "\n"
    "{\"id\": \"r2\", \"prompt\": \"Say hi \\u00e9\", \"source\": \"chat\","
    " \"outcomes\": {\"small\": {\"quality\": 0.5, \"prompt_tokens\": 3, \"completion_tokens\": 2,"
    " \"cost_usd\": 0.000003}, \"third\": {\"quality\": 0.25, \"prompt_tokens\": 3,"
    " \"completion_tokens\": 1, \"cost_usd\": 0.001}}}\n"
    "{\"id\": \"r3\", \"prompt\": \"What is 2+2?\", \"outcomes\": {\"big\": {\"quality\": 0.0}}}\n";

START_TEST(parses_rows_models_and_outcomes)
{
    dataset *ds = NULL;
    char err[256] = "";
    int rc = dataset_load(write_file("a.jsonl", SMALL), 0, &ds, err, sizeof err);
    ck_assert_msg(rc == 0, "load: %s", err);
    ck_assert_uint_eq(dataset_n_rows(ds), 3);
    /* union of models in first-seen order */
    ck_assert_int_eq(dataset_n_models(ds), 3);
    ck_assert_str_eq(dataset_model(ds, 0), "big");
    ck_assert_str_eq(dataset_model(ds, 1), "small");
    ck_assert_str_eq(dataset_model(ds, 2), "third");
    ck_assert_int_eq(dataset_model_index(ds, "third"), 2);
    ck_assert_int_eq(dataset_model_index(ds, "nope"), -1);

    const struct dataset_row *r = dataset_row(ds, 0);
    ck_assert_str_eq(r->id, "r1");
    ck_assert_str_eq(r->source, "maths");
    ck_assert_str_eq(r->prompt, "What is 2+2?");
    const struct dataset_outcome *o = dataset_outcome(r, 1);
    ck_assert_ptr_nonnull(o);
    ck_assert_double_eq(o->quality, 0.0);
    ck_assert_int_eq(o->prompt_tokens, 10);
    ck_assert_int_eq(o->completion_tokens, 7);
    ck_assert_double_eq_tol(o->cost_usd, 0.0000102, 1e-15);
    ck_assert_ptr_null(o->response);           /* responses only when asked */
    ck_assert_ptr_null(dataset_outcome(r, 2)); /* row 1 has no "third" */
    ck_assert_int_eq(dataset_row_complete(ds, r), 0);

    r = dataset_row(ds, 1);
    ck_assert_str_eq(r->prompt, "Say hi \xc3\xa9");
    ck_assert_ptr_null(dataset_outcome(r, 0));
    ck_assert_double_eq(dataset_outcome(r, 2)->quality, 0.25);
    r = dataset_row(ds, 2);
    ck_assert_str_eq(r->source, ""); /* absent source */
    ck_assert_int_eq(dataset_outcome(r, 0)->completion_tokens, 0);
    dataset_destroy(ds);
}
END_TEST

START_TEST(loads_responses_when_asked)
{
    dataset *ds = NULL;
    char err[256] = "";
    ck_assert_int_eq(
        dataset_load(write_file("a.jsonl", SMALL), DATASET_LOAD_RESPONSES, &ds, err, sizeof err),
        0);
    ck_assert_str_eq(dataset_outcome(dataset_row(ds, 0), 0)->response, "4");
    ck_assert_str_eq(dataset_outcome(dataset_row(ds, 0), 1)->response, "5");
    ck_assert_ptr_null(dataset_outcome(dataset_row(ds, 1), 1)->response);
    dataset_destroy(ds);
}
END_TEST

START_TEST(lookup_by_prompt)
{
    dataset *ds = NULL;
    char err[256] = "";
    ck_assert_int_eq(dataset_load(write_file("a.jsonl", SMALL), 0, &ds, err, sizeof err), 0);
    const char *p = "What is 2+2?";
    const struct dataset_row *r = dataset_find_prompt(ds, p, strlen(p));
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(r->id, "r1"); /* the first of the duplicates */
    r = dataset_find_prompt(ds, "Say hi \xc3\xa9", strlen("Say hi \xc3\xa9"));
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(r->id, "r2");
    /* prefixes, extensions and near misses do not match */
    ck_assert_ptr_null(dataset_find_prompt(ds, p, strlen(p) - 1));
    ck_assert_ptr_null(dataset_find_prompt(ds, "What is 2+2?!", 13));
    ck_assert_ptr_null(dataset_find_prompt(ds, "what is 2+2?", 12));
    ck_assert_ptr_null(dataset_find_prompt(ds, "", 0));
    dataset_destroy(ds);
}
END_TEST

/* Errors name the file and the 1-based line number (blank lines count). */
static void expect_error(const char *text, int code, const char *needle)
{
    dataset *ds = (dataset *)0x1;
    char err[512] = "";
    const char *path = write_file("bad.jsonl", text);
    int rc = dataset_load(path, 0, &ds, err, sizeof err);
    ck_assert_int_eq(rc, code);
    ck_assert_ptr_eq(ds, (dataset *)0x1); /* untouched */
    ck_assert_msg(strstr(err, needle) != NULL, "error \"%s\" lacks \"%s\"", err, needle);
    ck_assert_msg(strstr(err, path) != NULL, "error \"%s\" lacks the path", err);
}

START_TEST(malformed_lines_name_their_number)
{
    const char *good = "{\"prompt\": \"a\", \"outcomes\": {\"m\": {\"quality\": 1}}}\n";
    char text[1024];
    snprintf(text, sizeof text,
             "%s\n%s{\"prompt\": \"b\", \"outcomes\": {\"m\": {\"quality\": 1}}\n", good, good);
    expect_error(text, BD_ERR_INVALID, ":4: not a JSON object");
    snprintf(text, sizeof text, "%s%s{\"outcomes\": {\"m\": {\"quality\": 1}}}\n", good, good);
    expect_error(text, BD_ERR_INVALID, ":3: \"prompt\"");
    snprintf(text, sizeof text,
             "%s{\"prompt\": \"b\", \"outcomes\": {\"m\": {\"quality\": 1.5}}}\n", good);
    expect_error(text, BD_ERR_INVALID, ":2: outcomes.m.quality");
    snprintf(text, sizeof text,
             "%s{\"prompt\": \"b\", \"outcomes\": {\"m\": {\"quality\": 1, "
             "\"cost_usd\": -1}}}\n",
             good);
    expect_error(text, BD_ERR_INVALID, ":2: outcomes.m:");
    snprintf(text, sizeof text, "{\"prompt\": \"b\", \"outcomes\": {}}\n");
    expect_error(text, BD_ERR_INVALID, ":1: \"outcomes\"");
    snprintf(text, sizeof text, "%s[1,2]\n", good);
    expect_error(text, BD_ERR_INVALID, ":2: not a JSON object");
    expect_error("\n\n", BD_ERR_INVALID, "no rows");
}
END_TEST

START_TEST(overlong_line_is_rejected)
{
    size_t big = DATASET_LINE_MAX + 100;
    char *text = malloc(big + 200);
    ck_assert_ptr_nonnull(text);
    int n = sprintf(text, "{\"prompt\": \"a\", \"outcomes\": {\"m\": {\"quality\": 1}}}\n"
                          "{\"prompt\": \"");
    memset(text + n, 'x', big);
    strcpy(text + n + big, "\", \"outcomes\": {\"m\": {\"quality\": 1}}}\n");
    expect_error(text, BD_ERR_TOOBIG, ":2: line longer than");
    free(text);
}
END_TEST

START_TEST(missing_file_is_io_error)
{
    dataset *ds = NULL;
    char err[256] = "";
    ck_assert_int_eq(dataset_load("/nonexistent/x.jsonl", 0, &ds, err, sizeof err), BD_ERR_IO);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/x.jsonl"));
    ck_assert_int_eq(dataset_load("/nonexistent/x.jsonl.gz", 0, &ds, err, sizeof err), BD_ERR_IO);
    ck_assert_ptr_null(ds);
}
END_TEST

START_TEST(reads_gzip_through_gzip_dc)
{
    const char *plain = write_file("it's.jsonl", SMALL); /* a quote in the name, on purpose */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "gzip -9 -k \"%s\"", plain);
    ck_assert_int_eq(system(cmd), 0);
    char gz[600];
    snprintf(gz, sizeof gz, "%s.gz", plain);
    dataset *ds = NULL;
    char err[256] = "";
    int rc = dataset_load(gz, DATASET_LOAD_RESPONSES, &ds, err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_uint_eq(dataset_n_rows(ds), 3);
    ck_assert_str_eq(dataset_outcome(dataset_row(ds, 0), 0)->response, "4");
    dataset_destroy(ds);
    /* a corrupt .gz is an error, not an empty dataset */
    const char *bad = write_file("bad.jsonl.gz", "this is not gzip");
    ck_assert_int_ne(dataset_load(bad, 0, &ds, err, sizeof err), 0);
}
END_TEST

START_TEST(prices_from_file_and_fallback)
{
    dataset *ds = NULL;
    char err[256] = "";
    ck_assert_int_eq(dataset_load(write_file("a.jsonl", SMALL), 0, &ds, err, sizeof err), 0);
    double in = -1, out = -1;
    /* No file yet: blended price = sum cost * 1e6 / sum tokens of the model's rows. */
    ck_assert_int_eq(dataset_price(ds, 2, &in, &out), 1);
    ck_assert_double_eq_tol(in, 0.001 * 1e6 / 4.0, 1e-9);
    ck_assert_double_eq_tol(out, in, 1e-12);
    const char *pp = write_file("prices.json", "{\"big\": {\"input\": 10.0, \"output\": 30.0},"
                                               " \"other\": {\"input\": 1, \"output\": 2},"
                                               " \"small\": {\"input\": 0.6, \"output\": 0.6}}");
    ck_assert_int_eq(dataset_load_prices(ds, pp, err, sizeof err), 0);
    ck_assert_int_eq(dataset_price(ds, 0, &in, &out), 0);
    ck_assert_double_eq(in, 10.0);
    ck_assert_double_eq(out, 30.0);
    ck_assert_int_eq(dataset_price(ds, 1, &in, &out), 0);
    ck_assert_double_eq(out, 0.6);
    ck_assert_int_eq(dataset_price(ds, 2, &in, &out), 1); /* still derived */
    ck_assert_int_eq(dataset_price(ds, 3, &in, &out), BD_ERR_NOTFOUND);
    pp = write_file("bad.json", "{\"big\": {\"input\": \"ten\", \"output\": 30}}");
    ck_assert_int_eq(dataset_load_prices(ds, pp, err, sizeof err), BD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "big"));
    ck_assert_int_eq(dataset_load_prices(ds, "/nonexistent.json", err, sizeof err), BD_ERR_IO);
    dataset_destroy(ds);
}
END_TEST

START_TEST(latency_model)
{
    static const char *models[] = {"gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1",
                                   "llama-2-7b-chat-hf", "llama-2-70b-chat-hf",
                                   "Yi-34B-Chat",        "gpt-3.5-turbo-1106",
                                   "unknown-model"};
    for (size_t i = 0; i < sizeof models / sizeof *models; i++) {
        double prev = -1;
        for (long t = 0; t <= 4000; t += 50) {
            double l = dataset_latency_ms(models[i], t);
            ck_assert(isfinite(l));
            ck_assert_msg(l > prev, "%s not increasing at %ld", models[i], t);
            prev = l;
        }
        struct dataset_latency p = dataset_latency_of(models[i]);
        ck_assert_double_eq_tol(dataset_latency_ms(models[i], 0), p.ttft_ms, 1e-9);
        ck_assert_double_eq_tol(dataset_latency_ms(models[i], -5), p.ttft_ms, 1e-9);
    }
    /* The stated assumptions: GPT-4 600 ms + 30 tok/s; Mixtral 300 ms + 80 tok/s. */
    ck_assert_double_eq_tol(dataset_latency_ms("gpt-4-1106-preview", 300), 600 + 10000, 1e-6);
    ck_assert_double_eq_tol(dataset_latency_ms("mixtral-8x7b-instruct-v0.1", 160), 300 + 2000,
                            1e-6);
    /* size-based defaults: a 7B model is faster than a 70B one */
    ck_assert(dataset_latency_ms("llama-2-7b-chat-hf", 500) <
              dataset_latency_ms("llama-2-70b-chat-hf", 500));
    ck_assert(dataset_latency_ms("mixtral-8x7b-instruct-v0.1", 500) <
              dataset_latency_ms("gpt-4-1106-preview", 500));
}
END_TEST

/* The real data, when the shared copy is present (from the repo root). */
START_TEST(real_alpacaeval_when_present)
{
    const char *path = "../shared/data/alpacaeval_12models.dev.jsonl";
    if (access(path, R_OK) != 0)
        return; /* not shipped with the project (non-commercial licence) */
    dataset *ds = NULL;
    char err[256] = "";
    ck_assert_msg(dataset_load(path, 0, &ds, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(dataset_n_rows(ds), 540);
    ck_assert_int_eq(dataset_n_models(ds), 12);
    for (size_t i = 0; i < dataset_n_rows(ds); i++) {
        const struct dataset_row *r = dataset_row(ds, i);
        const struct dataset_row *f = dataset_find_prompt(ds, r->prompt, strlen(r->prompt));
        ck_assert_ptr_nonnull(f);
        ck_assert_str_eq(f->prompt, r->prompt);
        ck_assert_int_eq(dataset_row_complete(ds, r), 1);
    }
    dataset_destroy(ds);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dataset");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, parses_rows_models_and_outcomes);
    tcase_add_test(tc, loads_responses_when_asked);
    tcase_add_test(tc, lookup_by_prompt);
    tcase_add_test(tc, malformed_lines_name_their_number);
    tcase_add_test(tc, overlong_line_is_rejected);
    tcase_add_test(tc, missing_file_is_io_error);
    tcase_add_test(tc, reads_gzip_through_gzip_dc);
    tcase_add_test(tc, prices_from_file_and_fallback);
    tcase_add_test(tc, latency_model);
    tcase_add_test(tc, real_alpacaeval_when_present);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
