/* The head file: three lines, "node NAME", "seq N", "tag HEX" (see head_file.h). */
#include "audit/head_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "audit/chain.h"
#include "config/config.h"
#include "core/util.h"

char *head_file_path(const char *key_file) { return xasprintf("%s.head", key_file); }

/* The value of the line "name VALUE" at *p, moving *p past it; NULL when the line is not that. */
static char *line_value(char **p, const char *name)
{
	size_t n = strlen(name);
	if (strncmp(*p, name, n) != 0 || (*p)[n] != ' ')
		return NULL;
	char *v = *p + n + 1, *nl = strchr(v, '\n');
	if (!nl)
		return NULL;
	*nl = 0;
	*p = nl + 1;
	return v;
}

static bool all_hex(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (util_hex_value((unsigned char)s[i]) < 0)
			return false;
	return s[n] == 0;
}

int head_file_read(const char *path, HeadFile *h, char *err, size_t errlen)
{
	char buf[256];
	const char *why;
	int fd = util_open_regular(path, O_RDONLY, 0, NULL, &why);
	if (fd < 0 && errno == ENOENT)
		return 0;
	if (fd < 0) {
		snprintf(err, errlen, "audit head file %s: cannot open: %s", path, why);
		return -1;
	}
	ssize_t got = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (got < 0) {
		snprintf(err, errlen, "audit head file %s: cannot read: %s", path, strerror(errno));
		return -1;
	}
	buf[got] = 0;
	char *p = buf, *node = line_value(&p, "node"), *seq = node ? line_value(&p, "seq") : NULL,
	     *tag = seq ? line_value(&p, "tag") : NULL, *end = NULL;
	long long n = seq ? strtoll(seq, &end, 10) : 0;
	if (!tag || *p || !config_valid_name(node) || !end || *end || end == seq || n < 1 ||
	    n >= AUDIT_SEQ_MAX || !all_hex(tag, AUDIT_TAG_HEX - 1)) {
		snprintf(err, errlen, "audit head file %s: not a head file (expected the lines \"node NAME\", \"seq N\","
			 " \"tag HEX\")", path);
		return -1;
	}
	snprintf(h->node, sizeof h->node, "%s", node);
	h->seq = n;
	snprintf(h->tag, sizeof h->tag, "%s", tag);
	return 1;
}

bool head_file_write(const char *path, const char *node, int64_t seq, const char *tag, char *err, size_t errlen)
{
	char *tmp = xasprintf("%s.tmp", path), text[256];
	int len = snprintf(text, sizeof text, "node %s\nseq %lld\ntag %s\n", node, (long long)seq, tag);
	errno = 0;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	bool ok = fd >= 0 && len > 0 && (size_t)len < sizeof text && write(fd, text, (size_t)len) == len;
	int saved = errno ? errno : EIO; /* a short write sets none */
	/* On the disk before it replaces the last one: a power failure leaves one or the other. */
	if (ok && fsync(fd) != 0) {
		ok = false;
		saved = errno;
	}
	if (fd >= 0 && close(fd) != 0 && ok) {
		ok = false;
		saved = errno;
	}
	if (ok && rename(tmp, path) != 0) {
		ok = false;
		saved = errno;
	}
	if (!ok) {
		if (fd >= 0)
			unlink(tmp);
		snprintf(err, errlen, "audit head file %s: cannot write: %s", path, strerror(saved));
	}
	free(tmp);
	return ok;
}
