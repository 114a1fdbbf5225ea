/* log — one JSON object per line. */
#include "banditd/log.h"
#include "banditd/err.h"
#include "banditd/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static int g_level = LOG_INFO;
static FILE *g_out;

#define LOG_LINE_MAX (64 * 1024) /* bytes of one log line at most */

static const char *level_name(int level)
{
    switch (level) {
    case LOG_DEBUG:
        return "debug";
    case LOG_INFO:
        return "info";
    case LOG_WARN:
        return "warn";
    default:
        return "error";
    }
}

int log_level_parse(const char *s)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

void log_set_level(int level)
{
    g_level = level;
}

int log_get_level(void)
{
    return g_level;
}

int log_open(const char *path)
{
    if (!path || !*path || strcmp(path, "-") == 0) {
        if (g_out)
            fclose(g_out);
        g_out = NULL;
        return BD_OK;
    }
    FILE *f = fopen(path, "a");
    if (!f)
        return BD_ERR_IO;
    setvbuf(f, NULL, _IOLBF, 0);
    if (g_out)
        fclose(g_out);
    g_out = f;
    return BD_OK;
}

/* Append s as the inside of a JSON string, escaping what JSON requires. */
static void put_escaped(struct util_buf *b, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            util_buf_printf(b, "\\%c", *p);
        else if (*p < 0x20)
            util_buf_printf(b, "\\u%04x", *p);
        else
            util_buf_append(b, p, 1);
    }
}

void log_emit(int level, const char *msg, const char *fields_json)
{
    if (level < g_level)
        return;
    FILE *f = g_out ? g_out : stderr;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    /* The whole line is assembled first and written with one call, so that a
     * reader never sees half a line (stderr is unbuffered). A line longer
     * than the cap is cut, still as one write. */
    struct util_buf b;
    util_buf_init(&b, LOG_LINE_MAX);
    util_buf_printf(&b, "{\"time\":\"%s.%03ldZ\",\"level\":\"%s\",\"msg\":\"", when,
                    ts.tv_nsec / 1000000, level_name(level));
    put_escaped(&b, msg);
    util_buf_append(&b, "\"", 1);
    if (fields_json && *fields_json) {
        util_buf_append(&b, ",", 1);
        util_buf_append(&b, fields_json, strlen(fields_json));
    }
    if (util_buf_append(&b, "}\n", 2) != BD_OK && b.data && b.len > 0)
        b.data[b.len - 1] = '\n'; /* over the cap: keep the line a line */
    if (b.data) {
        flockfile(f);
        fwrite(b.data, 1, b.len, f);
        funlockfile(f);
        fflush(f);
    }
    util_buf_free(&b);
}

void log_msgf(int level, const char *fmt, ...)
{
    if (level < g_level)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_emit(level, msg, NULL);
}
