/* stats — the GET /stats admin document (see stats.h). */
#include "banditd/stats.h"

#include <assert.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

char *stats_json(const struct config *cfg, const router *rt, const decisions *ds, const health *h,
                 double now_ms, size_t inflight, size_t connections)
{
    assert(cfg && rt);
    cJSON *root = cJSON_CreateObject();
    cJSON *arms = cJSON_AddArrayToObject(root, "arms");
    if (!root || !arms) {
        cJSON_Delete(root);
        return NULL;
    }
    int n = router_n_arms(rt);
    for (int i = 0; i < n && (size_t)i < cfg->n_arms; i++) {
        struct router_arm_stats st;
        router_arm_stats(rt, i, &st);
        cJSON *a = cJSON_CreateObject();
        if (!a || !cJSON_AddItemToArray(arms, a)) {
            cJSON_Delete(a);
            cJSON_Delete(root);
            return NULL;
        }
        cJSON_AddStringToObject(a, "name", cfg->arms[i].name);
        cJSON_AddStringToObject(a, "model", cfg->arms[i].model);
        cJSON_AddNumberToObject(a, "pulls", (double)st.pulls);
        cJSON_AddNumberToObject(a, "feedback", (double)st.feedback);
        if (st.feedback > 0)
            cJSON_AddNumberToObject(a, "mean_reward", st.reward_sum / (double)st.feedback);
        else
            cJSON_AddNullToObject(a, "mean_reward");
        cJSON_AddNumberToObject(a, "exp_completion_tokens", st.exp_completion_tokens);
        cJSON_AddNumberToObject(a, "latency_ms", st.latency_ms);
        cJSON_AddNumberToObject(a, "ttfb_ms", st.ttfb_ms);
        cJSON_AddNumberToObject(a, "usage_obs", (double)st.usage_obs);
        cJSON_AddNumberToObject(a, "price_in_per_mtok", cfg->arms[i].price_in_per_mtok);
        cJSON_AddNumberToObject(a, "price_out_per_mtok", cfg->arms[i].price_out_per_mtok);
        enum health_state hs = h ? health_state_of(h, i) : HEALTH_CLOSED;
        cJSON_AddBoolToObject(a, "healthy", hs == HEALTH_CLOSED);
        cJSON_AddStringToObject(a, "circuit", health_state_name(hs));
        cJSON_AddNumberToObject(a, "consecutive_failures",
                                h ? health_consecutive_failures(h, i) : 0);
        cJSON_AddNumberToObject(a, "circuit_opens", h ? (double)health_opens(h, i) : 0.0);
        cJSON_AddNumberToObject(a, "arm_inflight", h ? health_inflight(h, i) : 0u);
    }
    cJSON_AddNumberToObject(root, "decisions_pending", ds ? (double)decisions_pending(ds) : 0.0);
    cJSON_AddNumberToObject(root, "inflight", (double)inflight);
    cJSON_AddNumberToObject(root, "connections", (double)connections);
    cJSON_AddBoolToObject(root, "ready", h ? health_ready(h, now_ms) : 1);
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}
