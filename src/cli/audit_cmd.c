/* pgcordon sessions list|replay and pgcordon audit verify|export: reading the trail. */
#include "cli/audit_cmd.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit/report.h"
#include "config/config.h"
#include "core/util.h"

typedef struct {
	const char *config, *user, *database, *since, *limit, *key, *head, *node, *id;
	bool json;
} Args;

static int usage(void)
{
	fprintf(stderr, "usage:\n"
			"  pgcordon sessions list --config FILE [--user U] [--database D] [--since T] [--limit N] [--json]\n"
			"  pgcordon sessions replay ID --config FILE\n"
			"  pgcordon audit verify --config FILE [--key FILE] [--head FILE] [--node NAME]\n"
			"  pgcordon audit export --config FILE [--since T]\n"
			"T is an ISO date or time (2026-11-01, 2026-11-01T08:00:00Z) or a period back from now (30m, 12h, 7d).\n");
	return 2;
}

static bool parse_args(int argc, char **argv, Args *a)
{
	memset(a, 0, sizeof *a);
	for (int i = 3; i < argc; i++) {
		const char *o = argv[i];
		if (strcmp(o, "--json") == 0) {
			a->json = true;
			continue;
		}
		if (o[0] != '-') {
			if (a->id)
				return false;
			a->id = o;
			continue;
		}
		if (i + 1 >= argc)
			return false;
		const char **slot = strcmp(o, "--config") == 0 ? &a->config : strcmp(o, "--user") == 0 ? &a->user
				  : strcmp(o, "--database") == 0 ? &a->database : strcmp(o, "--since") == 0 ? &a->since
				  : strcmp(o, "--limit") == 0 ? &a->limit : strcmp(o, "--key") == 0 ? &a->key
				  : strcmp(o, "--head") == 0 ? &a->head : strcmp(o, "--node") == 0 ? &a->node : NULL;
		if (!slot) {
			fprintf(stderr, "pgcordon: unknown option %s\n", o);
			return false;
		}
		*slot = argv[++i];
	}
	return a->config != NULL;
}

/* The config's store, opened for reading. */
static AuditStore *open_store(const Args *a, Config **out)
{
	char err[512];
	Config *c = config_load_without_secrets(a->config, err, sizeof err);
	if (!c) {
		fprintf(stderr, "%s\n", err);
		return NULL;
	}
	if (!c->audit_store) {
		fprintf(stderr, "%s: no audit.store is configured: nothing was recorded\n", a->config);
		config_release(c);
		return NULL;
	}
	AuditStore *st = store_open(c->audit_store, false, 0, err, sizeof err);
	if (!st) {
		fprintf(stderr, "%s\n", err);
		config_release(c);
		return NULL;
	}
	*out = c;
	return st;
}

static const char *s_or(json_t *o, const char *key, const char *dflt)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s && *s ? s : dflt;
}

static int sessions_list(const Args *a, AuditStore *st)
{
	char since[AUDIT_TIME_LEN], err[512];
	if (a->since && !audit_parse_since(a->since, since)) {
		fprintf(stderr, "pgcordon: --since %s is neither a date/time nor a period like 30m, 12h, 7d\n", a->since);
		return 2;
	}
	SessionQuery q = {.user = a->user, .database = a->database, .since = a->since ? since : NULL,
			  .limit = a->limit ? atol(a->limit) : 100};
	json_t *list = audit_list_sessions(st, &q, err, sizeof err);
	if (!list) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if (a->json) {
		char *text = json_dumps(list, JSON_INDENT(2));
		printf("%s\n", text);
		free(text);
	} else {
		printf("%-16s  %-27s  %-27s  %-16s  %-12s  %-21s  %5s  %s\n", "SESSION", "START", "END", "USER", "DATABASE",
		       "CLIENT", "STMTS", "END REASON");
		size_t i;
		json_t *s;
		json_array_foreach(list, i, s) {
			printf("%-16s  %-27s  %-27s  %-16s  %-12s  %-21s  %5lld  %s\n", s_or(s, "session_id", "?"),
			       s_or(s, "start", "-"), s_or(s, "end", "-"), s_or(s, "user", "-"), s_or(s, "database", "-"),
			       s_or(s, "client_address", "-"), (long long)json_integer_value(json_object_get(s, "statements")),
			       s_or(s, "end_reason", "-"));
		}
	}
	json_decref(list);
	return 0;
}

/* One JSON line; a record that cannot be written is named on stderr and fails the export. */
static bool export_one(const StoredRecord *r, void *arg)
{
	bool *failed = arg;
	json_t *j = audit_record_json(r);
	char *text = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
	json_decref(j);
	if (!text) {
		fprintf(stderr, "audit export: record seq=%lld cannot be written as JSON\n", (long long)r->seq);
		*failed = true;
		return true;
	}
	bool ok = printf("%s\n", text) > 0;
	free(text);
	if (!ok) {
		fprintf(stderr, "audit export: cannot write to standard output\n");
		*failed = true;
	}
	return ok;
}

/* Whether nodes (a JSON array of names) has name. */
static bool has_node(json_t *nodes, const char *name)
{
	size_t i;
	json_t *n;
	json_array_foreach(nodes, i, n)
		if (strcmp(json_string_value(n), name) == 0)
			return true;
	return false;
}

static int verify(const Args *a, const Config *c, AuditStore *st)
{
	char err[512];
	uint8_t key[AUDIT_KEY_LEN];
	bool created;
	const char *keyfile = a->key ? a->key : c->audit_key_file;
	if (!chain_load_key(keyfile, false, key, &created, err, sizeof err)) {
		fprintf(stderr, "%s\n", err);
		return 2;
	}
	/*
	 * The gateway's head file: the last record it committed, to find records cut off the end.
	 * Next to the key verify uses (a copy given with --key has its own, or none).
	 */
	char *head_path = a->head ? xstrdup(a->head) : keyfile ? head_file_path(keyfile) : NULL;
	HeadFile head;
	int has_head = head_path ? head_file_read(head_path, &head, err, sizeof err) : 0;
	if (has_head < 0 || (a->head && has_head == 0)) {
		fprintf(stderr, "%s\n", has_head < 0 ? err : "audit verify: --head: no such file");
		free(head_path);
		return 2;
	}
	json_t *nodes = a->node ? json_pack("[s]", a->node) : audit_nodes(st, err, sizeof err);
	if (!nodes) {
		fprintf(stderr, "%s\n", err);
		free(head_path);
		return 2;
	}
	/* The rungs next to that key spare the walk from key(1) to a pruned chain's first record. */
	KeyRungs keys;
	rungs_init(&keys, key);
	OPENSSL_cleanse(key, sizeof key);
	char *rp = keyfile ? rungs_path(keyfile) : NULL;
	if (rp && rungs_load(&keys, rp, err, sizeof err) < 0)
		fprintf(stderr, "note: %s; the keys past its last good line are derived from the key file\n", err);
	free(rp);
	/* A node the head file names has records, whether the store still shows them or not. */
	if (has_head == 1 && !a->node && !has_node(nodes, head.node))
		json_array_append_new(nodes, json_string(head.node));
	if (json_array_size(nodes) == 0)
		printf("ok: the trail is empty\n");
	int rc = 0;
	bool head_used = false;
	size_t i;
	json_t *n;
	json_array_foreach(nodes, i, n) {
		VerifyResult v;
		const char *node = json_string_value(n);
		const HeadFile *h = has_head == 1 && strcmp(head.node, node) == 0 ? &head : NULL;
		int r = audit_verify(st, &keys, node, h, &v, err, sizeof err);
		if (r < 0) {
			fprintf(stderr, "%s\n", err);
			rc = 2;
		} else if (r == 0) {
			printf("FAILED: node %s: %s\n", node, v.problem);
			rc = rc ? rc : 1;
		} else if (v.records == 0) {
			printf("ok: node %s: no records\n", node);
		} else {
			printf("ok: node %s: %lld records, seq %lld..%lld, head tag %s\n", node, v.records, v.first_seq,
			       v.last_seq, v.head_tag);
			if (h) {
				printf("ok: node %s: the store holds the last record the gateway's head file names (seq %lld, %s)\n",
				       node, (long long)h->seq, head_path);
				head_used = true;
			}
			if (v.dropped)
				printf("note: node %s: %lld events were dropped unrecorded while its store lagged"
				       " (see its events_dropped records)\n", node, v.dropped);
			if (v.counted)
				printf("note: node %s: %lld refusals and failed logins were counted, not recorded one by one,"
				       " while its store failed (see its events_dropped records)\n", node, v.counted);
		}
	}
	if (rc == 0 && json_array_size(nodes) && !head_used)
		printf("Compare the head with the last audit_head line the gateway logged: records cut off the end"
		       " are only visible that way.\n");
	json_decref(nodes);
	rungs_free(&keys);
	free(head_path);
	return rc;
}

int audit_cmd_main(int argc, char **argv)
{
	Args a;
	if (argc < 3 || !parse_args(argc, argv, &a))
		return usage();
	const char *group = argv[1], *sub = argv[2];
	bool known = (strcmp(group, "sessions") == 0 && (strcmp(sub, "list") == 0 || strcmp(sub, "replay") == 0)) ||
		     (strcmp(group, "audit") == 0 && (strcmp(sub, "verify") == 0 || strcmp(sub, "export") == 0));
	if (!known || (strcmp(sub, "replay") == 0) != (a.id != NULL))
		return usage();
	Config *c = NULL;
	AuditStore *st = open_store(&a, &c);
	if (!st)
		return 2;
	int rc = 0;
	char err[512];
	if (strcmp(sub, "list") == 0) {
		rc = sessions_list(&a, st);
	} else if (strcmp(sub, "replay") == 0) {
		char *text = audit_replay_text(st, a.id, err, sizeof err);
		if (text)
			fputs(text, stdout);
		else
			fprintf(stderr, "%s\n", err);
		rc = text ? 0 : 1;
		free(text);
	} else if (strcmp(sub, "verify") == 0) {
		rc = verify(&a, c, st);
	} else {
		char since[AUDIT_TIME_LEN];
		if (a.since && !audit_parse_since(a.since, since)) {
			fprintf(stderr, "pgcordon: --since %s is neither a date/time nor a period like 30m, 12h, 7d\n", a.since);
			rc = 2;
		} else {
			StoreFilter f = {.since = a.since ? since : NULL};
			bool failed = false;
			if (!store_scan(st, &f, export_one, &failed, err, sizeof err)) {
				fprintf(stderr, "%s\n", err);
				rc = 1;
			}
			if (failed || fflush(stdout) != 0)
				rc = 1;
		}
	}
	store_close(st);
	config_release(c);
	return rc;
}
