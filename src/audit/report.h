/*
 * Reading the audit trail back: session lists, one session's statements, a readable
 * replay, and the chain verification. Used by the CLI and the HTTP API; returns data
 * (JSON or text the caller frees), never prints.
 */
#ifndef PGC_AUDIT_REPORT_H
#define PGC_AUDIT_REPORT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "audit/audit.h"
#include "audit/chain.h"
#include "audit/head_file.h"
#include "audit/rungs.h"
#include "audit/store.h"

typedef struct {
	const char *user;
	const char *database;
	const char *since; /* store time text */
	long limit;        /* 0: 100 */
} SessionQuery;

/* "30m", "2h", "7d" (that long ago) or an ISO date/time; false when it is neither. */
bool audit_parse_since(const char *arg, char out[AUDIT_TIME_LEN]);

/* A JSON array of sessions, newest first; NULL with err on a store error. */
json_t *audit_list_sessions(AuditStore *st, const SessionQuery *q, char *err, size_t errlen);
/* {"session": {...}, "statements": [...]}; a JSON null when there is no such session. */
json_t *audit_session_detail(AuditStore *st, const char *session_id, char *err, size_t errlen);
/* The session as a transcript, statement by statement with psql-like result tables. */
char *audit_replay_text(AuditStore *st, const char *session_id, char *err, size_t errlen);

/* One record as an export object: {node, seq, time, kind, ..., record: body, tag}. */
json_t *audit_record_json(const StoredRecord *r);

typedef struct {
	long long records;
	long long first_seq, last_seq;
	char head_tag[AUDIT_TAG_HEX];
	long long dropped; /* events the gateway dropped unrecorded, as its events_dropped records say */
	long long counted; /* refusals and failed logins it counted instead of recording, likewise */
	char problem[400]; /* the first bad record, when any */
} VerifyResult;

/*
 * Walks node's chain, its keys from keys (rungs_init with key(1), and what rungs_load
 * found); then its end against head (the gateway's head file, NULL when none),
 * the records a store_rewound record says were lost, and what the readers find its records
 * by (store_check_index). Returns 1 when all hold, 0 when not (see problem), -1 on error.
 */
int audit_verify(AuditStore *st, const KeyRungs *keys, const char *node, const HeadFile *head,
		 VerifyResult *out, char *err, size_t errlen);
/* The nodes that have records in the store (JSON array of strings). */
json_t *audit_nodes(AuditStore *st, char *err, size_t errlen);

#endif
