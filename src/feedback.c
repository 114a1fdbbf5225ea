/* feedback — the /feedback endpoint's logic (see feedback.h).
 *
 * Every item goes through the same steps: shape checks (known fields only,
 * no duplicates, request_id a non-empty string, reward a finite number in
 * [0,1] or a boolean, optional comment a string), then the decision lookup
 * (404/409/410), the client check (403), and finally router_feedback followed
 * by decisions_take. The decision is marked taken only after the router
 * accepted the reward, so a failed update can be retried (exactly once). */
#include "banditd/feedback.h"
#include "banditd/err.h"
#include "banditd/openai.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#define FEEDBACK_MAX_DEPTH 32
#define ECHO_MAX 64 /* bytes of a client-supplied name quoted in a message */

#define T_INVALID "invalid_request_error"
#define T_PERMISSION "permission_error"
#define T_SERVER "server_error"

struct item_result {
    int status; /* 200 or the error's HTTP status */
    const char *type, *code;
    char param[ECHO_MAX + 1]; /* "" = null */
    char message[192];
    char id[33]; /* banditd request id (on success) */
    int arm;
};

static void fail(struct item_result *r, int status, const char *type, const char *code,
                 const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void fail(struct item_result *r, int status, const char *type, const char *code,
                 const char *param, const char *fmt, ...)
{
    r->status = status;
    r->type = type;
    r->code = code;
    snprintf(r->param, sizeof r->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
}

/* Copy at most ECHO_MAX bytes of client text, printable ASCII only, so that
 * an echoed name can neither bloat nor corrupt (invalid UTF-8) a response. */
static void echo_copy(char *dst, size_t dstlen, const char *src)
{
    size_t n = 0;
    for (; src && *src && n + 1 < dstlen && n < ECHO_MAX; src++)
        dst[n++] = (*src >= 0x20 && *src < 0x7f) ? *src : '?';
    dst[n] = '\0';
}

/* Deepest [ / { nesting outside strings; stops counting past limit. */
static int too_deep(const char *s, size_t len, int limit)
{
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > limit)
                return 1;
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return 0;
}

static void process_item(decisions *ds, router *rt, const cJSON *item, uint64_t client, int admin,
                         double now_s, struct item_result *r)
{
    memset(r, 0, sizeof *r);
    r->arm = -1;
    if (!cJSON_IsObject(item)) {
        fail(r, 400, T_INVALID, "invalid_body", NULL, "feedback must be a JSON object");
        return;
    }
    const cJSON *rid = NULL, *reward = NULL, *comment = NULL;
    for (const cJSON *c = item->child; c; c = c->next) {
        const cJSON **slot = NULL;
        if (c->string && strcmp(c->string, "request_id") == 0)
            slot = &rid;
        else if (c->string && strcmp(c->string, "reward") == 0)
            slot = &reward;
        else if (c->string && strcmp(c->string, "comment") == 0)
            slot = &comment;
        char name[ECHO_MAX + 1];
        echo_copy(name, sizeof name, c->string);
        if (!slot) {
            fail(r, 400, T_INVALID, "unknown_field", name, "unknown field '%s'", name);
            return;
        }
        if (*slot) {
            fail(r, 400, T_INVALID, "duplicate_field", name, "duplicate field '%s'", name);
            return;
        }
        *slot = c;
    }
    if (!rid) {
        fail(r, 400, T_INVALID, "missing_request_id", "request_id", "missing field 'request_id'");
        return;
    }
    if (!cJSON_IsString(rid) || !rid->valuestring || !rid->valuestring[0]) {
        fail(r, 400, T_INVALID, "invalid_request_id", "request_id",
             "'request_id' must be a non-empty string");
        return;
    }
    if (!reward) {
        fail(r, 400, T_INVALID, "missing_reward", "reward", "missing field 'reward'");
        return;
    }
    double rv;
    if (cJSON_IsTrue(reward)) {
        rv = 1.0;
    } else if (cJSON_IsFalse(reward)) {
        rv = 0.0;
    } else if (cJSON_IsNumber(reward) && isfinite(reward->valuedouble) &&
               reward->valuedouble >= 0.0 && reward->valuedouble <= 1.0) {
        rv = reward->valuedouble + 0.0; /* -0 -> +0 */
    } else {
        fail(r, 400, T_INVALID, "invalid_reward", "reward",
             "'reward' must be a number in [0,1] or a boolean");
        return;
    }
    if (comment && !cJSON_IsString(comment) && !cJSON_IsNull(comment)) {
        fail(r, 400, T_INVALID, "invalid_comment", "comment", "'comment' must be a string");
        return;
    }

    const struct decision *d = NULL;
    int rc = decisions_find(ds, rid->valuestring, now_s, &d);
    switch (rc) {
    case BD_OK:
        break;
    case BD_ERR_NOTFOUND:
        fail(r, 404, T_INVALID, "unknown_request_id", "request_id", "unknown request_id");
        return;
    case BD_ERR_EXISTS:
        fail(r, 409, T_INVALID, "duplicate_feedback", "request_id",
             "feedback for this request_id was already applied");
        return;
    case BD_ERR_EXPIRED:
        fail(r, 410, T_INVALID, "expired_request_id", "request_id",
             "request_id expired; feedback is no longer accepted");
        return;
    default:
        fail(r, 500, T_SERVER, "internal_error", NULL, "decision lookup failed: %s",
             bd_strerror(rc));
        return;
    }
    /* Only the client that made the request (or an admin) may rate it. */
    if (!admin && d->client != client) {
        fail(r, 403, T_PERMISSION, "forbidden", "request_id",
             "this request_id belongs to another client");
        return;
    }
    snprintf(r->id, sizeof r->id, "%s", d->id);
    r->arm = d->arm;
    rc = router_feedback(rt, d->arm, d->x, rv);
    if (rc != BD_OK) {
        /* Not taken: the decision stays pending and the update can be retried. */
        fail(r, 500, T_SERVER, "feedback_not_applied", NULL, "could not apply feedback: %s",
             bd_strerror(rc));
        return;
    }
    rc = decisions_take(ds, r->id);
    assert(rc == BD_OK && "a decision just found must be takeable");
    (void)rc;
    r->status = 200;
}

/* The inner {"message","type","param","code"} object, as openai_error_json
 * shapes it. NULL on OOM. */
static cJSON *error_object(const struct item_result *r)
{
    char *s = openai_error_json(r->message, r->type, r->param[0] ? r->param : NULL, r->code);
    if (!s)
        return NULL;
    cJSON *root = cJSON_Parse(s);
    free(s);
    cJSON *e = root ? cJSON_DetachItemFromObjectCaseSensitive(root, "error") : NULL;
    cJSON_Delete(root);
    return e;
}

static int respond_error(int status, const char *type, const char *code, const char *param,
                         const char *message, int *status_out, char **body_out)
{
    char *s = openai_error_json(message, type, param, code);
    if (!s)
        return BD_ERR_NOMEM;
    *status_out = status;
    *body_out = s;
    return BD_OK;
}

static int respond_item_error(const struct item_result *r, int *status, char **body_out)
{
    return respond_error(r->status, r->type, r->code, r->param[0] ? r->param : NULL, r->message,
                         status, body_out);
}

static int respond_json(cJSON *root, int status, int *status_out, char **body_out)
{
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!s)
        return BD_ERR_NOMEM;
    *status_out = status;
    *body_out = s;
    return BD_OK;
}

static int handle_single(decisions *ds, router *rt, const cJSON *obj, uint64_t client, int admin,
                         double now_s, int *status, char **body_out)
{
    struct item_result r;
    process_item(ds, rt, obj, client, admin, now_s, &r);
    if (r.status != 200)
        return respond_item_error(&r, status, body_out);
    cJSON *root = cJSON_CreateObject();
    int ok = root && cJSON_AddStringToObject(root, "request_id", r.id) &&
             cJSON_AddStringToObject(root, "status", "applied") &&
             cJSON_AddNumberToObject(root, "arm", r.arm);
    if (!ok) {
        cJSON_Delete(root);
        return BD_ERR_NOMEM;
    }
    return respond_json(root, 200, status, body_out);
}

static int handle_batch(decisions *ds, router *rt, const cJSON *root, const cJSON *list,
                        uint64_t client, int admin, double now_s, int *status, char **body_out)
{
    for (const cJSON *c = root->child; c; c = c->next) {
        if (c != list) {
            char name[ECHO_MAX + 1], msg[160];
            echo_copy(name, sizeof name, c->string);
            snprintf(msg, sizeof msg, "unknown field '%s' (a batch holds only 'feedback')", name);
            return respond_error(400, T_INVALID, "unknown_field", name, msg, status, body_out);
        }
    }
    if (!cJSON_IsArray(list))
        return respond_error(400, T_INVALID, "invalid_batch", "feedback",
                             "'feedback' must be an array of feedback objects", status, body_out);
    size_t n = 0;
    for (const cJSON *c = list->child; c; c = c->next)
        if (++n > FEEDBACK_MAX_BATCH) {
            char msg[96];
            snprintf(msg, sizeof msg, "a batch holds at most %d items", FEEDBACK_MAX_BATCH);
            return respond_error(400, T_INVALID, "batch_too_large", "feedback", msg, status,
                                 body_out);
        }

    cJSON *out = cJSON_CreateObject();
    cJSON *data = out ? cJSON_CreateArray() : NULL;
    int ok = data && cJSON_AddStringToObject(out, "object", "list");
    if (ok)
        cJSON_AddItemToObject(out, "data", data);
    else
        cJSON_Delete(data);
    long applied = 0, failed = 0;
    for (const cJSON *c = list->child; ok && c; c = c->next) {
        struct item_result r;
        process_item(ds, rt, c, client, admin, now_s, &r);
        cJSON *it = cJSON_CreateObject();
        ok = it != NULL;
        if (ok)
            cJSON_AddItemToArray(data, it);
        if (r.status == 200) {
            applied++;
            ok = ok && cJSON_AddStringToObject(it, "request_id", r.id) &&
                 cJSON_AddStringToObject(it, "status", "applied") &&
                 cJSON_AddNumberToObject(it, "arm", r.arm);
        } else {
            failed++;
            const cJSON *rid =
                cJSON_IsObject(c) ? cJSON_GetObjectItemCaseSensitive(c, "request_id") : NULL;
            ok = ok &&
                 (cJSON_IsString(rid) && rid->valuestring
                      ? cJSON_AddStringToObject(it, "request_id", rid->valuestring) != NULL
                      : cJSON_AddNullToObject(it, "request_id") != NULL) &&
                 cJSON_AddStringToObject(it, "status", "error");
            cJSON *e = ok ? error_object(&r) : NULL;
            if (e)
                cJSON_AddItemToObject(it, "error", e);
            ok = e != NULL;
        }
    }
    ok = ok && cJSON_AddNumberToObject(out, "applied", (double)applied) &&
         cJSON_AddNumberToObject(out, "failed", (double)failed);
    if (!ok) {
        /* Items already applied stay applied (and taken): a retry gets 409s. */
        cJSON_Delete(out);
        return BD_ERR_NOMEM;
    }
    return respond_json(out, 200, status, body_out);
}

int feedback_handle(decisions *ds, router *rt, const char *body, size_t len, uint64_t client,
                    int admin, double now_s, int *status, char **body_out)
{
    assert(ds && rt && status && body_out);
    assert(decisions_dim(ds) == router_dim(rt));
    *body_out = NULL;
    if (!body || len == 0)
        return respond_error(400, T_INVALID, "invalid_json", NULL, "empty request body", status,
                             body_out);
    if (too_deep(body, len, FEEDBACK_MAX_DEPTH))
        return respond_error(400, T_INVALID, "invalid_json", NULL,
                             "JSON nested too deeply (at most 32 levels)", status, body_out);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (root) {
        /* Only whitespace may follow the value. */
        for (const char *p = end; p < body + len; p++)
            if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
                cJSON_Delete(root);
                root = NULL;
                break;
            }
    }
    if (!root)
        return respond_error(400, T_INVALID, "invalid_json", NULL, "request body is not valid JSON",
                             status, body_out);
    int rc;
    if (!cJSON_IsObject(root)) {
        rc = respond_error(400, T_INVALID, "invalid_body", NULL,
                           "request body must be a JSON object", status, body_out);
    } else {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "feedback");
        rc = list ? handle_batch(ds, rt, root, list, client, admin, now_s, status, body_out)
                  : handle_single(ds, rt, root, client, admin, now_s, status, body_out);
    }
    cJSON_Delete(root);
    return rc;
}
