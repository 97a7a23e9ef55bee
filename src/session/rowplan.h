/*
 * A row plan: how the results of one statement that masking let run as written are masked
 * in the gateway (mask/rowmask.c). Shared, counted, by the prepared statement, its portals
 * and the pipeline entries whose answers it masks; the mask itself comes from the first
 * RowDescription of the statement.
 */
#ifndef PGC_ROWPLAN_H
#define PGC_ROWPLAN_H

#include <stdbool.h>

#include "core/util.h"
#include "mask/mask.h"

typedef struct RowPlan {
	int refs;
	RowMask *mask;  /* NULL until a RowDescription of the statement was seen */
	int describing; /* Describes of it in the pipeline: the mask may come before rows */
	bool bad;       /* a field cannot be masked here: its rows must not leave */
} RowPlan;

static inline RowPlan *rowplan_new(void)
{
	RowPlan *p = xcalloc(1, sizeof *p);
	p->refs = 1;
	return p;
}

static inline RowPlan *rowplan_ref(RowPlan *p)
{
	if (p)
		p->refs++;
	return p;
}

static inline void rowplan_release(RowPlan *p)
{
	if (p && --p->refs == 0) {
		mask_rowmask_free(p->mask);
		free(p);
	}
}

#endif
