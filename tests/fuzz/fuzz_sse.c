/* libFuzzer harness: a hostile upstream SSE stream (openai_sse_feed).
 *
 * Input layout: byte 0 = number of split points k (bits 0-3; bits 4-7 are
 * ignored), bytes 1..k = chunk lengths, the rest = the stream. Each chunk is
 * copied into its own exact-size heap buffer so that ASan catches a read past
 * a chunk. The same stream is also fed in one piece to a second scanner: the
 * result must not depend on where the network split it.
 *
 * The over-long-line path (lines above 1 MiB are skipped) costs ~0.3 s per
 * input under coverage instrumentation, so it is checked once at start-up
 * (LLVMFuzzerInitialize) rather than on every input. */
#include "fuzz.h"

#include "banditd/openai.h"

#define LONG_LINE (1024 * 1024 + 100)

int LLVMFuzzerInitialize(int *argc, char ***argv);

static void feed_copy(struct openai_sse_scan *s, const uint8_t *p, size_t n)
{
    char *chunk = malloc(n ? n : 1);
    FUZZ_CHECK(chunk != NULL);
    if (n)
        memcpy(chunk, p, n);
    openai_sse_feed(s, chunk, n);
    free(chunk);
}

static void check_scan(const struct openai_sse_scan *s)
{
    FUZZ_CHECK(fuzz_terminated(s->id, sizeof s->id));
    FUZZ_CHECK(s->prompt_tokens >= -1 && s->completion_tokens >= -1);
    FUZZ_CHECK(s->saw_done == 0 || s->saw_done == 1);
    FUZZ_CHECK(s->line_len <= s->line_cap);
    FUZZ_CHECK(s->line_cap <= 2 * 1024 * 1024);
}

/* An event line longer than 1 MiB, fed in `pieces` chunks, then a normal
 * stream: the long line is dropped whole, the rest is still scanned. */
static void check_long_line(int pieces)
{
    static const char tail[] =
        "\r\ndata: {\"id\":\"after\",\"choices\":[{\"delta\":{\"content\":\"ok\"}}],"
        "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n";
    static const char head[] = "data: {\"id\":\"long\",\"choices\":[{\"delta\":{\"content\":\"";
    char *line = malloc(LONG_LINE);
    FUZZ_CHECK(line != NULL);
    memcpy(line, head, sizeof head - 1);
    memset(line + sizeof head - 1, 'a', LONG_LINE - (sizeof head - 1));
    struct openai_sse_scan s;
    openai_sse_init(&s);
    size_t step = LONG_LINE / (size_t)pieces + 1;
    for (size_t off = 0; off < LONG_LINE; off += step)
        openai_sse_feed(&s, line + off, off + step > LONG_LINE ? LONG_LINE - off : step);
    openai_sse_feed(&s, tail, sizeof tail - 1);
    check_scan(&s);
    FUZZ_CHECK(strcmp(s.id, "after") == 0);
    FUZZ_CHECK(s.content_chars == 2);
    FUZZ_CHECK(s.prompt_tokens == 3 && s.completion_tokens == 2);
    FUZZ_CHECK(s.saw_done == 1);
    openai_sse_free(&s);
    free(line);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    check_long_line(1);
    check_long_line(7);
    check_long_line(1000);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t k = data[0] & 15;
    if (size < 1 + k)
        return 0;
    const uint8_t *lens = data + 1;
    const uint8_t *stream = data + 1 + k;
    size_t n = size - 1 - k;

    struct openai_sse_scan a, b;
    openai_sse_init(&a);
    openai_sse_init(&b);
    size_t off = 0;
    for (size_t i = 0; i < k && off < n; i++) {
        size_t len = lens[i];
        if (len > n - off)
            len = n - off;
        feed_copy(&a, stream + off, len);
        off += len;
    }
    feed_copy(&a, stream + off, n - off);
    feed_copy(&b, stream, n);
    check_scan(&a);
    check_scan(&b);

    FUZZ_CHECK(strcmp(a.id, b.id) == 0);
    FUZZ_CHECK(a.prompt_tokens == b.prompt_tokens);
    FUZZ_CHECK(a.completion_tokens == b.completion_tokens);
    FUZZ_CHECK(a.content_chars == b.content_chars);
    FUZZ_CHECK(a.saw_done == b.saw_done);
    openai_sse_free(&a);
    openai_sse_free(&b);
    return 0;
}
