/*
 * Client sessions: the state machine from the first byte a client sends (SSLRequest,
 * startup, SCRAM authentication) through the upstream login to the relay of every
 * message in both directions, and the shutdown of sessions on SIGTERM.
 * The session layer plugs into the workers through session_worker_hooks.
 */
#ifndef PGC_SESSION_H
#define PGC_SESSION_H

#include <stdbool.h>

#include "net/worker.h"

extern const WorkerHooks session_worker_hooks;

/* Starts a graceful shutdown: finish in-flight statements, close idle sessions. */
void session_begin_shutdown(void);
int session_active_count(void);

#endif
