/* health — per-arm health, circuit breaking and in-flight admission.
 *
 * Each arm has a circuit:
 *   CLOSED    normal; consecutive infrastructure failures are counted, and
 *             failure_threshold of them in a row open the circuit.
 *   OPEN      the arm is not a candidate until cooldown_ms have passed since
 *             it opened; then exactly one request is admitted as a probe and
 *             the arm becomes HALF_OPEN.
 *   HALF_OPEN one probe in flight, no other request admitted. The probe's
 *             success closes the circuit, its failure re-opens it (a new
 *             cool-down starts); a probe that ends neutrally (the client went
 *             away) returns the arm to OPEN with the cool-down already over,
 *             so the next request probes again.
 * Admission also enforces the in-flight caps: per arm (0 = unlimited) and
 * global (0 = unlimited). Every admitted call must be released exactly once.
 *
 * Time is passed in by the caller (monotonic ms), so the state machine is
 * testable with a fake clock. Single-threaded: owned by the event loop. */
#ifndef BANDITD_HEALTH_H
#define BANDITD_HEALTH_H
#include <stddef.h>

typedef struct health health;

enum health_state { HEALTH_CLOSED = 0, HEALTH_OPEN = 1, HEALTH_HALF_OPEN = 2 };

/* How an admitted call ended. */
enum health_outcome {
    HEALTH_SUCCESS = 0, /* the arm answered (any status that is not an infra failure) */
    HEALTH_FAILURE = 1, /* connect error, timeout, 5xx, 429, cut stream */
    HEALTH_NEUTRAL = 2, /* cancelled for reasons that say nothing about the arm */
};

struct health_params {
    int failure_threshold;    /* >= 1 */
    double cooldown_ms;       /* >= 0 */
    unsigned max_inflight;    /* global cap, 0 = unlimited */
    const unsigned *arm_caps; /* n_arms per-arm caps (0 = unlimited), or NULL */
};

/* NULL on OOM or invalid arguments (n_arms < 1, threshold < 1). p is copied. */
health *health_create(int n_arms, const struct health_params *p);
void health_destroy(health *h);

/* Candidate mask for router_decide: mask[i] = 1 if arm i could be admitted at
 * now_ms (closed, or open with the cool-down over); 0 if open and cooling
 * down or half-open with its probe in flight. Per-arm in-flight caps are not
 * considered here (they are checked by health_admit). Returns the number of
 * candidates. */
int health_candidates(const health *h, double now_ms, unsigned char *mask);

/* Admit one call to arm at now_ms. Returns 0 (counted in flight; *probe = 1
 * when this call is the half-open probe), BD_ERR_BUSY when the arm's or the
 * global in-flight cap is reached, or BD_ERR_UPSTREAM when the circuit does
 * not admit a call now. */
int health_admit(health *h, int arm, double now_ms, int *probe);

/* Release a call admitted by health_admit (probe as returned there). */
void health_release(health *h, int arm, int probe, enum health_outcome outcome, double now_ms);

/* The state at now_ms (an OPEN arm whose cool-down is over still reads OPEN
 * until a probe is admitted). */
enum health_state health_state_of(const health *h, int arm);
int health_consecutive_failures(const health *h, int arm);
unsigned health_inflight(const health *h, int arm); /* arm < 0: global */
/* Times the arm's circuit opened (including re-opens after a failed probe). */
unsigned long health_opens(const health *h, int arm);
/* 1 if at least one arm is not OPEN/HALF_OPEN-blocked at now_ms (readiness). */
int health_ready(const health *h, double now_ms);
const char *health_state_name(enum health_state s); /* "closed", "open", "half_open" */
#endif
