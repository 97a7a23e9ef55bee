/* Client sessions: startup, TLS, SCRAM authentication, relay, close and shutdown. */
#include "session/session.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/metrics.h"
#include "core/util.h"
#include "auth/apikey.h"
#include "auth/jwt.h"
#include "auth/oidc.h"
#include "session/cancel.h"
#include "approval/approval.h"
#include "session/hold.h"
#include <openssl/crypto.h>
#include <time.h>
#include "session/session_internal.h"
#include "session/audit_trail.h"
#include "audit/audit.h"

#define FACTS_CACHE_ENTRIES 4096

/* Effective policies shared by the worker's sessions of one identity, so decision memos hit. */
typedef struct SharedPolicy {
	char *key;
	EffectivePolicy *ep;
	Config *config; /* the ep points into it */
	int refs;
	struct SharedPolicy *next;
} SharedPolicy;

struct SessionWorker {
	Session *head;
	int count;
	Session *reap; /* closed sessions, freed at the end of the loop iteration */
	struct event *reap_ev;
	struct event *deadline_ev;
	bool shutdown_seen;
	FactsCache *cache;
	SharedPolicy *policies;
	UpstreamCancel *cancels; /* on their way (upstream_cancel.c) */
};

UpstreamCancel **session__worker_cancels(SessionWorker *sw) { return &sw->cancels; }

static int active_clients;    /* atomic: every accepted client connection */
static int shutting_down;     /* atomic */
static uint64_t next_session_id; /* atomic */

int session_active_count(void) { return __atomic_load_n(&active_clients, __ATOMIC_RELAXED); }

static void client_on_event(Sock *sock, short what, void *arg);
static void process_client(Session *s);
static void authenticated(Session *s);
static void set_identity(Session *s, char *const *groups, int ngroups, const char *method, int64_t expires);

/* ---- sending to the client ---- */

void session__send_client(Session *s, const uint8_t *data, size_t len)
{
	evbuffer_add(s->client.out, data, len);
}

void session__queue(struct evbuffer *out, MsgBuilder *b)
{
	if (!b->failed && b->len)
		evbuffer_add(out, b->data, b->len);
	msgb_free(b);
}

static void send_built(Session *s, MsgBuilder *b) { session__queue(s->client.out, b); }

static void flush_client(Session *s)
{
	if (sock_flush(&s->client) == IO_ERROR && s->state != SESS_CLOSED)
		session_close(s, "client write failed", NULL, NULL);
}

/* ---- closing ---- */

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	SessionWorker *sw = arg;
	while (sw->reap) {
		Session *s = sw->reap;
		sw->reap = s->next;
		if (s->dns_req)
			evdns_getaddrinfo_cancel(s->dns_req);
		sock_free(&s->client);
		sock_free(&s->server);
		if (s->timer)
			event_free(s->timer);
		if (s->held_timer)
			event_free(s->held_timer);
		free(s->rows_portal);
		free(s->rows_sql);
		free(s->rows_params);
		if (s->auth) {
			util_wipe_free(s->auth->password);
			free(s->auth->startup_body);
			free(s->auth);
		}
		for (int i = 0; i < s->ngroups; i++)
			free(s->groups[i]);
		free(s->groups);
		free(s->apikey_hash);
		pipeline_free(&s->pipeline);
		session__audit_free(s);
		session__free_prepared(s);
		session__mask_free(s);
		session__policy_release(s);
		free(s->scratch);
		config_release(s->config);
		free(s->user_name);
		free(s->database_name);
		free(s);
		__atomic_sub_fetch(&active_clients, 1, __ATOMIC_RELAXED);
	}
	if (__atomic_load_n(&shutting_down, __ATOMIC_ACQUIRE) && sw->count == 0)
		event_base_loopexit(event_get_base(sw->reap_ev), NULL);
}

EffectivePolicy *session__policy_acquire(Session *s, Config *c, char *const *groups, int ngroups)
{
	char key[2048];
	uint64_t grants = approval_grants_generation();
	int o = snprintf(key, sizeof key, "%llu.%llu\x1f%s\x1f%s\x1f%s", (unsigned long long)c->generation,
			 (unsigned long long)grants, s->database_name, s->user_name, s->role ? s->role : "");
	for (int i = 0; i < ngroups && o > 0 && (size_t)o < sizeof key; i++)
		o += snprintf(key + o, sizeof key - (size_t)o, "\x1f%s", groups[i]);
	SessionWorker *sw = s->sw;
	SharedPolicy *sp = NULL;
	if (o > 0 && (size_t)o < sizeof key)
		for (sp = sw->policies; sp && strcmp(sp->key, key) != 0; sp = sp->next) {
		}
	if (!sp) {
		sp = xcalloc(1, sizeof *sp);
		sp->key = xstrdup(o > 0 && (size_t)o < sizeof key ? key : "");
		sp->ep = policy_effective(c, s->user_name, groups, ngroups, s->database_name);
		policy_set_role(sp->ep, s->role);
		if (sp->ep->scoped)
			approval_apply_grants(sp->ep, s->user_name, groups, ngroups);
		sp->config = config_ref(c);
		if (sp->key[0]) { /* an identity too long for a key is simply not shared */
			sp->next = sw->policies;
			sw->policies = sp;
		}
	}
	sp->refs++;
	s->shared_policy = sp;
	s->policy = sp->ep;
	s->policy_generation = c->generation;
	s->grants_generation = grants;
	s->inspecting = !sp->ep->allow_all && !sp->ep->unrestricted;
	return sp->ep;
}

void session__policy_release(Session *s)
{
	SharedPolicy *sp = s->shared_policy;
	s->shared_policy = NULL;
	s->policy = NULL;
	if (!sp || --sp->refs > 0)
		return;
	for (SharedPolicy **pp = &s->sw->policies; *pp; pp = &(*pp)->next) {
		if (*pp == sp) {
			*pp = sp->next;
			break;
		}
	}
	policy_free(sp->ep);
	config_release(sp->config);
	free(sp->key);
	free(sp);
}

static void on_exit_worker(Worker *w)
{
	SessionWorker *sw = w->owner;
	if (!sw)
		return;
	reap_cb(-1, 0, sw);
	session__cancels_free(sw->cancels); /* their events go with the worker's event base */
	event_free(sw->reap_ev);
	facts_cache_free(sw->cache);
	if (sw->deadline_ev)
		event_free(sw->deadline_ev);
	free(sw);
	w->owner = NULL;
}

void session_close(Session *s, const char *reason, const char *sqlstate, const char *message)
{
	if (s->state == SESS_CLOSED)
		return;
	if (message) {
		MsgBuilder b;
		msgb_init(&b);
		proto_build_error(&b, true, sqlstate, message, NULL, NULL);
		send_built(s, &b);
	}
	/* One last attempt to deliver what is queued (the error above, a final result). */
	if (s->client.out && evbuffer_get_length(s->client.out) > 0 && !s->client.handshaking)
		sock_flush(&s->client);
	s->state = SESS_CLOSED;
	session__forget_cancels(s);
	session__hold_drop(s, "the client's session ended");
	session__inspect_forget(s);
	session__audit_session_end(s, reason);

	char qreason[200], quser[80], qdb[80];
	log_event(LOG_INFO, "session_end",
		  "session=%llu peer=%s user=%s database=%s reason=%s bytes_in=%llu bytes_out=%llu duration_ms=%llu",
		  (unsigned long long)s->id, s->peer, log_quote(quser, sizeof quser, s->user_name),
		  log_quote(qdb, sizeof qdb, s->database_name), log_quote(qreason, sizeof qreason, reason),
		  (unsigned long long)s->bytes_from_client, (unsigned long long)s->bytes_from_server,
		  (unsigned long long)(util_now_ms() - s->started_ms));

	if (s->cancel_registered)
		cancel_unregister(s->pid);
	if (s->client.rev)
		event_del(s->client.rev);
	if (s->client.wev)
		event_del(s->client.wev);
	if (s->server.rev)
		event_del(s->server.rev);
	if (s->server.wev)
		event_del(s->server.wev);
	if (s->timer)
		event_del(s->timer);

	SessionWorker *sw = s->sw;
	if (s->prev)
		s->prev->next = s->next;
	else
		sw->head = s->next;
	if (s->next)
		s->next->prev = s->prev;
	sw->count--;
	s->next = sw->reap;
	s->prev = NULL;
	sw->reap = s;
	event_active(sw->reap_ev, EV_READ, 0);
}

static void close_fatal(Session *s, const char *sqlstate, const char *message)
{
	session_close(s, message, sqlstate, message);
}

/* ---- accept ---- */

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	Session *s = arg;
	if (s->state == SESS_CANCELLING) {
		session_close(s, "cancel request", NULL, NULL); /* nothing is said on a cancel connection */
		return;
	}
	if (s->state != SESS_READY) {
		char msg[128];
		snprintf(msg, sizeof msg, "startup timeout: startup and authentication did not finish within %d ms",
			 s->config->startup_timeout_ms);
		close_fatal(s, "08P01", msg);
	}
}


static SessionWorker *session_worker(Worker *w)
{
	if (!w->owner) {
		SessionWorker *sw = xcalloc(1, sizeof *sw);
		sw->reap_ev = event_new(w->base, -1, 0, reap_cb, sw);
		sw->cache = facts_cache_new(FACTS_CACHE_ENTRIES);
		w->owner = sw;
	}
	return w->owner;
}

static void on_accept(Worker *w, int fd, const struct sockaddr *addr, int addrlen)
{
	(void)addrlen;
	Config *config = config_current();
	int n = __atomic_add_fetch(&active_clients, 1, __ATOMIC_RELAXED);
	/* Far past the limit, do not even spend a session on the connection. */
	if (!config || n > config->max_client_conn + 64 || __atomic_load_n(&shutting_down, __ATOMIC_ACQUIRE)) {
		__atomic_sub_fetch(&active_clients, 1, __ATOMIC_RELAXED);
		if (config && !__atomic_load_n(&shutting_down, __ATOMIC_ACQUIRE))
			metrics_inc(MET_CLIENTS_OVER_LIMIT);
		close(fd);
		config_release(config);
		return;
	}
	SessionWorker *sw = session_worker(w);
	Session *s = xcalloc(1, sizeof *s);
	s->sw = sw;
	s->worker = w;
	s->config = config;
	s->id = __atomic_add_fetch(&next_session_id, 1, __ATOMIC_RELAXED);
	s->started_ms = util_now_ms();
	s->over_limit = n > config->max_client_conn;
	s->loopback = addr->sa_family == AF_UNIX || util_loopback_sockaddr(addr);
	s->server.fd = -1;
	pipeline_init(&s->pipeline);
	char host[INET6_ADDRSTRLEN];
	int port = util_sockaddr_host(addr, host, sizeof host);
	snprintf(s->peer, sizeof s->peer, "%s:%d", host, port < 0 ? 0 : port);

	s->next = sw->head;
	if (sw->head)
		sw->head->prev = s;
	sw->head = s;
	sw->count++;

	evutil_make_socket_nonblocking(fd);
	sock_init(&s->client, w->base, fd, client_on_event, s);
	sock_resume_read(&s->client);
	s->timer = evtimer_new(w->base, timer_cb, s);
	struct timeval tv = {s->config->startup_timeout_ms / 1000, (s->config->startup_timeout_ms % 1000) * 1000};
	evtimer_add(s->timer, &tv);
	metrics_inc(MET_CLIENTS_ACCEPTED);
	log_event(LOG_DEBUG, "client_connected", "session=%llu peer=%s worker=%d", (unsigned long long)s->id,
		  s->peer, w->index);
}

/* ---- startup phase ---- */

static void send_byte(Session *s, char c)
{
	evbuffer_add(s->client.out, &c, 1);
	flush_client(s);
}

/* The upstream has the client's cancel (or could not be given it): the request is answered. */
static void cancel_request_done(Session *s, CancelOutcome outcome)
{
	(void)outcome; /* the client is told nothing either way, as PostgreSQL tells it nothing */
	session_close(s, "cancel request", NULL, NULL);
}

static void handle_cancel(Session *s, const StartupPacket *sp)
{
	CancelTarget t;
	char held[24];
	bool deferred;
	if (!cancel_lookup(sp->cancel_pid, sp->cancel_key, &t, held, &deferred)) {
		log_event(LOG_INFO, "cancel_ignored", "peer=%s reason=\"unknown key\"", s->peer);
		session_close(s, "cancel request with unknown key", NULL, NULL);
		return;
	}
	if (held[0]) {
		/* The statement waits for an approval, not upstream: the request ends instead. */
		approval_cancel(held, "cancelled by the client");
		log_event(LOG_INFO, "approval_cancelled", "peer=%s request=%s", s->peer, held);
		session_close(s, "cancel request", NULL, NULL);
		return;
	}
	if (deferred) {
		/* The statement it is meant for has not gone upstream yet (it waits for a cut-off's
		 * cancel): its session sends this one right after it. */
		log_event(LOG_INFO, "cancel_deferred", "peer=%s target_session_pid=%u", s->peer, sp->cancel_pid);
		session_close(s, "cancel request", NULL, NULL);
		return;
	}
	if (!session__send_cancel(s, &t, cancel_request_done)) {
		session_close(s, "cancel request", NULL, NULL);
		return;
	}
	log_event(LOG_INFO, "cancel_forwarded", "peer=%s target_session_pid=%u", s->peer, sp->cancel_pid);
	/* Closed once the upstream has taken it: a client that waits for the close (libpq does)
	 * knows its cancel has reached the backend. */
	s->state = SESS_CANCELLING;
	sock_pause_read(&s->client);
}

static void send_negotiate_version(Session *s, const StartupPacket *sp)
{
	MsgBuilder b;
	msgb_init(&b);
	msgb_begin(&b, 'v');
	msgb_u32(&b, PROTO_VERSION_30);
	int n = 0;
	for (int i = 0; i < sp->nparams; i++)
		if (strncmp(sp->names[i], "_pq_.", 5) == 0)
			n++;
	msgb_u32(&b, (uint32_t)n);
	for (int i = 0; i < sp->nparams; i++)
		if (strncmp(sp->names[i], "_pq_.", 5) == 0)
			msgb_str(&b, sp->names[i]);
	msgb_end(&b);
	send_built(s, &b);
}

static void begin_authentication(Session *s)
{
	AuthState *a = s->auth;
	const StartupPacket *sp = &a->startup;
	Config *c = s->config;
	char msg[256];

	s->user_name = xstrdup(sp->user);
	s->database_name = xstrdup(sp->database);
	if (s->over_limit) {
		metrics_inc(MET_CLIENTS_OVER_LIMIT);
		snprintf(msg, sizeof msg, "too many client connections (limits.max_client_conn is %d)", c->max_client_conn);
		close_fatal(s, "53300", msg);
		return;
	}
	for (int i = 0; i < sp->nparams; i++) {
		if (strcmp(sp->names[i], "replication") == 0 && strcmp(sp->values[i], "false") != 0 &&
		    strcmp(sp->values[i], "0") != 0 && strcmp(sp->values[i], "off") != 0) {
			close_fatal(s, "0A000", "pgcordon does not relay replication connections");
			return;
		}
	}
	if (c->tls_mode == TLS_REQUIRE && !s->client_tls) {
		close_fatal(s, "28000", "pgcordon requires TLS (tls.mode: require); connect with sslmode=require");
		return;
	}
	if (!s->client_tls && !s->loopback) {
		close_fatal(s, "28000",
			    "pgcordon refuses passwords over unencrypted connections from non-loopback clients; use sslmode=require");
		return;
	}
	s->user = config_find_user(c, sp->user);
	if (!s->user && (c->noidc > 0 || c->napi_keys > 0)) {
		/* Tokens and API keys are checked by value: ask for the password itself (the
		 * connection is TLS or loopback, checked above). */
		MsgBuilder b;
		msgb_init(&b);
		proto_build_auth(&b, 3, NULL, 0);
		send_built(s, &b);
		flush_client(s);
		if (s->state != SESS_CLOSED)
			s->state = SESS_AUTH_PASSWORD;
		return;
	}
	ScramVerifier v;
	a->user_known = s->user && scram_parse_verifier(s->user->verifier, &v);
	if (!a->user_known)
		scram_mock_verifier(sp->user, &v); /* same exchange, so a probe cannot tell names apart */
	scram_server_init(&a->scram, &v);

	static const char mechs[] = "SCRAM-SHA-256\0";
	MsgBuilder b;
	msgb_init(&b);
	proto_build_auth(&b, 10, mechs, sizeof mechs);
	send_built(s, &b);
	flush_client(s);
	if (s->state != SESS_CLOSED)
		s->state = SESS_AUTH_INIT;
}

/* Refuses the login; client_detail (safe to show: never the secret) is appended when given. */
static void auth_failed(Session *s, const char *method, const char *why, const char *client_detail)
{
	char q[300], qu[80];
	int m = metrics_login(method, 0);
	if (m >= 0)
		metrics_inc((Metric)m);
	log_event(LOG_WARN, "auth_failed", "session=%llu peer=%s user=%s method=%s reason=%s",
		  (unsigned long long)s->id, s->peer, log_quote(qu, sizeof qu, s->user_name), method,
		  log_quote(q, sizeof q, why));
	session__audit_login_failed(s, method, why);
	char msg[400];
	snprintf(msg, sizeof msg, "password authentication failed for user \"%.63s\"%s%.250s", s->user_name,
		 client_detail ? ": " : "", client_detail ? client_detail : "");
	session_close(s, why, "28P01", msg);
}

/* Works out what the identity may do; refuses the connection when nothing at all. */
static bool apply_policy(Session *s)
{
	s->role = policy_role_for(s->config, s->groups, s->ngroups);
	session__policy_acquire(s, s->config, s->groups, s->ngroups);
	s->sw_cache = s->sw->cache;
	char msg[300];
	if (s->policy->deny_all) {
		snprintf(msg, sizeof msg, "pgcordon: no policy grants user \"%.63s\" access to database \"%.63s\"",
			 s->user_name, s->database_name);
		char qu[80];
		metrics_inc(MET_LOGIN_REFUSED);
		log_event(LOG_WARN, "connection_refused", "session=%llu user=%s rule=no_policy", (unsigned long long)s->id,
			  log_quote(qu, sizeof qu, s->user_name));
		close_fatal(s, "42501", msg);
		return false;
	}
	if (s->config->nroles > 0 && !s->role && !s->policy->matched) {
		snprintf(msg, sizeof msg, "pgcordon: the groups of \"%.63s\" map to no database role and no policy",
			 s->user_name);
		close_fatal(s, "42501", msg);
		return false;
	}
	const StartupPacket *sp = &s->auth->startup;
	if (!policy_check_startup(s->policy, sp->names, sp->values, sp->nparams, msg, sizeof msg)) {
		close_fatal(s, "42501", msg);
		return false;
	}
	return true;
}

static void set_identity(Session *s, char *const *groups, int ngroups, const char *method, int64_t expires)
{
	s->groups = xcalloc(ngroups ? (size_t)ngroups : 1, sizeof(char *));
	for (int i = 0; i < ngroups; i++)
		s->groups[s->ngroups++] = xstrdup(groups[i]);
	s->auth_method = method;
	s->expires_at = expires;
}

/* A token whose keys just arrived, or a first try: verify and go on, wait, or refuse. */
static void try_token(Session *s, bool retry)
{
	AuthState *a = s->auth;
	OidcIdentity id;
	char err[300];
	OidcOutcome r = oidc_verify(s->config, a->password, s->user_name, retry, &id, err, sizeof err);
	if (r == OIDC_PENDING) {
		s->state = SESS_AUTH_WAIT_KEYS; /* the key fetch wakes us through on_notify */
		return;
	}
	util_wipe_free(a->password);
	a->password = NULL;
	if (r == OIDC_REFUSED) {
		char detail[340];
		snprintf(detail, sizeof detail, "token refused: %s", err);
		auth_failed(s, "oidc", err, detail);
		return;
	}
	set_identity(s, id.groups, id.ngroups, "oidc", id.expires);
	oidc_identity_free(&id);
	s->state = SESS_AUTH_PASSWORD;
	authenticated(s);
}

/* A PasswordMessage carrying an API key or an OIDC token. */
static void handle_password(Session *s, const uint8_t *body, size_t len)
{
	if (len == 0 || body[len - 1] != 0 || memchr(body, 0, len) != body + len - 1) {
		close_fatal(s, "08P01", "invalid password message");
		return;
	}
	const char *password = (const char *)body;
	if (apikey_looks_like(password)) {
		const ApiKeyConfig *k = config_find_api_key(s->config, s->user_name);
		if (!k || !apikey_matches(password, k->hash)) {
			auth_failed(s, "apikey", k ? "wrong API key" : "no API key with this name", NULL);
			return;
		}
		if (k->expires && (int64_t)time(NULL) >= k->expires) {
			auth_failed(s, "apikey", "API key expired", "the API key has expired");
			return;
		}
		set_identity(s, k->groups, k->ngroups, "apikey", k->expires);
		s->apikey_hash = xstrdup(k->hash);
		authenticated(s);
		return;
	}
	if (s->config->noidc > 0) {
		/* Anything but an API key is a token here: verification says precisely what is wrong. */
		s->auth->password = xstrdup(password);
		try_token(s, false);
		return;
	}
	auth_failed(s, "password", "not an API key, and no OIDC issuer is configured", NULL);
}

/* One SASL message from the client; returns false when the session was closed. */
static void handle_sasl(Session *s, const uint8_t *body, size_t len)
{
	AuthState *a = s->auth;
	MsgReader r;
	char out[SCRAM_MSG_MAX], err[160];
	msgr_init(&r, body, len);
	if (s->state == SESS_AUTH_INIT) {
		const char *mech = msgr_str(&r);
		uint32_t n = msgr_u32(&r);
		const uint8_t *data = msgr_bytes(&r, n);
		if (r.failed || msgr_remaining(&r) != 0 || n == 0xffffffffu) {
			close_fatal(s, "08P01", "invalid SASLInitialResponse message");
			return;
		}
		if (strcmp(mech, "SCRAM-SHA-256") != 0) {
			close_fatal(s, "28000", "client selected an invalid SASL authentication mechanism");
			return;
		}
		if (!scram_server_first(&a->scram, (const char *)data, n, out, sizeof out, err, sizeof err)) {
			char msg[200];
			snprintf(msg, sizeof msg, "invalid SCRAM message: %s", err);
			close_fatal(s, "08P01", msg);
			return;
		}
		MsgBuilder b;
		msgb_init(&b);
		proto_build_auth(&b, 11, out, strlen(out));
		send_built(s, &b);
		flush_client(s);
		if (s->state != SESS_CLOSED)
			s->state = SESS_AUTH_CONT;
		return;
	}
	bool ok;
	if (!scram_server_final(&a->scram, (const char *)body, len, &ok, out, sizeof out, err, sizeof err)) {
		char msg[200];
		snprintf(msg, sizeof msg, "invalid SCRAM message: %s", err);
		close_fatal(s, "08P01", msg);
		return;
	}
	if (!ok || !a->user_known) {
		auth_failed(s, "scram", a->user_known ? "wrong password" : "unknown user", NULL);
		return;
	}
	MsgBuilder b;
	msgb_init(&b);
	proto_build_auth(&b, 12, out, strlen(out));
	send_built(s, &b);
	set_identity(s, s->user->groups, s->user->ngroups, "scram", 0);
	authenticated(s);
}

/* The identity is proven: AuthenticationOk, then policy, role, and the upstream login. */
static void authenticated(Session *s)
{
	MsgBuilder b;
	msgb_init(&b);
	proto_build_auth(&b, 0, NULL, 0);
	send_built(s, &b);

	s->db = config_find_database(s->config, s->database_name);
	if (!s->db) {
		char msg[160];
		snprintf(msg, sizeof msg, "database \"%.63s\" is not configured in pgcordon", s->database_name);
		close_fatal(s, "3D000", msg);
		return;
	}
	if (!apply_policy(s))
		return;
	/* With the store failing and memory crowded, a new session could run nothing anyway. */
	if (audit_enabled() && !s->config->audit_continue && audit_crowded(0)) {
		audit_count_unrecorded(AUDIT_UNREC_SESSION);
		close_fatal(s, "58030", "pgcordon: the audit store cannot be written; new sessions are refused until it recovers");
		return;
	}
	int m = metrics_login(s->auth_method, 1);
	if (m >= 0)
		metrics_inc((Metric)m);
	char qu[80], qd[80], qr[80];
	log_event(LOG_INFO, "auth_ok", "session=%llu peer=%s user=%s database=%s method=%s groups=%d role=%s tls=%s",
		  (unsigned long long)s->id, s->peer, log_quote(qu, sizeof qu, s->user_name),
		  log_quote(qd, sizeof qd, s->database_name), s->auth_method, s->ngroups,
		  log_quote(qr, sizeof qr, s->role ? s->role : "-"), s->client_tls ? "yes" : "no");
	flush_client(s);
	if (s->state == SESS_CLOSED)
		return;
	s->state = SESS_CONNECTING;
	sock_pause_read(&s->client); /* anything the client pipelines waits until upstream is ready */
	cancel_register(&s->pid, &s->key);
	s->cancel_registered = true;
	upstream_start(s);
}

/* Startup-phase packets: untyped, length-prefixed. */
static bool process_startup_packet(Session *s)
{
	struct evbuffer *in = s->client.in;
	uint8_t hdr[4];
	if (evbuffer_get_length(in) < 4)
		return false;
	evbuffer_copyout(in, hdr, 4);
	uint32_t len = proto_get_u32(hdr);
	if (len < 8 || len > PROTO_STARTUP_MAX) {
		close_fatal(s, "08P01", "invalid startup packet length");
		return false;
	}
	if (evbuffer_get_length(in) < len)
		return false;
	uint8_t *body = xmalloc(len);
	evbuffer_remove(in, body, len);
	StartupPacket sp;
	char err[160];
	if (!proto_parse_startup(body + 4, len - 4, &sp, err, sizeof err)) {
		free(body);
		close_fatal(s, "08P01", err);
		return false;
	}
	if (sp.code == PROTO_SSL_CODE) {
		free(body);
		if (evbuffer_get_length(in) > 0) {
			/* Bytes sent before the handshake could be injected by a man in the middle. */
			close_fatal(s, "08P01", "invalid: received unencrypted data after SSL request");
			return false;
		}
		if (s->client_tls || !s->config->tls_ctx) {
			send_byte(s, 'N');
			return s->state != SESS_CLOSED;
		}
		send_byte(s, 'S');
		if (s->state == SESS_CLOSED)
			return false;
		if (!sock_tls_start(&s->client, s->config->tls_ctx, true, NULL)) {
			session_close(s, s->client.err, NULL, NULL);
			return false;
		}
		s->state = SESS_TLS;
		s->client_tls = true;
		return false; /* wait for handshake events */
	}
	if (sp.code == PROTO_GSSENC_CODE) {
		free(body);
		send_byte(s, 'N'); /* no GSSAPI encryption: the client falls back */
		return s->state != SESS_CLOSED;
	}
	if (sp.code == PROTO_CANCEL_CODE) {
		free(body);
		handle_cancel(s, &sp);
		return false;
	}
	if ((sp.code >> 16) != 3) {
		char msg[120];
		snprintf(msg, sizeof msg, "unsupported frontend protocol %u.%u: pgcordon supports 3.0",
			 sp.code >> 16, sp.code & 0xffff);
		free(body);
		close_fatal(s, "0A000", msg);
		return false;
	}
	uint32_t requested = sp.code;
	if (requested != PROTO_VERSION_30) {
		/* A newer 3.x minor: parse as 3.0 and tell the client what we speak. */
		proto_put_u32(body + 4, PROTO_VERSION_30);
		if (!proto_parse_startup(body + 4, len - 4, &sp, err, sizeof err)) {
			free(body);
			close_fatal(s, "08P01", err);
			return false;
		}
	}
	if (!sp.user || !*sp.user) {
		free(body);
		close_fatal(s, "28000", "no PostgreSQL user name specified in startup packet");
		return false;
	}
	s->auth = xcalloc(1, sizeof *s->auth);
	s->auth->startup_body = body;
	s->auth->startup = sp;
	bool has_pq = false;
	for (int i = 0; i < sp.nparams; i++)
		has_pq = has_pq || strncmp(sp.names[i], "_pq_.", 5) == 0;
	if (requested != PROTO_VERSION_30 || has_pq)
		send_negotiate_version(s, &s->auth->startup);
	begin_authentication(s);
	return false;
}

/* Typed messages before the session is ready: only SASL responses, small. */
static bool process_auth_message(Session *s)
{
	struct evbuffer *in = s->client.in;
	uint8_t hdr[5];
	size_t avail = evbuffer_get_length(in);
	char type;
	uint32_t len;
	if (avail < 5)
		return false;
	evbuffer_copyout(in, hdr, 5);
	uint32_t limit = s->state == SESS_AUTH_PASSWORD ? PROTO_PREAUTH_MAX + JWT_MAX_TOKEN : PROTO_PREAUTH_MAX;
	HeaderCheck hc = proto_check_header(hdr, 5, limit, &type, &len);
	if (hc == HDR_TOO_SHORT) {
		close_fatal(s, "08P01", "invalid message length");
		return false;
	}
	if (hc == HDR_TOO_LONG) {
		close_fatal(s, "08P01", "message too large during authentication");
		return false;
	}
	if (avail < 1 + (size_t)len)
		return false;
	if (type != 'p') {
		if (type == 'X') {
			session_close(s, "client terminated during authentication", NULL, NULL);
			return false;
		}
		close_fatal(s, "08P01", "invalid message during authentication: expected a password or SASL response");
		return false;
	}
	uint8_t *msg = xmalloc(len + 1);
	evbuffer_remove(in, msg, 1 + len);
	if (s->state == SESS_AUTH_PASSWORD)
		handle_password(s, msg + 5, len - 4);
	else
		handle_sasl(s, msg + 5, len - 4);
	OPENSSL_cleanse(msg, len + 1);
	free(msg);
	return s->state == SESS_AUTH_CONT;
}

static void process_client(Session *s)
{
	for (;;) {
		switch (s->state) {
		case SESS_STARTUP:
			if (!process_startup_packet(s))
				return;
			break;
		case SESS_AUTH_INIT:
		case SESS_AUTH_CONT:
		case SESS_AUTH_PASSWORD:
			if (!process_auth_message(s))
				return;
			break;
		case SESS_READY:
			session__relay_from_client(s);
			return;
		default:
			return;
		}
	}
}

void session__maybe_close_for_shutdown(Session *s)
{
	if (s->close_when_idle && s->state == SESS_READY && pipeline_idle(&s->pipeline) &&
	    s->client_remaining == 0 && evbuffer_get_length(s->client.in) == 0)
		close_fatal(s, "57P01", "terminating connection because pgcordon is shutting down");
}

static void client_on_event(Sock *sock, short what, void *arg)
{
	(void)sock;
	Session *s = arg;
	if (s->state == SESS_CLOSED)
		return;
	if (s->state == SESS_TLS) {
		SockIo r = sock_tls_handshake(&s->client);
		if (r == IO_ERROR) {
			session_close(s, s->client.err, NULL, NULL);
			return;
		}
		if (r == IO_AGAIN)
			return;
		s->state = SESS_STARTUP;
		if (!(what & EV_READ))
			return;
	}
	if (what & EV_WRITE) {
		flush_client(s);
		if (s->state == SESS_CLOSED)
			return;
		session__balance(s);
	}
	if (!(what & EV_READ))
		return;
	size_t before = evbuffer_get_length(s->client.in);
	SockIo r = sock_read(&s->client, RELAY_READ_MAX);
	if (r == IO_EOF) {
		session_close(s, "client disconnected", NULL, NULL);
		return;
	}
	if (r == IO_ERROR) {
		session_close(s, s->client.err, NULL, NULL);
		return;
	}
	if (r == IO_AGAIN)
		return;
	size_t got = evbuffer_get_length(s->client.in) - before;
	s->bytes_from_client += got;
	metrics_add(MET_BYTES_FROM_CLIENT, got);
	process_client(s);
}

/* Called by upstream.c once the upstream sent its first ReadyForQuery. */
void session__upstream_ready(Session *s)
{
	s->state = SESS_READY;
	event_del(s->timer);
	const char *app = NULL;
	for (int i = 0; i < s->auth->startup.nparams; i++)
		if (strcmp(s->auth->startup.names[i], "application_name") == 0)
			app = s->auth->startup.values[i];
	session__audit_session_start(s, app);
	free(s->auth->startup_body);
	free(s->auth);
	s->auth = NULL;
	if (s->policy->masks_columns) {
		session__mask_start_load(s); /* before the client's first statement */
		if (s->state != SESS_READY)
			return;
	}
	sock_resume_read(&s->client);
	if (evbuffer_get_length(s->client.in) > 0)
		session__relay_from_client(s);
	if (s->state == SESS_READY && __atomic_load_n(&shutting_down, __ATOMIC_ACQUIRE)) {
		s->close_when_idle = true;
		session__maybe_close_for_shutdown(s);
	}
}

/* ---- shutdown ---- */

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	SessionWorker *sw = arg;
	while (sw->head) {
		if (sw->head->state == SESS_CANCELLING)
			session_close(sw->head, "cancel request", NULL, NULL); /* nothing is said on a cancel connection */
		else
			close_fatal(sw->head, "57P01", "terminating connection because pgcordon is shutting down");
	}
}

static void on_notify(Worker *w)
{
	SessionWorker *sw = session_worker(w);
	Session *after;
	for (Session *s = sw->head; s; s = after) {
		after = s->next;
		if (s->state == SESS_AUTH_WAIT_KEYS) {
			try_token(s, true); /* with retry it verifies or refuses: never waits twice */
			continue;
		}
		/* A session may wait for both: an approval (client side) and its last answer's record. */
		if (s->held_id[0] && s->state == SESS_READY)
			session__hold_wake(s);
		if (session__inspect_pending(s) && s->state == SESS_READY && inspect_job_done(s->inspect_job))
			session__relay_from_client(s);
		if (s->state != SESS_CLOSED && s->audit_holding && audit_durable(w->index) >= s->audit_ticket) {
			if (audit_lost(w->index, s->audit_ticket)) {
				/* Strict: an answer goes out only once its statement is recorded, and this never will be. */
				close_fatal(s, "58030",
					    "pgcordon: the audit record of this statement was dropped (the audit store lagged past"
					    " audit.max_pending); its result is withheld and the session ends");
				continue;
			}
			s->audit_holding = false;
			s->audit_released = true;
			session__relay_from_server(s);
		}
	}
	if (!__atomic_load_n(&shutting_down, __ATOMIC_ACQUIRE))
		return;
	if (!sw->shutdown_seen) {
		sw->shutdown_seen = true;
		Config *c = config_current();
		int ms = c ? c->shutdown_timeout_ms : 30000;
		config_release(c);
		sw->deadline_ev = evtimer_new(w->base, deadline_cb, sw);
		struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
		evtimer_add(sw->deadline_ev, &tv);
	}
	Session *next;
	for (Session *s = sw->head; s; s = next) {
		next = s->next;
		if (s->state == SESS_READY) {
			s->close_when_idle = true;
			session__maybe_close_for_shutdown(s);
		} else if (s->state != SESS_CONNECTING && s->state != SESS_CANCELLING) {
			close_fatal(s, "57P01", "terminating connection because pgcordon is shutting down");
		}
	}
	/* With no session left, end the loop now; otherwise the reaper ends it. */
	if (sw->count == 0)
		event_active(sw->reap_ev, EV_READ, 0);
}

void session_begin_shutdown(void) { __atomic_store_n(&shutting_down, 1, __ATOMIC_RELEASE); }

const WorkerHooks session_worker_hooks = {
	.on_accept = on_accept,
	.on_notify = on_notify,
	.on_exit = on_exit_worker,
};
