/* err — the one error convention of banditd.
 *
 * Every fallible function returns 0 (BD_OK) on success or one of the negative
 * codes below. A function that also produces a message writes it into a
 * buffer the caller passes (char *err, size_t errlen), never to the log as
 * well: the caller decides where a message goes. */
#ifndef BANDITD_ERR_H
#define BANDITD_ERR_H

enum bd_err {
    BD_OK = 0,
    BD_ERR_NOMEM = -1,      /* allocation failed */
    BD_ERR_INVALID = -2,    /* bad input (caller's fault): maps to HTTP 400 */
    BD_ERR_NOTFOUND = -3,   /* unknown id / model / path: 404 */
    BD_ERR_EXISTS = -4,     /* duplicate (feedback already given): 409 */
    BD_ERR_EXPIRED = -5,    /* id known but past its TTL: 410 */
    BD_ERR_TOOBIG = -6,     /* a capped buffer would overflow: 413 */
    BD_ERR_IO = -7,         /* file, socket or database failure */
    BD_ERR_UPSTREAM = -8,   /* upstream unreachable or failed: 502 */
    BD_ERR_TIMEOUT = -9,    /* upstream timed out: 504 */
    BD_ERR_BUSY = -10,      /* saturated, try later: 429/503 */
    BD_ERR_NUMERIC = -11,   /* numerical trouble (non-finite, not SPD) */
    BD_ERR_CORRUPT = -12,   /* stored state unreadable */
    BD_ERR_FORBIDDEN = -13, /* authenticated but not allowed: 403 */
    BD_ERR_AUTH = -14,      /* missing or wrong credentials: 401 */
    BD_ERR_INTERNAL = -15,  /* a bug: an invariant did not hold */
};

/* Static, human-readable name of an error code; never NULL. */
const char *bd_strerror(int err);

/* The HTTP status that an error code maps to (500 for unknown codes). */
int bd_err_http_status(int err);

#endif
