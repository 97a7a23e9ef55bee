/* Webhook notifications: a bounded queue of JSON POSTs, delivered with retries on one thread. */
#include "approval/webhook.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/log.h"
#include "core/http_client.h"
#include "core/util.h"

#define MAX_ATTEMPTS 5
#define STOP_GRACE_MS 3000

typedef struct Message {
	struct Message *next;
	char *url;
	char *body;
	char target[300]; /* scheme://host[:port], the only part of the URL that is logged */
	int attempts;
	uint64_t due_ms;
	uint64_t seq; /* order of arrival, to keep messages due at once in order */
} Message;

/* The queue is ordered by (due_ms, seq): its head is the next message to try. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake; /* on CLOCK_MONOTONIC, as util_now_ms */
static pthread_once_t once = PTHREAD_ONCE_INIT;
static Message *queue;
static int nqueued;
static uint64_t next_seq;
static pthread_t thread;
static bool running;   /* the thread exists: start and stop only */
static bool accepting; /* webhook_send queues; the thread clears it when it leaves */
static bool stopping;
static uint64_t stop_deadline_ms;
static uint64_t abort_at_ms = UINT64_MAX; /* read by the transfer's progress callback */
static int backoff_ms = 1000;
static int timeout_ms = 5000;

static void init_once(void)
{
	pthread_condattr_t attr;
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&wake, &attr);
	pthread_condattr_destroy(&attr);
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void message_free(Message *m)
{
	free(m->url);
	free(m->body);
	free(m);
}

/* Under the lock. */
static void queue_insert(Message *m)
{
	Message **p = &queue;
	while (*p && ((*p)->due_ms < m->due_ms || ((*p)->due_ms == m->due_ms && (*p)->seq < m->seq)))
		p = &(*p)->next;
	m->next = *p;
	*p = m;
	nqueued++;
}

/* scheme://host[:port] of an http or https URL into out; false for anything else. */
static bool url_target(const char *url, char *out, size_t outlen)
{
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL, *port = NULL;
	bool ok = u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
		  curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
		  curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK && host[0] &&
		  (strcasecmp(scheme, "http") == 0 || strcasecmp(scheme, "https") == 0);
	if (ok) {
		/* CURLUPART_PORT answers only a port the URL names. */
		bool has_port = curl_url_get(u, CURLUPART_PORT, &port, 0) == CURLUE_OK;
		snprintf(out, outlen, "%s://%s%s%s", scheme, host, has_port ? ":" : "", has_port ? port : "");
	}
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
	return ok;
}

void webhook_send(const char *url, char *body)
{
	char target[300];
	if (!body) {
		log_event(LOG_WARN, "webhook_dropped", "reason=\"no body\"");
		return;
	}
	if (!url || !url_target(url, target, sizeof target)) {
		log_event(LOG_WARN, "webhook_dropped", "reason=\"not an http or https URL\"");
		free(body);
		return;
	}
	Message *m = xcalloc(1, sizeof *m);
	m->url = xstrdup(url);
	m->body = body;
	memcpy(m->target, target, sizeof m->target);
	m->due_ms = util_now_ms();
	pthread_once(&once, init_once);
	pthread_mutex_lock(&lock);
	const char *refused = NULL;
	if (!accepting)
		refused = "\"sender not running\"";
	else if (nqueued >= WEBHOOK_QUEUE_MAX)
		refused = "\"queue full\"";
	if (!refused) {
		m->seq = next_seq++;
		queue_insert(m);
		pthread_cond_signal(&wake);
	}
	int depth = nqueued;
	pthread_mutex_unlock(&lock);
	if (refused) {
		log_event(LOG_WARN, "webhook_dropped", "url=%s reason=%s queued=%d", m->target, refused, depth);
		message_free(m);
	}
}

/* ---- delivery ---- */

static size_t discard_body(char *ptr, size_t size, size_t nmemb, void *arg) { return size * nmemb; }

/* Ends a transfer still running when webhook_stop's grace period is over. */
static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	return util_now_ms() >= __atomic_load_n(&abort_at_ms, __ATOMIC_RELAXED);
}

typedef enum { POST_OK, POST_RETRY, POST_FINAL } PostOutcome;

/* One attempt. why gets the failure, without the URL. */
static PostOutcome post(CURL *curl, const Message *m, char *why, size_t whylen)
{
	struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
	/* Without this curl waits up to 1 s for a "100 Continue" before bodies over 1 KiB. */
	headers = curl_slist_append(headers, "Expect:");
	curl_easy_reset(curl);
	http_client_setup(curl, m->url);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_POST, 1L);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDS, m->body);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(m->body));
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard_body);
	curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
	CURLcode rc = curl_easy_perform(curl);
	long status = 0;
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(headers);
	if (rc != CURLE_OK) {
		/* curl_easy_strerror names the kind of failure, never the URL. */
		snprintf(why, whylen, "%s", rc == CURLE_ABORTED_BY_CALLBACK ? "shutting down" : curl_easy_strerror(rc));
		return POST_RETRY;
	}
	snprintf(why, whylen, "HTTP status %ld", status);
	if (status >= 200 && status < 300)
		return POST_OK;
	/* A redirect or a refusal will not change; a timeout, a rate limit or a 5xx may. */
	if (status >= 300 && status < 500 && status != 408 && status != 429)
		return POST_FINAL;
	return POST_RETRY;
}

static void *sender_thread(void *arg)
{
	CURL *curl = curl_easy_init();
	pthread_mutex_lock(&lock);
	for (;;) {
		uint64_t now = util_now_ms();
		if (stopping && (!queue || now >= stop_deadline_ms))
			break;
		if (!queue || queue->due_ms > now) {
			uint64_t until = queue ? queue->due_ms : UINT64_MAX;
			if (stopping && stop_deadline_ms < until)
				until = stop_deadline_ms;
			if (until == UINT64_MAX) {
				pthread_cond_wait(&wake, &lock);
			} else {
				struct timespec ts = {.tv_sec = (time_t)(until / 1000),
						      .tv_nsec = (long)(until % 1000) * 1000000};
				pthread_cond_timedwait(&wake, &lock, &ts);
			}
			continue;
		}
		Message *m = queue;
		queue = m->next;
		nqueued--;
		pthread_mutex_unlock(&lock);

		char why[128];
		PostOutcome out = POST_RETRY;
		if (curl)
			out = post(curl, m, why, sizeof why);
		else
			snprintf(why, sizeof why, "curl_easy_init failed");
		m->attempts++;
		if (out == POST_OK) {
			log_event(LOG_DEBUG, "webhook_sent", "url=%s attempt=%d", m->target, m->attempts);
		} else if (out == POST_FINAL || m->attempts >= MAX_ATTEMPTS) {
			char q[160];
			log_event(LOG_WARN, "webhook_failed", "url=%s attempts=%d error=%s", m->target, m->attempts,
				  log_quote(q, sizeof q, why));
		}
		bool done = out == POST_OK || out == POST_FINAL || m->attempts >= MAX_ATTEMPTS;
		if (done) {
			message_free(m);
			m = NULL;
		} else {
			m->due_ms = util_now_ms() + ((uint64_t)backoff_ms << (m->attempts - 1));
		}

		pthread_mutex_lock(&lock);
		if (m)
			queue_insert(m);
	}
	/* Whatever is left had its chance: the grace period is over. */
	accepting = false;
	int left = 0;
	while (queue) {
		Message *m = queue;
		queue = m->next;
		message_free(m);
		left++;
	}
	nqueued = 0;
	pthread_mutex_unlock(&lock);
	if (left)
		log_event(LOG_WARN, "webhook_dropped", "reason=\"shutting down\" count=%d", left);
	if (curl)
		curl_easy_cleanup(curl);
	return NULL;
}

bool webhook_start(char *err, size_t errlen)
{
	pthread_once(&once, init_once);
	pthread_mutex_lock(&lock);
	if (running) {
		pthread_mutex_unlock(&lock);
		return true;
	}
	stopping = false;
	accepting = true;
	__atomic_store_n(&abort_at_ms, UINT64_MAX, __ATOMIC_RELAXED);
	int rc = pthread_create(&thread, NULL, sender_thread, NULL);
	running = rc == 0;
	if (running)
		pthread_setname_np(thread, "pgc-webhook");
	accepting = running;
	pthread_mutex_unlock(&lock);
	if (rc != 0) {
		snprintf(err, errlen, "webhook: cannot start the sender thread: %s", strerror(rc));
		return false;
	}
	return true;
}

void webhook_stop(void)
{
	pthread_mutex_lock(&lock);
	if (!running) {
		pthread_mutex_unlock(&lock);
		return;
	}
	stopping = true;
	stop_deadline_ms = util_now_ms() + STOP_GRACE_MS;
	__atomic_store_n(&abort_at_ms, stop_deadline_ms, __ATOMIC_RELAXED);
	pthread_cond_signal(&wake);
	pthread_mutex_unlock(&lock);
	pthread_join(thread, NULL);
	pthread_mutex_lock(&lock);
	running = false;
	pthread_mutex_unlock(&lock);
}

void webhook__set_backoff_ms(int ms) { backoff_ms = ms; }

void webhook__set_timeout_ms(int ms) { timeout_ms = ms; }
