/* pgcordon serve: load config, open listeners, run workers, handle signals. */
#include "cli/serve.h"

#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "auth/oidc.h"
#include "approval/approval.h"
#include "audit/audit.h"
#include "http/api.h"
#include "core/log.h"
#include "core/version.h"
#include "core/metrics.h"
#include "core/util.h"
#include "net/tls.h"
#include "net/worker.h"
#include "session/inspect_job.h"
#include "session/session.h"

typedef struct {
	struct event_base *base;
	Worker *workers;
	int nworkers;
	const char *path;
	pthread_mutex_t notify_mu; /* the audit writer notifies workers until they are gone */
	bool workers_gone;
} Server;

/* Strict durability: records were committed; sessions holding results may go on. */
static void on_audit_durable(void *arg)
{
	Server *srv = arg;
	pthread_mutex_lock(&srv->notify_mu);
	if (srv->workers && !srv->workers_gone)
		workers_notify_all(srv->workers, srv->nworkers);
	pthread_mutex_unlock(&srv->notify_mu);
}

static void on_oidc_keys(void *arg);

static Config *load(const char *path, char *err, size_t errlen)
{
	Config *c = config_load(path, err, errlen);
	if (c && !tls_prepare_config(c, err, errlen)) {
		config_release(c);
		return NULL;
	}
	return c;
}

int serve_check_config(const char *path)
{
	char err[512];
	Config *c = load(path, err, sizeof err);
	if (!c) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	printf("%s: ok (%d database%s, %d user%s)\n", path, c->ndatabases, c->ndatabases == 1 ? "" : "s",
	       c->nusers, c->nusers == 1 ? "" : "s");
	config_release(c);
	return 0;
}

static void on_sighup(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	Server *srv = arg;
	char err[512], q[600];
	Config *c = load(srv->path, err, sizeof err);
	if (!c) {
		metrics_inc(MET_RELOAD_FAILED);
		log_event(LOG_ERROR, "reload_failed", "error=%s", log_quote(q, sizeof q, err));
		return;
	}
	Config *old = config_current();
	if (strcmp(old->listen_address, c->listen_address) != 0 || old->listen_port != c->listen_port ||
	    old->workers != c->workers)
		log_event(LOG_WARN, "reload_partial", "reason=\"listen changes need a restart\"");
	if (old->admin_enabled != c->admin_enabled || strcmp(old->admin_address, c->admin_address) != 0 ||
	    old->admin_port != c->admin_port || !util_str_same(old->admin_tls_cert, c->admin_tls_cert) ||
	    !util_str_same(old->admin_tls_key, c->admin_tls_key))
		log_event(LOG_WARN, "reload_partial", "reason=\"admin listener changes need a restart\"");
	config_release(old);
	log_set_level((LogLevel)c->log_level);
	uint64_t generation = c->generation;
	int ndatabases = c->ndatabases, nusers = c->nusers, npolicies = c->npolicies;
	oidc_configure(c, on_oidc_keys, srv);
	config_swap(c); /* before the log line: whoever reads it may rely on the new config */
	metrics_inc(MET_RELOAD_OK);
	log_event(LOG_INFO, "config_reloaded", "generation=%llu databases=%d users=%d policies=%d",
		  (unsigned long long)generation, ndatabases, nusers, npolicies);
}

static void on_oidc_keys(void *arg)
{
	Server *srv = arg;
	workers_notify_all(srv->workers, srv->nworkers);
}

static void on_sigterm(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	Server *srv = arg;
	log_event(LOG_INFO, "shutdown_started", "signal=%s active_clients=%d", sig == SIGINT ? "SIGINT" : "SIGTERM",
		  session_active_count());
	session_begin_shutdown();
	workers_stop_accepting(srv->workers, srv->nworkers);
	workers_notify_all(srv->workers, srv->nworkers);
	event_base_loopbreak(srv->base);
}

int serve_run(const char *path)
{
	char err[512];
	Config *c = load(path, err, sizeof err);
	if (!c) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	log_set_level((LogLevel)c->log_level);
	signal(SIGPIPE, SIG_IGN);

	int n = c->workers;
	int fds[256];
	int port;
	if (!workers_listen(c->listen_address, c->listen_port, n, fds, &port, err, sizeof err)) {
		log_event(LOG_ERROR, "listen_failed", "address=%s port=%d error=\"%s\"", c->listen_address,
			  c->listen_port, err);
		config_release(c);
		return 1;
	}
	config_swap(c);

	/* Workers start with these signals blocked, so only the main thread's loop sees them. */
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	Server srv = {.path = path, .nworkers = n, .notify_mu = PTHREAD_MUTEX_INITIALIZER};
	metrics_init(n);
	if (!audit_start(c, n + 1, on_audit_durable, &srv, err, sizeof err)) {
		char q[600];
		log_event(LOG_ERROR, "start_failed", "error=%s", log_quote(q, sizeof q, err));
		return 1;
	}
	/* Decisions wake the workers the same way: held sessions look at their requests again. */
	if (!approval_start(c, on_audit_durable, &srv, err, sizeof err)) {
		char q[600];
		log_event(LOG_ERROR, "start_failed", "error=%s", log_quote(q, sizeof q, err));
		audit_stop();
		return 1;
	}
	if (!http_start(c, err, sizeof err)) {
		char q[600];
		log_event(LOG_ERROR, "start_failed", "error=%s", log_quote(q, sizeof q, err));
		approval_stop();
		audit_stop();
		return 1;
	}
	if (!c->audit_store)
		log_event(LOG_WARN, "audit_disabled", "reason=\"no audit.store in the config: nothing is recorded\"");
	inspect_jobs_init(n); /* one long statement's inspection at a time per worker, as on the workers */
	pthread_mutex_lock(&srv.notify_mu);
	srv.workers = workers_start(n, fds, &session_worker_hooks, err, sizeof err);
	pthread_mutex_unlock(&srv.notify_mu);
	if (!srv.workers) {
		log_event(LOG_ERROR, "start_failed", "error=\"%s\"", err);
		http_stop();
		approval_stop();
		audit_stop();
		return 1;
	}
	oidc_configure(c, on_oidc_keys, &srv);
	srv.base = event_base_new();
	struct event *hup = evsignal_new(srv.base, SIGHUP, on_sighup, &srv);
	struct event *term = evsignal_new(srv.base, SIGTERM, on_sigterm, &srv);
	struct event *intr = evsignal_new(srv.base, SIGINT, on_sigterm, &srv);
	event_add(hup, NULL);
	event_add(term, NULL);
	event_add(intr, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);

	log_event(LOG_INFO, "ready", "address=%s port=%d workers=%d config=%s version=%s commit=%s", c->listen_address, port,
		  n, path, PGCORDON_VERSION, pgcordon_commit);
	event_base_dispatch(srv.base);

	http_stop();
	oidc_stop(); /* first: its callback notifies the workers */
	workers_wait(srv.workers, n);
	pthread_mutex_lock(&srv.notify_mu);
	srv.workers_gone = true;
	pthread_mutex_unlock(&srv.notify_mu);
	workers_free(srv.workers, n);
	approval_stop();
	audit_stop(); /* after the sessions: their last records are written */
	log_event(LOG_INFO, "stopped", NULL);
	event_free(hup);
	event_free(term);
	event_free(intr);
	event_base_free(srv.base);
	config_swap(NULL);
	return 0;
}
