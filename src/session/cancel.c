/* The registry of gateway cancel keys and the upstream backends they stand for. */
#include "session/cancel.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

typedef struct CancelEntry {
	uint32_t pid;
	uint32_t key;
	bool has_target;
	CancelTarget target;
	char held[24]; /* the approval request the session waits for, "" none */
	bool output_held;     /* what the session sends upstream waits for a cancel of its own */
	bool client_deferred; /* ... and a client's cancel came meanwhile: the session sends it after */
	struct CancelEntry *next;
} CancelEntry;

#define CANCEL_BUCKETS 4096

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static CancelEntry *buckets[CANCEL_BUCKETS];

static CancelEntry *find(uint32_t pid)
{
	for (CancelEntry *e = buckets[pid % CANCEL_BUCKETS]; e; e = e->next)
		if (e->pid == pid)
			return e;
	return NULL;
}

void cancel_register(uint32_t *pid, uint32_t *key)
{
	CancelEntry *e = xcalloc(1, sizeof *e);
	util_random(&e->key, sizeof e->key);
	pthread_mutex_lock(&lock);
	do {
		util_random(&e->pid, sizeof e->pid);
		e->pid &= 0x7fffffff; /* clients print it as a signed pid */
	} while (e->pid == 0 || find(e->pid));
	e->next = buckets[e->pid % CANCEL_BUCKETS];
	buckets[e->pid % CANCEL_BUCKETS] = e;
	pthread_mutex_unlock(&lock);
	*pid = e->pid;
	*key = e->key;
}

void cancel_set_target(uint32_t pid, const CancelTarget *t)
{
	pthread_mutex_lock(&lock);
	CancelEntry *e = find(pid);
	if (e) {
		e->target = *t;
		e->has_target = true;
	}
	pthread_mutex_unlock(&lock);
}

void cancel_unregister(uint32_t pid)
{
	pthread_mutex_lock(&lock);
	for (CancelEntry **pp = &buckets[pid % CANCEL_BUCKETS]; *pp; pp = &(*pp)->next) {
		if ((*pp)->pid == pid) {
			CancelEntry *e = *pp;
			*pp = e->next;
			free(e);
			break;
		}
	}
	pthread_mutex_unlock(&lock);
}

void cancel_set_held(uint32_t pid, const char *request)
{
	pthread_mutex_lock(&lock);
	CancelEntry *e = find(pid);
	if (e)
		snprintf(e->held, sizeof e->held, "%s", request ? request : "");
	pthread_mutex_unlock(&lock);
}

bool cancel_set_output_held(uint32_t pid, bool held)
{
	bool deferred = false;
	pthread_mutex_lock(&lock);
	CancelEntry *e = find(pid);
	if (e) {
		e->output_held = held;
		if (!held) {
			deferred = e->client_deferred;
			e->client_deferred = false;
		}
	}
	pthread_mutex_unlock(&lock);
	return deferred;
}

bool cancel_lookup(uint32_t pid, uint32_t key, CancelTarget *out, char held[24], bool *deferred)
{
	bool ok = false;
	pthread_mutex_lock(&lock);
	CancelEntry *e = find(pid);
	held[0] = 0;
	*deferred = false;
	if (e && e->has_target && util_ct_equal(&e->key, &key, sizeof key)) {
		*out = e->target;
		memcpy(held, e->held, sizeof e->held);
		if (e->output_held && !held[0])
			*deferred = e->client_deferred = true;
		ok = true;
	}
	pthread_mutex_unlock(&lock);
	return ok;
}
