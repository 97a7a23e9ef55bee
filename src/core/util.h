/* Small helpers: allocation that aborts on exhaustion, files, base64, randomness, wiping. */
#ifndef PGC_UTIL_H
#define PGC_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
/* printf into a new string. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Reads a whole file of at most max bytes as a NUL-terminated string; NULL + err on failure. */
char *util_read_file(const char *path, size_t max, char *err, size_t errlen);

/* Overwrites a secret string before freeing it. */
void util_wipe_free(char *s);

/*
 * URLs and addresses that may carry a token, a key set or audit data. util_url_private:
 * https://, or http:// to this host, named as dotted 127.x.x.x, localhost or [::1] with no
 * userinfo (stricter than curl, which also sends "127.1" or "localhost." here; so
 * "http://127.0.0.1.example/" and "http://127.0.0.1@example/" are refused).
 */
bool util_url_private(const char *url);
/* address is a loopback IP address: IPv4 in 127.0.0.0/8, or IPv6 ::1 (or ::ffff:127.x.y.z). */
bool util_loopback_ip(const char *address);
struct sockaddr;
/* The same for a socket's address (an IPv4 or IPv6 one; false for others). */
bool util_loopback_sockaddr(const struct sockaddr *addr);
/* A socket's IP address as text in host (at least 46 bytes), and its port; -1 (host "?") if not IP. */
int util_sockaddr_host(const struct sockaddr *addr, char *host, size_t hostlen);
/* Both NULL, or equal strings. */
bool util_str_same(const char *a, const char *b);

/* A macro's value as a string literal: UTIL_TEXT(8432) is "8432". */
#define UTIL_TEXT_(x) #x
#define UTIL_TEXT(x) UTIL_TEXT_(x)

int util_cpu_count(void);

/*
 * pthread_create with a stack of stack_size bytes, whatever ulimit -s says; detached if
 * asked. 0, or the error number.
 */
int util_thread_start(pthread_t *thread, size_t stack_size, bool detached, void *(*fn)(void *), void *arg);

/* Cryptographically strong random bytes (OpenSSL); aborts if the RNG fails. */
void util_random(void *buf, size_t n);

/* Lower-case hex of n bytes into out (2n characters and a NUL). */
void util_hex_encode(const void *in, size_t n, char *out);
/* The value of one hex digit (either case), or -1. */
int util_hex_value(int c);
/* SHA-256 of n bytes as lower-case hex (64 characters and a NUL). */
void util_sha256_hex(const void *in, size_t n, char out[65]);
/*
 * How many of s's n bytes to keep to cut it at max: max or a little less, so the cut is not
 * inside a UTF-8 character (it backs up at most 3 bytes, whatever the bytes are).
 */
size_t util_utf8_prefix(const void *s, size_t n, size_t max);
/*
 * The code point of the UTF-8 character at p (NUL-terminated; *len its bytes) when it is
 * one a reader cannot see but that changes what they see: C1 controls (U+0080-9F, which
 * some terminals obey), bidirectional controls (U+061C, U+200E-F, U+202A-E, U+2066-9: a
 * "Trojan Source" statement reads in another order than it runs), zero-width characters
 * (U+200B-D, U+2060, U+FEFF), the line and paragraph separators (U+2028-9) and tag
 * characters (U+E0000-7F). Else 0, with *len 1 for a byte that starts no valid sequence.
 */
uint32_t util_utf8_invisible(const unsigned char *p, size_t *len);
/* n bytes from the 2n hex digits at in; false at the first pair that is not hex. */
bool util_hex_decode(const char *in, size_t n, uint8_t *out);

/*
 * Opens path with flags (plus O_NOFOLLOW, O_NONBLOCK and O_CLOEXEC) and mode, as a regular
 * file only: not through a link, and not a FIFO that would hang its reader. -1 when it
 * cannot, with *why saying why (errno is ENOENT when there is no such file); st, when not
 * NULL, gets the file's status.
 */
int util_open_regular(const char *path, int flags, mode_t mode, struct stat *st, const char **why);

/*
 * Decimal digits of v (util_decimal: with a '-' when negative), written right-aligned to end
 * (no NUL); returns the first. For hot paths, where printf costs too much.
 */
char *util_digits(uint64_t v, char *end);
char *util_decimal(int64_t v, char *end);

/* Standard base64 with padding. encode writes a NUL-terminated string of 4*ceil(n/3) chars. */
size_t util_b64_encoded_len(size_t n);
void util_b64_encode(const unsigned char *in, size_t n, char *out);
/* Returns decoded length, or -1 when the input is not valid padded base64 or exceeds outmax. */
int util_b64_decode(const char *in, size_t inlen, unsigned char *out, size_t outmax);

/* Constant-time comparison of two equal-length buffers. */
bool util_ct_equal(const void *a, const void *b, size_t n);

uint64_t util_now_ms(void);
/* CLOCK_MONOTONIC in microseconds: for durations. */
int64_t util_now_us(void);
/* The time ms milliseconds from now on clock: the deadline of a timed wait. */
struct timespec util_deadline(clockid_t clock, int ms);

/* Bytes collected up to a bound (HTTP bodies). data stays NUL-terminated; the owner frees it. */
typedef struct {
	char *data;
	size_t len;
	size_t max;
	bool too_big; /* something was refused: the collection is incomplete */
} BoundedBuf;
/* Appends n bytes; once they would pass max, sets too_big and refuses this and every later append. */
bool util_buf_append(BoundedBuf *b, const void *p, size_t n);

#endif
