/* The audit store's front: picks SQLite or PostgreSQL from the URL and forwards. */
#include "audit/store.h"

#include <stdio.h>
#include <string.h>

AuditStore *store_open(const char *url, bool strict, int timeout_ms, char *err, size_t errlen)
{
	if (strncmp(url, "sqlite:", 7) == 0)
		return audit__sqlite_open(url + 7, strict, err, errlen);
	if (strncmp(url, "postgresql://", 13) == 0 || strncmp(url, "postgres://", 11) == 0)
		return audit__pg_open(url, strict, timeout_ms, err, errlen);
	snprintf(err, errlen, "audit store \"%s\" is neither sqlite:PATH nor postgresql://...", url);
	return NULL;
}

void store_close(AuditStore *st)
{
	if (st)
		st->ops->close(st);
}

bool store_begin(AuditStore *st, char *err, size_t errlen) { return st->ops->exec(st, "BEGIN", err, errlen); }
bool store_commit(AuditStore *st, char *err, size_t errlen) { return st->ops->exec(st, "COMMIT", err, errlen); }

void store_rollback(AuditStore *st)
{
	char err[200];
	(void)st->ops->exec(st, "ROLLBACK", err, sizeof err);
}

bool store_commit_in_doubt(AuditStore *st) { return st->ops->in_doubt && st->ops->in_doubt(st); }

bool store_settle(AuditStore *st, const char *node, int64_t *seq, char tag[AUDIT_TAG_HEX], char *err, size_t errlen)
{
	return st->ops->settle ? st->ops->settle(st, node, seq, tag, err, errlen)
			       : st->ops->head(st, node, NULL, seq, tag, err, errlen);
}

bool store_append(AuditStore *st, const StoredRecord *r, size_t n, char *err, size_t errlen)
{
	return n == 0 || st->ops->append(st, r, n, err, errlen);
}

bool store_upgrade(AuditStore *st, char *err, size_t errlen)
{
	return !st->ops->upgrade || st->ops->upgrade(st, err, errlen);
}

bool store_head(AuditStore *st, const char *node, int64_t *seq, char tag[AUDIT_TAG_HEX], char *err, size_t errlen)
{
	return st->ops->head(st, node, NULL, seq, tag, err, errlen);
}

bool store_last_before(AuditStore *st, const char *node, const char *time, int64_t *seq, char tag[AUDIT_TAG_HEX],
		       char *err, size_t errlen)
{
	return st->ops->head(st, node, time, seq, tag, err, errlen);
}

bool store_delete_through(AuditStore *st, const char *node, int64_t seq, char *err, size_t errlen)
{
	return st->ops->delete_through(st, node, seq, err, errlen);
}

bool store_scan(AuditStore *st, const StoreFilter *f, StoreVisit cb, void *arg, char *err, size_t errlen)
{
	return st->ops->scan(st, f, cb, arg, err, errlen);
}

bool store_nodes(AuditStore *st, StoreVisit cb, void *arg, char *err, size_t errlen)
{
	return st->ops->nodes(st, cb, arg, err, errlen);
}

int store_check_index(AuditStore *st, const char *node, char *problem, size_t plen, char *err, size_t errlen)
{
	return st->ops->check_index ? st->ops->check_index(st, node, problem, plen, err, errlen) : 1;
}

const char *audit__kind_literal(const char *kind)
{
	static const char *const kinds[] = {"session_start", "statement", "session_end", "login_failed", "prune", "approval",
					    "events_dropped", "store_rewound"};
	for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
		if (strcmp(kind, kinds[i]) == 0)
			return kinds[i];
	return "-";
}

int audit__scan_sql(const StoreFilter *f, char prefix, char *sql, size_t len, const char **binds)
{
	int nb = 0;
	size_t n = (size_t)snprintf(sql, len, "SELECT node, seq, time, kind, session_id, user_name, database, body,"
					      " prev_tag, tag FROM audit_records WHERE seq >= %lld", (long long)f->from_seq);
	const struct {
		const char *condition;
		const char *value;
	} wheres[] = {{"node =", f->node},         {"session_id =", f->session_id}, {"user_name =", f->user_name},
		      {"database =", f->database}, {"time >=", f->since}};
	for (size_t i = 0; i < sizeof wheres / sizeof *wheres; i++) {
		if (!wheres[i].value)
			continue;
		n += (size_t)snprintf(sql + n, len - n, " AND %s %c%d", wheres[i].condition, prefix, nb + 1);
		binds[nb++] = wheres[i].value;
	}
	if (f->kind) /* a literal, so the partial index on session starts applies (kinds are ours, never input) */
		n += (size_t)snprintf(sql + n, len - n, " AND kind = '%s'", audit__kind_literal(f->kind));
	n += (size_t)snprintf(sql + n, len - n, f->newest_first ? " ORDER BY time DESC, node, seq DESC" : " ORDER BY node, seq");
	if (f->limit > 0)
		snprintf(sql + n, len - n, " LIMIT %lld", (long long)f->limit);
	return nb;
}
