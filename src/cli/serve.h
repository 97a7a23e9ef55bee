/* The gateway's main loop: listeners, workers, signals (SIGHUP reload, SIGTERM drain). */
#ifndef PGC_SERVE_H
#define PGC_SERVE_H

/* Loads the config and runs until SIGTERM/SIGINT; returns the process exit code. */
int serve_run(const char *config_path);
/* Loads and validates like serve would; returns the exit code. */
int serve_check_config(const char *config_path);

#endif
