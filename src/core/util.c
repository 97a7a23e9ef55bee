/* Small helpers shared by every module. */
#include "core/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static void oom(void)
{
	static const char msg[] = "level=error event=out_of_memory\n";
	if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
		/* Nothing more to do. */
	}
	abort();
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		oom();
	return p;
}

void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p)
		oom();
	return p;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p)
		oom();
	return p;
}

char *xstrdup(const char *s)
{
	char *p = strdup(s);
	if (!p)
		oom();
	return p;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *p = NULL;
	int n = vasprintf(&p, fmt, ap);
	va_end(ap);
	if (n < 0)
		oom();
	return p;
}

void util_hex_encode(const void *in, size_t n, char *out)
{
	static const char hex[] = "0123456789abcdef";
	const uint8_t *p = in;
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex[p[i] >> 4];
		out[2 * i + 1] = hex[p[i] & 15];
	}
	out[2 * n] = 0;
}

size_t util_utf8_prefix(const void *s, size_t n, size_t max)
{
	const unsigned char *b = s;
	if (n <= max)
		return n;
	size_t head = max; /* < n: b[head] is the first byte left out */
	for (int back = 0; back < 3 && head > 0 && (b[head] & 0xc0) == 0x80; back++)
		head--;
	return head;
}

void util_sha256_hex(const void *in, size_t n, char out[65])
{
	uint8_t md[32];
	unsigned len = 0;
	if (!EVP_Digest(in, n, md, &len, EVP_sha256(), NULL) || len != sizeof md)
		abort(); /* no SHA-256: the process cannot go on (the audit chain needs it too) */
	util_hex_encode(md, sizeof md, out);
}

char *util_read_file(const char *path, size_t max, char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	char *buf = xmalloc(max + 1);
	size_t n = fread(buf, 1, max + 1, f);
	bool bad = ferror(f);
	fclose(f);
	if (bad || n > max) {
		snprintf(err, errlen, bad ? "cannot read %s" : "%s is too large", path);
		free(buf);
		return NULL;
	}
	buf[n] = 0;
	return buf;
}

void util_wipe_free(char *s)
{
	if (!s)
		return;
	OPENSSL_cleanse(s, strlen(s));
	free(s);
}

/* The authority of an http:// URL (after the scheme, up to the path) names this host. */
static bool loopback_authority(const char *a, size_t n)
{
	if (memchr(a, '@', n))
		return false; /* user@host: the host is what follows */
	size_t host = n;
	if (n >= 5 && memcmp(a, "[::1]", 5) == 0) {
		host = 5;
	} else {
		const char *colon = memchr(a, ':', n);
		if (colon)
			host = (size_t)(colon - a);
	}
	for (size_t i = host + 1; i < n; i++) /* the port, if any: digits only */
		if (a[i] < '0' || a[i] > '9')
			return false;
	if (host < n && a[host] != ':')
		return false;
	if (host == 5 && a[0] == '[')
		return true;
	char name[16];
	if (host == 0 || host >= sizeof name)
		return false;
	memcpy(name, a, host);
	name[host] = 0;
	return strcasecmp(name, "localhost") == 0 || util_loopback_ip(name);
}

static bool loopback_v4(const struct in_addr *a) { return (ntohl(a->s_addr) >> 24) == 127; }

static bool loopback_v6(const struct in6_addr *a)
{
	return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
}

bool util_loopback_ip(const char *address)
{
	struct in_addr v4;
	struct in6_addr v6;
	if (inet_pton(AF_INET, address, &v4) == 1)
		return loopback_v4(&v4);
	return inet_pton(AF_INET6, address, &v6) == 1 && loopback_v6(&v6);
}

bool util_loopback_sockaddr(const struct sockaddr *addr)
{
	if (addr->sa_family == AF_INET)
		return loopback_v4(&((const struct sockaddr_in *)addr)->sin_addr);
	return addr->sa_family == AF_INET6 && loopback_v6(&((const struct sockaddr_in6 *)addr)->sin6_addr);
}

int util_sockaddr_host(const struct sockaddr *addr, char *host, size_t hostlen)
{
	if (addr && addr->sa_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
		inet_ntop(AF_INET, &a->sin_addr, host, (socklen_t)hostlen);
		return ntohs(a->sin_port);
	}
	if (addr && addr->sa_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
		inet_ntop(AF_INET6, &a->sin6_addr, host, (socklen_t)hostlen);
		return ntohs(a->sin6_port);
	}
	snprintf(host, hostlen, "?");
	return -1;
}

bool util_str_same(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

bool util_url_private(const char *url)
{
	if (strncmp(url, "https://", 8) == 0)
		return true;
	if (strncmp(url, "http://", 7) != 0)
		return false;
	const char *a = url + 7;
	return loopback_authority(a, strcspn(a, "/?#"));
}

int util_cpu_count(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

int util_thread_start(pthread_t *thread, size_t stack_size, bool detached, void *(*fn)(void *), void *arg)
{
	pthread_attr_t attr;
	int rc = pthread_attr_init(&attr);
	if (rc != 0)
		return rc;
	rc = pthread_attr_setstacksize(&attr, stack_size);
	if (rc == 0 && detached)
		rc = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (rc == 0)
		rc = pthread_create(thread, &attr, fn, arg);
	pthread_attr_destroy(&attr);
	return rc;
}

void util_random(void *buf, size_t n)
{
	if (RAND_bytes(buf, (int)n) != 1)
		abort();
}

size_t util_b64_encoded_len(size_t n) { return 4 * ((n + 2) / 3); }

void util_b64_encode(const unsigned char *in, size_t n, char *out)
{
	EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

int util_b64_decode(const char *in, size_t inlen, unsigned char *out, size_t outmax)
{
	if (inlen % 4 != 0 || inlen / 4 * 3 > outmax + 2)
		return -1;
	for (size_t i = 0; i < inlen; i++) {
		char c = in[i];
		bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			  c == '+' || c == '/' || (c == '=' && i >= inlen - 2);
		if (!ok || (c != '=' && i > 0 && in[i - 1] == '='))
			return -1;
	}
	size_t tmplen = inlen / 4 * 3 + 1;
	unsigned char *tmp = xmalloc(tmplen);
	int n = EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)inlen);
	if (n < 0) {
		free(tmp);
		return -1;
	}
	/* EVP_DecodeBlock counts padding as zero bytes; take them off. */
	if (inlen >= 1 && in[inlen - 1] == '=')
		n--;
	if (inlen >= 2 && in[inlen - 2] == '=')
		n--;
	if ((size_t)n <= outmax)
		memcpy(out, tmp, n);
	OPENSSL_cleanse(tmp, tmplen);
	free(tmp);
	return (size_t)n <= outmax ? n : -1;
}

bool util_ct_equal(const void *a, const void *b, size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }

int64_t util_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

uint64_t util_now_ms(void) { return (uint64_t)(util_now_us() / 1000); }

struct timespec util_deadline(clockid_t clock, int ms)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

bool util_buf_append(BoundedBuf *b, const void *p, size_t n)
{
	if (b->too_big || n > b->max - b->len) {
		b->too_big = true;
		return false;
	}
	b->data = xrealloc(b->data, b->len + n + 1);
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = 0;
	return true;
}

int util_hex_value(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

uint32_t util_utf8_invisible(const unsigned char *p, size_t *len)
{
	size_t n = p[0] < 0x80 ? 1 : p[0] >= 0xf0 ? 4 : p[0] >= 0xe0 ? 3 : p[0] >= 0xc0 ? 2 : 1;
	for (size_t k = 1; k < n; k++)
		if ((p[k] & 0xc0) != 0x80)
			n = 1; /* not a sequence (a NUL ends the string here too) */
	*len = n;
	if (n == 1)
		return 0;
	uint32_t cp = p[0] & (0x7f >> n);
	for (size_t k = 1; k < n; k++)
		cp = cp << 6 | (p[k] & 0x3f);
	bool hidden = (cp >= 0x80 && cp <= 0x9f) || cp == 0x61c || (cp >= 0x200b && cp <= 0x200f) ||
		      (cp >= 0x2028 && cp <= 0x202e) || cp == 0x2060 || (cp >= 0x2066 && cp <= 0x2069) ||
		      cp == 0xfeff || (cp >= 0xe0000 && cp <= 0xe007f);
	return hidden ? cp : 0;
}

bool util_hex_decode(const char *in, size_t n, uint8_t *out)
{
	for (size_t i = 0; i < n; i++) {
		int hi = util_hex_value((unsigned char)in[2 * i]), lo = util_hex_value((unsigned char)in[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return true;
}

int util_open_regular(const char *path, int flags, mode_t mode, struct stat *st, const char **why)
{
	struct stat own;
	st = st ? st : &own;
	int fd = open(path, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, mode);
	if (fd < 0 || fstat(fd, st) != 0) {
		*why = strerror(errno);
	} else if (!S_ISREG(st->st_mode)) {
		*why = "not a regular file";
		errno = EINVAL; /* not a stale ENOENT of an earlier call */
	} else {
		return fd;
	}
	if (fd >= 0) {
		int saved = errno;
		close(fd);
		errno = saved;
	}
	return -1;
}

char *util_digits(uint64_t v, char *end)
{
	do {
		*--end = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	return end;
}

char *util_decimal(int64_t v, char *end)
{
	char *p = util_digits(v < 0 ? 0 - (uint64_t)v : (uint64_t)v, end);
	if (v < 0)
		*--p = '-';
	return p;
}
