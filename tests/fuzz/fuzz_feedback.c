/* libFuzzer harness: a hostile POST /feedback body (feedback_handle).
 *
 * Input layout: byte 0 chooses the caller (bit 0: admin; bits 1-2: client
 * hash 0, CLIENT_A, CLIENT_B or 0), the rest is the body. Every input gets a
 * fresh router (config_defaults() + 2 arms, dim 16) and decisions store
 * holding known ids in every state, so runs are independent and
 * reproducible:
 *   ...01 live, arm 0, no client        ...02 live, arm 1, CLIENT_A,
 *         also under completion id "chatcmpl-fuzz2"
 *   ...03 taken (feedback given)        ...04 expired
 *   ...05 live, arm 0, CLIENT_B
 * Checks: the status is one of 200/400/403/404/409/410/500, the body is a
 * JSON object of the documented shape, and nothing leaks. */
#include "fuzz.h"

#include <cjson/cJSON.h>

#include "banditd/config.h"
#include "banditd/decisions.h"
#include "banditd/err.h"
#include "banditd/feedback.h"
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

static void check_error(const cJSON *obj, int status)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(obj, "error");
    FUZZ_CHECK(cJSON_IsObject(e));
    FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "message")));
    FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "type")));
    FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "code")));
    (void)status;
}

static void check_body(const char *body, int status)
{
    cJSON *j = cJSON_Parse(body);
    FUZZ_CHECK(j != NULL);
    FUZZ_CHECK(cJSON_IsObject(j));
    if (status != 200) {
        check_error(j, status);
    } else if (cJSON_GetObjectItemCaseSensitive(j, "object")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "data");
        FUZZ_CHECK(cJSON_IsArray(list));
        const cJSON *ap = cJSON_GetObjectItemCaseSensitive(j, "applied");
        const cJSON *fl = cJSON_GetObjectItemCaseSensitive(j, "failed");
        FUZZ_CHECK(cJSON_IsNumber(ap) && cJSON_IsNumber(fl));
        FUZZ_CHECK(ap->valueint + fl->valueint == cJSON_GetArraySize(list));
        FUZZ_CHECK(cJSON_GetArraySize(list) <= FEEDBACK_MAX_BATCH);
        const cJSON *it;
        cJSON_ArrayForEach(it, list)
        {
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "status");
            FUZZ_CHECK(cJSON_IsString(st));
            if (strcmp(st->valuestring, "error") == 0)
                check_error(it, 0);
            else
                FUZZ_CHECK(strcmp(st->valuestring, "applied") == 0);
        }
    } else {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
        const cJSON *arm = cJSON_GetObjectItemCaseSensitive(j, "arm");
        const cJSON *rid = cJSON_GetObjectItemCaseSensitive(j, "request_id");
        FUZZ_CHECK(cJSON_IsString(st) && strcmp(st->valuestring, "applied") == 0);
        FUZZ_CHECK(cJSON_IsNumber(arm) && (arm->valueint == 0 || arm->valueint == 1));
        FUZZ_CHECK(cJSON_IsString(rid) && strlen(rid->valuestring) == 32);
    }
    cJSON_Delete(j);
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

    router *rt = router_create(cfg);
    FUZZ_CHECK(rt != NULL);
    decisions *ds = decisions_create(DIM, 64, TTL);
    FUZZ_CHECK(ds != NULL);
    add(ds, 1, 0, 0, NOW - 10, NULL);
    add(ds, 2, 1, CLIENT_A, NOW - 10, "chatcmpl-fuzz2");
    add(ds, 3, 0, 0, NOW - 10, NULL);
    FUZZ_CHECK(decisions_take(ds, "00000000000000000000000000000003") == 0);
    add(ds, 4, 1, 0, NOW - 2 * TTL, NULL);
    add(ds, 5, 0, CLIENT_B, NOW - 10, NULL);

    int status = 0;
    char *out = NULL;
    int rc = feedback_handle(ds, rt, body, len, client, admin, NOW, &status, &out);
    FUZZ_CHECK(rc == 0 || rc == BD_ERR_NOMEM);
    if (rc == 0) {
        FUZZ_CHECK(status == 200 || status == 400 || status == 403 || status == 404 ||
                   status == 409 || status == 410 || status == 500);
        FUZZ_CHECK(out != NULL);
        check_body(out, status);
    }
    free(out);
    decisions_destroy(ds);
    router_destroy(rt);
    return 0;
}
