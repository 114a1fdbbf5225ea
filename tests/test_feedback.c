/* Unit tests for feedback_handle against the real decisions store, router
 * and linucb: statuses, OpenAI error shapes, exactly-once, batches, limits. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "banditd/config.h"
#include "banditd/decisions.h"
#include "banditd/err.h"
#include "banditd/feedback.h"
#include "banditd/linucb.h"
#include "banditd/router.h"
#include "banditd/util.h"

#define DIM 16
#define TTL 100.0
#define T0 1000.0

static struct config *cfg;
static router *rt;
static decisions *ds;

static void setup(void)
{
    cfg = calloc(1, sizeof *cfg);
    ck_assert_ptr_nonnull(cfg);
    cfg->n_arms = 2;
    snprintf(cfg->arms[0].name, sizeof cfg->arms[0].name, "cheap");
    snprintf(cfg->arms[1].name, sizeof cfg->arms[1].name, "strong");
    cfg->arms[0].price_in_per_mtok = 0.5;
    cfg->arms[0].price_out_per_mtok = 1.5;
    cfg->arms[1].price_in_per_mtok = 5;
    cfg->arms[1].price_out_per_mtok = 15;
    cfg->router.policy = CONFIG_POLICY_LINUCB;
    cfg->router.dim = DIM;
    cfg->router.alpha = 0.1;
    cfg->router.lambda = 1;
    cfg->router.mu0 = 1;
    cfg->router.forgetting = 1;
    cfg->router.thompson_v = 0.1;
    cfg->router.seed = 1;
    cfg->router.refactor_every = 1000;
    rt = router_create(cfg);
    ck_assert_ptr_nonnull(rt);
    ds = decisions_create(DIM, 1000, TTL);
    ck_assert_ptr_nonnull(ds);
}

static void teardown(void)
{
    decisions_destroy(ds);
    router_destroy(rt);
    free(cfg);
}

static void features(double *x, int seed)
{
    double n = 0;
    for (int i = 0; i < DIM; i++) {
        x[i] = sin(seed * 7.0 + i * 1.3);
        n += x[i] * x[i];
    }
    for (int i = 0; i < DIM; i++)
        x[i] /= sqrt(n);
}

/* Add a decision with id "<32 hex of k>" for arm, client. */
static void add(int k, int arm, uint64_t client, char id[33])
{
    struct decision d;
    double x[DIM];
    memset(&d, 0, sizeof d);
    snprintf(d.id, sizeof d.id, "%032x", (unsigned)k);
    features(x, k);
    d.x = x;
    d.arm = arm;
    d.client = client;
    d.created_s = T0;
    d.w.quality = 1;
    ck_assert_int_eq(decisions_add(ds, &d), 0);
    if (id)
        memcpy(id, d.id, 33);
}

static uint64_t count(int arm)
{
    return linucb_count(router_model(rt, arm));
}

/* POST body; returns the parsed response and sets *status. */
static cJSON *post_as(const char *body, uint64_t client, int admin, double now, int *status)
{
    char *out = NULL;
    *status = 0;
    int rc = feedback_handle(ds, rt, body, strlen(body), client, admin, now, status, &out);
    ck_assert_int_eq(rc, 0);
    ck_assert_ptr_nonnull(out);
    cJSON *j = cJSON_Parse(out);
    ck_assert_msg(j != NULL, "response is not JSON: %s", out);
    free(out);
    return j;
}

static cJSON *post(const char *body, int *status)
{
    return post_as(body, 0, 0, T0 + 1, status);
}

/* Check an OpenAI error object and return its code. */
static const char *check_error_obj(const cJSON *e)
{
    ck_assert(cJSON_IsObject(e));
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "type");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "param");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "code");
    ck_assert(cJSON_IsString(m) && strlen(m->valuestring) > 0);
    ck_assert(cJSON_IsString(t) && strlen(t->valuestring) > 0);
    ck_assert(p != NULL && (cJSON_IsString(p) || cJSON_IsNull(p)));
    ck_assert(cJSON_IsString(c));
    return c->valuestring;
}

/* Expect an error response with status and code. */
static void expect_error_as(const char *body, uint64_t client, int admin, double now, int want,
                            const char *code)
{
    int st;
    cJSON *j = post_as(body, client, admin, now, &st);
    ck_assert_msg(st == want, "body %s: status %d, want %d", body, st, want);
    ck_assert_int_eq(cJSON_GetArraySize(j), 1);
    const char *got = check_error_obj(cJSON_GetObjectItemCaseSensitive(j, "error"));
    ck_assert_msg(strcmp(got, code) == 0, "body %s: code %s, want %s", body, got, code);
    cJSON_Delete(j);
}

static void expect_error(const char *body, int want, const char *code)
{
    expect_error_as(body, 0, 0, T0 + 1, want, code);
}

static void expect_applied_at(const char *body, uint64_t client, int admin, double now,
                              const char *id, int arm)
{
    int st;
    cJSON *j = post_as(body, client, admin, now, &st);
    ck_assert_msg(st == 200, "body %s: status %d", body, st);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "request_id")->valuestring, id);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "status")->valuestring, "applied");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "arm");
    ck_assert(cJSON_IsNumber(a) && a->valuedouble == arm);
    cJSON_Delete(j);
}

static void expect_applied_as(const char *body, uint64_t client, int admin, const char *id, int arm)
{
    expect_applied_at(body, client, admin, T0 + 1, id, arm);
}

static void expect_applied(const char *body, const char *id, int arm)
{
    expect_applied_as(body, 0, 0, id, arm);
}

START_TEST(test_applied_updates_model_once)
{
    char id[33], body[256];
    add(1, 1, 0, id);
    snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"reward\":0.8}", id);
    expect_applied(body, id, 1);
    ck_assert_uint_eq(count(1), 1);
    ck_assert_uint_eq(count(0), 0);
    /* b = (r - mu0) x, computed independently. */
    double x[DIM];
    features(x, 1);
    const double *b = linucb_b(router_model(rt, 1));
    for (int i = 0; i < DIM; i++)
        ck_assert_double_eq_tol(b[i], (0.8 - 1.0) * x[i], 1e-12);
    struct router_arm_stats st;
    router_arm_stats(rt, 1, &st);
    ck_assert_uint_eq(st.feedback, 1);
    ck_assert_double_eq_tol(st.reward_sum, 0.8, 1e-12);
    ck_assert_uint_eq(decisions_pending(ds), 0);

    /* Exactly once: the second attempt is 409 and changes nothing. */
    expect_error(body, 409, "duplicate_feedback");
    ck_assert_uint_eq(count(1), 1);
    /* Also with a comment and surrounding whitespace. */
    snprintf(body, sizeof body, "\n {\"request_id\":\"%s\",\"reward\":0.1,\"comment\":\"x\"} \n",
             id);
    expect_error(body, 409, "duplicate_feedback");
}
END_TEST

START_TEST(test_bool_and_boundary_rewards)
{
    char a[33], b[33], c[33], d[33], body[256];
    add(1, 0, 0, a);
    add(2, 0, 0, b);
    add(3, 1, 0, c);
    add(4, 1, 0, d);
    snprintf(body, sizeof body, "{\"reward\":true,\"request_id\":\"%s\"}", a);
    expect_applied(body, a, 0);
    snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"reward\":false}", b);
    expect_applied(body, b, 0);
    snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"reward\":1}", c);
    expect_applied(body, c, 1);
    snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"reward\":-0.0,\"comment\":null}", d);
    expect_applied(body, d, 1);
    struct router_arm_stats st;
    router_arm_stats(rt, 0, &st);
    ck_assert_uint_eq(st.feedback, 2);
    ck_assert_double_eq_tol(st.reward_sum, 1.0, 1e-12);
    router_arm_stats(rt, 1, &st);
    ck_assert_uint_eq(st.feedback, 2);
    ck_assert_double_eq_tol(st.reward_sum, 1.0, 1e-12);
    /* Arm 0: b = (1-1)·x1 + (0-1)·x2 = -x2. */
    double x2[DIM];
    features(x2, 2);
    const double *bv = linucb_b(router_model(rt, 0));
    for (int i = 0; i < DIM; i++)
        ck_assert_double_eq_tol(bv[i], -x2[i], 1e-12);
}
END_TEST

START_TEST(test_invalid_bodies)
{
    char id[33], body[512];
    add(1, 0, 0, id);
#define B(fmt) (snprintf(body, sizeof body, fmt, id), body)
    expect_error(B("{\"request_id\":\"%s\",\"reward\":1.5}"), 400, "invalid_reward");
    expect_error(B("{\"request_id\":\"%s\",\"reward\":-0.1}"), 400, "invalid_reward");
    expect_error(B("{\"request_id\":\"%s\",\"reward\":\"0.5\"}"), 400, "invalid_reward");
    expect_error(B("{\"request_id\":\"%s\",\"reward\":null}"), 400, "invalid_reward");
    expect_error(B("{\"request_id\":\"%s\",\"reward\":[0.5]}"), 400, "invalid_reward");
    expect_error(B("{\"request_id\":\"%s\",\"reward\":1e999}"), 400, "invalid_reward");
    expect_error(B("{\"request_id\":\"%s\",\"reward\":-1e999}"), 400, "invalid_reward");
    expect_error(B("{\"request_id\":\"%s\",\"reward\":1.0000001}"), 400, "invalid_reward");
    expect_error(B("{\"request_id\":\"%s\"}"), 400, "missing_reward");
    expect_error("{\"reward\":0.5}", 400, "missing_request_id");
    expect_error("{}", 400, "missing_request_id");
    expect_error("{\"request_id\":42,\"reward\":0.5}", 400, "invalid_request_id");
    expect_error("{\"request_id\":\"\",\"reward\":0.5}", 400, "invalid_request_id");
    expect_error("{\"request_id\":null,\"reward\":0.5}", 400, "invalid_request_id");
    expect_error(B("{\"request_id\":\"%s\",\"reward\":0.5,\"rewrad\":1}"), 400, "unknown_field");
    expect_error(B("{\"request_id\":\"%s\",\"Reward\":0.5}"), 400, "unknown_field");
    expect_error(B("{\"request_id\":\"%s\",\"reward\":0.5,\"reward\":0.6}"), 400,
                 "duplicate_field");
    expect_error(B("{\"request_id\":\"%s\",\"reward\":0.5,\"comment\":5}"), 400, "invalid_comment");
    expect_error("[]", 400, "invalid_body");
    expect_error("\"x\"", 400, "invalid_body");
    expect_error("1", 400, "invalid_body");
    expect_error("null", 400, "invalid_body");
    expect_error("", 400, "invalid_json");
    expect_error("   ", 400, "invalid_json");
    expect_error("{", 400, "invalid_json");
    expect_error(B("{\"request_id\":\"%s\",\"reward\":0.5} x"), 400, "invalid_json");
    expect_error(B("{\"request_id\":\"%s\",\"reward\":0.5}{}"), 400, "invalid_json");
    expect_error(B("{\"request_id\":'%s',\"reward\":0.5}"), 400, "invalid_json");
#undef B
    /* The unknown field is named in param. */
    int st;
    cJSON *j = post("{\"request_id\":\"a\",\"reward\":0.5,\"bogus\":1}", &st);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "param")->valuestring, "bogus");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "type")->valuestring,
                     "invalid_request_error");
    ck_assert_ptr_nonnull(
        strstr(cJSON_GetObjectItemCaseSensitive(e, "message")->valuestring, "bogus"));
    cJSON_Delete(j);
    /* A long, binary field name is echoed bounded and as printable ASCII. */
    char big[2048];
    size_t n = (size_t)snprintf(big, sizeof big, "{\"request_id\":\"a\",\"reward\":0.5,\"");
    for (int i = 0; i < 1000; i++)
        big[n++] = (char)(i % 2 ? 'z' : 0xc3);
    snprintf(big + n, sizeof big - n, "\":1}");
    j = post(big, &st);
    ck_assert_int_eq(st, 400);
    e = cJSON_GetObjectItemCaseSensitive(j, "error");
    const char *p = cJSON_GetObjectItemCaseSensitive(e, "param")->valuestring;
    ck_assert_uint_le(strlen(p), 64);
    for (const char *q = p; *q; q++)
        ck_assert(*q >= 0x20 && *q < 0x7f);
    cJSON_Delete(j);

    /* Nothing above touched the model or the decision. */
    ck_assert_uint_eq(count(0), 0);
    ck_assert_uint_eq(count(1), 0);
    ck_assert_uint_eq(decisions_pending(ds), 1);
    snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"reward\":1.0}", id);
    expect_applied(body, id, 0);
}
END_TEST

START_TEST(test_nesting_limit)
{
    /* 32 levels: parsed, then rejected for its content (unknown field). */
    char body[256];
    size_t n = (size_t)snprintf(body, sizeof body, "{\"a\":");
    for (int i = 0; i < 31; i++)
        body[n++] = '[';
    for (int i = 0; i < 31; i++)
        body[n++] = ']';
    snprintf(body + n, sizeof body - n, "}");
    expect_error(body, 400, "unknown_field");
    /* 33 levels: rejected before parsing. */
    n = (size_t)snprintf(body, sizeof body, "{\"a\":");
    for (int i = 0; i < 32; i++)
        body[n++] = '[';
    for (int i = 0; i < 32; i++)
        body[n++] = ']';
    snprintf(body + n, sizeof body - n, "}");
    expect_error(body, 400, "invalid_json");
    /* Brackets inside strings (with escaped quotes) do not count. */
    n = (size_t)snprintf(body, sizeof body, "{\"request_id\":\"\\\"");
    for (int i = 0; i < 100; i++)
        body[n++] = '[';
    snprintf(body + n, sizeof body - n, "\",\"reward\":0.5}");
    expect_error(body, 404, "unknown_request_id");
    /* A very deep body (100k levels) is refused cheaply. */
    size_t big = 200000;
    char *deep = malloc(big + 1);
    for (size_t i = 0; i < big / 2; i++) {
        deep[i] = '[';
        deep[big - 1 - i] = ']';
    }
    deep[big] = '\0';
    expect_error(deep, 400, "invalid_json");
    free(deep);
}
END_TEST

START_TEST(test_not_found_expired_exists)
{
    char a[33], b[33], body[256];
    expect_error("{\"request_id\":\"ffffffffffffffffffffffffffffffff\",\"reward\":0.5}", 404,
                 "unknown_request_id");
    expect_error("{\"request_id\":\"chatcmpl-nope\",\"reward\":0.5}", 404, "unknown_request_id");
    add(1, 0, 0, a);
    add(2, 1, 0, b);
    snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"reward\":0.5}", a);
    /* At exactly ttl it is accepted... */
    expect_applied_at(body, 0, 0, T0 + TTL, a, 0);
    /* ...past it, 410, before and after the purge. */
    snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"reward\":0.5}", b);
    expect_error_as(body, 0, 0, T0 + TTL + 0.5, 410, "expired_request_id");
    ck_assert_uint_eq(decisions_expire(ds, T0 + TTL + 0.5, 10), 1);
    expect_error_as(body, 0, 0, T0 + TTL + 1, 410, "expired_request_id");
    ck_assert_uint_eq(count(1), 0);
    ck_assert_uint_eq(count(0), 1);
    /* The taken one still answers 409 after its ttl passed. */
    snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"reward\":0.5}", a);
    expect_error_as(body, 0, 0, T0 + TTL + 1, 409, "duplicate_feedback");
}
END_TEST

START_TEST(test_by_completion_id)
{
    char a[33];
    add(1, 1, 0, a);
    ck_assert_int_eq(decisions_complete(ds, a, "chatcmpl-abc123", 0.01, 900), 0);
    expect_applied("{\"request_id\":\"chatcmpl-abc123\",\"reward\":0.9}", a, 1);
    ck_assert_uint_eq(count(1), 1);
    expect_error("{\"request_id\":\"chatcmpl-abc123\",\"reward\":0.9}", 409, "duplicate_feedback");
    char body[256];
    snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"reward\":0.9}", a);
    expect_error(body, 409, "duplicate_feedback");
    ck_assert_uint_eq(count(1), 1);
}
END_TEST

START_TEST(test_clients_and_admin)
{
    char a[33], b[33], c[33], body[256];
    add(1, 0, 7, a);
    add(2, 1, 7, b);
    add(3, 1, 0, c);
    snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"reward\":0.5}", a);
    expect_error_as(body, 8, 0, T0 + 1, 403, "forbidden");
    expect_error_as(body, 0, 0, T0 + 1, 403, "forbidden");
    ck_assert_uint_eq(count(0), 0);
    expect_applied_as(body, 7, 0, a, 0);
    ck_assert_uint_eq(count(0), 1);
    /* Admin may rate another client's request. */
    snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"reward\":0.5}", b);
    expect_applied_as(body, 8, 1, b, 1);
    ck_assert_uint_eq(count(1), 1);
    /* A decision made without a client key: a keyed caller is another client. */
    snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"reward\":0.5}", c);
    expect_error_as(body, 5, 0, T0 + 1, 403, "forbidden");
    expect_applied_as(body, 0, 0, c, 1);
    ck_assert_uint_eq(count(1), 2);
}
END_TEST

START_TEST(test_router_failure_not_taken)
{
    /* An arm index the router does not have: router_feedback fails. */
    struct decision d;
    double x[DIM];
    memset(&d, 0, sizeof d);
    snprintf(d.id, sizeof d.id, "badarm");
    features(x, 1);
    d.x = x;
    d.arm = 5;
    d.created_s = T0;
    ck_assert_int_eq(decisions_add(ds, &d), 0);
    /* Non-finite features: linucb refuses the update. */
    snprintf(d.id, sizeof d.id, "nanx");
    x[3] = NAN;
    d.arm = 0;
    ck_assert_int_eq(decisions_add(ds, &d), 0);

    expect_error("{\"request_id\":\"badarm\",\"reward\":0.5}", 500, "feedback_not_applied");
    expect_error("{\"request_id\":\"nanx\",\"reward\":0.5}", 500, "feedback_not_applied");
    ck_assert_uint_eq(count(0), 0);
    ck_assert_uint_eq(count(1), 0);
    /* Still pending (not taken): a retry meets the same answer, not 409. */
    const struct decision *o;
    ck_assert_int_eq(decisions_find(ds, "badarm", T0 + 1, &o), 0);
    ck_assert_int_eq(decisions_find(ds, "nanx", T0 + 1, &o), 0);
    expect_error("{\"request_id\":\"badarm\",\"reward\":0.5}", 500, "feedback_not_applied");
}
END_TEST

static const cJSON *item_at(const cJSON *data, int i)
{
    return cJSON_GetArrayItem(data, i);
}

static const char *item_str(const cJSON *it, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(it, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

START_TEST(test_batch_mixed)
{
    char a[33], b[33], c[33], e[33], body[2048];
    add(1, 0, 0, a);
    add(2, 1, 0, b);
    add(3, 1, 0, c);
    add(4, 0, 0, e);
    ck_assert_int_eq(decisions_complete(ds, b, "chatcmpl-b", 0, 0), 0);
    ck_assert_uint_eq(decisions_expire(ds, T0 + 1, 10), 0);
    snprintf(body, sizeof body,
             "{\"feedback\":["
             "{\"request_id\":\"%s\",\"reward\":0.25},"         /* 0 applied */
             "{\"request_id\":\"%s\",\"reward\":1},"            /* 1 duplicate in batch */
             "{\"request_id\":\"nope\",\"reward\":1},"          /* 2 unknown */
             "{\"request_id\":\"%s\",\"reward\":1.5},"          /* 3 invalid reward */
             "{\"request_id\":\"chatcmpl-b\",\"reward\":true}," /* 4 applied by completion id */
             "5,"                                               /* 5 not an object */
             "{\"request_id\":\"%s\",\"reward\":0,\"x\":1},"    /* 6 unknown field */
             "{\"request_id\":\"%s\",\"reward\":0}"             /* 7 applied */
             "]}",
             a, a, c, c, e);
    int st;
    cJSON *j = post(body, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(item_str(j, "object"), "list");
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(j, "applied")->valueint, 3);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(j, "failed")->valueint, 5);
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data");
    ck_assert_int_eq(cJSON_GetArraySize(data), 8);
    static const char *const want_code[8] = {
        NULL, "duplicate_feedback", "unknown_request_id", "invalid_reward",
        NULL, "invalid_body",       "unknown_field",      NULL};
    const char *want_id[8] = {a, a, "nope", c, b, NULL, c, e};
    const int want_arm[8] = {0, -1, -1, -1, 1, -1, -1, 0};
    for (int i = 0; i < 8; i++) {
        const cJSON *it = item_at(data, i);
        const cJSON *rid = cJSON_GetObjectItemCaseSensitive(it, "request_id");
        if (want_id[i])
            ck_assert_str_eq(rid->valuestring, want_id[i]);
        else
            ck_assert(cJSON_IsNull(rid));
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(it, "error");
        const cJSON *arm = cJSON_GetObjectItemCaseSensitive(it, "arm");
        if (want_code[i]) {
            ck_assert_str_eq(item_str(it, "status"), "error");
            ck_assert_str_eq(check_error_obj(err), want_code[i]);
            ck_assert_ptr_null(arm);
        } else {
            ck_assert_str_eq(item_str(it, "status"), "applied");
            ck_assert_ptr_null(err);
            ck_assert(cJSON_IsNumber(arm) && arm->valueint == want_arm[i]);
        }
    }
    cJSON_Delete(j);
    ck_assert_uint_eq(count(0), 2);
    ck_assert_uint_eq(count(1), 1);
    ck_assert_uint_eq(decisions_pending(ds), 1); /* c */

    /* Empty batch: nothing to do. */
    j = post("{\"feedback\":[]}", &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(j, "applied")->valueint, 0);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "data")), 0);
    cJSON_Delete(j);
    expect_error("{\"feedback\":{}}", 400, "invalid_batch");
    expect_error("{\"feedback\":null}", 400, "invalid_batch");
    expect_error("{\"feedback\":[],\"request_id\":\"x\"}", 400, "unknown_field");
    expect_error("{\"request_id\":\"x\",\"reward\":1,\"feedback\":[]}", 400, "unknown_field");
}
END_TEST

static char *batch_body(int n, const char *first_id)
{
    size_t cap = (size_t)n * 64 + 256;
    char *b = malloc(cap);
    size_t len = (size_t)snprintf(b, cap, "{\"feedback\":[");
    for (int i = 0; i < n; i++) {
        if (i == 0 && first_id)
            len += (size_t)snprintf(b + len, cap - len, "{\"request_id\":\"%s\",\"reward\":1}",
                                    first_id);
        else
            len += (size_t)snprintf(b + len, cap - len, "%s{\"request_id\":\"u%d\",\"reward\":1}",
                                    i ? "," : "", i);
    }
    snprintf(b + len, cap - len, "]}");
    return b;
}

START_TEST(test_batch_cap)
{
    char a[33];
    add(1, 0, 0, a);
    char *b = batch_body(FEEDBACK_MAX_BATCH + 1, a);
    expect_error(b, 400, "batch_too_large");
    free(b);
    ck_assert_uint_eq(count(0), 0); /* nothing of a refused batch is applied */
    ck_assert_uint_eq(decisions_pending(ds), 1);

    b = batch_body(FEEDBACK_MAX_BATCH, a);
    int st;
    cJSON *j = post(b, &st);
    free(b);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(j, "applied")->valueint, 1);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(j, "failed")->valueint,
                     FEEDBACK_MAX_BATCH - 1);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "data")),
                     FEEDBACK_MAX_BATCH);
    cJSON_Delete(j);
    ck_assert_uint_eq(count(0), 1);
}
END_TEST

START_TEST(test_body_not_nul_terminated)
{
    char a[33], body[256];
    add(1, 1, 0, a);
    int n = snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"reward\":0.5}", a);
    /* Garbage right after the len bytes must not be read. */
    body[n] = 'X';
    char *out = NULL;
    int st = 0;
    ck_assert_int_eq(feedback_handle(ds, rt, body, (size_t)n, 0, 0, T0, &st, &out), 0);
    ck_assert_int_eq(st, 200);
    free(out);
    /* A truncated length is invalid JSON. */
    ck_assert_int_eq(feedback_handle(ds, rt, body, (size_t)n - 1, 0, 0, T0, &st, &out), 0);
    ck_assert_int_eq(st, 400);
    free(out);
    ck_assert_int_eq(feedback_handle(ds, rt, NULL, 0, 0, 0, T0, &st, &out), 0);
    ck_assert_int_eq(st, 400);
    free(out);
}
END_TEST

static int count_rows(const struct store_feedback *f, void *ud)
{
    (void)f;
    (*(int *)ud)++;
    return 0;
}

/* ---- durable path: feedback_submit against a real store (temp file) ---- */

static const char *names2[2] = {"cheap", "strong"};
static const char *an_name(void *ud, int arm)
{
    (void)ud;
    return arm >= 0 && arm < 2 ? names2[arm] : NULL;
}
static int an_index(void *ud, const char *name)
{
    (void)ud;
    for (int i = 0; i < 2; i++)
        if (strcmp(names2[i], name) == 0)
            return i;
    return -1;
}

struct reply_box {
    int calls, status;
    char *body;
};
static void on_reply(void *ud, int status, char *body)
{
    struct reply_box *b = ud;
    b->calls++;
    b->status = status;
    free(b->body);
    b->body = body;
}
static int applied_arm = -1;
static int64_t applied_seq;
static void on_applied_cb(void *ud, int arm, int64_t seq)
{
    (void)ud;
    applied_arm = arm;
    ck_assert(seq > applied_seq);
    applied_seq = seq;
}

/* Wait until the writer committed, then run the callbacks. */
static void settle(store *st)
{
    store_flush(st);
    store_dispatch(st);
}

START_TEST(test_async_exactly_once)
{
    char path[] = "/tmp/test_feedback_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(path));
    char db[128];
    snprintf(db, sizeof db, "%s/fb.db", path);
    store *st = NULL;
    char err[256];
    ck_assert_int_eq(store_open(db, DIM, 0.5, 0, NULL, NULL, 64, &st, err, sizeof err), 0);
    struct feedback_arms arms = {an_name, an_index, NULL};
    feedback_async *fa = feedback_async_create(ds, rt, st, &arms, on_applied_cb, NULL);
    ck_assert_ptr_nonnull(fa);
    char id1[33], id2[33];
    add(1, 1, 0, id1);
    add(2, 0, 0, id2);
    char body[256];
    snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"reward\":1}", id1);

    struct reply_box b1 = {0}, b2 = {0};
    feedback_job *j1 = NULL, *j2 = NULL;
    int status = 0;
    char *out = NULL;
    ck_assert_int_eq(
        feedback_submit(fa, body, strlen(body), 0, 0, T0 + 1, on_reply, &b1, &j1, &status, &out),
        0);
    ck_assert_ptr_nonnull(j1); /* queued: no answer yet, nothing applied yet */
    ck_assert_uint_eq(count(1), 0);
    ck_assert_uint_eq(feedback_async_inflight(fa), 1);
    /* a duplicate while the first is in flight: 409 at once */
    ck_assert_int_eq(
        feedback_submit(fa, body, strlen(body), 0, 0, T0 + 1, on_reply, &b2, &j2, &status, &out),
        0);
    ck_assert_ptr_null(j2);
    ck_assert_int_eq(status, 409);
    free(out);
    out = NULL;
    settle(st);
    ck_assert_int_eq(b1.calls, 1);
    ck_assert_int_eq(b1.status, 200);
    ck_assert_uint_eq(count(1), 1); /* applied on commit */
    ck_assert_int_eq(applied_arm, 1);
    ck_assert_uint_eq(feedback_async_inflight(fa), 0);
    /* afterwards: 409 from the decision store */
    ck_assert_int_eq(
        feedback_submit(fa, body, strlen(body), 0, 0, T0 + 1, on_reply, &b2, &j2, &status, &out),
        0);
    ck_assert_ptr_null(j2);
    ck_assert_int_eq(status, 409);
    free(out);
    out = NULL;

    /* a batch answers after every commit; a detached job still applies */
    snprintf(body, sizeof body,
             "{\"feedback\":[{\"request_id\":\"%s\",\"reward\":0},{\"request_id\":\"nope\","
             "\"reward\":1}]}",
             id2);
    struct reply_box b3 = {0};
    feedback_job *j3 = NULL;
    ck_assert_int_eq(
        feedback_submit(fa, body, strlen(body), 0, 0, T0 + 1, on_reply, &b3, &j3, &status, &out),
        0);
    ck_assert_ptr_nonnull(j3);
    feedback_job_detach(j3);
    settle(st);
    ck_assert_int_eq(b3.calls, 0);
    ck_assert_uint_eq(count(0), 1);

    store_close(st);
    feedback_async_destroy(fa);
    free(b1.body);
    free(b2.body);
    /* the rows are on disk exactly once */
    ck_assert_int_eq(store_open(db, DIM, 0.5, 0, NULL, NULL, 64, &st, err, sizeof err), 0);
    int rows = 0;
    ck_assert_int_eq(store_load_feedback_after(st, NULL, 0, count_rows, &rows), 0);
    ck_assert_int_eq(rows, 2);
    store_close(st);
    char rm[256];
    snprintf(rm, sizeof rm, "rm -rf %s", path);
    ck_assert_int_eq(system(rm), 0);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("feedback");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_applied_updates_model_once);
    tcase_add_test(tc, test_bool_and_boundary_rewards);
    tcase_add_test(tc, test_invalid_bodies);
    tcase_add_test(tc, test_nesting_limit);
    tcase_add_test(tc, test_not_found_expired_exists);
    tcase_add_test(tc, test_by_completion_id);
    tcase_add_test(tc, test_clients_and_admin);
    tcase_add_test(tc, test_router_failure_not_taken);
    tcase_add_test(tc, test_batch_mixed);
    tcase_add_test(tc, test_batch_cap);
    tcase_add_test(tc, test_body_not_nul_terminated);
    tcase_add_test(tc, test_async_exactly_once);
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
