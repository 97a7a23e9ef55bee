/*
 * Webhook notifications, off the data path: webhook_send queues a JSON POST and returns at
 * once; one background thread delivers it with libcurl (Content-Type: application/json,
 * 5 s per attempt, success is an HTTP 2xx). A failed attempt is retried after 1, 2, 4 and
 * 8 s, five attempts in all; a message waiting for its retry does not hold back the ones
 * queued after it. A 4xx other than 408 and 429 is final: the receiver refused the message.
 * Logs (core/log.h) name the URL by scheme, host and port only: the path of a Slack
 * incoming-webhook URL is its secret.
 *
 *   webhook_start(err, sizeof err);             at startup, from the main thread
 *   webhook_send(url, xstrdup(json));           from any thread
 *   webhook_stop();                             at shutdown, from the main thread
 */
#ifndef PGC_WEBHOOK_H
#define PGC_WEBHOOK_H

#include <stdbool.h>
#include <stddef.h>

/* Messages waiting (new or for a retry) beyond this are dropped. */
#define WEBHOOK_QUEUE_MAX 1000

/* Starts the sender thread (idempotent). Returns false with err on failure. */
bool webhook_start(char *err, size_t errlen) __attribute__((warn_unused_result));

/*
 * Delivers what is queued, retries included, for at most ~3 s, then stops the thread and
 * drops (and logs) what is left. Safe if never started; webhook_start may run again after.
 */
void webhook_stop(void);

/*
 * Queues a POST of body (JSON text, taken: freed by the sender) to url; never blocks on the
 * network. Drops the message, logging event=webhook_dropped, when the sender is not
 * running, when the queue is full, or when url is not an http:// or https:// URL (so the
 * config should check the URL at load). url is copied.
 */
void webhook_send(const char *url, char *body);

/* For tests: the first retry's delay (doubling after; default 1000) and the per-attempt
 * timeout (default 5000), in milliseconds. Set them while the sender is stopped. */
void webhook__set_backoff_ms(int ms);
void webhook__set_timeout_ms(int ms);

#endif
