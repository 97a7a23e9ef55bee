/* pgcordon demo: a throwaway PostgreSQL with sample data and the gateway in front of it. */
#ifndef PGC_DEMO_H
#define PGC_DEMO_H

int demo_run(const char *self, int port);

#endif
