/* The commit string lives in its own object, so that a new commit rebuilds only this file. */
#include "core/version.h"

#ifndef PGCORDON_COMMIT
#define PGCORDON_COMMIT "unknown"
#endif

const char pgcordon_commit[] = PGCORDON_COMMIT;
