/* err — names and HTTP statuses of banditd's error codes. */
#include "banditd/err.h"

const char *bd_strerror(int err)
{
    switch (err) {
    case BD_OK:
        return "ok";
    case BD_ERR_NOMEM:
        return "out of memory";
    case BD_ERR_INVALID:
        return "invalid input";
    case BD_ERR_NOTFOUND:
        return "not found";
    case BD_ERR_EXISTS:
        return "already exists";
    case BD_ERR_EXPIRED:
        return "expired";
    case BD_ERR_TOOBIG:
        return "too large";
    case BD_ERR_IO:
        return "i/o error";
    case BD_ERR_UPSTREAM:
        return "upstream failed";
    case BD_ERR_TIMEOUT:
        return "upstream timed out";
    case BD_ERR_BUSY:
        return "busy";
    case BD_ERR_NUMERIC:
        return "numerical error";
    case BD_ERR_CORRUPT:
        return "corrupt state";
    case BD_ERR_FORBIDDEN:
        return "forbidden";
    case BD_ERR_AUTH:
        return "authentication required";
    case BD_ERR_INTERNAL:
        return "internal error";
    default:
        return "unknown error";
    }
}

int bd_err_http_status(int err)
{
    switch (err) {
    case BD_OK:
        return 200;
    case BD_ERR_INVALID:
        return 400;
    case BD_ERR_AUTH:
        return 401;
    case BD_ERR_FORBIDDEN:
        return 403;
    case BD_ERR_NOTFOUND:
        return 404;
    case BD_ERR_EXISTS:
        return 409;
    case BD_ERR_EXPIRED:
        return 410;
    case BD_ERR_TOOBIG:
        return 413;
    case BD_ERR_UPSTREAM:
        return 502;
    case BD_ERR_BUSY:
        return 503;
    case BD_ERR_TIMEOUT:
        return 504;
    default:
        return 500;
    }
}
