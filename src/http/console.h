/*
 * The web console's static files, built into the binary (console_files.S). The console is a
 * page of the admin listener that calls the admin API with the signed-in credential; it has
 * no powers of its own. api.c serves these with a Content-Security-Policy that allows only
 * these files' own script and style, so text from a client (SQL, user names) can never run.
 */
#ifndef PGC_HTTP_CONSOLE_H
#define PGC_HTTP_CONSOLE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
	const char *content_type;
	const char *data;
	size_t len;
} ConsoleFile;

/* The file served at url ("/" is the console's page); false for any other path. */
bool http_console_file(const char *url, ConsoleFile *out);

#endif
