/* libFuzzer harness: a hostile POST /v1/chat/completions body.
 *
 * Feeds the bytes to openai_chat_parse; on success checks the documented
 * shape and rewrites the request for an upstream (twice, as for a fallback
 * arm) and re-parses the rewrite, which must equal (cJSON_Compare) the
 * reference rewrite openai_chat_rewrite_print (modulo numbers beyond double
 * range, which the splice keeps verbatim and the reference prints as null). The same bytes also go
 * through openai_parse_usage, the parser of upstream completion bodies, with and without
 * content_chars (its fast scanner and the full parse must agree). */
#include "fuzz.h"

#include <math.h>

#include <cjson/cJSON.h>

#include "banditd/err.h"
#include "banditd/openai.h"

#define UPSTREAM_MODEL "upstream-model-\xc3\xa9"

/* The k-th member (0-based) of obj named key: duplicate keys are kept. */
static const cJSON *nth_member(const cJSON *obj, const char *key, int k)
{
    for (const cJSON *m = obj->child; m; m = m->next)
        if (m->string && strcmp(m->string, key) == 0 && k-- == 0)
            return m;
    return NULL;
}

/* How many earlier siblings of m share its key. */
static int occurrence(const cJSON *obj, const cJSON *m)
{
    int k = 0;
    for (const cJSON *p = obj->child; p && p != m; p = p->next)
        if (p->string && strcmp(p->string, m->string) == 0)
            k++;
    return k;
}

/* cJSON_Compare, except that a number too large for a double in the splice
 * (kept verbatim, e.g. 1e999, which cJSON reads as inf) matches the null that
 * the re-printing reference writes for it. Object members match by key and
 * occurrence (the reference moves "model" to the end). */
static int json_equiv(const cJSON *a, const cJSON *b)
{
    if (cJSON_IsNumber(a) && !isfinite(a->valuedouble))
        return cJSON_IsNull(b);
    if (!cJSON_IsArray(a) && !cJSON_IsObject(a))
        return cJSON_Compare(a, b, 1);
    if ((a->type & 0xff) != (b->type & 0xff) || cJSON_GetArraySize(a) != cJSON_GetArraySize(b))
        return 0;
    const cJSON *x = a->child, *y = b->child;
    for (; x && y; x = x->next, y = y->next) {
        const cJSON *peer = y;
        if (cJSON_IsObject(a))
            peer = x->string ? nth_member(b, x->string, occurrence(a, x)) : NULL;
        if (!peer || !json_equiv(x, peer))
            return 0;
    }
    return 1;
}

static void check_rewrite(struct openai_chat *c)
{
    size_t n = 0;
    char *s = openai_chat_rewrite(c, UPSTREAM_MODEL, &n);
    if (!s)
        return; /* OOM only */
    FUZZ_CHECK(strlen(s) == n);
    cJSON *re = cJSON_ParseWithLength(s, n + 1);
    FUZZ_CHECK(re != NULL);
    FUZZ_CHECK(cJSON_IsObject(re));
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(re, "model");
    FUZZ_CHECK(cJSON_IsString(m) && strcmp(m->valuestring, UPSTREAM_MODEL) == 0);
    FUZZ_CHECK(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(re, "messages")));
    if (c->stream) {
        const cJSON *so = cJSON_GetObjectItemCaseSensitive(re, "stream_options");
        FUZZ_CHECK(cJSON_IsObject(so));
        FUZZ_CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage")));
    }
    size_t rn = 0;
    char *ref = openai_chat_rewrite_print(c, UPSTREAM_MODEL, &rn);
    if (ref) {
        FUZZ_CHECK(strlen(ref) == rn);
        cJSON *rj = cJSON_ParseWithLength(ref, rn + 1);
        FUZZ_CHECK(rj != NULL);
        FUZZ_CHECK(json_equiv(re, rj));
        cJSON_Delete(rj);
        free(ref);
    }
    cJSON_Delete(re);
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    struct openai_chat c;
    memset(&c, 0, sizeof c);
    char err[256];
    memset(err, 'x', sizeof err);
    const char *param = NULL;
    int rc = openai_chat_parse(body, size, &c, err, sizeof err, &param);
    if (rc == 0) {
        FUZZ_CHECK(c.root != NULL && cJSON_IsObject(c.root));
        FUZZ_CHECK(c.model != NULL && c.model[0] != '\0');
        FUZZ_CHECK(cJSON_IsArray(c.messages) && cJSON_GetArraySize(c.messages) > 0);
        FUZZ_CHECK(c.stream == 0 || c.stream == 1);
        FUZZ_CHECK(c.max_tokens >= -1);
        /* The model the router sees must survive a rewrite (fallback reuses it). */
        size_t mlen = strlen(c.model);
        char *model = malloc(mlen + 1);
        FUZZ_CHECK(model != NULL);
        memcpy(model, c.model, mlen + 1);
        check_rewrite(&c);
        check_rewrite(&c);
        FUZZ_CHECK(strcmp(c.model, model) == 0);
        free(model);
        openai_chat_free(&c);
    } else {
        FUZZ_CHECK(rc == BD_ERR_INVALID || rc == BD_ERR_NOMEM);
        if (rc == BD_ERR_INVALID)
            FUZZ_CHECK(fuzz_terminated(err, sizeof err) && err[0] != '\0');
        if (param)
            FUZZ_CHECK(strlen(param) < 256);
    }

    long pt = 0, ct = 0;
    char id[128];
    size_t cc = 0;
    memset(id, 'x', sizeof id);
    rc = openai_parse_usage(body, size, &pt, &ct, id, sizeof id, &cc);
    FUZZ_CHECK(rc == 0 || rc == BD_ERR_INVALID || rc == BD_ERR_NOMEM);
    FUZZ_CHECK(fuzz_terminated(id, sizeof id));
    FUZZ_CHECK(pt >= -1 && ct >= -1);
    /* Without content_chars the scanner skips "choices": same answers. */
    long pt2 = 0, ct2 = 0;
    char id2[128];
    int rc2 = openai_parse_usage(body, size, &pt2, &ct2, id2, sizeof id2, NULL);
    if (rc != BD_ERR_NOMEM && rc2 != BD_ERR_NOMEM) {
        FUZZ_CHECK(rc == rc2);
        FUZZ_CHECK(pt == pt2 && ct == ct2);
        FUZZ_CHECK(strcmp(id, id2) == 0);
    }
    return 0;
}
