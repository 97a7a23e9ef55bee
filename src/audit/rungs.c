/* The key rungs and their file: one line "SEQ KEY MAC" per rung after key(1) (see rungs.h). */
#include "audit/rungs.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"

#define HEX_LEN (2 * AUDIT_KEY_LEN)
#define LINE_MAX_LEN (20 + 1 + HEX_LEN + 1 + HEX_LEN + 1) /* "SEQ KEY MAC\n" */

static void grow(KeyRungs *r)
{
	/* Doubling: a long chain's file is read in one go at start. */
	if ((r->n & (r->n - 1)) == 0) /* n is 0 or a power of two: the array is full */
		r->key = xrealloc(r->key, (size_t)(r->n ? 2 * r->n : 1) * sizeof *r->key);
}

void rungs_note(KeyRungs *r, int64_t seq, const uint8_t key[AUDIT_KEY_LEN])
{
	if (seq < 1 || (seq - 1) % KEY_RUNG != 0 || (seq - 1) / KEY_RUNG != r->n)
		return;
	grow(r);
	memcpy(r->key[r->n++], key, AUDIT_KEY_LEN);
}

void rungs_init(KeyRungs *r, const uint8_t first[AUDIT_KEY_LEN])
{
	*r = (KeyRungs){0};
	rungs_note(r, 1, first);
	r->in_file = 1; /* key(1) is the key file's */
}

void rungs_free(KeyRungs *r)
{
	if (r->key)
		OPENSSL_cleanse(r->key, (size_t)r->n * sizeof *r->key);
	free(r->key);
	*r = (KeyRungs){0};
}

char *rungs_path(const char *key_file) { return xasprintf("%s.rungs", key_file); }

/* The rung that seq's key is derived from: seq's own or, past the last, the last. */
static int64_t nearest(const KeyRungs *r, int64_t seq)
{
	int64_t i = (seq - 1) / KEY_RUNG;
	return i < r->n ? i : r->n - 1;
}

int64_t rungs_key_at(const KeyRungs *r, int64_t seq, uint8_t out[AUDIT_KEY_LEN])
{
	int64_t i = nearest(r, seq), from = 1 + i * KEY_RUNG;
	chain_key_at(r->key[i], seq - from + 1, out); /* the rung is key number 1 of its walk */
	return seq - from;
}

int64_t rungs_walk_to(KeyRungs *r, int64_t seq, uint8_t out[AUDIT_KEY_LEN])
{
	int64_t i = nearest(r, seq), from = 1 + i * KEY_RUNG;
	memcpy(out, r->key[i], AUDIT_KEY_LEN);
	for (int64_t s = from + 1; s <= seq; s++) {
		chain_next_key(out);
		rungs_note(r, s, out);
	}
	return seq - from;
}

/* key XOR key(seq)'s pad: the file keeps the key so, and a copy of it without the key file is no use. */
static void xor_pad(const uint8_t first[AUDIT_KEY_LEN], int64_t seq, uint8_t key[AUDIT_KEY_LEN])
{
	uint8_t pad[AUDIT_KEY_LEN];
	chain_rung_pad(first, seq, pad);
	for (int i = 0; i < AUDIT_KEY_LEN; i++)
		key[i] ^= pad[i];
	OPENSSL_cleanse(pad, sizeof pad);
}

/* Whether line is exactly "SEQ KEY MAC\n" for this seq, and its MAC verifies; key: the key. */
static bool line_is_rung(const char *line, int64_t seq, const uint8_t first[AUDIT_KEY_LEN], uint8_t key[AUDIT_KEY_LEN])
{
	char want[24];
	int n = snprintf(want, sizeof want, "%lld ", (long long)seq);
	uint8_t mac[AUDIT_KEY_LEN], expect[AUDIT_KEY_LEN];
	const char *k = line + n, *m = k + HEX_LEN + 1;
	if (strncmp(line, want, (size_t)n) != 0 || strlen(k) != 2 * HEX_LEN + 2 || k[HEX_LEN] != ' ' ||
	    strcmp(m + HEX_LEN, "\n") != 0 || !util_hex_decode(k, AUDIT_KEY_LEN, key) || !util_hex_decode(m, AUDIT_KEY_LEN, mac))
		return false;
	xor_pad(first, seq, key);
	chain_rung_mac(first, seq, key, expect);
	return CRYPTO_memcmp(mac, expect, sizeof mac) == 0;
}

int rungs_load(KeyRungs *r, const char *path, char *err, size_t errlen)
{
	const char *why = NULL;
	int fd = util_open_regular(path, O_RDONLY, 0, NULL, &why);
	if (fd < 0 && errno == ENOENT)
		return 0;
	FILE *f = fd < 0 ? NULL : fdopen(fd, "r");
	if (fd >= 0 && !f)
		why = strerror(errno);
	if (!f) {
		snprintf(err, errlen, "audit rungs file %s: cannot open: %s", path, why);
		if (fd >= 0)
			close(fd);
		r->file_failed = true;
		return -1;
	}
	int rc = 1;
	char line[LINE_MAX_LEN + 2]; /* a longer line is cut, and then not a rung */
	uint8_t key[AUDIT_KEY_LEN];
	while (fgets(line, sizeof line, f)) {
		int64_t seq = 1 + r->n * KEY_RUNG;
		if (seq >= AUDIT_SEQ_MAX || !line_is_rung(line, seq, r->key[0], key)) {
			snprintf(err, errlen, "audit rungs file %s: line %lld is not the rung of seq=%lld under this key file"
				 " (altered, cut short, or another key's)", path, (long long)r->n, (long long)seq);
			rc = -1;
			r->file_stale = true;
			break;
		}
		rungs_note(r, seq, key);
		r->in_file = r->n;
		r->file_len += (off_t)strlen(line);
	}
	if (rc == 1 && ferror(f)) {
		snprintf(err, errlen, "audit rungs file %s: cannot read: %s", path, strerror(errno));
		rc = -1;
		r->file_failed = true; /* what it holds may be fine: not cut short for a read error */
	}
	OPENSSL_cleanse(key, sizeof key);
	OPENSSL_cleanse(line, sizeof line);
	fclose(f);
	return rc;
}

/* Appends "SEQ KEY MAC\n" for rung i to buf at *used. */
static void put_line(const KeyRungs *r, int64_t i, char *buf, size_t *used)
{
	int64_t seq = 1 + i * KEY_RUNG;
	uint8_t mac[AUDIT_KEY_LEN], padded[AUDIT_KEY_LEN];
	chain_rung_mac(r->key[0], seq, r->key[i], mac);
	memcpy(padded, r->key[i], AUDIT_KEY_LEN);
	xor_pad(r->key[0], seq, padded);
	char *p = buf + *used;
	p += sprintf(p, "%lld ", (long long)seq);
	util_hex_encode(padded, AUDIT_KEY_LEN, p);
	OPENSSL_cleanse(padded, sizeof padded);
	p[HEX_LEN] = ' ';
	util_hex_encode(mac, AUDIT_KEY_LEN, p + HEX_LEN + 1);
	p[2 * HEX_LEN + 1] = '\n';
	*used = (size_t)(p + 2 * HEX_LEN + 2 - buf);
}

bool rungs_save(KeyRungs *r, const char *path, char *err, size_t errlen)
{
	if (r->file_failed || (r->in_file >= r->n && !r->file_stale))
		return true;
	const char *why = NULL;
	struct stat sb;
	int fd = util_open_regular(path, O_WRONLY | O_CREAT, 0600, &sb, &why);
	if (fd >= 0 && fchmod(fd, 0600) != 0)
		why = strerror(errno);
	if (!why && sb.st_size < r->file_len) {
		r->in_file = 1; /* cut short since it was read: written again whole */
		r->file_len = 0;
	}
	/* What follows the lines that verified is replaced: a torn line, or lines that did not. */
	if (!why && sb.st_size != r->file_len && ftruncate(fd, r->file_len) != 0)
		why = strerror(errno);
	char buf[8192];
	size_t used = 0;
	off_t at = r->file_len;
	for (int64_t i = r->in_file; !why && i <= r->n; i++) {
		if (i < r->n && used + LINE_MAX_LEN <= sizeof buf) {
			put_line(r, i, buf, &used);
			continue;
		}
		ssize_t put = pwrite(fd, buf, used, at);
		if (put != (ssize_t)used) {
			why = put < 0 ? strerror(errno) : "short write";
			break;
		}
		at += (off_t)used;
		used = 0;
		if (i < r->n)
			put_line(r, i, buf, &used);
	}
	OPENSSL_cleanse(buf, sizeof buf);
	if (fd >= 0)
		close(fd);
	if (why) {
		snprintf(err, errlen, "audit rungs file %s: cannot write: %s", path, why);
		return false;
	}
	r->in_file = r->n;
	r->file_len = at;
	r->file_stale = false;
	return true;
}
