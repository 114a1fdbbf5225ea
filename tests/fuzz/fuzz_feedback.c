/* libFuzzer harness: a hostile POST /feedback body (feedback_handle).
 *
 * Input layout: byte 0 chooses the caller (bit 0: admin; bits 1-2: client
 * hash 0, CLIENT_A, CLIENT_B or 0), the rest is the body. Every input sees
 * the same router (config_defaults() + 2 arms, dim 16) and decisions store
 * holding known ids in every state:
 *   ...01 live, arm 0, no client        ...02 live, arm 1, CLIENT_A,
 *         also under completion id "chatcmpl-fuzz2"
 *   ...03 taken (feedback given)        ...04 expired
 *   ...05 live, arm 0, CLIENT_B
 * Checks: the status is one of 200/400/403/404/409/410/500, the body is a
 * JSON object of the documented shape, and nothing leaks. Beyond that, the
 * state after the call is compared with the pristine state (every arm's
 * model, counters and statistics; every id's lookup result and stored
 * decision): a call that applied nothing must leave both untouched, and one
 * that applied n items must show exactly n more rewards in the router and n
 * fewer pending decisions. Building the pair costs about as much as the call
 * itself under ASan, so it is rebuilt only after a call that changed it (or
 * failed with 500 / out of memory); otherwise the next input reuses it, which
 * the comparison above has just shown to be equal to a fresh one. */
#include "fuzz.h"

#include <cjson/cJSON.h>

#include "banditd/config.h"
#include "banditd/decisions.h"
#include "banditd/err.h"
#include "banditd/feedback.h"
#include "banditd/linucb.h"
#include "banditd/router.h"

#define DIM 16
#define TTL 100.0
#define NOW 1000.0
#define CLIENT_A 0x1111u
#define CLIENT_B 0x2222u

static struct config *cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    cfg = config_defaults();
    FUZZ_CHECK(cfg != NULL);
    cfg->n_arms = 2;
    snprintf(cfg->arms[0].name, sizeof cfg->arms[0].name, "cheap");
    snprintf(cfg->arms[0].model, sizeof cfg->arms[0].model, "small");
    cfg->arms[0].price_in_per_mtok = 0.5;
    cfg->arms[0].price_out_per_mtok = 1.5;
    snprintf(cfg->arms[1].name, sizeof cfg->arms[1].name, "strong");
    snprintf(cfg->arms[1].model, sizeof cfg->arms[1].model, "big");
    cfg->arms[1].price_in_per_mtok = 5;
    cfg->arms[1].price_out_per_mtok = 15;
    cfg->router.dim = DIM;
    return 0;
}

static void add(decisions *ds, unsigned k, int arm, uint64_t client, double created,
                const char *cid)
{
    struct decision d;
    double x[DIM];
    memset(&d, 0, sizeof d);
    snprintf(d.id, sizeof d.id, "%032x", k);
    for (int i = 0; i < DIM; i++)
        x[i] = (i == (int)k % DIM) ? 1.0 : 0.0;
    d.x = x;
    d.arm = arm;
    d.w.quality = 0.7;
    d.w.cost = 0.3;
    d.created_s = created;
    d.client = client;
    FUZZ_CHECK(decisions_add(ds, &d) == 0);
    if (cid)
        FUZZ_CHECK(decisions_complete(ds, d.id, cid, 0.001, 10) == 0);
}

/* Checks an error object; 1 if it reports a server-side failure (500). */
static int check_error(const cJSON *obj)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(obj, "error");
    FUZZ_CHECK(cJSON_IsObject(e));
    FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "message")));
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(e, "type");
    FUZZ_CHECK(cJSON_IsString(type));
    FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "code")));
    return strcmp(type->valuestring, "server_error") == 0;
}

/* Checks the body's shape; returns the number of items applied and sets
 * *server_err if any error is a server-side one. */
static int check_body(const char *body, int status, int *server_err)
{
    int applied = 0;
    cJSON *j = cJSON_Parse(body);
    FUZZ_CHECK(j != NULL);
    FUZZ_CHECK(cJSON_IsObject(j));
    if (status != 200) {
        *server_err |= check_error(j);
    } else if (cJSON_GetObjectItemCaseSensitive(j, "object")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "data");
        FUZZ_CHECK(cJSON_IsArray(list));
        const cJSON *ap = cJSON_GetObjectItemCaseSensitive(j, "applied");
        const cJSON *fl = cJSON_GetObjectItemCaseSensitive(j, "failed");
        FUZZ_CHECK(cJSON_IsNumber(ap) && cJSON_IsNumber(fl));
        FUZZ_CHECK(ap->valueint + fl->valueint == cJSON_GetArraySize(list));
        FUZZ_CHECK(cJSON_GetArraySize(list) <= FEEDBACK_MAX_BATCH);
        const cJSON *it;
        int n_ok = 0;
        cJSON_ArrayForEach(it, list)
        {
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "status");
            FUZZ_CHECK(cJSON_IsString(st));
            if (strcmp(st->valuestring, "error") == 0) {
                *server_err |= check_error(it);
            } else {
                FUZZ_CHECK(strcmp(st->valuestring, "applied") == 0);
                n_ok++;
            }
        }
        FUZZ_CHECK(n_ok == ap->valueint);
        applied = n_ok;
    } else {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
        const cJSON *arm = cJSON_GetObjectItemCaseSensitive(j, "arm");
        const cJSON *rid = cJSON_GetObjectItemCaseSensitive(j, "request_id");
        FUZZ_CHECK(cJSON_IsString(st) && strcmp(st->valuestring, "applied") == 0);
        FUZZ_CHECK(cJSON_IsNumber(arm) && (arm->valueint == 0 || arm->valueint == 1));
        FUZZ_CHECK(cJSON_IsString(rid) && strlen(rid->valuestring) == 32);
        applied = 1;
    }
    cJSON_Delete(j);
    return applied;
}

/* What the router and the store hold, as far as their interfaces show. */
#define N_KEYS 7
struct snap {
    struct {
        uint64_t count;
        double A[DIM * DIM], b[DIM];
        struct router_arm_stats st;
    } arm[2];
    size_t pending, tombstones, evicted;
    struct {
        int rc;
        struct decision d;
        double x[DIM];
    } key[N_KEYS];
};

static const char *const keys[N_KEYS] = {
    "00000000000000000000000000000001", "00000000000000000000000000000002",
    "00000000000000000000000000000003", "00000000000000000000000000000004",
    "00000000000000000000000000000005", "chatcmpl-fuzz2",
    "00000000000000000000000000000006", /* never added */
};

static void take_snap(router *rt, decisions *ds, struct snap *s)
{
    memset(s, 0, sizeof *s);
    FUZZ_CHECK(router_n_arms(rt) == 2);
    for (int a = 0; a < 2; a++) {
        const linucb *m = router_model(rt, a);
        s->arm[a].count = linucb_count(m);
        memcpy(s->arm[a].A, linucb_A(m), sizeof s->arm[a].A);
        memcpy(s->arm[a].b, linucb_b(m), sizeof s->arm[a].b);
        router_arm_stats(rt, a, &s->arm[a].st);
    }
    s->pending = decisions_pending(ds);
    s->tombstones = decisions_tombstones(ds);
    s->evicted = decisions_evicted(ds);
    for (int k = 0; k < N_KEYS; k++) {
        const struct decision *d = NULL;
        s->key[k].rc = decisions_find(ds, keys[k], NOW, &d);
        if (s->key[k].rc == 0) {
            s->key[k].d = *d;
            s->key[k].d.x = NULL;
            memcpy(s->key[k].x, d->x, sizeof s->key[k].x);
        }
    }
}

static int same_stats(const struct router_arm_stats *a, const struct router_arm_stats *b)
{
    return a->pulls == b->pulls && a->feedback == b->feedback && a->reward_sum == b->reward_sum &&
           a->exp_completion_tokens == b->exp_completion_tokens && a->latency_ms == b->latency_ms &&
           a->ttfb_ms == b->ttfb_ms && a->usage_obs == b->usage_obs;
}

static int same_decision(const struct decision *a, const struct decision *b)
{
    return strcmp(a->id, b->id) == 0 && strcmp(a->completion_id, b->completion_id) == 0 &&
           a->arm == b->arm && a->w.quality == b->w.quality && a->w.cost == b->w.cost &&
           a->w.latency == b->w.latency && a->created_s == b->created_s &&
           a->cost_usd == b->cost_usd && a->latency_ms == b->latency_ms && a->client == b->client;
}

/* 1 if s equals the pristine snapshot. */
static int same_snap(const struct snap *a, const struct snap *b)
{
    for (int i = 0; i < 2; i++)
        if (a->arm[i].count != b->arm[i].count ||
            memcmp(a->arm[i].A, b->arm[i].A, sizeof a->arm[i].A) != 0 ||
            memcmp(a->arm[i].b, b->arm[i].b, sizeof a->arm[i].b) != 0 ||
            !same_stats(&a->arm[i].st, &b->arm[i].st))
            return 0;
    if (a->pending != b->pending || a->tombstones != b->tombstones || a->evicted != b->evicted)
        return 0;
    for (int k = 0; k < N_KEYS; k++) {
        if (a->key[k].rc != b->key[k].rc)
            return 0;
        if (a->key[k].rc == 0 && (!same_decision(&a->key[k].d, &b->key[k].d) ||
                                  memcmp(a->key[k].x, b->key[k].x, sizeof a->key[k].x) != 0))
            return 0;
    }
    return 1;
}

static router *rt;
static decisions *ds;
static struct snap pristine, after;

static void build(void)
{
    rt = router_create(cfg);
    FUZZ_CHECK(rt != NULL);
    ds = decisions_create(DIM, 64, TTL);
    FUZZ_CHECK(ds != NULL);
    add(ds, 1, 0, 0, NOW - 10, NULL);
    add(ds, 2, 1, CLIENT_A, NOW - 10, "chatcmpl-fuzz2");
    add(ds, 3, 0, 0, NOW - 10, NULL);
    FUZZ_CHECK(decisions_take(ds, "00000000000000000000000000000003") == 0);
    add(ds, 4, 1, 0, NOW - 2 * TTL, NULL);
    add(ds, 5, 0, CLIENT_B, NOW - 10, NULL);
}

static void teardown(void)
{
    decisions_destroy(ds);
    router_destroy(rt);
    ds = NULL;
    rt = NULL;
}

/* The pair is kept across inputs; release it at exit so LeakSanitizer's
 * final check sees nothing. */
static void release_at_exit(void)
{
    teardown();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const uint64_t clients[4] = {0, CLIENT_A, CLIENT_B, 0};
    int admin = data[0] & 1;
    uint64_t client = clients[(data[0] >> 1) & 3];
    const char *body = (const char *)data + 1;
    size_t len = size - 1;

    static int snapped;
    if (!rt) {
        build();
        if (!snapped) {
            take_snap(rt, ds, &pristine);
            FUZZ_CHECK(pristine.pending == 4 && pristine.tombstones == 1);
            atexit(release_at_exit);
            snapped = 1;
        }
    }

    int status = 0, applied = 0, server_err = 0;
    char *out = NULL;
    int rc = feedback_handle(ds, rt, body, len, client, admin, NOW, &status, &out);
    FUZZ_CHECK(rc == 0 || rc == BD_ERR_NOMEM);
    if (rc == 0) {
        FUZZ_CHECK(status == 200 || status == 400 || status == 403 || status == 404 ||
                   status == 409 || status == 410 || status == 500);
        FUZZ_CHECK(out != NULL);
        applied = check_body(out, status, &server_err);
    }
    free(out);

    if (rc != 0 || server_err) {
        /* A failed update may leave the pair in a state we do not model. */
        teardown();
        return 0;
    }
    take_snap(rt, ds, &after);
    if (applied == 0) {
        /* Nothing applied: router and store untouched. */
        FUZZ_CHECK(same_snap(&after, &pristine));
        return 0;
    }
    /* Exactly `applied` rewards reached the router, each taking one decision. */
    uint64_t fb = 0, n = 0;
    for (int a = 0; a < 2; a++) {
        fb += after.arm[a].st.feedback - pristine.arm[a].st.feedback;
        n += after.arm[a].count - pristine.arm[a].count;
    }
    FUZZ_CHECK(fb == (uint64_t)applied && n == (uint64_t)applied);
    FUZZ_CHECK(after.pending + (size_t)applied == pristine.pending);
    FUZZ_CHECK(after.tombstones == pristine.tombstones + (size_t)applied);
    teardown();
    return 0;
}
