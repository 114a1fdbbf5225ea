/* libFuzzer harness: a hostile config file (config_parse).
 *
 * A config is trusted more than network input, but a typo or a truncated file
 * must give an error naming the field, never a crash. On success the parsed
 * config must satisfy what the rest of banditd relies on. */
#include "fuzz.h"

#include <math.h>

#include "banditd/config.h"
#include "banditd/err.h"
#include "banditd/features.h"

static void check_config(const struct config *cfg)
{
    FUZZ_CHECK(cfg->n_arms >= 1 && cfg->n_arms <= CONFIG_MAX_ARMS);
    FUZZ_CHECK(cfg->n_aliases >= 1 && cfg->n_aliases <= CONFIG_MAX_ALIASES);
    FUZZ_CHECK(cfg->router.dim >= FEATURES_MIN_DIM && cfg->router.dim <= FEATURES_MAX_DIM);
    FUZZ_CHECK(cfg->router.n_profiles <= CONFIG_MAX_PROFILES);
    FUZZ_CHECK(isfinite(cfg->router.alpha) && isfinite(cfg->router.lambda));
    FUZZ_CHECK(isfinite(cfg->router.mu0));
    FUZZ_CHECK(cfg->router.forgetting > 0 && cfg->router.forgetting <= 1);
    FUZZ_CHECK(fuzz_terminated(cfg->listen_host, sizeof cfg->listen_host));
    FUZZ_CHECK(cfg->listen_port >= 0 && cfg->listen_port <= 65535);
    FUZZ_CHECK(
        fuzz_terminated(cfg->router.default_preference, sizeof cfg->router.default_preference));
    /* The default preference must itself be a valid header value. */
    struct pref_weights w;
    char perr[128];
    FUZZ_CHECK(pref_parse(cfg->router.default_preference, strlen(cfg->router.default_preference),
                          cfg->router.profiles, cfg->router.n_profiles, &w, perr,
                          sizeof perr) == 0);
    for (size_t i = 0; i < cfg->n_arms; i++) {
        const struct config_arm *a = &cfg->arms[i];
        FUZZ_CHECK(fuzz_terminated(a->name, sizeof a->name) && a->name[0] != '\0');
        FUZZ_CHECK(fuzz_terminated(a->base_url, sizeof a->base_url));
        FUZZ_CHECK(fuzz_terminated(a->model, sizeof a->model));
        FUZZ_CHECK(fuzz_terminated(a->api_key_env, sizeof a->api_key_env));
        FUZZ_CHECK(isfinite(a->price_in_per_mtok) && a->price_in_per_mtok >= 0);
        FUZZ_CHECK(isfinite(a->price_out_per_mtok) && a->price_out_per_mtok >= 0);
        FUZZ_CHECK(config_arm_index(cfg, a->name) == (int)i); /* names unique */
        FUZZ_CHECK(!config_is_alias(cfg, a->name));
    }
    for (size_t i = 0; i < cfg->router.n_profiles; i++) {
        const struct pref_profile *p = &cfg->router.profiles[i];
        FUZZ_CHECK(fuzz_terminated(p->name, sizeof p->name));
        FUZZ_CHECK(isfinite(p->w.quality) && isfinite(p->w.cost) && isfinite(p->w.latency));
        FUZZ_CHECK(fabs(p->w.quality + p->w.cost + p->w.latency - 1.0) <= 1e-9);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct config *cfg = NULL;
    char err[512];
    memset(err, 'x', sizeof err);
    int rc = config_parse((const char *)data, size, &cfg, err, sizeof err);
    if (rc == 0) {
        FUZZ_CHECK(cfg != NULL);
        check_config(cfg);
        config_destroy(cfg);
    } else {
        FUZZ_CHECK(cfg == NULL);
        FUZZ_CHECK(rc == BD_ERR_INVALID || rc == BD_ERR_NOMEM);
        FUZZ_CHECK(fuzz_terminated(err, sizeof err) && err[0] != '\0');
    }
    return 0;
}
