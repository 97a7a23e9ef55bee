/* pgcordon approvals list|approve|deny and pgcordon grants request|list: the admin API from a shell. */
#include "cli/approvals_cmd.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "approval/approval.h"
#include "config/config.h"
#include "core/http_client.h"
#include "core/util.h"

#define ANSWER_MAX_BYTES (16 * 1024 * 1024)
#define STATEMENT_CHARS 60
#define CELL_CHARS 40

typedef struct {
	const char *cmd; /* "approvals" or "grants" */
	const char *sub; /* list, approve, deny, request */
	const char *id;
	const char *url, *token, *cacert, *status, *reason, *user, *group, *tables, *access, *duration;
	bool json;
} Args;

static int usage(FILE *f)
{
	fprintf(f, "usage:\n"
		   "  pgcordon approvals list    [--status S] [--json] [--url URL] [--token T] [--cacert F]\n"
		   "  pgcordon approvals approve ID [--reason R] [--url URL] [--token T] [--cacert F]\n"
		   "  pgcordon approvals deny    ID --reason R [--url URL] [--token T] [--cacert F]\n"
		   "  pgcordon grants request (--user U | --group G) --tables T1,T2 [--access read|write]\n"
		   "                          --duration 30m --reason R [--url URL] [--token T] [--cacert F]\n"
		   "  pgcordon grants list [--status active|all] [--json] [--url URL] [--token T] [--cacert F]\n"
		   "S is pending (the default), approved, denied, expired, cancelled or all. --url is the\n"
		   "admin API (default " ADMIN_DEFAULT_URL "; off loopback it must be https://); --token an API\n"
		   "key or OIDC token (default $PGCORDON_TOKEN); --cacert the CA file that signed the\n"
		   "API's certificate (default $PGCORDON_CACERT, else the system's). --json prints the\n"
		   "API's answer as it came.\n");
	return f == stdout ? 0 : 2;
}

/* ---- arguments ---- */

/* The options each subcommand takes, space-separated, each followed by a space. */
static const char *allowed_options(const char *cmd, const char *sub)
{
	if (strcmp(cmd, "approvals") == 0 && strcmp(sub, "list") == 0)
		return "--status --url --token --cacert --json ";
	if (strcmp(cmd, "approvals") == 0 && (strcmp(sub, "approve") == 0 || strcmp(sub, "deny") == 0))
		return "--reason --url --token --cacert --json ";
	if (strcmp(cmd, "grants") == 0 && strcmp(sub, "request") == 0)
		return "--user --group --tables --access --duration --reason --url --token --cacert --json ";
	if (strcmp(cmd, "grants") == 0 && strcmp(sub, "list") == 0)
		return "--status --url --token --cacert --json ";
	return NULL;
}

static bool in_list(const char *word, const char *list)
{
	size_t n = strlen(word);
	for (const char *p = list; (p = strstr(p, word)) != NULL; p += n)
		if ((p == list || p[-1] == ' ') && p[n] == ' ')
			return true;
	return false;
}

/* Fills a from argv; false after printing why (a usage error). */
static bool parse_args(int argc, char **argv, Args *a)
{
	memset(a, 0, sizeof *a);
	a->cmd = argv[1];
	a->sub = argv[2];
	const char *allowed = allowed_options(a->cmd, a->sub);
	if (!allowed) {
		fprintf(stderr, "pgcordon %s: unknown subcommand \"%s\"\n", a->cmd, a->sub);
		return false;
	}
	bool wants_id = strcmp(a->sub, "approve") == 0 || strcmp(a->sub, "deny") == 0;
	for (int i = 3; i < argc; i++) {
		const char *o = argv[i];
		if (o[0] != '-' || strcmp(o, "-") == 0) {
			if (!wants_id || a->id) {
				fprintf(stderr, "pgcordon %s %s: unexpected argument \"%s\"\n", a->cmd, a->sub, o);
				return false;
			}
			a->id = o;
			continue;
		}
		if (!in_list(o, allowed)) {
			fprintf(stderr, "pgcordon %s %s: unknown option \"%s\"\n", a->cmd, a->sub, o);
			return false;
		}
		if (strcmp(o, "--json") == 0) {
			a->json = true;
			continue;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "pgcordon %s %s: %s needs a value\n", a->cmd, a->sub, o);
			return false;
		}
		const char *v = argv[++i];
		const char **slot = strcmp(o, "--url") == 0 ? &a->url : strcmp(o, "--token") == 0 ? &a->token
				  : strcmp(o, "--cacert") == 0 ? &a->cacert
				  : strcmp(o, "--status") == 0 ? &a->status : strcmp(o, "--reason") == 0 ? &a->reason
				  : strcmp(o, "--user") == 0 ? &a->user : strcmp(o, "--group") == 0 ? &a->group
				  : strcmp(o, "--tables") == 0 ? &a->tables : strcmp(o, "--access") == 0 ? &a->access
				  : &a->duration;
		*slot = v;
	}
	return true;
}

/* The checks the API would make too, so that a typo is a usage error (exit 2), not an API one. */
static bool check_args(Args *a)
{
	const char *what = NULL;
	if ((strcmp(a->sub, "approve") == 0 || strcmp(a->sub, "deny") == 0) && (!a->id || !*a->id))
		what = "needs the request ID";
	else if (strcmp(a->sub, "deny") == 0 && (!a->reason || !*a->reason))
		what = "needs --reason: the requester is told why";
	else if (a->status && strcmp(a->cmd, "approvals") == 0 &&
		 !in_list(a->status, "pending approved denied expired cancelled all "))
		what = "--status is pending, approved, denied, expired, cancelled or all";
	else if (a->status && strcmp(a->cmd, "grants") == 0 && !in_list(a->status, "active all "))
		what = "--status is active or all";
	else if (strcmp(a->sub, "request") == 0) {
		if ((a->user != NULL) == (a->group != NULL))
			what = "needs one of --user U or --group G";
		else if (!a->tables || !*a->tables)
			what = "needs --tables T1,T2";
		else if (a->access && strcmp(a->access, "read") != 0 && strcmp(a->access, "write") != 0)
			what = "--access is read or write";
		else if (!a->duration || !*a->duration)
			what = "needs --duration, e.g. 30m";
		else if (!a->reason || !*a->reason)
			what = "needs --reason";
	}
	if (!what) {
		if (!a->url)
			a->url = ADMIN_DEFAULT_URL;
		if (strncmp(a->url, "http://", 7) != 0 && strncmp(a->url, "https://", 8) != 0)
			what = "--url must be an http:// or https:// URL";
		else if (!util_url_private(a->url))
			what = "--url must be https:// off this host: the token would cross the network in clear";
	}
	if (!what) {
		if (!a->cacert)
			a->cacert = getenv("PGCORDON_CACERT");
		if (a->cacert && !*a->cacert)
			a->cacert = NULL;
	}
	if (!what) {
		if (!a->token)
			a->token = getenv("PGCORDON_TOKEN");
		if (!a->token || !*a->token)
			what = "needs a token: --token T or PGCORDON_TOKEN";
		else
			for (const char *p = a->token; *p && !what; p++)
				if ((unsigned char)*p < 0x21 || *p == 0x7f)
					what = "the token has spaces or control characters";
	}
	if (what) {
		fprintf(stderr, "pgcordon %s %s: %s\n", a->cmd, a->sub, what);
		return false;
	}
	return true;
}

/* ---- the API ---- */

typedef BoundedBuf Answer;

static size_t on_answer(char *ptr, size_t size, size_t nmemb, void *arg)
{
	return util_buf_append(arg, ptr, size * nmemb) ? size * nmemb : 0; /* 0 ends the transfer */
}

/*
 * One call: method path (already escaped) with body (JSON, or NULL). Returns the HTTP
 * status with the answer in ans (caller frees ans->data), or 0 with err when the API could
 * not be reached.
 */
static long api_call(const Args *a, const char *method, const char *path, const char *body, Answer *ans,
		     char *err, size_t errlen)
{
	memset(ans, 0, sizeof *ans);
	ans->max = ANSWER_MAX_BYTES;
	CURL *curl = curl_easy_init();
	if (!curl) {
		snprintf(err, errlen, "curl_easy_init failed");
		return 0;
	}
	size_t n = strlen(a->url);
	while (n > 0 && a->url[n - 1] == '/')
		n--;
	char *url = xasprintf("%.*s%s", (int)n, a->url, path);
	char *auth = xasprintf("Authorization: Bearer %s", a->token);
	struct curl_slist *headers = curl_slist_append(NULL, auth);
	headers = curl_slist_append(headers, "Accept: application/json");
	if (body) {
		headers = curl_slist_append(headers, "Content-Type: application/json");
		headers = curl_slist_append(headers, "Expect:");
		curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
	}
	curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
	http_client_setup(curl, url); /* no redirects: one would carry the bearer token along */
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_answer);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, ans);
	if (a->cacert)
		curl_easy_setopt(curl, CURLOPT_CAINFO, a->cacert);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT, 60L);
	CURLcode rc = curl_easy_perform(curl);
	long status = 0;
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(headers);
	util_wipe_free(auth);
	curl_easy_cleanup(curl);
	if (rc != CURLE_OK || status == 0) {
		snprintf(err, errlen, "cannot reach %.*s: %s", (int)n, a->url,
			 ans->too_big ? "answer too large" : curl_easy_strerror(rc));
		free(url);
		free(ans->data);
		ans->data = NULL;
		return 0;
	}
	free(url);
	return status;
}

/* ---- printing ---- */

/*
 * A copy of s fit for a terminal line: control characters (C0, DEL, C1) cannot reach it,
 * since statements and reasons come from whoever sent them, nor can the invisible ones of
 * util_utf8_invisible (bidi controls would make a statement read differently from what it
 * is, the "Trojan Source" trick, and an approver decides on what they read); whitespace
 * runs become one space; at most max characters (0: no limit), with "..." when cut.
 */
static char *clean(const char *s, int max)
{
	if (!s)
		return xstrdup("-");
	size_t len = strlen(s);
	char *out = xmalloc(len + 4);
	size_t o = 0;
	int chars = 0;
	bool space = false;
	for (const unsigned char *p = (const unsigned char *)s; *p;) {
		size_t clen;
		bool invisible = util_utf8_invisible(p, &clen) != 0;
		if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') {
			space = o > 0;
			p++;
			continue;
		}
		if (max && chars + (space ? 1 : 0) >= max) {
			memcpy(out + o, "...", 3);
			o += 3;
			break;
		}
		if (space) {
			out[o++] = ' ';
			chars++;
			space = false;
		}
		bool control = *p < 0x20 || *p == 0x7f || (clen == 1 && *p >= 0x80) || invisible;
		if (control) {
			out[o++] = '?';
		} else {
			memcpy(out + o, p, clen);
			o += clen;
		}
		chars++;
		p += clen;
	}
	out[o] = 0;
	return out;
}

/* Characters on screen of a clean string (UTF-8). */
static int width(const char *s)
{
	int w = 0;
	for (; *s; s++)
		w += ((unsigned char)*s & 0xc0) != 0x80;
	return w;
}

typedef struct {
	int ncols;
	const char *const *headers;
	char **cells; /* row-major, clean strings */
	int nrows;
} Table;

static void table_row(Table *t, char **row)
{
	t->cells = xrealloc(t->cells, (size_t)(t->nrows + 1) * (size_t)t->ncols * sizeof *t->cells);
	memcpy(t->cells + (size_t)t->nrows * (size_t)t->ncols, row, (size_t)t->ncols * sizeof *row);
	t->nrows++;
}

/* Prints the table, columns padded to their widest cell (the last one unpadded), and frees it. */
static void table_print(Table *t)
{
	int w[16] = {0};
	for (int c = 0; c < t->ncols; c++) {
		w[c] = width(t->headers[c]);
		for (int r = 0; r < t->nrows; r++) {
			int cw = width(t->cells[r * t->ncols + c]);
			w[c] = cw > w[c] ? cw : w[c];
		}
	}
	for (int r = -1; r < t->nrows; r++) {
		for (int c = 0; c < t->ncols; c++) {
			const char *s = r < 0 ? t->headers[c] : t->cells[r * t->ncols + c];
			if (c == t->ncols - 1)
				printf("%s\n", s);
			else
				printf("%s%*s  ", s, w[c] - width(s), "");
		}
	}
	for (int i = 0; i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
}

/* A non-empty string member of o, or of its "grant" object; NULL when neither has one. */
static const char *member(json_t *o, const char *name)
{
	const char *v = json_string_value(json_object_get(o, name));
	if (!v || !*v)
		v = json_string_value(json_object_get(json_object_get(o, "grant"), name));
	return v && *v ? v : NULL;
}

/* A grant's duration: "duration" as given, or "duration_s" seconds as 90s, 30m, 2h, 1d. */
static char *duration_of(json_t *o)
{
	const char *d = member(o, "duration");
	if (d)
		return xstrdup(d);
	json_t *s = json_object_get(o, "duration_s");
	if (!json_is_integer(s))
		s = json_object_get(json_object_get(o, "grant"), "duration_s");
	if (!json_is_integer(s))
		return NULL;
	long long v = (long long)json_integer_value(s);
	static const struct {
		long long secs;
		char unit;
	} units[] = {{86400, 'd'}, {3600, 'h'}, {60, 'm'}};
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
		if (v && v % units[i].secs == 0)
			return xasprintf("%lld%c", v / units[i].secs, units[i].unit);
	return xasprintf("%llds", v);
}

/* "public.a,public.b" from a "tables" array of o or of its "grant" object. */
static char *tables_of(json_t *o)
{
	json_t *arr = json_object_get(o, "tables");
	if (!json_is_array(arr))
		arr = json_object_get(json_object_get(o, "grant"), "tables");
	size_t cap = 1, i;
	json_t *t;
	json_array_foreach(arr, i, t)
		cap += strlen(json_string_value(t) ? json_string_value(t) : "") + 1;
	char *s = xcalloc(1, cap);
	json_array_foreach(arr, i, t)
	{
		if (i)
			strcat(s, ",");
		strcat(s, json_string_value(t) ? json_string_value(t) : "");
	}
	return s;
}

/* "2026-11-22 10:00:00" from "2026-11-22T10:00:00.000000Z" (times are UTC). */
static char *short_time(const char *iso)
{
	if (!iso)
		return xstrdup("-");
	char *s = clean(iso, 0);
	if (strlen(s) >= 19 && s[10] == 'T') {
		s[10] = ' ';
		s[19] = 0;
	}
	return s;
}

/* What a request asks for: its statement, or for a grant what it would give. */
static char *request_subject(json_t *r)
{
	const char *stmt = member(r, "statement");
	const char *kind = member(r, "kind");
	if (stmt || !kind || strcmp(kind, "grant") != 0)
		return clean(stmt, STATEMENT_CHARS);
	char *tables = tables_of(r);
	char *duration = duration_of(r);
	const char *user = member(r, "user"), *group = member(r, "group");
	const char *access = member(r, "access");
	char *text = xasprintf("grant %s on %s to %s%s for %s", access ? access : "read", *tables ? tables : "?",
			       group ? "group " : "", group ? group : user ? user : "?", duration ? duration : "?");
	char *out = clean(text, STATEMENT_CHARS);
	free(text);
	free(tables);
	free(duration);
	return out;
}

static void print_approvals(const Args *a, json_t *list)
{
	if (json_array_size(list) == 0) {
		printf("no %s requests\n", a->status && strcmp(a->status, "all") != 0 ? a->status
					   : a->status ? "approval" : "pending");
		return;
	}
	static const char *const headers[] = {"ID", "STATUS", "REQUESTER", "DATABASE",
					      "WHY", "CREATED (UTC)", "STATEMENT"};
	Table t = {.ncols = 7, .headers = headers};
	size_t i;
	json_t *r;
	json_array_foreach(list, i, r)
	{
		const char *why = member(r, "why");
		const char *kind = member(r, "kind");
		char *row[7] = {
		    clean(member(r, "id"), CELL_CHARS),
		    clean(member(r, "status"), CELL_CHARS),
		    clean(member(r, "requester"), CELL_CHARS),
		    clean(member(r, "database"), CELL_CHARS),
		    clean(why ? why : kind && strcmp(kind, "grant") == 0 ? "grant" : NULL, CELL_CHARS),
		    short_time(member(r, "created")),
		    request_subject(r),
		};
		table_row(&t, row);
	}
	table_print(&t);
}

static void print_grants(const Args *a, json_t *list)
{
	if (json_array_size(list) == 0) {
		printf("no %sgrants\n", a->status && strcmp(a->status, "all") == 0 ? "" : "active ");
		return;
	}
	static const char *const headers[] = {"ID", "STATUS", "GRANTEE", "ACCESS", "UNTIL (UTC)", "TABLES"};
	Table t = {.ncols = 6, .headers = headers};
	size_t i;
	json_t *g;
	json_array_foreach(list, i, g)
	{
		const char *user = member(g, "user"), *group = member(g, "group");
		const char *until = member(g, "valid_until");
		char *grantee = group ? xasprintf("group %s", group) : xstrdup(user ? user : "-");
		char *tables = tables_of(g);
		/* A grant is a request of kind grant: "approved" and no longer active is expired. */
		json_t *active = json_object_get(g, "active");
		const char *status = member(g, "status");
		if (json_is_true(active))
			status = "active";
		else if (json_is_false(active) && status && strcmp(status, "approved") == 0)
			status = "expired";
		char *row[6] = {
		    clean(member(g, "id"), CELL_CHARS),
		    clean(status, CELL_CHARS),
		    clean(grantee, CELL_CHARS),
		    clean(member(g, "access"), CELL_CHARS),
		    short_time(until ? until : member(g, "expires")),
		    clean(*tables ? tables : NULL, STATEMENT_CHARS),
		};
		free(grantee);
		free(tables);
		table_row(&t, row);
	}
	table_print(&t);
}

/* ---- commands ---- */

/*
 * Makes the call and judges the answer: 0 with the parsed document in *doc, or the exit
 * code after printing the error (the API's "error" and the HTTP status).
 */
static int call(const Args *a, const char *method, const char *path, json_t *body, Answer *ans, json_t **doc)
{
	char err[512];
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	long status = api_call(a, method, path, text, ans, err, sizeof err);
	free(text);
	*doc = NULL;
	if (status == 0) {
		fprintf(stderr, "pgcordon %s %s: %s\n", a->cmd, a->sub, err);
		return 1;
	}
	json_error_t jerr;
	json_t *d = ans->data ? json_loads(ans->data, 0, &jerr) : NULL;
	if (status < 200 || status >= 300) {
		const char *msg = json_string_value(json_object_get(d, "error"));
		char *shown = clean(msg ? msg : ans->data && *ans->data ? ans->data : "(no error message)", 300);
		fprintf(stderr, "pgcordon %s %s: HTTP %ld: %s\n", a->cmd, a->sub, status, shown);
		free(shown);
		json_decref(d);
		return 1;
	}
	if (!json_is_object(d)) {
		fprintf(stderr, "pgcordon %s %s: HTTP %ld but the answer is not a JSON object\n", a->cmd, a->sub,
			status);
		json_decref(d);
		return 1;
	}
	*doc = d;
	return 0;
}

/* Prints the raw answer for --json. */
static void print_raw(const Answer *ans)
{
	fputs(ans->data, stdout);
	if (ans->len == 0 || ans->data[ans->len - 1] != '\n')
		putchar('\n');
}

static int cmd_list(const Args *a)
{
	bool grants = strcmp(a->cmd, "grants") == 0;
	char *status = a->status ? curl_easy_escape(NULL, a->status, 0) : NULL;
	/* Approvals come a page at a time: ask for the largest page (grants come whole). */
	char *path = grants ? xasprintf("/api/grants%s%s", status ? "?status=" : "", status ? status : "")
			    : xasprintf("/api/approvals?limit=" UTIL_TEXT(APPROVAL_LIST_MAX) "%s%s", status ? "&status=" : "", status ? status : "");
	curl_free(status);
	Answer ans;
	json_t *doc;
	int rc = call(a, "GET", path, NULL, &ans, &doc);
	free(path);
	if (rc == 0) {
		json_t *list = json_object_get(doc, grants ? "grants" : "approvals");
		if (!json_is_array(list)) {
			fprintf(stderr, "pgcordon %s list: the answer has no \"%s\" list\n", a->cmd, a->cmd);
			rc = 1;
		} else if (a->json) {
			print_raw(&ans);
		} else if (grants) {
			print_grants(a, list);
		} else {
			print_approvals(a, list);
		}
		const char *next = json_string_value(json_object_get(doc, "next"));
		if (!grants && next) {
			char *shown = clean(next, 40), *status_shown = a->status ? clean(a->status, 40) : NULL;
			fprintf(stderr,
				"pgcordon approvals list: only the newest " UTIL_TEXT(APPROVAL_LIST_MAX) " are shown; GET"
				" /api/approvals?limit=" UTIL_TEXT(APPROVAL_LIST_MAX) "&before=%s%s%s lists older ones\n",
				shown, a->status ? "&status=" : "", a->status ? status_shown : "");
			free(shown);
			free(status_shown);
		}
	}
	json_decref(doc);
	free(ans.data);
	return rc;
}

static int cmd_decide(const Args *a)
{
	bool approve = strcmp(a->sub, "approve") == 0;
	char *id = curl_easy_escape(NULL, a->id, 0);
	char *path = xasprintf("/api/approvals/%s/%s", id, a->sub);
	curl_free(id);
	json_t *body = a->reason ? json_pack("{ss}", "reason", a->reason) : json_object();
	Answer ans = {0};
	json_t *doc = NULL;
	int rc = body ? call(a, "POST", path, body, &ans, &doc) : 2;
	if (!body)
		fprintf(stderr, "pgcordon approvals %s: --reason is not valid UTF-8\n", a->sub);
	free(path);
	json_decref(body);
	if (rc == 0) {
		if (a->json) {
			print_raw(&ans);
		} else {
			const char *got = json_string_value(json_object_get(doc, "id"));
			char *shown = clean(got ? got : a->id, 0);
			printf("request %s %s\n", shown, approve ? "approved" : "denied");
			free(shown);
		}
	}
	json_decref(doc);
	free(ans.data);
	return rc;
}

static int cmd_grant_request(const Args *a)
{
	json_t *tables = json_array();
	char *list = xstrdup(a->tables);
	char *save = NULL;
	for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		while (*t == ' ')
			t++;
		size_t n = strlen(t);
		while (n > 0 && t[n - 1] == ' ')
			t[--n] = 0;
		if (n)
			json_array_append_new(tables, json_string(t));
	}
	free(list);
	/* json_pack fails on text that is not UTF-8; so does json_string, leaving a NULL. */
	json_t *body = json_pack("{ss so ss ss ss}", a->user ? "user" : "group", a->user ? a->user : a->group,
				 "tables", tables, "access", a->access ? a->access : "read", "duration", a->duration,
				 "reason", a->reason);
	if (!body || json_array_size(json_object_get(body, "tables")) == 0) {
		fprintf(stderr, "pgcordon grants request: %s\n",
			body ? "--tables names no table" : "the arguments are not valid UTF-8");
		json_decref(body);
		return 2;
	}
	Answer ans;
	json_t *doc;
	int rc = call(a, "POST", "/api/grants", body, &ans, &doc);
	json_decref(body);
	if (rc == 0) {
		const char *id = json_string_value(json_object_get(doc, "id"));
		if (a->json) {
			print_raw(&ans);
		} else if (id) {
			char *shown = clean(id, 0);
			printf("%s\n", shown);
			free(shown);
		} else {
			fprintf(stderr, "pgcordon grants request: the answer has no request id\n");
			rc = 1;
		}
	}
	json_decref(doc);
	free(ans.data);
	return rc;
}

int approvals_main(int argc, char **argv)
{
	if (argc < 3)
		return usage(stderr);
	if (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)
		return usage(stdout);
	Args a;
	if (!parse_args(argc, argv, &a) || !check_args(&a)) {
		fprintf(stderr, "see: pgcordon %s --help\n", argv[1]);
		return 2;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	int rc = strcmp(a.sub, "list") == 0 ? cmd_list(&a) : strcmp(a.sub, "request") == 0 ? cmd_grant_request(&a)
											     : cmd_decide(&a);
	curl_global_cleanup();
	return rc;
}
