/*
 * PostgreSQL v3 protocol: message framing with strict length checks, a reader for
 * message bodies and a builder with a sticky failure flag. Pure byte handling: no
 * sockets, no policy. See "Message Formats" in the PostgreSQL protocol docs.
 */
#ifndef PGC_PROTO_H
#define PGC_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_HEADER_LEN 5           /* type byte + int32 length */
#define PROTO_STARTUP_MAX 10000      /* same bound the server uses for a startup packet */
#define PROTO_PREAUTH_MAX 8192       /* any message before authentication completes */

#define PROTO_VERSION_30 196608      /* 3.0 */
#define PROTO_CANCEL_CODE 80877102
#define PROTO_SSL_CODE 80877103
#define PROTO_GSSENC_CODE 80877104

/* Big-endian helpers. */
static inline uint32_t proto_get_u32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void proto_put_u32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

typedef enum { HDR_NEED_MORE, HDR_OK, HDR_TOO_SHORT, HDR_TOO_LONG } HeaderCheck;

/*
 * Checks a typed message header (5 bytes). len_out is the declared length including
 * the length word itself. Lengths under 4 or over max are refused.
 */
HeaderCheck proto_check_header(const uint8_t *hdr, size_t avail, uint32_t max, char *type_out,
			       uint32_t *len_out);

/* Reader over one message body; any out-of-bounds read sets failed and returns zeros. */
typedef struct {
	const uint8_t *data;
	size_t len;
	size_t pos;
	bool failed;
} MsgReader;

void msgr_init(MsgReader *r, const uint8_t *data, size_t len);
uint32_t msgr_u32(MsgReader *r);
uint16_t msgr_u16(MsgReader *r);
uint8_t msgr_u8(MsgReader *r);
/* A NUL-terminated string inside the body; NULL (and failed) when unterminated. */
const char *msgr_str(MsgReader *r);
const uint8_t *msgr_bytes(MsgReader *r, size_t n);
size_t msgr_remaining(const MsgReader *r);
/* The next field of an ErrorResponse/NoticeResponse body; false at its end or when malformed. */
bool msgr_error_field(MsgReader *r, uint8_t *code, const char **value);

/* Builder: append messages; check failed once before sending. */
typedef struct {
	uint8_t *data;
	size_t len;
	size_t cap;
	size_t msg_start;
	bool failed;
	uint8_t inline_buf[256];
} MsgBuilder;

void msgb_init(MsgBuilder *b);
void msgb_free(MsgBuilder *b);
void msgb_reset(MsgBuilder *b);
/* type 0 starts an untyped message (startup, SSLRequest, CancelRequest). */
void msgb_begin(MsgBuilder *b, char type);
void msgb_u8(MsgBuilder *b, uint8_t v);
void msgb_u16(MsgBuilder *b, uint16_t v);
void msgb_u32(MsgBuilder *b, uint32_t v);
void msgb_str(MsgBuilder *b, const char *s);
void msgb_bytes(MsgBuilder *b, const void *p, size_t n);
void msgb_end(MsgBuilder *b);

/* Whole messages the gateway synthesizes. */
void proto_build_error(MsgBuilder *b, bool fatal, const char *sqlstate, const char *message,
		       const char *detail, const char *hint);
/* A NoticeResponse; severity "NOTICE" (sqlstate 00000) or "WARNING" (01000). */
void proto_build_notice(MsgBuilder *b, const char *severity, const char *sqlstate, const char *message);
void proto_build_auth(MsgBuilder *b, uint32_t code, const void *data, size_t n);
void proto_build_parameter_status(MsgBuilder *b, const char *name, const char *value);
void proto_build_backend_key(MsgBuilder *b, uint32_t pid, uint32_t key);
void proto_build_ready(MsgBuilder *b, char status);

/* Startup packet: "user", "database" and every other name/value pair. */
typedef struct {
	uint32_t code; /* protocol version or a special request code */
	const char *user;
	const char *database;
	int nparams;
	const char *names[64];
	const char *values[64];
	uint32_t cancel_pid, cancel_key;
} StartupPacket;

/*
 * Parses a startup-phase packet body (after the 4-byte length). Strings point into body,
 * which must stay alive. user may be NULL or empty (the caller refuses it); database
 * defaults to user, as the server does. Returns false with a message in err for anything malformed.
 */
bool proto_parse_startup(const uint8_t *body, size_t len, StartupPacket *out, char *err,
			 size_t errlen) __attribute__((warn_unused_result));

#endif
