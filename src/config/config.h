/*
 * Configuration: the YAML file mapped into an immutable, reference-counted snapshot.
 * Loading validates everything (unknown keys are errors) and reports "FILE:LINE: message".
 * A snapshot is shared by workers and sessions; take a reference with config_ref and
 * drop it with config_release. config_current/config_swap publish the live snapshot.
 */
#ifndef PGC_CONFIG_H
#define PGC_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/util.h"
#include "mask/mask.h"

typedef struct ssl_ctx_st SSL_CTX;

typedef enum { TLS_DISABLE, TLS_PREFER, TLS_REQUIRE } TlsMode;
typedef enum { SSLMODE_DISABLE, SSLMODE_REQUIRE, SSLMODE_VERIFY_FULL } SslMode;

typedef struct {
	char *name;     /* what the client asks for */
	char *host;
	int port;
	char *dbname;   /* upstream database */
	char *user;     /* gateway-held login role */
	char *password; /* gateway-held secret; never logged */
	SslMode sslmode;
	char *sslrootcert;
	SSL_CTX *tls_ctx; /* client context for sslmode require/verify-full */
} DatabaseConfig;

/* A host starting with '/' names the directory of the server's Unix-domain socket, as in libpq. */
static inline bool config_host_is_socket_dir(const char *host) { return host && host[0] == '/'; }

/* The server's socket in that directory, DIR/.s.PGSQL.PORT; false when it does not fit in n bytes. */
bool config_socket_path(const DatabaseConfig *d, char *out, size_t n);

typedef struct {
	char *name;
	char *verifier; /* SCRAM-SHA-256$iter:salt$stored:server */
	char **groups;
	int ngroups;
} UserConfig;

typedef struct {
	char **items;
	int n;
} NameList;

typedef enum { APPROVAL_UNSET = 0, APPROVAL_WAIT, APPROVAL_RETRY } ApprovalMode;

/* approvals: (docs/approvals.md). In a policy, unset fields fall back to the top level's. */
typedef struct {
	bool has_approvers;
	NameList approvers;  /* groups whose members may decide */
	ApprovalMode mode;
	int wait_ms;         /* wait mode: how long the client waits; 0 unset */
	int valid_for_ms;    /* retry mode: how long an approval stays usable; 0 unset */
	int pending_for_ms;  /* retry mode and grants: how long a request waits for a decision; 0 unset */
	char *webhook;       /* notify.webhook: Slack-compatible JSON is POSTed here */
} ApprovalSettings;

#define APPROVAL_PENDING_FOR_DEFAULT_MS (24 * 3600 * 1000)
#define APPROVAL_PENDING_FOR_MAX_MS (7 * 24 * 3600 * 1000)

/* One entry of policies: (see docs/policies.md). Absent lists are empty. */
typedef struct {
	char *name;
	bool match_all;         /* no match: applies to everyone */
	NameList match_groups;
	NameList match_users;
	NameList match_databases;
	bool read_only;
	bool has_tables;
	NameList tables;        /* scope patterns: "schema.table", "schema.*", "*" */
	NameList block_statements;
	NameList block_functions;
	bool delete_without_where;
	bool update_without_where;
	NameList select_without_where;
	int64_t max_rows;          /* 0: no limit */
	int statement_timeout_ms;  /* 0: no limit */
	MaskRule *mask;            /* mask: rules, in order (the first naming a column wins) */
	int nmask;
	int masked_predicate;      /* on_masked_predicate: 0 unset, 1 block, 2 allow */
	/* review: statements held for approval (docs/approvals.md) */
	bool has_review;
	NameList review_statements;
	NameList review_tables;
	int64_t review_estimated_rows; /* 0: no rule */
	int64_t review_returned_rows;  /* 0: no rule */
	ApprovalSettings approvals;
} Policy;

typedef struct {
	char *issuer;
	char *audience;
	char *jwks_uri;        /* NULL: discovered from issuer/.well-known/openid-configuration */
	char *username_claim;  /* default "sub" */
	char *groups_claim;    /* default "groups" */
	int leeway_s;          /* default 30 */
	unsigned algorithms;   /* JWT_ALG_* bits; default all four */
	int refresh_s;         /* scheduled JWKS refresh, default 3600 */
	int min_refresh_s;     /* unknown kid refetches at most this often, default 30 */
	NameList alias_from;   /* aliases: {startup user: identity}; parallel lists */
	NameList alias_to;
} OidcIssuerConfig;

typedef struct {
	char *name;
	char *hash;            /* "sha256:<hex>" of the key */
	char **groups;
	int ngroups;
	int64_t expires;       /* unix seconds, 0: never */
} ApiKeyConfig;

typedef struct {
	char *group;
	char *role;
} RoleMapping;

/* Where the admin API listens without admin.address and admin.port; the CLI's default --url. */
#define ADMIN_DEFAULT_ADDRESS "127.0.0.1"
#define ADMIN_DEFAULT_PORT 8432
#define ADMIN_DEFAULT_URL "http://" ADMIN_DEFAULT_ADDRESS ":" UTIL_TEXT(ADMIN_DEFAULT_PORT)

typedef struct Config {
	int refcount; /* atomic */
	char *path;
	uint64_t generation;

	char *listen_address;
	int listen_port;
	int workers;

	TlsMode tls_mode;
	char *tls_cert;
	char *tls_key;
	SSL_CTX *tls_ctx; /* server context when tls_mode != TLS_DISABLE */

	bool admin_enabled;     /* an admin: section exists: the HTTP API listens */
	char *admin_address;
	int admin_port;
	char *admin_url;        /* admin.url: how approvers reach the API, named in notices; NULL: derived */
	char **admin_auditors;  /* admin.auditors: groups that may read the audit trail over HTTP */
	int nadmin_auditors;
	char *admin_tls_cert;   /* admin.tls: the API speaks HTTPS (PEM files); required off loopback */
	char *admin_tls_key;
	bool admin_mcp;         /* admin.mcp: MCP over HTTP at /mcp */

	int max_client_conn;
	uint32_t max_message_size;
	uint32_t max_statement_size; /* longest SQL text an inspecting session may send (parse cost) */
	int startup_timeout_ms;
	int shutdown_timeout_ms;
	int log_level; /* LogLevel */

	char *audit_store;      /* "sqlite:PATH" or "postgresql://..."; NULL: nothing is recorded */
	char *audit_key_file;   /* the chain's first key; default PATH.key for SQLite */
	char *audit_node;       /* this gateway's name in a shared store; default the host name */
	bool audit_strict;      /* audit.durability: strict holds CommandComplete until durable */
	bool audit_continue;    /* audit.on_failure: continue (default refuse) */
	int64_t audit_retention_s; /* audit.retention; 0 keeps everything */
	uint64_t audit_max_pending; /* audit.max_pending: bytes of records held in memory while the store lags */
	int audit_store_timeout_ms; /* audit.store_timeout: the longest silence awaited from the store */
	int audit_flush_interval_ms; /* audit.flush_interval: how long a record may wait to be written (default durability) */
	int audit_rows;         /* audit.results.rows: result rows kept per statement */
	int audit_bytes;        /* audit.results.bytes */
	size_t audit_text_max;  /* audit.max_text_size: longer SQL texts and parameters are recorded by head and hash */

	char *masking_key_file;  /* masking.hash_key_file: the key of method hash */
	uint8_t *masking_key;    /* its contents */
	size_t masking_key_len;

	bool log_all_decisions; /* log.decisions: all (default) or blocked */

	ApprovalSettings approvals; /* the top-level approvals: defaults, and the approvers of grants */

	Policy *policies;
	int npolicies;
	bool has_policies;  /* a policies: section exists */
	bool default_allow; /* default: allow|deny; allow when there is no policies: section */
	bool default_set;

	DatabaseConfig *databases;
	int ndatabases;
	UserConfig *users;
	int nusers;

	OidcIssuerConfig *oidc;
	int noidc;
	ApiKeyConfig *api_keys;
	int napi_keys;
	RoleMapping *roles;  /* in config order: the first group an identity has picks its role */
	int nroles;
	int token_grace_s;   /* limits.token_grace: how long a session outlives its token */
} Config;

const ApiKeyConfig *config_find_api_key(const Config *c, const char *name);
const Policy *config_find_policy(const Config *c, const char *name);
/* The approvals settings in force for policy (NULL: the top level's), defaults filled in.
 * The result points into c. */
void config_approval_settings(const Config *c, const Policy *policy, ApprovalSettings *out);

/* Loads and validates FILE; on error returns NULL with "FILE:LINE: message" in err. */
Config *config_load(const char *path, char *err, size_t errlen) __attribute__((warn_unused_result));
/* The same, leaving database passwords empty: for tools that never connect upstream. */
Config *config_load_without_secrets(const char *path, char *err, size_t errlen) __attribute__((warn_unused_result));

const DatabaseConfig *config_find_database(const Config *c, const char *name);
const UserConfig *config_find_user(const Config *c, const char *name);

Config *config_ref(Config *c);
void config_release(Config *c);

/* The live snapshot: config_current returns a new reference the caller releases. */
Config *config_current(void);
void config_swap(Config *c); /* takes ownership of the caller's reference */
/* The generation of the live snapshot (one atomic load; for "has it changed?"). */
uint64_t config_live_generation(void);

/* "30s", "500ms", "5m", "1h" or a bare number of seconds. */
bool config_parse_duration_ms(const char *s, int *out_ms);
/* "90d", "12h", "30m", "45s": whole seconds. */
bool config_parse_period_s(const char *s, int64_t *out);
/* "67108864", "64MiB", "512KiB", "1GiB". */
bool config_parse_size(const char *s, uint64_t *out);
/* A name (node, user, group, policy): 1-63 letters, digits, _ - . @. */
bool config_valid_name(const char *s);

#endif
