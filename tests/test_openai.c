/* Unit tests for openai: request validation, rewrite, usage, cost, SSE, errors. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "banditd/err.h"
#include "banditd/openai.h"
#include "banditd/util.h"

/* Parse a NUL-terminated body; the body is first copied into an exact-size
 * heap buffer without terminator so that ASan catches any over-read. */
static int parse(const char *body, struct openai_chat *c, char *err, size_t errlen,
                 const char **param)
{
    size_t n = strlen(body);
    char *copy = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, body, n);
    int rc = openai_chat_parse(copy, n, c, err, errlen, param);
    free(copy);
    return rc;
}

static void expect_valid(const char *body, struct openai_chat *c)
{
    char err[256] = "";
    const char *param = "unset";
    int rc = parse(body, c, err, sizeof err, &param);
    ck_assert_msg(rc == 0, "rejected: %s (%s)", body, err);
    ck_assert_ptr_null(param);
}

static void expect_invalid(const char *body, size_t len, const char *want_param)
{
    struct openai_chat c;
    char err[256] = "";
    const char *param = "unset";
    char *copy = malloc(len ? len : 1);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, body, len);
    int rc = openai_chat_parse(copy, len, &c, err, sizeof err, &param);
    free(copy);
    ck_assert_msg(rc == BD_ERR_INVALID, "accepted (%d): %.*s", rc, (int)len, body);
    ck_assert_msg(err[0] != '\0', "no message for %.*s", (int)len, body);
    ck_assert_ptr_null(c.root);
    if (want_param == NULL)
        ck_assert_msg(param == NULL, "param %s for %.*s", param, (int)len, body);
    else
        ck_assert_msg(param != NULL && strcmp(param, want_param) == 0,
                      "param '%s' (want '%s') for %.*s: %s", param ? param : "(null)", want_param,
                      (int)len, body, err);
}

#define BAD(body, param) expect_invalid(body, strlen(body), param)

START_TEST(test_valid_requests)
{
    struct openai_chat c;
    expect_valid("{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi there\"}]}",
                 &c);
    ck_assert_str_eq(c.model, "auto");
    ck_assert_int_eq(c.stream, 0);
    ck_assert_int_eq(c.include_usage, 0);
    ck_assert_int_eq(cJSON_GetArraySize(c.messages), 1);
    ck_assert_uint_eq(c.prompt_chars, 8);
    ck_assert_int_eq(c.max_tokens, -1);
    openai_chat_free(&c);
    ck_assert_ptr_null(c.root);
    openai_chat_free(&c); /* idempotent */

    /* Several roles, content parts, null content, assistant with tool_calls,
     * stream, stream_options, max_completion_tokens preferred. */
    expect_valid(" {\"model\":\"gpt-4o\",\"stream\":true,"
                 "\"stream_options\":{\"include_usage\":true},"
                 "\"max_tokens\":10,\"max_completion_tokens\":300,"
                 "\"messages\":["
                 "{\"role\":\"system\",\"content\":\"Be brief.\"},"
                 "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What is \"},"
                 "{\"type\":\"image_url\",\"image_url\":{\"url\":\"http://x/y.png\"}},"
                 "{\"type\":\"text\",\"text\":\"this?\"}]},"
                 "{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"t1\"}]},"
                 "{\"role\":\"assistant\",\"content\":null},"
                 "{\"role\":\"tool\",\"tool_call_id\":\"t1\",\"content\":\"42\"}]}\n",
                 &c);
    ck_assert_str_eq(c.model, "gpt-4o");
    ck_assert_int_eq(c.stream, 1);
    ck_assert_int_eq(c.include_usage, 1);
    ck_assert_int_eq(cJSON_GetArraySize(c.messages), 5);
    /* "Be brief." 9 + "What is " 8 + "this?" 5 + "42" 2 */
    ck_assert_uint_eq(c.prompt_chars, 24);
    ck_assert_int_eq(c.max_tokens, 300);
    openai_chat_free(&c);

    expect_valid("{\"messages\":[{\"role\":\"user\",\"content\":\"\"}],\"model\":\"m\","
                 "\"stream\":false,\"max_tokens\":64,\"stream_options\":null}",
                 &c);
    ck_assert_int_eq(c.stream, 0);
    ck_assert_int_eq(c.max_tokens, 64);
    ck_assert_uint_eq(c.prompt_chars, 0);
    openai_chat_free(&c);

    /* Brackets inside strings do not count as nesting. */
    char body[2048];
    char deep_text[501];
    memset(deep_text, '[', 500);
    deep_text[500] = '\0';
    snprintf(body, sizeof body,
             "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\\\"{{\"}]}",
             deep_text);
    expect_valid(body, &c);
    ck_assert_uint_eq(c.prompt_chars, 503);
    openai_chat_free(&c);
}
END_TEST

START_TEST(test_invalid_requests)
{
    BAD("", NULL);
    BAD("   ", NULL);
    BAD("not json", NULL);
    BAD("{\"model\":\"m\",", NULL);
    BAD("[]", NULL);
    BAD("\"str\"", NULL);
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]} trailing", NULL);
    BAD("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "model");
    BAD("{\"model\":\"\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "model");
    BAD("{\"model\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "model");
    BAD("{\"model\":null,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "model");
    BAD("{\"Model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "model");
    BAD("{\"model\":\"m\"}", "messages");
    BAD("{\"model\":\"m\",\"messages\":[]}", "messages");
    BAD("{\"model\":\"m\",\"messages\":{}}", "messages");
    BAD("{\"model\":\"m\",\"messages\":\"hi\"}", "messages");
    BAD("{\"model\":\"m\",\"messages\":[1]}", "messages");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"},[]]}", "messages");
    BAD("{\"model\":\"m\",\"messages\":[{\"content\":\"x\"}]}", "messages.role");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":7,\"content\":\"x\"}]}", "messages.role");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages.content");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":{}}]}", "messages.content");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":true}]}",
        "messages.content");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[\"x\"]}]}",
        "messages.content");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}", "messages.content");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":"
        "\"true\"}",
        "stream");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":1}",
        "stream");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":null}",
        "stream");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"stream_options\":5}",
        "stream_options");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"stream_options\":{\"include_usage\":1}}",
        "stream_options");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":-1}",
        "max_tokens");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"max_tokens\":\"5\"}",
        "max_tokens");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"max_completion_tokens\":2.5}",
        "max_completion_tokens");
    /* A duplicated key could make the upstream see another model than ours. */
    BAD("{\"model\":\"cheap\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"model\":\"expensive\"}",
        "model");
    /* NUL bytes, in and out of strings, even after a complete object. */
    static const char nul1[] = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
                               "\"a\0b\"}]}";
    expect_invalid(nul1, sizeof nul1 - 1, NULL);
    static const char nul2[] = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
                               "\"ab\"}]}\0garbage";
    expect_invalid(nul2, sizeof nul2 - 1, NULL);
    /* err may be NULL / tiny; param may be NULL. */
    struct openai_chat c;
    ck_assert_int_eq(openai_chat_parse("{}", 2, &c, NULL, 0, NULL), BD_ERR_INVALID);
    char one[1] = {'x'};
    ck_assert_int_eq(openai_chat_parse("{}", 2, &c, one, 1, NULL), BD_ERR_INVALID);
    ck_assert_int_eq(one[0], '\0');
}
END_TEST

/* {"model":"m","messages":[...],"x": <levels nested arrays>}: depth levels+1. */
static char *nested_body(int levels)
{
    size_t cap = (size_t)levels * 2 + 256;
    char *b = malloc(cap);
    ck_assert_ptr_nonnull(b);
    size_t k = (size_t)snprintf(b, cap,
                                "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
                                "\"content\":\"x\"}],\"x\":");
    for (int i = 0; i < levels; i++)
        b[k++] = '[';
    for (int i = 0; i < levels; i++)
        b[k++] = ']';
    b[k++] = '}';
    b[k] = '\0';
    return b;
}

START_TEST(test_deep_nesting)
{
    struct openai_chat c;
    char err[256];
    /* 100 levels in total: rejected before cJSON recurses. */
    char *b = nested_body(99);
    ck_assert_int_eq(parse(b, &c, err, sizeof err, NULL), BD_ERR_INVALID);
    ck_assert_msg(strstr(err, "64") != NULL, "%s", err);
    free(b);
    /* 64 levels is the limit: accepted; 65 rejected. */
    b = nested_body(63);
    expect_valid(b, &c);
    openai_chat_free(&c);
    free(b);
    b = nested_body(64);
    ck_assert_int_eq(parse(b, &c, err, sizeof err, NULL), BD_ERR_INVALID);
    free(b);
    /* Deep objects inside messages too, and a huge unbalanced prefix. */
    b = malloc(200001);
    ck_assert_ptr_nonnull(b);
    memset(b, '{', 200000);
    b[200000] = '\0';
    ck_assert_int_eq(parse(b, &c, err, sizeof err, NULL), BD_ERR_INVALID);
    free(b);
    /* More than 64 brackets inside strings (the exact scan runs): not nesting. */
    char many[600];
    int n = snprintf(many, sizeof many,
                     "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
                     "\"content\":\"");
    for (int i = 0; i < 100; i++)
        many[n++] = i % 3 ? '{' : '[';
    snprintf(many + n, sizeof many - (size_t)n, "\"}]}");
    expect_valid(many, &c);
    openai_chat_free(&c);
    /* A NUL byte: before too-deep nesting it is the NUL error, after it the
     * depth error (the first problem in the body wins, as before). */
    char *deep = nested_body(99);
    size_t dl = strlen(deep);
    char *nul = malloc(dl + 2);
    ck_assert_ptr_nonnull(nul);
    nul[0] = ' ';
    nul[1] = '\0';
    memcpy(nul + 2, deep, dl);
    ck_assert_int_eq(openai_chat_parse(nul, dl + 2, &c, err, sizeof err, NULL), BD_ERR_INVALID);
    ck_assert_msg(strstr(err, "NUL") != NULL, "%s", err);
    memcpy(nul, deep, dl);
    nul[dl] = '\0';
    nul[dl + 1] = ' ';
    ck_assert_int_eq(openai_chat_parse(nul, dl + 2, &c, err, sizeof err, NULL), BD_ERR_INVALID);
    ck_assert_msg(strstr(err, "64") != NULL, "%s", err);
    free(nul);
    free(deep);
}
END_TEST

/* Parse the rewritten body; check it equals `orig_text` except for model and
 * the stream_options members named. */
static cJSON *rewrite_and_parse(struct openai_chat *c, const char *model)
{
    size_t len = 0;
    char *s = openai_chat_rewrite(c, model, &len);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(len, strlen(s));
    cJSON *j = cJSON_Parse(s);
    ck_assert_msg(j != NULL, "rewrite is not JSON: %s", s);
    free(s);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(j, "model")->valuestring, model);
    return j;
}

/* Every top-level member of `ref` except those in skip appears unchanged in j,
 * and j has no members that ref lacks except those in skip. */
static void same_except(const cJSON *ref, const cJSON *j, const char *const *skip)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, ref)
    {
        int skipped = 0;
        for (int i = 0; skip[i]; i++)
            skipped |= strcmp(it->string, skip[i]) == 0;
        if (skipped)
            continue;
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(j, it->string);
        ck_assert_msg(o && cJSON_Compare(it, o, 1), "member %s changed", it->string);
    }
    cJSON_ArrayForEach(it, j)
    {
        int skipped = 0;
        for (int i = 0; skip[i]; i++)
            skipped |= strcmp(it->string, skip[i]) == 0;
        ck_assert_msg(skipped || cJSON_GetObjectItemCaseSensitive(ref, it->string),
                      "member %s added", it->string);
    }
}

START_TEST(test_rewrite)
{
    static const char *const skip_model[] = {"model", NULL};
    static const char *const skip_both[] = {"model", "stream_options", NULL};
    const char *plain = "{\"model\":\"auto\",\"temperature\":0.25,\"user\":\"u\\\"1\","
                        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
                        "\"metadata\":{\"a\":[1,2,{\"b\":null}]},\"n\":1,"
                        "\"messages\":[{\"role\":\"user\",\"content\":\"Hello \\u00e9\\n\"}]}";
    cJSON *ref = cJSON_Parse(plain);
    ck_assert_ptr_nonnull(ref);
    struct openai_chat c;
    expect_valid(plain, &c);

    /* Not streaming: only model changes; no stream_options appear. */
    cJSON *j = rewrite_and_parse(&c, "gpt-4o-mini");
    same_except(ref, j, skip_model);
    ck_assert_ptr_null(cJSON_GetObjectItem(j, "stream_options"));
    cJSON_Delete(j);
    /* The request itself is unchanged and can be rewritten again (fallback). */
    ck_assert_str_eq(c.model, "auto");
    ck_assert(cJSON_Compare(ref, c.root, 1));
    j = rewrite_and_parse(&c, "other/model:v2");
    same_except(ref, j, skip_model);
    cJSON_Delete(j);
    openai_chat_free(&c);
    cJSON_Delete(ref);

    /* Streaming without stream_options: include_usage added. */
    const char *s1 = "{\"model\":\"auto\",\"stream\":true,"
                     "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    ref = cJSON_Parse(s1);
    expect_valid(s1, &c);
    ck_assert_int_eq(c.include_usage, 0);
    j = rewrite_and_parse(&c, "up");
    same_except(ref, j, skip_both);
    const cJSON *so = cJSON_GetObjectItem(j, "stream_options");
    ck_assert(cJSON_IsObject(so) && cJSON_GetArraySize(so) == 1);
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(so, "include_usage")));
    cJSON_Delete(j);
    ck_assert(cJSON_Compare(ref, c.root, 1));
    ck_assert_int_eq(c.include_usage, 0); /* what the client asked for */
    openai_chat_free(&c);
    cJSON_Delete(ref);

    /* Streaming with other stream_options members (and include_usage false):
     * forced true, others kept. */
    const char *s2 = "{\"stream_options\":{\"include_usage\":false,\"x_extra\":[1]},"
                     "\"model\":\"auto\",\"stream\":true,"
                     "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    ref = cJSON_Parse(s2);
    expect_valid(s2, &c);
    for (int round = 0; round < 2; round++) {
        j = rewrite_and_parse(&c, round ? "b" : "a");
        same_except(ref, j, skip_both);
        so = cJSON_GetObjectItem(j, "stream_options");
        ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(so, "include_usage")));
        ck_assert(cJSON_Compare(
            cJSON_GetObjectItem(so, "x_extra"),
            cJSON_GetObjectItem(cJSON_GetObjectItem(ref, "stream_options"), "x_extra"), 1));
        ck_assert_int_eq(cJSON_GetArraySize(so), 2);
        cJSON_Delete(j);
        ck_assert(cJSON_Compare(ref, c.root, 1));
    }
    openai_chat_free(&c);
    cJSON_Delete(ref);

    /* Streaming with stream_options null: replaced by {include_usage:true}. */
    const char *s3 = "{\"model\":\"auto\",\"stream\":true,\"stream_options\":null,"
                     "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    ref = cJSON_Parse(s3);
    expect_valid(s3, &c);
    j = rewrite_and_parse(&c, "up");
    so = cJSON_GetObjectItem(j, "stream_options");
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(so, "include_usage")));
    cJSON_Delete(j);
    ck_assert(cJSON_Compare(ref, c.root, 1));
    openai_chat_free(&c);
    cJSON_Delete(ref);

    /* stream false with stream_options: left exactly as sent. */
    const char *s4 = "{\"model\":\"auto\",\"stream\":false,"
                     "\"stream_options\":{\"include_usage\":false},"
                     "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    ref = cJSON_Parse(s4);
    expect_valid(s4, &c);
    j = rewrite_and_parse(&c, "up");
    same_except(ref, j, skip_model);
    cJSON_Delete(j);
    openai_chat_free(&c);
    cJSON_Delete(ref);
}
END_TEST

START_TEST(test_usage)
{
    const char *body =
        "{\"id\":\"chatcmpl-abc123\",\"object\":\"chat.completion\",\"model\":\"gpt-4o\","
        "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hello!\"},"
        "\"finish_reason\":\"stop\"},{\"index\":1,\"message\":{\"role\":\"assistant\","
        "\"content\":\"Hi, \\\"you\\\"\"}}],"
        "\"usage\":{\"prompt_tokens\":1036,\"completion_tokens\":91,\"total_tokens\":1127}}";
    long pt = 0, ct = 0;
    char id[64];
    size_t chars = 99;
    size_t n = strlen(body);
    char *copy = malloc(n);
    memcpy(copy, body, n);
    ck_assert_int_eq(openai_parse_usage(copy, n, &pt, &ct, id, sizeof id, &chars), 0);
    free(copy);
    ck_assert_int_eq(pt, 1036);
    ck_assert_int_eq(ct, 91);
    ck_assert_str_eq(id, "chatcmpl-abc123");
    ck_assert_uint_eq(chars, 6 + 9); /* "Hello!" + Hi, "you" */

    /* Missing pieces: -1 / "" / 0. */
    const char *b2 = "{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":null}}]}";
    ck_assert_int_eq(openai_parse_usage(b2, strlen(b2), &pt, &ct, id, sizeof id, &chars), 0);
    ck_assert_int_eq(pt, -1);
    ck_assert_int_eq(ct, -1);
    ck_assert_str_eq(id, "");
    ck_assert_uint_eq(chars, 0);
    /* Malformed counts are unknown, not garbage. */
    const char *b3 = "{\"id\":7,\"usage\":{\"prompt_tokens\":-3,\"completion_tokens\":\"5\"}}";
    ck_assert_int_eq(openai_parse_usage(b3, strlen(b3), &pt, &ct, id, sizeof id, &chars), 0);
    ck_assert_int_eq(pt, -1);
    ck_assert_int_eq(ct, -1);
    /* Long ids are cut to the buffer, never overflow it. */
    const char *b4 = "{\"id\":\"0123456789abcdef\",\"usage\":{\"prompt_tokens\":1.5,"
                     "\"completion_tokens\":0}}";
    char small[8];
    ck_assert_int_eq(openai_parse_usage(b4, strlen(b4), &pt, &ct, small, sizeof small, NULL), 0);
    ck_assert_str_eq(small, "0123456");
    ck_assert_int_eq(pt, -1);
    ck_assert_int_eq(ct, 0);
    /* Not JSON. */
    ck_assert_int_eq(openai_parse_usage("oops", 4, &pt, &ct, id, sizeof id, &chars),
                     BD_ERR_INVALID);
    ck_assert_int_eq(pt, -1);
    ck_assert_int_eq(openai_parse_usage("", 0, &pt, &ct, id, sizeof id, &chars), BD_ERR_INVALID);
    ck_assert_int_eq(openai_parse_usage("{}x", 3, &pt, &ct, id, sizeof id, &chars), BD_ERR_INVALID);
    /* Outputs may be NULL. */
    ck_assert_int_eq(openai_parse_usage(body, strlen(body), NULL, NULL, NULL, 0, NULL), 0);
}
END_TEST

START_TEST(test_cost_and_tokens)
{
    /* The logged GSM8K row in the data README: 1036 in, 91 out at $10/$30
     * per million tokens = 0.01036 + 0.00273 = 0.01309 USD. */
    ck_assert(fabs(openai_cost_usd(1036, 91, 10.0, 30.0) - 0.01309) < 1e-12);
    /* 1000 in at $2.50, 500 out at $10: 0.0025 + 0.005. */
    ck_assert(fabs(openai_cost_usd(1000, 500, 2.5, 10.0) - 0.0075) < 1e-12);
    /* One million of each at $0.60 = $1.20. */
    ck_assert(fabs(openai_cost_usd(1000000, 1000000, 0.6, 0.6) - 1.2) < 1e-12);
    ck_assert(openai_cost_usd(0, 0, 5, 15) == 0.0);
    /* Unknown (-1) counts cost nothing rather than a negative amount. */
    ck_assert(openai_cost_usd(-1, 100, 5, 15) >= 0);
    ck_assert(fabs(openai_cost_usd(-1, 100, 5, 15) - 0.0015) < 1e-12);

    ck_assert_int_eq(openai_estimate_tokens(0), 0);
    ck_assert_int_eq(openai_estimate_tokens(1), 1);
    ck_assert_int_eq(openai_estimate_tokens(3), 1);
    ck_assert_int_eq(openai_estimate_tokens(4), 1);
    ck_assert_int_eq(openai_estimate_tokens(8), 2);
    ck_assert_int_eq(openai_estimate_tokens(401), 100);
    ck_assert_int_eq(openai_estimate_tokens(4000000), 1000000);
}
END_TEST

/* The stream the scanner must understand, in pieces of every shape. */
static const char SSE_STREAM[] =
    ": keep-alive comment\r\n"
    "\r\n"
    "data: {\"id\":\"chatcmpl-9x\",\"choices\":[{\"delta\":{\"role\":\"assistant\","
    "\"content\":\"\"}}]}\r\n\r\n"
    "data:{\"id\":\"chatcmpl-9x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}"
    "\n\n"
    "data: not json at all\n\n"
    "event: ping\n"
    "data: {\"id\":\"chatcmpl-9x\",\"choices\":[{\"delta\":{\"content\":\", w\\u00f6rld\"}},"
    "{\"index\":1,\"delta\":{\"content\":\"!!\"}}]}\n\n"
    "data: {\"id\":\"chatcmpl-9x\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\r\n"
    "\r\n"
    "data: {\"id\":\"chatcmpl-9x\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,"
    "\"completion_tokens\":7,\"total_tokens\":19}}\n\n"
    "data: [DONE]\n\n";
/* Expected: "Hello" 5 + ", wörld" (8 bytes of UTF-8) + "!!" 2 */
#define SSE_CHARS 15u

static void check_scan(const struct openai_sse_scan *s)
{
    ck_assert_str_eq(s->id, "chatcmpl-9x");
    ck_assert_int_eq(s->prompt_tokens, 12);
    ck_assert_int_eq(s->completion_tokens, 7);
    ck_assert_uint_eq(s->content_chars, SSE_CHARS);
    ck_assert_int_eq(s->saw_done, 1);
}

START_TEST(test_sse_whole_and_bytewise)
{
    struct openai_sse_scan s;
    size_t n = sizeof SSE_STREAM - 1;

    openai_sse_init(&s);
    ck_assert_int_eq(s.prompt_tokens, -1);
    ck_assert_int_eq(s.completion_tokens, -1);
    ck_assert_int_eq(s.saw_done, 0);
    openai_sse_feed(&s, SSE_STREAM, n);
    check_scan(&s);
    openai_sse_free(&s);

    openai_sse_init(&s);
    for (size_t i = 0; i < n; i++) {
        char *one = malloc(1); /* exact-size chunks: ASan catches over-reads */
        *one = SSE_STREAM[i];
        openai_sse_feed(&s, one, 1);
        free(one);
    }
    check_scan(&s);
    openai_sse_free(&s);

    /* Bare CR line ends work as well. */
    char *cr = malloc(n);
    memcpy(cr, SSE_STREAM, n);
    for (size_t i = 0; i < n; i++)
        if (cr[i] == '\n')
            cr[i] = '\r';
    openai_sse_init(&s);
    for (size_t i = 0; i < n; i++)
        openai_sse_feed(&s, cr + i, 1);
    check_scan(&s);
    openai_sse_free(&s);
    free(cr);

    /* No [DONE], no usage: stays unknown. */
    const char *partial = "data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"abc\"}}]}\n"
                          "data: {\"choices\":[{\"delta\":{\"content\":\"de\"}}]}";
    openai_sse_init(&s);
    openai_sse_feed(&s, partial, strlen(partial));
    ck_assert_uint_eq(s.content_chars, 3); /* the last line is not complete yet */
    ck_assert_int_eq(s.saw_done, 0);
    ck_assert_int_eq(s.prompt_tokens, -1);
    openai_sse_feed(&s, "\n", 1);
    ck_assert_uint_eq(s.content_chars, 5);
    ck_assert_str_eq(s.id, "x");
    openai_sse_free(&s);
}
END_TEST

START_TEST(test_sse_random_splits)
{
    struct util_rng rng;
    util_rng_seed(&rng, 20240611);
    size_t n = sizeof SSE_STREAM - 1;
    for (int round = 0; round < 500; round++) {
        struct openai_sse_scan s;
        openai_sse_init(&s);
        size_t pos = 0;
        while (pos < n) {
            size_t max = 1 + (size_t)(util_rng_next(&rng) % 40);
            size_t k = max < n - pos ? max : n - pos;
            char *chunk = malloc(k);
            memcpy(chunk, SSE_STREAM + pos, k);
            openai_sse_feed(&s, chunk, k);
            free(chunk);
            pos += k;
            if (util_rng_next(&rng) % 8 == 0)
                openai_sse_feed(&s, "", 0); /* empty feeds are harmless */
        }
        check_scan(&s);
        openai_sse_free(&s);
    }
}
END_TEST

/* "data: {"choices":[{"delta":{"content":"xxx…"}}]}\n" with `chars` x's. */
static char *content_line(size_t chars, size_t *len)
{
    const char *pre = "data: {\"choices\":[{\"delta\":{\"content\":\"";
    const char *post = "\"}}]}\n";
    size_t a = strlen(pre), b = strlen(post);
    char *s = malloc(a + chars + b);
    ck_assert_ptr_nonnull(s);
    memcpy(s, pre, a);
    memset(s + a, 'x', chars);
    memcpy(s + a + chars, post, b);
    *len = a + chars + b;
    return s;
}

START_TEST(test_sse_long_lines)
{
    const size_t MiB = 1024 * 1024;
    size_t big_len, ok_len;
    char *big = content_line(MiB + 10, &big_len); /* over the limit: skipped */
    char *ok = content_line(MiB - 200, &ok_len);  /* just under: counted */
    const char *tail =
        "data: {\"choices\":[{\"delta\":{\"content\":\"tail\"}}],"
        "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
    ck_assert_uint_le(ok_len - 1, MiB); /* without its '\n' */
    ck_assert_uint_gt(big_len - 1, MiB);
    struct util_rng rng;
    util_rng_seed(&rng, 7);
    for (int round = 0; round < 6; round++) {
        struct openai_sse_scan s;
        openai_sse_init(&s);
        const char *parts[3] = {big, ok, tail};
        size_t lens[3] = {big_len, ok_len, strlen(tail)};
        for (int p = 0; p < 3; p++) {
            size_t pos = 0;
            while (pos < lens[p]) {
                /* round 0: one piece; later rounds: random pieces up to 256 KiB */
                size_t k = round == 0 ? lens[p] : 1 + (size_t)(util_rng_next(&rng) % (256 * 1024));
                if (k > lens[p] - pos)
                    k = lens[p] - pos;
                openai_sse_feed(&s, parts[p] + pos, k);
                ck_assert_uint_le(s.line_cap, MiB + 1); /* never buffers more */
                ck_assert_uint_le(s.line_len, MiB);
                pos += k;
            }
        }
        ck_assert_uint_eq(s.content_chars, (MiB - 200) + 4);
        ck_assert_int_eq(s.prompt_tokens, 3);
        ck_assert_int_eq(s.completion_tokens, 4);
        ck_assert_int_eq(s.saw_done, 1);
        openai_sse_free(&s);
    }
    free(big);
    free(ok);
}
END_TEST

START_TEST(test_error_json)
{
    const char *msg = "bad \"value\"\nline2\\ and \ttab, </script> \xc3\xa9";
    char *s = openai_error_json(msg, "invalid_request_error", "messages", "invalid_value");
    ck_assert_ptr_nonnull(s);
    ck_assert_ptr_null(strchr(s, '\n')); /* newline escaped */
    cJSON *j = cJSON_Parse(s);
    ck_assert_msg(j != NULL, "not JSON: %s", s);
    ck_assert_int_eq(cJSON_GetArraySize(j), 1);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    ck_assert(cJSON_IsObject(e));
    ck_assert_int_eq(cJSON_GetArraySize(e), 4);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "message")->valuestring, msg);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "type")->valuestring,
                     "invalid_request_error");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "param")->valuestring, "messages");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "code")->valuestring, "invalid_value");
    cJSON_Delete(j);
    free(s);

    s = openai_error_json("no \"arm\" answered", "upstream_error", NULL, NULL);
    ck_assert_ptr_nonnull(s);
    j = cJSON_Parse(s);
    ck_assert_ptr_nonnull(j);
    e = cJSON_GetObjectItemCaseSensitive(j, "error");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(e, "param")));
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(e, "code")));
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "message")->valuestring,
                     "no \"arm\" answered");
    cJSON_Delete(j);
    free(s);

    /* SSE error event: "data: " + the same JSON + blank line. */
    s = openai_sse_error_event("all arms failed:\n\"x\"", "upstream_error", "upstream_failed");
    ck_assert_ptr_nonnull(s);
    size_t n = strlen(s);
    ck_assert(strncmp(s, "data: ", 6) == 0);
    ck_assert(n > 8 && strcmp(s + n - 2, "\n\n") == 0);
    ck_assert_ptr_null(memchr(s, '\n', n - 2)); /* a single data line */
    s[n - 2] = '\0';
    j = cJSON_Parse(s + 6);
    ck_assert_ptr_nonnull(j);
    e = cJSON_GetObjectItemCaseSensitive(j, "error");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "message")->valuestring,
                     "all arms failed:\n\"x\"");
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(e, "code")->valuestring, "upstream_failed");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(e, "param")));
    cJSON_Delete(j);
    free(s);
}
END_TEST

/* ---- splice rewrite and usage scanner ---- */

/* Rewrite a body and return the malloc'd result (exact-size copy of the body
 * so ASan sees over-reads). */
static char *rewrite_of(const char *body, const char *model)
{
    struct openai_chat c;
    expect_valid(body, &c);
    size_t len = 0;
    char *s = openai_chat_rewrite(&c, model, &len);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(len, strlen(s));
    openai_chat_free(&c);
    return s;
}

static void expect_rewrite(const char *body, const char *model, const char *want)
{
    char *s = rewrite_of(body, model);
    ck_assert_str_eq(s, want);
    free(s);
}

/* The independent reference: cJSON parse of the body, model replaced and,
 * for streams, stream_options.include_usage forced true. */
static cJSON *reference_rewrite(const char *body, const char *model)
{
    cJSON *ref = cJSON_Parse(body);
    ck_assert_ptr_nonnull(ref);
    cJSON_ReplaceItemInObjectCaseSensitive(ref, "model", cJSON_CreateString(model));
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ref, "stream"))) {
        cJSON *so = cJSON_GetObjectItemCaseSensitive(ref, "stream_options");
        if (!cJSON_IsObject(so)) {
            cJSON_DeleteItemFromObjectCaseSensitive(ref, "stream_options");
            so = cJSON_AddObjectToObject(ref, "stream_options");
        }
        cJSON_DeleteItemFromObjectCaseSensitive(so, "include_usage");
        cJSON_AddTrueToObject(so, "include_usage");
    }
    return ref;
}

static void expect_semantic(const char *body, const char *model, const char *out)
{
    cJSON *ref = reference_rewrite(body, model);
    cJSON *got = cJSON_Parse(out);
    ck_assert_msg(got != NULL, "not JSON: %s", out);
    ck_assert_msg(cJSON_Compare(ref, got, 1), "differs:\n in  %s\n out %s", body, out);
    cJSON_Delete(ref);
    cJSON_Delete(got);
}

START_TEST(test_rewrite_splice_exact)
{
    const char *msg = "\"messages\":[{\"role\":\"user\",\"content\":\"hi \\\"x\\\" \\u00e9\"}]";
    char b[512], w[512];
    /* Only the model value changes; spacing, order and number spelling stay. */
    snprintf(b, sizeof b, "{ \"model\" :\t\"auto\" , \"temperature\":1.50e0,%s }", msg);
    snprintf(w, sizeof w, "{ \"model\" :\t\"gpt-4o\" , \"temperature\":1.50e0,%s }", msg);
    expect_rewrite(b, "gpt-4o", w);
    /* The new name is escaped like cJSON prints strings. */
    snprintf(b, sizeof b, "{%s,\"model\":\"a\"}", msg);
    snprintf(w, sizeof w, "{%s,\"model\":\"q\\\"\\\\\\n\\u0001/\xc3\xa9\"}", msg);
    expect_rewrite(b, "q\"\\\n\x01/\xc3\xa9", w);
    /* Streams: stream_options added before the closing brace... */
    snprintf(b, sizeof b, "{\"model\":\"a\",\"stream\":true,%s}\n", msg);
    snprintf(w, sizeof w,
             "{\"model\":\"m\",\"stream\":true,%s,\"stream_options\":{\"include_usage\":true}}\n",
             msg);
    expect_rewrite(b, "m", w);
    /* ...null replaced... */
    snprintf(b, sizeof b, "{\"stream_options\":null,\"model\":\"a\",\"stream\":true,%s}", msg);
    snprintf(w, sizeof w,
             "{\"stream_options\":{\"include_usage\":true},\"model\":\"m\",\"stream\":true,%s}",
             msg);
    expect_rewrite(b, "m", w);
    /* ...empty object filled... */
    snprintf(b, sizeof b, "{\"model\":\"a\",\"stream_options\":{ },\"stream\":true,%s}", msg);
    snprintf(w, sizeof w,
             "{\"model\":\"m\",\"stream_options\":{\"include_usage\":true },\"stream\":true,%s}",
             msg);
    expect_rewrite(b, "m", w);
    /* ...member added in front of others... */
    snprintf(b, sizeof b, "{\"model\":\"a\",\"stream_options\":{\"x\":[1]},\"stream\":true,%s}",
             msg);
    snprintf(w, sizeof w,
             "{\"model\":\"m\",\"stream_options\":{\"include_usage\":true,\"x\":[1]},"
             "\"stream\":true,%s}",
             msg);
    expect_rewrite(b, "m", w);
    /* ...false turned true; true left as is. */
    snprintf(b, sizeof b,
             "{\"model\":\"a\",\"stream_options\":{\"include_usage\" : false},\"stream\":true,%s}",
             msg);
    snprintf(w, sizeof w,
             "{\"model\":\"m\",\"stream_options\":{\"include_usage\" : true},\"stream\":true,%s}",
             msg);
    expect_rewrite(b, "m", w);
    /* Not streaming: stream_options untouched. */
    snprintf(b, sizeof b,
             "{\"model\":\"a\",\"stream_options\":{\"include_usage\":false},\"stream\":false,%s}",
             msg);
    snprintf(w, sizeof w,
             "{\"model\":\"m\",\"stream_options\":{\"include_usage\":false},\"stream\":false,%s}",
             msg);
    expect_rewrite(b, "m", w);

    /* What the scanner leaves to cJSON falls back to the re-print (byte-equal
     * to openai_chat_rewrite_print) and is still right: an escaped key that
     * cJSON reads as "model", a raw control byte in a string. */
    const char *fallbacks[] = {
        "{\"\\u006dodel\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"model\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"tab\there\"}]}",
        "{\"model\":\"a\",\"stream\":true,\"stream_options\":{\"include\\u005fusage\":false},"
        "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
    };
    for (size_t i = 0; i < sizeof fallbacks / sizeof fallbacks[0]; i++) {
        struct openai_chat c;
        expect_valid(fallbacks[i], &c);
        char *s = openai_chat_rewrite(&c, "up", NULL);
        char *r = openai_chat_rewrite_print(&c, "up", NULL);
        ck_assert_ptr_nonnull(s);
        ck_assert_ptr_nonnull(r);
        ck_assert_str_eq(s, r);
        expect_semantic(fallbacks[i], "up", s);
        free(s);
        free(r);
        openai_chat_free(&c);
    }
    /* A chat without its source bytes (built by hand) re-prints. */
    struct openai_chat c;
    expect_valid("{\"model\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &c);
    c.src = NULL; /* it lives in the chat's arena: openai_chat_free frees it */
    char *s = openai_chat_rewrite(&c, "z", NULL);
    ck_assert_str_eq(s, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"model\":\"z\"}");
    free(s);
    openai_chat_free(&c);
}
END_TEST

/* A random-JSON writer with random whitespace, for the randomized tests. */
struct gen {
    struct util_rng rng;
    char *buf;
    size_t len, cap;
};

static unsigned gen_int(struct gen *g, unsigned n)
{
    return (unsigned)(util_rng_next(&g->rng) % n);
}

static void gen_put(struct gen *g, const char *s)
{
    size_t n = strlen(s);
    if (g->len + n + 1 > g->cap) {
        g->cap = (g->len + n + 1) * 2;
        g->buf = realloc(g->buf, g->cap);
        ck_assert_ptr_nonnull(g->buf);
    }
    memcpy(g->buf + g->len, s, n + 1);
    g->len += n;
}

static void gen_ws(struct gen *g)
{
    static const char *const ws[] = {"", "", "", " ", "\n", "\t", " \r\n  "};
    gen_put(g, ws[gen_int(g, 7)]);
}

static void gen_string(struct gen *g)
{
    static const char *const parts[] = {"a",      "hello", " ",       "\\\"",           "\\\\",
                                        "\\n",    "\\/",   "\\u00e9", "\\ud83d\\ude00", "\xc3\xa9",
                                        "{[,:]}", "model", "\\t",     "\\u0041"};
    gen_put(g, "\"");
    unsigned n = gen_int(g, 6);
    for (unsigned i = 0; i < n; i++)
        gen_put(g, parts[gen_int(g, sizeof parts / sizeof parts[0])]);
    gen_put(g, "\"");
}

static void gen_value(struct gen *g, int depth)
{
    static const char *const nums[] = {"0", "-1", "3.25", "1e3", "-0.5E-2", "123456789", "2.50"};
    unsigned k = gen_int(g, depth > 3 ? 5 : 7);
    switch (k) {
    case 0:
        gen_string(g);
        break;
    case 1:
        gen_put(g, nums[gen_int(g, 7)]);
        break;
    case 2:
        gen_put(g, gen_int(g, 2) ? "true" : "false");
        break;
    case 3:
        gen_put(g, "null");
        break;
    case 4:
        gen_string(g);
        break;
    case 5:
    case 6: {
        int obj = k == 5;
        gen_put(g, obj ? "{" : "[");
        unsigned n = gen_int(g, 4);
        for (unsigned i = 0; i < n; i++) {
            gen_ws(g);
            if (i)
                gen_put(g, ",");
            gen_ws(g);
            if (obj) {
                char key[16];
                snprintf(key, sizeof key, "\"k%u\"", i);
                gen_put(g, key);
                gen_ws(g);
                gen_put(g, ":");
                gen_ws(g);
            }
            gen_value(g, depth + 1);
        }
        gen_ws(g);
        gen_put(g, obj ? "}" : "]");
        break;
    }
    }
}

/* One top-level member "key": value, with whitespace around. */
static void gen_member(struct gen *g, int first, const char *key, const char *value)
{
    gen_ws(g);
    if (!first)
        gen_put(g, ",");
    gen_ws(g);
    gen_put(g, "\"");
    gen_put(g, key);
    gen_put(g, "\"");
    gen_ws(g);
    gen_put(g, ":");
    gen_ws(g);
    if (value)
        gen_put(g, value);
    else
        gen_value(g, 1);
}

/* A JSON object of the n members in a random order (keys/vals are shuffled
 * in place), with random whitespace around it and inside. */
static void gen_object(struct gen *g, const char **keys, const char **vals, int n)
{
    gen_put(g, "{");
    for (int i = n - 1; i > 0; i--) { /* shuffle */
        int j = (int)gen_int(g, (unsigned)i + 1);
        const char *tk = keys[i], *tv = vals[i];
        keys[i] = keys[j], vals[i] = vals[j];
        keys[j] = tk, vals[j] = tv;
    }
    for (int i = 0; i < n; i++)
        gen_member(g, i == 0, keys[i], vals[i]);
    gen_ws(g);
    gen_put(g, "}");
    gen_ws(g);
}

START_TEST(test_rewrite_random)
{
    struct gen g = {0};
    util_rng_seed(&g.rng, 20240917);
    static const char *const models[] = {"gpt-4o-mini", "a\"b", "x\\y\n", "\xe6\xa8\xa1", ""};
    static const char *const sos[] = {"null", "{}", "{\"include_usage\":false}",
                                      "{ \"x\" : [1,{}] , \"include_usage\" : true }",
                                      "{\"y\":\"include_usage\"}"};
    int spliced = 0;
    for (int it = 0; it < 3000; it++) {
        g.len = 0;
        gen_put(&g, "");
        gen_ws(&g);
        /* Members in random order: model, messages, stream?, stream_options?, extras. */
        const char *keys[8];
        const char *vals[8];
        int n = 0;
        keys[n] = "model", vals[n++] = "\"auto\"";
        keys[n] = "messages";
        vals[n++] = gen_int(&g, 2) ? "[{\"role\":\"user\",\"content\":\"hi\"}]"
                                   : "[ {\"content\" : [{\"type\":\"text\",\"text\":\"\\u00e9\"}],"
                                     " \"role\" : \"user\"} ]";
        unsigned sm = gen_int(&g, 3);
        if (sm)
            keys[n] = "stream", vals[n++] = sm == 1 ? "true" : "false";
        if (gen_int(&g, 2))
            keys[n] = "stream_options", vals[n++] = sos[gen_int(&g, 5)];
        unsigned extras = gen_int(&g, 4);
        static const char *const ek[] = {"temperature", "tools", "metadata", "user"};
        for (unsigned e = 0; e < extras; e++)
            keys[n] = ek[e], vals[n++] = NULL;
        gen_object(&g, keys, vals, n);

        const char *model = models[gen_int(&g, 5)];
        if (!model[0])
            model = "m";
        struct openai_chat c;
        expect_valid(g.buf, &c);
        size_t len = 0;
        char *s = openai_chat_rewrite(&c, model, &len);
        ck_assert_ptr_nonnull(s);
        ck_assert_uint_eq(len, strlen(s));
        expect_semantic(g.buf, model, s);
        /* Strict input: the splice path ran, so the bytes before the model
         * value are the client's. */
        const char *mv = strstr(g.buf, "\"model\"");
        const char *sv = strstr(g.buf, "\"stream_options\"");
        ck_assert_ptr_nonnull(mv);
        if (sv && sv < mv && c.stream)
            mv = sv; /* the first edit is there */
        size_t pre = (size_t)(strchr(mv + 7, ':') - g.buf);
        spliced += memcmp(s, g.buf, pre) == 0;
        ck_assert_msg(memcmp(s, g.buf, pre) == 0, "not spliced: %s", g.buf);
        /* Rewriting twice (a fallback arm) gives the same bytes. */
        char *s2 = openai_chat_rewrite(&c, model, NULL);
        ck_assert_str_eq(s, s2);
        free(s2);
        free(s);
        openai_chat_free(&c);
    }
    ck_assert_int_eq(spliced, 3000);
    free(g.buf);
}
END_TEST

/* The reference for openai_parse_usage, straight from cJSON. */
static int reference_usage(const char *body, long *pt, long *ct, char *id, size_t idlen, size_t *cc)
{
    *pt = *ct = -1;
    id[0] = '\0';
    *cc = 0;
    cJSON *j = cJSON_ParseWithOpts(body, NULL, 1);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return BD_ERR_INVALID;
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "id");
    if (cJSON_IsString(v))
        snprintf(id, idlen, "%s", v->valuestring);
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
    const char *names[2] = {"prompt_tokens", "completion_tokens"};
    long *outs[2] = {pt, ct};
    for (int i = 0; i < 2 && cJSON_IsObject(u); i++) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(u, names[i]);
        if (cJSON_IsNumber(t) && t->valuedouble >= 0 && t->valuedouble <= 1e15 &&
            t->valuedouble == floor(t->valuedouble))
            *outs[i] = (long)t->valuedouble;
    }
    const cJSON *ch;
    cJSON_ArrayForEach(ch, cJSON_GetObjectItemCaseSensitive(j, "choices"))
    {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(ch, "message");
        const cJSON *ct_ = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (cJSON_IsString(ct_))
            *cc += strlen(ct_->valuestring);
    }
    cJSON_Delete(j);
    return 0;
}

START_TEST(test_usage_random)
{
    struct gen g = {0};
    util_rng_seed(&g.rng, 77);
    static const char *const usages[] = {
        "{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19}",
        "{ \"completion_tokens\" : 0 , \"prompt_tokens\" : 1.0e3 }",
        "{\"prompt_tokens\":-1,\"completion_tokens\":\"5\"}",
        "{\"prompt_tokens\":2.5,\"completion_tokens\":1e400}",
        "null",
        "[1,2]",
        "{\"prompt_tokens\":3,\"prompt_tokens\":4,\"completion_tokens\":{\"n\":1}}",
    };
    static const char *const ids[] = {"\"chatcmpl-1\"",           "\"a\\\"b\\u00e9\"", "7", "\"\"",
                                      "\"0123456789abcdefghij\"", "\"x\\u0000y\""};
    static const char *const choices[] = {
        "[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hello \\\"w\\\"\"}}]",
        "[]", "[{\"message\":{\"content\":null}},{\"message\":{\"content\":\"\\ud83d\\ude00!\"}}]",
        "{\"a\":{\"message\":{\"content\":\"obj\"}}}", "\"none\""};
    for (int it = 0; it < 4000; it++) {
        g.len = 0;
        gen_put(&g, "");
        gen_ws(&g);
        const char *keys[6];
        const char *vals[6];
        int n = 0;
        if (gen_int(&g, 5))
            keys[n] = "id", vals[n++] = ids[gen_int(&g, 6)];
        if (gen_int(&g, 5))
            keys[n] = "usage", vals[n++] = usages[gen_int(&g, 7)];
        if (gen_int(&g, 5))
            keys[n] = "choices", vals[n++] = choices[gen_int(&g, 5)];
        if (gen_int(&g, 3))
            keys[n] = "object", vals[n++] = NULL;
        if (gen_int(&g, 4) == 0) /* a duplicate: the first one counts */
            keys[n] = "usage", vals[n++] = usages[gen_int(&g, 7)];
        if (gen_int(&g, 6) == 0) /* an escaped key: left to cJSON */
            keys[n] = "\\u0075sage", vals[n++] = usages[0];
        gen_object(&g, keys, vals, n);
        size_t blen = g.len;
        unsigned damage = gen_int(&g, 8);
        if (damage == 0 && blen > 1)
            blen = gen_int(&g, (unsigned)blen); /* truncated */
        else if (damage == 1)
            gen_put(&g, "x"), blen = g.len; /* trailing garbage */
        char *body = malloc(blen ? blen : 1);
        memcpy(body, g.buf, blen);
        char *z = strndup(g.buf, blen);

        long pt, ct, rpt, rct;
        size_t cc, rcc;
        char id[12], rid[12];
        int idsz = gen_int(&g, 2) ? 12 : 4;
        int rc = openai_parse_usage(body, blen, &pt, &ct, id, (size_t)idsz, &cc);
        int rrc = reference_usage(z, &rpt, &rct, rid, (size_t)idsz, &rcc);
        ck_assert_msg(rc == rrc, "rc %d vs %d for %s", rc, rrc, z);
        if (rc == 0) {
            ck_assert_msg(pt == rpt && ct == rct, "tokens %ld/%ld vs %ld/%ld for %s", pt, ct, rpt,
                          rct, z);
            ck_assert_msg(strcmp(id, rid) == 0, "id '%s' vs '%s' for %s", id, rid, z);
            ck_assert_msg(cc == rcc, "chars %zu vs %zu for %s", cc, rcc, z);
            /* Without content_chars the rest is the same. */
            long pt2, ct2;
            char id2[12];
            ck_assert_int_eq(openai_parse_usage(body, blen, &pt2, &ct2, id2, (size_t)idsz, NULL),
                             0);
            ck_assert(pt2 == pt && ct2 == ct && strcmp(id2, id) == 0);
        }
        free(body);
        free(z);
    }
    free(g.buf);
}
END_TEST

/* Two trees are the same, field by field: full type word, valueint, the
 * bits of valuedouble, strings, member order and the prev links (cJSON
 * leaves head->prev pointing at the last child). */
static int tree_same(const cJSON *a, const cJSON *b)
{
    if (a->type != b->type || a->valueint != b->valueint ||
        memcmp(&a->valuedouble, &b->valuedouble, sizeof a->valuedouble) != 0)
        return 0;
    if ((a->valuestring == NULL) != (b->valuestring == NULL) ||
        (a->valuestring && strcmp(a->valuestring, b->valuestring) != 0))
        return 0;
    if ((a->string == NULL) != (b->string == NULL) || (a->string && strcmp(a->string, b->string)))
        return 0;
    const cJSON *ca = a->child, *cb = b->child, *pa = NULL, *pb = NULL;
    for (; ca && cb; pa = ca, pb = cb, ca = ca->next, cb = cb->next) {
        if (pa && (ca->prev != pa || cb->prev != pb))
            return 0;
        if (!tree_same(ca, cb))
            return 0;
    }
    if (ca || cb)
        return 0;
    if (a->child && (a->child->prev != pa || b->child->prev != pb))
        return 0;
    return 1;
}

/* openai_chat_parse builds the tree itself for strict JSON: it must be the
 * tree cJSON_Parse gives, bit for bit (numbers, escapes, surrogates, \u0000,
 * numbers of 63 and 64 bytes, which cJSON cuts at 63). */
START_TEST(test_tree_random)
{
    struct gen g = {0};
    util_rng_seed(&g.rng, 77);
    static const char *const nums[] = {
        "0",
        "-0",
        "1e400",
        "-1e400",
        "4e-400",
        "2147483647",
        "2147483648",
        "-2147483648",
        "-2147483649",
        "0.1",
        "1E+2",
        "3.0e-5",
        "123456789012345678901234567890",
        "999999999999999",
        "-999999999999999",
        "9999999999999999",
        "9007199254740993",
        "1234567890123456789012345678901234567890123456789012345678901.5",
        "12345678901234567890123456789012345678901234567890123456789012.5"};
    static const char *const strs[] = {"\"\"",
                                       "\"a\\u0000b\"",
                                       "\"\\ud800\\udc00\\u07ff\\u0800\"",
                                       "\"\\b\\f\\r\\t\\/\\\\\\\"\"",
                                       "\"\\uFFFF\\uABCD\"",
                                       "\"plain text with spaces\""};
    int built = 0;
    for (int it = 0; it < 3000; it++) {
        g.len = 0;
        gen_put(&g, "");
        gen_ws(&g);
        const char *keys[8];
        const char *vals[8];
        int n = 0;
        keys[n] = "model", vals[n++] = "\"auto\"";
        keys[n] = "messages", vals[n++] = "[{\"role\":\"user\",\"content\":\"hi\\nthere\"}]";
        keys[n] = "n", vals[n++] = nums[gen_int(&g, sizeof nums / sizeof nums[0])];
        keys[n] = "s", vals[n++] = strs[gen_int(&g, sizeof strs / sizeof strs[0])];
        unsigned extras = gen_int(&g, 5);
        static const char *const ek[] = {"temperature", "tools", "metadata", "user"};
        for (unsigned e = 0; e < extras && e < 4; e++)
            keys[n] = ek[e], vals[n++] = NULL;
        gen_object(&g, keys, vals, n);
        struct openai_chat c;
        expect_valid(g.buf, &c);
        cJSON *ref = cJSON_ParseWithOpts(g.buf, NULL, 1);
        ck_assert_ptr_nonnull(ref);
        ck_assert_msg(tree_same(ref, c.root), "tree differs for %s", g.buf);
        built += c.tree_in_arena;
        cJSON_Delete(ref);
        openai_chat_free(&c);
    }
    /* Only the 64-byte number (1 in 19) is left to cJSON. */
    ck_assert_int_gt(built, 2600);
    free(g.buf);

    /* An escape, a quote and a raw control byte at every offset of a long
     * string (the scanner tests 16 bytes at a time): the first two are built
     * here, the raw byte is left to cJSON (which takes it); same trees. */
    static const char *const stops[] = {"\\n", "\\\"", "\x01", "\x1f"};
    for (size_t k = 0; k < sizeof stops / sizeof stops[0]; k++) {
        for (int off = 0; off < 40; off++) {
            char body[256];
            int n = snprintf(body, sizeof body,
                             "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
                             "\"content\":\"%.*s%s%.*s\"}]}",
                             off, "0123456789abcdef0123456789abcdef0123456789", stops[k], 40 - off,
                             "0123456789abcdef0123456789abcdef0123456789");
            ck_assert(n > 0 && (size_t)n < sizeof body);
            struct openai_chat c;
            expect_valid(body, &c);
            ck_assert_int_eq(c.tree_in_arena, k < 2);
            cJSON *ref = cJSON_ParseWithOpts(body, NULL, 1);
            ck_assert_ptr_nonnull(ref);
            ck_assert_msg(tree_same(ref, c.root), "tree differs for %s", body);
            cJSON_Delete(ref);
            openai_chat_free(&c);
        }
    }
}
END_TEST

/* openai_chat_parse_with reuses the buffer openai_chat_release kept: the
 * same results as openai_chat_parse, whatever the order of sizes (a spare
 * too small is freed, not used; ASan checks that nothing leaks). */
START_TEST(test_parse_with_spare)
{
    void *spare = NULL;
    static const size_t sizes[] = {10, 3000, 10, 40000, 200000, 5, 3000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        char *text = malloc(n + 1);
        ck_assert_ptr_nonnull(text);
        memset(text, 'a' + (int)(i % 26), n);
        text[n] = '\0';
        size_t blen = n + 128;
        char *body = malloc(blen);
        ck_assert_ptr_nonnull(body);
        snprintf(body, blen,
                 "{\"model\":\"auto\",\"stream\":true,\"messages\":[{\"role\":\"user\","
                 "\"content\":\"%s\"}]}",
                 text);
        struct openai_chat a, b;
        char err[128];
        ck_assert_int_eq(
            openai_chat_parse_with(body, strlen(body), &a, &spare, err, sizeof err, NULL), 0);
        ck_assert_ptr_null(spare);
        ck_assert_int_eq(openai_chat_parse(body, strlen(body), &b, err, sizeof err, NULL), 0);
        ck_assert(cJSON_Compare(a.root, b.root, 1));
        ck_assert_uint_eq(a.prompt_chars, n);
        char *ra = openai_chat_rewrite(&a, "up", NULL), *rb = openai_chat_rewrite(&b, "up", NULL);
        ck_assert_str_eq(ra, rb);
        free(ra);
        free(rb);
        openai_chat_release(&a, &spare);
        ck_assert_ptr_null(a.root);
        if (n < 10000)
            ck_assert_ptr_nonnull(spare); /* kept (<= 64 KiB) */
        if (n > 100000)
            ck_assert_ptr_null(spare); /* too big to keep */
        openai_chat_release(&b, NULL);
        free(body);
        free(text);
    }
    /* A failed parse takes the spare and frees it. */
    struct openai_chat c;
    ck_assert_int_eq(openai_chat_parse_with("{", 1, &c, &spare, NULL, 0, NULL), BD_ERR_INVALID);
    ck_assert_ptr_null(spare);
    openai_chat_spare_free(spare);
}
END_TEST

static Suite *openai_suite(void)
{
    Suite *s = suite_create("openai");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_valid_requests);
    tcase_add_test(tc, test_invalid_requests);
    tcase_add_test(tc, test_deep_nesting);
    tcase_add_test(tc, test_rewrite);
    tcase_add_test(tc, test_usage);
    tcase_add_test(tc, test_cost_and_tokens);
    tcase_add_test(tc, test_sse_whole_and_bytewise);
    tcase_add_test(tc, test_sse_random_splits);
    tcase_add_test(tc, test_sse_long_lines);
    tcase_add_test(tc, test_error_json);
    tcase_add_test(tc, test_rewrite_splice_exact);
    tcase_add_test(tc, test_rewrite_random);
    tcase_add_test(tc, test_usage_random);
    tcase_add_test(tc, test_tree_random);
    tcase_add_test(tc, test_parse_with_spare);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(openai_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
