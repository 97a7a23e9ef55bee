/*
 * The audit store: chained records, appended a commit batch at a time, in SQLite (WAL; one
 * row per batch, see store_sqlite.c) or in a PostgreSQL database of its own (one row per
 * record). One AuditStore is one connection; use it from one thread at a time. Errors come
 * back in err; nothing here logs.
 */
#ifndef PGC_AUDIT_STORE_H
#define PGC_AUDIT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUDIT_TAG_HEX 65 /* 64 hex digits and a NUL */

typedef struct {
	const char *node;
	int64_t seq;
	const char *time;       /* ISO 8601 UTC with microseconds: sorts as text */
	const char *kind;       /* session_start, statement, session_end, login_failed, prune, ... */
	const char *session_id; /* "" when none */
	const char *user_name;  /* "" when none; a copy of the body's, for filtering */
	const char *database;   /* "" when none; likewise */
	const char *body;       /* the record as JSON text, exactly as hashed */
	size_t body_len;        /* strlen(body) when known, else 0 */
	const char *prev_tag;
	const char *tag;
} StoredRecord;

typedef struct {
	const char *node;       /* NULL: every node */
	const char *kind;       /* NULL: every kind */
	const char *session_id; /* NULL: every session */
	const char *user_name;
	const char *database;
	const char *since;      /* time >= since */
	int64_t from_seq;       /* seq >= from_seq */
	int64_t limit;          /* 0: no limit */
	bool newest_first;
} StoreFilter;

typedef struct AuditStore AuditStore;

/*
 * url: "sqlite:PATH" or "postgresql://..."; strict: every commit reaches the disk.
 * timeout_ms: how long a PostgreSQL store's connection may stay silent while a call waits
 * for its answer before the call fails and the connection is dropped (0: no limit, for the
 * CLI's readers, whose operator can interrupt them). A SQLite call cannot be cut short; the
 * writer watches for one that hangs instead (audit_store_healthy).
 */
AuditStore *store_open(const char *url, bool strict, int timeout_ms, char *err, size_t errlen)
	__attribute__((warn_unused_result));
void store_close(AuditStore *st);

bool store_begin(AuditStore *st, char *err, size_t errlen) __attribute__((warn_unused_result));
bool store_commit(AuditStore *st, char *err, size_t errlen) __attribute__((warn_unused_result));
void store_rollback(AuditStore *st);
/*
 * After store_commit failed: true when the COMMIT may have been carried out all the same (it
 * was sent and never answered, as when the connection is given up or lost). Until
 * store_settle succeeds, nothing else may be written.
 */
bool store_commit_in_doubt(AuditStore *st);
/*
 * Once the transaction in doubt has ended on the server: node's last record, as
 * store_head. False while it may still commit, or while the store cannot be asked.
 */
bool store_settle(AuditStore *st, const char *node, int64_t *seq, char tag[AUDIT_TAG_HEX], char *err, size_t errlen)
	__attribute__((warn_unused_result));
/* Appends n records, consecutive in seq, inside the open transaction. */
bool store_append(AuditStore *st, const StoredRecord *r, size_t n, char *err, size_t errlen)
	__attribute__((warn_unused_result));
/*
 * Brings a store made by an earlier version to the current layout (the writer calls it
 * before anything else; readers read either layout). Tags do not depend on the layout, so
 * the chain carries over unchanged.
 */
bool store_upgrade(AuditStore *st, char *err, size_t errlen) __attribute__((warn_unused_result));

/* The last record of node: *seq 0 and tag "" when there is none. */
bool store_head(AuditStore *st, const char *node, int64_t *seq, char tag[AUDIT_TAG_HEX], char *err, size_t errlen)
	__attribute__((warn_unused_result));
/*
 * The last record of node older than time (*seq 0 when none): a point store_delete_through
 * can cut at (in SQLite, the end of a batch).
 */
bool store_last_before(AuditStore *st, const char *node, const char *time, int64_t *seq, char tag[AUDIT_TAG_HEX],
		       char *err, size_t errlen) __attribute__((warn_unused_result));
/* Deletes node's records up to and including seq (a point given by store_last_before). */
bool store_delete_through(AuditStore *st, const char *node, int64_t seq, char *err, size_t errlen)
	__attribute__((warn_unused_result));

/* Calls cb for each matching record, by seq (node, then seq); cb returns false to stop. */
typedef bool (*StoreVisit)(const StoredRecord *r, void *arg);
bool store_scan(AuditStore *st, const StoreFilter *f, StoreVisit cb, void *arg, char *err, size_t errlen)
	__attribute__((warn_unused_result));
/* Visits each node with records once, by name; only r->node is set. Reads no record. */
bool store_nodes(AuditStore *st, StoreVisit cb, void *arg, char *err, size_t errlen)
	__attribute__((warn_unused_result));

/*
 * What the readers find node's records by, where it is not itself chained (SQLite's batch
 * columns and session tables), against those records, which audit_verify has checked: 1
 * when it agrees, 0 when not (problem names what), -1 on error.
 */
int store_check_index(AuditStore *st, const char *node, char *problem, size_t plen, char *err, size_t errlen)
	__attribute__((warn_unused_result));

/* ---- the two implementations, behind store_open ---- */
typedef struct {
	void (*close)(AuditStore *st);
	bool (*exec)(AuditStore *st, const char *sql, char *err, size_t errlen);
	bool (*append)(AuditStore *st, const StoredRecord *r, size_t n, char *err, size_t errlen);
	bool (*upgrade)(AuditStore *st, char *err, size_t errlen); /* NULL: nothing to do */
	/* NULL: a failed COMMIT is never in doubt (SQLite runs in the process) */
	bool (*in_doubt)(AuditStore *st);
	bool (*settle)(AuditStore *st, const char *node, int64_t *seq, char *tag, char *err, size_t errlen);
	bool (*head)(AuditStore *st, const char *node, const char *before, int64_t *seq, char *tag, char *err,
		     size_t errlen);
	bool (*delete_through)(AuditStore *st, const char *node, int64_t seq, char *err, size_t errlen);
	bool (*scan)(AuditStore *st, const StoreFilter *f, StoreVisit cb, void *arg, char *err, size_t errlen);
	bool (*nodes)(AuditStore *st, StoreVisit cb, void *arg, char *err, size_t errlen);
	/* NULL: the readers go by chained fields only */
	int (*check_index)(AuditStore *st, const char *node, char *problem, size_t plen, char *err, size_t errlen);
} StoreOps;

struct AuditStore {
	const StoreOps *ops;
	void *db;
};

/* kind if it is one of the record kinds (safe to put in SQL as a literal), else "-". */
const char *audit__kind_literal(const char *kind);
#define STORE_SCAN_BINDS 8
/*
 * The SELECT of store_scan for f, with placeholders written as prefix and a number ('?' for
 * SQLite, '$' for PostgreSQL). The values to bind go to binds, in order; returns how many.
 */
int audit__scan_sql(const StoreFilter *f, char prefix, char *sql, size_t len, const char **binds);
AuditStore *audit__sqlite_open(const char *path, bool strict, char *err, size_t errlen);
AuditStore *audit__pg_open(const char *url, bool strict, int timeout_ms, char *err, size_t errlen);

#endif
