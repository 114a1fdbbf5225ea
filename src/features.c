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

/* x86-64 with GCC or clang: an AVX2 scan, used when the CPU has it (build
 * with -DFEATURES_NO_SIMD for the byte-by-byte scan only). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(FEATURES_NO_SIMD)
#define FEATURES_AVX2 1
#include <immintrin.h>
static int have_avx2;
/* compact_tab[mask]: the byte shuffle that gathers the bytes of an 8-byte
 * group whose bits are set in mask, in order */
static uint64_t compact_tab[256];
#endif

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

/* Domain tags so that a unigram, a bigram and a 3-gram never share a hash. */
#define TAG_UNI 0x9e3779b97f4a7c15ULL
#define TAG_BI 0xc2b2ae3d27d4eb4fULL
#define TAG_CHAR 0x165667b19e3779f9ULL

/* Fibonacci hashing multiplier of the packed 3-gram bytes */
#define K_CHAR 0x9e3779b97f4a7c15ULL

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
    unsigned char ch;  /* in the 3-gram stream: ASCII-lowercased, whitespace as ' ' */
    unsigned char cls; /* C_* bits */
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
        class_tab[i].ch = (k & C_SPACE) ? ' ' : l;
        class_tab[i].cls = k;
        count_tab[i] = (uint64_t)((k & C_DIGIT) != 0) |
                       (uint64_t)((k & C_MATHS) != 0) << CNT_MATHS_SHIFT |
                       (uint64_t)((k & C_QUESTION) != 0) << CNT_QUESTION_SHIFT;
    }
#ifdef FEATURES_AVX2
    for (int mask = 0; mask < 256; mask++) {
        uint64_t sh = 0;
        int k = 0;
        for (int bit = 0; bit < 8; bit++)
            if (mask >> bit & 1)
                sh |= (uint64_t)bit << (8 * k++);
        for (; k < 8; k++)
            sh |= (uint64_t)0x80 << (8 * k); /* a shuffle index that gives 0 */
        compact_tab[mask] = sh;
    }
    __builtin_cpu_init();
    /* published after the tables it needs */
    __atomic_store_n(&have_avx2, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt"),
                     __ATOMIC_RELEASE);
#endif
    done = 1;
}

/* Each weight and its negation: WT_CODE[family | sign bit of the hash]. */
enum { F_CHAR3 = 0, F_UNI = 2, F_BI = 4 };
static const double WT_CODE[8] = {W_CHAR3,  -W_CHAR3,  W_UNIGRAM, -W_UNIGRAM,
                                  W_BIGRAM, -W_BIGRAM, 0.0,       0.0};

#ifdef FEATURES_AVX2
/* An addition h[idx] += weight coded as idx << 3 | family | sign bit, so
 * that idx << 3 is its byte offset in h (idx < FEATURES_MAX_DIM < 2^13).
 * Bits 32..63 of the hash pick the slot (Lemire's multiply-shift), bit 31 the
 * sign. */
static inline uint32_t entry(uint64_t hash, uint64_t range, unsigned family)
{
    uint32_t idx = (uint32_t)(((hash >> 32) * range) >> 32);
    return idx << 3 | family | ((hash >> 31) & 1);
}

/* Code fences: runs of three backticks among the non-word bytes (a word
 * byte between two backticks does not break a run; any other byte does). */
static size_t count_fences(const unsigned char *p, size_t n)
{
    size_t fences = 0;
    int run = 0;
    const unsigned char *q = p, *end = p + n, *last = NULL;
    while ((q = memchr(q, '`', (size_t)(end - q))) != NULL) {
        for (const unsigned char *r = last != NULL ? last + 1 : q; r < q; r++)
            if (!(class_tab[*r].cls & C_WORD)) {
                run = 0;
                break;
            }
        if (++run == 3) {
            fences++;
            run = 0;
        }
        last = q++;
    }
    return fences;
}
#endif

/* Scan one message's user text (at most len bytes; stops at a NUL), byte by
 * byte (used without AVX2). Hot loop: state in locals, one pass, no
 * allocation, no data-dependent branch but the ones on byte classes (signs
 * come from tables, counts from count_tab). */
static void scan_text_scalar(struct acc *a, const char *text, size_t len)
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
        PUT(((uint64_t)tri ^ TAG_CHAR) * K_CHAR, WT_CODE + F_CHAR3);                               \
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
                word = (word ^ bc.ch) * FNV_PRIME;
                STREAM(bc.ch);
                if (++i == n)
                    break;
                bc = tab[p[i]];
                if (!(bc.cls & C_WORD))
                    break;
                counts += count_tab[p[i]];
            }
            /* the word's unigram, and the bigram with the previous word */
            uint64_t u = fmix64(word ^ TAG_UNI);
            PUT(u, WT_CODE + F_UNI);
            if (prev != 0)
                PUT(fmix64((prev * FNV_PRIME) ^ u ^ TAG_BI), WT_CODE + F_BI);
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
            STREAM(bc.ch);
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

#ifdef FEATURES_AVX2
/* The same scan with AVX2 (picked at run time, see scan_text), in blocks of
 * SCAN_BLOCK bytes, each in three passes:
 *  1. 32 bytes at a time: lowercase, whitespace to ' ', the byte counts, and
 *     the 3-gram stream (whitespace right after whitespace dropped, by a
 *     byte shuffle);
 *  2. 8 stream characters at a time: each one's 3-gram as a byte offset in
 *     h and a signed weight (the 64-bit multiply hashing done in 32-bit
 *     halves), and a bit mask of the word characters;
 *  3. the additions, word run by word run: per stream character, its 3-gram
 *     (and the word's FNV-1a step); at a word's end, its unigram and bigram.
 * Pass 3 makes the additions in the order of scan_text_scalar, so each slot
 * of h receives the same additions in the same order (0.7 is inexact: the
 * order matters) and x is bit for bit the same: tests/test_features.c
 * (golden vectors). Fences are counted apart (count_fences). Measured in
 * docs/performance.md. */
#define SCAN_BLOCK 512
#define AVX2_FN __attribute__((target("avx2,popcnt")))

struct scan_state {
    uint64_t word;        /* FNV-1a of the word still open at the end of a block */
    uint64_t prev;        /* the last word's unigram hash | 1, 0 before the first */
    size_t emitted;       /* stream characters so far */
    unsigned last_space;  /* the last byte was whitespace (1 at the start) */
    unsigned in_word;     /* the last stream character is a word character */
    unsigned char c2, c1; /* the last two stream characters */
};

AVX2_FN static inline __m256i in_range(__m256i v, char lo, char hi)
{
    __m256i d = _mm256_sub_epi8(v, _mm256_set1_epi8(lo));
    return _mm256_cmpeq_epi8(_mm256_min_epu8(d, _mm256_set1_epi8((char)(hi - lo))), d);
}

AVX2_FN static inline __m256i eq(__m256i v, char c)
{
    return _mm256_cmpeq_epi8(v, _mm256_set1_epi8(c));
}

/* Pass 1 on one block: the stream characters into cb, the counts into a.
 * Returns the number of stream characters. */
AVX2_FN static size_t avx2_stream(struct acc *a, struct scan_state *s, const unsigned char *p,
                                  size_t len, unsigned char *cb)
{
    size_t m = 0;
    for (size_t i = 0; i < len; i += 32) {
        const size_t r = len - i < 32 ? len - i : 32;
        __m256i v;
        if (r == 32) {
            v = _mm256_loadu_si256((const __m256i *)(p + i));
        } else {
            unsigned char tmp[32] = {0};
            memcpy(tmp, p + i, r);
            v = _mm256_loadu_si256((const __m256i *)tmp);
        }
        const uint32_t valid = r == 32 ? 0xffffffffu : (1u << r) - 1;
        __m256i space = _mm256_or_si256(eq(v, ' '), in_range(v, '\t', '\r'));
        __m256i lower = _mm256_add_epi8(
            v, _mm256_and_si256(in_range(v, 'A', 'Z'), _mm256_set1_epi8('a' - 'A')));
        __m256i ch = _mm256_blendv_epi8(lower, _mm256_set1_epi8(' '), space);
        __m256i maths = _mm256_or_si256(
            _mm256_or_si256(_mm256_or_si256(eq(v, '='), eq(v, '+')),
                            _mm256_or_si256(eq(v, '*'), eq(v, '/'))),
            _mm256_or_si256(_mm256_or_si256(_mm256_or_si256(eq(v, '^'), eq(v, '<')),
                                            _mm256_or_si256(eq(v, '>'), eq(v, '\\'))),
                            _mm256_or_si256(eq(v, '$'), eq(v, '%'))));
        a->digits += (size_t)__builtin_popcount(
            (uint32_t)_mm256_movemask_epi8(in_range(v, '0', '9')) & valid);
        a->maths += (size_t)__builtin_popcount((uint32_t)_mm256_movemask_epi8(maths) & valid);
        a->questions +=
            (size_t)__builtin_popcount((uint32_t)_mm256_movemask_epi8(eq(v, '?')) & valid);
        const uint32_t sp = (uint32_t)_mm256_movemask_epi8(space) & valid;
        /* kept: all but whitespace right after whitespace */
        const uint32_t keep = ~(sp & ((sp << 1) | s->last_space)) & valid;
        s->last_space = (sp >> (r - 1)) & 1;
        if (keep == valid) {
            _mm256_storeu_si256((__m256i *)(cb + m), ch);
            m += r;
        } else {
            /* 8 bytes at a time: a shuffle gathers the kept ones */
            unsigned char c[32];
            _mm256_storeu_si256((__m256i *)c, ch);
            for (unsigned q = 0; q < 32; q += 8) {
                const unsigned kb = (keep >> q) & 0xff;
                __m128i sh = _mm_loadl_epi64((const __m128i *)&compact_tab[kb]);
                __m128i v8 = _mm_loadl_epi64((const __m128i *)(c + q));
                _mm_storel_epi64((__m128i *)(cb + m), _mm_shuffle_epi8(v8, sh));
                m += (size_t)__builtin_popcount(kb);
            }
        }
    }
    return m;
}

/* Pass 2: the 3-gram addition of each stream character cb[0..m) (cb[-2] and
 * cb[-1] hold the two before), into off and wt; the word characters' bits
 * into wm. */
AVX2_FN static void avx2_grams(const unsigned char *cb, size_t m, uint64_t range, uint32_t *off,
                               double *wt, uint32_t *wm)
{
    /* the byte offset in h (idx * 8) and the weight of each 3-gram, from
     * (tri ^ TAG_CHAR) * K_CHAR mod 2^64; with tri < 2^24, its high half is
     * hi32(x * Klo) + x * Khi + TAGhi * Klo (mod 2^32), x = tri ^ TAGlo, and
     * bit 31 is bit 31 of x * Klo. */
    const __m256i klo = _mm256_set1_epi32((int)(uint32_t)K_CHAR);
    const __m256i khi = _mm256_set1_epi32((int)(uint32_t)(K_CHAR >> 32));
    const __m256i tlo = _mm256_set1_epi32((int)(uint32_t)TAG_CHAR);
    const __m256i cst = _mm256_set1_epi32((int)(uint32_t)((TAG_CHAR >> 32) * (uint32_t)K_CHAR));
    const __m256i rng = _mm256_set1_epi32((int)(uint32_t)range);
    for (size_t k = 0; k < m; k += 8) {
        __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(cb + k - 2)));
        __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(cb + k - 1)));
        __m256i b2 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(cb + k)));
        __m256i x = _mm256_xor_si256(
            _mm256_or_si256(_mm256_or_si256(_mm256_slli_epi32(b0, 16), _mm256_slli_epi32(b1, 8)),
                            b2),
            tlo);
        __m256i pe = _mm256_mul_epu32(x, klo);
        __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), klo);
        __m256i lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xaa);
        __m256i hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xaa);
        hi = _mm256_add_epi32(_mm256_add_epi32(hi, _mm256_mullo_epi32(x, khi)), cst);
        __m256i ie = _mm256_mul_epu32(hi, rng);
        __m256i io = _mm256_mul_epu32(_mm256_srli_epi64(hi, 32), rng);
        __m256i idx = _mm256_blend_epi32(_mm256_srli_epi64(ie, 32), io, 0xaa);
        _mm256_storeu_si256((__m256i *)(off + k), _mm256_slli_epi32(idx, 3));
        /* the weight: W_CHAR3 with the sign bit of the hash's bit 31 */
        __m256i sb = _mm256_and_si256(lo, _mm256_set1_epi32((int)0x80000000u));
        __m256i quarter = _mm256_castpd_si256(_mm256_set1_pd(W_CHAR3));
        __m256i s0 = _mm256_slli_epi64(_mm256_cvtepu32_epi64(_mm256_castsi256_si128(sb)), 32);
        __m256i s1 = _mm256_slli_epi64(_mm256_cvtepu32_epi64(_mm256_extracti128_si256(sb, 1)), 32);
        _mm256_storeu_si256((__m256i *)(wt + k), _mm256_or_si256(s0, quarter));
        _mm256_storeu_si256((__m256i *)(wt + k + 4), _mm256_or_si256(s1, quarter));
    }
    for (size_t k = 0; k < m; k += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(cb + k));
        __m256i w = _mm256_or_si256(_mm256_or_si256(in_range(v, 'a', 'z'), in_range(v, '0', '9')),
                                    eq(v, '_'));
        uint32_t bits = (uint32_t)_mm256_movemask_epi8(w) | (uint32_t)_mm256_movemask_epi8(v);
        wm[k / 32] = m - k >= 32 ? bits : bits & ((1u << (m - k)) - 1);
    }
}

/* h[idx] += weight for an entry (idx << 3 is its byte offset in h). */
static inline void add_entry(double *h, uint32_t o)
{
    *(double *)(void *)((char *)h + (o & ~7u)) += WT_CODE[o & 7];
}

/* A word ends: its unigram, then its bigram with the previous word. */
static inline void add_word(double *h, uint64_t f, uint64_t *prev, uint64_t range)
{
    const uint64_t u = fmix64(f ^ TAG_UNI);
    add_entry(h, entry(u, range, F_UNI));
    if (*prev != 0)
        add_entry(h, entry(fmix64((*prev * FNV_PRIME) ^ u ^ TAG_BI), range, F_BI));
    *prev = u | 1;
}

/* The first stream character at or after k that is not a word character
 * (m if none). */
static inline size_t word_run_end(const uint32_t *wm, size_t k, size_t m)
{
    for (; k < m; k = (k | 31) + 1) {
        const uint32_t z = ~wm[k / 32] >> (k % 32);
        if (z != 0) {
            const size_t e = k + (size_t)__builtin_ctz(z);
            return e < m ? e : m;
        }
    }
    return m;
}

AVX2_FN static void scan_text_avx2(struct acc *a, const char *text, size_t n)
{
    double *h = a->h;
    char *hb = (char *)h;
    const uint64_t range = a->range;
    const unsigned char *p = (const unsigned char *)text;
    unsigned char cbuf[2 + SCAN_BLOCK + 32];
    unsigned char *cb = cbuf + 2;
    uint32_t off[SCAN_BLOCK + 8];
    double wt[SCAN_BLOCK + 8];
    uint32_t wm[SCAN_BLOCK / 32 + 1];
    struct scan_state s = {.word = FNV_OFFSET, .last_space = 1};

    for (size_t b = 0; b < n; b += SCAN_BLOCK) {
        const size_t len = n - b < SCAN_BLOCK ? n - b : SCAN_BLOCK;
        cb[-2] = s.c2;
        cb[-1] = s.c1;
        const size_t m = avx2_stream(a, &s, p + b, len, cb);
        avx2_grams(cb, m, range, off, wt, wm);
        /* the first two stream characters have no 3-gram: add 0.0 to h[0]
         * (a no-op: h[0] is never -0.0) */
        for (size_t k = 0; k < m && s.emitted + k < 2; k++) {
            off[k] = 0;
            wt[k] = 0.0;
        }
        /* pass 3: the additions, in the order of scan_text_scalar */
        uint64_t f = s.word;
        unsigned open = s.in_word; /* a word is open: f is its hash so far */
        for (size_t k = 0; k < m;) {
            const size_t e = word_run_end(wm, k, m);
            if (e > k) {
                if (!open)
                    f = FNV_OFFSET;
                for (; k < e; k++) {
                    f = (f ^ cb[k]) * FNV_PRIME;
                    *(double *)(void *)(hb + off[k]) += wt[k];
                }
                open = 1;
                if (k == m)
                    break;
            }
            if (open) {
                add_word(h, f, &s.prev, range);
                open = 0;
            }
            *(double *)(void *)(hb + off[k]) += wt[k];
            k++;
        }
        if (open && b + len == n) {
            add_word(h, f, &s.prev, range);
            open = 0;
        }
        s.word = f;
        s.in_word = open;
        s.c2 = cbuf[m]; /* cb[m - 2], cb[m - 1] (the history when m < 2) */
        s.c1 = cbuf[m + 1];
        s.emitted += m;
    }
    a->bytes += n;
    a->fences += count_fences(p, n);
}
#endif

/* Scan one message's user text (at most len bytes; stops at a NUL). */
static void scan_text(struct acc *a, const char *text, size_t len)
{
#ifdef FEATURES_AVX2
    if (__atomic_load_n(&have_avx2, __ATOMIC_ACQUIRE)) {
        scan_text_avx2(a, text, strnlen(text, len));
        return;
    }
#endif
    scan_text_scalar(a, text, len);
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
    uint32_t i = 0;
    for (; i + 4 <= range; i += 4) { /* unrolled; still one addition at a time */
        hn += h[i] * h[i];
        hn += h[i + 1] * h[i + 1];
        hn += h[i + 2] * h[i + 2];
        hn += h[i + 3] * h[i + 3];
    }
    for (; i < range; i++)
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
    for (int d = 0; d < 1 + FEATURES_N_DENSE; d++)
        n += x[d] * x[d];
    /* scale the hashed block and go on with the norm in the same pass (an
     * all-zero block is left as it is: v·1 = v) */
    double s = hn > 0.0 ? text_weight / sqrt(hn) : 1.0;
    for (i = 0; i + 2 <= range; i += 2) {
        double v0 = h[i] * s, v1 = h[i + 1] * s;
        h[i] = v0;
        h[i + 1] = v1;
        n += v0 * v0;
        n += v1 * v1;
    }
    for (; i < range; i++) {
        double v = h[i] * s;
        h[i] = v;
        n += v * v;
    }
    double t = 1.0 / sqrt(n); /* n >= 1: the bias is 1 */
    int j = 0;
    for (; j + 4 <= dim; j += 4) { /* in pairs: SSE2 */
        x[j] *= t;
        x[j + 1] *= t;
        x[j + 2] *= t;
        x[j + 3] *= t;
    }
    for (; j < dim; j++)
        x[j] *= t;
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
