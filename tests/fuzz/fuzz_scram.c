/* libFuzzer target: SCRAM server (client-first, client-final) and client (server-first, server-final). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "auth/scram.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static ScramVerifier v;
	static int ready;
	if (!ready) {
		uint8_t salt[16] = {1, 2, 3};
		if (!scram_verifier_from_password("pw", salt, sizeof salt, 1, &v))
			__builtin_trap();
		ready = 1;
	}
	/* Split the input in two messages at the first 0xff byte. */
	const uint8_t *cut = memchr(data, 0xff, size);
	size_t n1 = cut ? (size_t)(cut - data) : size;
	const char *m2 = cut ? (const char *)cut + 1 : "";
	size_t n2 = cut ? size - n1 - 1 : 0;
	char out[SCRAM_MSG_MAX], err[160];
	bool ok;

	ScramServer s;
	scram_server_init(&s, &v);
	if (scram_server_first(&s, (const char *)data, n1, out, sizeof out, err, sizeof err))
		(void)scram_server_final(&s, m2, n2, &ok, out, sizeof out, err, sizeof err);

	ScramClient c;
	char first[SCRAM_MSG_MAX];
	scram_client_first_with_nonce(&c, "fuzz", first, sizeof first);
	/* Iteration counts are bounded by SCRAM_MAX_ITERATIONS; keep the fuzzer fast by skipping big ones. */
	if (n1 < 200 && !memmem(data, n1, "i=1", 3))
		return 0;
	if (scram_client_final(&c, "pw", (const char *)data, n1, out, sizeof out, err, sizeof err))
		(void)scram_client_verify(&c, m2, n2, err, sizeof err);
	return 0;
}
