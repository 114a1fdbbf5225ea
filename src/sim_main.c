/* banditd-sim — a logged-outcome simulator of OpenAI-compatible backends
 * (DESIGN.md §5): it serves each model's logged answer to a prompt, with the
 * logged token usage, after the delay of the latency model in dataset.h.
 *
 *   banditd-sim --data FILE.jsonl[.gz] [--port N|0] [--port-file F]
 *               [--host H] [--speed FACTOR] [--models m1,m2]
 *
 * POST /v1/chat/completions: `model` must be one of the served models (all
 * the data's models, or the --models subset), else 404 with an OpenAI error.
 * The prompt is the content of the last user message; when a row has exactly
 * that prompt and an outcome for the model, the answer is the logged response
 * (or, when the data holds none, a placeholder of about completion_tokens·4
 * characters) and usage is the logged {prompt_tokens, completion_tokens};
 * otherwise a generic answer with estimated usage (prompt bytes / 4, 32
 * completion tokens). The header X-Sim-Row-Id names the matched row (absent
 * when none). Non-streamed answers arrive after latency_ms / speed; streamed ones
 * (SSE) send the first chunk after ttft / speed, then the text in pieces at
 * the model's decode rate, then a usage chunk when
 * stream_options.include_usage is true, then `data: [DONE]`.
 * GET /v1/models lists the served models; GET /healthz answers "ok".
 *
 * Design choice: this is a test tool, not the product, so it uses
 * libmicrohttpd's thread-per-connection mode and simply sleeps in the
 * connection's own thread to simulate latency (a blocking sleep per request;
 * the product's front end does not work this way). Connections are capped
 * (SIM_MAX_CONNECTIONS) and so are request bodies (SIM_MAX_BODY). */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "banditd/dataset.h"
#include "banditd/err.h"
#include "banditd/util.h"

#define SIM_MAX_BODY (8u * 1024u * 1024u)
#define SIM_MAX_CONNECTIONS 1024
#define SIM_PIECE_CHARS 32 /* characters per streamed content chunk */
#define SIM_UNKNOWN_COMPLETION 32
#define SIM_MAX_TEXT (1u << 20)

struct sim {
    dataset *ds;
    double speed;
    unsigned char served[DATASET_MAX_MODELS];
    pthread_mutex_t mu;
    unsigned long long next_id;
};

struct req {
    struct util_buf body;
    int too_big;
};

static atomic_int g_stop; /* set once on SIGINT/SIGTERM; cuts simulated delays short */

/* Sleep ms in short slices; returns early (and 1) once a stop was requested,
 * so that shutdown never waits for a long simulated answer. */
static int sleep_ms(double ms)
{
    double end = util_now_ms() + (ms > 0 ? ms : 0);
    for (;;) {
        if (atomic_load(&g_stop))
            return 1;
        double left = end - util_now_ms();
        if (left <= 0)
            return 0;
        if (left > 20)
            left = 20;
        struct timespec ts = {0, (long)(left * 1e6)};
        nanosleep(&ts, NULL);
    }
}

static enum MHD_Result send_text(struct MHD_Connection *conn, unsigned status, const char *ctype,
                                 const char *text)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", ctype);
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned status, const char *type,
                                  const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned status, const char *type,
                                  const char *code, const char *param, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", type);
    if (param)
        cJSON_AddStringToObject(e, "param", param);
    else
        cJSON_AddNullToObject(e, "param");
    cJSON_AddStringToObject(e, "code", code);
    char *txt = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    enum MHD_Result ret = txt ? send_text(conn, status, "application/json", txt) : MHD_NO;
    free(txt);
    return ret;
}

/* The text of the last user message (string content, or the concatenated
 * "text" parts of an array). NULL when there is none. Caller frees. */
static char *last_user_text(const cJSON *messages)
{
    const cJSON *last = NULL, *m;
    cJSON_ArrayForEach(m, messages)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (cJSON_IsString(role) && strcmp(role->valuestring, "user") == 0)
            last = m;
    }
    if (!last)
        return NULL;
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(last, "content");
    if (cJSON_IsString(content))
        return strdup(content->valuestring);
    if (!cJSON_IsArray(content))
        return NULL;
    struct util_buf b;
    util_buf_init(&b, SIM_MAX_BODY);
    if (util_buf_append(&b, "", 0) != 0)
        return NULL;
    const cJSON *part;
    cJSON_ArrayForEach(part, content)
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (cJSON_IsString(t) && util_buf_append(&b, t->valuestring, strlen(t->valuestring)) != 0) {
            util_buf_free(&b);
            return NULL;
        }
    }
    return b.data;
}

/* ---- streaming -------------------------------------------------------------------------- */

struct stream {
    char *text;
    size_t len, pos;
    char model[256];
    char id[64];
    long created;
    long prompt_tokens, completion_tokens;
    int include_usage;
    double ttft_ms, piece_ms; /* already divided by speed */
    int phase;                /* 0 first chunk, 1 content, 2 finish, 3 usage, 4 done, 5 end */
    struct util_buf pending;  /* bytes produced but not yet handed to MHD */
    size_t sent;
};

static int chunk(struct stream *s, const char *content, int role, const char *finish, int usage)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", s->id);
    cJSON_AddStringToObject(o, "object", "chat.completion.chunk");
    cJSON_AddNumberToObject(o, "created", (double)s->created);
    cJSON_AddStringToObject(o, "model", s->model);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    if (!usage) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "index", 0);
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role)
            cJSON_AddStringToObject(d, "role", "assistant");
        if (content)
            cJSON_AddStringToObject(d, "content", content);
        if (finish)
            cJSON_AddStringToObject(c, "finish_reason", finish);
        else
            cJSON_AddNullToObject(c, "finish_reason");
        cJSON_AddItemToArray(choices, c);
    } else {
        cJSON *u = cJSON_AddObjectToObject(o, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens", (double)s->prompt_tokens);
        cJSON_AddNumberToObject(u, "completion_tokens", (double)s->completion_tokens);
        cJSON_AddNumberToObject(u, "total_tokens",
                                (double)(s->prompt_tokens + s->completion_tokens));
    }
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!txt)
        return BD_ERR_NOMEM;
    int rc = util_buf_printf(&s->pending, "data: %s\n\n", txt);
    free(txt);
    return rc;
}

/* Advance to the end of the UTF-8 character that contains byte i (so pieces
 * never split a character). */
static size_t utf8_boundary(const char *t, size_t len, size_t i)
{
    while (i < len && ((unsigned char)t[i] & 0xC0) == 0x80)
        i++;
    return i;
}

static ssize_t stream_cb(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct stream *s = cls;
    while (s->pending.len == 0) {
        int rc = 0;
        switch (s->phase) {
        case 0:
            if (sleep_ms(s->ttft_ms))
                return MHD_CONTENT_READER_END_WITH_ERROR;
            rc = chunk(s, "", 1, NULL, 0);
            s->phase = s->len ? 1 : 2;
            break;
        case 1: {
            size_t end = utf8_boundary(s->text, s->len, s->pos + SIM_PIECE_CHARS);
            if (end > s->len)
                end = s->len;
            char save = s->text[end];
            s->text[end] = '\0';
            rc = chunk(s, s->text + s->pos, 0, NULL, 0);
            s->text[end] = save;
            s->pos = end;
            if (sleep_ms(s->piece_ms))
                return MHD_CONTENT_READER_END_WITH_ERROR;
            if (s->pos >= s->len)
                s->phase = 2;
            break;
        }
        case 2:
            rc = chunk(s, NULL, 0, "stop", 0);
            s->phase = s->include_usage ? 3 : 4;
            break;
        case 3:
            rc = chunk(s, NULL, 0, NULL, 1);
            s->phase = 4;
            break;
        case 4:
            rc = util_buf_append(&s->pending, "data: [DONE]\n\n", 14);
            s->phase = 5;
            break;
        default:
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (rc != 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = s->pending.len < max ? s->pending.len : max;
    memcpy(buf, s->pending.data, n);
    util_buf_consume(&s->pending, n);
    return (ssize_t)n;
}

static void stream_free(void *cls)
{
    struct stream *s = cls;
    util_buf_free(&s->pending);
    free(s->text);
    free(s);
}

/* ---- chat completions ------------------------------------------------------------------- */

/* The placeholder answer when the data holds no response text. */
static char *placeholder(const char *model, long completion_tokens)
{
    size_t want = completion_tokens > 0 ? (size_t)completion_tokens * 4 : 4;
    if (want > SIM_MAX_TEXT)
        want = SIM_MAX_TEXT;
    char head[320];
    int hn = snprintf(head, sizeof head, "[simulated answer of %s, %ld tokens]", model,
                      completion_tokens);
    char *t = malloc(want + (size_t)hn + 1);
    if (!t)
        return NULL;
    size_t n = 0;
    memcpy(t, head, (size_t)hn);
    n = (size_t)hn;
    static const char filler[] = " lorem ipsum";
    while (n < want) {
        t[n] = filler[n % (sizeof filler - 1)];
        n++;
    }
    t[n] = '\0';
    return t;
}

static enum MHD_Result chat(struct sim *S, struct MHD_Connection *conn, struct req *rq)
{
    if (rq->too_big)
        return send_error(conn, 413, "invalid_request_error", "request_too_large", NULL,
                          "request body larger than %u bytes", SIM_MAX_BODY);
    cJSON *body = cJSON_ParseWithLength(rq->body.data ? rq->body.data : "", rq->body.len);
    if (!cJSON_IsObject(body)) {
        cJSON_Delete(body);
        return send_error(conn, 400, "invalid_request_error", "invalid_json", NULL,
                          "the body is not a JSON object");
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(body, "model");
    const cJSON *messages = cJSON_GetObjectItemCaseSensitive(body, "messages");
    if (!cJSON_IsString(model)) {
        cJSON_Delete(body);
        return send_error(conn, 400, "invalid_request_error", "missing_model", "model",
                          "\"model\" is required");
    }
    int m = dataset_model_index(S->ds, model->valuestring);
    if (m < 0 || !S->served[m]) {
        enum MHD_Result r =
            send_error(conn, 404, "invalid_request_error", "model_not_found", "model",
                       "The model `%.200s` does not exist", model->valuestring);
        cJSON_Delete(body);
        return r;
    }
    if (!cJSON_IsArray(messages)) {
        cJSON_Delete(body);
        return send_error(conn, 400, "invalid_request_error", "invalid_messages", "messages",
                          "\"messages\" must be an array");
    }
    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(body, "stream");
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(body, "stream_options");
    const cJSON *iu = so ? cJSON_GetObjectItemCaseSensitive(so, "include_usage") : NULL;
    int streaming = cJSON_IsTrue(stream), include_usage = cJSON_IsTrue(iu);
    char *prompt = last_user_text(messages);
    cJSON_Delete(body);
    if (!prompt)
        return send_error(conn, 400, "invalid_request_error", "invalid_messages", "messages",
                          "no user message with text content");

    const char *name = dataset_model(S->ds, m);
    const struct dataset_row *row = dataset_find_prompt(S->ds, prompt, strlen(prompt));
    const struct dataset_outcome *oc = row ? dataset_outcome(row, m) : NULL;
    long pt, ct;
    char *text;
    if (oc) {
        pt = oc->prompt_tokens;
        ct = oc->completion_tokens;
        text = oc->response ? strdup(oc->response) : placeholder(name, ct);
    } else {
        row = NULL;
        pt = (long)(strlen(prompt) / 4) + 1;
        ct = SIM_UNKNOWN_COMPLETION;
        text = malloc(256);
        if (text)
            snprintf(text, 256,
                     "This is a simulated answer from %.64s: the prompt is not in the logged "
                     "data, so there is no logged response to replay.",
                     name);
    }
    free(prompt);
    if (!text)
        return MHD_NO;
    struct dataset_latency lat = dataset_latency_of(name);
    double total_ms = dataset_latency_ms(name, ct) / S->speed;
    pthread_mutex_lock(&S->mu);
    unsigned long long idn = ++S->next_id;
    pthread_mutex_unlock(&S->mu);
    char id[64];
    snprintf(id, sizeof id, "chatcmpl-sim-%llu", idn);
    long created = (long)util_wall_s();
    struct MHD_Response *resp;
    if (streaming) {
        struct stream *s = calloc(1, sizeof *s);
        if (!s) {
            free(text);
            return MHD_NO;
        }
        s->text = text;
        s->len = strlen(text);
        snprintf(s->model, sizeof s->model, "%s", name);
        snprintf(s->id, sizeof s->id, "%s", id);
        s->created = created;
        s->prompt_tokens = pt;
        s->completion_tokens = ct;
        s->include_usage = include_usage;
        s->ttft_ms = lat.ttft_ms / S->speed;
        size_t pieces = (s->len + SIM_PIECE_CHARS - 1) / SIM_PIECE_CHARS;
        s->piece_ms = pieces ? (total_ms - s->ttft_ms) / (double)pieces : 0.0;
        util_buf_init(&s->pending, 1u << 20);
        resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_cb, s, stream_free);
        if (!resp) {
            stream_free(s);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
    } else {
        sleep_ms(total_ms);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "id", id);
        cJSON_AddStringToObject(o, "object", "chat.completion");
        cJSON_AddNumberToObject(o, "created", (double)created);
        cJSON_AddStringToObject(o, "model", name);
        cJSON *choices = cJSON_AddArrayToObject(o, "choices");
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "index", 0);
        cJSON *msg = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        cJSON_AddStringToObject(msg, "content", text);
        cJSON_AddStringToObject(c, "finish_reason", "stop");
        cJSON_AddItemToArray(choices, c);
        cJSON *u = cJSON_AddObjectToObject(o, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens", (double)pt);
        cJSON_AddNumberToObject(u, "completion_tokens", (double)ct);
        cJSON_AddNumberToObject(u, "total_tokens", (double)(pt + ct));
        free(text);
        char *txt = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!txt)
            return MHD_NO;
        resp = MHD_create_response_from_buffer(strlen(txt), txt, MHD_RESPMEM_MUST_FREE);
        if (!resp) {
            free(txt);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "application/json");
    }
    if (row && row->id[0])
        MHD_add_response_header(resp, "X-Sim-Row-Id", row->id);
    enum MHD_Result ret = MHD_queue_response(conn, 200, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result models_list(struct sim *S, struct MHD_Connection *conn)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(o, "data");
    for (int m = 0; m < dataset_n_models(S->ds); m++) {
        if (!S->served[m])
            continue;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "id", dataset_model(S->ds, m));
        cJSON_AddStringToObject(e, "object", "model");
        cJSON_AddNumberToObject(e, "created", 0);
        cJSON_AddStringToObject(e, "owned_by", "banditd-sim");
        cJSON_AddItemToArray(data, e);
    }
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    enum MHD_Result r = txt ? send_text(conn, 200, "application/json", txt) : MHD_NO;
    free(txt);
    return r;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **con_cls)
{
    (void)version;
    struct sim *S = cls;
    int post = strcmp(method, "POST") == 0;
    if (*con_cls == NULL) {
        struct req *rq = calloc(1, sizeof *rq);
        if (!rq)
            return MHD_NO;
        util_buf_init(&rq->body, SIM_MAX_BODY);
        *con_cls = rq;
        return MHD_YES;
    }
    struct req *rq = *con_cls;
    if (*upload_size) {
        if (!rq->too_big && util_buf_append(&rq->body, upload, *upload_size) != 0) {
            rq->too_big = 1;
            util_buf_free(&rq->body);
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (strcmp(url, "/v1/chat/completions") == 0 || strcmp(url, "/chat/completions") == 0) {
        if (!post)
            return send_error(conn, 405, "invalid_request_error", "method_not_allowed", NULL,
                              "use POST");
        return chat(S, conn, rq);
    }
    if (strcmp(url, "/v1/models") == 0 && !post)
        return models_list(S, conn);
    if (strcmp(url, "/healthz") == 0)
        return send_text(conn, 200, "text/plain", "ok\n");
    return send_error(conn, 404, "invalid_request_error", "not_found", NULL, "no route %.200s",
                      url);
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct req *rq = *con_cls;
    if (rq) {
        util_buf_free(&rq->body);
        free(rq);
        *con_cls = NULL;
    }
}

static void usage(FILE *f)
{
    fprintf(f, "usage: banditd-sim --data FILE.jsonl[.gz] [--port N|0] [--port-file F]\n"
               "                   [--host H] [--speed FACTOR] [--models m1,m2]\n"
               "  --port 0 picks a free port; --port-file writes the port actually bound.\n"
               "  --speed divides every simulated delay (default 1; e.g. 100 = 100x faster).\n");
}

static int write_port_file(const char *path, unsigned port)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "%u\n", port);
    if (fclose(f) != 0 || rename(tmp, path) != 0)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    const char *data = NULL, *port_file = NULL, *models = NULL, *host = "127.0.0.1";
    long port = 0;
    double speed = 1.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "banditd-sim: %s: unknown option or missing value\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        char *end;
        if (strcmp(a, "--data") == 0) {
            data = v;
        } else if (strcmp(a, "--port-file") == 0) {
            port_file = v;
        } else if (strcmp(a, "--models") == 0) {
            models = v;
        } else if (strcmp(a, "--host") == 0) {
            host = v;
        } else if (strcmp(a, "--port") == 0) {
            errno = 0;
            port = strtol(v, &end, 10);
            if (errno || end == v || *end || port < 0 || port > 65535) {
                fprintf(stderr, "banditd-sim: --port: must be 0..65535\n");
                return 2;
            }
        } else if (strcmp(a, "--speed") == 0) {
            errno = 0;
            speed = strtod(v, &end);
            if (errno || end == v || *end || !isfinite(speed) || speed <= 0) {
                fprintf(stderr, "banditd-sim: --speed: must be a number > 0\n");
                return 2;
            }
        } else {
            fprintf(stderr, "banditd-sim: %s: unknown option\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!data) {
        fprintf(stderr, "banditd-sim: --data is required\n");
        usage(stderr);
        return 2;
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "banditd-sim: --host: an IPv4 address, e.g. 127.0.0.1\n");
        return 2;
    }

    struct sim S;
    memset(&S, 0, sizeof S);
    S.speed = speed;
    pthread_mutex_init(&S.mu, NULL);
    char err[512];
    if (dataset_load(data, DATASET_LOAD_RESPONSES, &S.ds, err, sizeof err) != 0) {
        fprintf(stderr, "banditd-sim: %s\n", err);
        return 1;
    }
    if (models) {
        char *list = strdup(models), *save = NULL;
        for (char *t = list ? strtok_r(list, ",", &save) : NULL; t;
             t = strtok_r(NULL, ",", &save)) {
            int m = dataset_model_index(S.ds, t);
            if (m < 0) {
                fprintf(stderr, "banditd-sim: --models: %s is not in %s\n", t, data);
                free(list);
                dataset_destroy(S.ds);
                return 2;
            }
            S.served[m] = 1;
        }
        free(list);
    } else {
        memset(S.served, 1, sizeof S.served);
    }

    /* Block the stop signals in every thread; main waits for them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
        (uint16_t)port, NULL, NULL, handler, &S, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)SIM_MAX_CONNECTIONS, MHD_OPTION_CONNECTION_TIMEOUT,
        120u, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "banditd-sim: cannot listen on %s:%ld\n", host, port);
        dataset_destroy(S.ds);
        return 1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    unsigned bound = info ? info->port : (unsigned)port;
    if (port_file && write_port_file(port_file, bound) != 0) {
        fprintf(stderr, "banditd-sim: cannot write %s\n", port_file);
        MHD_stop_daemon(d);
        dataset_destroy(S.ds);
        return 1;
    }
    fprintf(stderr, "banditd-sim: %zu rows, %d models, listening on %s:%u (speed %g)\n",
            dataset_n_rows(S.ds), dataset_n_models(S.ds), host, bound, speed);
    int sig = 0;
    while (!atomic_load(&g_stop)) {
        if (sigwait(&set, &sig) == 0)
            atomic_store(&g_stop, 1);
    }
    MHD_stop_daemon(d);
    dataset_destroy(S.ds);
    pthread_mutex_destroy(&S.mu);
    return 0;
}
