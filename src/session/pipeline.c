/* The per-session FIFO of expected backend responses. */
#include "session/pipeline.h"

#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "session/audit_trail.h"
#include "session/rowplan.h"

void pipeline_init(Pipeline *p)
{
	memset(p, 0, sizeof *p);
	p->txn_status = 'I';
}

/* Frees what an entry owns and clears it. */
static void release(Expectation *e)
{
	free(e->refusal);
	free(e->review_sql);
	free(e->review_params);
	audit_stmt_free(e->audit);
	audit_undo_free(e->undo);
	rowplan_release(e->rowplan);
	e->refusal = e->review_sql = e->review_params = NULL;
	e->audit = NULL;
	e->undo = NULL;
	e->rowplan = NULL;
}

void pipeline_free(Pipeline *p)
{
	for (size_t i = 0; i < p->count; i++)
		release(&p->items[(p->head + i) % p->cap]);
	free(p->items);
	p->items = NULL;
	p->cap = p->count = p->head = 0;
}

static bool push(Pipeline *p, ExpKind kind, Expectation **pushed)
{
	if (p->count >= PIPELINE_MAX)
		return false;
	if (p->count == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 8;
		Expectation *items = xmalloc(cap * sizeof *items);
		for (size_t i = 0; i < p->count; i++)
			items[i] = p->items[(p->head + i) % p->cap];
		free(p->items);
		p->items = items;
		p->cap = cap;
		p->head = 0;
	}
	Expectation *e = &p->items[(p->head + p->count) % p->cap];
	memset(e, 0, sizeof *e);
	e->kind = kind;
	e->seq = ++p->next_seq;
	p->count++;
	if (pushed)
		*pushed = e;
	return true;
}

/* Removes entry i (not the front), which owns nothing: a client Sync or a COPY mark. */
static void remove_at(Pipeline *p, size_t i)
{
	for (; i + 1 < p->count; i++)
		*pipeline_at(p, i) = *pipeline_at(p, i + 1);
	p->count--;
}

static void pop(Pipeline *p)
{
	if (p->count == 0) {
		p->unexpected++;
		return;
	}
	Expectation *e = &p->items[p->head];
	if (e->rowplan && (e->kind == EXP_DESCRIBE_STMT || e->kind == EXP_DESCRIBE_PORTAL))
		e->rowplan->describing--;
	release(e);
	p->head = (p->head + 1) % p->cap;
	p->count--;
}

Expectation *pipeline_front_mut(Pipeline *p) { return p->count ? &p->items[p->head] : NULL; }

Expectation *pipeline_at(Pipeline *p, size_t i) { return i < p->count ? &p->items[(p->head + i) % p->cap] : NULL; }

const Expectation *pipeline_front(const Pipeline *p)
{
	return p->count ? &p->items[p->head] : NULL;
}

/*
 * The first n entries get no answer (the server skipped them, or an error ended them): a
 * Parse among them did not replace the statement of its name. Put back last to first, so
 * that each name ends up with the statement it had before the first of them.
 */
static void drop_unanswered(Pipeline *p, size_t n)
{
	for (size_t i = n; i-- > 0;)
		audit_undo_apply(pipeline_at(p, i)->undo);
	while (n--)
		pop(p);
}

void pipeline_drop_skipped(Pipeline *p)
{
	size_t n = 0;
	while (n < p->count && pipeline_at(p, n)->skipped)
		n++;
	drop_unanswered(p, n);
}

static bool on_frontend(Pipeline *p, char type, char describe_kind, Expectation **pushed);

/*
 * After an error the server skips every message up to the next Sync, also those the
 * client sends once the error is out: they get no answer, so their entries are marked
 * skipped (the callers still attach their state) and dropped before the next server
 * message is matched. Left in place they would take the answers of later messages.
 */
bool pipeline_on_frontend(Pipeline *p, char type, char describe_kind, Expectation **pushed)
{
	Expectation *e = NULL;
	bool ok = true;
	if (p->copy_in) {
		/* the relay drops Sync and Flush (pipeline_copy_swallows) and refuses the rest */
		if (type == 'c' || type == 'f')
			p->copy_in = false;
	} else {
		ok = on_frontend(p, type, describe_kind, &e);
		if (e && p->skipping && type != 'S')
			e->skipped = true;
		if (type == 'S')
			p->skipping = false;
	}
	if (pushed)
		*pushed = e && e->kind < EXP_COPY_DATA ? e : NULL;
	return ok;
}

/* A COPY mark for CopyData ('d') or CopyDone/CopyFail, while something is owed an answer. */
static bool push_copy_mark(Pipeline *p, char type, Expectation **pushed)
{
	if (p->count == 0)
		return true; /* nothing pending: no COPY can be starting */
	Expectation *last = pipeline_at(p, p->count - 1);
	if (type == 'd' && last->kind == EXP_COPY_DATA)
		return true; /* one mark stands for a run of data */
	return push(p, type == 'd' ? EXP_COPY_DATA : EXP_COPY_END, pushed);
}

static bool on_frontend(Pipeline *p, char type, char describe_kind, Expectation **pushed)
{
	*pushed = NULL;
	switch (type) {
	case 'Q':
		return push(p, EXP_QUERY, pushed);
	case 'F':
		return push(p, EXP_FUNCTION, pushed);
	case 'P':
		return push(p, EXP_PARSE, pushed);
	case 'B':
		return push(p, EXP_BIND, pushed);
	case 'D':
		return push(p, describe_kind == 'S' ? EXP_DESCRIBE_STMT : EXP_DESCRIBE_PORTAL, pushed);
	case 'E':
		return push(p, EXP_EXECUTE, pushed);
	case 'C':
		return push(p, EXP_CLOSE, pushed);
	case 'S':
		return push(p, EXP_SYNC, pushed);
	case 'd':
	case 'c':
	case 'f':
		return push_copy_mark(p, type, pushed);
	default:
		/* Flush, Terminate, password messages: nothing of their own. */
		return true;
	}
}

static bool front_is(const Pipeline *p, ExpKind kind)
{
	return p->count && p->items[p->head].kind == kind;
}

/* COPY marks at the front stand for nothing still owed. */
static void drop_copy_marks(Pipeline *p)
{
	while (p->count && p->items[p->head].kind >= EXP_COPY_DATA)
		pop(p);
}

/*
 * CopyInResponse to the front entry: the server now reads COPY data, and skips Sync and
 * Flush, until CopyDone or CopyFail. The entries the client sent since are looked at up
 * to its CopyDone/CopyFail (if it sent one already).
 */
static void copy_in_started(Pipeline *p)
{
	bool data = false;
	size_t i = 1;
	while (i < p->count) {
		ExpKind k = pipeline_at(p, i)->kind;
		if (k == EXP_COPY_END) {
			remove_at(p, i);
			return; /* the client already ended it */
		}
		if (k == EXP_COPY_DATA) {
			data = true;
			remove_at(p, i);
		} else if (k == EXP_SYNC && !data) {
			pipeline_at(p, i)->maybe_ignored = true; /* settled when the COPY ends */
			p->copy_maybe = true;
			i++;
		} else {
			/* a Sync after data: ignored, unless an error in the data ended the COPY
			 * first; anything else: an error that ends it. Unknowable here. */
			p->copy_broken = true;
			return;
		}
	}
	p->copy_in = true;
}

/* The COPY at the front read data: the Syncs sent before its data were read inside it. */
void pipeline_copy_data_was_read(Pipeline *p)
{
	for (size_t i = 1; i < p->count;) {
		if (pipeline_at(p, i)->maybe_ignored)
			remove_at(p, i);
		else
			i++;
	}
	p->copy_maybe = false;
}

static void on_backend(Pipeline *p, char type, char status);

void pipeline_on_backend(Pipeline *p, char type, char status)
{
	pipeline_drop_skipped(p);
	drop_copy_marks(p);
	on_backend(p, type, status);
	drop_copy_marks(p);
}

static void on_backend(Pipeline *p, char type, char status)
{
	const Expectation *f = pipeline_front(p);
	switch (type) {
	case 'Z': /* ReadyForQuery ends a Query, a FunctionCall or a Sync */
		p->txn_status = status;
		p->in_error = false;
		p->skipping = false;
		p->copy_in = false;
		p->copy_maybe = false;
		if (f && (f->kind == EXP_QUERY || f->kind == EXP_FUNCTION || f->kind == EXP_SYNC))
			pop(p);
		else
			p->unexpected++;
		return;
	case 'G':
		if (f && (f->kind == EXP_QUERY || f->kind == EXP_EXECUTE))
			copy_in_started(p);
		else
			p->unexpected++;
		return;
	case 'E':
		p->copy_in = false; /* an error ends a COPY: what follows is read as messages again */
		if (p->copy_maybe) {
			/* before or after the server read the Syncs sent ahead of the data? */
			p->copy_broken = true;
			return;
		}
		if (!f) {
			p->unexpected++;
			return;
		}
		if (f->kind == EXP_QUERY || f->kind == EXP_FUNCTION || f->kind == EXP_SYNC)
			return; /* ReadyForQuery still follows */
		/* The server now discards every message up to Sync; so do their expectations. */
		size_t n = 0;
		while (n < p->count && pipeline_at(p, n)->kind != EXP_SYNC)
			n++;
		drop_unanswered(p, n);
		p->in_error = true;
		p->skipping = p->count == 0; /* no Sync sent yet: the next messages are skipped too */
		p->got_param_desc = false;
		return;
	case '1':
		if (front_is(p, EXP_PARSE)) {
			audit_undo_commit(p->items[p->head].undo);
			pop(p);
		}
		else
			p->unexpected++;
		return;
	case '2':
		if (front_is(p, EXP_BIND))
			pop(p);
		else
			p->unexpected++;
		return;
	case '3':
		if (front_is(p, EXP_CLOSE))
			pop(p);
		else
			p->unexpected++;
		return;
	case 't':
		if (front_is(p, EXP_DESCRIBE_STMT))
			p->got_param_desc = true;
		else
			p->unexpected++;
		return;
	case 'T':
	case 'n':
		/* Describe answers with these; inside a Query or Execute a RowDescription is part of the result. */
		if (front_is(p, EXP_DESCRIBE_STMT) || front_is(p, EXP_DESCRIBE_PORTAL)) {
			p->got_param_desc = false;
			pop(p);
		}
		return;
	case 'C':
	case 'I':
	case 's':
		if (p->copy_maybe && type == 'C')
			pipeline_copy_data_was_read(p);
		if (front_is(p, EXP_EXECUTE))
			pop(p);
		return; /* inside a simple Query, one per statement; ReadyForQuery ends it */
	case 'V':
		return; /* FunctionCallResponse; ReadyForQuery follows */
	default:
		/* DataRow, COPY messages, notices, notifications, ParameterStatus: no change. */
		return;
	}
}
