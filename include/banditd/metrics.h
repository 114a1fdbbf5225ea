/* metrics — a small Prometheus metrics registry and its text exposition
 * (format 0.0.4), plus the banditd metric catalogue (docs/metrics.md).
 *
 * Threading: NOT thread-safe and uses no atomics. Every call — series
 * creation, updates and exposition — must come from one thread (the event
 * loop). Callback functions run on that thread during metrics_expose().
 *
 * Model: a registry holds families (counter, gauge, histogram), each with a
 * name, help text and 0..METRICS_MAX_LABELS label names. A series is one
 * tuple of label values in a family; creating it returns a handle that stays
 * valid until the registry is destroyed. The hot path only touches handles:
 *
 *     metrics_counter_add(h, 1);     O(1), no allocation, no formatting
 *     metrics_hist_observe(h, 0.25); O(buckets <= 16), same
 *
 * Every update function accepts a NULL handle as a no-op, so code can run
 * with metrics disabled. Series creation is idempotent: asking again for the
 * same label values returns the same handle (creation after start, e.g. on
 * config reload, is fine). There is no series removal.
 *
 * Naming rules enforced at family creation (they keep `promtool check
 * metrics` silent): names match [a-zA-Z_][a-zA-Z0-9_]*, counters end in
 * `_total`, other families do not, no family name ends in `_bucket`, `_sum`
 * or `_count`; use base units in names (`_seconds`, `_bytes`, `_usd`).
 * Label names match [a-zA-Z_][a-zA-Z0-9_]*, do not start with "__", are
 * unique, and a histogram may not use "le". Help text and label values must
 * be valid UTF-8; label values are at most METRICS_MAX_VALUE_LEN bytes.
 *
 * Exposition order is deterministic: families sorted by name (bytewise),
 * series sorted by their label values (bytewise, label by label). */
#ifndef BANDITD_METRICS_H
#define BANDITD_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include "banditd/util.h"

#define METRICS_MAX_LABELS 3
#define METRICS_MAX_BUCKETS 16    /* finite bounds; +Inf is implicit */
#define METRICS_MAX_VALUE_LEN 256 /* bytes of one label value */
#define METRICS_MAX_SERIES 10000  /* per family: a cardinality guard */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

enum metrics_type { METRICS_COUNTER = 0, METRICS_GAUGE = 1, METRICS_HISTOGRAM = 2 };

struct metrics;         /* the registry (opaque) */
struct metrics_family;  /* one metric family (opaque, owned by the registry) */
struct metrics_counter; /* series handles (opaque, owned by the registry) */
struct metrics_gauge;
struct metrics_hist;

/* Value of a callback series, computed at exposition time. Return NaN to
 * omit the sample from this exposition (e.g. /proc unreadable). */
typedef double (*metrics_value_fn)(void *user);

/* ---- registry ---------------------------------------------------------- */

/* A new empty registry, or NULL on OOM. */
struct metrics *metrics_create(void);
/* Free the registry, its families and series; every handle becomes invalid.
 * NULL is a no-op. */
void metrics_destroy(struct metrics *m);

/* Create a family. label_names has n_labels entries (may be NULL when 0);
 * strings are copied. *out receives the family (owned by m).
 * Returns 0, BD_ERR_INVALID (bad name/help/labels/bounds, see above),
 * BD_ERR_EXISTS (a family of that name exists; *out is set to it anyway when
 * it has the same type, so callers may treat EXISTS as "already there"),
 * or BD_ERR_NOMEM. */
int metrics_counter_family(struct metrics *m, const char *name, const char *help, size_t n_labels,
                           const char *const *label_names, struct metrics_family **out);
int metrics_gauge_family(struct metrics *m, const char *name, const char *help, size_t n_labels,
                         const char *const *label_names, struct metrics_family **out);
/* bounds: 1..METRICS_MAX_BUCKETS finite, strictly increasing upper bounds
 * (copied). A value v is counted in the first bucket whose bound b has
 * v <= b (`le` is inclusive), else in +Inf. */
int metrics_hist_family(struct metrics *m, const char *name, const char *help, size_t n_labels,
                        const char *const *label_names, const double *bounds, size_t n_bounds,
                        struct metrics_family **out);

/* Family by exact name, or NULL. */
struct metrics_family *metrics_family_find(const struct metrics *m, const char *name);

/* Get or create the series of family f with these label values (n_labels
 * strings, copied; NULL when the family has no labels). *out receives the
 * handle. Returns 0, BD_ERR_INVALID (wrong family type, NULL value, value
 * too long or not UTF-8), BD_ERR_EXISTS (that series exists as a callback
 * series), BD_ERR_TOOBIG (family already has METRICS_MAX_SERIES series),
 * or BD_ERR_NOMEM. */
int metrics_counter_series(struct metrics_family *f, const char *const *values,
                           struct metrics_counter **out);
int metrics_gauge_series(struct metrics_family *f, const char *const *values,
                         struct metrics_gauge **out);
int metrics_hist_series(struct metrics_family *f, const char *const *values,
                        struct metrics_hist **out);

/* Create, or re-bind, a callback series in a counter or gauge family: at
 * each exposition the sample's value is fn(user). fn NULL: the series is
 * kept but omitted until bound. A counter callback must be monotone.
 * Returns 0, BD_ERR_INVALID (histogram family, bad values), BD_ERR_EXISTS
 * (that series exists as a plain value series), BD_ERR_TOOBIG, BD_ERR_NOMEM. */
int metrics_fn_series(struct metrics_family *f, const char *const *values, metrics_value_fn fn,
                      void *user);

/* Shorthand: an unlabelled gauge family `name` with one callback series.
 * Same return values as metrics_gauge_family / metrics_fn_series. */
int metrics_gauge_callback(struct metrics *m, const char *name, const char *help,
                           metrics_value_fn fn, void *user);

/* ---- hot path: O(1), no allocation, no formatting ----------------------- */

/* Add v >= 0 to a counter; negative or NaN v is ignored (counters are
 * monotone). */
void metrics_counter_add(struct metrics_counter *c, double v);
void metrics_counter_inc(struct metrics_counter *c);
void metrics_gauge_set(struct metrics_gauge *g, double v);
void metrics_gauge_add(struct metrics_gauge *g, double v); /* v may be negative */
/* Record one observation; NaN is ignored. */
void metrics_hist_observe(struct metrics_hist *h, double v);

/* Read back (tests, /stats). NULL handle reads 0. */
double metrics_counter_value(const struct metrics_counter *c);
double metrics_gauge_value(const struct metrics_gauge *g);
uint64_t metrics_hist_count(const struct metrics_hist *h);
double metrics_hist_sum(const struct metrics_hist *h);

/* ---- exposition ---------------------------------------------------------- */

/* Append the whole registry to out in Prometheus text format 0.0.4
 * (serve it with METRICS_CONTENT_TYPE). Calls every bound callback once.
 * Families with no sample to show are omitted entirely. Returns 0,
 * BD_ERR_TOOBIG (out's cap reached) or BD_ERR_NOMEM; on error out is left
 * exactly as it was on entry. */
int metrics_expose(struct metrics *m, struct util_buf *out);

/* ---- process metrics (Linux /proc; NaN when unreadable) ----------------- */

double metrics_proc_rss_bytes(void);    /* /proc/self/statm resident pages × page size */
double metrics_proc_vsize_bytes(void);  /* /proc/self/statm size × page size */
double metrics_proc_open_fds(void);     /* entries of /proc/self/fd (not counting its own) */
double metrics_proc_max_fds(void);      /* RLIMIT_NOFILE soft limit */
double metrics_proc_cpu_seconds(void);  /* getrusage: user + system */
double metrics_proc_start_time_s(void); /* /proc/self/stat starttime + /proc/stat btime */

/* Register process_cpu_seconds_total, process_open_fds, process_max_fds,
 * process_resident_memory_bytes, process_virtual_memory_bytes and
 * process_start_time_seconds as callback series. Returns 0 or an error from
 * family creation. */
int metrics_process_register(struct metrics *m);

/* ---- the banditd catalogue (see docs/metrics.md) ------------------------- */

enum metrics_route {
    METRICS_ROUTE_CHAT = 0, /* /v1/chat/completions: the only route with an arm */
    METRICS_ROUTE_FEEDBACK, /* /feedback, /v1/feedback */
    METRICS_ROUTE_MODELS,   /* /v1/models */
    METRICS_ROUTE_HEALTHZ,
    METRICS_ROUTE_READYZ,
    METRICS_ROUTE_METRICS,
    METRICS_ROUTE_STATS,
    METRICS_ROUTE_OTHER, /* anything else (404s) */
    METRICS_ROUTE_COUNT
};

enum metrics_circuit {
    METRICS_CIRCUIT_CLOSED = 0,
    METRICS_CIRCUIT_OPEN = 1,
    METRICS_CIRCUIT_HALF_OPEN = 2
};

enum metrics_feedback_result {
    METRICS_FEEDBACK_RECEIVED = 0, /* a feedback item arrived (before validation) */
    METRICS_FEEDBACK_APPLIED,      /* it updated the model */
    METRICS_FEEDBACK_REJECTED,     /* refused; reason from the bd_err code */
    METRICS_FEEDBACK_COUNT
};

/* Handles of one arm's series. Read-only for callers; valid until the
 * registry is destroyed. */
struct metrics_banditd_arm {
    const char *name;
    struct metrics_hist *upstream_duration;    /* banditd_upstream_duration_seconds */
    struct metrics_hist *upstream_ttfb;        /* banditd_upstream_ttfb_seconds (streams) */
    struct metrics_counter *tokens_prompt;     /* banditd_tokens_total{kind="prompt"} */
    struct metrics_counter *tokens_completion; /* banditd_tokens_total{kind="completion"} */
    struct metrics_counter *cost_usd;          /* banditd_cost_usd_total */
    struct metrics_counter *fallbacks;         /* banditd_fallbacks_total: this arm failed over */
    struct metrics_gauge *circuit_state;       /* banditd_circuit_state: enum metrics_circuit */
    struct metrics_gauge *reward_mean;         /* banditd_reward_mean */
};

struct metrics_banditd; /* the catalogue (opaque); the registry owns the series */

/* Register every banditd family (and the process metrics) in reg, set
 * banditd_build_info{version} to 1 and create the series of each arm in
 * arms[0..n_arms). All request, feedback and per-arm series are created here,
 * with value 0, so that the hot path never allocates. *out receives the
 * catalogue. Returns 0, BD_ERR_INVALID (NULL/empty arm name or version),
 * BD_ERR_EXISTS (reg already has a banditd or process_* family),
 * BD_ERR_NOMEM. On error reg may keep some of the families: destroy it. */
int metrics_banditd_create(struct metrics *reg, const char *version, const char *const *arms,
                           size_t n_arms, struct metrics_banditd **out);
/* Free the catalogue (not the registry or its series). NULL is a no-op. */
void metrics_banditd_destroy(struct metrics_banditd *cat);

/* Add an arm after start (config reload); idempotent by name. *idx receives
 * its index (may be NULL). Returns 0, BD_ERR_INVALID, BD_ERR_NOMEM. */
int metrics_banditd_add_arm(struct metrics_banditd *cat, const char *name, size_t *idx);
size_t metrics_banditd_n_arms(const struct metrics_banditd *cat);
/* Index of arm `name`, or -1. */
int metrics_banditd_arm_index(const struct metrics_banditd *cat, const char *name);
/* Handles of arm idx, or NULL when idx is out of range. */
const struct metrics_banditd_arm *metrics_banditd_arm(const struct metrics_banditd *cat,
                                                      size_t idx);

/* banditd_requests_total{route,arm,status}: status is the class "1xx".."5xx"
 * of http_status (values outside 100..599 clamp to 1xx / 5xx). arm is the
 * arm's name for METRICS_ROUTE_CHAT with arm_idx >= 0, else "" (no arm).
 * Never NULL for a valid route; NULL for a route out of range. */
struct metrics_counter *metrics_banditd_requests(const struct metrics_banditd *cat,
                                                 enum metrics_route route, int arm_idx,
                                                 int http_status);
/* banditd_request_duration_seconds{route}; NULL for a route out of range. */
struct metrics_hist *metrics_banditd_request_duration(const struct metrics_banditd *cat,
                                                      enum metrics_route route);
/* banditd_feedback_total{result,reason}: reason is "" unless result is
 * REJECTED, then derived from err (a bd_err): invalid, unknown_id, expired,
 * duplicate, unauthorized, other. */
struct metrics_counter *metrics_banditd_feedback(const struct metrics_banditd *cat,
                                                 enum metrics_feedback_result result, int err);
/* banditd_inflight_requests */
struct metrics_gauge *metrics_banditd_inflight(const struct metrics_banditd *cat);
/* Bind the callback gauges banditd_decisions_pending and
 * banditd_store_queue_depth (omitted from the exposition until bound). */
void metrics_banditd_bind_decisions_pending(struct metrics_banditd *cat, metrics_value_fn fn,
                                            void *user);
void metrics_banditd_bind_store_queue_depth(struct metrics_banditd *cat, metrics_value_fn fn,
                                            void *user);

/* Static names used as label values (for docs and tests). */
const char *metrics_route_name(enum metrics_route route); /* "chat_completions", … or NULL */

#endif
