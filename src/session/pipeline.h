/*
 * The pipeline queue: for every frontend message forwarded upstream, what it will produce
 * back, in order. Backend messages pop it. Later layers (masking plans, audit records,
 * row limits) attach their per-statement state to these entries. Pure data; no I/O.
 * See "Extended Query" and "Pipelining" in the PostgreSQL protocol docs.
 */
#ifndef PGC_PIPELINE_H
#define PGC_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
	EXP_QUERY,       /* simple Query: everything up to ReadyForQuery */
	EXP_FUNCTION,    /* FunctionCall: FunctionCallResponse/Error, then ReadyForQuery */
	EXP_PARSE,       /* ParseComplete */
	EXP_BIND,        /* BindComplete */
	EXP_DESCRIBE_STMT, /* ParameterDescription, then RowDescription or NoData */
	EXP_DESCRIBE_PORTAL, /* RowDescription or NoData */
	EXP_EXECUTE,     /* rows, then CommandComplete / EmptyQuery / PortalSuspended */
	EXP_CLOSE,       /* CloseComplete */
	EXP_SYNC,        /* ReadyForQuery */
	EXP_COPY_DATA,   /* nothing: CopyData sent before the server said it reads COPY data */
	EXP_COPY_END,    /* nothing: CopyDone/CopyFail, likewise (see pipeline_on_backend) */
} ExpKind;

typedef struct {
	ExpKind kind;
	uint64_t seq;          /* statement sequence number in the session */
	bool internal;         /* injected by the gateway: every response is swallowed */
	bool skipped;          /* sent while the server skips to Sync after an error: no answer comes */
	bool maybe_ignored;    /* a Sync sent before a COPY's data: read inside the COPY, unless the
				* COPY fails before reading any (see pipeline_on_backend) */
	bool catalog;          /* internal: the masking catalog query (its rows are read) */
	bool estimate;         /* internal: EXPLAIN for estimated_rows_over (its rows are read) */
	char release_ready;    /* internal: its ReadyForQuery releases the client's, with this status */
	int64_t sent_us;       /* a client's Query or Execute: when it went upstream (util_now_us), 0: not timed */
	int64_t max_rows;      /* row limit for the result, 0: none */
	int64_t review_rows;   /* returned_rows_over: past this the result is cut off, 0: none */
	char *review_sql;      /* ... and the statement and parameters a request to run it again names */
	char *review_params;
	char *refusal;         /* the gateway refused it: the upstream error is replaced by this */
	const char *refusal_sqlstate;
	struct AuditStmt *audit; /* the statement's audit record in the making (owned) */
	struct AuditUndo *undo;  /* a Parse: the audit's earlier statement of the name, put back if it fails (owned) */
	struct RowPlan *rowplan; /* its rows are masked in the gateway (a reference) */
} Expectation;

typedef struct {
	Expectation *items;
	size_t cap;
	size_t head;
	size_t count;
	uint64_t next_seq;
	bool in_error;        /* extended protocol: the server skips to Sync after an error */
	bool skipping;        /* ... and no Sync has been sent since: what comes now is skipped */
	bool got_param_desc;  /* inside a statement Describe */
	bool copy_in;         /* the server reads COPY data (CopyInResponse): Sync and Flush are not for it */
	bool copy_broken;     /* the client sent what the server would read as a broken COPY: end the session */
	bool copy_maybe;      /* Syncs marked maybe_ignored wait for the COPY's end */
	char txn_status;      /* last ReadyForQuery status: 'I', 'T' or 'E' */
	uint64_t unexpected;  /* backend messages that matched nothing (a bug if ever non-zero) */
} Pipeline;

#define PIPELINE_MAX 1000000 /* entries; a client that pipelines more without reading is refused */

void pipeline_init(Pipeline *p);
void pipeline_free(Pipeline *p);
/*
 * Records what a frontend message of this type will produce. describe_kind is 'S' or 'P'.
 * *pushed (if not NULL) gets the new entry, or NULL for messages that produce nothing.
 * Returns false when the queue is full.
 */
bool pipeline_on_frontend(Pipeline *p, char type, char describe_kind, Expectation **pushed)
	__attribute__((warn_unused_result));
/*
 * While the server reads COPY data it ignores Sync and Flush (libpq sends a Sync right
 * after the Execute of a COPY FROM STDIN): true for the messages the relay must then drop
 * instead of forwarding, so that none of them is owed an answer.
 */
static inline bool pipeline_copy_swallows(const Pipeline *p, char type)
{
	return p->copy_in && (type == 'S' || type == 'H');
}
/* A message the server would read as a broken COPY (anything but COPY data, Sync, Flush, Terminate). */
static inline bool pipeline_copy_refuses(const Pipeline *p, char type)
{
	return p->copy_in && type != 'd' && type != 'c' && type != 'f' && type != 'S' && type != 'H' && type != 'X';
}
/*
 * Updates the queue for a backend message; status is the ReadyForQuery byte. On a
 * CopyInResponse, Syncs the client sent before any COPY data are marked maybe_ignored: the
 * server reads them inside the COPY, unless the COPY fails before reading anything (COPY
 * FREEZE's checks and BEFORE STATEMENT triggers run after the CopyInResponse). When the
 * COPY completes they leave the queue; when it fails, nobody can tell, and copy_broken is
 * set. A Sync after COPY data, or another message before CopyDone/CopyFail, sets it too.
 */
void pipeline_on_backend(Pipeline *p, char type, char status);
/* The COPY at the front failed over its data (the error says so): it read what came before. */
void pipeline_copy_data_was_read(Pipeline *p);
/* Nothing owed, and the server reads the next message (it does not skip to a Sync). */
static inline bool pipeline_idle(const Pipeline *p) { return p->count == 0 && !p->skipping; }
const Expectation *pipeline_front(const Pipeline *p);
/* Drops the entries the server skipped (they get no answer); before reading its next message. */
void pipeline_drop_skipped(Pipeline *p);
Expectation *pipeline_front_mut(Pipeline *p);
/* The i-th entry from the front (0 is the front), or NULL. */
Expectation *pipeline_at(Pipeline *p, size_t i);

#endif
