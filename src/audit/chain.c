/* The keyed hash chain over audit records and its key file. */
#include "audit/chain.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

bool chain_load_key(const char *path, bool create, uint8_t key[AUDIT_KEY_LEN], bool *created, char *err,
		    size_t errlen)
{
	*created = false;
	int fd = open(path, O_RDONLY);
	if (fd < 0 && errno == ENOENT && create) {
		fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
		if (fd < 0) {
			snprintf(err, errlen, "audit key file %s: cannot create: %s", path, strerror(errno));
			return false;
		}
		char hex[2 * AUDIT_KEY_LEN + 2];
		util_random(key, AUDIT_KEY_LEN);
		util_hex_encode(key, AUDIT_KEY_LEN, hex);
		hex[2 * AUDIT_KEY_LEN] = '\n';
		bool ok = write(fd, hex, 2 * AUDIT_KEY_LEN + 1) == 2 * AUDIT_KEY_LEN + 1 && fsync(fd) == 0;
		close(fd);
		if (!ok) {
			unlink(path);
			snprintf(err, errlen, "audit key file %s: cannot write: %s", path, strerror(errno));
			return false;
		}
		*created = true;
		return true;
	}
	if (fd < 0) {
		snprintf(err, errlen, "audit key file %s: cannot open: %s", path, strerror(errno));
		return false;
	}
	char buf[2 * AUDIT_KEY_LEN + 8];
	ssize_t n = read(fd, buf, sizeof buf);
	close(fd);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
		n--;
	if (n != 2 * AUDIT_KEY_LEN) {
		snprintf(err, errlen, "audit key file %s: expected %d hex digits", path, 2 * AUDIT_KEY_LEN);
		return false;
	}
	for (int i = 0; i < AUDIT_KEY_LEN; i++) {
		int hi = hexval(buf[2 * i]), lo = hexval(buf[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			snprintf(err, errlen, "audit key file %s: expected %d hex digits", path, 2 * AUDIT_KEY_LEN);
			return false;
		}
		key[i] = (uint8_t)(hi << 4 | lo);
	}
	return true;
}

void chain_key_at(const uint8_t first[AUDIT_KEY_LEN], int64_t n, uint8_t out[AUDIT_KEY_LEN])
{
	memcpy(out, first, AUDIT_KEY_LEN);
	for (int64_t i = 1; i < n; i++)
		chain_next_key(out);
}

/* Each field is length-prefixed, so no two different records hash the same bytes. */
static void field_n(EVP_MAC_CTX *m, const char *s, size_t len)
{
	uint8_t n[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len};
	EVP_MAC_update(m, n, 4);
	EVP_MAC_update(m, (const uint8_t *)s, len);
}

static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;
static EVP_MAC *hmac;    /* fetched once: the lookup costs more than hashing a record */
static EVP_MD *sha256;

/* One context each per thread, reused for every record: creating one costs more than the hash. */
static __thread EVP_MAC_CTX *thread_mac;
static __thread EVP_MD_CTX *thread_md;

static void fetch_algorithms(void)
{
	hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (!hmac || !sha256)
		abort(); /* no SHA-256 in libcrypto: nothing can be chained */
}

void chain_release_thread(void)
{
	EVP_MAC_CTX_free(thread_mac);
	thread_mac = NULL;
	EVP_MD_CTX_free(thread_md);
	thread_md = NULL;
}

void chain_next_key(uint8_t key[AUDIT_KEY_LEN])
{
	pthread_once(&fetch_once, fetch_algorithms);
	if (!thread_md)
		thread_md = EVP_MD_CTX_new();
	unsigned int n = 0;
	if (!thread_md || !EVP_DigestInit_ex2(thread_md, sha256, NULL) ||
	    !EVP_DigestUpdate(thread_md, key, AUDIT_KEY_LEN) || !EVP_DigestFinal_ex(thread_md, key, &n))
		abort();
}

static void field(EVP_MAC_CTX *m, const char *s) { field_n(m, s, strlen(s)); }

void chain_tag(const uint8_t key[AUDIT_KEY_LEN], const StoredRecord *r, char out[AUDIT_TAG_HEX])
{
	pthread_once(&fetch_once, fetch_algorithms);
	EVP_MAC_CTX *m = thread_mac;
	if (!m) {
		m = EVP_MAC_CTX_new(hmac);
		OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", "SHA256", 0), OSSL_PARAM_construct_end()};
		if (!m || !EVP_MAC_CTX_set_params(m, params))
			abort();
		thread_mac = m;
	}
	EVP_MAC_init(m, key, AUDIT_KEY_LEN, NULL);
	/* seq in decimal, as the record shows it */
	char seq[24], *end = seq + sizeof seq, *p = end;
	uint64_t v = r->seq < 0 ? 0 - (uint64_t)r->seq : (uint64_t)r->seq;
	do {
		*--p = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	if (r->seq < 0)
		*--p = '-';
	field(m, r->node);
	field_n(m, p, (size_t)(end - p));
	field(m, r->time);
	field(m, r->kind);
	field(m, r->session_id);
	field(m, r->user_name);
	field(m, r->database);
	field(m, r->body);
	field(m, r->prev_tag);
	uint8_t d[EVP_MAX_MD_SIZE];
	size_t dlen = 0;
	EVP_MAC_final(m, d, &dlen, sizeof d);
	util_hex_encode(d, 32, out);
}
