/* Which pgcordon this is: the release and the commit it was built from. */
#ifndef PGC_VERSION_H
#define PGC_VERSION_H

#define PGCORDON_VERSION "0.1.0"

/* The git commit of the build ("abc123def456", "-dirty" when the tree had changes; "unknown"
 * outside a git checkout). Set by the Makefile, for this one object only. */
extern const char pgcordon_commit[];

#endif
