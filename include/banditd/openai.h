/* openai — the OpenAI wire format: request validation, error bodies, usage
 * parsing, cost, token estimates, SSE scanning. Pure functions, no I/O. */
#ifndef BANDITD_OPENAI_H
#define BANDITD_OPENAI_H

#include <stddef.h>
#include <cjson/cJSON.h>

/* A validated chat completion request. Owns `root` (which may live in the
 * chat's arena: never cJSON_Delete it); the other pointers borrow from it.
 * Free with openai_chat_free. */
struct openai_chat {
    cJSON *root;
    const char *model;     /* request's "model" ("auto" when absent? no: required) */
    int stream;            /* "stream": true */
    int include_usage;     /* stream_options.include_usage */
    const cJSON *messages; /* non-empty array */
    size_t prompt_chars;   /* characters of all message text */
    long max_tokens;       /* max_tokens / max_completion_tokens, -1 if absent */
    char *src;             /* private copy of the request bytes (in the arena; may be NULL) */
    size_t src_len;        /* its length */
    /* internal */
    void *arena;                /* owns src and, when tree_in_arena, the tree */
    int tree_in_arena;          /* root was built by openai.c, not by cJSON */
    int spans_ok;               /* the offsets below are valid */
    size_t model_at, model_end; /* the root's first "model" value in src */
    size_t so_at, so_end;       /* its first "stream_options" value (so_end 0: none) */
    size_t close_at;            /* the root's closing brace */
};

/* Parse and validate a request body (len bytes, need not be NUL-terminated).
 * Rules: a JSON object; "model" a non-empty string; "messages" a non-empty
 * array of objects each with a string "role" and a "content" that is a string,
 * null (assistant with tool_calls) or an array of content parts; "stream" a
 * boolean when present; nesting deeper than 64 levels rejected.
 * Returns 0 or BD_ERR_INVALID with err set and *param set to the offending
 * parameter name (static string, or NULL). */
int openai_chat_parse(const char *body, size_t len, struct openai_chat *out, char *err,
                      size_t errlen, const char **param);
void openai_chat_free(struct openai_chat *c);
/* The same with a reusable buffer: openai_chat_release frees c but may keep
 * its first buffer (up to 64 KiB) in *spare (when *spare is NULL), and
 * openai_chat_parse_with takes *spare (setting it to NULL) for its own first
 * buffer when it is big enough, else frees it. Saves an allocation of about
 * 3x the body per request. Free a spare with openai_chat_spare_free. */
int openai_chat_parse_with(const char *body, size_t len, struct openai_chat *out, void **spare,
                           char *err, size_t errlen, const char **param);
void openai_chat_release(struct openai_chat *c, void **spare);
void openai_chat_spare_free(void *spare);

/* Serialise the request with "model" replaced (and, when streaming, with
 * stream_options.include_usage forced on so cost can be measured). Returns
 * a malloc'd NUL-terminated string (caller frees) or NULL on OOM.
 * Normally the client's bytes with just those values spliced in (c->src;
 * other members keep their order, spacing and number spelling); when the body
 * is not strict JSON, or c->src is NULL, it falls back to
 * openai_chat_rewrite_print. Both give the same JSON semantically. */
char *openai_chat_rewrite(struct openai_chat *c, const char *upstream_model, size_t *len_out);
/* The same by re-printing the cJSON tree (the reference; the fallback). */
char *openai_chat_rewrite_print(struct openai_chat *c, const char *upstream_model, size_t *len_out);

/* Build {"error":{"message":…,"type":…,"param":…,"code":…}} (param/code may be
 * NULL -> JSON null). Returns malloc'd string or NULL. */
char *openai_error_json(const char *message, const char *type, const char *param, const char *code);

/* Extract usage and id from a non-streaming completion body. Missing fields
 * are -1 / "". Returns 0, or BD_ERR_INVALID if the body is not JSON.
 * content_chars (NULL to skip, which is cheaper: choices are then not
 * parsed) gets the bytes of choices[].message.content text.
 * A strict scanner reads only the top-level "id", "usage" (and "choices" if
 * asked) and parses just those; anything it is unsure about takes the full
 * cJSON parse, so results are the same either way. */
int openai_parse_usage(const char *body, size_t len, long *prompt_tokens, long *completion_tokens,
                       char *id_out, size_t idlen, size_t *content_chars);

/* USD cost of a call: (pt*price_in + ct*price_out)/1e6. */
double openai_cost_usd(long prompt_tokens, long completion_tokens, double price_in_per_mtok,
                       double price_out_per_mtok);
/* Token estimate from text length (chars/4, at least 1 for non-empty). */
long openai_estimate_tokens(size_t chars);

/* Incremental scanner of an SSE stream of chat.completion.chunk events:
 * feed bytes as they arrive; it tracks the completion id, the usage block if
 * any and the number of content characters. Lines longer than 1 MiB are
 * skipped (the scanner never buffers more than that). */
struct openai_sse_scan {
    char id[128];
    long prompt_tokens;     /* -1 until seen */
    long completion_tokens; /* -1 until seen */
    size_t content_chars;
    int saw_done; /* "data: [DONE]" seen */
    char *line;   /* internal: partial line */
    size_t line_len, line_cap;
    int skipping;
};
void openai_sse_init(struct openai_sse_scan *s);
void openai_sse_feed(struct openai_sse_scan *s, const char *data, size_t len);
void openai_sse_free(struct openai_sse_scan *s);

/* An SSE error event terminating a failed stream:
 * "data: {\"error\":{...}}\n\n". Malloc'd; NULL on OOM. */
char *openai_sse_error_event(const char *message, const char *type, const char *code);

#endif
