/* OIDC issuers: discovery and JWKS fetches on one background thread; verification for callers. */
#include "auth/oidc.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/http_client.h"
#include "core/util.h"

#define FETCH_MAX_BYTES (1024 * 1024)
#define FETCH_TIMEOUT_S 10

typedef struct {
	int refs;
	JwtKeySet set;
} KeySnapshot;

typedef struct {
	char *issuer;
	char *jwks_uri;      /* configured, or NULL to discover */
	char *found_uri;     /* discovered */
	int refresh_s;
	int min_refresh_s;
	KeySnapshot *keys;   /* NULL until the first successful fetch */
	uint64_t last_attempt_ms;
	uint64_t last_success_ms;
	bool wanted;         /* an unknown kid asked for a fetch; cleared when one answering it is done */
	bool in_flight;      /* the fetch thread is fetching it now */
	unsigned want_seq;   /* counts requests, to tell one that came during a fetch */
	bool configured;     /* still in the live config */
} Issuer;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static Issuer *issuers;
static int nissuers;
static pthread_t thread;
static bool running;
static bool stopping;
static OidcKeysChanged changed_cb;
static void *changed_arg;

static void snapshot_release(KeySnapshot *k)
{
	if (k && __atomic_sub_fetch(&k->refs, 1, __ATOMIC_ACQ_REL) == 0) {
		jwks_free(&k->set);
		free(k);
	}
}

/* ---- fetching ---- */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
	return util_buf_append(arg, ptr, size * nmemb) ? size * nmemb : 0; /* 0 ends the transfer */
}

static char *http_get(const char *url, char *err, size_t errlen)
{
	CURL *curl = curl_easy_init();
	BoundedBuf b = {.max = FETCH_MAX_BYTES};
	if (!curl) {
		snprintf(err, errlen, "curl_easy_init failed");
		return NULL;
	}
	http_client_setup(curl, url);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT, (long)FETCH_TIMEOUT_S);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 5L);
	CURLcode rc = curl_easy_perform(curl);
	long status = 0;
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(curl);
	if (rc != CURLE_OK || status != 200 || !b.data) {
		if (b.too_big)
			snprintf(err, errlen, "%s: response over %d bytes", url, FETCH_MAX_BYTES);
		else if (rc != CURLE_OK)
			snprintf(err, errlen, "%s: %s", url, curl_easy_strerror(rc));
		else
			snprintf(err, errlen, "%s: HTTP status %ld", url, status);
		free(b.data);
		return NULL;
	}
	return b.data;
}

/* Discovery document → jwks_uri, checking it speaks for this issuer (OIDC Discovery §4.3). */
static char *discover(const char *issuer, char *err, size_t errlen)
{
	char url[1024];
	size_t n = strlen(issuer);
	snprintf(url, sizeof url, "%s%s.well-known/openid-configuration", issuer, n && issuer[n - 1] == '/' ? "" : "/");
	char *body = http_get(url, err, errlen);
	if (!body)
		return NULL;
	json_error_t jerr;
	json_t *doc = json_loads(body, 0, &jerr);
	free(body);
	const char *iss = doc ? json_string_value(json_object_get(doc, "issuer")) : NULL;
	const char *jwks = doc ? json_string_value(json_object_get(doc, "jwks_uri")) : NULL;
	char *out = NULL;
	if (!iss || strcmp(iss, issuer) != 0)
		snprintf(err, errlen, "%.200s: discovery document is for issuer \"%.100s\"", url, iss ? iss : "");
	else if (!jwks)
		snprintf(err, errlen, "%.200s: no jwks_uri", url);
	else if (strncmp(jwks, "https://", 8) != 0 && (strncmp(issuer, "http://", 7) != 0 || !util_url_private(jwks)))
		snprintf(err, errlen, "discovered jwks_uri %.200s is not https:// (http:// only for a loopback http:// "
				      "issuer)", jwks);
	else
		out = xstrdup(jwks);
	json_decref(doc);
	return out;
}

/* One fetch for one issuer, without holding the lock. */
static KeySnapshot *fetch_keys(const char *issuer, const char *jwks_uri, char **found_uri, char *err,
			       size_t errlen)
{
	char *uri = jwks_uri ? xstrdup(jwks_uri) : discover(issuer, err, errlen);
	if (!uri)
		return NULL;
	char *body = http_get(uri, err, errlen);
	if (!body) {
		free(uri);
		return NULL;
	}
	KeySnapshot *k = xcalloc(1, sizeof *k);
	k->refs = 1;
	if (!jwks_parse(body, strlen(body), &k->set, err, errlen) || k->set.n == 0) {
		if (k->set.n == 0 && !err[0])
			snprintf(err, errlen, "%s: no usable signing keys", uri);
		jwks_free(&k->set);
		free(k);
		k = NULL;
	}
	free(body);
	if (k)
		*found_uri = uri;
	else
		free(uri);
	return k;
}

static bool due(const Issuer *is, uint64_t now)
{
	if (!is->configured)
		return false;
	if (is->last_attempt_ms == 0)
		return true;
	/* Never more often than min_refresh, whatever asks: failures must not become a flood. */
	if (now - is->last_attempt_ms < (uint64_t)is->min_refresh_s * 1000)
		return false;
	if (!is->keys || is->wanted)
		return true;
	return now - is->last_success_ms >= (uint64_t)is->refresh_s * 1000;
}

static void *fetch_thread(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	while (!stopping) {
		uint64_t now = util_now_ms();
		int pick = -1;
		for (int i = 0; i < nissuers && pick < 0; i++)
			if (!issuers[i].in_flight && due(&issuers[i], now))
				pick = i;
		if (pick < 0) {
			/* Sleep until asked, or one second to re-check schedules. */
			struct timespec until = util_deadline(CLOCK_REALTIME, 1000);
			pthread_cond_timedwait(&wake, &lock, &until);
			continue;
		}
		Issuer *is = &issuers[pick];
		is->last_attempt_ms = now;
		is->in_flight = true;
		unsigned seq = is->want_seq;
		char *issuer = xstrdup(is->issuer);
		char *uri = is->jwks_uri ? xstrdup(is->jwks_uri) : NULL;
		pthread_mutex_unlock(&lock);

		char err[300] = "";
		char *found = NULL;
		KeySnapshot *k = fetch_keys(issuer, uri, &found, err, sizeof err);
		char q[400];
		if (k)
			log_event(LOG_INFO, "oidc_keys_fetched", "issuer=%s keys=%d uri=%s", issuer, k->set.n, found);
		else
			log_event(LOG_WARN, "oidc_keys_failed", "issuer=%s error=%s", issuer, log_quote(q, sizeof q, err));

		pthread_mutex_lock(&lock);
		/* The issuer list may have changed while we fetched: find it again by name. */
		for (int i = 0; i < nissuers; i++) {
			if (strcmp(issuers[i].issuer, issuer) != 0)
				continue;
			issuers[i].in_flight = false;
			if (issuers[i].want_seq == seq)
				issuers[i].wanted = false; /* nobody asked again while we fetched */
			if (k) {
				snapshot_release(issuers[i].keys);
				issuers[i].keys = k;
				k = NULL;
				issuers[i].last_success_ms = util_now_ms();
				free(issuers[i].found_uri);
				issuers[i].found_uri = found;
				found = NULL;
			}
			break;
		}
		snapshot_release(k);
		free(found);
		free(issuer);
		free(uri);
		OidcKeysChanged cb = changed_cb;
		void *cb_arg = changed_arg;
		pthread_mutex_unlock(&lock);
		if (cb)
			cb(cb_arg); /* sessions waiting for keys try again (success or not) */
		pthread_mutex_lock(&lock);
	}
	pthread_mutex_unlock(&lock);
	return NULL;
}

void oidc_configure(const Config *c, OidcKeysChanged cb, void *arg)
{
	pthread_mutex_lock(&lock);
	changed_cb = cb;
	changed_arg = arg;
	for (int i = 0; i < nissuers; i++)
		issuers[i].configured = false;
	for (int i = 0; i < c->noidc; i++) {
		const OidcIssuerConfig *o = &c->oidc[i];
		Issuer *is = NULL;
		for (int j = 0; j < nissuers && !is; j++)
			if (strcmp(issuers[j].issuer, o->issuer) == 0)
				is = &issuers[j];
		if (!is) {
			issuers = xrealloc(issuers, (size_t)(nissuers + 1) * sizeof *issuers);
			is = &issuers[nissuers++];
			memset(is, 0, sizeof *is);
			is->issuer = xstrdup(o->issuer);
		}
		/* A changed jwks_uri means the cached keys may be someone else's: fetch again. */
		bool uri_changed = (is->jwks_uri == NULL) != (o->jwks_uri == NULL) ||
				   (is->jwks_uri && strcmp(is->jwks_uri, o->jwks_uri) != 0);
		if (uri_changed) {
			free(is->jwks_uri);
			is->jwks_uri = o->jwks_uri ? xstrdup(o->jwks_uri) : NULL;
			snapshot_release(is->keys);
			is->keys = NULL;
			is->last_attempt_ms = 0;
		}
		is->refresh_s = o->refresh_s;
		is->min_refresh_s = o->min_refresh_s;
		is->configured = true;
	}
	if (!running && c->noidc > 0) {
		curl_global_init(CURL_GLOBAL_DEFAULT);
		running = pthread_create(&thread, NULL, fetch_thread, NULL) == 0;
		if (running)
			pthread_setname_np(thread, "pgc-oidc");
	}
	pthread_cond_signal(&wake);
	pthread_mutex_unlock(&lock);
}

void oidc_stop(void)
{
	pthread_mutex_lock(&lock);
	stopping = true;
	pthread_cond_signal(&wake);
	bool was_running = running;
	running = false;
	pthread_mutex_unlock(&lock);
	if (was_running)
		pthread_join(thread, NULL);
	for (int i = 0; i < nissuers; i++) {
		free(issuers[i].issuer);
		free(issuers[i].jwks_uri);
		free(issuers[i].found_uri);
		snapshot_release(issuers[i].keys);
	}
	free(issuers);
	issuers = NULL;
	nissuers = 0;
}

/* ---- verification ---- */

static const char *alias_target(const OidcIssuerConfig *o, const char *user)
{
	for (int i = 0; i < o->alias_from.n; i++)
		if (strcmp(o->alias_from.items[i], user) == 0)
			return o->alias_to.items[i];
	return NULL;
}

OidcOutcome oidc_verify(const Config *c, const char *token, const char *user, bool retry, OidcIdentity *out,
			char *err, size_t errlen)
{
	memset(out, 0, sizeof *out);
	if (strlen(token) > JWT_MAX_TOKEN) {
		snprintf(err, errlen, "token too large (over %d bytes)", JWT_MAX_TOKEN);
		return OIDC_REFUSED;
	}
	char iss[512], kid[128];
	if (!jwt_peek(token, iss, sizeof iss, kid, sizeof kid)) {
		snprintf(err, errlen, "malformed token");
		return OIDC_REFUSED;
	}
	const OidcIssuerConfig *o = NULL;
	for (int i = 0; i < c->noidc && !o; i++)
		if (strcmp(c->oidc[i].issuer, iss) == 0)
			o = &c->oidc[i];
	if (!o) {
		snprintf(err, errlen, "issuer \"%.100s\" is not configured", iss);
		return OIDC_REFUSED;
	}
	pthread_mutex_lock(&lock);
	Issuer *is = NULL;
	for (int i = 0; i < nissuers && !is; i++)
		if (strcmp(issuers[i].issuer, o->issuer) == 0)
			is = &issuers[i];
	KeySnapshot *keys = is ? is->keys : NULL;
	if (keys)
		__atomic_add_fetch(&keys->refs, 1, __ATOMIC_RELAXED);
	bool have_kid = keys && (!kid[0] || jwks_has_kid(&keys->set, kid));
	/* Rate limit: a token with a made-up kid must not make us hammer the issuer. */
	bool fetch_possible = is && (is->last_attempt_ms == 0 ||
				     util_now_ms() - is->last_attempt_ms >= (uint64_t)is->min_refresh_s * 1000);
	/* A retry woken by another issuer's fetch, or before ours finished, keeps waiting. */
	if (!have_kid && ((!retry && fetch_possible) || (retry && is && (is->wanted || is->in_flight)))) {
		/* Unknown kid or no keys yet: ask for a fetch and let the caller wait for it. */
		if (!retry) {
			is->wanted = true;
			is->want_seq++;
		}
		pthread_cond_signal(&wake);
		pthread_mutex_unlock(&lock);
		snapshot_release(keys);
		return OIDC_PENDING;
	}
	pthread_mutex_unlock(&lock);
	if (!keys) {
		snprintf(err, errlen, "no signing keys for issuer %.100s (it has not been reachable)", o->issuer);
		return OIDC_REFUSED;
	}
	JwtRules rules = {.issuer = o->issuer, .audience = o->audience, .leeway_s = o->leeway_s,
			  .username_claim = o->username_claim, .groups_claim = o->groups_claim, .algs = o->algorithms};
	JwtIdentity id;
	JwtResult r = jwt_verify(token, &keys->set, &rules, (int64_t)time(NULL), &id, err, errlen);
	snapshot_release(keys);
	if (r != JWT_OK)
		return OIDC_REFUSED;
	const char *target = user ? alias_target(o, user) : NULL;
	if (user && strcmp(id.username, user) != 0 && !(target && strcmp(target, id.username) == 0)) {
		snprintf(err, errlen, "token is for \"%.100s\", not for \"%.63s\"", id.username, user);
		jwt_identity_free(&id);
		return OIDC_REFUSED;
	}
	snprintf(out->username, sizeof out->username, "%s", id.username);
	out->groups = xcalloc(id.ngroups ? (size_t)id.ngroups : 1, sizeof(char *));
	for (int i = 0; i < id.ngroups; i++)
		out->groups[out->ngroups++] = id.groups[i]; /* ownership moves */
	id.ngroups = 0;
	out->expires = id.exp + o->leeway_s; /* accepted within the leeway: usable within it too */
	out->issuer = o;
	return OIDC_OK;
}

void oidc_identity_free(OidcIdentity *id)
{
	for (int i = 0; i < id->ngroups; i++)
		free(id->groups[i]);
	free(id->groups);
	id->groups = NULL;
	id->ngroups = 0;
}
