/* libFuzzer harness: a hostile X-Bandit-Preference header value.
 *
 * Parses with the default profiles (config_defaults()) and checks the
 * contract: on success the three weights are finite, in [0,1] and sum to 1
 * within 1e-9, the tolerance form is well formed, and parsing is
 * deterministic and writes every field; on failure the error message
 * is a non-empty terminated string. */
#include "fuzz.h"

#include <math.h>

#include "banditd/config.h"
#include "banditd/err.h"
#include "banditd/pref.h"

static struct pref_profile profiles[CONFIG_MAX_PROFILES];
static size_t n_profiles;

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    struct config *cfg = config_defaults();
    FUZZ_CHECK(cfg != NULL);
    FUZZ_CHECK(cfg->router.n_profiles >= 3 && cfg->router.n_profiles <= CONFIG_MAX_PROFILES);
    n_profiles = cfg->router.n_profiles;
    memcpy(profiles, cfg->router.profiles, n_profiles * sizeof profiles[0]);
    config_destroy(cfg);
    return 0;
}

static int weight_ok(double v)
{
    return isfinite(v) && v >= 0.0 && v <= 1.0;
}

/* Every field of two results equal (no memcmp: the struct has padding). */
static int same(const struct pref_weights *a, const struct pref_weights *b)
{
    return a->quality == b->quality && a->cost == b->cost && a->latency == b->latency &&
           a->has_tolerance == b->has_tolerance && a->tolerance == b->tolerance;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Two different fillings of the output: a field that pref_parse leaves
     * unwritten shows up as a difference between the two parses. */
    struct pref_weights w, w2;
    memset(&w, 0x55, sizeof w);
    memset(&w2, 0xaa, sizeof w2);
    char err[256];
    memset(err, 'x', sizeof err);
    int rc = pref_parse((const char *)data, size, profiles, n_profiles, &w, err, sizeof err);
    if (rc == 0) {
        FUZZ_CHECK(weight_ok(w.quality) && weight_ok(w.cost) && weight_ok(w.latency));
        FUZZ_CHECK(fabs(w.quality + w.cost + w.latency - 1.0) <= 1e-9);
        FUZZ_CHECK(size <= PREF_HEADER_MAX);
        FUZZ_CHECK(w.has_tolerance == 0 || w.has_tolerance == 1);
        if (w.has_tolerance)
            FUZZ_CHECK(weight_ok(w.tolerance) && w.quality == 1.0);
        char err2[256];
        FUZZ_CHECK(pref_parse((const char *)data, size, profiles, n_profiles, &w2, err2,
                              sizeof err2) == 0);
        FUZZ_CHECK(same(&w, &w2));
    } else {
        FUZZ_CHECK(rc == BD_ERR_INVALID);
        FUZZ_CHECK(fuzz_terminated(err, sizeof err) && err[0] != '\0');
    }
    return 0;
}
