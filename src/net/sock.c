/* Plain and TLS socket I/O over evbuffers, with direct writes and explicit back-pressure. */
#include "net/sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/x509v3.h>
#include <openssl/err.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

void sock_init(Sock *s, struct event_base *base, int fd, SockCb cb, void *arg)
{
	memset(s, 0, sizeof *s);
	s->fd = fd;
	s->in = evbuffer_new();
	s->out = evbuffer_new();
	s->rev = event_new(base, fd, EV_READ | EV_PERSIST, (event_callback_fn)(void (*)(void))cb, arg);
	s->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, (event_callback_fn)(void (*)(void))cb, arg);
}

void sock_free(Sock *s)
{
	if (s->rev) {
		event_free(s->rev);
		s->rev = NULL;
	}
	if (s->wev) {
		event_free(s->wev);
		s->wev = NULL;
	}
	if (s->ssl) {
		if (!s->handshaking)
			SSL_shutdown(s->ssl); /* best effort close_notify; never waits */
		SSL_free(s->ssl);
		s->ssl = NULL;
	}
	if (s->fd >= 0 && (s->in || s->out)) {
		close(s->fd);
	}
	s->fd = -1;
	if (s->in) {
		evbuffer_free(s->in);
		s->in = NULL;
	}
	if (s->out) {
		evbuffer_free(s->out);
		s->out = NULL;
	}
}

static SockIo tls_error(Sock *s, int rc, const char *what)
{
	int e = SSL_get_error(s->ssl, rc);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return IO_AGAIN;
	if (e == SSL_ERROR_ZERO_RETURN)
		return IO_EOF;
	unsigned long code = ERR_get_error();
	if (code) {
		char buf[120];
		ERR_error_string_n(code, buf, sizeof buf);
		snprintf(s->err, sizeof s->err, "%s: %s", what, buf);
	} else if (e == SSL_ERROR_SYSCALL) {
		if (errno == 0)
			return IO_EOF;
		snprintf(s->err, sizeof s->err, "%s: %s", what, strerror(errno));
	} else {
		snprintf(s->err, sizeof s->err, "%s: TLS error %d", what, e);
	}
	ERR_clear_error();
	return IO_ERROR;
}

SockIo sock_read(Sock *s, size_t max)
{
	struct evbuffer_iovec vec[1];
	if (evbuffer_reserve_space(s->in, (ev_ssize_t)max, vec, 1) != 1) {
		snprintf(s->err, sizeof s->err, "out of buffer space");
		return IO_ERROR;
	}
	if (!s->ssl) {
		ssize_t n = recv(s->fd, vec[0].iov_base, vec[0].iov_len, 0);
		if (n > 0) {
			vec[0].iov_len = (size_t)n;
			evbuffer_commit_space(s->in, vec, 1);
			return IO_OK;
		}
		evbuffer_commit_space(s->in, vec, 0);
		if (n == 0)
			return IO_EOF;
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return IO_AGAIN;
		snprintf(s->err, sizeof s->err, "read: %s", strerror(errno));
		return IO_ERROR;
	}
	/* TLS: drain what OpenSSL holds too, since epoll cannot see its internal buffer. */
	size_t got = 0;
	SockIo result = IO_AGAIN;
	while (got < vec[0].iov_len) {
		int n = SSL_read(s->ssl, (char *)vec[0].iov_base + got, (int)(vec[0].iov_len - got));
		if (n <= 0) {
			result = tls_error(s, n, "TLS read");
			break;
		}
		got += (size_t)n;
	}
	vec[0].iov_len = got;
	evbuffer_commit_space(s->in, vec, got ? 1 : 0);
	if (got == 0)
		return result;
	if (result == IO_AGAIN && SSL_pending(s->ssl) > 0)
		event_active(s->rev, EV_READ, 0);
	else if (result == IO_EOF || result == IO_ERROR)
		event_active(s->rev, EV_READ, 0); /* report it on the next round, after these bytes */
	return IO_OK;
}

static void arm_write(Sock *s, bool on)
{
	if (on && !s->writing) {
		event_add(s->wev, NULL);
		s->writing = true;
	} else if (!on && s->writing) {
		event_del(s->wev);
		s->writing = false;
	}
}

SockIo sock_flush(Sock *s)
{
	if (s->handshaking)
		return IO_AGAIN;
	if (s->held) {
		arm_write(s, false); /* no wake-ups for nothing: the owner flushes once it lets go */
		return IO_AGAIN;
	}
	while (evbuffer_get_length(s->out) > 0) {
		if (!s->ssl) {
			/* One chunk (the common case) goes out with send(); several with writev. */
			struct evbuffer_iovec v[2];
			int chunks = evbuffer_peek(s->out, -1, NULL, v, 2);
			ssize_t n = chunks == 1 ? send(s->fd, v[0].iov_base, v[0].iov_len, MSG_NOSIGNAL)
						: evbuffer_write(s->out, s->fd);
			if (chunks == 1 && n > 0)
				evbuffer_drain(s->out, (size_t)n);
			if (n < 0) {
				if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
					break;
				snprintf(s->err, sizeof s->err, "write: %s", strerror(errno));
				return IO_ERROR;
			}
			if (n == 0)
				break;
			continue;
		}
		struct evbuffer_iovec v;
		if (evbuffer_peek(s->out, -1, NULL, &v, 1) < 1)
			break;
		int n = SSL_write(s->ssl, v.iov_base, (int)v.iov_len);
		if (n <= 0) {
			SockIo r = tls_error(s, n, "TLS write");
			if (r == IO_AGAIN)
				break;
			return IO_ERROR;
		}
		evbuffer_drain(s->out, (size_t)n);
	}
	arm_write(s, evbuffer_get_length(s->out) > 0);
	return IO_OK;
}

void sock_pause_read(Sock *s)
{
	if (s->reading) {
		event_del(s->rev);
		s->reading = false;
	}
}

void sock_resume_read(Sock *s)
{
	if (!s->reading && s->rev) {
		event_add(s->rev, NULL);
		s->reading = true;
		/* Bytes may already sit decrypted inside OpenSSL. */
		if (s->ssl && SSL_pending(s->ssl) > 0)
			event_active(s->rev, EV_READ, 0);
	}
}

bool sock_tls_start(Sock *s, SSL_CTX *ctx, bool server, const char *verify_host)
{
	s->ssl = SSL_new(ctx);
	if (!s->ssl) {
		snprintf(s->err, sizeof s->err, "SSL_new failed");
		return false;
	}
	SSL_set_mode(s->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	if (!SSL_set_fd(s->ssl, s->fd)) {
		snprintf(s->err, sizeof s->err, "SSL_set_fd failed");
		return false;
	}
	if (server) {
		SSL_set_accept_state(s->ssl);
	} else {
		SSL_set_connect_state(s->ssl);
		if (verify_host) {
			/* An address is checked against the certificate's IP SANs, a name against DNS SANs. */
			unsigned char ip[16];
			bool is_ip = inet_pton(AF_INET, verify_host, ip) == 1 || inet_pton(AF_INET6, verify_host, ip) == 1;
			if (!is_ip)
				SSL_set_tlsext_host_name(s->ssl, verify_host);
			if (is_ip ? !X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), verify_host)
				  : !SSL_set1_host(s->ssl, verify_host)) {
				snprintf(s->err, sizeof s->err, "cannot set TLS host name to verify");
				return false;
			}
		}
	}
	s->handshaking = true;
	return true;
}

SockIo sock_tls_handshake(Sock *s)
{
	int rc = SSL_do_handshake(s->ssl);
	if (rc == 1) {
		s->handshaking = false;
		arm_write(s, false);
		return IO_OK;
	}
	int e = SSL_get_error(s->ssl, rc);
	if (e == SSL_ERROR_WANT_WRITE) {
		arm_write(s, true);
		return IO_AGAIN;
	}
	if (e == SSL_ERROR_WANT_READ) {
		arm_write(s, false);
		return IO_AGAIN;
	}
	long verify = SSL_get_verify_result(s->ssl);
	if (verify != X509_V_OK) {
		snprintf(s->err, sizeof s->err, "TLS certificate verification failed: %s",
			 X509_verify_cert_error_string(verify));
		ERR_clear_error();
		return IO_ERROR;
	}
	SockIo r = tls_error(s, rc, "TLS handshake");
	if (r == IO_EOF)
		snprintf(s->err, sizeof s->err, "TLS handshake: connection closed");
	return IO_ERROR;
}
