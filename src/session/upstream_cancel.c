/*
 * CancelRequests the gateway sends upstream, each on a connection of its own. PostgreSQL
 * signals the backend and only then closes that connection, so its close is the moment
 * the cancel has been delivered: from then on the backend takes the cancel before it reads
 * anything sent to it later (an idle backend drops it). libpq waits for that close too.
 */
#include "session/session_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"

#define CANCEL_TIMEOUT_MS 5000 /* for the whole exchange: connect, send, the server's close */

struct UpstreamCancel {
	int fd;
	struct event_base *base;
	UpstreamCancel **list; /* the worker's cancels on their way, this one among them */
	UpstreamCancel *next;
	Session *owner;        /* told when it is over; NULL once the owner has ended */
	CancelDone done;
	uint64_t deadline_ms;
	uint8_t pkt[16];
};

static void finish(UpstreamCancel *uc, CancelOutcome outcome, const char *why)
{
	if (outcome == CANCEL_NOT_SENT)
		log_event(LOG_WARN, "cancel_failed", "reason=\"%s\"", why);
	else if (outcome == CANCEL_UNCONFIRMED)
		log_event(LOG_WARN, "cancel_unconfirmed", "reason=\"%s\"", why);
	close(uc->fd);
	for (UpstreamCancel **pp = uc->list; *pp; pp = &(*pp)->next)
		if (*pp == uc) {
			*pp = uc->next;
			break;
		}
	Session *owner = uc->owner;
	CancelDone done = uc->done;
	free(uc);
	if (owner) {
		owner->cancels_in_flight--;
		done(owner, outcome);
	}
}

static bool wait_for(UpstreamCancel *uc, short what, event_callback_fn cb)
{
	uint64_t now = util_now_ms();
	uint64_t left = uc->deadline_ms > now ? uc->deadline_ms - now : 0;
	struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
	return event_base_once(uc->base, uc->fd, what, cb, uc, &tv) == 0;
}

static void on_closed(evutil_socket_t fd, short what, void *arg)
{
	UpstreamCancel *uc = arg;
	char why[160];
	if (!(what & EV_READ)) {
		snprintf(why, sizeof why, "the upstream did not close the cancel connection within %d ms",
			 CANCEL_TIMEOUT_MS);
		finish(uc, CANCEL_UNCONFIRMED, why);
		return;
	}
	uint8_t buf[256];
	ssize_t n = recv(fd, buf, sizeof buf, 0);
	if (n == 0) {
		finish(uc, CANCEL_DELIVERED, NULL);
		return;
	}
	if (n < 0 && errno != EAGAIN && errno != EINTR) {
		snprintf(why, sizeof why, "cancel connection: %s", strerror(errno));
		finish(uc, CANCEL_UNCONFIRMED, why);
		return;
	}
	/* PostgreSQL sends nothing back: wait on through anything else until the close. */
	if (!wait_for(uc, EV_READ, on_closed))
		finish(uc, CANCEL_UNCONFIRMED, "cannot wait for the cancel connection");
}

static void on_connected(evutil_socket_t fd, short what, void *arg)
{
	UpstreamCancel *uc = arg;
	char why[160];
	if (!(what & EV_WRITE)) {
		finish(uc, CANCEL_NOT_SENT, "upstream connect timed out");
		return;
	}
	if (send(fd, uc->pkt, sizeof uc->pkt, MSG_NOSIGNAL) != (ssize_t)sizeof uc->pkt) {
		snprintf(why, sizeof why, "could not send to upstream: %s", strerror(errno));
		finish(uc, CANCEL_NOT_SENT, why);
		return;
	}
	if (!wait_for(uc, EV_READ, on_closed))
		finish(uc, CANCEL_UNCONFIRMED, "cannot wait for the cancel connection");
}

bool session__send_cancel(Session *owner, const CancelTarget *t, CancelDone done)
{
	int fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || (connect(fd, (const struct sockaddr *)&t->addr, t->addrlen) < 0 && errno != EINPROGRESS)) {
		log_event(LOG_WARN, "cancel_failed", "reason=\"%s\"", strerror(errno));
		if (fd >= 0)
			close(fd);
		return false;
	}
	UpstreamCancel *uc = xcalloc(1, sizeof *uc);
	uc->fd = fd;
	uc->base = owner->worker->base;
	uc->deadline_ms = util_now_ms() + CANCEL_TIMEOUT_MS;
	proto_put_u32(uc->pkt, 16);
	proto_put_u32(uc->pkt + 4, PROTO_CANCEL_CODE);
	proto_put_u32(uc->pkt + 8, t->pid);
	proto_put_u32(uc->pkt + 12, t->key);
	if (!wait_for(uc, EV_WRITE, on_connected)) {
		log_event(LOG_WARN, "cancel_failed", "reason=\"cannot wait for the upstream connection\"");
		close(fd);
		free(uc);
		return false;
	}
	uc->list = session__worker_cancels(owner->sw);
	uc->next = *uc->list;
	*uc->list = uc;
	uc->owner = owner;
	uc->done = done;
	owner->cancels_in_flight++;
	return true;
}

void session__forget_cancels(Session *s)
{
	for (UpstreamCancel *uc = s->cancels_in_flight ? *session__worker_cancels(s->sw) : NULL; uc; uc = uc->next)
		if (uc->owner == s)
			uc->owner = NULL;
	s->cancels_in_flight = 0;
}

void session__cancels_free(UpstreamCancel *list)
{
	while (list) {
		UpstreamCancel *next = list->next;
		close(list->fd);
		free(list);
		list = next;
	}
}
