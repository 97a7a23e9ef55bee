/* Configuration loading: YAML document → validated Config snapshot, with line numbers in errors. */
#include "config/config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>
#include <yaml.h>

#include "core/log.h"
#include "core/util.h"
#include "policy/inspect.h"
#include "auth/jwt.h"
#include <time.h>

typedef struct {
	yaml_document_t *doc;
	const char *path;
	char *err;
	size_t errlen;
	bool failed;
	bool skip_secrets; /* tools that only read the audit trail need no database password */
} Loader;

static bool fail_at(Loader *ld, const yaml_node_t *node, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static bool fail_at(Loader *ld, const yaml_node_t *node, const char *fmt, ...)
{
	if (ld->failed)
		return false;
	ld->failed = true;
	int n = snprintf(ld->err, ld->errlen, "%s:%lu: ", ld->path,
			 node ? (unsigned long)node->start_mark.line + 1 : 1UL);
	if (n < 0 || (size_t)n >= ld->errlen)
		return false;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ld->err + n, ld->errlen - n, fmt, ap);
	va_end(ap);
	return false;
}

static yaml_node_t *node_at(Loader *ld, int id) { return yaml_document_get_node(ld->doc, id); }

static const char *scalar(const yaml_node_t *n)
{
	return n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static bool expect_mapping(Loader *ld, const yaml_node_t *n, const char *what)
{
	if (n->type != YAML_MAPPING_NODE)
		return fail_at(ld, n, "%s must be a mapping", what);
	return true;
}

static bool get_string(Loader *ld, const yaml_node_t *n, const char *key, char **out)
{
	const char *v = scalar(n);
	if (!v)
		return fail_at(ld, n, "%s must be a string", key);
	free(*out);
	*out = xstrdup(v);
	return true;
}

static bool get_int(Loader *ld, const yaml_node_t *n, const char *key, long min, long max, int *out)
{
	const char *v = scalar(n);
	char *end;
	if (!v)
		return fail_at(ld, n, "%s must be a number", key);
	errno = 0;
	long x = strtol(v, &end, 10);
	if (errno || end == v || *end)
		return fail_at(ld, n, "%s must be a number, not \"%s\"", key, v);
	if (x < min || x > max)
		return fail_at(ld, n, "%s must be between %ld and %ld", key, min, max);
	*out = (int)x;
	return true;
}

typedef enum { DURATION_OK, DURATION_BAD, DURATION_TOO_LONG } DurationParse;
static DurationParse parse_duration(const char *s, int *out_ms);

static bool get_duration(Loader *ld, const yaml_node_t *n, const char *key, int *out)
{
	const char *v = scalar(n);
	DurationParse r = v ? parse_duration(v, out) : DURATION_BAD;
	if (r == DURATION_TOO_LONG)
		return fail_at(ld, n, "%s is too long: a duration is at most 596h", key);
	if (r != DURATION_OK)
		return fail_at(ld, n, "%s must be a duration like 500ms, 30s, 5m", key);
	return true;
}

/* Each section handler sees one key/value pair and returns false on error. */
typedef bool (*KeyHandler)(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *val);

static bool walk_mapping(Loader *ld, Config *c, void *obj, yaml_node_t *map, const char *what,
			 KeyHandler h)
{
	if (!expect_mapping(ld, map, what))
		return false;
	for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node_at(ld, p->key), *v = node_at(ld, p->value);
		const char *key = scalar(k);
		if (!key)
			return fail_at(ld, k, "keys in %s must be strings", what);
		for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
			const char *prev = scalar(node_at(ld, q->key));
			if (prev && strcmp(prev, key) == 0)
				return fail_at(ld, k, "duplicate key \"%s\" in %s", key, what);
		}
		if (!h(ld, c, obj, key, v))
			return fail_at(ld, k, "unknown key \"%s\" in %s", key, what);
	}
	return !ld->failed;
}

/* A handler returns false without setting ld->failed for an unknown key. */

static bool on_listen(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)obj;
	if (strcmp(key, "address") == 0)
		return get_string(ld, v, "listen.address", &c->listen_address) || true;
	if (strcmp(key, "port") == 0)
		return get_int(ld, v, "listen.port", 0, 65535, &c->listen_port) || true;
	if (strcmp(key, "workers") == 0)
		return get_int(ld, v, "listen.workers", 1, 256, &c->workers) || true;
	return false;
}

static bool on_tls(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)obj;
	if (strcmp(key, "mode") == 0) {
		const char *m = scalar(v);
		if (m && strcmp(m, "disable") == 0)
			c->tls_mode = TLS_DISABLE;
		else if (m && strcmp(m, "prefer") == 0)
			c->tls_mode = TLS_PREFER;
		else if (m && strcmp(m, "require") == 0)
			c->tls_mode = TLS_REQUIRE;
		else
			fail_at(ld, v, "tls.mode must be disable, prefer or require");
		return true;
	}
	if (strcmp(key, "cert") == 0)
		return get_string(ld, v, "tls.cert", &c->tls_cert) || true;
	if (strcmp(key, "key") == 0)
		return get_string(ld, v, "tls.key", &c->tls_key) || true;
	return false;
}

static bool load_groups(Loader *ld, UserConfig *u, yaml_node_t *v);
static bool get_bool(Loader *ld, const yaml_node_t *n, const char *key, bool *out);

static bool on_admin_tls(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)obj;
	if (strcmp(key, "cert") == 0)
		return get_string(ld, v, "admin.tls.cert", &c->admin_tls_cert) || true;
	if (strcmp(key, "key") == 0)
		return get_string(ld, v, "admin.tls.key", &c->admin_tls_key) || true;
	return false;
}

static bool on_admin(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)obj;
	if (strcmp(key, "auditors") == 0) {
		UserConfig tmp = {0};
		load_groups(ld, &tmp, v);
		c->admin_auditors = tmp.groups;
		c->nadmin_auditors = tmp.ngroups;
		return true;
	}
	if (strcmp(key, "address") == 0)
		return get_string(ld, v, "admin.address", &c->admin_address) || true;
	if (strcmp(key, "mcp") == 0)
		return get_bool(ld, v, "admin.mcp", &c->admin_mcp) || true;
	if (strcmp(key, "port") == 0)
		return get_int(ld, v, "admin.port", 0, 65535, &c->admin_port) || true;
	if (strcmp(key, "url") == 0) {
		if (!get_string(ld, v, "admin.url", &c->admin_url))
			return true;
		size_t n = strlen(c->admin_url);
		bool printable = true;
		for (size_t i = 0; i < n; i++)
			printable = printable && c->admin_url[i] > ' ' && c->admin_url[i] < 127;
		if (n > 200 || !printable ||
		    (strncmp(c->admin_url, "http://", 7) != 0 && strncmp(c->admin_url, "https://", 8) != 0))
			fail_at(ld, v, "admin.url must be an http:// or https:// URL of at most 200 characters, no spaces");
		while (n > 8 && c->admin_url[n - 1] == '/')
			c->admin_url[--n] = 0; /* notices append /api/... */
		return true;
	}
	if (strcmp(key, "tls") == 0) {
		if (walk_mapping(ld, c, NULL, v, "admin.tls", on_admin_tls) && (!c->admin_tls_cert || !c->admin_tls_key))
			fail_at(ld, v, "admin.tls needs both cert and key");
		return true;
	}
	return false;
}

/* A size like 64KiB from min to max bytes; else the error `range` (which says the bounds). */
static bool get_size(Loader *ld, const yaml_node_t *n, uint64_t min, uint64_t max, const char *range, uint64_t *out)
{
	const char *s = scalar(n);
	uint64_t size;
	if (!s || !config_parse_size(s, &size) || size < min || size > max)
		return fail_at(ld, n, "%s", range);
	*out = size;
	return true;
}

static bool on_limits(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)obj;
	if (strcmp(key, "max_client_conn") == 0)
		return get_int(ld, v, "limits.max_client_conn", 1, 1000000, &c->max_client_conn) || true;
	if (strcmp(key, "max_message_size") == 0) {
		uint64_t size;
		if (get_size(ld, v, 1024, 1024ULL * 1024 * 1024, "limits.max_message_size must be a size between 1KiB and 1GiB",
			     &size))
			c->max_message_size = (uint32_t)size;
		return true;
	}
	if (strcmp(key, "max_statement_size") == 0) {
		uint64_t size;
		if (get_size(ld, v, 1024, 16ULL * 1024 * 1024,
			     "limits.max_statement_size must be a size between 1KiB and 16MiB", &size))
			c->max_statement_size = (uint32_t)size;
		return true;
	}
	if (strcmp(key, "startup_timeout") == 0)
		return get_duration(ld, v, "limits.startup_timeout", &c->startup_timeout_ms) || true;
	if (strcmp(key, "shutdown_timeout") == 0)
		return get_duration(ld, v, "limits.shutdown_timeout", &c->shutdown_timeout_ms) || true;
	if (strcmp(key, "token_grace") == 0) {
		int ms;
		if (get_duration(ld, v, "limits.token_grace", &ms))
			c->token_grace_s = ms / 1000;
		return true;
	}
	return false;
}

static bool on_log(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)obj;
	if (strcmp(key, "level") == 0) {
		LogLevel l;
		const char *s = scalar(v);
		if (!s || !log_parse_level(s, &l))
			fail_at(ld, v, "log.level must be debug, info, warn or error");
		else
			c->log_level = l;
		return true;
	}
	if (strcmp(key, "decisions") == 0) {
		const char *d = scalar(v);
		if (d && strcmp(d, "all") == 0)
			c->log_all_decisions = true;
		else if (d && strcmp(d, "blocked") == 0)
			c->log_all_decisions = false;
		else
			fail_at(ld, v, "log.decisions must be all or blocked");
		return true;
	}
	return false;
}

static bool on_audit_results(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)obj;
	if (strcmp(key, "rows") == 0)
		return get_int(ld, v, "audit.results.rows", 0, 1000000, &c->audit_rows) || true;
	if (strcmp(key, "bytes") == 0) {
		uint64_t size;
		if (get_size(ld, v, 0, 64 * 1024 * 1024, "audit.results.bytes must be a size up to 64MiB", &size))
			c->audit_bytes = (int)size;
		return true;
	}
	return false;
}

/* Picks one of two words for a flag; anything else is an error naming both. */
static void get_choice(Loader *ld, yaml_node_t *v, const char *key, const char *yes, const char *no, bool *out)
{
	const char *s = scalar(v);
	if (s && strcmp(s, yes) == 0)
		*out = true;
	else if (s && strcmp(s, no) == 0)
		*out = false;
	else
		fail_at(ld, v, "%s must be %s or %s", key, no, yes);
}

static bool on_audit(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	if (strcmp(key, "store") == 0) {
		if (!get_string(ld, v, "audit.store", &c->audit_store))
			return true;
		if (strncmp(c->audit_store, "sqlite:", 7) != 0 && strncmp(c->audit_store, "postgresql://", 13) != 0 &&
		    strncmp(c->audit_store, "postgres://", 11) != 0)
			fail_at(ld, v, "audit.store must be sqlite:PATH or postgresql://...");
		else if (strcmp(c->audit_store, "sqlite:") == 0)
			fail_at(ld, v, "audit.store sqlite: needs a file path");
		return true;
	}
	if (strcmp(key, "key_file") == 0)
		return get_string(ld, v, "audit.key_file", &c->audit_key_file) || true;
	if (strcmp(key, "node") == 0) {
		if (get_string(ld, v, "audit.node", &c->audit_node) && !config_valid_name(c->audit_node))
			fail_at(ld, v, "audit.node must be 1-63 letters, digits, _ - . @");
		return true;
	}
	if (strcmp(key, "durability") == 0) {
		get_choice(ld, v, "audit.durability", "strict", "default", &c->audit_strict);
		return true;
	}
	if (strcmp(key, "on_failure") == 0) {
		get_choice(ld, v, "audit.on_failure", "continue", "refuse", &c->audit_continue);
		return true;
	}
	if (strcmp(key, "retention") == 0) {
		const char *s = scalar(v);
		if (!s || !config_parse_period_s(s, &c->audit_retention_s) || c->audit_retention_s < 1)
			fail_at(ld, v, "audit.retention must be a period like 90d, 12h, 30m or 45s");
		return true;
	}
	if (strcmp(key, "max_pending") == 0) {
		get_size(ld, v, 1024 * 1024, 64ULL * 1024 * 1024 * 1024, "audit.max_pending must be a size from 1MiB to 64GiB",
			 &c->audit_max_pending);
		return true;
	}
	if (strcmp(key, "store_timeout") == 0) {
		if (get_duration(ld, v, "audit.store_timeout", &c->audit_store_timeout_ms) &&
		    (c->audit_store_timeout_ms < 500 || c->audit_store_timeout_ms > 600000))
			fail_at(ld, v, "audit.store_timeout must be from 500ms to 10m");
		return true;
	}
	if (strcmp(key, "flush_interval") == 0) {
		if (get_duration(ld, v, "audit.flush_interval", &c->audit_flush_interval_ms) &&
		    (c->audit_flush_interval_ms < 5 || c->audit_flush_interval_ms > 1000))
			fail_at(ld, v, "audit.flush_interval must be from 5ms to 1s");
		return true;
	}
	if (strcmp(key, "max_text_size") == 0) {
		uint64_t size;
		if (get_size(ld, v, 1024, 1024ULL * 1024 * 1024, "audit.max_text_size must be a size from 1KiB to 1GiB",
			     &size))
			c->audit_text_max = (size_t)size;
		return true;
	}
	if (strcmp(key, "results") == 0)
		return walk_mapping(ld, c, obj, v, "audit.results", on_audit_results) || true;
	return false;
}

static bool on_database(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)c;
	DatabaseConfig *d = obj;
	if (strcmp(key, "host") == 0)
		return get_string(ld, v, "host", &d->host) || true;
	if (strcmp(key, "port") == 0)
		return get_int(ld, v, "port", 1, 65535, &d->port) || true;
	if (strcmp(key, "dbname") == 0)
		return get_string(ld, v, "dbname", &d->dbname) || true;
	if (strcmp(key, "user") == 0)
		return get_string(ld, v, "user", &d->user) || true;
	if (strcmp(key, "sslrootcert") == 0)
		return get_string(ld, v, "sslrootcert", &d->sslrootcert) || true;
	if (strcmp(key, "password") == 0 || strcmp(key, "password_env") == 0 ||
	    strcmp(key, "password_file") == 0) {
		const char *s = scalar(v);
		if (!s)
			return fail_at(ld, v, "%s must be a string", key) || true;
		if (d->password)
			return fail_at(ld, v, "only one of password, password_env, password_file may be set") || true;
		if (strcmp(key, "password") == 0 || ld->skip_secrets) {
			d->password = xstrdup(ld->skip_secrets ? "" : s);
		} else if (strcmp(key, "password_env") == 0) {
			const char *e = getenv(s);
			if (!e)
				return fail_at(ld, v, "password_env: environment variable %s is not set", s) || true;
			d->password = xstrdup(e);
		} else {
			char ferr[256];
			d->password = util_read_file(s, 64 * 1024, ferr, sizeof ferr);
			if (!d->password)
				return fail_at(ld, v, "password_file: %s", ferr) || true;
			/* A trailing newline is an editor's artefact, not part of the secret. */
			size_t n = strlen(d->password);
			while (n > 0 && (d->password[n - 1] == '\n' || d->password[n - 1] == '\r'))
				d->password[--n] = 0;
		}
		return true;
	}
	if (strcmp(key, "sslmode") == 0) {
		const char *m = scalar(v);
		if (m && strcmp(m, "disable") == 0)
			d->sslmode = SSLMODE_DISABLE;
		else if (m && strcmp(m, "require") == 0)
			d->sslmode = SSLMODE_REQUIRE;
		else if (m && strcmp(m, "verify-full") == 0)
			d->sslmode = SSLMODE_VERIFY_FULL;
		else
			fail_at(ld, v, "sslmode must be disable, require or verify-full");
		return true;
	}
	return false;
}

bool config_valid_name(const char *s)
{
	if (!*s || strlen(s) > 63)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.' && *s != '@')
			return false;
	return true;
}

bool config_socket_path(const DatabaseConfig *d, char *out, size_t n)
{
	int len = snprintf(out, n, "%s/.s.PGSQL.%d", d->host, d->port);
	return len >= 0 && (size_t)len < n;
}

/*
 * A host starting with '/' is the directory of the server's Unix-domain socket, as in libpq.
 * libpq uses no TLS on such a socket whatever sslmode says; here a sslmode that asks for TLS
 * is refused, rather than silently not applied.
 */
static bool check_socket_dir(Loader *ld, yaml_node_t *v, const DatabaseConfig *d)
{
	if (d->sslmode != SSLMODE_DISABLE)
		return fail_at(ld, v,
			       "database \"%s\": host %s is a Unix-domain socket directory, where TLS does not "
			       "apply: set sslmode: disable (or leave it out)",
			       d->name, d->host);
	char path[sizeof((struct sockaddr_un *)0)->sun_path];
	if (!config_socket_path(d, path, sizeof path))
		return fail_at(ld, v, "database \"%s\": the socket path %s/.s.PGSQL.%d is longer than %zu bytes",
			       d->name, d->host, d->port, sizeof path - 1);
	return true;
}

static bool load_databases(Loader *ld, Config *c, yaml_node_t *map)
{
	if (!expect_mapping(ld, map, "databases"))
		return false;
	int n = (int)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
	c->databases = xcalloc(n ? n : 1, sizeof *c->databases);
	for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node_at(ld, p->key), *v = node_at(ld, p->value);
		const char *name = scalar(k);
		if (!name || !config_valid_name(name))
			return fail_at(ld, k, "database names must be 1-63 letters, digits, _ - . @");
		if (config_find_database(c, name))
			return fail_at(ld, k, "database \"%s\" is defined twice", name);
		DatabaseConfig *d = &c->databases[c->ndatabases++];
		d->name = xstrdup(name);
		d->port = 5432;
		d->sslmode = SSLMODE_DISABLE;
		if (!walk_mapping(ld, c, d, v, "a database entry", on_database))
			return false;
		if (!d->host)
			return fail_at(ld, v, "database \"%s\": host is required", name);
		if (!d->user)
			return fail_at(ld, v, "database \"%s\": user is required", name);
		if (!d->dbname)
			d->dbname = xstrdup(name);
		if (d->sslmode == SSLMODE_VERIFY_FULL && !d->sslrootcert)
			return fail_at(ld, v, "database \"%s\": sslmode verify-full needs sslrootcert", name);
		if (config_host_is_socket_dir(d->host) && !check_socket_dir(ld, v, d))
			return false;
	}
	return true;
}

static bool load_groups(Loader *ld, UserConfig *u, yaml_node_t *v)
{
	if (v->type != YAML_SEQUENCE_NODE)
		return fail_at(ld, v, "groups must be a list");
	int n = (int)(v->data.sequence.items.top - v->data.sequence.items.start);
	u->groups = xcalloc(n ? n : 1, sizeof(char *));
	for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
		yaml_node_t *g = node_at(ld, *it);
		if (!scalar(g) || !config_valid_name(scalar(g)))
			return fail_at(ld, g, "group names must be 1-63 letters, digits, _ - . @");
		u->groups[u->ngroups++] = xstrdup(scalar(g));
	}
	return true;
}

static bool on_user(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)c;
	UserConfig *u = obj;
	if (strcmp(key, "password") == 0) {
		const char *s = scalar(v);
		if (!s || strncmp(s, "SCRAM-SHA-256$", 14) != 0)
			fail_at(ld, v, "password must be a SCRAM-SHA-256 verifier (see pgcordon passwd), never plaintext");
		else
			u->verifier = xstrdup(s);
		return true;
	}
	if (strcmp(key, "groups") == 0)
		return load_groups(ld, u, v) || true;
	return false;
}

static bool load_users(Loader *ld, Config *c, yaml_node_t *map)
{
	if (!expect_mapping(ld, map, "users"))
		return false;
	int n = (int)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
	c->users = xcalloc(n ? n : 1, sizeof *c->users);
	for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node_at(ld, p->key), *v = node_at(ld, p->value);
		const char *name = scalar(k);
		if (!name || !config_valid_name(name))
			return fail_at(ld, k, "user names must be 1-63 letters, digits, _ - . @");
		if (config_find_user(c, name))
			return fail_at(ld, k, "user \"%s\" is defined twice", name);
		UserConfig *u = &c->users[c->nusers++];
		u->name = xstrdup(name);
		if (!walk_mapping(ld, c, u, v, "a user entry", on_user))
			return false;
		if (!u->verifier)
			return fail_at(ld, v, "user \"%s\": password (a SCRAM-SHA-256 verifier) is required", name);
	}
	return true;
}

/* ---- policies ---- */

static void free_name_list(NameList *l)
{
	for (int i = 0; i < l->n; i++)
		free(l->items[i]);
	free(l->items);
}

static bool load_name_list(Loader *ld, yaml_node_t *v, const char *what, NameList *out,
			   bool (*valid)(const char *))
{
	if (v->type != YAML_SEQUENCE_NODE)
		return fail_at(ld, v, "%s must be a list", what);
	int n = (int)(v->data.sequence.items.top - v->data.sequence.items.start);
	out->items = xcalloc(n ? n : 1, sizeof(char *));
	for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
		yaml_node_t *item = node_at(ld, *it);
		const char *text = scalar(item);
		bool ok = text && *text && (!valid || valid(text));
		if (!ok) {
			if (!text || !*text)
				fail_at(ld, item, "%s: entries must be non-empty strings", what);
			else
				fail_at(ld, item, "%s: \"%s\" is not valid here", what, text);
			free_name_list(out); /* nothing half-loaded is left behind */
			*out = (NameList){0};
			return false;
		}
		out->items[out->n++] = xstrdup(text);
	}
	return true;
}

static bool valid_table_pattern(const char *p)
{
	/* "*", "schema.*", "schema.table", "table"; no empty parts. */
	if (strcmp(p, "*") == 0)
		return true;
	int dots = 0;
	for (const char *q = p; *q; q++)
		if (*q == '.')
			dots++;
	return dots <= 1 && p[0] != '.' && p[strlen(p) - 1] != '.' && !strstr(p, "..");
}

static bool valid_function_name(const char *p)
{
	for (const char *q = p; *q; q++)
		if (!isalnum((unsigned char)*q) && *q != '_' && *q != '.' && *q != '$')
			return false;
	return true;
}

static bool get_bool(Loader *ld, const yaml_node_t *n, const char *key, bool *out)
{
	const char *v = scalar(n);
	if (v && (strcmp(v, "true") == 0 || strcmp(v, "yes") == 0 || strcmp(v, "on") == 0))
		*out = true;
	else if (v && (strcmp(v, "false") == 0 || strcmp(v, "no") == 0 || strcmp(v, "off") == 0))
		*out = false;
	else
		return fail_at(ld, n, "%s must be true or false", key);
	return true;
}

static bool on_match(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)c;
	Policy *p = obj;
	if (strcmp(key, "groups") == 0)
		return load_name_list(ld, v, "match.groups", &p->match_groups, config_valid_name) || true;
	if (strcmp(key, "users") == 0)
		return load_name_list(ld, v, "match.users", &p->match_users, config_valid_name) || true;
	if (strcmp(key, "databases") == 0)
		return load_name_list(ld, v, "match.databases", &p->match_databases, config_valid_name) || true;
	return false;
}

static bool on_access(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)c;
	Policy *p = obj;
	if (strcmp(key, "read_only") == 0)
		return get_bool(ld, v, "access.read_only", &p->read_only) || true;
	if (strcmp(key, "tables") == 0) {
		p->has_tables = true;
		return load_name_list(ld, v, "access.tables", &p->tables, valid_table_pattern) || true;
	}
	return false;
}

static bool on_limits_policy(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)c;
	Policy *p = obj;
	if (strcmp(key, "max_rows") == 0) {
		int rows;
		if (get_int(ld, v, "limits.max_rows", 1, INT_MAX, &rows))
			p->max_rows = rows;
		return true;
	}
	if (strcmp(key, "statement_timeout") == 0) {
		if (get_duration(ld, v, "limits.statement_timeout", &p->statement_timeout_ms) &&
		    p->statement_timeout_ms < 1)
			fail_at(ld, v, "limits.statement_timeout must be at least 1ms");
		return true;
	}
	return false;
}

static bool known_kind(const char *k) { return inspect_known_kind(k); }

static bool load_block_rule(Loader *ld, Policy *p, yaml_node_t *rule)
{
	if (rule->type != YAML_MAPPING_NODE)
		return fail_at(ld, rule, "each block rule must be a mapping such as {statements: [...]}");
	for (yaml_node_pair_t *pr = rule->data.mapping.pairs.start; pr < rule->data.mapping.pairs.top; pr++) {
		yaml_node_t *k = node_at(ld, pr->key), *v = node_at(ld, pr->value);
		const char *key = scalar(k);
		if (!key)
			return fail_at(ld, k, "block rule keys must be strings");
		if (strcmp(key, "statements") == 0) {
			NameList l = {0};
			bool ok = load_name_list(ld, v, "block.statements", &l, known_kind);
			for (int i = 0; i < l.n; i++) {
				p->block_statements.items = xrealloc(p->block_statements.items,
								     (size_t)(p->block_statements.n + 1) * sizeof(char *));
				p->block_statements.items[p->block_statements.n++] = l.items[i];
			}
			free(l.items);
			if (!ok)
				return false;
		} else if (strcmp(key, "functions") == 0) {
			NameList l = {0};
			bool ok = load_name_list(ld, v, "block.functions", &l, valid_function_name);
			for (int i = 0; i < l.n; i++) {
				for (char *q = l.items[i]; *q; q++)
					*q = (char)tolower((unsigned char)*q);
				p->block_functions.items = xrealloc(p->block_functions.items,
								    (size_t)(p->block_functions.n + 1) * sizeof(char *));
				p->block_functions.items[p->block_functions.n++] = l.items[i];
			}
			free(l.items);
			if (!ok)
				return false;
		} else if (strcmp(key, "delete_without_where") == 0) {
			if (!get_bool(ld, v, "block.delete_without_where", &p->delete_without_where))
				return false;
		} else if (strcmp(key, "update_without_where") == 0) {
			if (!get_bool(ld, v, "block.update_without_where", &p->update_without_where))
				return false;
		} else if (strcmp(key, "select_without_where") == 0) {
			if (!load_name_list(ld, v, "block.select_without_where", &p->select_without_where,
					    valid_table_pattern))
				return false;
		} else {
			return fail_at(ld, k, "unknown block rule \"%s\" (statements, functions, delete_without_where, "
					      "update_without_where, select_without_where)", key);
		}
	}
	return true;
}

/* ---- review: and approvals: (docs/approvals.md) ---- */

static void append_names(NameList *to, NameList *from)
{
	for (int i = 0; i < from->n; i++) {
		to->items = xrealloc(to->items, (size_t)(to->n + 1) * sizeof(char *));
		to->items[to->n++] = from->items[i];
	}
	free(from->items);
	*from = (NameList){0};
}

static bool get_row_count(Loader *ld, yaml_node_t *v, const char *key, int64_t *out)
{
	int n;
	if (!get_int(ld, v, key, 1, INT_MAX, &n))
		return false;
	*out = n;
	return true;
}

static bool load_review_rule(Loader *ld, Policy *p, yaml_node_t *rule)
{
	if (rule->type != YAML_MAPPING_NODE)
		return fail_at(ld, rule, "each review rule must be a mapping such as {statements: [copy_to]}");
	for (yaml_node_pair_t *pr = rule->data.mapping.pairs.start; pr < rule->data.mapping.pairs.top; pr++) {
		yaml_node_t *k = node_at(ld, pr->key), *v = node_at(ld, pr->value);
		const char *key = scalar(k);
		if (!key)
			return fail_at(ld, k, "review rule keys must be strings");
		NameList l = {0};
		if (strcmp(key, "statements") == 0) {
			bool ok = load_name_list(ld, v, "review.statements", &l, known_kind);
			append_names(&p->review_statements, &l);
			if (!ok)
				return false;
		} else if (strcmp(key, "tables") == 0) {
			bool ok = load_name_list(ld, v, "review.tables", &l, valid_table_pattern);
			append_names(&p->review_tables, &l);
			if (!ok)
				return false;
		} else if (strcmp(key, "estimated_rows_over") == 0) {
			if (!get_row_count(ld, v, "review.estimated_rows_over", &p->review_estimated_rows))
				return false;
		} else if (strcmp(key, "returned_rows_over") == 0) {
			if (!get_row_count(ld, v, "review.returned_rows_over", &p->review_returned_rows))
				return false;
		} else {
			return fail_at(ld, k, "unknown review rule \"%s\" (statements, tables, estimated_rows_over, "
					      "returned_rows_over)", key);
		}
	}
	p->has_review = true;
	return true;
}

static bool on_notify(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)c;
	ApprovalSettings *a = obj;
	if (strcmp(key, "webhook") == 0) {
		/* The messages carry statements and who asked: not in clear across a network. */
		if (get_string(ld, v, "approvals.notify.webhook", &a->webhook) && !util_url_private(a->webhook))
			fail_at(ld, v, "approvals.notify.webhook must be an https:// URL (http:// only on loopback)");
		return true;
	}
	return false;
}

static bool on_approvals(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	ApprovalSettings *a = obj;
	if (strcmp(key, "approvers") == 0) {
		free_name_list(&a->approvers);
		a->approvers = (NameList){0};
		a->has_approvers = true;
		if (load_name_list(ld, v, "approvals.approvers", &a->approvers, config_valid_name) && a->approvers.n == 0)
			fail_at(ld, v, "approvals.approvers must name at least one group");
		return true;
	}
	if (strcmp(key, "mode") == 0) {
		const char *m = scalar(v);
		if (m && strcmp(m, "wait") == 0)
			a->mode = APPROVAL_WAIT;
		else if (m && strcmp(m, "retry") == 0)
			a->mode = APPROVAL_RETRY;
		else
			fail_at(ld, v, "approvals.mode must be wait or retry");
		return true;
	}
	if (strcmp(key, "wait") == 0) {
		if (get_duration(ld, v, "approvals.wait", &a->wait_ms) && a->wait_ms < 1000)
			fail_at(ld, v, "approvals.wait must be at least 1s");
		return true;
	}
	if (strcmp(key, "valid_for") == 0) {
		if (get_duration(ld, v, "approvals.valid_for", &a->valid_for_ms) && a->valid_for_ms < 1000)
			fail_at(ld, v, "approvals.valid_for must be at least 1s");
		return true;
	}
	if (strcmp(key, "pending_for") == 0) {
		if (get_duration(ld, v, "approvals.pending_for", &a->pending_for_ms) &&
		    (a->pending_for_ms < 1000 || a->pending_for_ms > APPROVAL_PENDING_FOR_MAX_MS))
			fail_at(ld, v, "approvals.pending_for must be between 1s and 168h (7 days)");
		return true;
	}
	if (strcmp(key, "notify") == 0)
		return walk_mapping(ld, c, a, v, "approvals.notify", on_notify) || true;
	return false;
}

static void free_approval_settings(ApprovalSettings *a)
{
	free_name_list(&a->approvers);
	free(a->webhook);
}

const Policy *config_find_policy(const Config *c, const char *name)
{
	for (int i = 0; i < c->npolicies; i++)
		if (strcmp(c->policies[i].name, name) == 0)
			return &c->policies[i];
	return NULL;
}

void config_approval_settings(const Config *c, const Policy *policy, ApprovalSettings *out)
{
	const ApprovalSettings *top = &c->approvals, *own = policy ? &policy->approvals : top;
	*out = *top;
	if (own->has_approvers) {
		out->has_approvers = true;
		out->approvers = own->approvers;
	}
	if (own->mode)
		out->mode = own->mode;
	if (own->wait_ms)
		out->wait_ms = own->wait_ms;
	if (own->valid_for_ms)
		out->valid_for_ms = own->valid_for_ms;
	if (own->pending_for_ms)
		out->pending_for_ms = own->pending_for_ms;
	if (own->webhook)
		out->webhook = own->webhook;
	if (!out->mode)
		out->mode = APPROVAL_WAIT;
	if (!out->wait_ms)
		out->wait_ms = 5 * 60 * 1000;
	if (!out->valid_for_ms)
		out->valid_for_ms = 15 * 60 * 1000;
	if (!out->pending_for_ms)
		out->pending_for_ms = APPROVAL_PENDING_FOR_DEFAULT_MS;
}

static bool valid_column_pattern(const char *p)
{
	/* schema.table.column or table.column (any schema); '*' matches any run of characters */
	int dots = 0;
	for (const char *q = p; *q; q++)
		if (*q == '.')
			dots++;
	return (dots == 1 || dots == 2) && p[0] != '.' && p[strlen(p) - 1] != '.' && !strstr(p, "..");
}

static bool valid_type_name(const char *p)
{
	for (const char *q = p; *q; q++)
		if (!isalnum((unsigned char)*q) && *q != '_' && *q != ' ' && *q != '"' && *q != '.')
			return false;
	return true;
}

static bool valid_detector(const char *p) { return mask_detector_from_name(p) != 0; }

static bool load_mask_rule(Loader *ld, MaskRule *r, yaml_node_t *rule)
{
	if (rule->type != YAML_MAPPING_NODE)
		return fail_at(ld, rule, "each mask rule must be a mapping such as {columns: [...], method: redact}");
	bool has_method = false;
	int kinds = 0;
	for (yaml_node_pair_t *pr = rule->data.mapping.pairs.start; pr < rule->data.mapping.pairs.top; pr++) {
		yaml_node_t *k = node_at(ld, pr->key), *v = node_at(ld, pr->value);
		const char *key = scalar(k);
		if (!key)
			return fail_at(ld, k, "mask rule keys must be strings");
		NameList l = {0};
		if (strcmp(key, "columns") == 0) {
			kinds++;
			if (!load_name_list(ld, v, "mask.columns (schema.table.column, * as a wildcard)", &l, valid_column_pattern))
				return false;
			NameList old = {r->columns, r->ncolumns}; /* a key given twice: the last one counts */
			free_name_list(&old);
			r->columns = l.items;
			r->ncolumns = l.n;
		} else if (strcmp(key, "types") == 0) {
			kinds++;
			if (!load_name_list(ld, v, "mask.types", &l, valid_type_name))
				return false;
			NameList old = {r->types, r->ntypes};
			free_name_list(&old);
			r->types = l.items;
			r->ntypes = l.n;
		} else if (strcmp(key, "detect") == 0) {
			kinds++;
			if (!load_name_list(ld, v,
					    "mask.detect (credit_card, us_ssn, email, iban, aws_access_key, jwt, private_key)",
					    &l, valid_detector))
				return false;
			for (int i = 0; i < l.n; i++)
				r->detect |= mask_detector_from_name(l.items[i]);
			free_name_list(&l);
		} else if (strcmp(key, "method") == 0) {
			const char *m = scalar(v);
			if (!m || !mask_method_from_name(m, &r->method))
				return fail_at(ld, v, "mask.method must be redact, partial, hash, null, email or fixed");
			has_method = true;
		} else if (strcmp(key, "keep_first") == 0) {
			if (!get_int(ld, v, "mask.keep_first", 0, 64, &r->keep_first))
				return false;
		} else if (strcmp(key, "keep_last") == 0) {
			if (!get_int(ld, v, "mask.keep_last", 0, 64, &r->keep_last))
				return false;
		} else if (strcmp(key, "value") == 0) {
			if (!get_string(ld, v, "mask.value", &r->value))
				return false;
		} else {
			return fail_at(ld, k, "unknown mask rule key \"%s\" (columns, types, detect, method, keep_first, "
					      "keep_last, value)", key);
		}
	}
	if (kinds != 1)
		return fail_at(ld, rule, "a mask rule names exactly one of columns, types or detect");
	if (!has_method)
		return fail_at(ld, rule, "a mask rule needs a method");
	if (r->detect && r->method != MASK_REDACT)
		return fail_at(ld, rule, "detected values can only be redacted (method: redact)");
	if (r->method == MASK_FIXED && !r->value)
		return fail_at(ld, rule, "method fixed needs a value");
	if (r->method == MASK_PARTIAL && r->keep_first + r->keep_last == 0)
		return fail_at(ld, rule, "method partial needs keep_first or keep_last");
	return true;
}

static void free_mask_rules(Policy *p)
{
	for (int i = 0; i < p->nmask; i++) {
		MaskRule *r = &p->mask[i];
		NameList cols = {r->columns, r->ncolumns}, types = {r->types, r->ntypes};
		free_name_list(&cols);
		free_name_list(&types);
		free(r->value);
	}
	free(p->mask);
}

static bool on_policy(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	Policy *p = obj;
	if (strcmp(key, "name") == 0) {
		const char *name = scalar(v);
		if (!name || !config_valid_name(name))
			fail_at(ld, v, "policy names must be 1-63 letters, digits, _ - . @");
		else
			p->name = xstrdup(name);
		return true;
	}
	if (strcmp(key, "match") == 0) {
		p->match_all = false;
		return walk_mapping(ld, c, p, v, "match", on_match) || true;
	}
	if (strcmp(key, "access") == 0)
		return walk_mapping(ld, c, p, v, "access", on_access) || true;
	if (strcmp(key, "limits") == 0)
		return walk_mapping(ld, c, p, v, "a policy's limits", on_limits_policy) || true;
	if (strcmp(key, "mask") == 0) {
		if (v->type != YAML_SEQUENCE_NODE) {
			fail_at(ld, v, "mask must be a list of rules");
			return true;
		}
		free_mask_rules(p); /* mask given twice: the last one counts */
		p->nmask = 0;
		int n = (int)(v->data.sequence.items.top - v->data.sequence.items.start);
		p->mask = xcalloc(n ? n : 1, sizeof *p->mask);
		for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++)
			if (!load_mask_rule(ld, &p->mask[p->nmask++], node_at(ld, *it)))
				return true;
		return true;
	}
	if (strcmp(key, "on_masked_predicate") == 0) {
		const char *m = scalar(v);
		if (m && strcmp(m, "block") == 0)
			p->masked_predicate = 1;
		else if (m && strcmp(m, "allow") == 0)
			p->masked_predicate = 2;
		else
			fail_at(ld, v, "on_masked_predicate must be block or allow");
		return true;
	}
	if (strcmp(key, "review") == 0) {
		if (v->type != YAML_SEQUENCE_NODE) {
			fail_at(ld, v, "review must be a list of rules");
			return true;
		}
		for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++)
			if (!load_review_rule(ld, p, node_at(ld, *it)))
				return true;
		return true;
	}
	if (strcmp(key, "approvals") == 0)
		return walk_mapping(ld, c, &p->approvals, v, "a policy's approvals", on_approvals) || true;
	if (strcmp(key, "block") == 0) {
		if (v->type != YAML_SEQUENCE_NODE) {
			fail_at(ld, v, "block must be a list of rules");
			return true;
		}
		for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++)
			if (!load_block_rule(ld, p, node_at(ld, *it)))
				return true;
		return true;
	}
	return false;
}

static bool load_policies(Loader *ld, Config *c, yaml_node_t *seq)
{
	if (seq->type != YAML_SEQUENCE_NODE)
		return fail_at(ld, seq, "policies must be a list");
	int n = (int)(seq->data.sequence.items.top - seq->data.sequence.items.start);
	c->policies = xcalloc(n ? n : 1, sizeof *c->policies);
	c->has_policies = true;
	for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
		yaml_node_t *pn = node_at(ld, *it);
		Policy *p = &c->policies[c->npolicies++];
		p->match_all = true;
		if (!walk_mapping(ld, c, p, pn, "a policy", on_policy))
			return false;
		if (!p->name)
			return fail_at(ld, pn, "every policy needs a name");
		for (int i = 0; i < c->npolicies - 1; i++)
			if (strcmp(c->policies[i].name, p->name) == 0)
				return fail_at(ld, pn, "policy \"%s\" is defined twice", p->name);
	}
	return true;
}

static void free_policies(Config *c)
{
	for (int i = 0; i < c->npolicies; i++) {
		Policy *p = &c->policies[i];
		free(p->name);
		free_name_list(&p->match_groups);
		free_name_list(&p->match_users);
		free_name_list(&p->match_databases);
		free_name_list(&p->tables);
		free_name_list(&p->block_statements);
		free_name_list(&p->block_functions);
		free_name_list(&p->select_without_where);
		free_name_list(&p->review_statements);
		free_name_list(&p->review_tables);
		free_approval_settings(&p->approvals);
		free_mask_rules(p);
	}
	free(c->policies);
}

/* ---- identity: oidc, api_keys, roles ---- */

static bool valid_claim_path(const char *p)
{
	if (!*p || strlen(p) > 200 || p[0] == '.' || p[strlen(p) - 1] == '.' || strstr(p, ".."))
		return false;
	for (; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '_' && *p != '.' && *p != '-' && *p != ':' && *p != '/')
			return false;
	return true;
}

static bool on_oidc(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)c;
	OidcIssuerConfig *o = obj;
	if (strcmp(key, "issuer") == 0 || strcmp(key, "jwks_uri") == 0) {
		const char *u = scalar(v);
		if (!u || !util_url_private(u))
			fail_at(ld, v, "%s must be an https:// URL (http:// only on loopback)", key);
		else if (strcmp(key, "issuer") == 0)
			o->issuer = xstrdup(u);
		else
			o->jwks_uri = xstrdup(u);
		return true;
	}
	if (strcmp(key, "audience") == 0)
		return get_string(ld, v, "audience", &o->audience) || true;
	if (strcmp(key, "username_claim") == 0 || strcmp(key, "groups_claim") == 0) {
		const char *p = scalar(v);
		if (!p || !valid_claim_path(p))
			fail_at(ld, v, "%s must be a claim name or a dotted path", key);
		else if (key[0] == 'u')
			get_string(ld, v, key, &o->username_claim);
		else
			get_string(ld, v, key, &o->groups_claim);
		return true;
	}
	if (strcmp(key, "leeway") == 0 || strcmp(key, "refresh") == 0 || strcmp(key, "min_refresh") == 0) {
		int ms;
		if (get_duration(ld, v, key, &ms)) {
			if (key[0] == 'l')
				o->leeway_s = ms / 1000;
			else if (ms < 1000)
				fail_at(ld, v, "%s must be at least 1s (it rate-limits requests to the issuer)", key);
			else if (key[0] == 'r')
				o->refresh_s = ms / 1000;
			else
				o->min_refresh_s = ms / 1000;
		}
		return true;
	}
	if (strcmp(key, "algorithms") == 0) {
		NameList l = {0};
		if (load_name_list(ld, v, "algorithms", &l, NULL)) {
			o->algorithms = 0;
			for (int i = 0; i < l.n; i++) {
				unsigned bit = jwt_alg_bit(l.items[i]);
				if (!bit) {
					fail_at(ld, v, "algorithm \"%s\" is not supported (RS256, PS256, ES256, EdDSA)", l.items[i]);
					break;
				}
				o->algorithms |= bit;
			}
		}
		free_name_list(&l);
		return true;
	}
	if (strcmp(key, "aliases") == 0) {
		if (v->type != YAML_MAPPING_NODE) {
			fail_at(ld, v, "aliases must map a startup user name to an identity");
			return true;
		}
		int n = (int)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
		o->alias_from.items = xcalloc(n ? n : 1, sizeof(char *));
		o->alias_to.items = xcalloc(n ? n : 1, sizeof(char *));
		for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++) {
			const char *from = scalar(node_at(ld, p->key)), *to = scalar(node_at(ld, p->value));
			if (!from || !to || !config_valid_name(from)) {
				fail_at(ld, node_at(ld, p->key), "aliases: entries must be name: identity");
				return true;
			}
			o->alias_from.items[o->alias_from.n++] = xstrdup(from);
			o->alias_to.items[o->alias_to.n++] = xstrdup(to);
		}
		return true;
	}
	return false;
}

static bool load_oidc(Loader *ld, Config *c, yaml_node_t *seq)
{
	if (seq->type != YAML_SEQUENCE_NODE)
		return fail_at(ld, seq, "oidc must be a list of issuers");
	int n = (int)(seq->data.sequence.items.top - seq->data.sequence.items.start);
	c->oidc = xcalloc(n ? n : 1, sizeof *c->oidc);
	for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
		yaml_node_t *on = node_at(ld, *it);
		OidcIssuerConfig *o = &c->oidc[c->noidc++];
		o->leeway_s = 30;
		o->algorithms = JWT_ALG_ALL;
		o->refresh_s = 3600;
		o->min_refresh_s = 30;
		if (!walk_mapping(ld, c, o, on, "an oidc issuer", on_oidc))
			return false;
		if (!o->issuer || !o->audience)
			return fail_at(ld, on, "an oidc issuer needs issuer and audience");
		if (!o->username_claim)
			o->username_claim = xstrdup("sub");
		if (!o->groups_claim)
			o->groups_claim = xstrdup("groups");
		for (int i = 0; i < c->noidc - 1; i++)
			if (strcmp(c->oidc[i].issuer, o->issuer) == 0)
				return fail_at(ld, on, "issuer %s is configured twice", o->issuer);
	}
	return true;
}

/* "2027-01-01" or "2027-01-01T12:00:00Z" → unix seconds (UTC). */
static bool parse_date(const char *s, int64_t *out)
{
	struct tm tm = {0};
	const char *end = strptime(s, "%Y-%m-%d", &tm);
	if (!end)
		return false;
	if (*end == 'T' || *end == ' ') {
		end = strptime(end + 1, "%H:%M:%S", &tm);
		if (!end)
			return false;
		if (*end == 'Z')
			end++;
	}
	if (*end)
		return false;
	*out = (int64_t)timegm(&tm);
	return true;
}

static bool on_api_key(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)c;
	ApiKeyConfig *k = obj;
	if (strcmp(key, "hash") == 0) {
		const char *h = scalar(v);
		bool ok = h && strncmp(h, "sha256:", 7) == 0 && strlen(h) == 7 + 64;
		for (size_t i = 7; ok && h[i]; i++)
			ok = isxdigit((unsigned char)h[i]) && !isupper((unsigned char)h[i]);
		if (!ok)
			fail_at(ld, v, "hash must be sha256:<64 lowercase hex> (see pgcordon apikey create)");
		else
			k->hash = xstrdup(h);
		return true;
	}
	if (strcmp(key, "groups") == 0) {
		UserConfig tmp = {0};
		if (load_groups(ld, &tmp, v)) {
			k->groups = tmp.groups;
			k->ngroups = tmp.ngroups;
		} else {
			for (int i = 0; i < tmp.ngroups; i++)
				free(tmp.groups[i]);
			free(tmp.groups);
		}
		return true;
	}
	if (strcmp(key, "expires") == 0) {
		const char *d = scalar(v);
		if (!d || !parse_date(d, &k->expires))
			fail_at(ld, v, "expires must be a date like 2027-01-01 or 2027-01-01T12:00:00Z");
		return true;
	}
	return false;
}

static bool load_api_keys(Loader *ld, Config *c, yaml_node_t *map)
{
	if (!expect_mapping(ld, map, "api_keys"))
		return false;
	int n = (int)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
	c->api_keys = xcalloc(n ? n : 1, sizeof *c->api_keys);
	for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node_at(ld, p->key), *v = node_at(ld, p->value);
		const char *name = scalar(k);
		if (!name || !config_valid_name(name))
			return fail_at(ld, k, "api key names must be 1-63 letters, digits, _ - . @");
		if (config_find_api_key(c, name))
			return fail_at(ld, k, "api key \"%s\" is defined twice", name);
		ApiKeyConfig *a = &c->api_keys[c->napi_keys++];
		a->name = xstrdup(name);
		if (!walk_mapping(ld, c, a, v, "an api key", on_api_key))
			return false;
		if (!a->hash)
			return fail_at(ld, v, "api key \"%s\": hash is required", name);
	}
	return true;
}

static bool load_roles(Loader *ld, Config *c, yaml_node_t *map)
{
	if (!expect_mapping(ld, map, "roles"))
		return false;
	int n = (int)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
	c->roles = xcalloc(n ? n : 1, sizeof *c->roles);
	for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node_at(ld, p->key), *v = node_at(ld, p->value);
		const char *group = scalar(k), *role = scalar(v);
		if (!group || !config_valid_name(group))
			return fail_at(ld, k, "roles: keys are group names");
		if (!role || !config_valid_name(role))
			return fail_at(ld, v, "roles: values are database role names (letters, digits, _ - . @)");
		c->roles[c->nroles].group = xstrdup(group);
		c->roles[c->nroles].role = xstrdup(role);
		c->nroles++;
	}
	return true;
}

static void free_identity(Config *c)
{
	for (int i = 0; i < c->noidc; i++) {
		OidcIssuerConfig *o = &c->oidc[i];
		free(o->issuer);
		free(o->audience);
		free(o->jwks_uri);
		free(o->username_claim);
		free(o->groups_claim);
		free_name_list(&o->alias_from);
		free_name_list(&o->alias_to);
	}
	free(c->oidc);
	for (int i = 0; i < c->napi_keys; i++) {
		free(c->api_keys[i].name);
		free(c->api_keys[i].hash);
		for (int g = 0; g < c->api_keys[i].ngroups; g++)
			free(c->api_keys[i].groups[g]);
		free(c->api_keys[i].groups);
	}
	free(c->api_keys);
	for (int i = 0; i < c->nroles; i++) {
		free(c->roles[i].group);
		free(c->roles[i].role);
	}
	free(c->roles);
}

const ApiKeyConfig *config_find_api_key(const Config *c, const char *name)
{
	for (int i = 0; i < c->napi_keys; i++)
		if (strcmp(c->api_keys[i].name, name) == 0)
			return &c->api_keys[i];
	return NULL;
}

static bool on_masking(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)obj;
	if (strcmp(key, "hash_key_file") == 0)
		return get_string(ld, v, "masking.hash_key_file", &c->masking_key_file) || true;
	return false;
}

static bool on_top(Loader *ld, Config *c, void *obj, const char *key, yaml_node_t *v)
{
	(void)obj;
	if (strcmp(key, "listen") == 0)
		return walk_mapping(ld, c, NULL, v, "listen", on_listen) || true;
	if (strcmp(key, "tls") == 0)
		return walk_mapping(ld, c, NULL, v, "tls", on_tls) || true;
	if (strcmp(key, "admin") == 0) {
		c->admin_enabled = true;
		return walk_mapping(ld, c, NULL, v, "admin", on_admin) || true;
	}
	if (strcmp(key, "limits") == 0)
		return walk_mapping(ld, c, NULL, v, "limits", on_limits) || true;
	if (strcmp(key, "log") == 0)
		return walk_mapping(ld, c, NULL, v, "log", on_log) || true;
	if (strcmp(key, "audit") == 0)
		return walk_mapping(ld, c, NULL, v, "audit", on_audit) || true;
	if (strcmp(key, "masking") == 0)
		return walk_mapping(ld, c, NULL, v, "masking", on_masking) || true;
	if (strcmp(key, "approvals") == 0)
		return walk_mapping(ld, c, &c->approvals, v, "approvals", on_approvals) || true;
	if (strcmp(key, "databases") == 0)
		return load_databases(ld, c, v) || true;
	if (strcmp(key, "users") == 0)
		return load_users(ld, c, v) || true;
	if (strcmp(key, "policies") == 0)
		return load_policies(ld, c, v) || true;
	if (strcmp(key, "oidc") == 0)
		return load_oidc(ld, c, v) || true;
	if (strcmp(key, "api_keys") == 0)
		return load_api_keys(ld, c, v) || true;
	if (strcmp(key, "roles") == 0)
		return load_roles(ld, c, v) || true;
	if (strcmp(key, "default") == 0) {
		const char *d = scalar(v);
		if (d && strcmp(d, "allow") == 0)
			c->default_allow = true;
		else if (d && strcmp(d, "deny") == 0)
			c->default_allow = false;
		else
			fail_at(ld, v, "default must be allow or deny");
		c->default_set = true;
		return true;
	}
	return false;
}

static void config_free(Config *c)
{
	if (!c)
		return;
	for (int i = 0; i < c->ndatabases; i++) {
		DatabaseConfig *d = &c->databases[i];
		free(d->name);
		free(d->host);
		free(d->dbname);
		free(d->user);
		if (d->password)
			util_wipe_free(d->password);
		free(d->sslrootcert);
		if (d->tls_ctx)
			SSL_CTX_free(d->tls_ctx);
	}
	free(c->databases);
	for (int i = 0; i < c->nusers; i++) {
		UserConfig *u = &c->users[i];
		free(u->name);
		free(u->verifier);
		for (int g = 0; g < u->ngroups; g++)
			free(u->groups[g]);
		free(u->groups);
	}
	free(c->users);
	free_policies(c);
	free_approval_settings(&c->approvals);
	free_identity(c);
	if (c->tls_ctx)
		SSL_CTX_free(c->tls_ctx);
	free(c->path);
	free(c->listen_address);
	free(c->tls_cert);
	free(c->tls_key);
	free(c->admin_address);
	free(c->admin_url);
	free(c->admin_tls_cert);
	free(c->admin_tls_key);
	for (int i = 0; i < c->nadmin_auditors; i++)
		free(c->admin_auditors[i]);
	free(c->admin_auditors);
	free(c->audit_store);
	free(c->audit_key_file);
	free(c->masking_key_file);
	util_wipe_free((char *)c->masking_key);
	free(c->audit_node);
	free(c);
}

static Config *load(const char *path, bool skip_secrets, char *err, size_t errlen);

Config *config_load(const char *path, char *err, size_t errlen) { return load(path, false, err, errlen); }
Config *config_load_without_secrets(const char *path, char *err, size_t errlen) { return load(path, true, err, errlen); }

static Config *load(const char *path, bool skip_secrets, char *err, size_t errlen)
{
	static uint64_t next_generation = 1;
	FILE *f = fopen(path, "rb");
	if (!f) {
		snprintf(err, errlen, "%s:1: cannot open: %s", path, strerror(errno));
		return NULL;
	}
	yaml_parser_t parser;
	yaml_document_t doc;
	Config *c = xcalloc(1, sizeof *c);
	Loader ld = {.doc = &doc, .path = path, .err = err, .errlen = errlen, .skip_secrets = skip_secrets};

	c->refcount = 1;
	c->path = xstrdup(path);
	c->listen_address = xstrdup("127.0.0.1");
	c->listen_port = 6432;
	c->workers = util_cpu_count();
	c->tls_mode = TLS_DISABLE;
	c->admin_address = xstrdup(ADMIN_DEFAULT_ADDRESS);
	c->admin_port = ADMIN_DEFAULT_PORT;
	c->max_client_conn = 1000;
	c->max_message_size = 64 * 1024 * 1024;
	c->max_statement_size = 1024 * 1024;
	c->startup_timeout_ms = 15000;
	c->shutdown_timeout_ms = 30000;
	c->log_level = LOG_INFO;
	c->log_all_decisions = true;
	c->audit_rows = 100;
	c->audit_bytes = 64 * 1024;
	c->audit_text_max = 1024 * 1024;
	c->audit_max_pending = 256 * 1024 * 1024;
	c->audit_store_timeout_ms = 5000;
	c->audit_flush_interval_ms = 100;

	yaml_parser_initialize(&parser);
	yaml_parser_set_input_file(&parser, f);
	if (!yaml_parser_load(&parser, &doc)) {
		snprintf(err, errlen, "%s:%lu: invalid YAML: %s", path,
			 (unsigned long)parser.problem_mark.line + 1,
			 parser.problem ? parser.problem : "parse error");
		yaml_parser_delete(&parser);
		fclose(f);
		config_free(c);
		return NULL;
	}
	yaml_node_t *root = yaml_document_get_root_node(&doc);
	if (!root)
		fail_at(&ld, NULL, "the file is empty");
	else
		walk_mapping(&ld, c, NULL, root, "the top level", on_top);

	/* Bearer tokens and audit data must not cross a network in clear: off loopback, HTTPS only. */
	if (!ld.failed && c->admin_enabled && !c->admin_tls_cert && !util_loopback_ip(c->admin_address))
		fail_at(&ld, root, "admin.address %s is not a loopback address: the API would carry bearer tokens and "
				   "audit data in clear; set admin.tls.cert and admin.tls.key", c->admin_address);
	if (!ld.failed && c->tls_mode != TLS_DISABLE && (!c->tls_cert || !c->tls_key))
		fail_at(&ld, root, "tls.mode %s needs tls.cert and tls.key",
			c->tls_mode == TLS_PREFER ? "prefer" : "require");
	/* Without any policies the gateway is a plain authenticating proxy unless told otherwise. */
	if (!c->default_set)
		c->default_allow = !c->has_policies;
	if (!ld.failed && c->ndatabases == 0)
		fail_at(&ld, root, "no databases are configured");
	if (!ld.failed && c->audit_store && !c->audit_key_file) {
		if (strncmp(c->audit_store, "sqlite:", 7) == 0) {
			size_t n = strlen(c->audit_store + 7) + 5;
			c->audit_key_file = xmalloc(n);
			snprintf(c->audit_key_file, n, "%s.key", c->audit_store + 7);
		} else {
			fail_at(&ld, root, "audit.store on PostgreSQL needs audit.key_file (the chain key stays outside the store)");
		}
	}
	for (int i = 0; i < c->npolicies && !ld.failed; i++) {
		const Policy *p = &c->policies[i];
		ApprovalSettings a;
		config_approval_settings(c, p, &a);
		if (p->has_review && !c->admin_enabled)
			fail_at(&ld, root, "policy \"%s\" has review rules but there is no admin: section (approvals are "
					   "decided over the admin HTTP API)", p->name);
		else if (p->has_review && !a.approvers.n)
			fail_at(&ld, root, "policy \"%s\" has review rules but no approvals.approvers (nobody could decide)",
				p->name);
	}
	bool uses_hash = false;
	for (int i = 0; i < c->npolicies; i++)
		for (int k = 0; k < c->policies[i].nmask; k++)
			uses_hash |= c->policies[i].mask[k].method == MASK_HASH;
	if (!ld.failed && uses_hash && !c->masking_key_file)
		fail_at(&ld, root, "mask method hash needs masking.hash_key_file (the key of the keyed hash)");
	if (!ld.failed && c->masking_key_file && !skip_secrets) {
		char kerr[300];
		char *key = util_read_file(c->masking_key_file, 4096, kerr, sizeof kerr);
		if (!key || strlen(key) < 16) {
			fail_at(&ld, root, "masking.hash_key_file: %s", key ? "the key must be at least 16 bytes" : kerr);
			free(key);
		} else {
			c->masking_key = (uint8_t *)key;
			c->masking_key_len = strlen(key);
		}
	}
	if (!ld.failed && !c->audit_node) {
		char host[256] = "pgcordon";
		gethostname(host, sizeof host - 1);
		host[63] = 0;
		c->audit_node = xstrdup(config_valid_name(host) ? host : "pgcordon");
	}

	yaml_document_delete(&doc);
	yaml_parser_delete(&parser);
	fclose(f);
	if (ld.failed) {
		config_free(c);
		return NULL;
	}
	c->generation = __atomic_fetch_add(&next_generation, 1, __ATOMIC_RELAXED);
	return c;
}

const DatabaseConfig *config_find_database(const Config *c, const char *name)
{
	for (int i = 0; i < c->ndatabases; i++)
		if (strcmp(c->databases[i].name, name) == 0)
			return &c->databases[i];
	return NULL;
}

const UserConfig *config_find_user(const Config *c, const char *name)
{
	for (int i = 0; i < c->nusers; i++)
		if (strcmp(c->users[i].name, name) == 0)
			return &c->users[i];
	return NULL;
}

Config *config_ref(Config *c)
{
	__atomic_add_fetch(&c->refcount, 1, __ATOMIC_RELAXED);
	return c;
}

void config_release(Config *c)
{
	if (c && __atomic_sub_fetch(&c->refcount, 1, __ATOMIC_ACQ_REL) == 0)
		config_free(c);
}

/* Readers take a reference under the lock; reloads are rare, so a mutex is cheap enough. */
static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static Config *current;
static uint64_t live_generation; /* atomic */

uint64_t config_live_generation(void) { return __atomic_load_n(&live_generation, __ATOMIC_ACQUIRE); }

Config *config_current(void)
{
	pthread_mutex_lock(&current_lock);
	Config *c = current ? config_ref(current) : NULL;
	pthread_mutex_unlock(&current_lock);
	return c;
}

void config_swap(Config *c)
{
	pthread_mutex_lock(&current_lock);
	Config *old = current;
	current = c;
	__atomic_store_n(&live_generation, c ? c->generation : 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&current_lock);
	config_release(old);
}

/* Decimal digits and a unit: strtod alone would also take "nan", "inf", hex and exponents. */
static DurationParse parse_duration(const char *s, int *out_ms)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || end != s + strspn(s, "0123456789."))
		return DURATION_BAD;
	double mult;
	if (*end == 0 || strcmp(end, "s") == 0)
		mult = 1000;
	else if (strcmp(end, "ms") == 0)
		mult = 1;
	else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
		mult = 60000;
	else if (strcmp(end, "h") == 0)
		mult = 3600000;
	else
		return DURATION_BAD;
	double ms = v * mult;
	if (!isfinite(ms) || ms > INT_MAX) /* digits only: not finite means too many of them */
		return DURATION_TOO_LONG;
	*out_ms = (int)ms;
	return DURATION_OK;
}

bool config_parse_duration_ms(const char *s, int *out_ms) { return parse_duration(s, out_ms) == DURATION_OK; }

bool config_parse_period_s(const char *s, int64_t *out)
{
	char *end;
	if (!isdigit((unsigned char)*s))
		return false;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	int64_t mult;
	if (errno || v < 0)
		return false;
	if (*end == 0 || strcmp(end, "s") == 0)
		mult = 1;
	else if (strcmp(end, "m") == 0)
		mult = 60;
	else if (strcmp(end, "h") == 0)
		mult = 3600;
	else if (strcmp(end, "d") == 0)
		mult = 86400;
	else
		return false;
	if (v > INT64_MAX / mult / 1000)
		return false;
	*out = v * mult;
	return true;
}

bool config_parse_size(const char *s, uint64_t *out)
{
	char *end;
	if (!isdigit((unsigned char)*s))
		return false;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno)
		return false;
	uint64_t mult;
	if (*end == 0 || strcmp(end, "B") == 0)
		mult = 1;
	else if (strcmp(end, "KiB") == 0 || strcmp(end, "kB") == 0 || strcmp(end, "KB") == 0)
		mult = 1024;
	else if (strcmp(end, "MiB") == 0 || strcmp(end, "MB") == 0)
		mult = 1024 * 1024;
	else if (strcmp(end, "GiB") == 0 || strcmp(end, "GB") == 0)
		mult = 1024ULL * 1024 * 1024;
	else
		return false;
	if (v > UINT64_MAX / mult)
		return false;
	*out = v * mult;
	return true;
}
