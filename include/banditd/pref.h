/* pref — the caller's quality/cost/latency preference (X-Bandit-Preference).
 *
 * Header forms (DESIGN.md §2):
 *   "0.7"                          weight on quality; the rest on cost
 *   "balanced"                     a profile name from the config
 *   "quality=0.6,cost=0.3,latency=0.1"   explicit weights (any subset; missing
 *                                  ones are 0; must sum to > 0; normalised to 1)
 *   "tolerance=0.03"               at most 3% below the best arm's predicted
 *                                  quality, cheapest otherwise (alone; in [0,1];
 *                                  weights are then quality=1, cost=0, latency=0)
 * All weights are finite and in [0,1]; the three sum to 1 after parsing. */
#ifndef BANDITD_PREF_H
#define BANDITD_PREF_H

#include <stddef.h>

#define PREF_NAME_MAX 32
#define PREF_HEADER_MAX 256 /* longer header values are rejected */

struct pref_weights {
    double quality;
    double cost;
    double latency;
    /* Tolerance form ("tolerance=T", docs/preferences.md): when has_tolerance
     * is set, the router ignores the weights above and picks, among the arms
     * whose predicted quality is at least (1 - tolerance) times the best
     * arm's, the one with the lowest predicted cost. Zero-initialised (the
     * weights form) by positional initialisers of the three weights.
     * Appended fields: backward compatible. */
    int has_tolerance;
    double tolerance; /* in [0,1] */
};

struct pref_profile {
    char name[PREF_NAME_MAX];
    struct pref_weights w;
};

/* Parse a header value into weights. `profiles` (n of them) resolves names.
 * Returns 0, or BD_ERR_INVALID with a message in err naming what is wrong.
 * `value` need not be NUL-terminated beyond `len`. */
int pref_parse(const char *value, size_t len, const struct pref_profile *profiles, size_t n,
               struct pref_weights *out, char *err, size_t errlen);

/* Weights for a plain number q in [0,1]: quality=q, cost=1-q, latency=0. */
struct pref_weights pref_from_scalar(double q);

/* The tolerance form for t in [0,1]: quality=1, cost=0, latency=0,
 * has_tolerance=1, tolerance=t. */
struct pref_weights pref_from_tolerance(double t);

#endif
