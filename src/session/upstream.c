/* The upstream side of a session: resolve, connect, TLS, log in with the gateway-held credential. */
#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/log.h"
#include "core/metrics.h"
#include "core/util.h"
#include "session/cancel.h"
#include "session/session_internal.h"

#define UPSTREAM_LOGIN_MSG_MAX (1024 * 1024)

/* Fails the login: the log gets the detail, the client a message without upstream secrets. */
static void upstream_fail(Session *s, const char *sqlstate, const char *client_msg, const char *detail)
{
	char qd[200], qdb[80];
	metrics_inc(MET_UPSTREAM_CONNECT_FAILED);
	log_event(LOG_WARN, "upstream_failed", "session=%llu database=%s host=%s port=%d reason=%s",
		  (unsigned long long)s->id, log_quote(qdb, sizeof qdb, s->db->name), s->db->host, s->db->port,
		  log_quote(qd, sizeof qd, detail));
	session_close(s, client_msg, sqlstate, client_msg);
}

static void connect_failed(Session *s, const char *detail)
{
	char msg[300];
	snprintf(msg, sizeof msg, "pgcordon: cannot connect to upstream database \"%s\": %s", s->db->name, detail);
	upstream_fail(s, "08006", msg, detail);
}

static void send_server(Session *s, MsgBuilder *b)
{
	session__queue(s->server.out, b);
	if (sock_flush(&s->server) == IO_ERROR)
		connect_failed(s, s->server.err);
}

static void send_startup(Session *s)
{
	const StartupPacket *sp = &s->auth->startup;
	MsgBuilder b;
	msgb_init(&b);
	msgb_begin(&b, 0);
	msgb_u32(&b, PROTO_VERSION_30);
	msgb_str(&b, "user");
	msgb_str(&b, s->db->user);
	msgb_str(&b, "database");
	msgb_str(&b, s->db->dbname);
	/* The client's own settings travel unchanged (DateStyle, TimeZone, options, ...), except
	 * those the policy sets itself; named parameters win over -c in options upstream. */
	const EffectivePolicy *ep = s->policy;
	char timeout[32];
	snprintf(timeout, sizeof timeout, "%d", ep->timeout_ms);
	for (int i = 0; i < sp->nparams; i++) {
		if (strncmp(sp->names[i], "_pq_.", 5) == 0 || strcmp(sp->names[i], "replication") == 0)
			continue;
		if (ep->timeout_ms && strcmp(sp->names[i], "statement_timeout") == 0)
			continue;
		if (ep->read_only_by && strcmp(sp->names[i], "default_transaction_read_only") == 0)
			continue;
		if (s->role && strcmp(sp->names[i], "role") == 0)
			continue;
		msgb_str(&b, sp->names[i]);
		msgb_str(&b, sp->values[i]);
	}
	if (ep->timeout_ms) {
		msgb_str(&b, "statement_timeout");
		msgb_str(&b, timeout);
	}
	if (s->role) {
		/* The mapped role, as a startup setting: RESET ROLE comes back to it, not to the login role. */
		msgb_str(&b, "role");
		msgb_str(&b, s->role);
	}
	if (ep->read_only_by) {
		/* Defence in depth: the server itself refuses writes the inspector did not foresee. */
		msgb_str(&b, "default_transaction_read_only");
		msgb_str(&b, "on");
	}
	msgb_u8(&b, 0);
	msgb_end(&b);
	s->up_state = UP_AUTH;
	send_server(s, &b);
}

static void start_tls_or_login(Session *s)
{
	if (s->db->sslmode == SSLMODE_DISABLE) {
		send_startup(s);
		return;
	}
	MsgBuilder b;
	msgb_init(&b);
	msgb_begin(&b, 0);
	msgb_u32(&b, PROTO_SSL_CODE);
	msgb_end(&b);
	s->up_state = UP_SSL_REQUEST;
	send_server(s, &b);
}

/* Starts a non-blocking connect; false with errno set when it failed at once. */
static bool try_connect(Session *s, const struct sockaddr *addr, socklen_t addrlen)
{
	int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	/* A Unix-domain socket connects at once or fails (EAGAIN: the server's backlog is full). */
	int rc = connect(fd, addr, addrlen);
	if (rc < 0 && errno != EINPROGRESS) {
		int saved = errno;
		close(fd);
		errno = saved;
		return false;
	}
	if (addr->sa_family != AF_UNIX) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	}
	sock_init(&s->server, s->worker->base, fd, upstream_on_event, s);
	s->up_state = UP_CONNECTING;
	event_add(s->server.wev, NULL);
	s->server.writing = true;
	return true;
}

static void dns_cb(int result, struct evutil_addrinfo *res, void *arg)
{
	if (result == EVUTIL_EAI_CANCEL) {
		if (res)
			evutil_freeaddrinfo(res);
		return;
	}
	Session *s = arg;
	s->dns_req = NULL;
	if (s->state == SESS_CLOSED) {
		if (res)
			evutil_freeaddrinfo(res);
		return;
	}
	if (result != 0 || !res) {
		char detail[160];
		snprintf(detail, sizeof detail, "cannot resolve host \"%s\": %s", s->db->host, evutil_gai_strerror(result));
		connect_failed(s, detail);
		return;
	}
	int saved = 0;
	for (struct evutil_addrinfo *ai = res; ai; ai = ai->ai_next) {
		if (try_connect(s, ai->ai_addr, (socklen_t)ai->ai_addrlen)) {
			evutil_freeaddrinfo(res);
			return;
		}
		saved = errno;
	}
	evutil_freeaddrinfo(res);
	connect_failed(s, strerror(saved));
}

/* The server's socket in the directory named by host, as libpq finds it (length checked at load). */
static void connect_socket_dir(Session *s)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	config_socket_path(s->db, sa.sun_path, sizeof sa.sun_path);
	if (!try_connect(s, (const struct sockaddr *)&sa, sizeof sa)) {
		char detail[sizeof sa.sun_path + 80];
		snprintf(detail, sizeof detail, "socket \"%s\": %s", sa.sun_path, strerror(errno));
		connect_failed(s, detail);
	}
}

void upstream_start(Session *s)
{
	s->upstream_started_us = util_now_us();
	if (config_host_is_socket_dir(s->db->host)) {
		connect_socket_dir(s);
		return;
	}
	char port[16];
	snprintf(port, sizeof port, "%d", s->db->port);
	struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
					.ai_protocol = IPPROTO_TCP};
	s->up_state = UP_RESOLVING;
	struct evdns_getaddrinfo_request *req = evdns_getaddrinfo(s->worker->dns, s->db->host, port, &hints, dns_cb, s);
	/* A numeric host resolves inside the call, which then returns NULL. */
	if (s->up_state == UP_RESOLVING && s->state != SESS_CLOSED)
		s->dns_req = req;
}

/* Reads the fields of an ErrorResponse body we care about. */
static void error_fields(const uint8_t *body, size_t len, const char **sqlstate, const char **message)
{
	MsgReader r;
	msgr_init(&r, body, len);
	*sqlstate = "08006";
	*message = "unknown error";
	uint8_t code;
	const char *v;
	while (msgr_error_field(&r, &code, &v)) {
		if (code == 'C' && strlen(v) == 5)
			*sqlstate = v;
		else if (code == 'M')
			*message = v;
	}
}

static void sasl_initial(Session *s, const uint8_t *body, size_t len)
{
	MsgReader r;
	bool scram = false;
	msgr_init(&r, body, len);
	for (;;) {
		const char *mech = msgr_str(&r);
		if (!mech || !*mech)
			break;
		if (strcmp(mech, "SCRAM-SHA-256") == 0)
			scram = true;
	}
	if (!scram) {
		upstream_fail(s, "08006", "pgcordon: upstream authentication failed",
			      "upstream offers no SASL mechanism pgcordon supports");
		return;
	}
	char first[SCRAM_MSG_MAX];
	scram_client_first(&s->auth->scram_client, first, sizeof first);
	MsgBuilder b;
	msgb_init(&b);
	msgb_begin(&b, 'p');
	msgb_str(&b, "SCRAM-SHA-256");
	msgb_u32(&b, (uint32_t)strlen(first));
	msgb_bytes(&b, first, strlen(first));
	msgb_end(&b);
	send_server(s, &b);
}

static void handle_auth_request(Session *s, const uint8_t *body, size_t len)
{
	MsgReader r;
	msgr_init(&r, body, len);
	uint32_t code = msgr_u32(&r);
	const char *password = s->db->password ? s->db->password : "";
	char err[160], out[SCRAM_MSG_MAX];
	MsgBuilder b;

	switch (code) {
	case 0:
		s->up_state = UP_STARTUP;
		return;
	case 3: /* cleartext password */
		msgb_init(&b);
		msgb_begin(&b, 'p');
		msgb_str(&b, password);
		msgb_end(&b);
		send_server(s, &b);
		return;
	case 5: { /* md5 */
		const uint8_t *salt = msgr_bytes(&r, 4);
		if (!salt)
			break;
		char resp[36];
		auth_md5_response(s->db->user, password, salt, resp);
		msgb_init(&b);
		msgb_begin(&b, 'p');
		msgb_str(&b, resp);
		msgb_end(&b);
		send_server(s, &b);
		return;
	}
	case 10:
		sasl_initial(s, body + 4, len - 4);
		return;
	case 11:
		if (!scram_client_final(&s->auth->scram_client, password, (const char *)body + 4, len - 4, out,
					sizeof out, err, sizeof err)) {
			upstream_fail(s, "08006", "pgcordon: upstream authentication failed", err);
			return;
		}
		msgb_init(&b);
		msgb_begin(&b, 'p');
		msgb_bytes(&b, out, strlen(out));
		msgb_end(&b);
		send_server(s, &b);
		return;
	case 12:
		if (!scram_client_verify(&s->auth->scram_client, (const char *)body + 4, len - 4, err, sizeof err))
			upstream_fail(s, "08006", "pgcordon: upstream authentication failed", err);
		return;
	default:
		break;
	}
	char detail[120];
	snprintf(detail, sizeof detail, "unsupported upstream authentication request (code %u)", code);
	upstream_fail(s, "08006", "pgcordon: upstream authentication failed", detail);
}

static void upstream_ready(Session *s, char status)
{
	MsgBuilder b;
	msgb_init(&b);
	proto_build_backend_key(&b, s->pid, s->key);
	proto_build_ready(&b, status);
	session__queue(s->client.out, &b);
	s->pipeline.txn_status = status;
	s->up_state = UP_READY;
	metrics_observe_us(HIST_UPSTREAM_LOGIN, util_now_us() - s->upstream_started_us);
	char qu[80], qd[80];
	log_event(LOG_INFO, "session_ready", "session=%llu user=%s database=%s upstream=%s:%d tls_upstream=%s",
		  (unsigned long long)s->id, log_quote(qu, sizeof qu, s->user_name),
		  log_quote(qd, sizeof qd, s->db->name), s->db->host, s->db->port,
		  s->server.ssl ? "yes" : "no");
	session__upstream_ready(s);
	if (s->state == SESS_READY) {
		if (sock_flush(&s->client) == IO_ERROR) {
			session_close(s, "client write failed", NULL, NULL);
			return;
		}
		if (evbuffer_get_length(s->server.in) > 0)
			session__relay_from_server(s);
	}
}

/* One whole login-phase message from the upstream. */
static void handle_login_message(Session *s, char type, const uint8_t *msg, size_t len)
{
	const uint8_t *body = msg + 5;
	size_t blen = len - 4;
	switch (type) {
	case 'R':
		if (blen < 4)
			break;
		handle_auth_request(s, body, blen);
		return;
	case 'E': {
		const char *sqlstate, *message;
		error_fields(body, blen, &sqlstate, &message);
		if (s->up_state == UP_AUTH && strncmp(sqlstate, "28", 2) == 0) {
			char detail[300];
			snprintf(detail, sizeof detail, "upstream said %s: %s", sqlstate, message);
			upstream_fail(s, "08006", "pgcordon: upstream authentication failed", detail);
		} else {
			char text[400];
			snprintf(text, sizeof text, "pgcordon: upstream database refused the connection: %s", message);
			upstream_fail(s, sqlstate, text, message);
		}
		return;
	}
	case 'S':
	case 'N':
		if (s->up_state != UP_STARTUP && type == 'S')
			break;
		if (type == 'S')
			session__mask_parameter(s, body, blen);
		if (s->state == SESS_CLOSED)
			return; /* the server reads statements in a way the gateway cannot follow */
		session__send_client(s, msg, len + 1);
		return;
	case 'K': {
		MsgReader r;
		msgr_init(&r, body, blen);
		s->up_pid = msgr_u32(&r);
		s->up_key = msgr_u32(&r);
		if (r.failed)
			break;
		CancelTarget t = {.pid = s->up_pid, .key = s->up_key, .addrlen = sizeof t.addr};
		if (getpeername(s->server.fd, (struct sockaddr *)&t.addr, &t.addrlen) == 0) {
			cancel_set_target(s->pid, &t);
			s->cancel_target = t;
			s->has_cancel_target = true;
		}
		return;
	}
	case 'v':
		return; /* NegotiateProtocolVersion: we asked for 3.0 and nothing optional */
	case 'Z':
		if (s->up_state != UP_STARTUP || blen != 1)
			break;
		upstream_ready(s, (char)body[0]);
		return;
	default:
		break;
	}
	char detail[80];
	snprintf(detail, sizeof detail, "unexpected message '%c' during upstream login", type);
	upstream_fail(s, "08006", "pgcordon: upstream authentication failed", detail);
}

static void process_login(Session *s)
{
	while (s->state == SESS_CONNECTING && (s->up_state == UP_AUTH || s->up_state == UP_STARTUP)) {
		struct evbuffer *in = s->server.in;
		size_t avail = evbuffer_get_length(in);
		uint8_t hdr[5];
		char type;
		uint32_t len;
		if (avail < 5)
			return;
		evbuffer_copyout(in, hdr, 5);
		HeaderCheck hc = proto_check_header(hdr, 5, UPSTREAM_LOGIN_MSG_MAX, &type, &len);
		if (hc != HDR_OK) {
			upstream_fail(s, "08006", "pgcordon: upstream authentication failed",
				      "invalid message length from upstream during login");
			return;
		}
		if (avail < 1 + (size_t)len)
			return;
		uint8_t *msg = xmalloc(1 + (size_t)len);
		evbuffer_remove(in, msg, 1 + (size_t)len);
		handle_login_message(s, type, msg, len);
		free(msg);
	}
}

static void server_bytes(Session *s, size_t n)
{
	s->bytes_from_server += n;
	metrics_add(MET_BYTES_FROM_SERVER, n);
}

static void upstream_lost(Session *s, const char *detail)
{
	char qd[200];
	metrics_inc(MET_UPSTREAM_LOST);
	log_event(LOG_WARN, "upstream_lost", "session=%llu reason=%s", (unsigned long long)s->id,
		  log_quote(qd, sizeof qd, detail));
	if (s->last_server_fatal)
		session_close(s, "upstream closed after a fatal error", NULL, NULL);
	else
		session_close(s, detail, "08006", "pgcordon: lost connection to upstream database");
}

void upstream_on_event(Sock *sock, short what, void *arg)
{
	(void)sock;
	Session *s = arg;
	if (s->state == SESS_CLOSED)
		return;
	switch (s->up_state) {
	case UP_CONNECTING: {
		int err = 0;
		socklen_t len = sizeof err;
		getsockopt(s->server.fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err) {
			connect_failed(s, strerror(err));
			return;
		}
		event_del(s->server.wev);
		s->server.writing = false;
		sock_resume_read(&s->server);
		start_tls_or_login(s);
		return;
	}
	case UP_SSL_REQUEST: {
		if (!(what & EV_READ))
			return;
		SockIo r = sock_read(&s->server, 1);
		if (r == IO_AGAIN)
			return;
		if (r != IO_OK) {
			connect_failed(s, "connection closed in response to SSLRequest");
			return;
		}
		uint8_t c;
		evbuffer_remove(s->server.in, &c, 1);
		if (c != 'S') {
			connect_failed(s, c == 'N' ? "the server does not accept TLS connections (sslmode require)"
						   : "invalid response to SSLRequest");
			return;
		}
		const char *host = s->db->sslmode == SSLMODE_VERIFY_FULL ? s->db->host : NULL;
		if (!sock_tls_start(&s->server, s->db->tls_ctx, false, host)) {
			connect_failed(s, s->server.err);
			return;
		}
		s->up_state = UP_TLS;
	}
		/* start the handshake now */
		__attribute__((fallthrough));
	case UP_TLS: {
		SockIo r = sock_tls_handshake(&s->server);
		if (r == IO_ERROR) {
			connect_failed(s, s->server.err);
			return;
		}
		if (r == IO_OK)
			send_startup(s);
		return;
	}
	case UP_AUTH:
	case UP_STARTUP: {
		if (what & EV_WRITE && sock_flush(&s->server) == IO_ERROR) {
			upstream_fail(s, "08006", "pgcordon: upstream authentication failed", s->server.err);
			return;
		}
		if (!(what & EV_READ))
			return;
		SockIo r = sock_read(&s->server, RELAY_READ_MAX);
		if (r == IO_AGAIN)
			return;
		if (r != IO_OK) {
			upstream_fail(s, "08006", "pgcordon: upstream authentication failed",
				      r == IO_EOF ? "upstream closed the connection during login" : s->server.err);
			return;
		}
		process_login(s);
		return;
	}
	case UP_READY: {
		if (what & EV_WRITE) {
			if (sock_flush(&s->server) == IO_ERROR) {
				upstream_lost(s, s->server.err);
				return;
			}
			session__balance(s);
		}
		if (!(what & EV_READ))
			return;
		size_t before = evbuffer_get_length(s->server.in);
		SockIo r = sock_read(&s->server, RELAY_READ_MAX);
		if (r == IO_AGAIN)
			return;
		if ((r == IO_EOF || r == IO_ERROR) && s->audit_holding) {
			/*
			 * Strict audit: an answer read before the close waits for its record and is
			 * still owed to the client. Stop reading; once it is released and relayed,
			 * reading resumes and finds the close again.
			 */
			server_bytes(s, evbuffer_get_length(s->server.in) - before);
			session__pause_server(s);
			return;
		}
		if (r == IO_EOF || r == IO_ERROR) {
			upstream_lost(s, r == IO_EOF ? "upstream closed the connection" : s->server.err);
			return;
		}
		server_bytes(s, evbuffer_get_length(s->server.in) - before);
		session__relay_from_server(s);
		return;
	}
	default:
		return;
	}
}
