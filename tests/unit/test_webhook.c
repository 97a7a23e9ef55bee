/*
 * Webhook sender (src/approval/webhook.c) against a tiny HTTP server on 127.0.0.1 run by a
 * thread here: delivery and what is sent, a retry after a 500, giving up after five attempts
 * or at once on a refusal, a later message not waiting behind a failing one, the bounded
 * queue, bad URLs, and a stop that does not outlast its grace period. Logs are captured to
 * check that they never carry the URL's path (a Slack URL's secret).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "approval/webhook.h"
#include "core/log.h"
#include "core/util.h"

/* ---------------------------------------------------------------- the server */

typedef struct {
	char method[16];
	char path[256];
	char content_type[128];
	char *body;
} Request;

#define MAX_REQUESTS 2048

static struct {
	int lfd;
	int port;
	pthread_t thread;
	bool stop;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	Request reqs[MAX_REQUESTS];
	int nreqs;
	int flaky_failures; /* how many more 500s /flaky answers */
	bool hanging;       /* a /hang request is being held */
	bool release;       /* let held /hang requests answer */
} S = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* Reads until the end of the headers and Content-Length bytes of body; false on EOF/timeout. */
static bool read_request(int fd, Request *r)
{
	char buf[65536];
	size_t len = 0;
	char *end = NULL;
	long clen = -1;
	for (;;) {
		if (!end && (end = memmem(buf, len, "\r\n\r\n", 4)) != NULL) {
			*end = 0;
			char *cl = strcasestr(buf, "\r\nContent-Length:");
			clen = cl ? strtol(cl + 17, NULL, 10) : 0;
			char *ct = strcasestr(buf, "\r\nContent-Type:");
			if (ct)
				sscanf(ct + 15, " %127[^\r\n]", r->content_type);
			sscanf(buf, "%15s %255s", r->method, r->path);
		}
		if (end && (size_t)(end + 4 - buf) + (size_t)clen <= len)
			break;
		if (len == sizeof buf)
			return false;
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 5000) <= 0)
			return false;
		ssize_t n = read(fd, buf + len, sizeof buf - len);
		if (n <= 0)
			return false;
		len += (size_t)n;
	}
	r->body = strndup(end + 4, (size_t)clen);
	return true;
}

static void *server_thread(void *arg)
{
	for (;;) {
		struct pollfd p = {.fd = S.lfd, .events = POLLIN};
		int ready = poll(&p, 1, 20);
		pthread_mutex_lock(&S.mu);
		bool stop = S.stop;
		pthread_mutex_unlock(&S.mu);
		if (stop)
			return NULL;
		if (ready <= 0)
			continue;
		int fd = accept(S.lfd, NULL, NULL);
		if (fd < 0)
			continue;
		Request r = {0};
		if (!read_request(fd, &r)) {
			close(fd);
			continue;
		}
		int status = 200;
		pthread_mutex_lock(&S.mu);
		if (strncmp(r.path, "/fail", 5) == 0)
			status = 500;
		else if (strncmp(r.path, "/gone", 5) == 0)
			status = 404;
		else if (strncmp(r.path, "/flaky", 6) == 0 && S.flaky_failures > 0) {
			S.flaky_failures--;
			status = 500;
		}
		if (S.nreqs < MAX_REQUESTS)
			S.reqs[S.nreqs++] = r;
		else
			free(r.body);
		if (strncmp(r.path, "/hang", 5) == 0) {
			S.hanging = true;
			pthread_cond_broadcast(&S.cv);
			while (!S.release && !S.stop)
				pthread_cond_wait(&S.cv, &S.mu);
		}
		pthread_cond_broadcast(&S.cv);
		pthread_mutex_unlock(&S.mu);
		char resp[128];
		int n = snprintf(resp, sizeof resp, "HTTP/1.1 %d X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
				 status);
		/* The client may have given up already: no SIGPIPE. */
		if (send(fd, resp, (size_t)n, MSG_NOSIGNAL) < 0) {
		}
		close(fd);
	}
}

static int server_start(void **state)
{
	S.lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(S.lfd >= 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(S.lfd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(listen(S.lfd, 128), 0);
	socklen_t alen = sizeof a;
	assert_int_equal(getsockname(S.lfd, (struct sockaddr *)&a, &alen), 0);
	S.port = ntohs(a.sin_port);
	assert_int_equal(pthread_create(&S.thread, NULL, server_thread, NULL), 0);
	log_set_level(LOG_DEBUG);
	return 0;
}

static int server_stop(void **state)
{
	pthread_mutex_lock(&S.mu);
	S.stop = true;
	pthread_cond_broadcast(&S.cv);
	pthread_mutex_unlock(&S.mu);
	pthread_join(S.thread, NULL);
	close(S.lfd);
	return 0;
}

static void server_reset(void)
{
	pthread_mutex_lock(&S.mu);
	for (int i = 0; i < S.nreqs; i++)
		free(S.reqs[i].body);
	memset(S.reqs, 0, sizeof S.reqs);
	S.nreqs = 0;
	S.flaky_failures = 0;
	S.hanging = false;
	S.release = false;
	pthread_mutex_unlock(&S.mu);
}

/* Waits until the server has seen n requests; returns how many it saw. */
static int wait_requests(int n, int timeout_ms)
{
	uint64_t until = util_now_ms() + (uint64_t)timeout_ms;
	pthread_mutex_lock(&S.mu);
	while (S.nreqs < n && util_now_ms() < until) {
		pthread_mutex_unlock(&S.mu);
		usleep(2000);
		pthread_mutex_lock(&S.mu);
	}
	int seen = S.nreqs;
	pthread_mutex_unlock(&S.mu);
	return seen;
}

static char *url(const char *path)
{
	return xasprintf("http://127.0.0.1:%d%s", S.port, path);
}

/* ---------------------------------------------------------------- log capture */

/* The log writes to fd 2; while capturing, that is a temporary file (assertions come after). */
static FILE *cap;
static int saved_stderr = -1;

static void capture_begin(void)
{
	fflush(stderr);
	cap = tmpfile();
	assert_non_null(cap);
	saved_stderr = dup(STDERR_FILENO);
	assert_true(dup2(fileno(cap), STDERR_FILENO) >= 0);
}

/* Restores stderr and returns what was logged (caller frees); echoes it for debugging. */
static char *capture_end(void)
{
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	off_t n = lseek(fileno(cap), 0, SEEK_END);
	char *text = xcalloc(1, n > 0 ? (size_t)n + 1 : 1);
	if (n > 0 && pread(fileno(cap), text, (size_t)n, 0) != n)
		text[0] = 0;
	fclose(cap);
	if (getenv("WEBHOOK_TEST_VERBOSE"))
		fputs(text, stderr);
	return text;
}

static int count(const char *hay, const char *needle)
{
	int c = 0;
	for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
		c++;
	return c;
}

/* ---------------------------------------------------------------- tests */

static void test_delivers(void **state)
{
	server_reset();
	webhook__set_backoff_ms(20);
	char err[256];
	capture_begin();
	assert_true(webhook_start(err, sizeof err));
	assert_true(webhook_start(err, sizeof err)); /* idempotent */
	char *u = url("/services/T0/B0/SECRETPATH");
	webhook_send(u, xstrdup("{\"text\":\"request 3f0c opened\"}"));
	int seen = wait_requests(1, 5000);
	webhook_stop();
	char *log = capture_end();

	assert_int_equal(seen, 1);
	assert_string_equal(S.reqs[0].method, "POST");
	assert_string_equal(S.reqs[0].path, "/services/T0/B0/SECRETPATH");
	assert_string_equal(S.reqs[0].content_type, "application/json");
	assert_string_equal(S.reqs[0].body, "{\"text\":\"request 3f0c opened\"}");
	char *target = xasprintf("event=webhook_sent url=http://127.0.0.1:%d attempt=1", S.port);
	assert_non_null(strstr(log, target));
	assert_null(strstr(log, "SECRETPATH"));
	assert_null(strstr(log, "webhook_failed"));
	free(target);
	free(log);
	free(u);
}

static void test_retries_after_500(void **state)
{
	server_reset();
	S.flaky_failures = 1;
	webhook__set_backoff_ms(20);
	char err[256];
	capture_begin();
	assert_true(webhook_start(err, sizeof err));
	char *u = url("/flaky");
	webhook_send(u, xstrdup("{\"n\":1}"));
	int seen = wait_requests(2, 5000);
	webhook_stop();
	char *log = capture_end();

	assert_int_equal(seen, 2);
	assert_string_equal(S.reqs[1].body, "{\"n\":1}");
	assert_non_null(strstr(log, "event=webhook_sent"));
	assert_non_null(strstr(log, "attempt=2"));
	assert_null(strstr(log, "webhook_failed"));
	free(log);
	free(u);
}

/* Five attempts, then one warning; meanwhile a later message goes through. */
static void test_gives_up_without_blocking_others(void **state)
{
	server_reset();
	webhook__set_backoff_ms(30);
	char err[256];
	capture_begin();
	assert_true(webhook_start(err, sizeof err));
	char *bad = url("/fail/SECRETPATH"), *good = url("/ok");
	webhook_send(bad, xstrdup("{\"n\":1}"));
	webhook_send(good, xstrdup("{\"n\":2}"));
	wait_requests(6, 5000);
	webhook_stop(); /* delivers what is queued, retries included: the barrier */
	char *log = capture_end();

	assert_int_equal(S.nreqs, 6);
	assert_string_equal(S.reqs[0].path, "/fail/SECRETPATH");
	assert_string_equal(S.reqs[1].path, "/ok"); /* before the first retry */
	for (int i = 2; i < 6; i++)
		assert_string_equal(S.reqs[i].path, "/fail/SECRETPATH");
	assert_int_equal(count(log, "event=webhook_failed"), 1);
	char *line = xasprintf("event=webhook_failed url=http://127.0.0.1:%d attempts=5 error=\"HTTP status 500\"",
			       S.port);
	assert_non_null(strstr(log, line));
	assert_null(strstr(log, "SECRETPATH"));
	free(line);
	free(log);
	free(bad);
	free(good);
}

static void test_refusal_is_final(void **state)
{
	server_reset();
	webhook__set_backoff_ms(10);
	char err[256];
	capture_begin();
	assert_true(webhook_start(err, sizeof err));
	char *u = url("/gone");
	webhook_send(u, xstrdup("{}"));
	wait_requests(1, 5000);
	webhook_stop();
	char *log = capture_end();

	assert_int_equal(S.nreqs, 1);
	assert_non_null(strstr(log, "attempts=1 error=\"HTTP status 404\""));
	free(log);
	free(u);
}

static void test_unreachable_gives_up(void **state)
{
	server_reset();
	/* A port that was just free: nothing listens there. */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof a;
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
	close(fd);
	char *u = xasprintf("http://127.0.0.1:%d/x/SECRETPATH", ntohs(a.sin_port));

	webhook__set_backoff_ms(10);
	char err[256];
	capture_begin();
	assert_true(webhook_start(err, sizeof err));
	webhook_send(u, xstrdup("{}"));
	webhook_stop();
	char *log = capture_end();

	assert_int_equal(count(log, "event=webhook_failed"), 1);
	assert_non_null(strstr(log, "attempts=5"));
	assert_null(strstr(log, "SECRETPATH"));
	free(log);
	free(u);
}

static void test_drops(void **state)
{
	server_reset();
	webhook_stop(); /* never started: a no-op */
	char *u = url("/ok/SECRETPATH");
	capture_begin();
	webhook_send(u, xstrdup("{}")); /* not running */
	char err[256];
	assert_true(webhook_start(err, sizeof err));
	webhook_send("ftp://127.0.0.1/x", xstrdup("{}"));
	webhook_send("file:///etc/passwd", xstrdup("{}"));
	webhook_send("not a url", xstrdup("{}"));
	webhook_send("http://", xstrdup("{}"));
	webhook_stop();
	webhook_stop();
	char *log = capture_end();

	assert_int_equal(S.nreqs, 0);
	assert_int_equal(count(log, "event=webhook_dropped"), 5);
	assert_int_equal(count(log, "reason=\"sender not running\""), 1);
	assert_int_equal(count(log, "reason=\"not an http or https URL\""), 4);
	assert_null(strstr(log, "SECRETPATH"));
	free(log);
	free(u);
}

/* While the sender is held on one message, the queue takes WEBHOOK_QUEUE_MAX more. */
static void test_queue_is_bounded(void **state)
{
	server_reset();
	webhook__set_backoff_ms(10);
	char err[256];
	capture_begin();
	assert_true(webhook_start(err, sizeof err));
	char *hang = url("/hang"), *ok = url("/ok");
	webhook_send(hang, xstrdup("{\"n\":0}"));
	pthread_mutex_lock(&S.mu);
	while (!S.hanging)
		pthread_cond_wait(&S.cv, &S.mu);
	pthread_mutex_unlock(&S.mu);
	for (int i = 0; i < WEBHOOK_QUEUE_MAX + 1; i++)
		webhook_send(ok, xasprintf("{\"n\":%d}", i + 1));
	pthread_mutex_lock(&S.mu);
	S.release = true;
	pthread_cond_broadcast(&S.cv);
	pthread_mutex_unlock(&S.mu);
	int seen = wait_requests(WEBHOOK_QUEUE_MAX + 1, 30000);
	webhook_stop();
	char *log = capture_end();

	assert_int_equal(seen, WEBHOOK_QUEUE_MAX + 1);
	assert_int_equal(count(log, "event=webhook_dropped"), 1);
	assert_non_null(strstr(log, "reason=\"queue full\""));
	/* In order, and the last one sent is the one dropped. */
	assert_string_equal(S.reqs[1].body, "{\"n\":1}");
	char *last = xasprintf("{\"n\":%d}", WEBHOOK_QUEUE_MAX);
	assert_string_equal(S.reqs[WEBHOOK_QUEUE_MAX].body, last);
	free(last);
	free(log);
	free(hang);
	free(ok);
}

/* A receiver that never answers holds webhook_stop for its ~3 s grace, not the 5 s timeout. */
static void test_stop_is_bounded(void **state)
{
	server_reset();
	webhook__set_backoff_ms(10);
	webhook__set_timeout_ms(5000);
	char err[256];
	capture_begin();
	assert_true(webhook_start(err, sizeof err));
	char *hang = url("/hang"), *ok = url("/ok");
	webhook_send(hang, xstrdup("{}"));
	pthread_mutex_lock(&S.mu);
	while (!S.hanging)
		pthread_cond_wait(&S.cv, &S.mu);
	pthread_mutex_unlock(&S.mu);
	webhook_send(ok, xstrdup("{}")); /* queued behind it, never tried */
	uint64_t t0 = util_now_ms();
	webhook_stop();
	uint64_t took = util_now_ms() - t0;
	pthread_mutex_lock(&S.mu);
	S.release = true;
	pthread_cond_broadcast(&S.cv);
	pthread_mutex_unlock(&S.mu);
	char *log = capture_end();

	assert_in_range(took, 2900, 4500);
	assert_non_null(strstr(log, "reason=\"shutting down\" count="));
	free(log);
	free(hang);
	free(ok);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_delivers),
		cmocka_unit_test(test_retries_after_500),
		cmocka_unit_test(test_gives_up_without_blocking_others),
		cmocka_unit_test(test_refusal_is_final),
		cmocka_unit_test(test_unreachable_gives_up),
		cmocka_unit_test(test_drops),
		cmocka_unit_test(test_queue_is_bounded),
		cmocka_unit_test(test_stop_is_bounded),
	};
	return cmocka_run_group_tests(tests, server_start, server_stop);
}
