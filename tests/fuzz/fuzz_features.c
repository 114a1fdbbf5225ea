/* libFuzzer harness: features_from_request on any JSON request object with
 * a "messages" array (the router featurizes what openai_chat_parse let
 * through, so every shape of message array must be safe).
 *
 * Input layout: byte 0 picks the dimension, the rest is JSON. Checks: every
 * feature finite, the vector L2-normalised (norm 1 within 1e-9), the result
 * deterministic; anything without a messages array is BD_ERR_INVALID. */
#include "fuzz.h"

#include <math.h>

#include <cjson/cJSON.h>

#include "banditd/err.h"
#include "banditd/features.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int dims[4] = {FEATURES_MIN_DIM, 17, 256, 1024};
    if (size < 1)
        return 0;
    int dim = dims[data[0] & 3];
    /* cJSON wants a terminated buffer: parse a private copy of exactly the input. */
    char *json = malloc(size);
    FUZZ_CHECK(json != NULL);
    memcpy(json, data + 1, size - 1);
    json[size - 1] = '\0';
    cJSON *req = cJSON_ParseWithLength(json, size);
    free(json);
    if (!req)
        return 0;
    double *x = calloc((size_t)dim, sizeof *x);
    double *y = calloc((size_t)dim, sizeof *y);
    FUZZ_CHECK(x && y);
    int has_messages = cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(req, "messages"));
    int rc = features_from_request(req, x, dim);
    if (has_messages && cJSON_IsObject(req)) {
        FUZZ_CHECK(rc == 0);
        double n2 = 0;
        for (int i = 0; i < dim; i++) {
            FUZZ_CHECK(isfinite(x[i]));
            n2 += x[i] * x[i];
        }
        FUZZ_CHECK(fabs(sqrt(n2) - 1.0) <= 1e-9);
        FUZZ_CHECK(features_from_request(req, y, dim) == 0);
        FUZZ_CHECK(memcmp(x, y, (size_t)dim * sizeof *x) == 0);
    } else {
        FUZZ_CHECK(rc == BD_ERR_INVALID);
    }
    free(x);
    free(y);
    cJSON_Delete(req);
    return 0;
}
