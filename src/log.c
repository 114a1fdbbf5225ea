/* log — one JSON object per line. */
#include "banditd/log.h"
#include "banditd/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static int g_level = LOG_INFO;
static FILE *g_out;

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

/* Write s as the inside of a JSON string, escaping what JSON requires. */
static void put_escaped(FILE *f, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
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
    flockfile(f);
    fprintf(f, "{\"time\":\"%s.%03ldZ\",\"level\":\"%s\",\"msg\":\"", when, ts.tv_nsec / 1000000,
            level_name(level));
    put_escaped(f, msg);
    fputc('"', f);
    if (fields_json && *fields_json) {
        fputc(',', f);
        fputs(fields_json, f);
    }
    fputs("}\n", f);
    funlockfile(f);
    fflush(f);
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
