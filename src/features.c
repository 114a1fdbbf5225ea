/* features — a chat request → a hashed feature vector (see features.h).
 *
 * Layout of x (before the final L2 normalisation):
 *   x[0]                      bias, 1.0
 *   x[1..FEATURES_N_DENSE]    dense cues, each scaled to roughly [0,1]
 *   x[1+N_DENSE .. dim)       signed hashed n-grams of the user turns,
 *                             L2-normalised as a block first and scaled to
 *                             text_weight, so that the hashed text weighs the same
 *                             whatever the prompt's length (and the bias keeps
 *                             a stable share of the norm)
 *
 * The text is scanned once, byte by byte, in place (after strnlen finds its
 * end): no copies, no allocation.
 * Words are maximal runs of ASCII letters/digits, '_' and any byte >= 0x80
 * (so UTF-8 words stay whole), ASCII-lowercased. Character 3-grams run over
 * the lowercased byte stream with whitespace runs collapsed to one space.
 * Invalid UTF-8 is just bytes: it cannot fail. */
#include "banditd/features.h"

#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "banditd/err.h"

#define MSG_TEXT_CAP (64 * 1024) /* bytes of text read per message */

/* Weights of the hashed feature families (before block normalisation). */
#define W_UNIGRAM 1.0
#define W_BIGRAM 0.7
#define W_CHAR3 0.25
/* Norm of the hashed block (after its own normalisation), relative to the
 * bias (1.0). 0.5 acts like a 4× stronger ridge on the text weights than on
 * the bias and dense cues: predictions lean on the coarse, well-sampled
 * directions first (measured in docs/results.md: cold-start saving at 97%
 * retention 36.5% → 42.4% on RouteLLM dev, 72% → 80% on AlpacaEval dev):
 * FEATURES_TEXT_WEIGHT, the default of config router.text_weight. The price:
 * arms that differ only by wording are told apart more slowly (see
 * docs/router.md and tests/e2e/t_learning.py). */

/* Each weight and its negation, indexed by a hash's sign bit. */
static const double WT_UNIGRAM[2] = {W_UNIGRAM, -W_UNIGRAM};
static const double WT_BIGRAM[2] = {W_BIGRAM, -W_BIGRAM};
static const double WT_CHAR3[2] = {W_CHAR3, -W_CHAR3};

/* Domain tags so that a unigram, a bigram and a 3-gram never share a hash. */
#define TAG_UNI 0x9e3779b97f4a7c15ULL
#define TAG_BI 0xc2b2ae3d27d4eb4fULL
#define TAG_CHAR 0x165667b19e3779f9ULL

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

/* Dense slots (1-based positions in x). */
enum {
    D_LEN = 1,    /* log1p(user text bytes) / 10 */
    D_TURNS,      /* log1p(messages) / 4 */
    D_FENCES,     /* code fences ``` in user text */
    D_DIGITS,     /* share of digit bytes, x2, capped at 1 */
    D_MATHS,      /* share of maths symbol bytes, x4, capped at 1 */
    D_QUESTIONS,  /* min(question marks, 5) / 5 */
    D_SYSTEM,     /* a system/developer message is present */
    D_TOOLS,      /* tools/functions present */
    D_MAX_TOKENS, /* log1p(max_tokens) / 10, 0 when absent */
    D_ASSISTANT,  /* log1p(assistant turns) / 3 */
};
_Static_assert(D_ASSISTANT == FEATURES_N_DENSE, "dense slots must fill FEATURES_N_DENSE");

struct acc {
    double *h;      /* hashed block: x + 1 + N_DENSE */
    uint32_t range; /* its length */
    /* counts over all user text */
    size_t bytes, digits, maths, questions, fences;
    size_t messages, assistant;
    int system, tools;
    double max_tokens;
};

/* murmur3's 64-bit finaliser: a fixed bijective mixer. */
static inline uint64_t fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

/* Byte classes (one table lookup per byte instead of a chain of compares). */
enum {
    C_WORD = 1,  /* ASCII letter/digit, '_' or any byte >= 0x80 */
    C_DIGIT = 2, /* '0'..'9' */
    C_MATHS = 4, /* = + * / ^ < > $ % and backslash */
    C_SPACE = 8, /* space, tab, LF, CR, FF, VT */
    C_QUESTION = 16,
    C_BACKTICK = 32,
};

struct byte_class {
    unsigned char lower; /* ASCII-lowercased byte */
    unsigned char cls;   /* C_* bits */
};

static struct byte_class class_tab[256];

/* Per-byte counts, packed so that one addition counts all three: digits in
 * bits 0..20, maths symbols in bits 21..41, question marks from bit 42 (a
 * scan reads at most MSG_TEXT_CAP < 2^21 bytes, so no field overflows). */
#define CNT_MATHS_SHIFT 21
#define CNT_QUESTION_SHIFT 42
#define CNT_FIELD ((1ULL << CNT_MATHS_SHIFT) - 1)
_Static_assert(MSG_TEXT_CAP < (1 << CNT_MATHS_SHIFT), "packed counts would overflow");
static uint64_t count_tab[256];

static void class_tab_init(void)
{
    static int done = 0; /* benign race: every thread writes the same bytes */
    if (done)
        return;
    for (int i = 0; i < 256; i++) {
        unsigned char c = (unsigned char)i, l = c, k = 0;
        if (c >= 'A' && c <= 'Z')
            l = (unsigned char)(c + ('a' - 'A'));
        if ((l >= 'a' && l <= 'z') || (l >= '0' && l <= '9') || l == '_' || l >= 0x80)
            k |= C_WORD;
        if (l >= '0' && l <= '9')
            k |= C_DIGIT;
        if (l == '=' || l == '+' || l == '*' || l == '/' || l == '^' || l == '<' || l == '>' ||
            l == '\\' || l == '$' || l == '%')
            k |= C_MATHS;
        if (l == ' ' || l == '\t' || l == '\n' || l == '\r' || l == '\f' || l == '\v')
            k |= C_SPACE;
        if (l == '?')
            k |= C_QUESTION;
        if (l == '`')
            k |= C_BACKTICK;
        class_tab[i].lower = l;
        class_tab[i].cls = k;
        count_tab[i] = (uint64_t)((k & C_DIGIT) != 0) |
                       (uint64_t)((k & C_MATHS) != 0) << CNT_MATHS_SHIFT |
                       (uint64_t)((k & C_QUESTION) != 0) << CNT_QUESTION_SHIFT;
    }
    done = 1;
}

/* Scan one message's user text (at most len bytes; stops at a NUL). Hot
 * loop: state in locals, one pass, no allocation, no data-dependent branch
 * but the ones on byte classes (signs come from tables, counts from
 * count_tab). */
static void scan_text(struct acc *a, const char *text, size_t len)
{
    double *h = a->h;
    const uint64_t range = a->range;
    uint64_t word = FNV_OFFSET, prev = 0, counts = 0;
    int last_space = 1, backticks = 0;
    uint32_t tri = 0;
    int tri_n = 0;
    size_t fences = 0;
    const unsigned char *p = (const unsigned char *)text;
    const size_t n = strnlen(text, len); /* the bytes read: up to the NUL or the cap */

/* Bit 31 of the hash picks the sign: a table lookup, not a branch (the bit is
 * random, so a branch would be mispredicted half the time on new text). */
#define PUT(hash, wt)                                                                              \
    do {                                                                                           \
        uint64_t h_ = (hash);                                                                      \
        uint32_t idx_ = (uint32_t)(((h_ >> 32) * range) >> 32);                                    \
        h[idx_] += (wt)[(h_ >> 31) & 1];                                                           \
    } while (0)
/* Character 3-grams: one multiply (Fibonacci hashing) of the packed bytes;
 * index and sign come from its high and middle bits. */
#define STREAM(ch)                                                                                 \
    do {                                                                                           \
        tri = ((tri << 8) | (ch)) & 0xffffffu;                                                     \
        if (__builtin_expect(tri_n < 3, 0) && ++tri_n < 3)                                         \
            break;                                                                                 \
        PUT(((uint64_t)tri ^ TAG_CHAR) * 0x9e3779b97f4a7c15ULL, WT_CHAR3);                         \
    } while (0)

    const struct byte_class *tab = class_tab;
    size_t i = 0;
    while (i < n) {
        struct byte_class bc = tab[p[i]];
        counts += count_tab[p[i]];
        if (bc.cls & C_WORD) {
            /* one whole word: the hottest path */
            word = FNV_OFFSET;
            for (;;) {
                word = (word ^ bc.lower) * FNV_PRIME;
                STREAM(bc.lower);
                if (++i == n)
                    break;
                bc = tab[p[i]];
                if (!(bc.cls & C_WORD))
                    break;
                counts += count_tab[p[i]];
            }
            /* the word's unigram, and the bigram with the previous word */
            uint64_t u = fmix64(word ^ TAG_UNI);
            PUT(u, WT_UNIGRAM);
            if (prev != 0)
                PUT(fmix64((prev * FNV_PRIME) ^ u ^ TAG_BI), WT_BIGRAM);
            prev = u | 1;
            last_space = 0;
            continue;
        }
        if (bc.cls & C_BACKTICK) {
            if (++backticks == 3) {
                fences++;
                backticks = 0;
            }
        } else {
            backticks = 0;
        }
        if (bc.cls & C_SPACE) {
            if (!last_space)
                STREAM(' ');
            last_space = 1;
        } else {
            STREAM(bc.lower);
            last_space = 0;
        }
        i++;
    }
#undef STREAM
#undef PUT
    a->bytes += n;
    a->digits += (size_t)(counts & CNT_FIELD);
    a->maths += (size_t)((counts >> CNT_MATHS_SHIFT) & CNT_FIELD);
    a->questions += (size_t)(counts >> CNT_QUESTION_SHIFT);
    a->fences += fences;
}

static void acc_init(struct acc *a, double *x, int dim)
{
    class_tab_init();
    memset(a, 0, sizeof(*a));
    memset(x, 0, (size_t)dim * sizeof(double));
    a->h = x + 1 + FEATURES_N_DENSE;
    a->range = (uint32_t)(dim - 1 - FEATURES_N_DENSE);
}

static double cap1(double v)
{
    return v > 1.0 ? 1.0 : v;
}

/* The dense cues, the hashed block scaled to norm text_weight, then the whole
 * vector to norm 1. Sums run in index order, one addition at a time (the
 * output is bit-for-bit what it was: tests/test_features.c, replays). */
static void finish(struct acc *a, double *x, int dim, double text_weight)
{
    double *h = a->h;
    const uint32_t range = a->range;
    double hn = 0.0;
    for (uint32_t i = 0; i < range; i++)
        hn += h[i] * h[i];
    double nb = a->bytes > 0 ? (double)a->bytes : 1.0;
    x[0] = 1.0;
    x[D_LEN] = log1p((double)a->bytes) / 10.0;
    x[D_TURNS] = log1p((double)a->messages) / 4.0;
    x[D_FENCES] = a->fences > 0 ? 0.5 + 0.5 * cap1((double)a->fences / 8.0) : 0.0;
    x[D_DIGITS] = cap1(2.0 * (double)a->digits / nb);
    x[D_MATHS] = cap1(4.0 * (double)a->maths / nb);
    x[D_QUESTIONS] = cap1((double)a->questions / 5.0);
    x[D_SYSTEM] = a->system ? 1.0 : 0.0;
    x[D_TOOLS] = a->tools ? 1.0 : 0.0;
    x[D_MAX_TOKENS] = a->max_tokens > 0 ? log1p(a->max_tokens) / 10.0 : 0.0;
    x[D_ASSISTANT] = log1p((double)a->assistant) / 3.0;
    double n = 0.0;
    for (int i = 0; i < 1 + FEATURES_N_DENSE; i++)
        n += x[i] * x[i];
    /* scale the hashed block and go on with the norm in the same pass (an
     * all-zero block is left as it is: v·1 = v) */
    double s = hn > 0.0 ? text_weight / sqrt(hn) : 1.0;
    for (uint32_t i = 0; i < range; i++) {
        double v = h[i] * s;
        h[i] = v;
        n += v * v;
    }
    double t = 1.0 / sqrt(n); /* n >= 1: the bias is 1 */
    for (int i = 0; i < dim; i++)
        x[i] *= t;
}

static int tw_ok(double w)
{
    return isfinite(w) && w > 0.0 && w <= FEATURES_MAX_TEXT_WEIGHT;
}

static int dim_ok(int dim)
{
    return dim >= FEATURES_MIN_DIM && dim <= FEATURES_MAX_DIM;
}

/* The text of a user message: a string, or the "text" of its text parts
 * (each part scanned as its own segment), capped at MSG_TEXT_CAP in total. */
static void scan_content(struct acc *a, const cJSON *content)
{
    if (cJSON_IsString(content) && content->valuestring != NULL) {
        scan_text(a, content->valuestring, MSG_TEXT_CAP);
        return;
    }
    if (!cJSON_IsArray(content))
        return;
    size_t budget = MSG_TEXT_CAP;
    const cJSON *part;
    cJSON_ArrayForEach(part, content)
    {
        if (budget == 0)
            break;
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 ||
            !cJSON_IsString(text) || text->valuestring == NULL)
            continue;
        size_t before = a->bytes;
        scan_text(a, text->valuestring, budget);
        budget -= a->bytes - before;
    }
}

int features_from_request_tw(const cJSON *request, double *x, int dim, double text_weight)
{
    if (!dim_ok(dim) || x == NULL || request == NULL || !tw_ok(text_weight))
        return BD_ERR_INVALID;
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(request, "messages");
    if (!cJSON_IsArray(msgs))
        return BD_ERR_INVALID;
    struct acc a;
    acc_init(&a, x, dim);
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs)
    {
        a.messages++;
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsString(role) || role->valuestring == NULL)
            continue;
        const char *r = role->valuestring;
        if (strcmp(r, "user") == 0)
            scan_content(&a, cJSON_GetObjectItemCaseSensitive(m, "content"));
        else if (strcmp(r, "assistant") == 0)
            a.assistant++;
        else if (strcmp(r, "system") == 0 || strcmp(r, "developer") == 0)
            a.system = 1;
    }
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(request, "tools");
    const cJSON *funcs = cJSON_GetObjectItemCaseSensitive(request, "functions");
    a.tools = (cJSON_IsArray(tools) && cJSON_GetArraySize(tools) > 0) ||
              (cJSON_IsArray(funcs) && cJSON_GetArraySize(funcs) > 0);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(request, "max_completion_tokens");
    if (!cJSON_IsNumber(mt))
        mt = cJSON_GetObjectItemCaseSensitive(request, "max_tokens");
    if (cJSON_IsNumber(mt) && isfinite(mt->valuedouble) && mt->valuedouble > 0)
        a.max_tokens = mt->valuedouble;
    finish(&a, x, dim, text_weight);
    return BD_OK;
}

int features_from_prompt_tw(const char *prompt, double *x, int dim, double text_weight)
{
    if (!dim_ok(dim) || x == NULL || prompt == NULL || !tw_ok(text_weight))
        return BD_ERR_INVALID;
    struct acc a;
    acc_init(&a, x, dim);
    a.messages = 1;
    scan_text(&a, prompt, MSG_TEXT_CAP);
    finish(&a, x, dim, text_weight);
    return BD_OK;
}

int features_from_request(const cJSON *request, double *x, int dim)
{
    return features_from_request_tw(request, x, dim, FEATURES_TEXT_WEIGHT);
}

int features_from_prompt(const char *prompt, double *x, int dim)
{
    return features_from_prompt_tw(prompt, x, dim, FEATURES_TEXT_WEIGHT);
}
