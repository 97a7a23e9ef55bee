/* Shared between session.c (client side, relay) and upstream.c (upstream login). */
#ifndef PGC_SESSION_INTERNAL_H
#define PGC_SESSION_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "auth/scram.h"
#include "policy/cache.h"
#include "policy/policy.h"
#include "session/cancel.h"
#include "config/config.h"
#include "net/sock.h"
#include "mask/mask.h"
#include "net/worker.h"
#include "proto/proto.h"
#include "session/inspect_job.h"
#include "session/pipeline.h"

typedef enum {
	SESS_STARTUP,    /* waiting for StartupMessage, SSLRequest, GSSENCRequest or CancelRequest */
	SESS_TLS,        /* client TLS handshake */
	SESS_AUTH_INIT,  /* AuthenticationSASL sent; waiting for SASLInitialResponse */
	SESS_AUTH_CONT,  /* SASLContinue sent; waiting for SASLResponse */
	SESS_AUTH_PASSWORD,  /* AuthenticationCleartextPassword sent: a token or API key is coming */
	SESS_AUTH_WAIT_KEYS, /* a token's signing keys are being fetched */
	SESS_CONNECTING, /* client authenticated; upstream login in progress */
	SESS_READY,      /* relaying */
	SESS_CANCELLING, /* a CancelRequest went upstream: closes once the upstream has it */
	SESS_CLOSED,     /* waiting to be freed at the end of the loop iteration */
} SessState;

typedef enum {
	UP_NONE,
	UP_RESOLVING,
	UP_CONNECTING,
	UP_SSL_REQUEST,
	UP_TLS,
	UP_AUTH,
	UP_STARTUP,
	UP_READY,
} UpState;

/* Only needed until the session is ready; freed then to keep idle sessions small. */
typedef struct {
	ScramServer scram;
	ScramClient scram_client;
	uint8_t *startup_body;
	StartupPacket startup;
	bool user_known;
	char *password; /* a token kept while its keys are fetched; wiped after */
} AuthState;

#define CUT_TAG_LEN 48 /* of a cut-off statement's command tag kept (relay.c): "INSERT 0 n" fits */

typedef struct SessionWorker SessionWorker;
typedef struct Session Session;

struct Session {
	SessionWorker *sw;
	Worker *worker;
	Config *config;
	const DatabaseConfig *db;
	const UserConfig *user;
	char *user_name;
	char *database_name;
	char **groups;          /* the identity's groups (from config, token or API key) */
	int ngroups;
	const char *auth_method; /* "scram", "oidc", "apikey" */
	int64_t expires_at;     /* unix seconds the credential stops being valid, 0: never */
	const char *role;       /* mapped database role (points into config), NULL: none */
	char *apikey_hash;      /* the API key this session proved: a reload that drops it ends the session */
	SessState state;
	UpState up_state;
	Sock client;
	Sock server;
	size_t client_remaining; /* bytes of a client message already inspected, still to forward */
	size_t server_remaining;
	Pipeline pipeline;
	AuthState *auth;
	uint32_t pid, key;       /* what the client sees */
	uint32_t up_pid, up_key; /* the upstream backend's own; never leaves the gateway */
	struct event *timer;
	struct evdns_getaddrinfo_request *dns_req;
	char peer[64];
	uint64_t id;
	uint64_t started_ms;
	int64_t upstream_started_us; /* util_now_us when the upstream connection was started */
	uint64_t bytes_from_client;
	uint64_t bytes_from_server;
	bool client_tls;
	bool loopback;
	bool over_limit;
	bool cancel_registered;
	bool client_paused; /* client reads paused because the upstream is not draining */
	bool server_paused;
	bool last_server_fatal;
	bool close_when_idle;

	/* Policy: the effective policy, shared with the worker's sessions of the same identity. */
	EffectivePolicy *policy;
	struct SharedPolicy *shared_policy;
	uint64_t policy_generation;
	uint64_t grants_generation; /* approval_grants_generation() the policy was made at */
	bool inspecting;           /* statements must be judged (the policy restricts something) */
	FactsCache *sw_cache;      /* the worker's facts cache */
	struct Prepared **prepared; /* prepared statements and their facts, by name */
	int nprepared;
	char *scratch;             /* a whole message copied out for inspection */
	size_t scratch_cap;
	int64_t rows;              /* DataRows of the current statement, for max_rows */
	bool discarding;           /* after a cut-off: drop the upstream's answer up to ReadyForQuery */
	bool cut_ended;            /* ... and the cut statement's own end is among it */
	char cut_changed[CUT_TAG_LEN]; /* ... and a change completed in it: its tag */
	bool cut_changed_own;      /* ... made by the cut statement itself */
	bool cut_committed;        /* ... and a COMMIT in it came after the change */
	struct AuditStmt *cut_audit; /* the cut-off statement's record, submitted when it ends */
	char *cut_message;           /* ... with the error the client got */
	bool server_dropping;      /* the rest of the current upstream message is dropped */
	bool has_cancel_target;
	CancelTarget cancel_target;
	int cancels_in_flight;     /* cancels this session sent, on their way (upstream_cancel.c) */
	bool close_after_cancel;   /* the client said Terminate while upstream output waited for one */

	/* Audit (session/audit_trail.c) */
	bool auditing;             /* the session_start record was submitted */
	bool audit_holding;        /* strict durability: the upstream message at the front waits */
	bool audit_released;       /* ... and is now durable: pass it without recording it again */
	char audit_id[20];
	uint64_t audit_n;          /* statements recorded */
	uint64_t audit_ticket;     /* what audit_holding waits for */
	struct AuditNames *audit_names;
	struct AuditStmt *audit_pending; /* the record of the client message being handled */
	struct AuditUndo *audit_undo;    /* ... and of a Parse, what its failure puts back */
	struct AuditText *audit_columns; /* the last Describe's RowDescription (JSON), for an Execute's rows */
	uint8_t audit_formats[1600];
	int audit_ncols;
	/* Masking (session/masking.c) */
	struct MaskCatalog *mask_cat;  /* the catalog statements are rewritten with; NULL: none loaded */
	struct MaskCatalog *mask_next; /* the one being loaded */
	char *mask_error;          /* why the last load failed: statements are refused */
	bool mask_loading;         /* the catalog query is out: client statements wait */
	bool mask_resume;          /* ... and has just finished */
	bool mask_waiting;         /* a statement waits for the pipeline to drain before a reload */
	bool masked_front;         /* the upstream message at the front is masking's replacement */
	uint64_t mask_gen;         /* the DDL generation the catalog was loaded at */
	uint64_t mask_policy_id;   /* the effective policy it was loaded for */
	bool client_utf8;          /* client_encoding is UTF8: results may be masked in the gateway */
	struct RowPlan *rowplan_next;  /* the row plan of the statement being decided */
	struct PortalPlan *portals;    /* portals bound to statements with a row plan */
	MaskBuf mask_buf;              /* a masked value being built */
	/* Approvals (session/hold.c) */
	char held_id[17];              /* the request the message at the front of client.in waits for */
	struct event *held_timer;      /* its wait deadline */
	int64_t held_since_us;         /* util_now_us when the wait began */
	int estimate_state;            /* ESTIMATE_* (session/hold.c) */
	InspectJob *inspect_job;       /* the long statement at the front of client.in, inspected by a pool */
	CachedFacts *inspect_facts;    /* thread (session/inspect_job.h), and its facts once they are in */
	bool estimate_failed;
	int64_t estimate_rows;
	char *rows_portal;             /* returned_rows_over: the last Bind's portal, statement and */
	char *rows_sql;                /* parameters, for the Execute that follows */
	char *rows_params;
	Session *prev, *next;
};

#define SESSION_PREPARED_BUCKETS 64
#define SESSION_PREPARED_MAX 10000

void session__free_prepared(Session *s);
/* Takes (and shares) the effective policy of the session's identity under config c. */
EffectivePolicy *session__policy_acquire(Session *s, Config *c, char *const *groups, int ngroups);
void session__policy_release(Session *s);
typedef enum {
	CANCEL_DELIVERED,   /* the upstream closed the connection: the backend has been signalled */
	CANCEL_UNCONFIRMED, /* sent, but no close within the time limit */
	CANCEL_NOT_SENT,
} CancelOutcome;
typedef void (*CancelDone)(Session *owner, CancelOutcome outcome);
typedef struct UpstreamCancel UpstreamCancel;
/* Sends t's CancelRequest upstream on a new connection, without blocking; done(owner) follows
 * once it is over, unless the owner ended first. false: nothing was sent (logged). */
bool session__send_cancel(Session *owner, const CancelTarget *t, CancelDone done);
/* The session ends: its cancels on their way tell nobody. */
void session__forget_cancels(Session *s);
/* The worker's cancels on their way (the list's head), and freeing them at its exit. */
UpstreamCancel **session__worker_cancels(SessionWorker *sw);
void session__cancels_free(UpstreamCancel *list);
void session__maybe_close_for_shutdown(Session *s);

/* Ends a session once: logs with its identity, optionally sends FATAL first. */
void session_close(Session *s, const char *reason, const char *sqlstate, const char *message);
/* Appends what b holds (unless building failed: never half a message) and frees b. */
void session__queue(struct evbuffer *out, MsgBuilder *b);
/* Queues a whole built message for the client. */
void session__send_client(Session *s, const uint8_t *data, size_t len);

void upstream_start(Session *s);
void upstream_on_event(Sock *sock, short what, void *arg);
void session__upstream_ready(Session *s);
/* The relay of upstream bytes to the client, once the upstream is ready. */
void session__relay_from_server(Session *s);
void session__relay_from_client(Session *s);
/* Drops the long statement's inspection (session/inspect_job.h) and its facts. */
void session__inspect_forget(Session *s);
/* The message at the front of client.in waits for its facts from a pool thread. */
static inline bool session__inspect_pending(const Session *s) { return s->inspect_job && !s->inspect_facts; }
/* Pauses or resumes reading each side from how much the other side has waiting. */
void session__balance(Session *s);
/* Stops reading from the upstream until session__balance resumes it. */
void session__pause_server(Session *s);

/* An internal statement for the upstream, whose answers the client never sees. */
void session__send_internal(Session *s, const char *sql, char release_ready, bool catalog);
/* The internal expectation session__send_internal just queued (to mark it), or NULL. */
Expectation *session__last_internal(Session *s);
void session__mask_start_load(Session *s);
bool session__mask_catalog_stale(Session *s);
/* Whether the upstream message (answering f) must be seen whole by masking. */
bool session__mask_wants(const Session *s, const Expectation *f, char type, uint8_t first);
/* Feeds it; returns a replacement message (header included) or NULL to pass it unchanged. */
uint8_t *session__mask_server_message(Session *s, const Expectation *f, char type, const uint8_t *body, size_t blen,
				      size_t *outlen);
void session__mask_free(Session *s);
/* The row plan of a portal (bound from a statement that has one), or NULL. */
struct RowPlan *session__portal_plan(Session *s, const char *portal);
/* Sets (plan shared) or, with NULL, forgets the row plan of a portal. */
void session__portal_set_plan(Session *s, const char *portal, struct RowPlan *plan);
/* A ParameterStatus from upstream (startup or later). */
void session__mask_parameter(Session *s, const uint8_t *body, size_t blen);

#define RELAY_READ_MAX (64 * 1024)
#define RELAY_HIGH_WATER (512 * 1024) /* pause the other side above this much pending output */
#define RELAY_LOW_WATER (64 * 1024)

#endif
