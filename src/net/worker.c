/* Worker threads, their event bases and SO_REUSEPORT listeners. */
#include "net/worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "core/metrics.h"
#include "core/util.h"

static int open_listener(const struct addrinfo *ai, int port, char *err, size_t errlen)
{
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
		snprintf(err, errlen, "SO_REUSEPORT: %s", strerror(errno));
		close(fd);
		return -1;
	}
	struct sockaddr_storage ss;
	memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
	if (ss.ss_family == AF_INET)
		((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
	else
		((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
	if (bind(fd, (struct sockaddr *)&ss, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
		snprintf(err, errlen, "cannot listen on port %d: %s", port, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

bool workers_listen(const char *address, int port, int n, int *fds, int *bound_port, char *err,
		    size_t errlen)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
	struct addrinfo *res;
	int rc = getaddrinfo(address, "0", &hints, &res);
	if (rc != 0) {
		snprintf(err, errlen, "cannot resolve listen address %s: %s", address, gai_strerror(rc));
		return false;
	}
	for (int i = 0; i < n; i++) {
		fds[i] = open_listener(res, port, err, errlen);
		if (fds[i] < 0) {
			while (i-- > 0)
				close(fds[i]);
			freeaddrinfo(res);
			return false;
		}
		if (port == 0) {
			/* Every other worker binds the port the kernel chose for the first. */
			struct sockaddr_storage ss;
			socklen_t len = sizeof ss;
			getsockname(fds[i], (struct sockaddr *)&ss, &len);
			port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
							     : ((struct sockaddr_in6 *)&ss)->sin6_port);
		}
	}
	freeaddrinfo(res);
	*bound_port = port;
	return true;
}

static void on_listener_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *addr,
			       int len, void *arg)
{
	(void)l;
	Worker *w = arg;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	w->hooks->on_accept(w, fd, addr, len);
}

static void on_listener_error(struct evconnlistener *l, void *arg)
{
	(void)l;
	Worker *w = arg;
	int e = EVUTIL_SOCKET_ERROR();
	/* EMFILE and friends: keep the listener; the next accept may succeed. */
	log_event(LOG_WARN, "accept_failed", "worker=%d error=\"%s\"", w->index,
		  evutil_socket_error_to_string(e));
}

static void on_notify(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	Worker *w = arg;
	if (w->hooks->on_notify)
		w->hooks->on_notify(w);
}

static void *worker_main(void *arg)
{
	Worker *w = arg;
	metrics_bind_worker(w->index);
	event_base_dispatch(w->base);
	return NULL;
}

Worker *workers_start(int n, const int *fds, const WorkerHooks *hooks, char *err, size_t errlen)
{
	static bool threads_ready;
	if (!threads_ready) {
		if (evthread_use_pthreads() != 0) {
			snprintf(err, errlen, "libevent thread support unavailable");
			return NULL;
		}
		threads_ready = true;
	}
	Worker *ws = xcalloc((size_t)n, sizeof *ws);
	for (int i = 0; i < n; i++) {
		Worker *w = &ws[i];
		w->index = i;
		w->hooks = hooks;
		w->base = event_base_new();
		if (!w->base) {
			snprintf(err, errlen, "event_base_new failed");
			return NULL;
		}
		w->dns = evdns_base_new(w->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
		if (!w->dns)
			w->dns = evdns_base_new(w->base, 0); /* no resolv.conf: numeric hosts still work */
		evdns_base_load_hosts(w->dns, NULL);
		w->listener = evconnlistener_new(w->base, on_listener_accept, w,
						 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_THREADSAFE, -1, fds[i]);
		if (!w->listener) {
			snprintf(err, errlen, "evconnlistener_new failed");
			return NULL;
		}
		evconnlistener_set_error_cb(w->listener, on_listener_error);
		w->notify_ev = event_new(w->base, -1, EV_PERSIST | EV_READ, on_notify, w);
		/* A pending, never-firing event keeps the loop alive until shutdown removes it. */
		event_add(w->notify_ev, NULL);
	}
	for (int i = 0; i < n; i++) {
		int rc = util_thread_start(&ws[i].thread, WORKER_STACK_SIZE, false, worker_main, &ws[i]);
		if (rc != 0) {
			snprintf(err, errlen, "pthread_create failed: %s", strerror(rc));
			return NULL;
		}
		char name[16]; /* what top -H and perf show (15 characters at most) */
		snprintf(name, sizeof name, "pgc-worker-%d", i % 10000);
		pthread_setname_np(ws[i].thread, name);
	}
	return ws;
}

void worker_notify(Worker *w) { event_active(w->notify_ev, EV_READ, 0); }

void workers_notify_all(Worker *ws, int n)
{
	for (int i = 0; i < n; i++)
		worker_notify(&ws[i]);
}

void workers_stop_accepting(Worker *ws, int n)
{
	for (int i = 0; i < n; i++)
		evconnlistener_disable(ws[i].listener);
}

void worker_exit_loop(Worker *w) { event_base_loopexit(w->base, NULL); }

void workers_wait(Worker *ws, int n)
{
	for (int i = 0; i < n; i++)
		pthread_join(ws[i].thread, NULL);
}

void workers_join(Worker *ws, int n)
{
	workers_wait(ws, n);
	workers_free(ws, n);
}

void workers_free(Worker *ws, int n)
{
	for (int i = 0; i < n; i++) {
		if (ws[i].hooks->on_exit)
			ws[i].hooks->on_exit(&ws[i]);
		evconnlistener_free(ws[i].listener);
		event_free(ws[i].notify_ev);
		evdns_base_free(ws[i].dns, 0);
		event_base_free(ws[i].base);
	}
	free(ws);
}
