/* The admin HTTP API: health, and the audit trail (sessions, statements, replays) as JSON. */
#include "http/api.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "approval/approval.h"
#include "audit/audit.h"
#include "audit/report.h"
#include "auth/apikey.h"
#include "auth/oidc.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/util.h"
#include "http/console.h"
#include "http/mcp_http.h"
#include "http/metrics.h"
#include "mcp/server.h"

static struct MHD_Daemon *daemon_;
static char *tls_cert_pem, *tls_key_pem; /* admin.tls, in memory while the daemon runs */
static bool https;                        /* set before the daemon starts, read by its threads */

typedef struct {
	char name[256];
	char **groups;
	int ngroups;
	bool owned; /* groups were allocated for this request */
} Caller;

/*
 * On every answer. The policy lets a page load only the console's own script and style and
 * talk only to this listener: a SQL text or user name that smuggles in markup can never
 * run, even if the console had a bug that inserted it as HTML. No framing, no referrer.
 */
static void add_security_headers(struct MHD_Response *r)
{
	/* Trusted Types: the browser itself refuses any string assigned as HTML (innerHTML...). */
	MHD_add_response_header(r, "Content-Security-Policy",
				"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
				"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
				"require-trusted-types-for 'script'");
	if (https)
		MHD_add_response_header(r, "Strict-Transport-Security", "max-age=31536000");
	MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
	MHD_add_response_header(r, "X-Frame-Options", "DENY");
	MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
	MHD_add_response_header(r, "Cache-Control", "no-store");
}

/* Queues r with the security headers, and lets it go: every answer leaves through here. */
static enum MHD_Result send_response(struct MHD_Connection *conn, unsigned status, struct MHD_Response *r)
{
	add_security_headers(r);
	enum MHD_Result ok = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ok;
}

/* allow: the Allow header of a 405 (RFC 9110 requires one), else NULL. */
static enum MHD_Result reply_allow(struct MHD_Connection *conn, unsigned status, json_t *body, const char *allow)
{
	char *text = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(9));
	json_decref(body);
	if (!text)
		text = xstrdup("{\"error\":\"out of memory\"}");
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(r, "Content-Type", "application/json");
	if (status == MHD_HTTP_UNAUTHORIZED)
		MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
	if (allow)
		MHD_add_response_header(r, "Allow", allow);
	return send_response(conn, status, r);
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, json_t *body)
{
	return reply_allow(conn, status, body, NULL);
}

static enum MHD_Result error(struct MHD_Connection *conn, unsigned status, const char *msg)
{
	return reply(conn, status, json_pack("{ss}", "error", msg));
}

/* 405: allow names the methods the path takes. */
static enum MHD_Result not_allowed(struct MHD_Connection *conn, const char *allow, const char *msg)
{
	return reply_allow(conn, MHD_HTTP_METHOD_NOT_ALLOWED, json_pack("{ss}", "error", msg), allow);
}

/* One of the console's files (console.h), from the binary's read-only data. */
static enum MHD_Result console_reply(struct MHD_Connection *conn, const ConsoleFile *f)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(f->len, (void *)f->data, MHD_RESPMEM_PERSISTENT);
	MHD_add_response_header(r, "Content-Type", f->content_type);
	return send_response(conn, MHD_HTTP_OK, r);
}

/* GET /metrics, in the Prometheus text format. */
static enum MHD_Result metrics_reply(struct MHD_Connection *conn)
{
	size_t len = 0;
	char *text = http_metrics_text(&len);
	if (!text)
		return error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	struct MHD_Response *r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	return send_response(conn, MHD_HTTP_OK, r);
}

/* Who sent the request: an API key or an OIDC token as a Bearer credential. */
static bool authenticate(const Config *c, const char *header, Caller *who, char *why, size_t whylen)
{
	memset(who, 0, sizeof *who);
	if (!header || strncmp(header, "Bearer ", 7) != 0) {
		snprintf(why, whylen, "an Authorization: Bearer header with an API key or an OIDC token is required");
		return false;
	}
	const char *token = header + 7;
	if (apikey_looks_like(token)) {
		for (int i = 0; i < c->napi_keys; i++) {
			const ApiKeyConfig *k = &c->api_keys[i];
			if (!apikey_matches(token, k->hash))
				continue;
			if (k->expires && (int64_t)time(NULL) > k->expires) {
				snprintf(why, whylen, "the API key has expired");
				return false;
			}
			snprintf(who->name, sizeof who->name, "%s", k->name);
			who->groups = k->groups;
			who->ngroups = k->ngroups;
			return true;
		}
		snprintf(why, whylen, "unknown API key");
		return false;
	}
	OidcIdentity id;
	OidcOutcome o = oidc_verify(c, token, NULL, false, &id, why, whylen);
	for (int i = 0; i < 30 && o == OIDC_PENDING; i++) {
		/* The issuer's keys are being fetched: this thread may wait, unlike a worker. */
		struct timespec pause = {0, 100 * 1000000L};
		nanosleep(&pause, NULL);
		o = oidc_verify(c, token, NULL, true, &id, why, whylen);
	}
	if (o != OIDC_OK) {
		if (o == OIDC_PENDING)
			snprintf(why, whylen, "the token's signing keys could not be fetched in time");
		return false;
	}
	snprintf(who->name, sizeof who->name, "%s", id.username);
	who->groups = id.groups;
	who->ngroups = id.ngroups;
	who->owned = true;
	return true;
}

static void caller_free(Caller *who)
{
	if (!who->owned)
		return;
	for (int i = 0; i < who->ngroups; i++)
		free(who->groups[i]);
	free(who->groups);
}

static bool is_auditor(const Config *c, const Caller *who)
{
	for (int i = 0; i < who->ngroups; i++)
		for (int j = 0; j < c->nadmin_auditors; j++)
			if (strcmp(who->groups[i], c->admin_auditors[j]) == 0)
				return true;
	return false;
}

static const char *arg(struct MHD_Connection *conn, const char *name)
{
	return MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);
}

#define SESSIONS_LIST_MAX 10000

/* A ?limit= argument: absent leaves *out as it is; else a whole number from 1 to max. */
static bool page_limit(const char *text, int max, int *out)
{
	if (!text)
		return true;
	char *end;
	errno = 0;
	long v = strtol(text, &end, 10);
	if (errno || end == text || *end || v < 1 || v > max)
		return false;
	*out = (int)v;
	return true;
}

/* GET /api/sessions, /api/sessions/ID, /api/sessions/ID/replay */
static enum MHD_Result audit_request(struct MHD_Connection *conn, const Config *c, const char *url)
{
	if (!c->audit_store)
		return error(conn, MHD_HTTP_NOT_FOUND, "no audit.store is configured");
	char err[512] = "";
	/* A store that stops answering fails the read (503): each one holds an admin connection. */
	AuditStore *st = store_open(c->audit_store, false, c->audit_store_timeout_ms, err, sizeof err);
	if (!st)
		return error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, err);
	json_t *out = NULL;
	unsigned status = MHD_HTTP_OK;
	const char *rest = url + strlen("/api/sessions");
	if (*rest == 0 || strcmp(rest, "/") == 0) {
		char since[AUDIT_TIME_LEN];
		const char *s = arg(conn, "since");
		if (s && !audit_parse_since(s, since)) {
			store_close(st);
			return error(conn, MHD_HTTP_BAD_REQUEST, "since must be an ISO date/time or a period like 30m, 12h, 7d");
		}
		int limit = 100;
		if (!page_limit(arg(conn, "limit"), SESSIONS_LIST_MAX, &limit)) {
			store_close(st);
			return error(conn, MHD_HTTP_BAD_REQUEST, "limit must be a number from 1 to " UTIL_TEXT(SESSIONS_LIST_MAX));
		}
		SessionQuery q = {.user = arg(conn, "user"), .database = arg(conn, "database"), .since = s ? since : NULL,
				  .limit = limit};
		json_t *list = audit_list_sessions(st, &q, err, sizeof err);
		if (list)
			out = json_pack("{so}", "sessions", list);
	} else if (rest[0] == '/') {
		char id[64];
		const char *slash = strchr(rest + 1, '/');
		size_t n = slash ? (size_t)(slash - rest - 1) : strlen(rest + 1);
		if (n == 0 || n >= sizeof id) {
			store_close(st);
			return error(conn, MHD_HTTP_NOT_FOUND, "no such session");
		}
		memcpy(id, rest + 1, n);
		id[n] = 0;
		if (!slash) {
			out = audit_session_detail(st, id, err, sizeof err);
			if (out && json_is_null(out)) {
				json_decref(out);
				store_close(st);
				return error(conn, MHD_HTTP_NOT_FOUND, "no such session");
			}
		} else if (strcmp(slash, "/replay") == 0) {
			char *text = audit_replay_text(st, id, err, sizeof err);
			if (text) {
				out = json_pack("{ss ss}", "session_id", id, "transcript", text);
				free(text);
			} else if (strncmp(err, "no session", 10) == 0) {
				store_close(st);
				return error(conn, MHD_HTTP_NOT_FOUND, "no such session");
			}
		} else {
			store_close(st);
			return error(conn, MHD_HTTP_NOT_FOUND, "unknown path");
		}
	} else {
		store_close(st); /* /api/sessionsX: not a path of this API */
		return error(conn, MHD_HTTP_NOT_FOUND, "unknown path");
	}
	store_close(st);
	if (!out)
		return error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, err);
	return reply(conn, status, out);
}

/* A request body being received (POST): bounded, so a huge body cannot eat memory. */
#define BODY_MAX (64 * 1024)
typedef BoundedBuf Upload;

static void request_done(void *cls, struct MHD_Connection *conn, void **state, enum MHD_RequestTerminationCode tc)
{
	(void)cls;
	(void)conn;
	(void)tc;
	Upload *u = *state;
	if (u) {
		free(u->data);
		free(u);
	}
	*state = NULL;
}

static bool valid_request_id(const char *id, size_t n)
{
	if (n != APPROVAL_ID_LEN - 1)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
			return false;
	return true;
}

/* The body as a JSON object; an empty body is an empty object. NULL with *status on error. */
static json_t *body_object(const Upload *u, struct MHD_Connection *conn, enum MHD_Result *r)
{
	if (u && u->too_big) {
		*r = error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "the request body is larger than 64 KiB");
		return NULL;
	}
	if (!u || u->len == 0)
		return json_object();
	json_error_t je;
	json_t *j = json_loadb(u->data, u->len, JSON_REJECT_DUPLICATES, &je);
	if (!json_is_object(j)) {
		json_decref(j);
		*r = error(conn, MHD_HTTP_BAD_REQUEST, "the request body must be a JSON object");
		return NULL;
	}
	return j;
}

/* /api/approvals..., /api/grants: any authenticated identity (each sees what it may). */
static enum MHD_Result approvals_request(struct MHD_Connection *conn, const Config *c, const Caller *who,
					 const char *url, bool post, const Upload *u)
{
	ApprovalCaller ac = {.name = who->name, .groups = who->groups, .ngroups = who->ngroups,
			     .auditor = is_auditor(c, who)};
	enum MHD_Result r;
	json_t *out = NULL;
	if (strcmp(url, "/api/grants") == 0 || strcmp(url, "/api/grants/") == 0) {
		if (!post) {
			const char *st = arg(conn, "status");
			if (st && strcmp(st, "active") != 0 && strcmp(st, "all") != 0)
				return error(conn, MHD_HTTP_BAD_REQUEST, "status must be active or all");
			return reply(conn, MHD_HTTP_OK, approval_list_grants(&ac, st && strcmp(st, "all") == 0));
		}
		json_t *body = body_object(u, conn, &r);
		if (!body)
			return r;
		unsigned code = approval_request_grant(c, &ac, body, &out);
		json_decref(body);
		return reply(conn, code, out);
	}
	if (strncmp(url, "/api/approvals", 14) != 0)
		return error(conn, MHD_HTTP_NOT_FOUND, "unknown path");
	const char *rest = url + strlen("/api/approvals");
	if (*rest == 0 || strcmp(rest, "/") == 0) {
		if (post)
			return not_allowed(conn, "GET, HEAD", "POST /api/approvals/ID/approve or /deny");
		int limit = 100;
		if (!page_limit(arg(conn, "limit"), APPROVAL_LIST_MAX, &limit))
			return error(conn, MHD_HTTP_BAD_REQUEST, "limit must be a number from 1 to " UTIL_TEXT(APPROVAL_LIST_MAX));
		const char *bad = NULL;
		out = approval_list(&ac, arg(conn, "status"), limit, arg(conn, "before"), &bad);
		return out ? reply(conn, MHD_HTTP_OK, out) : error(conn, MHD_HTTP_BAD_REQUEST, bad);
	}
	if (rest[0] != '/')
		return error(conn, MHD_HTTP_NOT_FOUND, "unknown path");
	const char *id = rest + 1, *slash = strchr(id, '/');
	size_t n = slash ? (size_t)(slash - id) : strlen(id);
	if (!valid_request_id(id, n))
		return error(conn, MHD_HTTP_NOT_FOUND, "no such approval request");
	char rid[APPROVAL_ID_LEN];
	memcpy(rid, id, n);
	rid[n] = 0;
	if (!slash) {
		if (post)
			return not_allowed(conn, "GET, HEAD", "POST /api/approvals/ID/approve or /deny");
		out = approval_get(&ac, rid);
		return out ? reply(conn, MHD_HTTP_OK, out) : error(conn, MHD_HTTP_NOT_FOUND, "no such approval request");
	}
	bool approve = strcmp(slash, "/approve") == 0;
	if (!approve && strcmp(slash, "/deny") != 0)
		return error(conn, MHD_HTTP_NOT_FOUND, "unknown path");
	if (!post)
		return not_allowed(conn, "POST", "approve and deny take POST");
	json_t *body = body_object(u, conn, &r);
	if (!body)
		return r;
	const char *k;
	json_t *v;
	json_object_foreach(body, k, v)
	{
		if (strcmp(k, "reason") != 0) {
			json_decref(body);
			return error(conn, MHD_HTTP_BAD_REQUEST, "the body takes only \"reason\"");
		}
	}
	json_t *reason = json_object_get(body, "reason");
	if ((reason && !json_is_string(reason)) || json_string_length(reason) > 1000) {
		json_decref(body);
		return error(conn, MHD_HTTP_BAD_REQUEST, "reason must be a string of at most 1000 characters");
	}
	if (!approve && json_string_length(reason) == 0) {
		json_decref(body);
		return error(conn, MHD_HTTP_BAD_REQUEST, "a denial needs a reason: {\"reason\": \"...\"}");
	}
	unsigned code = approval_decide(&ac, rid, approve, json_string_length(reason) ? json_string_value(reason) : NULL,
					&out);
	json_decref(body);
	return reply(conn, code, out);
}

/* GET /api/whoami: the console asks it at sign-in (which identity, and may it read the audit). */
static enum MHD_Result whoami(struct MHD_Connection *conn, const Config *c, const Caller *who)
{
	json_t *groups = json_array();
	for (int i = 0; i < who->ngroups; i++)
		json_array_append_new(groups, json_string(who->groups[i]));
	return reply(conn, MHD_HTTP_OK,
		     json_pack("{ss so sb}", "name", who->name, "groups", groups, "auditor", is_auditor(c, who)));
}

/*
 * POST or DELETE /mcp (http/mcp_http.h), for an authenticated caller. A browser's request
 * (it sends Origin) is refused: the transport's rule against DNS rebinding, and no page has
 * any business here.
 */
static enum MHD_Result mcp_request(struct MHD_Connection *conn, const Config *c, const Caller *who, bool post,
				   const Upload *u)
{
	if (!c->admin_mcp)
		return error(conn, MHD_HTTP_NOT_FOUND, "MCP over HTTP is off (admin.mcp: true turns it on)");
	if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin"))
		return error(conn, MHD_HTTP_FORBIDDEN, "MCP over HTTP takes no requests from browsers (Origin is set)");
	const char *credential = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION) + 7;
	const char *session = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Mcp-Session-Id");
	if (!post) {
		unsigned status = session ? mcp_http_delete(credential, session) : MHD_HTTP_BAD_REQUEST;
		if (status != MHD_HTTP_NO_CONTENT)
			return error(conn, status, session ? "no such MCP session" : "DELETE needs an Mcp-Session-Id header");
		return send_response(conn, status, MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT));
	}
	McpHttpAnswer a;
	if (u && u->too_big) {
		a = (McpHttpAnswer){.status = MHD_HTTP_CONTENT_TOO_LARGE, .body = mcp_too_long()};
	} else {
		char q[300];
		log_event(LOG_DEBUG, "admin_request", "user=%s path=/mcp bytes=%zu", log_quote(q, sizeof q, who->name),
			  u ? u->len : 0);
		mcp_http_post(c, who->name, credential, session, arg(conn, "database"), u && u->data ? u->data : "",
			      u ? u->len : 0, &a);
	}
	struct MHD_Response *r = a.body ? MHD_create_response_from_buffer(strlen(a.body), a.body, MHD_RESPMEM_MUST_FREE)
					: MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
	if (a.body)
		MHD_add_response_header(r, "Content-Type", "application/json");
	if (a.session_id[0])
		MHD_add_response_header(r, "Mcp-Session-Id", a.session_id);
	return send_response(conn, a.status, r);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
			      const char *version, const char *upload_data, size_t *upload_data_size, void **state)
{
	(void)cls;
	(void)version;
	bool post = strcmp(method, "POST") == 0;
	bool mcp = strcmp(url, "/mcp") == 0;
	if (post) {
		/* The body arrives in pieces: collect it (bounded), answer after the last one. */
		Upload *u = *state;
		if (!u) {
			u = xcalloc(1, sizeof *u);
			u->max = mcp ? MCP_MAX_MESSAGE : BODY_MAX;
			*state = u;
			return MHD_YES;
		}
		if (*upload_data_size) {
			util_buf_append(u, upload_data, *upload_data_size); /* past BODY_MAX: 413 at the end */
			*upload_data_size = 0;
			return MHD_YES;
		}
	} else if (mcp) {
		if (strcmp(method, "DELETE") != 0)
			return not_allowed(conn, "POST, DELETE", "MCP takes POST (and DELETE to end a session); "
								  "this server opens no stream of its own");
	} else if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		return not_allowed(conn, "GET, HEAD, POST", "only GET and POST are served here");
	}
	if (strcmp(url, "/healthz") == 0)
		return reply(conn, MHD_HTTP_OK,
			     json_pack("{ss ss}", "status", "ok", "audit",
				       !audit_enabled() ? "off" : audit_store_healthy() ? "ok" : "failing"));
	bool metrics = strcmp(url, "/metrics") == 0;
	if (!metrics && !mcp && strncmp(url, "/api/", 5) != 0) {
		ConsoleFile f;
		if (!http_console_file(url, &f))
			return error(conn, MHD_HTTP_NOT_FOUND, "unknown path");
		return post ? not_allowed(conn, "GET, HEAD", "the console's files take GET")
			    : console_reply(conn, &f);
	}
	Config *c = config_current();
	if (!c)
		return error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "not ready");
	Caller who;
	char why[300], q[400], qu[300];
	char peer[INET6_ADDRSTRLEN];
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	util_sockaddr_host(ci ? ci->client_addr : NULL, peer, sizeof peer);
	enum MHD_Result r;
	bool approvals = strncmp(url, "/api/approvals", 14) == 0 || strncmp(url, "/api/grants", 11) == 0;
	if (!authenticate(c, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION), &who,
			  why, sizeof why)) {
		metrics_inc(MET_ADMIN_AUTH_FAILED);
		log_event(LOG_WARN, "admin_auth_failed", "peer=%s path=%s reason=%s", peer, log_quote(qu, sizeof qu, url),
			  log_quote(q, sizeof q, why));
		config_release(c);
		return error(conn, MHD_HTTP_UNAUTHORIZED, why);
	}
	if (mcp) {
		r = mcp_request(conn, c, &who, post, *state);
	} else if (metrics) {
		/* Scraped every few seconds: logged only at debug. */
		log_event(LOG_DEBUG, "admin_request", "peer=%s user=%s path=/metrics", peer, log_quote(q, sizeof q, who.name));
		r = post ? not_allowed(conn, "GET, HEAD", "only GET is served here") : metrics_reply(conn);
	} else if (strcmp(url, "/api/whoami") == 0) {
		log_event(LOG_INFO, "admin_request", "peer=%s user=%s path=%s", peer, log_quote(q, sizeof q, who.name),
			  log_quote(qu, sizeof qu, url));
		r = post ? not_allowed(conn, "GET, HEAD", "only GET is served here") : whoami(conn, c, &who);
	} else if (approvals) {
		/* Consoles and bots poll the queue: its reads are logged at debug. A decision is
		 * logged at info here and again as approval_approved / approval_denied. */
		log_event(post ? LOG_INFO : LOG_DEBUG, "admin_request", "peer=%s user=%s method=%s path=%s", peer,
			  log_quote(q, sizeof q, who.name), post ? "POST" : "GET", log_quote(qu, sizeof qu, url));
		r = approvals_request(conn, c, &who, url, post, *state);
	} else if (post) {
		r = not_allowed(conn, "GET, HEAD", "only GET is served here");
	} else if (!is_auditor(c, &who)) {
		log_event(LOG_WARN, "admin_forbidden", "peer=%s user=%s path=%s", peer, log_quote(q, sizeof q, who.name),
			  log_quote(qu, sizeof qu, url));
		r = error(conn, MHD_HTTP_FORBIDDEN, "this identity is in none of the admin.auditors groups");
	} else if (strncmp(url, "/api/sessions", 13) == 0) {
		log_event(LOG_INFO, "admin_request", "peer=%s user=%s path=%s", peer, log_quote(q, sizeof q, who.name),
			  log_quote(qu, sizeof qu, url));
		r = audit_request(conn, c, url);
	} else {
		r = error(conn, MHD_HTTP_NOT_FOUND, "unknown path");
	}
	caller_free(&who);
	config_release(c);
	return r;
}

/*
 * Decodes %HH in paths and arguments, except %00: a NUL would end the C string early, so
 * ".../deny%00/x" would act as ".../deny". Left encoded, such a path matches nothing.
 */
static size_t unescape(void *cls, struct MHD_Connection *conn, char *s)
{
	(void)cls;
	(void)conn;
	char *w = s;
	for (const char *r = s; *r; r++) {
		int hi, lo;
		if (r[0] == '%' && (hi = util_hex_value((unsigned char)r[1])) >= 0 &&
		    (lo = util_hex_value((unsigned char)r[2])) >= 0 && (hi || lo)) {
			*w++ = (char)(hi * 16 + lo);
			r += 2;
		} else {
			*w++ = *r;
		}
	}
	*w = 0;
	return (size_t)(w - s);
}

/* TLS 1.2 and 1.3 only, as on the PostgreSQL side (a GnuTLS priority string). */
#define TLS_PRIORITIES "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:%SAFE_RENEGOTIATION"

static void forget_tls(void)
{
	free(tls_cert_pem);
	util_wipe_free(tls_key_pem);
	tls_cert_pem = tls_key_pem = NULL;
}

/* Reads admin.tls's PEM files (tls_prepare_config has checked that they load and match). */
static bool load_tls(const Config *c, char *err, size_t errlen)
{
	char e[300];
	tls_cert_pem = util_read_file(c->admin_tls_cert, 1 << 20, e, sizeof e);
	if (tls_cert_pem)
		tls_key_pem = util_read_file(c->admin_tls_key, 1 << 20, e, sizeof e);
	if (!tls_key_pem) {
		snprintf(err, errlen, "admin.tls: %s", e);
		forget_tls();
		return false;
	}
	return true;
}

bool http_start(const Config *c, char *err, size_t errlen)
{
	if (!c->admin_enabled)
		return true;
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->admin_port)};
	struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)c->admin_port)};
	bool v6 = false;
	if (inet_pton(AF_INET, c->admin_address, &sin.sin_addr) != 1) {
		v6 = inet_pton(AF_INET6, c->admin_address, &sin6.sin6_addr) == 1;
		if (!v6) {
			snprintf(err, errlen, "admin.address %s is not an IP address (IPv4 like 127.0.0.1, or IPv6 like ::1)",
				 c->admin_address);
			return false;
		}
	}
	bool tls = c->admin_tls_cert != NULL;
	if (tls && !load_tls(c, err, errlen))
		return false;
	https = tls;
	/*
	 * A thread per connection: a request that waits on a store (an audit read behind a lock,
	 * a claim on a slow approvals database) holds only its own connection, never /healthz or
	 * the console. poll, not select: the gateway's descriptors go past FD_SETSIZE.
	 */
	unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
			 MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
	/* Without TLS the options end at the first MHD_OPTION_END. */
	daemon_ = MHD_start_daemon(flags | (tls ? MHD_USE_TLS : 0), (uint16_t)c->admin_port, NULL, NULL, handle, NULL,
				   MHD_OPTION_SOCK_ADDR, v6 ? (const struct sockaddr *)&sin6 : (const struct sockaddr *)&sin,
				   MHD_OPTION_CONNECTION_LIMIT, 64U, MHD_OPTION_CONNECTION_TIMEOUT, 30U,
				   MHD_OPTION_NOTIFY_COMPLETED, request_done, NULL, MHD_OPTION_UNESCAPE_CALLBACK, unescape,
				   NULL, tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, tls_cert_pem,
				   MHD_OPTION_HTTPS_MEM_KEY, tls_key_pem, MHD_OPTION_HTTPS_PRIORITIES, TLS_PRIORITIES,
				   MHD_OPTION_END);
	if (!daemon_) {
		if (tls)
			snprintf(err, errlen, "cannot start the admin HTTPS listener on %s:%d (port in use, or GnuTLS "
					      "refused admin.tls.cert or admin.tls.key)", c->admin_address, c->admin_port);
		else
			snprintf(err, errlen, "cannot listen on admin %s:%d (in use?)", c->admin_address, c->admin_port);
		forget_tls();
		return false;
	}
	log_event(LOG_INFO, "admin_ready", "address=%s port=%d scheme=%s", c->admin_address, c->admin_port,
		  tls ? "https" : "http");
	return true;
}

void http_stop(void)
{
	mcp_http_cancel_all(); /* a call waiting on a held statement would hold the stop up */
	if (daemon_)
		MHD_stop_daemon(daemon_);
	daemon_ = NULL;
	mcp_http_stop();
	forget_tls();
}
