/*
 * What every outgoing HTTP request of pgcordon takes (OIDC fetches, approval webhooks, the
 * CLI's admin API calls), set in one place so that none of them can drift.
 */
#ifndef PGC_HTTP_CLIENT_H
#define PGC_HTTP_CLIENT_H

#include <curl/curl.h>

/*
 * Sets url on curl with: http and https only; no redirects (one would carry a token or a
 * message to wherever it points); no proxy for http:// (by util_url_private, http:// only
 * goes to this host, and a proxy would see it in clear); no signals; pgcordon as the user
 * agent.
 */
void http_client_setup(CURL *curl, const char *url);

#endif
