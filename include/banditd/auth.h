/* auth — client and admin keys, constant-time checks, client ids, and the
 * loopback-only rule.
 *
 * Client keys come from the environment variable auth.client_keys_env
 * (comma-separated) and/or the file auth.client_keys_file (one key per line;
 * blank lines and lines starting with '#' are ignored; surrounding spaces
 * and tabs are trimmed). The admin key comes from auth.admin_key_env. A key
 * is 1..AUTH_KEY_MAX bytes of printable ASCII without spaces or commas.
 *
 * Every check compares the presented token with EVERY configured key (client
 * keys and the admin key) through a constant-time compare (util_secret_eq by
 * default) without stopping at the first match, so the time taken does not
 * reveal which key matched or how far a wrong one matched.
 *
 * A caller's identity for feedback ownership is a 64-bit hash of the key it
 * presented (auth_client_id), never the key itself. Keys are scrubbed from
 * memory on destroy and never logged. Immutable after create: safe to read
 * from the event loop without locks. */
#ifndef BANDITD_AUTH_H
#define BANDITD_AUTH_H
#include <stddef.h>
#include <stdint.h>
#include "banditd/config.h"

#define AUTH_KEY_MAX 512
#define AUTH_MAX_KEYS 4096
#define AUTH_FILE_MAX ((size_t)1 << 20)

typedef struct auth auth;

enum auth_role { AUTH_NONE = 0, AUTH_CLIENT = 1, AUTH_ADMIN = 2 };

struct auth_identity {
    enum auth_role role; /* AUTH_NONE: no or unknown key */
    uint64_t client;     /* auth_client_id of the presented key; 0 for AUTH_NONE */
};

/* Build from explicit values (tests, and auth_from_config). client_keys_csv:
 * comma-separated keys or NULL; keys_file_text: the key file's content or
 * NULL; admin_key: NULL or "" for none. Returns 0 and *out, BD_ERR_INVALID
 * (err says which key is bad, by position, never its value) or BD_ERR_NOMEM. */
int auth_create(const char *client_keys_csv, const char *keys_file_text, const char *admin_key,
                auth **out, char *err, size_t errlen);
/* Read the environment variables and the key file named by cfg->auth. An
 * empty or unset variable means no keys from it. Returns 0, BD_ERR_IO (file
 * unreadable or over AUTH_FILE_MAX), BD_ERR_INVALID or BD_ERR_NOMEM. */
int auth_from_config(const struct config *cfg, auth **out, char *err, size_t errlen);
void auth_destroy(auth *a);

/* Number of client keys (0 = client authentication off). */
size_t auth_n_client_keys(const auth *a);
int auth_has_admin(const auth *a);

/* Identify the caller from an Authorization header value (NULL = absent).
 * "Bearer <token>" (scheme case-insensitive). The admin key yields
 * AUTH_ADMIN, a client key AUTH_CLIENT, anything else AUTH_NONE. */
void auth_identify(const auth *a, const char *authorization, struct auth_identity *out);

/* May this caller use /v1/... and /feedback? 0 (always when no client keys are
 * configured), or BD_ERR_AUTH. Fills *id either way. */
int auth_check_client(const auth *a, const char *authorization, struct auth_identity *id);
/* May this caller use admin endpoints (/stats)? With an admin key
 * configured: 0 for it, BD_ERR_FORBIDDEN for a valid client key, else
 * BD_ERR_AUTH. Without one: same as auth_check_client. */
int auth_check_admin(const auth *a, const char *authorization);

/* Stable 64-bit id of a key (never 0). */
uint64_t auth_client_id(const char *key);

/* 1 if host is a loopback address ("127.0.0.0/8", "::1", "localhost"). */
int auth_is_loopback(const char *host);
/* The rule: without client keys, listen only on loopback unless
 * allow_remote. Returns 0 or BD_ERR_FORBIDDEN with a message in err. */
int auth_listen_allowed(const auth *a, const char *host, int allow_remote, char *err,
                        size_t errlen);

/* Test hook: replace the constant-time compare (NULL restores
 * util_secret_eq). Process-wide; not for production use. */
void auth_set_compare(int (*eq)(const char *presented, const char *secret));
#endif
