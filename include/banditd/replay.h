/* replay — offline evaluation of the router on logged per-prompt outcomes
 * (DESIGN.md §5): `banditd replay --data FILE.jsonl [options]`. */
#ifndef BANDITD_REPLAY_H
#define BANDITD_REPLAY_H

#include <stddef.h>

/* Entry point of the `replay` subcommand; argv[0] is "replay".
 * Returns the process exit status (0 ok, 2 usage error, 1 failure). */
int replay_main(int argc, char **argv);

/* Curve metrics over the points of a preference sweep (exported for tests).
 * strong_share: share of calls to the strong model (best mean quality);
 * pgr = (q − q_weak)/(q_strong − q_weak), q_weak = the cheapest model's;
 * retention = q / q_strong; saving = 1 − cost / cost_strong. */
struct replay_curve_point {
    double strong_share;
    double pgr;
    double retention;
    double saving;
};

/* RouteLLM's APGR: area under PGR over strong share in [0,1], by the
 * trapezoid rule over the points sorted by strong share, anchored at (0,0)
 * and (1,1). n may be 0 (then 0.5). */
double replay_apgr(const struct replay_curve_point *p, size_t n);

/* CPT(target): the smallest strong share at which the piecewise-linear curve
 * (same anchors and order as replay_apgr) reaches PGR >= target. */
double replay_cpt(const struct replay_curve_point *p, size_t n, double target);

/* Best cost saving at retention >= min_retention: over the points and the
 * always-strong anchor (retention 1, saving 0), sorted by saving, the best
 * saving of a point that qualifies or of the place where the segment between
 * two neighbours crosses min_retention (linear interpolation). */
double replay_saving_at(const struct replay_curve_point *p, size_t n, double min_retention);

#endif
