/* Long statements inspected on a pool of threads (see inspect_job.h). */
#include "session/inspect_job.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/util.h"
#include "policy/cache.h"

struct InspectJob {
	char *sql;
	size_t len;
	Worker *worker;
	QueryFacts *facts;
	bool running;   /* a thread took it from the queue (P.mu) */
	bool done;      /* facts are set (P.mu) */
	bool abandoned; /* its session is gone while it ran: the thread frees it (P.mu) */
	InspectJob *next;
};

/* One lock for the queue and the jobs' state: taken a few times per long statement. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	InspectJob *head, *tail;
	int threads, idle, max_threads;
} P = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, 0, 1};

void inspect_jobs_init(int n)
{
	pthread_mutex_lock(&P.mu);
	P.max_threads = n > 0 ? n : 1;
	pthread_mutex_unlock(&P.mu);
}

static void job_free(InspectJob *j)
{
	if (j->facts)
		inspect_free(j->facts);
	free(j->sql);
	free(j);
}

static void *pool_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&P.mu);
	for (;;) {
		while (!P.head) {
			P.idle++;
			pthread_cond_wait(&P.cond, &P.mu);
			P.idle--;
		}
		InspectJob *j = P.head;
		P.head = j->next;
		if (!P.head)
			P.tail = NULL;
		j->running = true;
		pthread_mutex_unlock(&P.mu);
		QueryFacts *facts = facts_of_text(j->sql, j->len);
		pthread_mutex_lock(&P.mu);
		j->facts = facts;
		if (j->abandoned) {
			pthread_mutex_unlock(&P.mu);
			job_free(j); /* a large tree takes a while to free: not under the lock */
			pthread_mutex_lock(&P.mu);
			continue;
		}
		j->done = true;
		/* Under the lock: once its session abandons the job, the worker is not touched. */
		worker_notify(j->worker);
	}
	return NULL;
}

/* Under P.mu: a thread for the job just queued, unless one is idle or there are enough. */
static bool ensure_thread(void)
{
	if (P.idle > 0 || P.threads >= P.max_threads)
		return P.threads > 0;
	pthread_t t;
	/* A worker's stack: the walk of the parse tree recurses as deep as the tree (2,048 levels at most). */
	int rc = util_thread_start(&t, WORKER_STACK_SIZE, true, pool_main, NULL);
	if (rc != 0) {
		log_event(LOG_WARN, "inspect_thread_failed", "threads=%d error=\"%s\"", P.threads, strerror(rc));
		return P.threads > 0;
	}
	P.threads++;
	return true;
}

InspectJob *inspect_job_start(Worker *w, const char *sql, size_t len)
{
	InspectJob *j = xcalloc(1, sizeof *j);
	j->sql = xmalloc(len + 1);
	memcpy(j->sql, sql, len);
	j->sql[len] = 0;
	j->len = len;
	j->worker = w;
	pthread_mutex_lock(&P.mu);
	if (!ensure_thread()) {
		pthread_mutex_unlock(&P.mu);
		job_free(j);
		return NULL;
	}
	if (P.tail)
		P.tail->next = j;
	else
		P.head = j;
	P.tail = j;
	pthread_cond_signal(&P.cond);
	pthread_mutex_unlock(&P.mu);
	return j;
}

bool inspect_job_done(InspectJob *j)
{
	pthread_mutex_lock(&P.mu);
	bool done = j->done;
	pthread_mutex_unlock(&P.mu);
	return done;
}

bool inspect_job_is_for(const InspectJob *j, const char *sql, size_t len)
{
	return j->len == len && memcmp(j->sql, sql, len) == 0;
}

QueryFacts *inspect_job_take(InspectJob *j)
{
	QueryFacts *facts = j->facts; /* done: its thread is through with it */
	j->facts = NULL;
	return facts;
}

/* Under P.mu: takes a job no thread has taken yet out of the queue. */
static void unqueue(InspectJob *j)
{
	InspectJob **at = &P.head, *before = NULL;
	while (*at != j) {
		before = *at;
		at = &(*at)->next;
	}
	*at = j->next;
	if (P.tail == j)
		P.tail = before;
}

void inspect_job_abandon(InspectJob *j)
{
	pthread_mutex_lock(&P.mu);
	/* Queued, it goes at once: jobs left behind by closed sessions must not pile up. */
	bool running = j->running && !j->done;
	if (running)
		j->abandoned = true;
	else if (!j->done)
		unqueue(j);
	pthread_mutex_unlock(&P.mu);
	if (!running)
		job_free(j);
}
