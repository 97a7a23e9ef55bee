/* PostgreSQL v3 protocol framing, body reader and message builder. */
#include "proto/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

HeaderCheck proto_check_header(const uint8_t *hdr, size_t avail, uint32_t max, char *type_out,
			       uint32_t *len_out)
{
	if (avail < PROTO_HEADER_LEN)
		return HDR_NEED_MORE;
	uint32_t len = proto_get_u32(hdr + 1);
	*type_out = (char)hdr[0];
	*len_out = len;
	if (len < 4)
		return HDR_TOO_SHORT;
	if (len > max)
		return HDR_TOO_LONG;
	return HDR_OK;
}

void msgr_init(MsgReader *r, const uint8_t *data, size_t len)
{
	r->data = data;
	r->len = len;
	r->pos = 0;
	r->failed = false;
}

static bool msgr_need(MsgReader *r, size_t n)
{
	if (r->failed || r->len - r->pos < n) {
		r->failed = true;
		return false;
	}
	return true;
}

uint32_t msgr_u32(MsgReader *r)
{
	if (!msgr_need(r, 4))
		return 0;
	uint32_t v = proto_get_u32(r->data + r->pos);
	r->pos += 4;
	return v;
}

uint16_t msgr_u16(MsgReader *r)
{
	if (!msgr_need(r, 2))
		return 0;
	uint16_t v = (uint16_t)((r->data[r->pos] << 8) | r->data[r->pos + 1]);
	r->pos += 2;
	return v;
}

uint8_t msgr_u8(MsgReader *r)
{
	if (!msgr_need(r, 1))
		return 0;
	return r->data[r->pos++];
}

const char *msgr_str(MsgReader *r)
{
	if (r->failed)
		return NULL;
	const uint8_t *start = r->data + r->pos;
	const uint8_t *nul = memchr(start, 0, r->len - r->pos);
	if (!nul) {
		r->failed = true;
		return NULL;
	}
	r->pos += (size_t)(nul - start) + 1;
	return (const char *)start;
}

const uint8_t *msgr_bytes(MsgReader *r, size_t n)
{
	if (!msgr_need(r, n))
		return NULL;
	const uint8_t *p = r->data + r->pos;
	r->pos += n;
	return p;
}

size_t msgr_remaining(const MsgReader *r) { return r->failed ? 0 : r->len - r->pos; }

bool msgr_error_field(MsgReader *r, uint8_t *code, const char **value)
{
	*code = msgr_u8(r);
	if (r->failed || *code == 0)
		return false;
	*value = msgr_str(r);
	return *value != NULL;
}

void msgb_init(MsgBuilder *b)
{
	b->data = b->inline_buf;
	b->cap = sizeof b->inline_buf;
	b->len = 0;
	b->msg_start = 0;
	b->failed = false;
}

void msgb_free(MsgBuilder *b)
{
	if (b->data != b->inline_buf)
		free(b->data);
	msgb_init(b);
}

void msgb_reset(MsgBuilder *b)
{
	b->len = 0;
	b->msg_start = 0;
	b->failed = false;
}

static bool msgb_reserve(MsgBuilder *b, size_t n)
{
	if (b->failed)
		return false;
	if (n > 0x3fffffff - b->len) {
		b->failed = true;
		return false;
	}
	if (b->len + n <= b->cap)
		return true;
	size_t cap = b->cap * 2;
	while (cap < b->len + n)
		cap *= 2;
	if (b->data == b->inline_buf) {
		b->data = xmalloc(cap);
		memcpy(b->data, b->inline_buf, b->len);
	} else {
		b->data = xrealloc(b->data, cap);
	}
	b->cap = cap;
	return true;
}

void msgb_begin(MsgBuilder *b, char type)
{
	if (type)
		msgb_u8(b, (uint8_t)type);
	b->msg_start = b->len;
	msgb_u32(b, 0); /* length, filled by msgb_end */
}

void msgb_u8(MsgBuilder *b, uint8_t v)
{
	if (msgb_reserve(b, 1))
		b->data[b->len++] = v;
}

void msgb_u16(MsgBuilder *b, uint16_t v)
{
	if (msgb_reserve(b, 2)) {
		b->data[b->len++] = v >> 8;
		b->data[b->len++] = v & 0xff;
	}
}

void msgb_u32(MsgBuilder *b, uint32_t v)
{
	if (msgb_reserve(b, 4)) {
		proto_put_u32(b->data + b->len, v);
		b->len += 4;
	}
}

void msgb_bytes(MsgBuilder *b, const void *p, size_t n)
{
	if (n && msgb_reserve(b, n)) {
		memcpy(b->data + b->len, p, n);
		b->len += n;
	}
}

void msgb_str(MsgBuilder *b, const char *s) { msgb_bytes(b, s, strlen(s) + 1); }

void msgb_end(MsgBuilder *b)
{
	if (!b->failed)
		proto_put_u32(b->data + b->msg_start, (uint32_t)(b->len - b->msg_start));
}

void proto_build_error(MsgBuilder *b, bool fatal, const char *sqlstate, const char *message,
		       const char *detail, const char *hint)
{
	msgb_begin(b, 'E');
	msgb_u8(b, 'S');
	msgb_str(b, fatal ? "FATAL" : "ERROR");
	msgb_u8(b, 'V');
	msgb_str(b, fatal ? "FATAL" : "ERROR");
	msgb_u8(b, 'C');
	msgb_str(b, sqlstate);
	msgb_u8(b, 'M');
	msgb_str(b, message);
	if (detail) {
		msgb_u8(b, 'D');
		msgb_str(b, detail);
	}
	if (hint) {
		msgb_u8(b, 'H');
		msgb_str(b, hint);
	}
	msgb_u8(b, 0);
	msgb_end(b);
}

void proto_build_notice(MsgBuilder *b, const char *severity, const char *sqlstate, const char *message)
{
	msgb_begin(b, 'N');
	msgb_u8(b, 'S');
	msgb_str(b, severity);
	msgb_u8(b, 'V');
	msgb_str(b, severity);
	msgb_u8(b, 'C');
	msgb_str(b, sqlstate);
	msgb_u8(b, 'M');
	msgb_str(b, message);
	msgb_u8(b, 0);
	msgb_end(b);
}

void proto_build_auth(MsgBuilder *b, uint32_t code, const void *data, size_t n)
{
	msgb_begin(b, 'R');
	msgb_u32(b, code);
	msgb_bytes(b, data, n);
	msgb_end(b);
}

void proto_build_parameter_status(MsgBuilder *b, const char *name, const char *value)
{
	msgb_begin(b, 'S');
	msgb_str(b, name);
	msgb_str(b, value);
	msgb_end(b);
}

void proto_build_backend_key(MsgBuilder *b, uint32_t pid, uint32_t key)
{
	msgb_begin(b, 'K');
	msgb_u32(b, pid);
	msgb_u32(b, key);
	msgb_end(b);
}

void proto_build_ready(MsgBuilder *b, char status)
{
	msgb_begin(b, 'Z');
	msgb_u8(b, (uint8_t)status);
	msgb_end(b);
}

bool proto_parse_startup(const uint8_t *body, size_t len, StartupPacket *out, char *err,
			 size_t errlen)
{
	MsgReader r;
	memset(out, 0, sizeof *out);
	msgr_init(&r, body, len);
	out->code = msgr_u32(&r);
	if (r.failed) {
		snprintf(err, errlen, "invalid startup packet: too short");
		return false;
	}
	if (out->code == PROTO_CANCEL_CODE) {
		out->cancel_pid = msgr_u32(&r);
		out->cancel_key = msgr_u32(&r);
		if (r.failed || msgr_remaining(&r) != 0) {
			snprintf(err, errlen, "invalid cancel request length");
			return false;
		}
		return true;
	}
	if (out->code == PROTO_SSL_CODE || out->code == PROTO_GSSENC_CODE) {
		if (msgr_remaining(&r) != 0) {
			snprintf(err, errlen, "invalid %s length",
				 out->code == PROTO_SSL_CODE ? "SSLRequest" : "GSSENCRequest");
			return false;
		}
		return true;
	}
	if (out->code != PROTO_VERSION_30)
		return true; /* the caller refuses the version with its own message */
	for (;;) {
		const char *name = msgr_str(&r);
		if (!name) {
			snprintf(err, errlen, "invalid startup packet layout: expected terminator as last byte");
			return false;
		}
		if (!*name)
			break;
		const char *value = msgr_str(&r);
		if (!value) {
			snprintf(err, errlen, "invalid startup packet layout: missing value for \"%.64s\"", name);
			return false;
		}
		if (strcmp(name, "user") == 0) {
			out->user = value;
		} else if (strcmp(name, "database") == 0) {
			out->database = value;
		} else {
			if (out->nparams >= (int)(sizeof out->names / sizeof out->names[0])) {
				snprintf(err, errlen, "invalid startup packet: too many parameters");
				return false;
			}
			out->names[out->nparams] = name;
			out->values[out->nparams] = value;
			out->nparams++;
		}
	}
	if (msgr_remaining(&r) != 0) {
		snprintf(err, errlen, "invalid startup packet layout: expected terminator as last byte");
		return false;
	}
	if (!out->database || !*out->database)
		out->database = out->user; /* the server's rule: database defaults to user */
	return true;
}
