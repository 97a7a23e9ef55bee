/* pgcordon sessions list|replay and pgcordon audit verify|export: reading the trail. */
#ifndef PGC_AUDIT_CMD_H
#define PGC_AUDIT_CMD_H

/* argv[1] is "sessions" or "audit". Returns the process exit code. */
int audit_cmd_main(int argc, char **argv);

#endif
