/* linucb — one arm's ridge-regression quality model (disjoint LinUCB).
 *
 * State: A (d×d, starts λI), b (d, starts 0), n updates; derived: A⁻¹ (kept by
 * Sherman–Morrison, re-derived from A by Cholesky every `refactor_every`
 * updates or when a denominator/diagonal looks unhealthy) and θ = A⁻¹b.
 * Rewards are fitted as r − μ₀, so predictions are μ₀ + θᵀx.
 * Forgetting γ<1: A ← γA + (1−γ)λI + xxᵀ, b ← γb + (r−μ₀)x, so the ridge term
 * never decays below λI. Algebra through cblas. Not thread-safe: one owner. */
#ifndef BANDITD_LINUCB_H
#define BANDITD_LINUCB_H

#include <stdint.h>

typedef struct linucb linucb;

/* Returns NULL on OOM or invalid parameters (dim<1, lambda<=0, gamma∉(0,1]). */
linucb *linucb_create(int dim, double lambda, double mu0, double forgetting, int refactor_every);
void linucb_destroy(linucb *m);

/* A += xxᵀ, b += (r−μ₀)x (with forgetting as above). x must be finite.
 * Returns 0, BD_ERR_INVALID (non-finite input) or BD_ERR_NUMERIC. */
int linucb_update(linucb *m, const double *x, double reward);

/* *mean = μ₀ + θᵀx, *width = sqrt(xᵀA⁻¹x) (α is applied by the caller). */
void linucb_score(const linucb *m, const double *x, double *mean, double *width);
/* The same from an 8-bit copy of A⁻¹ (a quarter of the bytes of
 * linucb_score; x86-64 with AVX2+FMA, else it is linucb_score): also *qerr,
 * a bound on |width² − w²| where w is linucb_score's width, so w lies in
 * [sqrt(max(0, width² − qerr)), sqrt(width² + qerr)]. *qerr = 0 when the
 * exact path ran. All outputs required. */
void linucb_score_approx(const linucb *m, const double *x, double *mean, double *width,
                         double *qerr);
/* linucb_score_approx of n models of the same dimension on one x (a
 * decision): x is converted once. mean, width and qerr have n entries; each
 * is bit-for-bit what linucb_score_approx gives for that model. */
void linucb_score_approx_many(const linucb *const *ms, int n, const double *x, double *mean,
                              double *width, double *qerr);
/* The same from a 16-bit copy (the 8-bit one plus a second 8-bit plane,
 * twice the work): a bound ~100 times tighter, for the arms whose coarse
 * interval does not settle a decision. The same mean; qerr = 0 on the exact
 * path. */
void linucb_score_fine_many(const linucb *const *ms, int n, const double *x, double *mean,
                            double *width, double *qerr);

/* Re-derive A⁻¹ and θ from A and b (Cholesky). 0 or BD_ERR_NUMERIC. */
int linucb_refactor(linucb *m);

int linucb_dim(const linucb *m);
uint64_t linucb_count(const linucb *m);
double linucb_mu0(const linucb *m);
/* Read-only views (dim*dim row-major, or dim), valid until the next update. */
const double *linucb_A(const linucb *m);
const double *linucb_Ainv(const linucb *m);
const double *linucb_b(const linucb *m);
const double *linucb_theta(const linucb *m);

/* Replace the state (copies A, b), re-deriving A⁻¹ and θ. For snapshots. */
int linucb_set_state(linucb *m, const double *A, const double *b, uint64_t n);

/* Cold-start prior: b += λ·(prior−μ₀)·e_0 (e_0 = bias feature), so an untried
 * arm predicts ≈ prior on typical inputs. */
void linucb_set_prior(linucb *m, double prior_quality);

#endif
