/*
 * What a session tells the audit trail: its start and end, failed logins, and one record
 * per statement (per part of a multi-statement Query) with its SQL, parameters, decision,
 * result head and outcome. Session-layer internals; the trail itself is audit/audit.h.
 */
#ifndef PGC_AUDIT_TRAIL_H
#define PGC_AUDIT_TRAIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy/policy.h"

typedef struct Session Session;
typedef struct AuditStmt AuditStmt;

/*
 * Strict durability holds a statement's answer until its record is committed; not this
 * one's: a refusal because the store cannot be written must not wait for that store.
 */
void audit_stmt_no_wait(AuditStmt *a);
void audit_stmt_free(AuditStmt *a);

void session__audit_session_start(Session *s, const char *application_name);
void session__audit_session_end(Session *s, const char *reason);
void session__audit_login_failed(Session *s, const char *method, const char *why);
void session__audit_free(Session *s);

/* A decision as recorded: d NULL means allowed without a rule being consulted. */
AuditStmt *session__audit_stmt(Session *s, const char *sql, const Decision *d);
typedef struct AuditUndo AuditUndo;
/*
 * Extended protocol: remembers a statement's text, a portal's statement and parameters.
 * A Parse of a named statement returns what to put back should the server reject it
 * (it then keeps the statement it had: 42P05 for a name in use, or any error), NULL when
 * there is nothing to put back. The pipeline entry of the Parse owns it.
 */
AuditUndo *session__audit_parse(Session *s, const char *name, const char *sql);
void audit_undo_apply(AuditUndo *u);
/* Its ParseComplete came: the name now certainly has that statement upstream. */
void audit_undo_commit(AuditUndo *u);
void audit_undo_free(AuditUndo *u);
/* Returns the record of a refused Bind (NULL when allowed: the Execute gets the record). */
AuditStmt *session__audit_bind(Session *s, const uint8_t *body, size_t len, const Decision *d);
AuditStmt *session__audit_execute(Session *s, const char *portal);
/* A Close of a prepared statement: Binds of the name bind an unknown statement until a Parse. */
void session__audit_close(Session *s, const char *name);
/*
 * Whether the parameters of statement sql (NULL: unknown) are recorded redacted: a masking
 * identity's statement that names a masked relation. Approval requests show them the same way.
 */
bool session__params_redacted(const Session *s, const char *sql);

typedef enum { AUDIT_PASS, AUDIT_HOLD } AuditOutcome;
/*
 * An upstream message answering the statement a (body NULL unless whole): captures result
 * rows, and at the message ending it submits the record. Returns AUDIT_HOLD (strict durability) when the
 * message must wait until audit_durable(queue) reaches *ticket.
 */
AuditOutcome session__audit_on_server(Session *s, AuditStmt *a, bool whole, char type, const uint8_t *body,
				      size_t len, uint64_t *ticket);
/* A RowDescription answering a Describe: the columns of the Execute that follows. */
void session__audit_described(Session *s, const uint8_t *body, size_t len);
/* A statement the gateway cut off (max_rows) has ended: its record (s->cut_audit, if any)
 * goes with the error the client got, and with tag if it ran to its end. next_part: where
 * the record goes on for the Query's later statements (if it is empty), or NULL. */
void session__audit_cut_off(Session *s, const char *tag, AuditStmt **next_part);
/* Messages the audit needs whole (bounded); others stream past it. */
bool session__audit_wants(const AuditStmt *a, char type, uint32_t len);

#endif
