/*
 * pgcordon approvals list|approve|deny and pgcordon grants request|list: clients of the
 * admin HTTP API (docs/approvals.md), with libcurl. --url defaults to
 * http://127.0.0.1:8433, --token to $PGCORDON_TOKEN (sent as a Bearer credential).
 */
#ifndef PGC_APPROVALS_CMD_H
#define PGC_APPROVALS_CMD_H

/*
 * argv[1] is "approvals" or "grants". Returns the process exit code: 0 on success, 1 when
 * the API answered an error (printed to stderr with the HTTP status) or could not be
 * reached, 2 on a usage error.
 */
int approvals_main(int argc, char **argv);

#endif
