/* dataset — logged per-prompt outcomes of several models (../shared/data,
 * the bundled data/ files), for `banditd replay` and `banditd-sim` (DESIGN.md §5).
 *
 * One JSON object per line:
 *   {"id": "...", "prompt": "...", "source": "...",
 *    "outcomes": {"model": {"quality": q, "prompt_tokens": n,
 *                           "completion_tokens": n, "cost_usd": c,
 *                           "response": "..." (optional)}, ...}}
 * Other members are ignored. Blank lines are skipped. A path ending in ".gz"
 * is read through `gzip -dc` (popen). Lines longer than DATASET_LINE_MAX are
 * an error. Errors name the file and the 1-based line number.
 *
 * A loaded dataset is immutable and may be read from several threads. */
#ifndef BANDITD_DATASET_H
#define BANDITD_DATASET_H

#include <stddef.h>

#define DATASET_LINE_MAX (4u * 1024u * 1024u) /* bytes per line, hard cap */
#define DATASET_MAX_MODELS 64
#define DATASET_MAX_ROWS 2000000

/* Load flags. */
#define DATASET_LOAD_RESPONSES 1u /* keep outcomes[].response (large) */

typedef struct dataset dataset;

struct dataset_outcome {
    int present;            /* 0: this row has no outcome for the model */
    double quality;         /* in [0,1] */
    long prompt_tokens;     /* >= 0 */
    long completion_tokens; /* >= 0 */
    double cost_usd;        /* >= 0 */
    char *response;         /* owned by the dataset; NULL unless loaded and present */
};

struct dataset_row {
    char *id;                    /* never NULL ("" when absent) */
    char *prompt;                /* never NULL */
    char *source;                /* never NULL ("" when absent) */
    int n_out;                   /* entries in out[] (models known when the row was read) */
    struct dataset_outcome *out; /* indexed by model index; use dataset_outcome() */
};

/* Load path. flags: DATASET_LOAD_RESPONSES or 0. On success *out is a new
 * dataset (free with dataset_destroy) and 0 is returned. On failure returns
 * BD_ERR_IO (unreadable), BD_ERR_INVALID (malformed row: err says
 * "FILE:LINE: what"), BD_ERR_TOOBIG (a line over the cap, or too many
 * models/rows) or BD_ERR_NOMEM; *out is untouched. */
int dataset_load(const char *path, unsigned flags, dataset **out, char *err, size_t errlen);
void dataset_destroy(dataset *ds);

size_t dataset_n_rows(const dataset *ds);
const struct dataset_row *dataset_row(const dataset *ds, size_t i);
/* Models: the union over all rows, in first-seen order. */
int dataset_n_models(const dataset *ds);
const char *dataset_model(const dataset *ds, int m);
int dataset_model_index(const dataset *ds, const char *name); /* -1 if unknown */
/* Outcome of model m on row, or NULL when the row has none. */
const struct dataset_outcome *dataset_outcome(const struct dataset_row *row, int m);
/* 1 if the row has an outcome for every model of the dataset. */
int dataset_row_complete(const dataset *ds, const struct dataset_row *row);

/* The first row (in file order) whose prompt equals prompt[0..len) exactly,
 * or NULL. O(1) expected (hash index built at load). */
const struct dataset_row *dataset_find_prompt(const dataset *ds, const char *prompt, size_t len);

/* Prices, USD per million tokens. Loads a prices.json of the form
 * {"model": {"input": x, "output": y}, ...} and attaches the entries of the
 * dataset's models (others are ignored). Returns 0, BD_ERR_IO or
 * BD_ERR_INVALID (message in err). */
int dataset_load_prices(dataset *ds, const char *path, char *err, size_t errlen);
/* Price of model m. When no prices file gave one, a blended price derived
 * from the logged rows is returned (sum cost_usd · 1e6 / sum tokens, the same
 * for input and output) and the return value is 1; 0 when from a file;
 * BD_ERR_NOTFOUND when m is out of range. */
int dataset_price(const dataset *ds, int m, double *in_per_mtok, double *out_per_mtok);

/* Latency model shared by replay and the simulator. No latency was logged, so
 * these are ASSUMPTIONS, not measurements (typical public-API figures of
 * 2024, rounded):
 *   GPT-4-class (name contains gpt-4/gpt4/claude): TTFT 600 ms, 30 tok/s
 *   gpt-3.5*:                                        TTFT 400 ms, 60 tok/s
 *   mistral-medium:                                  TTFT 400 ms, 45 tok/s
 *   mixtral*:                                        TTFT 300 ms, 80 tok/s
 *   otherwise by the size in the name ("7b", "34B", "70b", ...):
 *     <= 8B: 150 ms, 120 tok/s; <= 20B: 200 ms, 90 tok/s;
 *     <= 40B: 300 ms, 60 tok/s; larger: 400 ms, 40 tok/s
 *   no size in the name: 400 ms, 50 tok/s
 * latency_ms = ttft_ms + completion_tokens / tokens_per_s · 1000. */
struct dataset_latency {
    double ttft_ms;
    double tokens_per_s;
};
struct dataset_latency dataset_latency_of(const char *model);
/* Time to last byte in ms for a completion of completion_tokens (<0 → 0). */
double dataset_latency_ms(const char *model, long completion_tokens);

#endif
