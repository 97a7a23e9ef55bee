/* MCP over HTTP: sessions bound to a credential, each a libpq client of the gateway itself. */
#include "http/mcp_http.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "mcp/server.h"

#define IDLE_MS (10 * 60 * 1000) /* a session unused this long is closed */
#define MCP_ROWS 100             /* per call, as `pgcordon mcp` by default */
#define MCP_BYTES 65536

typedef struct {
	bool used;
	bool closing;   /* DELETEd or expired while a call ran: the call's thread frees it */
	bool busy;      /* a call runs */
	bool cancel_asked; /* the running call was cancelled: its answer is not sent */
	char id[MCP_SESSION_ID_LEN];
	char owner[65]; /* SHA-256 of the credential that opened it, hex */
	McpDb *db;
	int cancel[2];  /* a pipe: notifications/cancelled from another request wakes the call */
	char *call_id;  /* the JSON text of the running call's id */
	int64_t last_ms;
} Session;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static Session sessions[MCP_SESSIONS_MAX];
static int calls; /* running, under mu */

static void answer(McpHttpAnswer *out, unsigned status, char *body)
{
	out->status = status;
	out->body = body;
}

static char *rpc_error(json_t *id, int code, const char *message)
{
	json_t *j = json_pack("{ss sO s{si ss}}", "jsonrpc", "2.0", "id", id ? id : json_null(), "error", "code", code,
			      "message", message);
	char *text = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	return text;
}

/* A libpq conninfo value, quoted. */
static void put_value(BoundedBuf *b, const char *key, const char *v)
{
	util_buf_append(b, key, strlen(key));
	util_buf_append(b, "='", 2);
	for (; *v; v++) {
		if (*v == '\'' || *v == '\\')
			util_buf_append(b, "\\", 1);
		util_buf_append(b, v, 1);
	}
	util_buf_append(b, "' ", 2);
}

/*
 * How a session reaches the gateway's own listener: loopback for a wildcard address (so a
 * password is taken without TLS), TLS when the listener offers it.
 */
static char *own_conninfo(const Config *c, const char *user, const char *credential, const char *database)
{
	const char *host = c->listen_address;
	if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "*") == 0 || host[0] == 0)
		host = "127.0.0.1";
	else if (strcmp(host, "::") == 0)
		host = "::1";
	char port[16];
	snprintf(port, sizeof port, "%d", c->listen_port);
	BoundedBuf b = {.max = 64 * 1024};
	put_value(&b, "host", host);
	put_value(&b, "port", port);
	put_value(&b, "dbname", database);
	put_value(&b, "user", user);
	put_value(&b, "password", credential);
	put_value(&b, "sslmode", c->tls_mode == TLS_DISABLE ? "disable" : "require");
	put_value(&b, "application_name", "pgcordon-mcp-http");
	util_buf_append(&b, "", 1);
	return b.data;
}

/* Closes s (under mu, not busy): its upstream session ends. */
static void session_free(Session *s)
{
	mcp_db_free(s->db);
	close(s->cancel[0]);
	close(s->cancel[1]);
	free(s->call_id);
	log_event(LOG_INFO, "mcp_session_closed", "id=%.8s", s->id);
	memset(s, 0, sizeof *s);
}

/* Under mu: closes the sessions idle too long. */
static void expire(int64_t now)
{
	for (int i = 0; i < MCP_SESSIONS_MAX; i++)
		if (sessions[i].used && !sessions[i].busy && now - sessions[i].last_ms > IDLE_MS)
			session_free(&sessions[i]);
}

/* Under mu: the session with this id and credential, or NULL (the same to a stranger as to no session). */
static Session *find(const char *id, const char *owner)
{
	if (!id || strlen(id) != MCP_SESSION_ID_LEN - 1)
		return NULL;
	for (int i = 0; i < MCP_SESSIONS_MAX; i++) {
		Session *s = &sessions[i];
		if (s->used && !s->closing && util_ct_equal(s->id, id, MCP_SESSION_ID_LEN - 1) &&
		    util_ct_equal(s->owner, owner, 64))
			return s;
	}
	return NULL;
}

/* Under mu: wakes s's running call, which cancels its statement through the gateway. */
static void cancel_call(Session *s)
{
	s->cancel_asked = true;
	if (write(s->cancel[1], "c", 1) < 0 && errno != EAGAIN)
		log_event(LOG_WARN, "mcp_cancel_failed", "id=%.8s error=\"%s\"", s->id, strerror(errno));
}

/* Empties s's cancel pipe (non-blocking). */
static void drain_cancel(Session *s)
{
	char bytes[64];
	while (read(s->cancel[0], bytes, sizeof bytes) > 0) {
	}
}

static McpWatch on_cancel(void *arg)
{
	drain_cancel(arg);
	return MCP_CANCEL;
}

static bool starts(void *arg, const char *id)
{
	Session *s = arg;
	pthread_mutex_lock(&mu);
	free(s->call_id);
	s->call_id = xstrdup(id);
	pthread_mutex_unlock(&mu);
	return true;
}

/* initialize without a session: opens one. */
static void open_session(const Config *c, const char *user, const char *owner, const char *credential,
			 const char *database, const char *body, size_t len, McpHttpAnswer *out)
{
	if (!database && c->ndatabases == 1)
		database = c->databases[0].name;
	if (!database || !config_find_database(c, database)) {
		answer(out, 400, rpc_error(NULL, -32600, database ? "Invalid Request: no such database in the gateway"
							     : "Invalid Request: name the database: POST /mcp?database=NAME"));
		return;
	}
	int64_t now = (int64_t)util_now_ms();
	pthread_mutex_lock(&mu);
	expire(now);
	Session *s = NULL, *oldest = NULL;
	for (int i = 0; i < MCP_SESSIONS_MAX && !s; i++) {
		if (!sessions[i].used)
			s = &sessions[i];
		else if (!sessions[i].busy && !sessions[i].closing && (!oldest || sessions[i].last_ms < oldest->last_ms))
			oldest = &sessions[i];
	}
	if (!s && oldest) {
		session_free(oldest); /* the least recently used idle one makes room */
		s = oldest;
	}
	if (!s || pipe2(s->cancel, O_NONBLOCK | O_CLOEXEC) != 0) {
		pthread_mutex_unlock(&mu);
		answer(out, 503, rpc_error(NULL, -32000, "every MCP session is busy: try again later"));
		return;
	}
	uint8_t raw[16];
	util_random(raw, sizeof raw);
	util_hex_encode(raw, sizeof raw, s->id);
	memcpy(s->owner, owner, sizeof s->owner);
	char *conninfo = own_conninfo(c, user, credential, database);
	s->db = mcp_db_new(conninfo, (McpLimits){.max_rows = MCP_ROWS, .max_bytes = MCP_BYTES});
	util_wipe_free(conninfo);
	mcp_db_watch(s->db, s->cancel[0], on_cancel, s);
	s->used = true;
	s->last_ms = now;
	char *reply = mcp_handle(s->db, body, len, NULL, NULL);
	snprintf(out->session_id, sizeof out->session_id, "%s", s->id);
	pthread_mutex_unlock(&mu);
	char q[300];
	log_event(LOG_INFO, "mcp_session_opened", "id=%.8s user=%s database=%s", out->session_id,
		  log_quote(q, sizeof q, user), database);
	answer(out, 200, reply);
}

/* What a message is: a request (with an id), and its method. NULL id: not a request. */
typedef struct {
	json_t *msg, *id;
	const char *method;
} Kind;

static void classify(const char *body, size_t len, Kind *k)
{
	k->msg = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, NULL);
	k->id = json_object_get(k->msg, "id");
	k->method = json_string_value(json_object_get(k->msg, "method"));
	if (!json_is_string(k->id) && !json_is_integer(k->id))
		k->id = NULL;
}

void mcp_http_post(const Config *c, const char *user, const char *credential, const char *session,
		   const char *database, const char *body, size_t len, McpHttpAnswer *out)
{
	memset(out, 0, sizeof *out);
	char owner[65];
	util_sha256_hex(credential, strlen(credential), owner);
	Kind k;
	classify(body, len, &k);
	if (!session) {
		if (k.id && util_str_same(k.method, "initialize"))
			open_session(c, user, owner, credential, database, body, len, out);
		else if (!k.msg)
			answer(out, 400, mcp_handle(NULL, body, len, NULL, NULL)); /* the parse error, said as JSON-RPC says it */
		else
			answer(out, 400, rpc_error(k.id, -32600, "Invalid Request: no Mcp-Session-Id: initialize first"));
		json_decref(k.msg);
		return;
	}
	pthread_mutex_lock(&mu);
	expire((int64_t)util_now_ms());
	Session *s = find(session, owner);
	if (!s) {
		pthread_mutex_unlock(&mu);
		answer(out, 404, rpc_error(k.id, -32001, "Session not found: initialize a new one"));
		json_decref(k.msg);
		return;
	}
	s->last_ms = (int64_t)util_now_ms();
	if (!k.id) {
		/* Without a valid id mcp_handle runs nothing: it says what is malformed, or NULL. */
		char *bad = mcp_handle(s->db, body, len, NULL, NULL);
		if (bad) {
			pthread_mutex_unlock(&mu);
			answer(out, 400, bad);
			json_decref(k.msg);
			return;
		}
		/* A notification (or a response): taken, not answered. Only a cancellation acts. */
		char *cancelled = NULL;
		free(mcp_peek(body, len, &cancelled));
		if (cancelled && s->busy && s->call_id && strcmp(cancelled, s->call_id) == 0)
			cancel_call(s);
		free(cancelled);
		pthread_mutex_unlock(&mu);
		answer(out, 202, NULL);
		json_decref(k.msg);
		return;
	}
	if (s->busy || calls >= MCP_CALLS_MAX) {
		bool busy = s->busy;
		pthread_mutex_unlock(&mu);
		char *cancelled = NULL, *pong = busy ? mcp_peek(body, len, &cancelled) : NULL;
		free(cancelled);
		if (pong)
			answer(out, 200, pong); /* a ping is answered while a call runs */
		else if (busy)
			answer(out, 409, rpc_error(k.id, -32000, "a call is already running in this session: wait for its "
							 "answer, or cancel it with notifications/cancelled"));
		else
			answer(out, 503, rpc_error(k.id, -32000, "too many MCP calls are running: try again later"));
		json_decref(k.msg);
		return;
	}
	s->busy = true;
	calls++;
	pthread_mutex_unlock(&mu);
	json_decref(k.msg);

	char *reply = mcp_handle(s->db, body, len, starts, s);

	pthread_mutex_lock(&mu);
	s->busy = false;
	calls--;
	drain_cancel(s); /* a cancellation that came after the statement's end */
	if (s->cancel_asked) {
		free(reply); /* the protocol: a cancelled request gets no response */
		reply = NULL;
	}
	s->cancel_asked = false;
	free(s->call_id);
	s->call_id = NULL;
	s->last_ms = (int64_t)util_now_ms();
	if (s->closing)
		session_free(s);
	pthread_mutex_unlock(&mu);
	answer(out, reply ? 200 : 202, reply);
}

unsigned mcp_http_delete(const char *credential, const char *session)
{
	char owner[65];
	util_sha256_hex(credential, strlen(credential), owner);
	pthread_mutex_lock(&mu);
	Session *s = find(session, owner);
	if (!s) {
		pthread_mutex_unlock(&mu);
		return 404;
	}
	if (s->busy) {
		s->closing = true; /* the call's thread frees it */
		cancel_call(s);
	} else {
		session_free(s);
	}
	pthread_mutex_unlock(&mu);
	return 204;
}

void mcp_http_cancel_all(void)
{
	pthread_mutex_lock(&mu);
	for (int i = 0; i < MCP_SESSIONS_MAX; i++)
		if (sessions[i].used && sessions[i].busy)
			cancel_call(&sessions[i]);
	pthread_mutex_unlock(&mu);
}

void mcp_http_stop(void)
{
	pthread_mutex_lock(&mu);
	for (int i = 0; i < MCP_SESSIONS_MAX; i++)
		if (sessions[i].used && !sessions[i].busy)
			session_free(&sessions[i]);
	pthread_mutex_unlock(&mu);
}
