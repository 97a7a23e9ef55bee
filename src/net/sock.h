/*
 * One non-blocking connection, plain or TLS, behind the same small set of operations:
 * read into an input evbuffer, flush an output evbuffer directly (arming a write event
 * only when the kernel pushes back), pause/resume reading for back-pressure. The owner
 * gets EV_READ / EV_WRITE callbacks and owns the protocol state.
 */
#ifndef PGC_SOCK_H
#define PGC_SOCK_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum { IO_OK, IO_AGAIN, IO_EOF, IO_ERROR } SockIo;

typedef struct Sock Sock;
typedef void (*SockCb)(Sock *s, short what, void *arg);

struct Sock {
	int fd;
	SSL *ssl;
	bool handshaking;
	bool held; /* output waits in out (sock_flush writes nothing) until the owner clears this */
	bool reading;
	bool writing;
	struct event *rev;
	struct event *wev;
	struct evbuffer *in;
	struct evbuffer *out;
	char err[160]; /* last error, for the owner's log line */
};

void sock_init(Sock *s, struct event_base *base, int fd, SockCb cb, void *arg);
/* Closes the descriptor and frees everything; safe on a zeroed or already-freed Sock. */
void sock_free(Sock *s);

/* Reads up to max bytes (one syscall for plain sockets). IO_OK when bytes arrived. */
SockIo sock_read(Sock *s, size_t max);
/* Writes out as much as the kernel takes; arms the write event while data remain. IO_AGAIN
 * while the output is held or a TLS handshake is under way. */
SockIo sock_flush(Sock *s);

void sock_pause_read(Sock *s);
void sock_resume_read(Sock *s);

/* Wraps the socket in TLS. server: accept side; otherwise connect side, checking host if set. */
bool sock_tls_start(Sock *s, SSL_CTX *ctx, bool server, const char *verify_host);
/* Drives the handshake: IO_OK when done, IO_AGAIN to wait for events, IO_ERROR (see err). */
SockIo sock_tls_handshake(Sock *s);

#endif
