/* Protocol framing: header checks, reader bounds, builder, startup packet parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "proto/proto.h"

static void test_header_checks(void **state)
{
	(void)state;
	char type;
	uint32_t len;
	const uint8_t ok[] = {'Q', 0, 0, 0, 9};
	assert_int_equal(proto_check_header(ok, 4, 100, &type, &len), HDR_NEED_MORE);
	assert_int_equal(proto_check_header(ok, 5, 100, &type, &len), HDR_OK);
	assert_int_equal(type, 'Q');
	assert_int_equal(len, 9);
	const uint8_t short_len[] = {'Q', 0, 0, 0, 3};
	assert_int_equal(proto_check_header(short_len, 5, 100, &type, &len), HDR_TOO_SHORT);
	const uint8_t huge[] = {'Q', 0x7f, 0xff, 0xff, 0xff};
	assert_int_equal(proto_check_header(huge, 5, 64 * 1024 * 1024, &type, &len), HDR_TOO_LONG);
	const uint8_t negative[] = {'Q', 0xff, 0xff, 0xff, 0xff};
	assert_int_equal(proto_check_header(negative, 5, 0x7fffffff, &type, &len), HDR_TOO_LONG);
}

static void test_reader_bounds(void **state)
{
	(void)state;
	const uint8_t body[] = {0, 0, 0, 7, 'a', 'b', 0, 'c'};
	MsgReader r;
	msgr_init(&r, body, sizeof body);
	assert_int_equal(msgr_u32(&r), 7);
	assert_string_equal(msgr_str(&r), "ab");
	assert_null(msgr_str(&r)); /* "c" is not terminated */
	assert_true(r.failed);
	assert_int_equal(msgr_u32(&r), 0);
	msgr_init(&r, body, 3);
	assert_int_equal(msgr_u32(&r), 0);
	assert_true(r.failed);
	assert_null(msgr_bytes(&r, 1));
}

static void test_builder_error_response(void **state)
{
	(void)state;
	MsgBuilder b;
	msgb_init(&b);
	proto_build_error(&b, true, "28P01", "password authentication failed for user \"x\"", NULL, NULL);
	assert_false(b.failed);
	assert_int_equal(b.data[0], 'E');
	assert_int_equal(proto_get_u32(b.data + 1), b.len - 1);
	assert_non_null(memmem(b.data, b.len, "C28P01", 6));
	assert_int_equal(b.data[b.len - 1], 0);
	/* A second message after the first, and growth past the inline buffer. */
	char big[1000];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = 0;
	size_t first = b.len;
	proto_build_notice(&b, "NOTICE", "00000", big);
	assert_false(b.failed);
	assert_int_equal(proto_get_u32(b.data + first + 1), b.len - first - 1);
	msgb_free(&b);
}

static size_t startup(uint8_t *buf, uint32_t code, const char *const *kv, int n)
{
	size_t len = 8;
	proto_put_u32(buf + 4, code);
	for (int i = 0; i < n; i++) {
		size_t l = strlen(kv[i]) + 1;
		memcpy(buf + len, kv[i], l);
		len += l;
	}
	buf[len++] = 0;
	proto_put_u32(buf, (uint32_t)len);
	return len;
}

static void test_startup_parse(void **state)
{
	(void)state;
	uint8_t buf[512];
	char err[160];
	StartupPacket sp;
	const char *kv[] = {"user", "alice", "database", "app", "application_name", "psql", "options", "-c x=1"};
	size_t len = startup(buf, PROTO_VERSION_30, kv, 8);
	assert_true(proto_parse_startup(buf + 4, len - 4, &sp, err, sizeof err));
	assert_string_equal(sp.user, "alice");
	assert_string_equal(sp.database, "app");
	assert_int_equal(sp.nparams, 2);
	assert_string_equal(sp.names[1], "options");
	assert_string_equal(sp.values[1], "-c x=1");

	/* database defaults to user */
	len = startup(buf, PROTO_VERSION_30, kv, 2);
	assert_true(proto_parse_startup(buf + 4, len - 4, &sp, err, sizeof err));
	assert_string_equal(sp.database, "alice");

	/* no user: parsed; the session refuses it with 28000 as the server does */
	len = startup(buf, PROTO_VERSION_30, kv + 2, 2);
	assert_true(proto_parse_startup(buf + 4, len - 4, &sp, err, sizeof err));
	assert_null(sp.user);

	/* missing terminator / value */
	len = startup(buf, PROTO_VERSION_30, kv, 3);
	assert_false(proto_parse_startup(buf + 4, len - 5, &sp, err, sizeof err));
	assert_false(proto_parse_startup(buf + 4, len - 4, &sp, err, sizeof err));

	/* trailing junk after the terminator */
	len = startup(buf, PROTO_VERSION_30, kv, 2);
	buf[len] = 'x';
	assert_false(proto_parse_startup(buf + 4, len - 3, &sp, err, sizeof err));
}

static void test_special_requests(void **state)
{
	(void)state;
	uint8_t buf[16];
	char err[160];
	StartupPacket sp;
	proto_put_u32(buf, 16);
	proto_put_u32(buf + 4, PROTO_CANCEL_CODE);
	proto_put_u32(buf + 8, 1234);
	proto_put_u32(buf + 12, 5678);
	assert_true(proto_parse_startup(buf + 4, 12, &sp, err, sizeof err));
	assert_int_equal(sp.cancel_pid, 1234);
	assert_int_equal(sp.cancel_key, 5678);
	assert_false(proto_parse_startup(buf + 4, 8, &sp, err, sizeof err));
	proto_put_u32(buf + 4, PROTO_SSL_CODE);
	assert_true(proto_parse_startup(buf + 4, 4, &sp, err, sizeof err));
	assert_false(proto_parse_startup(buf + 4, 8, &sp, err, sizeof err));
	/* Another version parses (the caller refuses it). */
	proto_put_u32(buf + 4, 2 << 16);
	assert_true(proto_parse_startup(buf + 4, 4, &sp, err, sizeof err));
	assert_int_equal(sp.code, 2 << 16);
}

static void test_too_many_parameters(void **state)
{
	(void)state;
	static uint8_t buf[8192];
	const char *kv[2 * 80 + 2];
	char names[80][16]; /* room for any int ("p-2147483648"): -O1 cannot see i < 80 */
	kv[0] = "user";
	kv[1] = "u";
	for (int i = 0; i < 80; i++) {
		snprintf(names[i], sizeof names[i], "p%d", i);
		kv[2 + 2 * i] = names[i];
		kv[3 + 2 * i] = "v";
	}
	char err[160];
	StartupPacket sp;
	size_t len = startup(buf, PROTO_VERSION_30, kv, 2 + 2 * 80);
	assert_false(proto_parse_startup(buf + 4, len - 4, &sp, err, sizeof err));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_header_checks),
		cmocka_unit_test(test_reader_bounds),
		cmocka_unit_test(test_builder_error_response),
		cmocka_unit_test(test_startup_parse),
		cmocka_unit_test(test_special_requests),
		cmocka_unit_test(test_too_many_parameters),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
