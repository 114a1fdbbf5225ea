/* bench_decision — time of one routing decision (features_from_request on a
 * pre-parsed ~1 KB chat request + router_decide), of the features alone, and
 * of one feedback update (router_feedback), at d=256 with 2, 8 and 16 arms.
 * Also one forgetting (γ<1) update. Prints medians over batches.
 *
 * The "varied" lines rotate over VARIANTS requests made of the same words in
 * other orders: same length and vocabulary, different bytes. With one fixed
 * request the branch predictor learns the whole input after a few calls, so
 * data-dependent branches look free there; the varied lines are closer to
 * traffic, where every prompt is new.
 *
 *   build/bench/bench_decision            (make bench)
 */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "banditd/config.h"
#include "banditd/err.h"
#include "banditd/features.h"
#include "banditd/router.h"
#include "banditd/util.h"

#define DIM 256
#define BATCHES 31
#define VARIANTS 64

static const char *REQUEST =
    "{\"model\":\"auto\",\"max_tokens\":512,\"temperature\":0.2,\"messages\":["
    "{\"role\":\"system\",\"content\":\"You are a careful senior engineer. Answer concisely, "
    "show code when it helps, and state your assumptions.\"},"
    "{\"role\":\"user\",\"content\":\"I have a C service that parses JSON requests with cJSON "
    "and forwards them with libcurl. Under load (about 3000 requests per second on two cores) "
    "the p99 latency jumps from 4 ms to 80 ms. perf shows a lot of time in malloc and free, "
    "and in curl_easy_init. Here is the hot path:\\n```c\\nstatic int forward(const char *body, "
    "size_t len) {\\n    cJSON *j = cJSON_ParseWithLength(body, len);\\n    CURL *c = "
    "curl_easy_init();\\n    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);\\n    int rc = "
    "curl_easy_perform(c);\\n    curl_easy_cleanup(c);\\n    cJSON_Delete(j);\\n    return rc;\\n}"
    "\\n```\\nWhat are the top three changes you would make, in order, and roughly how much "
    "would each one buy? Should I switch to the multi interface, reuse handles in a pool, or "
    "both? Also, is 3000 req/s = 1.5k per core realistic for this design?\"},"
    "{\"role\":\"assistant\",\"content\":\"Reuse easy handles first; then move to curl_multi "
    "with an event loop.\"},"
    "{\"role\":\"user\",\"content\":\"Thanks. Can you sketch the pooled version and explain "
    "how connection reuse interacts with HTTP/2 multiplexing? Keep it under 40 lines.\"}]}";

/* Wall clock by default; BENCH_CLOCK=cpu times this thread's CPU only, which
 * leaves out preemption on a shared, loaded machine (not cache contention). */
static clockid_t bench_clock = CLOCK_MONOTONIC;

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(bench_clock, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return v[n / 2];
}

static struct config *make_config(int n_arms, double gamma)
{
    struct config *cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL)
        return NULL;
    cfg->n_arms = (size_t)n_arms;
    for (int i = 0; i < n_arms; i++) {
        snprintf(cfg->arms[i].name, sizeof(cfg->arms[i].name), "arm%d", i);
        cfg->arms[i].price_in_per_mtok = 0.2 + 0.7 * i;
        cfg->arms[i].price_out_per_mtok = 0.6 + 2.1 * i;
    }
    cfg->router.policy = CONFIG_POLICY_LINUCB;
    cfg->router.alpha = 0.1;
    cfg->router.lambda = 1.0;
    cfg->router.mu0 = 1.0;
    cfg->router.dim = DIM;
    cfg->router.forgetting = gamma;
    cfg->router.thompson_v = 0.1;
    cfg->router.seed = 1;
    cfg->router.refactor_every = 1000;
    return cfg;
}

/* Train each arm with some random feedback so that A⁻¹ is not diagonal. */
static void warm(router *r, struct util_rng *rng, int per_arm)
{
    double x[DIM];
    for (int a = 0; a < router_n_arms(r); a++)
        for (int t = 0; t < per_arm; t++) {
            char p[64];
            snprintf(p, sizeof(p), "prompt %llu about %llu",
                     (unsigned long long)(util_rng_next(rng) % 1000),
                     (unsigned long long)(util_rng_next(rng) % 50));
            features_from_prompt(p, x, DIM);
            router_feedback(r, a, x, util_rng_uniform(rng));
        }
}

/* Shuffle the space-separated words of s in place (Fisher–Yates over word
 * slots, rebuilt into out, which has room for strlen(s) + 1 bytes). */
static void shuffle_words(const char *s, char *out, struct util_rng *rng)
{
    enum { MAX_WORDS = 512 };
    const char *w[MAX_WORDS];
    size_t len[MAX_WORDS], n = 0;
    for (const char *p = s; *p != '\0' && n < MAX_WORDS;) {
        const char *e = strchr(p, ' ');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        w[n] = p;
        len[n++] = l;
        p += l + (e != NULL);
    }
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(util_rng_next(rng) % i);
        const char *tw = w[i - 1];
        size_t tl = len[i - 1];
        w[i - 1] = w[j];
        len[i - 1] = len[j];
        w[j] = tw;
        len[j] = tl;
    }
    char *o = out;
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            *o++ = ' ';
        memcpy(o, w[i], len[i]);
        o += len[i];
    }
    *o = '\0';
}

/* VARIANTS copies of req whose user turns have their words shuffled. */
static int make_variants(const cJSON *req, cJSON **out, struct util_rng *rng)
{
    for (int v = 0; v < VARIANTS; v++) {
        out[v] = cJSON_Duplicate(req, 1);
        if (out[v] == NULL)
            return -1;
        const cJSON *m;
        cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(out[v], "messages"))
        {
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
            cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
            if (!cJSON_IsString(role) || strcmp(role->valuestring, "user") != 0 ||
                !cJSON_IsString(content))
                continue;
            char *buf = malloc(strlen(content->valuestring) + 1);
            if (buf == NULL)
                return -1;
            shuffle_words(content->valuestring, buf, rng);
            int ok = cJSON_ReplaceItemInObjectCaseSensitive((cJSON *)m, "content",
                                                            cJSON_CreateString(buf));
            free(buf);
            if (!ok)
                return -1;
        }
    }
    return 0;
}

/* Median time of features_from_request over reqs[i % nreq]. */
static double time_features(cJSON *const *reqs, int nreq)
{
    double x[DIM], t[BATCHES];
    const int iters = 2000;
    for (int b = 0; b < BATCHES; b++) {
        double t0 = now_ns();
        for (int i = 0; i < iters; i++)
            features_from_request(reqs[i % nreq], x, DIM);
        t[b] = (now_ns() - t0) / iters;
    }
    return median(t, BATCHES);
}

/* Median time of features + router_decide over reqs[i % nreq]. */
static double time_decision(router *r, cJSON *const *reqs, int nreq)
{
    double x[DIM], t[BATCHES];
    struct router_decision d;
    struct pref_weights w = {.quality = 0.7, .cost = 0.3, .latency = 0.0};
    const int iters = 500;
    for (int b = 0; b < BATCHES; b++) {
        double t0 = now_ns();
        for (int i = 0; i < iters; i++) {
            features_from_request(reqs[i % nreq], x, DIM);
            if (router_decide(r, x, &w, 300, NULL, -1, &d) != 0)
                abort();
        }
        t[b] = (now_ns() - t0) / iters;
    }
    return median(t, BATCHES);
}

/* Median time of router_decide alone (the scoring) on the features of req. */
static double time_decide(router *r, const cJSON *req)
{
    double x[DIM], t[BATCHES];
    struct router_decision d;
    struct pref_weights w = {.quality = 0.7, .cost = 0.3, .latency = 0.0};
    features_from_request(req, x, DIM);
    const int iters = 500;
    for (int b = 0; b < BATCHES; b++) {
        double t0 = now_ns();
        for (int i = 0; i < iters; i++)
            if (router_decide(r, x, &w, 300, NULL, -1, &d) != 0)
                abort();
        t[b] = (now_ns() - t0) / iters;
    }
    return median(t, BATCHES);
}

/* How often the decisions since *r0 had to rescore arms more precisely. */
static void print_refines(const router *r, int n_arms, uint64_t calls,
                          const struct router_refine_stats *r0)
{
    struct router_refine_stats r1;
    router_refine_stats(r, &r1);
    double c = (double)calls;
    printf("refined %2d arms: fine %.2f%% of %llu decisions (%.3f arms each), exact %.2f%% "
           "(%.3f arms each)\n",
           n_arms, 100.0 * (double)(r1.fine_decisions - r0->fine_decisions) / c,
           (unsigned long long)calls, (double)(r1.fine_arms - r0->fine_arms) / c,
           100.0 * (double)(r1.exact_decisions - r0->exact_decisions) / c,
           (double)(r1.exact_arms - r0->exact_arms) / c);
}

static double time_feedback(router *r, const cJSON *req, int iters)
{
    double x[DIM], t[BATCHES];
    features_from_request(req, x, DIM);
    int nb = iters >= 100 ? BATCHES : 5;
    for (int b = 0; b < nb; b++) {
        double t0 = now_ns();
        for (int i = 0; i < iters; i++)
            router_feedback(r, i % router_n_arms(r), x, (i & 1) ? 1.0 : 0.0);
        t[b] = (now_ns() - t0) / iters;
    }
    return median(t, nb);
}

int main(void)
{
    openblas_set_num_threads(1);
    cJSON *req = cJSON_Parse(REQUEST);
    if (req == NULL)
        return 1;
    struct util_rng rng;
    util_rng_seed(&rng, 42);
    const char *ck = getenv("BENCH_CLOCK");
    if (ck != NULL && strcmp(ck, "cpu") == 0)
        bench_clock = CLOCK_THREAD_CPUTIME_ID;
    printf("request: %zu bytes of JSON, d=%d, clock %s\n", strlen(REQUEST), DIM,
           bench_clock == CLOCK_MONOTONIC ? "wall (CLOCK_MONOTONIC)"
                                          : "thread CPU (BENCH_CLOCK=cpu)");
    cJSON *var[VARIANTS];
    struct util_rng vrng;
    util_rng_seed(&vrng, 7);
    if (make_variants(req, var, &vrng) != 0)
        return 1;
    double tf = time_features(&req, 1);
    printf("features_from_request        median %8.0f ns  %7.2f us\n", tf, tf / 1e3);
    double tv = time_features(var, VARIANTS);
    printf("features_from_request, varied  median %8.0f ns  %7.2f us\n", tv, tv / 1e3);
    const int arms[] = {2, 8, 16};
    for (size_t k = 0; k < sizeof(arms) / sizeof(arms[0]); k++) {
        struct config *cfg = make_config(arms[k], 1.0);
        router *r = cfg ? router_create(cfg) : NULL;
        if (r == NULL)
            return 1;
        warm(r, &rng, 200);
        struct router_refine_stats r0;
        router_refine_stats(r, &r0);
        double td = time_decision(r, &req, 1);
        printf("decision (features+decide) %2d arms  median %8.0f ns  %7.2f us\n", arms[k], td,
               td / 1e3);
        if (arms[k] == 8) {
            double tdv = time_decision(r, var, VARIANTS);
            printf("decision (features+decide)  8 arms, varied  median %8.0f ns  %7.2f us\n", tdv,
                   tdv / 1e3);
            print_refines(r, arms[k], 2 * 500 * BATCHES, &r0);
            double ts = time_decide(r, req);
            printf("router_decide alone  8 arms  median %8.0f ns  %7.2f us\n", ts, ts / 1e3);
            double tb = time_feedback(r, req, 200);
            printf("feedback (router_feedback, gamma=1)  median %8.0f ns  %7.2f us\n", tb,
                   tb / 1e3);
        }
        router_destroy(r);
        free(cfg);
    }
    struct config *cfg = make_config(2, 0.999);
    router *r = cfg ? router_create(cfg) : NULL;
    if (r == NULL)
        return 1;
    double tg = time_feedback(r, req, 20);
    printf("feedback (gamma=0.999, Cholesky per update)  median %8.0f ns  %7.2f us\n", tg,
           tg / 1e3);
    router_destroy(r);
    free(cfg);
    for (int v = 0; v < VARIANTS; v++)
        cJSON_Delete(var[v]);
    cJSON_Delete(req);
    return 0;
}
