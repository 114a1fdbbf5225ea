/* reload — live reconfiguration from the config file (SIGHUP and
 * POST /admin/reload). Runs on the loop thread. See docs/operations.md.
 *
 * What a reload changes and what needs a restart: docs/config.md "Reload".
 * The ownership scheme for requests in flight: http.h (generations). */
#ifndef BANDITD_RELOAD_H
#define BANDITD_RELOAD_H

#include <stddef.h>
#include "banditd/config.h"
#include "banditd/http.h"

/* Fields of `next` that differ from `running` and cannot change without a
 * restart: listen (unless listen_fixed: --listen overrides the file),
 * router.dim, store.path. Returns 0 when none differ, else BD_ERR_INVALID
 * with a message naming the field in err. */
int reload_check_restart_fields(const struct config *running, const struct config *next,
                                int listen_fixed, char *err, size_t errlen);

/* Re-read path and switch hs to it (http_reconfigure); applies log.level and
 * log.file. On success logs one info line "config reloaded" (arms kept,
 * added, removed) and returns 0. On failure nothing changed and the message
 * is in err (the caller logs it / answers it): BD_ERR_INVALID (unreadable or
 * invalid file, restart-only field changed), BD_ERR_IO, BD_ERR_NOMEM. */
int reload_from_file(http_server *hs, const char *path, int listen_fixed, char *err, size_t errlen);

#endif
