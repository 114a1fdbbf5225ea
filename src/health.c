/* health — per-arm circuit breaker and in-flight admission (see health.h). */
#include "banditd/health.h"
#include "banditd/err.h"

#include <assert.h>
#include <stdlib.h>

struct arm_health {
    enum health_state state;
    int failures;       /* consecutive failures while closed */
    double opened_ms;   /* when the circuit last opened */
    int probe_inflight; /* half-open probe running */
    unsigned inflight;
    unsigned cap; /* 0 = unlimited */
    unsigned long opens;
};

struct health {
    int n;
    int threshold;
    double cooldown_ms;
    unsigned max_inflight;
    unsigned inflight;
    struct arm_health *arms;
};

health *health_create(int n_arms, const struct health_params *p)
{
    if (n_arms < 1 || !p || p->failure_threshold < 1 || p->cooldown_ms < 0)
        return NULL;
    health *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->arms = calloc((size_t)n_arms, sizeof *h->arms);
    if (!h->arms) {
        free(h);
        return NULL;
    }
    h->n = n_arms;
    h->threshold = p->failure_threshold;
    h->cooldown_ms = p->cooldown_ms;
    h->max_inflight = p->max_inflight;
    for (int i = 0; i < n_arms; i++)
        h->arms[i].cap = p->arm_caps ? p->arm_caps[i] : 0;
    return h;
}

void health_destroy(health *h)
{
    if (!h)
        return;
    free(h->arms);
    free(h);
}

static int admissible(const health *h, const struct arm_health *a, double now_ms)
{
    switch (a->state) {
    case HEALTH_CLOSED:
        return 1;
    case HEALTH_OPEN:
        return now_ms - a->opened_ms >= h->cooldown_ms;
    case HEALTH_HALF_OPEN:
        return 0; /* its probe is in flight */
    }
    return 0;
}

int health_candidates(const health *h, double now_ms, unsigned char *mask)
{
    int n = 0;
    for (int i = 0; i < h->n; i++) {
        mask[i] = (unsigned char)admissible(h, &h->arms[i], now_ms);
        n += mask[i];
    }
    return n;
}

int health_admit(health *h, int arm, double now_ms, int *probe)
{
    assert(arm >= 0 && arm < h->n && probe);
    struct arm_health *a = &h->arms[arm];
    *probe = 0;
    if (!admissible(h, a, now_ms))
        return BD_ERR_UPSTREAM;
    if ((h->max_inflight && h->inflight >= h->max_inflight) || (a->cap && a->inflight >= a->cap))
        return BD_ERR_BUSY;
    if (a->state == HEALTH_OPEN) {
        a->state = HEALTH_HALF_OPEN;
        a->probe_inflight = 1;
        *probe = 1;
    }
    a->inflight++;
    h->inflight++;
    return BD_OK;
}

static void open_circuit(struct arm_health *a, double now_ms)
{
    a->state = HEALTH_OPEN;
    a->opened_ms = now_ms;
    a->failures = 0;
    a->opens++;
}

void health_release(health *h, int arm, int probe, enum health_outcome outcome, double now_ms)
{
    assert(arm >= 0 && arm < h->n);
    struct arm_health *a = &h->arms[arm];
    assert(a->inflight > 0 && h->inflight > 0);
    a->inflight--;
    h->inflight--;
    if (probe) {
        assert(a->state == HEALTH_HALF_OPEN && a->probe_inflight);
        a->probe_inflight = 0;
        if (outcome == HEALTH_SUCCESS) {
            a->state = HEALTH_CLOSED;
            a->failures = 0;
        } else if (outcome == HEALTH_FAILURE) {
            open_circuit(a, now_ms);
        } else {
            /* Nothing learnt: open again with the cool-down already over. */
            a->state = HEALTH_OPEN;
            a->opened_ms = now_ms - h->cooldown_ms;
        }
        return;
    }
    if (a->state != HEALTH_CLOSED)
        return; /* a call admitted before the circuit opened: its result is stale */
    if (outcome == HEALTH_SUCCESS) {
        a->failures = 0;
    } else if (outcome == HEALTH_FAILURE) {
        if (++a->failures >= h->threshold)
            open_circuit(a, now_ms);
    }
}

enum health_state health_state_of(const health *h, int arm)
{
    assert(arm >= 0 && arm < h->n);
    return h->arms[arm].state;
}

int health_consecutive_failures(const health *h, int arm)
{
    assert(arm >= 0 && arm < h->n);
    return h->arms[arm].failures;
}

unsigned health_inflight(const health *h, int arm)
{
    if (arm < 0)
        return h->inflight;
    assert(arm < h->n);
    return h->arms[arm].inflight;
}

unsigned long health_opens(const health *h, int arm)
{
    assert(arm >= 0 && arm < h->n);
    return h->arms[arm].opens;
}

int health_ready(const health *h, double now_ms)
{
    for (int i = 0; i < h->n; i++) {
        const struct arm_health *a = &h->arms[i];
        if (a->state != HEALTH_OPEN || now_ms - a->opened_ms >= h->cooldown_ms)
            return 1;
    }
    return 0;
}

const char *health_state_name(enum health_state s)
{
    switch (s) {
    case HEALTH_CLOSED:
        return "closed";
    case HEALTH_OPEN:
        return "open";
    case HEALTH_HALF_OPEN:
        return "half_open";
    }
    return "unknown";
}
