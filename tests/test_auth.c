/* Unit tests for auth: key sources, bearer parsing, roles, constant-time
 * compare over every key, client ids, and the loopback rule. */
#include "banditd/auth.h"
#include "banditd/config.h"
#include "banditd/err.h"
#include "banditd/util.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static auth *mk(const char *csv, const char *file, const char *admin)
{
    auth *a = NULL;
    char err[256];
    int rc = auth_create(csv, file, admin, &a, err, sizeof err);
    ck_assert_msg(rc == BD_OK, "auth_create: %s", err);
    return a;
}

START_TEST(test_env_list)
{
    auth *a = mk(" k1 ,k2,\tk3", NULL, NULL);
    ck_assert_uint_eq(auth_n_client_keys(a), 3);
    ck_assert_int_eq(auth_has_admin(a), 0);
    struct auth_identity id;
    ck_assert_int_eq(auth_check_client(a, "Bearer k1", &id), BD_OK);
    ck_assert_int_eq(id.role, AUTH_CLIENT);
    ck_assert(id.client == auth_client_id("k1"));
    ck_assert_int_eq(auth_check_client(a, "bearer   k3  ", &id), BD_OK); /* trimmed */
    ck_assert(id.client == auth_client_id("k3"));
    ck_assert_int_eq(auth_check_client(a, "Bearer k2", &id), BD_OK);
    /* Missing, wrong, prefixes and other schemes are refused. */
    ck_assert_int_eq(auth_check_client(a, NULL, &id), BD_ERR_AUTH);
    ck_assert_int_eq(id.role, AUTH_NONE);
    ck_assert(id.client == 0);
    ck_assert_int_eq(auth_check_client(a, "Bearer k", &id), BD_ERR_AUTH);
    ck_assert_int_eq(auth_check_client(a, "Bearer k12", &id), BD_ERR_AUTH);
    ck_assert_int_eq(auth_check_client(a, "Basic k1", &id), BD_ERR_AUTH);
    ck_assert_int_eq(auth_check_client(a, "Bearerk1", &id), BD_ERR_AUTH);
    ck_assert_int_eq(auth_check_client(a, "Bearer ", &id), BD_ERR_AUTH);
    ck_assert_int_eq(auth_check_client(a, "k1", &id), BD_ERR_AUTH);
    auth_destroy(a);
    /* Bad lists are rejected without echoing the key. */
    auth *b = NULL;
    char err[256];
    ck_assert_int_eq(auth_create("good,,other", NULL, NULL, &b, err, sizeof err), BD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "key 2"));
    ck_assert_int_eq(auth_create("good,bad key", NULL, NULL, &b, err, sizeof err), BD_ERR_INVALID);
    ck_assert_ptr_null(strstr(err, "bad key"));
    ck_assert_ptr_null(b);
}
END_TEST

START_TEST(test_key_file)
{
    auth *a = mk(NULL, "# comment\n\nalpha\r\n  beta  \n#gamma\ndelta", "adm");
    ck_assert_uint_eq(auth_n_client_keys(a), 3);
    struct auth_identity id;
    ck_assert_int_eq(auth_check_client(a, "Bearer beta", &id), BD_OK);
    ck_assert_int_eq(auth_check_client(a, "Bearer delta", &id), BD_OK);
    ck_assert_int_eq(auth_check_client(a, "Bearer #gamma", &id), BD_ERR_AUTH);
    ck_assert_int_eq(auth_check_client(a, "Bearer gamma", &id), BD_ERR_AUTH);
    auth_destroy(a);
    /* auth_from_config reads env + file. */
    char path[] = "/tmp/test_auth_keysXXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char txt[] = "filekey\n";
    ck_assert_int_eq(write(fd, txt, sizeof txt - 1), (ssize_t)(sizeof txt - 1));
    close(fd);
    struct config *cfg = config_defaults();
    snprintf(cfg->auth.client_keys_env, sizeof cfg->auth.client_keys_env, "TEST_AUTH_KEYS");
    snprintf(cfg->auth.admin_key_env, sizeof cfg->auth.admin_key_env, "TEST_AUTH_ADMIN");
    snprintf(cfg->auth.client_keys_file, sizeof cfg->auth.client_keys_file, "%s", path);
    setenv("TEST_AUTH_KEYS", "envkey1,envkey2", 1);
    setenv("TEST_AUTH_ADMIN", "root-key", 1);
    char err[256];
    ck_assert_int_eq(auth_from_config(cfg, &a, err, sizeof err), BD_OK);
    ck_assert_uint_eq(auth_n_client_keys(a), 3);
    ck_assert_int_eq(auth_has_admin(a), 1);
    ck_assert_int_eq(auth_check_client(a, "Bearer filekey", &id), BD_OK);
    ck_assert_int_eq(auth_check_client(a, "Bearer envkey2", &id), BD_OK);
    auth_destroy(a);
    unlink(path);
    /* A missing file is an I/O error naming the field. */
    ck_assert_int_eq(auth_from_config(cfg, &a, err, sizeof err), BD_ERR_IO);
    ck_assert_ptr_nonnull(strstr(err, "auth.client_keys_file"));
    /* No variables set, no file: no keys. */
    unsetenv("TEST_AUTH_KEYS");
    unsetenv("TEST_AUTH_ADMIN");
    cfg->auth.client_keys_file[0] = '\0';
    ck_assert_int_eq(auth_from_config(cfg, &a, err, sizeof err), BD_OK);
    ck_assert_uint_eq(auth_n_client_keys(a), 0);
    ck_assert_int_eq(auth_check_client(a, NULL, &id), BD_OK); /* auth off */
    auth_destroy(a);
    config_destroy(cfg);
}
END_TEST

START_TEST(test_admin)
{
    auth *a = mk("c1,c2", NULL, "admin-secret");
    struct auth_identity id;
    ck_assert_int_eq(auth_check_admin(a, "Bearer admin-secret"), BD_OK);
    ck_assert_int_eq(auth_check_admin(a, "Bearer c1"), BD_ERR_FORBIDDEN);
    ck_assert_int_eq(auth_check_admin(a, "Bearer nope"), BD_ERR_AUTH);
    ck_assert_int_eq(auth_check_admin(a, NULL), BD_ERR_AUTH);
    /* The admin key also authenticates on client endpoints, as admin. */
    ck_assert_int_eq(auth_check_client(a, "Bearer admin-secret", &id), BD_OK);
    ck_assert_int_eq(id.role, AUTH_ADMIN);
    auth_destroy(a);
    /* Without an admin key, admin endpoints follow client authentication. */
    a = mk("c1", NULL, NULL);
    ck_assert_int_eq(auth_check_admin(a, "Bearer c1"), BD_OK);
    ck_assert_int_eq(auth_check_admin(a, NULL), BD_ERR_AUTH);
    auth_destroy(a);
    a = mk(NULL, NULL, NULL);
    ck_assert_int_eq(auth_check_admin(a, NULL), BD_OK);
    auth_destroy(a);
}
END_TEST

static int n_calls;
static int counting_eq(const char *p, const char *s)
{
    n_calls++;
    return util_secret_eq(p, s);
}

START_TEST(test_constant_time_all_keys)
{
    auth *a = mk("k1,k2,k3,k4", NULL, "adm");
    auth_set_compare(counting_eq);
    struct auth_identity id;
    /* The first key matches, yet every key (4 clients + admin) is compared. */
    n_calls = 0;
    ck_assert_int_eq(auth_check_client(a, "Bearer k1", &id), BD_OK);
    ck_assert_int_eq(n_calls, 5);
    n_calls = 0;
    ck_assert_int_eq(auth_check_client(a, "Bearer zz", &id), BD_ERR_AUTH);
    ck_assert_int_eq(n_calls, 5);
    n_calls = 0;
    ck_assert_int_eq(auth_check_admin(a, "Bearer adm"), BD_OK);
    ck_assert_int_eq(n_calls, 5);
    auth_set_compare(NULL);
    auth_destroy(a);
}
END_TEST

START_TEST(test_client_id)
{
    ck_assert(auth_client_id("a") != auth_client_id("b"));
    ck_assert(auth_client_id("key-1") != auth_client_id("key-2"));
    ck_assert(auth_client_id("a") == auth_client_id("a"));
    ck_assert(auth_client_id("") != 0);
}
END_TEST

START_TEST(test_loopback_rule)
{
    ck_assert_int_eq(auth_is_loopback("127.0.0.1"), 1);
    ck_assert_int_eq(auth_is_loopback("127.8.9.10"), 1);
    ck_assert_int_eq(auth_is_loopback("::1"), 1);
    ck_assert_int_eq(auth_is_loopback("localhost"), 1);
    ck_assert_int_eq(auth_is_loopback("0.0.0.0"), 0);
    ck_assert_int_eq(auth_is_loopback("::"), 0);
    ck_assert_int_eq(auth_is_loopback("10.0.0.1"), 0);
    ck_assert_int_eq(auth_is_loopback("128.0.0.1"), 0);
    ck_assert_int_eq(auth_is_loopback(""), 0);
    ck_assert_int_eq(auth_is_loopback("example.com"), 0);
    char err[256];
    auth *none = mk(NULL, NULL, "adm"); /* an admin key alone does not count */
    auth *keys = mk("k", NULL, NULL);
    ck_assert_int_eq(auth_listen_allowed(none, "127.0.0.1", 0, err, sizeof err), BD_OK);
    ck_assert_int_eq(auth_listen_allowed(none, "0.0.0.0", 0, err, sizeof err), BD_ERR_FORBIDDEN);
    ck_assert_ptr_nonnull(strstr(err, "allow_unauthenticated_remote"));
    ck_assert_int_eq(auth_listen_allowed(none, "0.0.0.0", 1, err, sizeof err), BD_OK);
    ck_assert_int_eq(auth_listen_allowed(keys, "0.0.0.0", 0, err, sizeof err), BD_OK);
    auth_destroy(none);
    auth_destroy(keys);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("auth");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_env_list);
    tcase_add_test(tc, test_key_file);
    tcase_add_test(tc, test_admin);
    tcase_add_test(tc, test_constant_time_all_keys);
    tcase_add_test(tc, test_client_id);
    tcase_add_test(tc, test_loopback_rule);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
