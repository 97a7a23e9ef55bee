/* The audit store's front: picks SQLite or PostgreSQL from the URL and forwards. */
#include "audit/store.h"

#include <stdio.h>
#include <string.h>

AuditStore *store_open(const char *url, bool strict, char *err, size_t errlen)
{
	if (strncmp(url, "sqlite:", 7) == 0)
		return audit__sqlite_open(url + 7, strict, err, errlen);
	if (strncmp(url, "postgresql://", 13) == 0 || strncmp(url, "postgres://", 11) == 0)
		return audit__pg_open(url, strict, err, errlen);
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

bool store_insert(AuditStore *st, const StoredRecord *r, char *err, size_t errlen)
{
	return st->ops->insert(st, r, err, errlen);
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

const char *audit__kind_literal(const char *kind)
{
	static const char *const kinds[] = {"session_start", "statement", "session_end", "login_failed", "prune"};
	for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
		if (strcmp(kind, kinds[i]) == 0)
			return kinds[i];
	return "-";
}
