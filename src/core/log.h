/* Structured logging: one line per event, key=value, to stderr. */
#ifndef PGC_LOG_H
#define PGC_LOG_H

#include <stdbool.h>

typedef enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR } LogLevel;

void log_set_level(LogLevel level);
bool log_parse_level(const char *name, LogLevel *out);
bool log_enabled(LogLevel level);

/*
 * Writes "ts=... level=... event=EVENT <fmt...>" as one line. The caller formats the
 * remaining key=value pairs; values that may contain spaces must go through log_quote.
 * Never pass passwords, tokens or row data.
 */
void log_event(LogLevel level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Quotes a value for a key=value line into buf (truncating); returns buf. */
const char *log_quote(char *buf, int size, const char *value);

#endif
