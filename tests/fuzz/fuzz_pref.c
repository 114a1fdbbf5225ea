/* libFuzzer harness: a hostile X-Bandit-Preference header value.
 *
 * Parses with the default profiles (config_defaults()) and checks the
 * contract: on success the three weights are finite, in [0,1] and sum to 1
 * within 1e-9, and parsing is deterministic; on failure the error message
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pref_weights w, w2;
    memset(&w, 0, sizeof w);
    char err[256];
    memset(err, 'x', sizeof err);
    int rc = pref_parse((const char *)data, size, profiles, n_profiles, &w, err, sizeof err);
    if (rc == 0) {
        FUZZ_CHECK(weight_ok(w.quality) && weight_ok(w.cost) && weight_ok(w.latency));
        FUZZ_CHECK(fabs(w.quality + w.cost + w.latency - 1.0) <= 1e-9);
        FUZZ_CHECK(size <= PREF_HEADER_MAX);
        char err2[256];
        FUZZ_CHECK(pref_parse((const char *)data, size, profiles, n_profiles, &w2, err2,
                              sizeof err2) == 0);
        FUZZ_CHECK(memcmp(&w, &w2, sizeof w) == 0);
    } else {
        FUZZ_CHECK(rc == BD_ERR_INVALID);
        FUZZ_CHECK(fuzz_terminated(err, sizeof err) && err[0] != '\0');
    }
    return 0;
}
