/* features — a chat request → a hashed feature vector x ∈ R^dim (DESIGN.md §1).
 *
 * Signed feature hashing of word unigrams and bigrams of the user turns and
 * character n-grams, plus dense cues (log length, turns, code fences, digits
 * and maths symbols, question marks, system prompt, tools, max_tokens) and one
 * bias feature, then L2-normalised. Deterministic across runs, machines and
 * replicas (fixed hash, no seeds from the environment). Thread-safe (no state).
 *
 * Layout: x[0] is the bias feature (before normalisation it is 1.0), the next
 * FEATURES_N_DENSE slots are the dense cues, the rest are hashed. */
#ifndef BANDITD_FEATURES_H
#define BANDITD_FEATURES_H

#include <cjson/cJSON.h>

#define FEATURES_N_DENSE 10
#define FEATURES_MIN_DIM 16
#define FEATURES_MAX_DIM 4096
/* Norm of the hashed-text block relative to the bias (config router.text_weight). */
#define FEATURES_TEXT_WEIGHT 0.5
#define FEATURES_MAX_TEXT_WEIGHT 4.0

/* Featurize a whole chat request object (needs "messages"; reads "tools",
 * "max_tokens"/"max_completion_tokens"). x has dim entries. Returns 0 or
 * BD_ERR_INVALID (dim out of range or no messages array). Only the first
 * 64 KiB of text per message is read, so the cost is bounded. */
int features_from_request(const cJSON *request, double *x, int dim);

/* The same as a request with a single user message `prompt` and nothing else:
 * features_from_prompt(p) == features_from_request({"messages":[{"role":
 * "user","content":p}]}) exactly. */
int features_from_prompt(const char *prompt, double *x, int dim);

/* The same with the hashed-text block scaled to text_weight (in (0, 4]) instead
 * of FEATURES_TEXT_WEIGHT; BD_ERR_INVALID for a weight out of range. */
int features_from_request_tw(const cJSON *request, double *x, int dim, double text_weight);
int features_from_prompt_tw(const char *prompt, double *x, int dim, double text_weight);

#endif
