/*
 * Worker threads: each owns an event base, a DNS base and its own SO_REUSEPORT listener.
 * A connection accepted by a worker stays on it for life. The owner of the connections
 * (the session layer) plugs in through WorkerHooks.
 */
#ifndef PGC_WORKER_H
#define PGC_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>

struct event_base;
struct evdns_base;
struct evconnlistener;
struct event;

typedef struct Worker Worker;

/* A worker thread's stack, whatever ulimit -s says: the parser runs on it (core/sql_parse.h). */
#define WORKER_STACK_SIZE (8 * 1024 * 1024)

typedef struct {
	/* A new client connection; the hook owns fd from here on. */
	void (*on_accept)(Worker *w, int fd, const struct sockaddr *addr, int addrlen);
	/* Called on the worker's thread after worker_notify; e.g. shutdown progress. */
	void (*on_notify)(Worker *w);
	/* Called on the joining thread after the worker's loop ended, before its base is freed. */
	void (*on_exit)(Worker *w);
} WorkerHooks;

struct Worker {
	int index;
	pthread_t thread;
	struct event_base *base;
	struct evdns_base *dns;
	struct evconnlistener *listener;
	struct event *notify_ev;
	const WorkerHooks *hooks;
	void *owner; /* the session layer's per-worker state */
};

/*
 * Opens n listening sockets on address:port with SO_REUSEPORT (port 0 picks one free
 * port shared by all). Returns false with err. The actual port goes to *bound_port.
 */
bool workers_listen(const char *address, int port, int n, int *fds, int *bound_port, char *err,
		    size_t errlen) __attribute__((warn_unused_result));

/* Creates n workers (event bases, listeners on fds) and starts their threads. */
Worker *workers_start(int n, const int *fds, const WorkerHooks *hooks, char *err, size_t errlen);
/* Runs the hook on_notify on w's own thread (thread-safe). */
void worker_notify(Worker *w);
/* Runs the hook on_notify on every worker's own thread (thread-safe). */
void workers_notify_all(Worker *ws, int n);
/* Stops accepting on every worker (thread-safe). */
void workers_stop_accepting(Worker *ws, int n);
/* Waits for every worker loop to end (each ends when it has no more events) and frees them. */
void workers_join(Worker *ws, int n);
/* workers_join in two steps: wait for the loops to end, then free (for callers that must
 * stop other threads from notifying in between). */
void workers_wait(Worker *ws, int n);
void workers_free(Worker *ws, int n);
/* Makes a worker's loop exit once the current iteration is done; call on that worker. */
void worker_exit_loop(Worker *w);

#endif
