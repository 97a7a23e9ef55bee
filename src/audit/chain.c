/* The keyed hash chain over audit records and its key file. */
#include "audit/chain.h"

/* SHA256_Init and friends: deprecated in OpenSSL 3 for EVP, and much cheaper for 1 KB inputs. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"


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
	if (!util_hex_decode(buf, AUDIT_KEY_LEN, key)) {
		snprintf(err, errlen, "audit key file %s: expected %d hex digits", path, 2 * AUDIT_KEY_LEN);
		return false;
	}
	return true;
}

void chain_key_at(const uint8_t first[AUDIT_KEY_LEN], int64_t n, uint8_t out[AUDIT_KEY_LEN])
{
	memcpy(out, first, AUDIT_KEY_LEN);
	for (int64_t i = 1; i < n; i++)
		chain_next_key(out);
}

/*
 * HMAC-SHA-256 (RFC 2104) over the fields, with OpenSSL's one-shot SHA-256 functions: the
 * key changes with every record, and setting up an EVP_MAC context for each new key cost
 * more than hashing the record. The tags are the same bytes either way.
 */
typedef struct {
	SHA256_CTX inner;
} Mac;

static void mac_init(Mac *m, const uint8_t key[AUDIT_KEY_LEN])
{
	uint8_t pad[SHA256_CBLOCK];
	memset(pad, 0x36, sizeof pad);
	for (int i = 0; i < AUDIT_KEY_LEN; i++)
		pad[i] ^= key[i];
	SHA256_Init(&m->inner);
	SHA256_Update(&m->inner, pad, sizeof pad);
	OPENSSL_cleanse(pad, sizeof pad);
}

static void mac_final(Mac *m, const uint8_t key[AUDIT_KEY_LEN], uint8_t out[SHA256_DIGEST_LENGTH])
{
	uint8_t inner[SHA256_DIGEST_LENGTH], pad[SHA256_CBLOCK];
	SHA256_Final(inner, &m->inner);
	memset(pad, 0x5c, sizeof pad);
	for (int i = 0; i < AUDIT_KEY_LEN; i++)
		pad[i] ^= key[i];
	SHA256_CTX outer;
	SHA256_Init(&outer);
	SHA256_Update(&outer, pad, sizeof pad);
	SHA256_Update(&outer, inner, sizeof inner);
	SHA256_Final(out, &outer);
	OPENSSL_cleanse(pad, sizeof pad);
	OPENSSL_cleanse(&outer, sizeof outer);
	OPENSSL_cleanse(m, sizeof *m);
}

/*
 * The fields reach SHA-256 through a small buffer: a dozen short updates, one per field and
 * length, cost about a tenth more than the hashing itself. The bytes hashed are the same.
 */
typedef struct {
	Mac *m;
	size_t n;
	uint8_t buf[1024];
} Feed;

static void feed(Feed *f, const void *p, size_t len)
{
	if (f->n + len > sizeof f->buf) {
		SHA256_Update(&f->m->inner, f->buf, f->n);
		f->n = 0;
		if (len > sizeof f->buf) {
			SHA256_Update(&f->m->inner, p, len);
			return;
		}
	}
	memcpy(f->buf + f->n, p, len);
	f->n += len;
}

/* Each field is length-prefixed, so no two different records hash the same bytes. */
static void field_n(Feed *f, const char *s, size_t len)
{
	uint8_t n[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len};
	feed(f, n, 4);
	feed(f, s, len);
}

static void field(Feed *f, const char *s) { field_n(f, s, strlen(s)); }

/* Nothing is kept per thread any more; kept for callers that release at thread end. */
void chain_release_thread(void) {}

void chain_next_key(uint8_t key[AUDIT_KEY_LEN])
{
	/* Not SHA256(): in OpenSSL 3 it fetches the algorithm (a lock) on every call. */
	SHA256_CTX c;
	SHA256_Init(&c);
	SHA256_Update(&c, key, AUDIT_KEY_LEN);
	SHA256_Final(key, &c);
	OPENSSL_cleanse(&c, sizeof c);
}

void chain_tag(const uint8_t key[AUDIT_KEY_LEN], const StoredRecord *r, char out[AUDIT_TAG_HEX])
{
	Mac m;
	mac_init(&m, key);
	Feed f;
	f.m = &m;
	f.n = 0;
	/* seq in decimal, as the record shows it */
	char seq[24], *end = seq + sizeof seq, *p = util_decimal(r->seq, end);
	field(&f, r->node);
	field_n(&f, p, (size_t)(end - p));
	field(&f, r->time);
	field(&f, r->kind);
	field(&f, r->session_id);
	field(&f, r->user_name);
	field(&f, r->database);
	field_n(&f, r->body, r->body_len ? r->body_len : strlen(r->body));
	field(&f, r->prev_tag);
	SHA256_Update(&m.inner, f.buf, f.n);
	uint8_t d[SHA256_DIGEST_LENGTH];
	mac_final(&m, key, d);
	util_hex_encode(d, 32, out);
}

/* HMAC-SHA-256 under key(1) of label (with its NUL), seq and, when given, key(seq). */
static void rung_hmac(const uint8_t first[AUDIT_KEY_LEN], const char *label, size_t label_len, int64_t seq,
		      const uint8_t *key, uint8_t out[AUDIT_KEY_LEN])
{
	uint8_t msg[64 + 8 + AUDIT_KEY_LEN];
	size_t n = label_len;
	memcpy(msg, label, n);
	for (int i = 0; i < 8; i++)
		msg[n++] = (uint8_t)((uint64_t)seq >> (56 - 8 * i));
	if (key) {
		memcpy(msg + n, key, AUDIT_KEY_LEN);
		n += AUDIT_KEY_LEN;
	}
	Mac m;
	mac_init(&m, first);
	SHA256_Update(&m.inner, msg, n);
	mac_final(&m, first, out);
	OPENSSL_cleanse(msg, sizeof msg);
}

/* A record's fields start with the 4-byte length of its node name: 0, never 'p'. */
static const char rung_mac_label[] = "pgcordon audit key rung", rung_pad_label[] = "pgcordon audit key rung pad";

void chain_rung_mac(const uint8_t first[AUDIT_KEY_LEN], int64_t seq, const uint8_t key[AUDIT_KEY_LEN],
		    uint8_t out[AUDIT_KEY_LEN])
{
	rung_hmac(first, rung_mac_label, sizeof rung_mac_label, seq, key, out);
}

void chain_rung_pad(const uint8_t first[AUDIT_KEY_LEN], int64_t seq, uint8_t out[AUDIT_KEY_LEN])
{
	rung_hmac(first, rung_pad_label, sizeof rung_pad_label, seq, NULL, out);
}
