/* libFuzzer target: the startup packet parser and the message header check. */
#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	StartupPacket sp;
	char err[160];
	if (proto_parse_startup(data, size, &sp, err, sizeof err) && sp.code == PROTO_VERSION_30) {
		/* Every string the parser hands out must lie inside the input. */
		for (int i = 0; i < sp.nparams; i++)
			if ((const uint8_t *)sp.names[i] < data || (const uint8_t *)sp.values[i] >= data + size)
				__builtin_trap();
	}
	char type;
	uint32_t len;
	proto_check_header(data, size, 64 * 1024 * 1024, &type, &len);
	MsgReader r;
	msgr_init(&r, data, size);
	while (!r.failed && msgr_remaining(&r) > 0) {
		msgr_u8(&r);
		msgr_str(&r);
		msgr_u32(&r);
	}
	return 0;
}
