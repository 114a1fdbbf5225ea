/* xblob — the exact compact form of a feature vector ("features blob").
 *
 * One codec for every place that keeps x compactly: the store writes it into
 * decisions.x / feedback.x (docs/state.md, "Schema"), and the decision table
 * keeps each pending decision's x in it (decisions.h, "Memory").
 *
 * A vector of dim doubles is either raw (dim*8 bytes, little-endian doubles)
 * or a dictionary: byte XBLOB_DICT, k (1 byte), k distinct non-zero 8-byte
 * patterns (little-endian) in first-occurrence order, then one byte per
 * coordinate: 0 for +0.0 (all bits zero), else 1..k. Bit patterns are copied,
 * never converted, so decoding gives back the very same doubles (-0.0, NaN
 * payloads, subnormals included). The dictionary form is used only when it is
 * shorter than raw, so the length alone tells the forms apart. */
#ifndef BANDITD_XBLOB_H
#define BANDITD_XBLOB_H

#include <stddef.h>

#define XBLOB_DICT 0xD1

/* Encode dim doubles into out (capacity dim*8 bytes), using idx (dim bytes)
 * as scratch; returns the blob's length (<= dim*8). Deterministic: equal
 * vectors (bit for bit) give equal blobs. */
size_t xblob_encode(unsigned char *out, const double *x, size_t dim, unsigned char *idx);

/* Decode a blob of len bytes (either form) into dim doubles. Returns 0 or
 * BD_ERR_CORRUPT (a length that is neither form, an index beyond k). */
int xblob_decode(double *x, const unsigned char *blob, size_t len, size_t dim);

/* 1 if blob (len bytes) has the length of a form for dim coordinates and
 * every double in it is finite, else 0. Reads a dictionary blob's k patterns
 * only (its coordinates are those patterns and +0.0). */
int xblob_all_finite(const unsigned char *blob, size_t len, size_t dim);

/* n doubles to/from little-endian bytes (the raw form; snapshot A and b). */
void xblob_put_le(unsigned char *out, const double *x, size_t n);
void xblob_get_le(double *x, const unsigned char *in, size_t n);

#endif
