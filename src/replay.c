/* replay — run the router over logged per-prompt outcomes (see replay.h,
 * DESIGN.md §5, docs/results.md).
 *
 * For each row, in an order shuffled by the seed, the policy decides on the
 * row's features, then sees only the chosen arm's logged quality (feedback),
 * completion tokens and modelled latency (dataset.h's latency assumptions).
 * Features are computed once per row and shared by every sweep point; each
 * point starts from a fresh router (after --warmup when given: a bandit run
 * over its rows at the point's preference, or with --warmup-feedback all
 * every arm learns every warm-up row's outcome). Points run on --jobs worker
 * threads (default 2); each owns its router, so the results do not depend on
 * the number of threads.
 *
 * Baselines on the same rows: always-strong (best mean quality), always-
 * cheapest (lowest mean cost), the per-prompt oracle (best quality, cheapest
 * on ties), a random strong/cheapest mix at the router's strong share
 * (expected value), and a non-contextual bandit: per arm
 *   w_q·(q̄_a + α·sqrt(ln t / n_a)) − w_c·ĉ_a/C̄ − w_l·l̂_a/L̄
 * (untried arms first) with the router's cost and latency models and
 * normalisation, so that only the context differs. */
#include "banditd/replay.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cblas.h>
#include <cjson/cJSON.h>

#include "banditd/config.h"
#include "banditd/dataset.h"
#include "banditd/err.h"
#include "banditd/features.h"
#include "banditd/openai.h"
#include "banditd/pref.h"
#include "banditd/router.h"
#include "banditd/store.h"
#include "banditd/util.h"

#define MAX_ARMS DATASET_MAX_MODELS
#define MAX_SOURCES 32
#define MAX_SWEEP 1001
#define MAX_JOBS 64
#define NC_PRIOR_COMPLETION 256.0 /* same prior as the router's cost model */
#define NC_NORM_WINDOW 10000.0
#define NC_LATENCY_EWMA 0.1

enum fmt { FMT_TABLE, FMT_JSON, FMT_CSV };

#define TOL_SWEEP_MAX 0.5 /* --sweep-form tolerance: the loosest point */

struct opts {
    const char *data, *config, *warmup, *prices, *plot, *out;
    const char *warmup_export, *warmup_map; /* `banditd export` dump; arm=model,... */
    int have_pref, sweep, jobs, sweep_tol;
    int warm_all;     /* --warmup-feedback all: learn every arm's outcome of a warm-up row */
    int ptok_logged;  /* --prompt-tokens logged: decide on the data's prompt_tokens */
    const char *pref; /* an X-Bandit-Preference value */
    size_t limit;     /* measure only the first N shuffled rows (0 = all) */
    uint64_t seed;
    enum fmt fmt;
};

/* Rows of one file, in shuffled order, with everything the loop needs. */
struct rowset {
    size_t n;
    double *X;        /* n × dim */
    long *ptok;       /* prompt tokens as the daemon estimates them */
    int *src;         /* source index (measured set only) */
    double *q, *cost; /* n × A */
    long *ct;         /* n × A completion tokens */
    size_t skipped;   /* rows lacking an outcome of some arm */
};

/* Feedback rows of a `banditd export --format jsonl` dump, mapped to the
 * data's models, in the export's (seq) order. */
struct xrows {
    size_t n, cap;
    double *X;        /* n × dim */
    int *arm;         /* model index */
    double *reward;   /* n */
    size_t skipped;   /* feedback rows of an arm that maps to no model */
    size_t decisions; /* decision lines seen (not applied) */
};

struct ctx {
    const struct opts *o;
    struct config *cfg;
    int A, dim;
    const char *names[MAX_ARMS];
    struct dataset_latency lat[MAX_ARMS];
    double pin[MAX_ARMS], pout[MAX_ARMS];
    struct rowset meas, warm;
    struct xrows xw; /* --warmup-export feedback rows */
    int n_src;
    char *src_names[MAX_SOURCES];
};

/* Result of one policy at one preference. */
struct res {
    struct pref_weights w;
    size_t n;
    double q, cost, lat; /* sums */
    size_t pulls[MAX_ARMS];
    double src_q[MAX_SOURCES], src_cost[MAX_SOURCES];
    size_t src_pulls[MAX_SOURCES][MAX_ARMS];
    int rc;
};

/* ---- curve metrics ----------------------------------------------------------------------- */

static int cmp_share(const void *a, const void *b)
{
    const struct replay_curve_point *x = a, *y = b;
    if (x->strong_share != y->strong_share)
        return x->strong_share < y->strong_share ? -1 : 1;
    return (x->pgr > y->pgr) - (x->pgr < y->pgr);
}

/* Points plus anchors (0,0), (1,1), sorted by strong share; caller frees. */
static struct replay_curve_point *anchored(const struct replay_curve_point *p, size_t n, size_t *m)
{
    struct replay_curve_point *c = calloc(n + 2, sizeof *c);
    if (!c)
        return NULL;
    c[0].strong_share = 0.0;
    c[0].pgr = 0.0;
    for (size_t i = 0; i < n; i++)
        c[i + 1] = p[i];
    c[n + 1].strong_share = 1.0;
    c[n + 1].pgr = 1.0;
    qsort(c + 1, n, sizeof *c, cmp_share);
    *m = n + 2;
    return c;
}

double replay_apgr(const struct replay_curve_point *p, size_t n)
{
    size_t m;
    struct replay_curve_point *c = anchored(p, n, &m);
    if (!c)
        return NAN;
    double area = 0.0;
    for (size_t i = 1; i < m; i++)
        area += (c[i].strong_share - c[i - 1].strong_share) * (c[i].pgr + c[i - 1].pgr) / 2.0;
    free(c);
    return area;
}

double replay_cpt(const struct replay_curve_point *p, size_t n, double target)
{
    size_t m;
    struct replay_curve_point *c = anchored(p, n, &m);
    if (!c)
        return NAN;
    double r = 1.0;
    for (size_t i = 0; i < m; i++) {
        if (c[i].pgr < target)
            continue;
        if (i == 0) {
            r = c[0].strong_share;
        } else {
            const struct replay_curve_point *a = &c[i - 1], *b = &c[i];
            double t = (target - a->pgr) / (b->pgr - a->pgr); /* b->pgr > a->pgr here */
            r = a->strong_share + t * (b->strong_share - a->strong_share);
        }
        break;
    }
    free(c);
    return r;
}

static int cmp_saving(const void *a, const void *b)
{
    const struct replay_curve_point *x = a, *y = b;
    return (x->saving > y->saving) - (x->saving < y->saving);
}

double replay_saving_at(const struct replay_curve_point *p, size_t n, double min_retention)
{
    struct replay_curve_point *c = calloc(n + 1, sizeof *c);
    if (!c)
        return NAN;
    memcpy(c, p, n * sizeof *c);
    c[n].retention = 1.0;
    c[n].saving = 0.0;
    qsort(c, n + 1, sizeof *c, cmp_saving);
    double best = -INFINITY;
    for (size_t i = 0; i <= n; i++) {
        if (c[i].retention >= min_retention && c[i].saving > best)
            best = c[i].saving;
        if (i == 0)
            continue;
        const struct replay_curve_point *a = &c[i - 1], *b = &c[i];
        if ((a->retention >= min_retention) != (b->retention >= min_retention)) {
            double t = (min_retention - a->retention) / (b->retention - a->retention);
            double s = a->saving + t * (b->saving - a->saving);
            if (s > best)
                best = s;
        }
    }
    free(c);
    return best;
}

/* ---- options ----------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: banditd replay --data FILE.jsonl[.gz] [--config FILE]\n"
               "         [--preference W | --sweep N] [--seed S] [--warmup FILE2]\n"
               "         [--format table|json|csv] [--prices FILE] [--plot FILE.svg]\n"
               "         [--jobs N] [--out FILE] [--sweep-form scalar|tolerance] [--limit N]\n"
               "         [--prompt-tokens estimate|logged]\n"
               "  --config FILE   router settings (its arms are ignored: the arms are the\n"
               "                  data's models, priced from --prices)\n"
               "  --preference P  an X-Bandit-Preference value: a weight on quality in [0,1],\n"
               "                  a profile name, weights, or tolerance=T (default: the\n"
               "                  config's default preference)\n"
               "  --sweep N       N preference points from 0 to 1 (Pareto curve, APGR, CPT)\n"
               "  --sweep-form F  scalar (default): point k is the weight k/(N-1);\n"
               "                  tolerance: point k is tolerance=0.5*(1-k/(N-1))^2\n"
               "  --limit N       measure only the first N rows of the shuffled order\n"
               "  --prompt-tokens logged (default): the router prices each prompt with the\n"
               "                  data's prompt_tokens, i.e. the text the request was billed\n"
               "                  for (RouteLLM GSM8K counts a few-shot prefix the stored\n"
               "                  prompt lacks); estimate: with the daemon's estimate from the\n"
               "                  stored text (bytes / 4), which is what a daemon fed only the\n"
               "                  stored prompts (the demo) sees: replay then matches it exactly\n"
               "  --seed S        shuffle seed (default 1)\n"
               "  --warmup FILE2  learn on every row of FILE2 first, then measure on --data\n"
               "  --warmup-feedback chosen|all  chosen (default): the warm-up is a bandit\n"
               "                  run (each row teaches only the arm chosen, at the point's\n"
               "                  preference); all: each warm-up row teaches every arm its\n"
               "                  logged outcome (offline training on labelled data)\n"
               "  --warmup-export DUMP  first apply every feedback row (arm, x, reward) of a\n"
               "                  `banditd export --format jsonl` dump, in seq order\n"
               "  --warmup-map A=M[,A=M...]  daemon arm A is the data's model M (default:\n"
               "                  an arm named like a model is that model)\n"
               "  --prices FILE   prices.json (default: prices.json beside the data file)\n"
               "  --plot FILE.svg write FILE.svg.gp and run gnuplot to draw cost vs quality\n"
               "  --jobs N        worker threads for sweep points (default 2)\n"
               "  --out FILE      write the report to FILE instead of stdout\n");
}

static int parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* A two-valued option: *out = 0 for v == c0, 1 for v == c1, else -1 and a
 * usage message. */
static int parse_choice(const char *opt, const char *v, const char *c0, const char *c1, int *out)
{
    if (strcmp(v, c0) == 0 || strcmp(v, c1) == 0) {
        *out = strcmp(v, c1) == 0;
        return 0;
    }
    fprintf(stderr, "replay: %s: one of %s, %s\n", opt, c0, c1);
    return -1;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    memset(o, 0, sizeof *o);
    o->seed = 1;
    o->jobs = 2;
    o->ptok_logged = 1;
    o->fmt = FMT_TABLE;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "replay: %s: unknown option or missing value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        double d;
        if (strcmp(a, "--data") == 0) {
            o->data = v;
        } else if (strcmp(a, "--config") == 0) {
            o->config = v;
        } else if (strcmp(a, "--warmup") == 0) {
            o->warmup = v;
        } else if (strcmp(a, "--warmup-export") == 0) {
            o->warmup_export = v;
        } else if (strcmp(a, "--warmup-map") == 0) {
            o->warmup_map = v;
        } else if (strcmp(a, "--prices") == 0) {
            o->prices = v;
        } else if (strcmp(a, "--plot") == 0) {
            o->plot = v;
        } else if (strcmp(a, "--out") == 0) {
            o->out = v;
        } else if (strcmp(a, "--preference") == 0) {
            /* Numbers and weights are checked now (a usage error); profile
             * names once the config's profiles are known. */
            struct pref_weights pw;
            char perr[256];
            if ((strchr(v, '=') || strspn(v, "0123456789.+-eE ") == strlen(v)) &&
                pref_parse(v, strlen(v), NULL, 0, &pw, perr, sizeof perr) != 0) {
                fprintf(stderr, "replay: --preference: %s\n", perr);
                return -1;
            }
            o->pref = v;
            o->have_pref = 1;
        } else if (strcmp(a, "--sweep-form") == 0) {
            if (parse_choice(a, v, "scalar", "tolerance", &o->sweep_tol) < 0)
                return -1;
        } else if (strcmp(a, "--warmup-feedback") == 0) {
            if (parse_choice(a, v, "chosen", "all", &o->warm_all) < 0)
                return -1;
        } else if (strcmp(a, "--prompt-tokens") == 0) {
            if (parse_choice(a, v, "estimate", "logged", &o->ptok_logged) < 0)
                return -1;
        } else if (strcmp(a, "--limit") == 0) {
            if (parse_double(v, &d) < 0 || d != floor(d) || d < 1 || d > 1e12) {
                fprintf(stderr, "replay: --limit: must be a positive integer\n");
                return -1;
            }
            o->limit = (size_t)d;
        } else if (strcmp(a, "--sweep") == 0) {
            if (parse_double(v, &d) < 0 || d != floor(d) || d < 2 || d > MAX_SWEEP) {
                fprintf(stderr, "replay: --sweep: must be an integer in [2,%d]\n", MAX_SWEEP);
                return -1;
            }
            o->sweep = (int)d;
        } else if (strcmp(a, "--jobs") == 0) {
            if (parse_double(v, &d) < 0 || d != floor(d) || d < 1 || d > MAX_JOBS) {
                fprintf(stderr, "replay: --jobs: must be an integer in [1,%d]\n", MAX_JOBS);
                return -1;
            }
            o->jobs = (int)d;
        } else if (strcmp(a, "--seed") == 0) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-') {
                fprintf(stderr, "replay: --seed: must be a non-negative integer\n");
                return -1;
            }
            o->seed = (uint64_t)s;
        } else if (strcmp(a, "--format") == 0) {
            if (strcmp(v, "table") == 0)
                o->fmt = FMT_TABLE;
            else if (strcmp(v, "json") == 0)
                o->fmt = FMT_JSON;
            else if (strcmp(v, "csv") == 0)
                o->fmt = FMT_CSV;
            else {
                fprintf(stderr, "replay: --format: one of table, json, csv\n");
                return -1;
            }
        } else {
            fprintf(stderr, "replay: %s: unknown option\n", a);
            return -1;
        }
    }
    if (!o->data) {
        fprintf(stderr, "replay: --data is required\n");
        return -1;
    }
    if (o->have_pref && o->sweep) {
        fprintf(stderr, "replay: --preference and --sweep exclude each other\n");
        return -1;
    }
    return 0;
}

/* ---- preparing rows ---------------------------------------------------------------------- */

static void rowset_free(struct rowset *s)
{
    free(s->X);
    free(s->ptok);
    free(s->src);
    free(s->q);
    free(s->cost);
    free(s->ct);
    memset(s, 0, sizeof *s);
}

static int source_index(struct ctx *c, const char *name)
{
    for (int i = 0; i < c->n_src; i++)
        if (strcmp(c->src_names[i], name) == 0)
            return i;
    if (c->n_src == MAX_SOURCES - 1) { /* the last slot collects the rest */
        c->src_names[c->n_src] = strdup("(other)");
        if (!c->src_names[c->n_src])
            return BD_ERR_NOMEM;
        return c->n_src++;
    }
    if (c->n_src == MAX_SOURCES)
        return MAX_SOURCES - 1;
    c->src_names[c->n_src] = strdup(name);
    if (!c->src_names[c->n_src])
        return BD_ERR_NOMEM;
    return c->n_src++;
}

/* Fill s from ds in an order shuffled by seed (Fisher–Yates). map[a] = the
 * dataset's model index of arm a. Rows lacking any arm are skipped. */
static int rowset_build(struct ctx *c, const dataset *ds, const int *map, uint64_t seed,
                        int with_sources, struct rowset *s)
{
    size_t N = dataset_n_rows(ds);
    size_t A = (size_t)c->A, dim = (size_t)c->dim;
    size_t *order = malloc(N * sizeof *order);
    memset(s, 0, sizeof *s);
    s->X = malloc(N * dim * sizeof *s->X);
    s->ptok = malloc(N * sizeof *s->ptok);
    s->src = malloc(N * sizeof *s->src);
    s->q = malloc(N * A * sizeof *s->q);
    s->cost = malloc(N * A * sizeof *s->cost);
    s->ct = malloc(N * A * sizeof *s->ct);
    if (!order || !s->X || !s->ptok || !s->src || !s->q || !s->cost || !s->ct) {
        free(order);
        rowset_free(s);
        return BD_ERR_NOMEM;
    }
    for (size_t i = 0; i < N; i++)
        order[i] = i;
    struct util_rng rng;
    util_rng_seed(&rng, seed);
    for (size_t i = N; i > 1; i--) {
        size_t j = (size_t)(util_rng_next(&rng) % i);
        size_t t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    size_t n = 0;
    int rc = BD_OK;
    for (size_t k = 0; k < N && rc == BD_OK; k++) {
        if (with_sources && c->o->limit > 0 && n >= c->o->limit)
            break; /* --limit: the measured rows only */
        const struct dataset_row *row = dataset_row(ds, order[k]);
        int ok = 1;
        for (size_t a = 0; a < A && ok; a++)
            ok = dataset_outcome(row, map[a]) != NULL;
        if (!ok) {
            s->skipped++;
            continue;
        }
        rc = features_from_prompt_tw(row->prompt, s->X + n * dim, c->dim,
                                     c->cfg->router.text_weight);
        if (rc != BD_OK)
            break;
        /* The daemon's estimate for this prompt sent as the only user message
         * (http.c: openai_estimate_tokens of the message text), not the logged
         * count: the router must decide on what a live request shows it. The
         * logged counts can be far larger (RouteLLM's GSM8K rows count a
         * ~950-token few-shot prefix, MT-Bench rows earlier turns, neither
         * stored) and let replay price calls the daemon cannot see; the
         * measured cost stays the logged cost_usd. The default, --prompt-tokens
         * logged, decides "as if each request carried the billed text", which is
         * what live traffic carrying its real prompts would show the daemon. */
        s->ptok[n] = c->o->ptok_logged ? dataset_outcome(row, map[0])->prompt_tokens
                                       : openai_estimate_tokens(strlen(row->prompt));
        for (size_t a = 0; a < A; a++) {
            const struct dataset_outcome *oc = dataset_outcome(row, map[a]);
            s->q[n * A + a] = oc->quality;
            s->cost[n * A + a] = oc->cost_usd;
            s->ct[n * A + a] = oc->completion_tokens;
        }
        s->src[n] = 0;
        if (with_sources) {
            int si = source_index(c, row->source);
            if (si < 0)
                rc = si;
            s->src[n] = si;
        }
        n++;
    }
    free(order);
    s->n = n;
    if (rc != BD_OK)
        rowset_free(s);
    return rc;
}

/* ---- policies ---------------------------------------------------------------------------- */

/* The non-contextual bandit (see the top of the file). */
struct nc {
    int A;
    double alpha;
    double qsum[MAX_ARMS];
    double n[MAX_ARMS];
    double ct_sum[MAX_ARMS], ct_n[MAX_ARMS];
    double lat[MAX_ARMS];
    double lat_n[MAX_ARMS];
    double t;
    double cbar, cbar_n, lbar, lbar_n;
    const double *pin, *pout;
};

static void nc_running_mean(double *mean, double *n, double v)
{
    *n += 1.0;
    double w = *n < NC_NORM_WINDOW ? 1.0 / *n : 1.0 / NC_NORM_WINDOW;
    *mean += w * (v - *mean);
}

static int nc_decide(struct nc *s, const struct pref_weights *w, long ptok)
{
    double cost[MAX_ARMS], cmax = 0.0, lmax = 0.0;
    for (int a = 0; a < s->A; a++) {
        double e = (NC_PRIOR_COMPLETION + s->ct_sum[a]) / (1.0 + s->ct_n[a]);
        cost[a] = ((double)(ptok > 0 ? ptok : 0) * s->pin[a] + e * s->pout[a]) / 1e6;
        if (cost[a] > cmax)
            cmax = cost[a];
        if (s->lat[a] > lmax)
            lmax = s->lat[a];
    }
    nc_running_mean(&s->cbar, &s->cbar_n, cmax);
    nc_running_mean(&s->lbar, &s->lbar_n, lmax);
    s->t += 1.0;
    int best = 0;
    double best_score = -INFINITY;
    for (int a = 0; a < s->A; a++) {
        double score;
        if (s->n[a] == 0) {
            score = INFINITY; /* try every arm once */
        } else {
            double qh = s->qsum[a] / s->n[a] + s->alpha * sqrt(log(s->t) / s->n[a]);
            double cn = s->cbar > 0 ? cost[a] / s->cbar : 0.0;
            double ln = s->lbar > 0 ? s->lat[a] / s->lbar : 0.0;
            score = w->quality * qh - w->cost * cn - w->latency * ln;
        }
        if (score > best_score) {
            best_score = score;
            best = a;
        }
    }
    return best;
}

static void nc_learn(struct nc *s, int a, double q, long ct, double lat)
{
    s->qsum[a] += q;
    s->n[a] += 1.0;
    s->ct_sum[a] += (double)ct;
    s->ct_n[a] += 1.0;
    s->lat[a] = s->lat_n[a] == 0 ? lat : s->lat[a] + NC_LATENCY_EWMA * (lat - s->lat[a]);
    s->lat_n[a] += 1.0;
}

/* Teach the policy arm a's logged outcome of row i (quality, completion
 * tokens, modelled latency); *lat receives that latency. */
static int learn_row(const struct ctx *c, router *r, struct nc *nc, const struct rowset *s,
                     size_t i, int a, double *lat)
{
    size_t A = (size_t)c->A;
    double q = s->q[i * A + (size_t)a];
    long ct = s->ct[i * A + (size_t)a];
    double ttft = c->lat[a].ttft_ms;
    *lat = ttft + (double)ct / c->lat[a].tokens_per_s * 1000.0;
    if (nc) {
        nc_learn(nc, a, q, ct, *lat);
        return BD_OK;
    }
    int rc = router_feedback(r, a, s->X + i * (size_t)c->dim, q);
    if (rc == BD_OK)
        router_observe(r, a, ct, ttft, *lat);
    return rc;
}

/* Run one policy (router when nc == NULL) over a rowset; accumulate into res
 * when res != NULL. all: after each decision, learn every arm's outcome of
 * the row, not only the chosen arm's (--warmup-feedback all; the decision
 * still runs, so the cost normalisation C̄ sees the same rows either way). */
static int run_rows(const struct ctx *c, router *r, struct nc *nc, const struct rowset *s,
                    const struct pref_weights *w, int all, struct res *res)
{
    size_t A = (size_t)c->A, dim = (size_t)c->dim;
    struct router_decision d;
    for (size_t i = 0; i < s->n; i++) {
        const double *x = s->X + i * dim;
        int a;
        if (nc) {
            a = nc_decide(nc, w, s->ptok[i]);
        } else {
            int rc = router_decide(r, x, w, s->ptok[i], NULL, -1, &d);
            if (rc != BD_OK)
                return rc;
            a = d.order[0];
        }
        assert(a >= 0 && (size_t)a < A);
        double lat = 0.0, other;
        for (int b = 0; b < (int)A; b++) {
            if (b != a && !all)
                continue;
            int rc = learn_row(c, r, nc, s, i, b, b == a ? &lat : &other);
            if (rc != BD_OK)
                return rc;
        }
        if (res) {
            double q = s->q[i * A + (size_t)a], cost = s->cost[i * A + (size_t)a];
            res->n++;
            res->q += q;
            res->cost += cost;
            res->lat += lat;
            res->pulls[a]++;
            res->src_q[s->src[i]] += q;
            res->src_cost[s->src[i]] += cost;
            res->src_pulls[s->src[i]][a]++;
        }
    }
    return BD_OK;
}

/* ---- --warmup-export ----------------------------------------------------------------------- */

#define XW_LINE_MAX (8u * 1024u * 1024u) /* an export line: dim numbers of 17 digits */

/* Model index of export arm `arm`: an explicit A=M entry of map, else the
 * model named like the arm; -1 when none. */
static int xw_model(const struct ctx *c, const char *map, const char *arm)
{
    size_t alen = strlen(arm);
    for (const char *p = map; p && *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        if (eq && (size_t)(eq - p) == alen && memcmp(p, arm, alen) == 0) {
            size_t mlen = len - alen - 1;
            for (int a = 0; a < c->A; a++)
                if (strlen(c->names[a]) == mlen && memcmp(c->names[a], eq + 1, mlen) == 0)
                    return a;
            return -1;
        }
        p = end ? end + 1 : p + len;
    }
    for (int a = 0; a < c->A; a++)
        if (strcmp(c->names[a], arm) == 0)
            return a;
    return -1;
}

static int xw_push(struct xrows *w, int dim, int arm, double reward, const cJSON *x)
{
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 256;
        double *X = realloc(w->X, cap * (size_t)dim * sizeof *X);
        if (X)
            w->X = X;
        int *ar = realloc(w->arm, cap * sizeof *ar);
        if (ar)
            w->arm = ar;
        double *rw = realloc(w->reward, cap * sizeof *rw);
        if (rw)
            w->reward = rw;
        if (!X || !ar || !rw)
            return BD_ERR_NOMEM;
        w->cap = cap;
    }
    double *dst = w->X + w->n * (size_t)dim;
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, x)
    {
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
            return BD_ERR_INVALID;
        dst[i++] = v->valuedouble;
    }
    w->arm[w->n] = arm;
    w->reward[w->n] = reward;
    w->n++;
    return BD_OK;
}

/* The export's text_weight must be the router's: features of another scale
 * would not match the ones --data is featurized with. */
static int xw_check_text_weight(const struct ctx *c, const cJSON *tw, const char *path,
                                size_t lineno, char *err, size_t errlen)
{
    char what[4200], num[40];
    snprintf(what, sizeof what, "%s:%zu: export", path, lineno);
    if (!cJSON_IsNumber(tw)) {
        util_errf(err, errlen, "%s: text_weight is not a number", what);
        return BD_ERR_INVALID;
    }
    snprintf(num, sizeof num, "%.17g", tw->valuedouble); /* exact round trip */
    int rc = store_text_weight_check(num, c->cfg->router.text_weight, what, what,
                                     "set router.text_weight in --config", err, errlen);
    return rc == BD_ERR_CORRUPT ? BD_ERR_INVALID : rc;
}

/* Read the feedback rows of an export (meta line first; its dim and
 * text_weight, when it has one, must be the router's). Errors name the file
 * and line. */
static int xw_load(struct ctx *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return BD_ERR_IO;
    }
    char *line = NULL;
    size_t lcap = 0, lineno = 0;
    ssize_t len;
    int rc = BD_OK, have_meta = 0;
    while (rc == BD_OK && (len = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        if ((size_t)len > XW_LINE_MAX) {
            snprintf(err, errlen, "%s:%zu: line longer than %u bytes", path, lineno, XW_LINE_MAX);
            rc = BD_ERR_TOOBIG;
            break;
        }
        if (strspn(line, " \t\r\n") == (size_t)len)
            continue;
        cJSON *o = cJSON_ParseWithLength(line, (size_t)len);
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
        const char *t = cJSON_IsString(type) ? type->valuestring : "";
        if (!o || !t[0]) {
            snprintf(err, errlen, "%s:%zu: not an export line (JSON object with \"type\")", path,
                     lineno);
            rc = BD_ERR_INVALID;
        } else if (strcmp(t, "meta") == 0) {
            const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "dim");
            if (!cJSON_IsNumber(d) || d->valuedouble != (double)c->dim) {
                snprintf(err, errlen,
                         "%s:%zu: export has dim %g, the router has dim=%d (set router.dim "
                         "in --config)",
                         path, lineno, cJSON_IsNumber(d) ? d->valuedouble : -1.0, c->dim);
                rc = BD_ERR_INVALID;
            }
            const cJSON *tw = cJSON_GetObjectItemCaseSensitive(o, "text_weight");
            if (rc == BD_OK && tw) /* absent in exports of an older banditd: unknown */
                rc = xw_check_text_weight(c, tw, path, lineno, err, errlen);
            have_meta = 1;
        } else if (!have_meta) {
            snprintf(err, errlen, "%s:%zu: no meta line first: not a banditd export", path, lineno);
            rc = BD_ERR_INVALID;
        } else if (strcmp(t, "decision") == 0) {
            c->xw.decisions++;
        } else if (strcmp(t, "feedback") == 0) {
            const cJSON *arm = cJSON_GetObjectItemCaseSensitive(o, "arm");
            const cJSON *rw = cJSON_GetObjectItemCaseSensitive(o, "reward");
            const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, "x");
            if (!cJSON_IsString(arm) || !cJSON_IsNumber(rw) || !isfinite(rw->valuedouble) ||
                !cJSON_IsArray(x) || cJSON_GetArraySize(x) != c->dim) {
                snprintf(err, errlen, "%s:%zu: feedback line without arm, reward or x[%d]", path,
                         lineno, c->dim);
                rc = BD_ERR_INVALID;
            } else {
                int a = xw_model(c, c->o->warmup_map, arm->valuestring);
                if (a < 0)
                    c->xw.skipped++;
                else if ((rc = xw_push(&c->xw, c->dim, a, rw->valuedouble, x)) != BD_OK)
                    snprintf(err, errlen, "%s:%zu: %s", path, lineno,
                             rc == BD_ERR_NOMEM ? "out of memory" : "x: not finite numbers");
            }
        } /* other types: ignored (forward compatible) */
        cJSON_Delete(o);
    }
    if (rc == BD_OK && ferror(f)) {
        snprintf(err, errlen, "%s: read error", path);
        rc = BD_ERR_IO;
    }
    if (rc == BD_OK && !have_meta) {
        snprintf(err, errlen, "%s: empty or not a banditd export (no meta line)", path);
        rc = BD_ERR_INVALID;
    }
    free(line);
    fclose(f);
    return rc;
}

struct job_queue {
    const struct ctx *c;
    struct res *rres, *nres; /* per point */
    const struct pref_weights *ws;
    int n_points;
    int next;
    pthread_mutex_t mu;
};

static void run_point(const struct ctx *c, const struct pref_weights *w, struct res *rr,
                      struct res *nr)
{
    memset(rr, 0, sizeof *rr);
    memset(nr, 0, sizeof *nr);
    rr->w = nr->w = *w;
    router *r = router_create(c->cfg);
    if (!r) {
        rr->rc = nr->rc = BD_ERR_NOMEM;
        return;
    }
    struct nc nc;
    memset(&nc, 0, sizeof nc);
    nc.A = c->A;
    nc.alpha = c->cfg->router.alpha;
    nc.pin = c->pin;
    nc.pout = c->pout;
    int rc = BD_OK;
    /* The export's rewards, in their order, as the daemon applied them. The
     * non-contextual baseline gets the same rewards (an export has no token
     * counts or latencies, so its cost/latency estimates stay at the prior). */
    for (size_t i = 0; rc == BD_OK && i < c->xw.n; i++) {
        rc = router_feedback(r, c->xw.arm[i], c->xw.X + i * (size_t)c->dim, c->xw.reward[i]);
        nc.qsum[c->xw.arm[i]] += c->xw.reward[i];
        nc.n[c->xw.arm[i]] += 1.0;
    }
    if (rc == BD_OK && c->warm.n)
        rc = run_rows(c, r, NULL, &c->warm, w, c->o->warm_all, NULL);
    if (rc == BD_OK)
        rc = run_rows(c, r, NULL, &c->meas, w, 0, rr);
    rr->rc = rc;
    router_destroy(r);
    rc = BD_OK;
    if (c->warm.n)
        rc = run_rows(c, NULL, &nc, &c->warm, w, c->o->warm_all, NULL);
    if (rc == BD_OK)
        rc = run_rows(c, NULL, &nc, &c->meas, w, 0, nr);
    nr->rc = rc;
}

static void *worker(void *arg)
{
    struct job_queue *q = arg;
    for (;;) {
        pthread_mutex_lock(&q->mu);
        int k = q->next++;
        pthread_mutex_unlock(&q->mu);
        if (k >= q->n_points)
            return NULL;
        run_point(q->c, &q->ws[k], &q->rres[k], &q->nres[k]);
    }
}

/* ---- baselines --------------------------------------------------------------------------- */

struct base {
    double q, cost, lat; /* means */
};

struct baselines {
    struct base arm[MAX_ARMS];
    struct base oracle;
    int strong, cheapest;
    /* per source: counts, always-strong/cheapest/oracle sums */
    size_t src_n[MAX_SOURCES];
    struct base src_strong[MAX_SOURCES], src_cheap[MAX_SOURCES], src_oracle[MAX_SOURCES];
};

static double row_latency(const struct ctx *c, int a, long ct)
{
    return c->lat[a].ttft_ms + (double)ct / c->lat[a].tokens_per_s * 1000.0;
}

static void compute_baselines(const struct ctx *c, struct baselines *b)
{
    size_t A = (size_t)c->A, n = c->meas.n;
    const struct rowset *s = &c->meas;
    memset(b, 0, sizeof *b);
    double sq[MAX_ARMS] = {0}, sc[MAX_ARMS] = {0}, sl[MAX_ARMS] = {0};
    double oq = 0, oc = 0, ol = 0;
    for (size_t i = 0; i < n; i++) {
        size_t best = 0;
        for (size_t a = 0; a < A; a++) {
            sq[a] += s->q[i * A + a];
            sc[a] += s->cost[i * A + a];
            sl[a] += row_latency(c, (int)a, s->ct[i * A + a]);
            double qa = s->q[i * A + a], qb = s->q[i * A + best];
            if (qa > qb || (qa == qb && s->cost[i * A + a] < s->cost[i * A + best]))
                best = a;
        }
        oq += s->q[i * A + best];
        oc += s->cost[i * A + best];
        ol += row_latency(c, (int)best, s->ct[i * A + best]);
    }
    double dn = n ? (double)n : 1.0;
    for (size_t a = 0; a < A; a++) {
        b->arm[a].q = sq[a] / dn;
        b->arm[a].cost = sc[a] / dn;
        b->arm[a].lat = sl[a] / dn;
        if (b->arm[a].q > b->arm[b->strong].q)
            b->strong = (int)a;
        if (b->arm[a].cost < b->arm[b->cheapest].cost)
            b->cheapest = (int)a;
    }
    b->oracle.q = oq / dn;
    b->oracle.cost = oc / dn;
    b->oracle.lat = ol / dn;
    /* per source */
    for (size_t i = 0; i < n; i++) {
        int si = s->src[i];
        size_t st = (size_t)b->strong, ch = (size_t)b->cheapest, best = 0;
        for (size_t a = 0; a < A; a++) {
            double qa = s->q[i * A + a], qb = s->q[i * A + best];
            if (qa > qb || (qa == qb && s->cost[i * A + a] < s->cost[i * A + best]))
                best = a;
        }
        b->src_n[si]++;
        b->src_strong[si].q += s->q[i * A + st];
        b->src_strong[si].cost += s->cost[i * A + st];
        b->src_cheap[si].q += s->q[i * A + ch];
        b->src_cheap[si].cost += s->cost[i * A + ch];
        b->src_oracle[si].q += s->q[i * A + best];
        b->src_oracle[si].cost += s->cost[i * A + best];
    }
}

/* ---- reporting --------------------------------------------------------------------------- */

struct derived {
    double q, cost, lat, retention, saving, strong_share, pgr;
};

static struct derived derive(const struct res *r, const struct baselines *b)
{
    struct derived d;
    double n = r->n ? (double)r->n : 1.0;
    const struct base *S = &b->arm[b->strong], *W = &b->arm[b->cheapest];
    d.q = r->q / n;
    d.cost = r->cost / n;
    d.lat = r->lat / n;
    d.retention = S->q > 0 ? d.q / S->q : NAN;
    d.saving = S->cost > 0 ? 1.0 - d.cost / S->cost : NAN;
    d.strong_share = (double)r->pulls[b->strong] / n;
    d.pgr = S->q != W->q ? (d.q - W->q) / (S->q - W->q) : NAN;
    return d;
}

static struct base random_mix(const struct baselines *b, double share)
{
    const struct base *S = &b->arm[b->strong], *W = &b->arm[b->cheapest];
    struct base m;
    m.q = share * S->q + (1 - share) * W->q;
    m.cost = share * S->cost + (1 - share) * W->cost;
    m.lat = share * S->lat + (1 - share) * W->lat;
    return m;
}

static cJSON *base_json(const struct base *x)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "mean_quality", x->q);
    cJSON_AddNumberToObject(o, "mean_cost_usd", x->cost);
    cJSON_AddNumberToObject(o, "mean_latency_ms", x->lat);
    return o;
}

/* The number shown for a point: the weight on quality, or the tolerance. */
static double pref_label(const struct pref_weights *w)
{
    return w->has_tolerance ? w->tolerance : w->quality;
}

static cJSON *point_json(const struct ctx *c, const struct res *r, const struct baselines *b)
{
    struct derived d = derive(r, b);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "preference", r->w.quality);
    if (r->w.has_tolerance)
        cJSON_AddNumberToObject(o, "tolerance", r->w.tolerance);
    if (r->w.latency > 0)
        cJSON_AddNumberToObject(o, "latency_weight", r->w.latency);
    cJSON_AddNumberToObject(o, "rows", (double)r->n);
    cJSON_AddNumberToObject(o, "mean_quality", d.q);
    cJSON_AddNumberToObject(o, "mean_cost_usd", d.cost);
    cJSON_AddNumberToObject(o, "total_cost_usd", r->cost);
    cJSON_AddNumberToObject(o, "quality_retention", d.retention);
    cJSON_AddNumberToObject(o, "cost_saving", d.saving);
    cJSON_AddNumberToObject(o, "strong_share", d.strong_share);
    cJSON_AddNumberToObject(o, "pgr", d.pgr);
    cJSON_AddNumberToObject(o, "mean_latency_ms", d.lat);
    cJSON *sh = cJSON_AddObjectToObject(o, "arm_share");
    for (int a = 0; a < c->A; a++)
        cJSON_AddNumberToObject(sh, c->names[a], r->n ? (double)r->pulls[a] / (double)r->n : 0);
    return o;
}

static void curve_points(const struct res *rs, int n, const struct baselines *b,
                         struct replay_curve_point *cp)
{
    for (int k = 0; k < n; k++) {
        struct derived d = derive(&rs[k], b);
        cp[k].strong_share = d.strong_share;
        cp[k].pgr = d.pgr;
        cp[k].retention = d.retention;
        cp[k].saving = d.saving;
    }
}

struct summary {
    double apgr, cpt50, cpt80, s95, s97;
};

/* Point k restricted to source si: its strong share, and its PGR against the
 * source's always-strong and always-cheapest means (NAN when they tie). */
static struct replay_curve_point source_point(const struct res *r, int si,
                                              const struct baselines *b)
{
    struct replay_curve_point p = {0};
    double sn = b->src_n[si] ? (double)b->src_n[si] : 1.0;
    double qs = b->src_strong[si].q / sn, qw = b->src_cheap[si].q / sn;
    p.strong_share = (double)r->src_pulls[si][b->strong] / sn;
    p.pgr = qs != qw ? (r->src_q[si] / sn - qw) / (qs - qw) : NAN;
    return p;
}

/* The curve metrics over the sweep: of the whole measured set (si < 0), or
 * of source si's own curve (source_point; APGR and CPT only). NAN where the
 * strong and cheapest means tie. */
static struct summary summarise(const struct res *rs, int n, const struct baselines *b, int si)
{
    struct summary s = {NAN, NAN, NAN, NAN, NAN};
    struct replay_curve_point *cp = calloc((size_t)n, sizeof *cp);
    if (!cp)
        return s;
    if (si < 0) {
        curve_points(rs, n, b, cp);
        s.s95 = replay_saving_at(cp, (size_t)n, 0.95);
        s.s97 = replay_saving_at(cp, (size_t)n, 0.97);
    } else {
        for (int k = 0; k < n; k++)
            cp[k] = source_point(&rs[k], si, b);
    }
    if (isfinite(cp[0].pgr)) {
        s.apgr = replay_apgr(cp, (size_t)n);
        s.cpt50 = replay_cpt(cp, (size_t)n, 0.5);
        s.cpt80 = replay_cpt(cp, (size_t)n, 0.8);
    }
    free(cp);
    return s;
}

static void add_summary(cJSON *o, const struct summary *s, int sweep)
{
    if (sweep) {
        cJSON_AddNumberToObject(o, "apgr", s->apgr);
        cJSON_AddNumberToObject(o, "cpt50", s->cpt50);
        cJSON_AddNumberToObject(o, "cpt80", s->cpt80);
    }
    cJSON_AddNumberToObject(o, "saving_at_95", s->s95);
    cJSON_AddNumberToObject(o, "saving_at_97", s->s97);
}

/* The sweep point that the random and non-contextual baselines are reported
 * at: the router's best point with retention >= 0.97 (by saving), else the
 * one with the highest retention. */
static int reference_point(const struct res *rs, int n, const struct baselines *b)
{
    int best = -1, top = 0;
    for (int k = 0; k < n; k++) {
        struct derived d = derive(&rs[k], b), dt = derive(&rs[top], b);
        if (d.retention > dt.retention)
            top = k;
        if (d.retention >= 0.97 && (best < 0 || d.saving > derive(&rs[best], b).saving))
            best = k;
    }
    return best >= 0 ? best : top;
}

static cJSON *report_json(const struct ctx *c, const struct res *rr, const struct res *nr, int n,
                          const struct baselines *b)
{
    int sweep = c->o->sweep > 0;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "data", c->o->data);
    if (c->o->warmup) {
        cJSON_AddStringToObject(root, "warmup", c->o->warmup);
        cJSON_AddNumberToObject(root, "warmup_rows", (double)c->warm.n);
        cJSON_AddStringToObject(root, "warmup_feedback", c->o->warm_all ? "all" : "chosen");
    }
    if (c->o->warmup_export) {
        cJSON_AddStringToObject(root, "warmup_export", c->o->warmup_export);
        cJSON_AddNumberToObject(root, "warmup_export_rows", (double)c->xw.n);
        cJSON_AddNumberToObject(root, "warmup_export_skipped", (double)c->xw.skipped);
    }
    cJSON_AddNumberToObject(root, "seed", (double)c->o->seed);
    cJSON_AddNumberToObject(root, "rows", (double)c->meas.n);
    cJSON_AddNumberToObject(root, "skipped_rows", (double)c->meas.skipped);
    cJSON *models = cJSON_AddArrayToObject(root, "models");
    for (int a = 0; a < c->A; a++)
        cJSON_AddItemToArray(models, cJSON_CreateString(c->names[a]));
    cJSON_AddStringToObject(root, "strong", c->names[b->strong]);
    cJSON_AddStringToObject(root, "cheapest", c->names[b->cheapest]);
    cJSON *rj = cJSON_AddObjectToObject(root, "router");
    cJSON_AddStringToObject(
        rj, "policy", c->cfg->router.policy == CONFIG_POLICY_THOMPSON ? "thompson" : "linucb");
    cJSON_AddNumberToObject(rj, "alpha", c->cfg->router.alpha);
    cJSON_AddNumberToObject(rj, "lambda", c->cfg->router.lambda);
    cJSON_AddNumberToObject(rj, "mu0", c->cfg->router.mu0);
    cJSON_AddNumberToObject(rj, "dim", c->cfg->router.dim);
    cJSON_AddStringToObject(rj, "prompt_tokens", c->o->ptok_logged ? "logged" : "estimate");
    cJSON *pts = cJSON_AddArrayToObject(root, "points");
    for (int k = 0; k < n; k++) {
        cJSON *p = point_json(c, &rr[k], b);
        struct derived d = derive(&rr[k], b);
        struct base rm = random_mix(b, d.strong_share);
        cJSON_AddItemToObject(p, "random", base_json(&rm));
        cJSON_AddItemToObject(p, "non_contextual", point_json(c, &nr[k], b));
        cJSON_AddItemToArray(pts, p);
    }
    int ref = reference_point(rr, n, b);
    cJSON *bl = cJSON_AddObjectToObject(root, "baselines");
    cJSON_AddItemToObject(bl, "always_strong", base_json(&b->arm[b->strong]));
    cJSON_AddItemToObject(bl, "always_cheapest", base_json(&b->arm[b->cheapest]));
    cJSON_AddItemToObject(bl, "oracle", base_json(&b->oracle));
    struct derived dref = derive(&rr[ref], b);
    struct base rm = random_mix(b, dref.strong_share);
    cJSON *ro = base_json(&rm);
    cJSON_AddNumberToObject(ro, "strong_share", dref.strong_share);
    cJSON_AddItemToObject(bl, "random", ro);
    struct derived dn = derive(&nr[ref], b);
    struct base nb = {dn.q, dn.cost, dn.lat};
    cJSON *no = base_json(&nb);
    cJSON_AddNumberToObject(no, "preference", nr[ref].w.quality);
    cJSON_AddNumberToObject(no, "quality_retention", dn.retention);
    cJSON_AddNumberToObject(no, "cost_saving", dn.saving);
    struct summary ns = summarise(nr, n, b, -1);
    add_summary(no, &ns, sweep);
    cJSON_AddItemToObject(bl, "non_contextual", no);
    cJSON *per = cJSON_AddObjectToObject(bl, "per_model");
    for (int a = 0; a < c->A; a++)
        cJSON_AddItemToObject(per, c->names[a], base_json(&b->arm[a]));
    struct summary s = summarise(rr, n, b, -1);
    add_summary(root, &s, sweep);
    cJSON *bs = cJSON_AddObjectToObject(root, "by_source");
    for (int si = 0; si < c->n_src; si++) {
        double sn = b->src_n[si] ? (double)b->src_n[si] : 1.0;
        cJSON *so = cJSON_AddObjectToObject(bs, c->src_names[si]);
        cJSON_AddNumberToObject(so, "rows", (double)b->src_n[si]);
        struct base x;
        x = (struct base){b->src_strong[si].q / sn, b->src_strong[si].cost / sn, 0};
        cJSON *t = cJSON_AddObjectToObject(so, "always_strong");
        cJSON_AddNumberToObject(t, "mean_quality", x.q);
        cJSON_AddNumberToObject(t, "mean_cost_usd", x.cost);
        x = (struct base){b->src_cheap[si].q / sn, b->src_cheap[si].cost / sn, 0};
        t = cJSON_AddObjectToObject(so, "always_cheapest");
        cJSON_AddNumberToObject(t, "mean_quality", x.q);
        cJSON_AddNumberToObject(t, "mean_cost_usd", x.cost);
        x = (struct base){b->src_oracle[si].q / sn, b->src_oracle[si].cost / sn, 0};
        t = cJSON_AddObjectToObject(so, "oracle");
        cJSON_AddNumberToObject(t, "mean_quality", x.q);
        cJSON_AddNumberToObject(t, "mean_cost_usd", x.cost);
        cJSON *sp = cJSON_AddArrayToObject(so, "points");
        for (int k = 0; k < n; k++) {
            cJSON *p = cJSON_CreateObject();
            struct replay_curve_point pt = source_point(&rr[k], si, b);
            cJSON_AddNumberToObject(p, "preference", rr[k].w.quality);
            if (rr[k].w.has_tolerance)
                cJSON_AddNumberToObject(p, "tolerance", rr[k].w.tolerance);
            cJSON_AddNumberToObject(p, "mean_quality", rr[k].src_q[si] / sn);
            cJSON_AddNumberToObject(p, "mean_cost_usd", rr[k].src_cost[si] / sn);
            cJSON_AddNumberToObject(p, "strong_share", pt.strong_share);
            cJSON_AddNumberToObject(p, "pgr", pt.pgr);
            cJSON_AddItemToArray(sp, p);
        }
        struct summary ss = summarise(rr, n, b, si);
        if (sweep && isfinite(ss.apgr)) {
            cJSON_AddNumberToObject(so, "apgr", ss.apgr);
            cJSON_AddNumberToObject(so, "cpt50", ss.cpt50);
            cJSON_AddNumberToObject(so, "cpt80", ss.cpt80);
        }
    }
    return root;
}

static void report_table(FILE *f, const struct ctx *c, const struct res *rr, const struct res *nr,
                         int n, const struct baselines *b)
{
    int sweep = c->o->sweep > 0;
    fprintf(f, "replay: %s (%zu rows, %zu skipped), seed %llu%s%s%s\n", c->o->data, c->meas.n,
            c->meas.skipped, (unsigned long long)c->o->seed, c->o->warmup ? ", warm-up " : "",
            c->o->warmup ? c->o->warmup : ", cold start",
            c->o->warmup && c->o->warm_all ? " (every arm's outcome)" : "");
    if (c->o->warmup_export)
        fprintf(f, "warm start: %zu feedback rows of %s (%zu skipped)\n", c->xw.n,
                c->o->warmup_export, c->xw.skipped);
    fprintf(f, "router: %s alpha=%g lambda=%g mu0=%g dim=%d\n",
            c->cfg->router.policy == CONFIG_POLICY_THOMPSON ? "thompson" : "linucb",
            c->cfg->router.alpha, c->cfg->router.lambda, c->cfg->router.mu0, c->cfg->router.dim);
    fprintf(f, "strong = %s, cheapest = %s\n\n", c->names[b->strong], c->names[b->cheapest]);
    fprintf(f, "%-24s %9s %12s %11s\n", "baseline", "quality", "cost/req $", "latency ms");
    for (int a = 0; a < c->A; a++) {
        char label[64];
        snprintf(label, sizeof label, "always %.17s", c->names[a]);
        fprintf(f, "%-24s %9.4f %12.6f %11.0f\n", label, b->arm[a].q, b->arm[a].cost,
                b->arm[a].lat);
    }
    fprintf(f, "%-24s %9.4f %12.6f %11.0f\n\n", "oracle", b->oracle.q, b->oracle.cost,
            b->oracle.lat);
    fprintf(f, "%6s %9s %9s %12s %8s %8s %8s %9s | %9s %9s %8s | %9s\n", "pref", "quality",
            "retain", "cost/req $", "saving", "strong", "PGR", "lat ms", "nc qual", "nc retain",
            "nc save", "rand qual");
    for (int k = 0; k < n; k++) {
        struct derived d = derive(&rr[k], b), e = derive(&nr[k], b);
        struct base rm = random_mix(b, d.strong_share);
        fprintf(f,
                "%6.3f %9.4f %8.1f%% %12.6f %7.1f%% %7.1f%% %8.3f %9.0f | %9.4f %8.1f%% %7.1f%% | "
                "%9.4f\n",
                pref_label(&rr[k].w), d.q, 100 * d.retention, d.cost, 100 * d.saving,
                100 * d.strong_share, d.pgr, d.lat, e.q, 100 * e.retention, 100 * e.saving, rm.q);
    }
    struct summary s = summarise(rr, n, b, -1), ns = summarise(nr, n, b, -1);
    fprintf(f, "\n%-16s %10s %10s\n", "", "router", "non-ctx");
    if (sweep) {
        fprintf(f, "%-16s %10.4f %10.4f\n", "APGR", s.apgr, ns.apgr);
        fprintf(f, "%-16s %10.4f %10.4f\n", "CPT(50%)", s.cpt50, ns.cpt50);
        fprintf(f, "%-16s %10.4f %10.4f\n", "CPT(80%)", s.cpt80, ns.cpt80);
    }
    fprintf(f, "%-16s %9.1f%% %9.1f%%\n", "saving @ >=95%", 100 * s.s95, 100 * ns.s95);
    fprintf(f, "%-16s %9.1f%% %9.1f%%\n", "saving @ >=97%", 100 * s.s97, 100 * ns.s97);
    fprintf(f, "\nby source (router mean quality per point; always-strong / cheapest / oracle):\n");
    for (int si = 0; si < c->n_src; si++) {
        double sn = b->src_n[si] ? (double)b->src_n[si] : 1.0;
        fprintf(f, "  %-14s %6zu rows  strong %.4f  cheapest %.4f  oracle %.4f  router:",
                c->src_names[si], b->src_n[si], b->src_strong[si].q / sn, b->src_cheap[si].q / sn,
                b->src_oracle[si].q / sn);
        for (int k = 0; k < n; k++)
            fprintf(f, " %.3f", rr[k].src_q[si] / sn);
        fprintf(f, "\n  %-14s strong share:", "");
        for (int k = 0; k < n; k++)
            fprintf(f, " %.3f", source_point(&rr[k], si, b).strong_share);
        struct summary ss = summarise(rr, n, b, si);
        if (sweep && isfinite(ss.apgr))
            fprintf(f, "  (APGR %.4f, CPT50 %.4f, CPT80 %.4f)", ss.apgr, ss.cpt50, ss.cpt80);
        fprintf(f, "\n");
    }
}

static void report_csv(FILE *f, const struct ctx *c, const struct res *rr, const struct res *nr,
                       int n, const struct baselines *b)
{
    fprintf(f, "preference,mean_quality,mean_cost_usd,quality_retention,cost_saving,strong_share,"
               "pgr,mean_latency_ms");
    for (int a = 0; a < c->A; a++)
        fprintf(f, ",share_%s", c->names[a]);
    fprintf(f, ",nc_mean_quality,nc_mean_cost_usd,nc_quality_retention,nc_cost_saving,"
               "random_mean_quality,random_mean_cost_usd\n");
    for (int k = 0; k < n; k++) {
        struct derived d = derive(&rr[k], b), e = derive(&nr[k], b);
        struct base rm = random_mix(b, d.strong_share);
        fprintf(f, "%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g", pref_label(&rr[k].w), d.q, d.cost,
                d.retention, d.saving, d.strong_share, d.pgr, d.lat);
        for (int a = 0; a < c->A; a++)
            fprintf(f, ",%.6g", rr[k].n ? (double)rr[k].pulls[a] / (double)rr[k].n : 0.0);
        fprintf(f, ",%.6g,%.6g,%.6g,%.6g,%.6g,%.6g\n", e.q, e.cost, e.retention, e.saving, rm.q,
                rm.cost);
    }
}

/* gnuplot script with inline data blocks; then run gnuplot on it. */
static int write_plot(const struct ctx *c, const struct res *rr, const struct res *nr, int n,
                      const struct baselines *b)
{
    const char *svg = c->o->plot;
    char gp[4096];
    if (snprintf(gp, sizeof gp, "%s.gp", svg) >= (int)sizeof gp) {
        fprintf(stderr, "replay: --plot: path too long\n");
        return -1;
    }
    FILE *f = fopen(gp, "w");
    if (!f) {
        fprintf(stderr, "replay: %s: %s\n", gp, strerror(errno));
        return -1;
    }
    fprintf(f, "# written by banditd replay; run: gnuplot %s\n", gp);
    fprintf(f, "$router << EOD\n");
    for (int k = 0; k < n; k++) {
        struct derived d = derive(&rr[k], b);
        fprintf(f, "%.9g %.9g %.4g\n", d.cost, d.q, rr[k].w.quality);
    }
    fprintf(f, "EOD\n$noncontextual << EOD\n");
    for (int k = 0; k < n; k++) {
        struct derived d = derive(&nr[k], b);
        fprintf(f, "%.9g %.9g %.4g\n", d.cost, d.q, nr[k].w.quality);
    }
    fprintf(f, "EOD\n$models << EOD\n");
    for (int a = 0; a < c->A; a++)
        fprintf(f, "%.9g %.9g \"%s\"\n", b->arm[a].cost, b->arm[a].q, c->names[a]);
    fprintf(f, "EOD\n$oracle << EOD\n%.9g %.9g\nEOD\n", b->oracle.cost, b->oracle.q);
    fprintf(f, "$random << EOD\n%.9g %.9g\n%.9g %.9g\nEOD\n", b->arm[b->cheapest].cost,
            b->arm[b->cheapest].q, b->arm[b->strong].cost, b->arm[b->strong].q);
    fprintf(f, "set terminal svg size 900,600 dynamic background rgb 'white'\n");
    fprintf(f, "set output '");
    for (const char *p = svg; *p; p++)
        fputs(*p == '\'' ? "''" : (char[]){*p, 0}, f);
    fprintf(f, "'\n");
    fprintf(f, "set title 'banditd replay: cost vs quality (%zu rows, seed %llu, %s)'\n", c->meas.n,
            (unsigned long long)c->o->seed, c->o->warmup ? "warm start" : "cold start");
    fprintf(f, "set xlabel 'mean cost per request (USD)'\nset ylabel 'mean quality'\n");
    fprintf(f, "set key bottom right\nset grid\n");
    fprintf(f,
            "plot $router using 1:2 with linespoints lw 2 pt 7 title 'banditd (LinUCB) sweep', \\\n"
            "     $noncontextual using 1:2 with linespoints lw 1 pt 6 title 'non-contextual "
            "bandit', \\\n"
            "     $random using 1:2 with lines dt 2 title 'random mix', \\\n"
            "     $models using 1:2 with points pt 5 ps 1.5 title 'always one model', \\\n"
            "     $models using 1:2:3 with labels offset 0,1 notitle, \\\n"
            "     $oracle using 1:2 with points pt 9 ps 2 title 'per-prompt oracle'\n");
    if (fclose(f) != 0) {
        fprintf(stderr, "replay: %s: write failed\n", gp);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "replay: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        execlp("gnuplot", "gnuplot", gp, (char *)NULL);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "replay: gnuplot %s failed (exit %d)\n", gp,
                WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        return -1;
    }
    return 0;
}

/* ---- main -------------------------------------------------------------------------------- */

static int default_prices_path(const char *data, char *out, size_t len)
{
    const char *slash = strrchr(data, '/');
    size_t dir = slash ? (size_t)(slash - data) + 1 : 0;
    return snprintf(out, len, "%.*sprices.json", (int)dir, data) < (int)len ? 0 : -1;
}

int replay_main(int argc, char **argv)
{
    struct opts o;
    int prc = parse_opts(argc, argv, &o);
    if (prc > 0)
        return 0;
    if (prc < 0) {
        fprintf(stderr, "replay: see `banditd replay --help`\n");
        return 2;
    }
    openblas_set_num_threads(1); /* parallelism comes from the sweep points */
    char err[512];
    int status = 1, rc;
    dataset *ds = NULL, *wds = NULL;
    struct ctx c;
    memset(&c, 0, sizeof c);
    c.o = &o;
    struct res *rr = NULL, *nr = NULL;
    struct pref_weights *ws = NULL;
    FILE *out = stdout;

    if ((rc = dataset_load(o.data, 0, &ds, err, sizeof err)) != BD_OK) {
        fprintf(stderr, "replay: %s\n", err);
        goto done;
    }
    char ppath[4096];
    const char *prices = o.prices;
    if (!prices && default_prices_path(o.data, ppath, sizeof ppath) == 0 &&
        access(ppath, R_OK) == 0)
        prices = ppath;
    if (prices && (rc = dataset_load_prices(ds, prices, err, sizeof err)) != BD_OK) {
        fprintf(stderr, "replay: %s\n", err);
        goto done;
    }
    if (o.config) {
        if (config_load_file(o.config, &c.cfg, err, sizeof err) != 0) {
            fprintf(stderr, "replay: %s\n", err);
            goto done;
        }
    } else if (!(c.cfg = config_defaults())) {
        fprintf(stderr, "replay: out of memory\n");
        goto done;
    }
    c.A = dataset_n_models(ds);
    if (c.A > CONFIG_MAX_ARMS) {
        fprintf(stderr, "replay: %d models, at most %d arms\n", c.A, CONFIG_MAX_ARMS);
        goto done;
    }
    c.dim = c.cfg->router.dim;
    c.cfg->n_arms = (size_t)c.A;
    for (int a = 0; a < c.A; a++) {
        struct config_arm *ca = &c.cfg->arms[a];
        memset(ca, 0, sizeof *ca);
        c.names[a] = dataset_model(ds, a);
        snprintf(ca->name, sizeof ca->name, "%s", c.names[a]);
        snprintf(ca->model, sizeof ca->model, "%s", c.names[a]);
        if (dataset_price(ds, a, &c.pin[a], &c.pout[a]) == 1)
            fprintf(stderr, "replay: no price for %s: using %.4g $/Mtok derived from the data\n",
                    c.names[a], c.pin[a]);
        ca->price_in_per_mtok = c.pin[a];
        ca->price_out_per_mtok = c.pout[a];
        ca->timeout_ms = 60000;
        c.lat[a] = dataset_latency_of(c.names[a]);
    }
    int map[MAX_ARMS];
    for (int a = 0; a < c.A; a++)
        map[a] = a;
    if ((rc = rowset_build(&c, ds, map, o.seed, 1, &c.meas)) != BD_OK) {
        fprintf(stderr, "replay: preparing rows: %s\n", bd_strerror(rc));
        goto done;
    }
    if (c.meas.n == 0) {
        fprintf(stderr, "replay: %s: no row has an outcome for every model\n", o.data);
        goto done;
    }
    if (o.warmup) {
        if ((rc = dataset_load(o.warmup, 0, &wds, err, sizeof err)) != BD_OK) {
            fprintf(stderr, "replay: %s\n", err);
            goto done;
        }
        int wmap[MAX_ARMS];
        for (int a = 0; a < c.A; a++) {
            wmap[a] = dataset_model_index(wds, c.names[a]);
            if (wmap[a] < 0) {
                fprintf(stderr, "replay: %s: no outcomes for model %s\n", o.warmup, c.names[a]);
                goto done;
            }
        }
        if ((rc = rowset_build(&c, wds, wmap, o.seed ^ 0x9e3779b97f4a7c15ULL, 0, &c.warm)) !=
            BD_OK) {
            fprintf(stderr, "replay: preparing warm-up rows: %s\n", bd_strerror(rc));
            goto done;
        }
    }

    if (o.warmup_export) {
        if ((rc = xw_load(&c, o.warmup_export, err, sizeof err)) != BD_OK) {
            fprintf(stderr, "replay: --warmup-export: %s\n", err);
            goto done;
        }
        if (c.xw.n == 0 && c.xw.skipped > 0) {
            fprintf(stderr,
                    "replay: --warmup-export: none of the %zu feedback rows has an arm named "
                    "like a model of %s; map them with --warmup-map ARM=MODEL,...\n",
                    c.xw.skipped, o.data);
            goto done;
        }
        fprintf(stderr,
                "replay: warm start from %s: %zu feedback rows applied, %zu skipped (arm "
                "not mapped to a model: see --warmup-map)\n",
                o.warmup_export, c.xw.n, c.xw.skipped);
    }

    int n = o.sweep ? o.sweep : 1;
    ws = calloc((size_t)n, sizeof *ws);
    rr = calloc((size_t)n, sizeof *rr);
    nr = calloc((size_t)n, sizeof *nr);
    if (!ws || !rr || !nr) {
        fprintf(stderr, "replay: out of memory\n");
        goto done;
    }
    if (o.sweep) {
        for (int k = 0; k < n; k++) {
            double t = (double)k / (double)(n - 1);
            ws[k] = o.sweep_tol ? pref_from_tolerance(TOL_SWEEP_MAX * (1 - t) * (1 - t))
                                : pref_from_scalar(t);
        }
    } else if (o.have_pref) {
        if (pref_parse(o.pref, strlen(o.pref), c.cfg->router.profiles, c.cfg->router.n_profiles,
                       &ws[0], err, sizeof err) != 0) {
            fprintf(stderr, "replay: --preference: %s\n", err);
            goto done;
        }
    } else {
        const char *dp = c.cfg->router.default_preference;
        if (pref_parse(dp, strlen(dp), c.cfg->router.profiles, c.cfg->router.n_profiles, &ws[0],
                       err, sizeof err) != 0) {
            fprintf(stderr, "replay: default preference: %s\n", err);
            goto done;
        }
    }
    struct baselines b;
    compute_baselines(&c, &b);

    struct job_queue q = {.c = &c, .rres = rr, .nres = nr, .ws = ws, .n_points = n};
    pthread_mutex_init(&q.mu, NULL);
    int nth = o.jobs < n ? o.jobs : n;
    pthread_t th[MAX_JOBS];
    int started = 0;
    for (int t = 1; t < nth; t++) {
        if (pthread_create(&th[t], NULL, worker, &q) != 0)
            break;
        started++;
    }
    worker(&q);
    for (int t = 1; t <= started; t++)
        pthread_join(th[t], NULL);
    pthread_mutex_destroy(&q.mu);
    for (int k = 0; k < n; k++)
        if (rr[k].rc != BD_OK || nr[k].rc != BD_OK) {
            fprintf(stderr, "replay: preference %g: %s\n", ws[k].quality,
                    bd_strerror(rr[k].rc != BD_OK ? rr[k].rc : nr[k].rc));
            goto done;
        }

    if (o.out && !(out = fopen(o.out, "w"))) {
        fprintf(stderr, "replay: %s: %s\n", o.out, strerror(errno));
        out = stdout;
        goto done;
    }
    if (o.fmt == FMT_JSON) {
        cJSON *j = report_json(&c, rr, nr, n, &b);
        char *txt = j ? cJSON_Print(j) : NULL;
        cJSON_Delete(j);
        if (!txt) {
            fprintf(stderr, "replay: out of memory\n");
            goto done;
        }
        fprintf(out, "%s\n", txt);
        free(txt);
    } else if (o.fmt == FMT_CSV) {
        report_csv(out, &c, rr, nr, n, &b);
    } else {
        report_table(out, &c, rr, nr, n, &b);
    }
    if (fflush(out) != 0 || ferror(out)) {
        fprintf(stderr, "replay: write failed\n");
        goto done;
    }
    if (o.plot && write_plot(&c, rr, nr, n, &b) != 0)
        goto done;
    status = 0;
done:
    if (out != stdout)
        fclose(out);
    free(ws);
    free(rr);
    free(nr);
    rowset_free(&c.meas);
    rowset_free(&c.warm);
    free(c.xw.X);
    free(c.xw.arm);
    free(c.xw.reward);
    for (int i = 0; i < c.n_src; i++)
        free(c.src_names[i]);
    config_destroy(c.cfg);
    dataset_destroy(ds);
    dataset_destroy(wds);
    return status;
}
