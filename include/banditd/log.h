/* log — JSON log lines (one object per line) to stderr or a file.
 * Single writer per process line (stdio locking makes a line atomic).
 * Never pass secrets or prompt bodies. */
#ifndef BANDITD_LOG_H
#define BANDITD_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/* Parse "debug"/"info"/"warn"/"error"; returns -1 when unknown. */
int log_level_parse(const char *s);
void log_set_level(int level);
int log_get_level(void);
/* Redirect to a file (append). NULL or "-" = stderr. Returns 0 or BD_ERR_IO. */
int log_open(const char *path);
/* Emit {"time":…,"level":…,"msg":msg, <fields>} where fields_json is either
 * NULL or a string of extra JSON members without braces, e.g.
 * "\"arm\":\"cheap\",\"status\":200". Cheap when the level is off. */
void log_emit(int level, const char *msg, const char *fields_json);
/* printf-style message, no extra fields. */
void log_msgf(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LOG_ENABLED(lvl) ((lvl) >= log_get_level())

#endif
