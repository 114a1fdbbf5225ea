/* openai — the OpenAI wire format: validation, rewrite, errors, usage, SSE. */
#include "banditd/openai.h"
#include "banditd/err.h"
#include "banditd/util.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OPENAI_MAX_DEPTH 64        /* request nesting limit */
#define SSE_LINE_MAX (1024 * 1024) /* longer SSE lines are skipped */
#define SSE_SKIPPING 1             /* s->skipping: inside an over-long line */

__attribute__((format(printf, 3, 4))) static int invalid(char *err, size_t errlen, const char *fmt,
                                                         ...)
{
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return BD_ERR_INVALID;
}


/* Parse exactly len bytes (no NULs inside, checked by the caller) through a
 * NUL-terminated private copy, so cJSON never reads past the input. Trailing
 * garbage fails. NULL on syntax error; *oom set on allocation failure. */
static cJSON *parse_exact(const char *s, size_t len, int *oom)
{
    *oom = 0;
    char *buf = malloc(len + 1);
    if (!buf) {
        *oom = 1;
        return NULL;
    }
    if (len)
        memcpy(buf, s, len);
    buf[len] = '\0';
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len + 1, NULL, 1);
    free(buf);
    return root;
}

static const cJSON *member(const cJSON *obj, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* Number of members of obj called key (duplicates would let the upstream see
 * a different value than the one we validated and rewrote). */
static int count_member(const cJSON *obj, const char *key)
{
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, obj)
    {
        if (it->string && strcmp(it->string, key) == 0)
            n++;
    }
    return n;
}

/* Characters of text in a content value (string or array of parts). */
static size_t content_chars(const cJSON *content)
{
    if (cJSON_IsString(content))
        return strlen(content->valuestring);
    size_t n = 0;
    if (cJSON_IsArray(content)) {
        const cJSON *part;
        cJSON_ArrayForEach(part, content)
        {
            const cJSON *t = member(part, "text");
            if (cJSON_IsString(t))
                n += strlen(t->valuestring);
        }
    }
    return n;
}

static int validate(cJSON *root, struct openai_chat *out, char *err, size_t errlen,
                    const char **param)
{
    if (!cJSON_IsObject(root))
        return invalid(err, errlen, "the request body must be a JSON object");

    static const char *const unique[] = {"model",          "messages",   "stream",
                                         "stream_options", "max_tokens", "max_completion_tokens"};
    for (size_t i = 0; i < sizeof unique / sizeof unique[0]; i++) {
        if (count_member(root, unique[i]) > 1) {
            *param = unique[i];
            return invalid(err, errlen, "'%s' is given more than once", unique[i]);
        }
    }

    const cJSON *model = member(root, "model");
    if (!model) {
        *param = "model";
        return invalid(err, errlen, "you must provide a model parameter");
    }
    if (!cJSON_IsString(model) || !model->valuestring || !model->valuestring[0]) {
        *param = "model";
        return invalid(err, errlen, "'model' must be a non-empty string");
    }

    const cJSON *msgs = member(root, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) < 1) {
        *param = "messages";
        return invalid(err, errlen, "'messages' must be a non-empty array");
    }
    size_t chars = 0, i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs)
    {
        if (!cJSON_IsObject(m)) {
            *param = "messages";
            return invalid(err, errlen, "messages[%zu] must be an object", i);
        }
        const cJSON *role = member(m, "role");
        if (!cJSON_IsString(role) || !role->valuestring[0]) {
            *param = "messages.role";
            return invalid(err, errlen, "messages[%zu].role must be a non-empty string", i);
        }
        const cJSON *content = member(m, "content");
        int is_assistant = strcmp(role->valuestring, "assistant") == 0;
        if (!content) {
            if (!is_assistant) {
                *param = "messages.content";
                return invalid(err, errlen, "messages[%zu].content is required", i);
            }
        } else if (cJSON_IsArray(content)) {
            const cJSON *part;
            size_t j = 0;
            cJSON_ArrayForEach(part, content)
            {
                if (!cJSON_IsObject(part)) {
                    *param = "messages.content";
                    return invalid(err, errlen,
                                   "messages[%zu].content[%zu] must be a content part object", i,
                                   j);
                }
                j++;
            }
        } else if (!cJSON_IsString(content) && !cJSON_IsNull(content)) {
            *param = "messages.content";
            return invalid(err, errlen,
                           "messages[%zu].content must be a string, null or an array of content "
                           "parts",
                           i);
        }
        chars += content_chars(content);
        i++;
    }

    const cJSON *stream = member(root, "stream");
    if (stream && !cJSON_IsBool(stream)) {
        *param = "stream";
        return invalid(err, errlen, "'stream' must be a boolean");
    }
    const cJSON *so = member(root, "stream_options");
    int include_usage = 0;
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so) || count_member(so, "include_usage") > 1) {
            *param = "stream_options";
            return invalid(err, errlen, "'stream_options' must be an object");
        }
        const cJSON *iu = member(so, "include_usage");
        if (iu && !cJSON_IsBool(iu)) {
            *param = "stream_options";
            return invalid(err, errlen, "'stream_options.include_usage' must be a boolean");
        }
        include_usage = cJSON_IsTrue(iu);
    }

    long max_tokens = -1;
    static const char *const mt_keys[] = {"max_completion_tokens", "max_tokens"};
    for (size_t k = 0; k < 2 && max_tokens < 0; k++) {
        const cJSON *mt = member(root, mt_keys[k]);
        if (!mt || cJSON_IsNull(mt))
            continue;
        double d = cJSON_IsNumber(mt) ? mt->valuedouble : NAN;
        if (!isfinite(d) || d < 0 || d != floor(d) || d > 1e15) {
            *param = mt_keys[k];
            return invalid(err, errlen, "'%s' must be a non-negative integer", mt_keys[k]);
        }
        max_tokens = (long)d;
    }

    out->root = root;
    out->model = model->valuestring;
    out->stream = cJSON_IsTrue(stream);
    out->include_usage = include_usage;
    out->messages = msgs;
    out->prompt_chars = chars;
    out->max_tokens = max_tokens;
    return 0;
}

int openai_chat_parse(const char *body, size_t len, struct openai_chat *out, char *err,
                      size_t errlen, const char **param)
{
    const char *dummy;
    assert(out != NULL);
    if (!param)
        param = &dummy;
    *param = NULL;
    memset(out, 0, sizeof *out);
    out->max_tokens = -1;
    if (!body)
        len = 0;
    if (len == 0)
        return invalid(err, errlen, "the request body is empty (expected a JSON object)");
    int pre = util_json_prescan(body, len, OPENAI_MAX_DEPTH);
    if (pre == -1)
        return invalid(err, errlen, "the request body contains a NUL byte");
    if (pre == -2)
        return invalid(err, errlen, "the request body is nested deeper than %d levels",
                       OPENAI_MAX_DEPTH);
    int oom;
    cJSON *root = parse_exact(body, len, &oom);
    if (!root) {
        if (oom)
            return BD_ERR_NOMEM;
        return invalid(err, errlen, "the request body is not valid JSON");
    }
    int rc = validate(root, out, err, errlen, param);
    if (rc) {
        cJSON_Delete(root);
        memset(out, 0, sizeof *out);
        out->max_tokens = -1;
    }
    return rc;
}

void openai_chat_free(struct openai_chat *c)
{
    if (!c)
        return;
    cJSON_Delete(c->root);
    memset(c, 0, sizeof *c);
    c->max_tokens = -1;
}

/* Swap obj[key] for `repl` (owned by obj afterwards) and return the original
 * member detached (or NULL if there was none). `key` must be a string literal:
 * it is linked, not copied, so nothing here allocates or can fail. */
static cJSON *swap_member(cJSON *obj, const char *key, cJSON *repl)
{
    cJSON *orig = cJSON_DetachItemFromObjectCaseSensitive(obj, key);
    cJSON_AddItemToObjectCS(obj, key, repl);
    return orig;
}

/* Undo swap_member: drop the replacement, put the original back (it keeps
 * its own key string, so re-linking it allocates nothing). */
static void unswap_member(cJSON *obj, const char *key, cJSON *orig)
{
    cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    if (orig)
        cJSON_AddItemToArray(obj, orig);
}

char *openai_chat_rewrite(struct openai_chat *c, const char *upstream_model, size_t *len_out)
{
    assert(c != NULL && c->root != NULL && upstream_model != NULL);
    /* Mutate the tree only for the duration of the print and restore it, so
     * c->model stays valid and rewrite can run again for a fallback arm. */
    cJSON *new_model = cJSON_CreateString(upstream_model);
    if (!new_model)
        return NULL;
    cJSON *orig_model = swap_member(c->root, "model", new_model);

    cJSON *so = NULL, *orig_so = NULL, *orig_iu = NULL;
    int so_mode = 0; /* 0 untouched, 1 replaced whole stream_options, 2 swapped include_usage */
    int oom = 0;
    if (c->stream) {
        cJSON *cur = cJSON_GetObjectItemCaseSensitive(c->root, "stream_options");
        if (cJSON_IsObject(cur)) {
            cJSON *t = cJSON_CreateTrue();
            if (t) {
                orig_iu = swap_member(cur, "include_usage", t);
                so = cur;
                so_mode = 2;
            } else {
                oom = 1;
            }
        } else {
            cJSON *fresh = cJSON_CreateObject();
            if (fresh && cJSON_AddTrueToObject(fresh, "include_usage")) {
                orig_so = swap_member(c->root, "stream_options", fresh);
                so_mode = 1;
            } else {
                cJSON_Delete(fresh);
                oom = 1;
            }
        }
    }

    char *s = oom ? NULL : cJSON_PrintUnformatted(c->root);

    if (so_mode == 2)
        unswap_member(so, "include_usage", orig_iu);
    else if (so_mode == 1)
        unswap_member(c->root, "stream_options", orig_so);
    unswap_member(c->root, "model", orig_model);
    /* c->model still points into orig_model, which is back in the tree. */
    assert(cJSON_GetObjectItemCaseSensitive(c->root, "model") == orig_model);

    if (s && len_out)
        *len_out = strlen(s);
    return s;
}

/* {"error":{...}} as a cJSON tree; NULL on OOM. */
static cJSON *error_tree(const char *message, const char *type, const char *param, const char *code)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *e = root ? cJSON_AddObjectToObject(root, "error") : NULL;
    int ok = e != NULL;
    ok = ok && cJSON_AddStringToObject(e, "message", message ? message : "");
    ok = ok && cJSON_AddStringToObject(e, "type", type ? type : "error");
    ok = ok && (param ? cJSON_AddStringToObject(e, "param", param) != NULL
                      : cJSON_AddNullToObject(e, "param") != NULL);
    ok = ok && (code ? cJSON_AddStringToObject(e, "code", code) != NULL
                     : cJSON_AddNullToObject(e, "code") != NULL);
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

char *openai_error_json(const char *message, const char *type, const char *param, const char *code)
{
    cJSON *root = error_tree(message, type, param, code);
    if (!root)
        return NULL;
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

char *openai_sse_error_event(const char *message, const char *type, const char *code)
{
    char *j = openai_error_json(message, type, NULL, code);
    if (!j)
        return NULL;
    size_t n = strlen(j);
    char *ev = malloc(n + 9); /* "data: " + json + "\n\n" + NUL */
    if (ev) {
        memcpy(ev, "data: ", 6);
        memcpy(ev + 6, j, n);
        memcpy(ev + 6 + n, "\n\n", 3);
    }
    free(j);
    return ev;
}

/* A token count member: a non-negative integer, else -1. */
static long token_count(const cJSON *usage, const char *key)
{
    const cJSON *v = member(usage, key);
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!isfinite(d) || d < 0 || d != floor(d) || d > 1e15)
        return -1;
    return (long)d;
}

static void copy_id(const cJSON *root, char *dst, size_t n)
{
    const cJSON *id = member(root, "id");
    if (n == 0 || !cJSON_IsString(id))
        return;
    snprintf(dst, n, "%s", id->valuestring);
}

int openai_parse_usage(const char *body, size_t len, long *prompt_tokens, long *completion_tokens,
                       char *id_out, size_t idlen, size_t *content_chars_out)
{
    if (prompt_tokens)
        *prompt_tokens = -1;
    if (completion_tokens)
        *completion_tokens = -1;
    if (id_out && idlen)
        id_out[0] = '\0';
    if (content_chars_out)
        *content_chars_out = 0;
    if (!body || len == 0 || util_json_prescan(body, len, 1000) != 0)
        return BD_ERR_INVALID;
    int oom;
    cJSON *root = parse_exact(body, len, &oom);
    if (!root)
        return oom ? BD_ERR_NOMEM : BD_ERR_INVALID;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return BD_ERR_INVALID;
    }
    if (id_out)
        copy_id(root, id_out, idlen);
    const cJSON *usage = member(root, "usage");
    if (cJSON_IsObject(usage)) {
        if (prompt_tokens)
            *prompt_tokens = token_count(usage, "prompt_tokens");
        if (completion_tokens)
            *completion_tokens = token_count(usage, "completion_tokens");
    }
    if (content_chars_out) {
        size_t n = 0;
        const cJSON *ch;
        cJSON_ArrayForEach(ch, member(root, "choices"))
        {
            n += content_chars(member(member(ch, "message"), "content"));
        }
        *content_chars_out = n;
    }
    cJSON_Delete(root);
    return 0;
}

double openai_cost_usd(long prompt_tokens, long completion_tokens, double price_in_per_mtok,
                       double price_out_per_mtok)
{
    double pt = prompt_tokens > 0 ? (double)prompt_tokens : 0.0;
    double ct = completion_tokens > 0 ? (double)completion_tokens : 0.0;
    return (pt * price_in_per_mtok + ct * price_out_per_mtok) / 1e6;
}

long openai_estimate_tokens(size_t chars)
{
    if (chars == 0)
        return 0;
    size_t t = chars / 4;
    return t < 1 ? 1 : (long)t;
}

/* ---- SSE scanning ---- */

void openai_sse_init(struct openai_sse_scan *s)
{
    memset(s, 0, sizeof *s);
    s->prompt_tokens = -1;
    s->completion_tokens = -1;
}

void openai_sse_free(struct openai_sse_scan *s)
{
    free(s->line);
    s->line = NULL;
    s->line_len = s->line_cap = 0;
}

/* Handle one chunk's JSON payload (n bytes, no NUL inside). */
static void sse_json(struct openai_sse_scan *s, const char *p, size_t n)
{
    int oom;
    cJSON *root = parse_exact(p, n, &oom);
    if (!root)
        return; /* not JSON (or out of memory): ignored */
    if (cJSON_IsObject(root)) {
        if (!s->id[0])
            copy_id(root, s->id, sizeof s->id);
        const cJSON *usage = member(root, "usage");
        if (cJSON_IsObject(usage)) {
            long pt = token_count(usage, "prompt_tokens");
            long ct = token_count(usage, "completion_tokens");
            if (pt >= 0)
                s->prompt_tokens = pt;
            if (ct >= 0)
                s->completion_tokens = ct;
        }
        const cJSON *ch;
        cJSON_ArrayForEach(ch, member(root, "choices"))
        {
            s->content_chars += content_chars(member(member(ch, "delta"), "content"));
        }
    }
    cJSON_Delete(root);
}

/* One complete line (without its terminator). */
static void sse_line(struct openai_sse_scan *s, const char *p, size_t n)
{
    if (n < 5 || memcmp(p, "data:", 5) != 0)
        return; /* comments, event:, id:, retry:, blank lines */
    p += 5;
    n -= 5;
    if (n > 0 && p[0] == ' ') {
        p++;
        n--;
    }
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    if (n == 6 && memcmp(p, "[DONE]", 6) == 0) {
        s->saw_done = 1;
        return;
    }
    if (n > 0 && memchr(p, '\0', n) == NULL)
        sse_json(s, p, n);
}

/* Append to the partial line; on overflow switch to skipping mode. */
static void sse_append(struct openai_sse_scan *s, const char *p, size_t n)
{
    if (n == 0 || (s->skipping & SSE_SKIPPING))
        return;
    if (n > SSE_LINE_MAX - s->line_len) {
        free(s->line); /* the line will never be complete: drop it */
        s->line = NULL;
        s->line_len = s->line_cap = 0;
        s->skipping |= SSE_SKIPPING;
        return;
    }
    if (s->line_len + n + 1 > s->line_cap) {
        size_t cap = s->line_cap ? s->line_cap : 4096;
        while (cap < s->line_len + n + 1)
            cap *= 2;
        if (cap > SSE_LINE_MAX + 1)
            cap = SSE_LINE_MAX + 1;
        char *nl = realloc(s->line, cap);
        if (!nl) { /* out of memory: treat like an over-long line */
            free(s->line);
            s->line = NULL;
            s->line_len = s->line_cap = 0;
            s->skipping |= SSE_SKIPPING;
            return;
        }
        s->line = nl;
        s->line_cap = cap;
    }
    memcpy(s->line + s->line_len, p, n);
    s->line_len += n;
    s->line[s->line_len] = '\0';
}

/* The current line ended. */
static void sse_end_line(struct openai_sse_scan *s, const char *p, size_t n)
{
    if (s->skipping & SSE_SKIPPING) {
        s->skipping &= ~SSE_SKIPPING;
    } else if (s->line_len == 0) {
        if (n <= SSE_LINE_MAX) /* whole line in this chunk: no copy */
            sse_line(s, p, n);
    } else {
        sse_append(s, p, n);
        if (!(s->skipping & SSE_SKIPPING))
            sse_line(s, s->line, s->line_len);
        s->skipping &= ~SSE_SKIPPING;
    }
    s->line_len = 0;
}

void openai_sse_feed(struct openai_sse_scan *s, const char *data, size_t len)
{
    /* '\n', '\r' and "\r\n" all end a line. A "\r\n" is seen as two line
     * ends with an empty line between them, which is harmless: empty lines
     * carry no data. So no state is needed across feeds for it. */
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && data[i] != '\n' && data[i] != '\r')
            i++;
        if (i == len) {
            sse_append(s, data + start, len - start);
            return;
        }
        sse_end_line(s, data + start, i - start);
        i++;
    }
}
