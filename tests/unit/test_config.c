/* Config loading: the contract keys, defaults, and "FILE:LINE: message" for bad input. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

/* 400 zeros, for a number strtod cannot hold */
#define ZEROS_100 "0000000000" "0000000000" "0000000000" "0000000000" "0000000000" "0000000000" "0000000000" "0000000000" "0000000000" "0000000000"
#define ZEROS_400 ZEROS_100 ZEROS_100 ZEROS_100 ZEROS_100

#include "core/util.h"

#include "config/config.h"

#define VERIFIER                                                                                          \
	"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"          \
	"wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="

static char path[64];

static Config *load_text(const char *text, char *err, size_t errlen)
{
	snprintf(path, sizeof path, "/tmp/pgcordon-unit-XXXXXX");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	Config *c = config_load(path, err, errlen);
	unlink(path);
	return c;
}

/* Asserts that loading fails and the error is "PATH:LINE: ...needle...". */
static void expect_error(const char *text, int line, const char *needle)
{
	char err[512], prefix[96];
	Config *c = load_text(text, err, sizeof err);
	if (c) {
		config_release(c);
		fail_msg("expected an error containing \"%s\"", needle);
	}
	snprintf(prefix, sizeof prefix, "%s:%d: ", path, line);
	if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, needle))
		fail_msg("error \"%s\" does not start with \"%s\" or lacks \"%s\"", err, prefix, needle);
}

static void test_full_contract(void **state)
{
	(void)state;
	char err[512];
	setenv("UNIT_DB_PASSWORD", "from-env", 1);
	Config *c = load_text("listen: {address: 0.0.0.0, port: 7000, workers: 3}\n"
			      "tls: {mode: disable}\n"
			      "admin: {address: 127.0.0.1, port: 8432}\n"
			      "limits: {max_client_conn: 50, max_message_size: 1MiB, max_statement_size: 64KiB, startup_timeout: 2s,"
			      " shutdown_timeout: 500ms}\n"
			      "log: {level: warn}\n"
			      "audit: {store: \"sqlite:/tmp/x.db\", results: {rows: 10}}\n"
			      "databases:\n"
			      "  app:\n"
			      "    host: db.internal\n"
			      "    port: 5433\n"
			      "    dbname: postgres\n"
			      "    user: gateway_role\n"
			      "    password_env: UNIT_DB_PASSWORD\n"
			      "    sslmode: require\n"
			      "users:\n"
			      "  alice: {password: \"" VERIFIER "\", groups: [analysts, oncall]}\n",
			      err, sizeof err);
	if (!c)
		fail_msg("%s", err);
	assert_string_equal(c->listen_address, "0.0.0.0");
	assert_int_equal(c->listen_port, 7000);
	assert_int_equal(c->workers, 3);
	assert_int_equal(c->max_client_conn, 50);
	assert_int_equal(c->max_message_size, 1024 * 1024);
	assert_int_equal(c->max_statement_size, 64 * 1024);
	assert_int_equal(c->startup_timeout_ms, 2000);
	assert_int_equal(c->shutdown_timeout_ms, 500);
	const DatabaseConfig *d = config_find_database(c, "app");
	assert_non_null(d);
	assert_string_equal(d->password, "from-env");
	assert_int_equal(d->port, 5433);
	assert_int_equal(d->sslmode, SSLMODE_REQUIRE);
	const UserConfig *u = config_find_user(c, "alice");
	assert_non_null(u);
	assert_int_equal(u->ngroups, 2);
	assert_string_equal(u->groups[1], "oncall");
	assert_null(config_find_user(c, "bob"));
	config_release(c);
}

static void test_defaults(void **state)
{
	(void)state;
	char err[512];
	Config *c = load_text("databases:\n  app: {host: 127.0.0.1, user: gw, password: x}\n", err, sizeof err);
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->listen_port, 6432);
	assert_int_equal(c->max_message_size, 64 * 1024 * 1024);
	assert_int_equal(c->max_statement_size, 1024 * 1024);
	assert_int_equal(c->max_client_conn, 1000);
	assert_string_equal(config_find_database(c, "app")->dbname, "app");
	assert_int_equal(config_find_database(c, "app")->port, 5432);
	config_release(c);
}

static void test_errors_name_the_line(void **state)
{
	(void)state;
	const char *db = "databases:\n  app: {host: h, user: u, password: p}\n";
	char text[1024];
	expect_error("listen: {port: 1}\nbogus: 1\n", 2, "unknown key \"bogus\"");
	snprintf(text, sizeof text, "%slisten:\n  address: x\n  prot: 5\n", db);
	expect_error(text, 5, "unknown key \"prot\" in listen");
	snprintf(text, sizeof text, "%slisten: {port: 70000}\n", db);
	expect_error(text, 3, "listen.port must be between");
	snprintf(text, sizeof text, "%slisten: {port: abc}\n", db);
	expect_error(text, 3, "must be a number");
	snprintf(text, sizeof text, "%stls: {mode: sometimes}\n", db);
	expect_error(text, 3, "tls.mode must be");
	snprintf(text, sizeof text, "%stls: {mode: require}\n", db);
	expect_error(text, 1, "needs tls.cert and tls.key");
	snprintf(text, sizeof text, "%susers:\n  bob: {password: hunter2}\n", db);
	expect_error(text, 4, "never plaintext");
	snprintf(text, sizeof text, "%susers:\n  bob: {groups: [a]}\n", db);
	expect_error(text, 4, "password (a SCRAM-SHA-256 verifier) is required");
	snprintf(text, sizeof text, "%slimits: {startup_timeout: soon}\n", db);
	expect_error(text, 3, "must be a duration");
	snprintf(text, sizeof text, "%slimits: {max_message_size: 10}\n", db);
	expect_error(text, 3, "max_message_size");
	const char *statement_sizes[] = {"512", "1023", "17MiB", "1GiB", "big", "-1KiB", "0"};
	for (size_t i = 0; i < sizeof statement_sizes / sizeof *statement_sizes; i++) {
		snprintf(text, sizeof text, "%slimits: {max_statement_size: %s}\n", db, statement_sizes[i]);
		expect_error(text, 3, "limits.max_statement_size must be a size between 1KiB and 16MiB");
	}
	expect_error("databases:\n  app: {host: h}\n", 2, "user is required");
	expect_error("databases:\n  app: {host: h, user: u, password: a, password_env: B}\n", 2, "only one of");
	expect_error("databases:\n  app: {host: h, user: u, password_env: SURELY_NOT_SET_ANYWHERE}\n", 2,
		     "is not set");
	expect_error("databases:\n  app: {host: h, user: u, sslmode: verify-full}\n", 2, "needs sslrootcert");
	expect_error("databases:\n  app: {host: h, user: u, password_file: /nonexistent/pw}\n", 2, "password_file");
	expect_error("listen: {port: 1}\n", 1, "no databases");
	expect_error("listen: [1, 2\n", 2, "invalid YAML"); /* libyaml notices at end of input */
	expect_error("", 1, "empty");
	expect_error("databases:\n  app: {host: h, user: u}\n  app: {host: h, user: u}\n", 3, "defined twice");
	expect_error("- just\n- a list\n", 1, "must be a mapping");
}

static void test_audit_and_admin_sections(void **state)
{
	(void)state;
	char err[512];
	const char *db = "databases:\n  app: {host: h, user: u, password: p}\n";
	char text[2048];
	snprintf(text, sizeof text,
		 "%saudit:\n  store: sqlite:/var/lib/pgcordon/audit.db\n  durability: strict\n  on_failure: continue\n"
		 "  retention: 90d\n  node: gw-1\n  results: {rows: 10, bytes: 1KiB}\n  max_pending: 2GiB\n"
		 "  store_timeout: 2s\n  flush_interval: 20ms\n  max_text_size: 64KiB\n"
		 "admin: {address: 127.0.0.1, port: 9000, auditors: [security, sre]}\n", db);
	Config *c = load_text(text, err, sizeof err);
	if (!c)
		fail_msg("%s", err);
	assert_string_equal(c->audit_key_file, "/var/lib/pgcordon/audit.db.key");
	assert_true(c->audit_strict);
	assert_true(c->audit_continue);
	assert_int_equal(c->audit_retention_s, 90 * 86400);
	assert_string_equal(c->audit_node, "gw-1");
	assert_int_equal(c->audit_rows, 10);
	assert_int_equal(c->audit_bytes, 1024);
	assert_true(c->audit_max_pending == 2ULL << 30);
	assert_int_equal(c->audit_store_timeout_ms, 2000);
	assert_int_equal(c->audit_flush_interval_ms, 20);
	assert_true(c->audit_text_max == 64 * 1024);
	assert_true(c->admin_enabled);
	assert_int_equal(c->admin_port, 9000);
	assert_int_equal(c->nadmin_auditors, 2);
	assert_string_equal(c->admin_auditors[1], "sre");
	config_release(c);

	/* Without the sections: nothing recorded, no HTTP listener, defaults for the rest. */
	c = load_text(db, err, sizeof err);
	assert_non_null(c);
	assert_null(c->audit_store);
	assert_false(c->admin_enabled);
	assert_false(c->audit_strict);
	assert_false(c->audit_continue);
	assert_true(c->audit_max_pending == 256ULL << 20);
	assert_int_equal(c->audit_store_timeout_ms, 5000);
	assert_int_equal(c->audit_flush_interval_ms, 100);
	assert_true(c->audit_text_max == 1024 * 1024);
	config_release(c);

	snprintf(text, sizeof text, "%saudit:\n  store: mysql://x\n", db);
	expect_error(text, 4, "sqlite:PATH or postgresql://");
	snprintf(text, sizeof text, "%saudit:\n  store: postgresql://u@h/audit\n", db);
	expect_error(text, 1, "needs audit.key_file");
	snprintf(text, sizeof text, "%saudit:\n  store: sqlite:/a\n  durability: maybe\n", db);
	expect_error(text, 5, "default or strict");
	const char *const timeouts[] = {"100ms", "11m", "soon", "-1s"};
	for (size_t i = 0; i < sizeof timeouts / sizeof *timeouts; i++) {
		snprintf(text, sizeof text, "%saudit:\n  store: sqlite:/a\n  store_timeout: %s\n", db, timeouts[i]);
		expect_error(text, 5, "audit.store_timeout");
	}
	const char *const flushes[][2] = {{"4ms", "from 5ms to 1s"}, {"2s", "from 5ms to 1s"}, {"0", "from 5ms to 1s"},
					  {"often", "a duration like"}, {"-20ms", "a duration like"}};
	for (size_t i = 0; i < sizeof flushes / sizeof *flushes; i++) {
		snprintf(text, sizeof text, "%saudit:\n  store: sqlite:/a\n  flush_interval: %s\n", db, flushes[i][0]);
		expect_error(text, 5, flushes[i][1]);
	}
	snprintf(text, sizeof text, "%saudit:\n  store: sqlite:/a\n  on_failure: ignore\n", db);
	expect_error(text, 5, "refuse or continue");
	snprintf(text, sizeof text, "%saudit:\n  store: sqlite:/a\n  retention: forever\n", db);
	expect_error(text, 5, "audit.retention");
	/* Records held in memory: a size, at least 1MiB (a few chunks), at most 64GiB. */
	const char *pendings[] = {"512KiB", "65GiB", "lots", "-1MiB", "1048575"};
	for (size_t i = 0; i < sizeof pendings / sizeof *pendings; i++) {
		snprintf(text, sizeof text, "%saudit:\n  store: sqlite:/a\n  max_pending: %s\n", db, pendings[i]);
		expect_error(text, 5, "audit.max_pending must be a size from 1MiB to 64GiB");
	}
	/* Longer SQL texts and parameters are recorded by head and hash: a size, 1KiB to 1GiB. */
	const char *texts[] = {"512", "1023", "2GiB", "whole", "-1KiB"};
	for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
		snprintf(text, sizeof text, "%saudit:\n  store: sqlite:/a\n  max_text_size: %s\n", db, texts[i]);
		expect_error(text, 5, "audit.max_text_size must be a size from 1KiB to 1GiB");
	}
	snprintf(text, sizeof text, "%saudit:\n  store: sqlite:/a\n  max_pending: 1048576\n", db);
	c = load_text(text, err, sizeof err);
	if (!c)
		fail_msg("%s", err);
	assert_true(c->audit_max_pending == 1048576);
	config_release(c);
	snprintf(text, sizeof text, "%sadmin: {auditors: [\"bad group\"]}\n", db);
	expect_error(text, 3, "group names");
	snprintf(text, sizeof text, "%sadmin: {mcp: maybe}\n", db);
	expect_error(text, 3, "admin.mcp must be true or false");
	snprintf(text, sizeof text, "%sadmin: {tls: {cert: /c, ciphers: x}}\n", db);
	expect_error(text, 3, "unknown key \"ciphers\" in admin.tls");
	snprintf(text, sizeof text, "%sadmin: {tls: {}}\n", db);
	expect_error(text, 3, "admin.tls needs both cert and key");

	/* Off loopback the API speaks HTTPS or does not start; admin.tls takes both files. */
	const char *whole[][2] = {
		{"admin: {address: 0.0.0.0}\n", "admin.address 0.0.0.0 is not a loopback address"},
		{"admin: {address: 10.1.2.3, tls: {cert: /c}}\n", "admin.tls needs both cert and key"},
		{"admin: {tls: {key: /k}}\n", "admin.tls needs both cert and key"},
		{"admin: {address: \"localhost\"}\n", "is not a loopback address"}, /* IPv4 addresses only */
	};
	for (size_t i = 0; i < sizeof whole / sizeof *whole; i++) {
		snprintf(text, sizeof text, "%s%s", db, whole[i][0]);
		c = load_text(text, err, sizeof err);
		if (c)
			config_release(c);
		assert_null(c);
		if (!strstr(err, whole[i][1]))
			fail_msg("%s: %s", whole[i][0], err);
	}
	snprintf(text, sizeof text, "%sadmin: {address: 0.0.0.0, tls: {cert: /c.pem, key: /k.pem}}\n", db);
	c = load_text(text, err, sizeof err);
	if (!c)
		fail_msg("%s", err);
	assert_string_equal(c->admin_tls_cert, "/c.pem");
	assert_string_equal(c->admin_tls_key, "/k.pem");
	config_release(c);
	snprintf(text, sizeof text, "%sadmin: {address: 127.0.0.9}\n", db);
	c = load_text(text, err, sizeof err);
	if (!c)
		fail_msg("%s", err);
	assert_null(c->admin_tls_cert);
	config_release(c);
}

/* Where a token, a key set or audit data may go: https://, or http:// to this host only. */
static void test_private_urls(void **state)
{
	(void)state;
	const char *yes[] = {
		"https://idp.example.com", "https://h/x", "http://127.0.0.1", "http://127.0.0.1:8080/realms/x",
		"http://127.9.8.7/", "http://localhost", "http://LOCALHOST:80/", "http://[::1]", "http://[::1]:8432/api",
		"http://127.0.0.1?x=1", "http://localhost#f",
	};
	const char *no[] = {
		"http://idp.example.com", "http://127.0.0.1.example.com/", "http://localhost.example.com",
		"http://127.0.0.1@example.com/", "http://user:pw@localhost/", "http://[::1].example/", "http://[::2]/",
		"http://0.0.0.0/", "http://10.0.0.1/", "http://127.1/", "http://127.0.0.1:80x/", "http://127.0.0.1:8:9/",
		"http://", "http:///x", "http://127.0.0.1\\@example.com/", "ftp://127.0.0.1/", "HTTP://127.0.0.1/",
		"", "127.0.0.1", "http://128.0.0.1/", "http://localhost./",
	};
	for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
		if (!util_url_private(yes[i]))
			fail_msg("should be private: %s", yes[i]);
	for (size_t i = 0; i < sizeof no / sizeof *no; i++)
		if (util_url_private(no[i]))
			fail_msg("should not be private: %s", no[i]);
}

/* Mask rules and masking.hash_key_file: every malformed rule names its line. */
static void test_masking_sections(void **state)
{
	(void)state;
	char err[512], text[2048];
	const char *db = "databases:\n  app: {host: h, user: u, password: p}\npolicies:\n  - name: m\n";
	char keyfile[] = "/tmp/pgcordon-unit-key-XXXXXX";
	int fd = mkstemp(keyfile);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "0123456789abcdef0123", 20), 20);
	close(fd);
	snprintf(text, sizeof text,
		 "%s    on_masked_predicate: allow\n    mask:\n"
		 "      - {columns: [public.t.ssn, \"*.card\"], method: partial, keep_last: 4}\n"
		 "      - {types: [inet], method: hash}\n"
		 "      - {detect: [credit_card, us_ssn], method: redact}\n"
		 "masking: {hash_key_file: %s}\n",
		 db, keyfile);
	Config *c = load_text(text, err, sizeof err);
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->policies[0].nmask, 3);
	assert_int_equal(c->policies[0].masked_predicate, 2);
	assert_int_equal(c->policies[0].mask[0].ncolumns, 2);
	assert_int_equal(c->policies[0].mask[0].keep_last, 4);
	assert_int_equal(c->policies[0].mask[1].method, MASK_HASH);
	assert_int_equal(c->policies[0].mask[2].detect, DETECT_CREDIT_CARD | DETECT_US_SSN);
	assert_int_equal(c->masking_key_len, 20);
	config_release(c);

	static const struct {
		const char *rule;
		const char *needle;
	} bad[] = {
		{"{columns: [ssn], method: redact}", "is not valid here"},
		{"{columns: [a.b.c.d], method: redact}", "is not valid here"},
		{"{columns: [t.ssn], method: scramble}", "mask.method must be"},
		{"{columns: [t.ssn]}", "needs a method"},
		{"{columns: [t.ssn], types: [inet], method: redact}", "exactly one of"},
		{"{detect: [ssn_like], method: redact}", "is not valid here"},
		{"{detect: [email], method: partial, keep_last: 2}", "can only be redacted"},
		{"{columns: [t.ssn], method: fixed}", "needs a value"},
		{"{columns: [t.ssn], method: partial}", "keep_first or keep_last"},
		{"{columns: [t.ssn], method: partial, keep_last: 1000}", "keep_last"},
		{"{columns: [t.ssn], method: redact, bogus: 1}", "unknown mask rule key"},
		{"{types: [\"inet; drop\"], method: redact}", "is not valid here"},
		{"just-a-string", "must be a mapping"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		snprintf(text, sizeof text, "%s    mask:\n      - %s\n", db, bad[i].rule);
		expect_error(text, 6, bad[i].needle);
	}
	snprintf(text, sizeof text, "%s    on_masked_predicate: sometimes\n", db);
	expect_error(text, 5, "block or allow");
	snprintf(text, sizeof text, "%s    mask: {columns: [t.ssn]}\n", db);
	expect_error(text, 5, "must be a list");
	snprintf(text, sizeof text, "%s    mask:\n      - {columns: [t.ssn], method: hash}\n", db);
	expect_error(text, 1, "needs masking.hash_key_file");
	snprintf(text, sizeof text,
		 "%s    mask:\n      - {columns: [t.ssn], method: hash}\nmasking: {hash_key_file: /nonexistent/key}\n", db);
	expect_error(text, 1, "masking.hash_key_file");
	fd = open(keyfile, O_WRONLY | O_TRUNC);
	assert_int_equal(write(fd, "short", 5), 5);
	close(fd);
	snprintf(text, sizeof text, "%s    mask:\n      - {columns: [t.ssn], method: hash}\nmasking: {hash_key_file: %s}\n",
		 db, keyfile);
	expect_error(text, 1, "at least 16 bytes");
	unlink(keyfile);
}

static void test_identity_sections(void **state)
{
	(void)state;
	char err[512];
	const char *db = "databases:\n  app: {host: h, user: u, password: p}\n";
	char text[2048];
	snprintf(text, sizeof text,
		 "%soidc:\n  - issuer: https://idp.example.com\n    audience: pgcordon\n"
		 "    username_claim: realm.user\n    leeway: 10s\n    algorithms: [ES256, EdDSA]\n"
		 "    aliases: {bob: bob@example.com}\n"
		 "api_keys:\n  ci-bot: {hash: \"sha256:%064d\", groups: [agents], expires: 2027-01-01}\n"
		 "roles:\n  analysts: app_readonly\n  agents: app_agent\n"
		 "limits: {token_grace: 30s}\n",
		 db, 0);
	Config *c = load_text(text, err, sizeof err);
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->noidc, 1);
	assert_string_equal(c->oidc[0].username_claim, "realm.user");
	assert_string_equal(c->oidc[0].groups_claim, "groups");
	assert_int_equal(c->oidc[0].leeway_s, 10);
	assert_int_equal(c->oidc[0].min_refresh_s, 30);
	assert_int_equal(c->oidc[0].alias_from.n, 1);
	const ApiKeyConfig *k = config_find_api_key(c, "ci-bot");
	assert_non_null(k);
	assert_int_equal(k->expires, 1798761600); /* 2027-01-01T00:00:00Z */
	assert_int_equal(c->nroles, 2);
	assert_string_equal(c->roles[1].role, "app_agent");
	assert_int_equal(c->token_grace_s, 30);
	config_release(c);

	const char *o = "oidc:\n  - issuer: https://i\n    audience: a\n";
	snprintf(text, sizeof text, "%soidc:\n  - issuer: http://idp.example.com\n    audience: a\n", db);
	expect_error(text, 4, "https://");
	snprintf(text, sizeof text, "%soidc:\n  - issuer: http://127.0.0.1.idp.example\n    audience: a\n", db);
	expect_error(text, 4, "http:// only on loopback");
	snprintf(text, sizeof text, "%soidc:\n  - issuer: https://i\n    jwks_uri: http://localhost@idp.example/k\n"
		 "    audience: a\n", db);
	expect_error(text, 5, "http:// only on loopback");
	snprintf(text, sizeof text, "%soidc:\n  - issuer: https://i\n", db);
	expect_error(text, 4, "needs issuer and audience");
	snprintf(text, sizeof text, "%s%s    algorithms: [HS256]\n", db, o);
	expect_error(text, 6, "HS256");
	snprintf(text, sizeof text, "%s%s    min_refresh: 500ms\n", db, o);
	expect_error(text, 6, "at least 1s");
	snprintf(text, sizeof text, "%s%s    username_claim: \"a..b\"\n", db, o);
	expect_error(text, 6, "dotted path");
	snprintf(text, sizeof text, "%s%s  - issuer: https://i\n    audience: b\n", db, o);
	expect_error(text, 6, "configured twice");
	snprintf(text, sizeof text, "%sapi_keys:\n  bot: {hash: \"md5:abc\"}\n", db);
	expect_error(text, 4, "sha256:");
	snprintf(text, sizeof text, "%sapi_keys:\n  bot: {groups: [a]}\n", db);
	expect_error(text, 4, "hash is required");
	snprintf(text, sizeof text, "%sapi_keys:\n  bot: {hash: \"sha256:%064d\", expires: someday}\n", db, 0);
	expect_error(text, 4, "expires must be a date");
	snprintf(text, sizeof text, "%sroles:\n  analysts: [a, b]\n", db);
	expect_error(text, 4, "database role names");
	snprintf(text, sizeof text, "%sroles:\n  \"bad group!\": r\n", db);
	expect_error(text, 4, "group names");
}

static void test_duration_and_size(void **state)
{
	(void)state;
	int ms;
	uint64_t n;
	assert_true(config_parse_duration_ms("30s", &ms));
	assert_int_equal(ms, 30000);
	assert_true(config_parse_duration_ms("5m", &ms));
	assert_int_equal(ms, 300000);
	assert_true(config_parse_duration_ms("250ms", &ms));
	assert_int_equal(ms, 250);
	assert_true(config_parse_duration_ms("2", &ms));
	assert_int_equal(ms, 2000);
	assert_false(config_parse_duration_ms("-1s", &ms));
	assert_false(config_parse_duration_ms("1 fortnight", &ms));
	assert_false(config_parse_duration_ms("99999999h", &ms));
	/* strtod takes these; a duration does not (NaN was read as -2147483648 ms) */
	assert_false(config_parse_duration_ms("nan", &ms));
	assert_false(config_parse_duration_ms("NaNs", &ms));
	assert_false(config_parse_duration_ms("inf", &ms));
	assert_false(config_parse_duration_ms("0x10s", &ms));
	assert_false(config_parse_duration_ms(" 5s", &ms));
	assert_false(config_parse_duration_ms("1e3ms", &ms));
	assert_true(config_parse_duration_ms(".5s", &ms));
	assert_int_equal(ms, 500);
	assert_true(config_parse_duration_ms("0." ZEROS_400 "1s", &ms)); /* strtod underflows: 0 ms, not "too long" */
	assert_int_equal(ms, 0);
	assert_false(config_parse_duration_ms("1" ZEROS_400 "s", &ms)); /* strtod overflows to infinity */
	assert_true(config_parse_size("64MiB", &n));
	assert_int_equal(n, 64 * 1024 * 1024);
	assert_true(config_parse_size("4096", &n));
	assert_false(config_parse_size("-5", &n));
	assert_false(config_parse_size("12parsecs", &n));
	assert_false(config_parse_size("99999999999999999999GiB", &n));
}

/* review: and approvals: (docs/approvals.md): settings merge, and each bad value names its line. */
static void test_approvals_sections(void **state)
{
	(void)state;
	const char *db = "databases:\n  app: {host: h, user: u, password: x}\n";
	char text[2048], err[512];
	snprintf(text, sizeof text,
		 "%sadmin: {port: 8500}\napprovals: {approvers: [oncall], wait: 2m, notify: {webhook: \"https://h/x\"}}\n"
		 "policies:\n  - name: a\n    review: [{statements: [copy_to]}, {tables: [public.pay]},\n"
		 "             {estimated_rows_over: 1000}, {returned_rows_over: 50}]\n"
		 "    approvals: {mode: retry, valid_for: 30s, pending_for: 2h}\n",
		 db);
	Config *c = load_text(text, err, sizeof err);
	assert_non_null(c);
	const Policy *p = config_find_policy(c, "a");
	assert_non_null(p);
	assert_true(p->has_review);
	assert_int_equal(p->review_estimated_rows, 1000);
	assert_int_equal(p->review_returned_rows, 50);
	ApprovalSettings a;
	config_approval_settings(c, p, &a);
	assert_int_equal(a.mode, APPROVAL_RETRY);
	assert_int_equal(a.wait_ms, 120000);    /* from the top level */
	assert_int_equal(a.valid_for_ms, 30000); /* the policy's own */
	assert_int_equal(a.pending_for_ms, 2 * 3600 * 1000);
	config_approval_settings(c, NULL, &a);
	assert_int_equal(a.pending_for_ms, APPROVAL_PENDING_FOR_DEFAULT_MS); /* 24h: the default */
	assert_string_equal(a.approvers.items[0], "oncall");
	assert_string_equal(a.webhook, "https://h/x");
	config_release(c);

	const struct {
		const char *rest;
		int line;
		const char *needle;
	} bad[] = {
		{"policies:\n  - name: a\n    review: [{statements: [copy_to]}]\n", 0, "no admin: section"},
		{"admin: {port: 8500}\npolicies:\n  - name: a\n    review: [{tables: [t]}]\n", 0, "no approvals.approvers"},
		{"admin: {port: 8500}\npolicies:\n  - name: a\n    review: [{rows: 5}]\n", 6, "unknown review rule"},
		{"admin: {port: 8500}\npolicies:\n  - name: a\n    review: [{statements: [no_such_kind]}]\n", 6,
		 "is not valid here"},
		{"admin: {port: 8500}\npolicies:\n  - name: a\n    review: [{returned_rows_over: -1}]\n", 6,
		 "must be between"},
		{"admin: {port: 8500}\npolicies:\n  - name: a\n    review: {statements: [copy_to]}\n", 6,
		 "review must be a list"},
		{"approvals: {mode: sometimes}\n", 3, "approvals.mode must be wait or retry"},
		{"approvals: {wait: 10ms}\n", 3, "approvals.wait must be at least 1s"},
		{"approvals: {pending_for: 500ms}\n", 3, "approvals.pending_for must be between 1s and 168h"},
		{"approvals: {pending_for: 169h}\n", 3, "approvals.pending_for must be between 1s and 168h"},
		{"approvals: {pending_for: soon}\n", 3, "approvals.pending_for must be a duration"},
		{"approvals: {pending_for: 600h}\n", 3, "approvals.pending_for is too long: a duration is at most 596h"},
		{"approvals: {pending_for: 1" ZEROS_400 "h}\n", 3, "approvals.pending_for is too long"},
		{"approvals: {pending_for: nan}\n", 3, "approvals.pending_for must be a duration"},
		{"approvals: {approvers: []}\n", 3, "must name at least one group"},
		{"approvals: {notify: {webhook: \"ftp://h/x\"}}\n", 3, "https:// URL (http:// only on loopback)"},
		{"approvals: {notify: {webhook: \"http://hooks.example/x\"}}\n", 3, "http:// only on loopback"},
		{"approvals: {notify: {webhook: \"http://127.0.0.1.example/x\"}}\n", 3, "http:// only on loopback"},
		{"approvals: {notify: {webhook: \"http://127.0.0.1@example/x\"}}\n", 3, "http:// only on loopback"},
		{"approvals: {notify: {email: x}}\n", 3, "unknown key \"email\""},
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		snprintf(text, sizeof text, "%s%s", db, bad[i].rest);
		if (bad[i].line) {
			expect_error(text, bad[i].line, bad[i].needle);
		} else {
			/* Whole-config checks name the first line. */
			c = load_text(text, err, sizeof err);
			if (c)
				config_release(c);
			assert_null(c);
			assert_non_null(strstr(err, bad[i].needle));
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full_contract),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_errors_name_the_line),
		cmocka_unit_test(test_masking_sections),
		cmocka_unit_test(test_identity_sections),
		cmocka_unit_test(test_audit_and_admin_sections),
		cmocka_unit_test(test_duration_and_size),
		cmocka_unit_test(test_approvals_sections),
		cmocka_unit_test(test_private_urls),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
