/* SCRAM-SHA-256: RFC 7677 vectors, verifier parsing, client/server round trips, hostile input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "auth/scram.h"
#include "core/util.h"

static const char rfc_client_first[] = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
static const char rfc_server_nonce[] = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
static const char rfc_server_first[] =
	"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
static const char rfc_client_final[] =
	"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
static const char rfc_server_final[] = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

static void rfc_verifier(ScramVerifier *v)
{
	uint8_t salt[32];
	int n = util_b64_decode("W22ZaJ0SNY7soEsUEjb6gQ==", 24, salt, sizeof salt);
	assert_int_equal(n, 16);
	assert_true(scram_verifier_from_password("pencil", salt, n, 4096, v));
}

static void test_rfc7677_server(void **state)
{
	(void)state;
	ScramVerifier v;
	ScramServer s;
	char out[SCRAM_MSG_MAX], err[160];
	bool ok;
	rfc_verifier(&v);
	scram_server_set_nonce_for_test(rfc_server_nonce);
	scram_server_init(&s, &v);
	assert_true(scram_server_first(&s, rfc_client_first, strlen(rfc_client_first), out, sizeof out, err, sizeof err));
	assert_string_equal(out, rfc_server_first);
	assert_true(scram_server_final(&s, rfc_client_final, strlen(rfc_client_final), &ok, out, sizeof out, err,
				       sizeof err));
	assert_true(ok);
	assert_string_equal(out, rfc_server_final);
	scram_server_set_nonce_for_test(NULL);
}

static void test_wrong_proof_is_refused(void **state)
{
	(void)state;
	ScramVerifier v;
	ScramServer s;
	char out[SCRAM_MSG_MAX], err[160];
	bool ok = true;
	rfc_verifier(&v);
	scram_server_set_nonce_for_test(rfc_server_nonce);
	scram_server_init(&s, &v);
	assert_true(scram_server_first(&s, rfc_client_first, strlen(rfc_client_first), out, sizeof out, err, sizeof err));
	char bad[sizeof rfc_client_final];
	memcpy(bad, rfc_client_final, sizeof bad);
	bad[strlen(bad) - 5] = bad[strlen(bad) - 5] == 'A' ? 'B' : 'A';
	assert_true(scram_server_final(&s, bad, strlen(bad), &ok, out, sizeof out, err, sizeof err));
	assert_false(ok);
	scram_server_set_nonce_for_test(NULL);
}

static void test_round_trip_with_generated_verifier(void **state)
{
	(void)state;
	char *text = scram_make_verifier("s3cret", 4096);
	ScramVerifier v;
	assert_non_null(text);
	assert_true(scram_parse_verifier(text, &v));
	assert_int_equal(v.iterations, 4096);

	ScramServer s;
	ScramClient c;
	char m1[SCRAM_MSG_MAX], m2[SCRAM_MSG_MAX], m3[SCRAM_MSG_MAX], m4[SCRAM_MSG_MAX], err[160];
	bool ok;
	scram_server_init(&s, &v);
	scram_client_first(&c, m1, sizeof m1);
	assert_true(scram_server_first(&s, m1, strlen(m1), m2, sizeof m2, err, sizeof err));
	assert_true(scram_client_final(&c, "s3cret", m2, strlen(m2), m3, sizeof m3, err, sizeof err));
	assert_true(scram_server_final(&s, m3, strlen(m3), &ok, m4, sizeof m4, err, sizeof err));
	assert_true(ok);
	assert_true(scram_client_verify(&c, m4, strlen(m4), err, sizeof err));
	free(text);
}

static void test_client_rejects_forged_server_signature(void **state)
{
	(void)state;
	ScramClient c;
	char m1[SCRAM_MSG_MAX], m3[SCRAM_MSG_MAX], err[160];
	scram_client_first_with_nonce(&c, "abcdef", m1, sizeof m1);
	const char *sf = "r=abcdefXYZ,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
	assert_true(scram_client_final(&c, "pw", sf, strlen(sf), m3, sizeof m3, err, sizeof err));
	const char *forged = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
	assert_false(scram_client_verify(&c, forged, strlen(forged), err, sizeof err));
}

static void test_client_rejects_bad_server_first(void **state)
{
	(void)state;
	const char *cases[] = {
		"r=otherNonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", /* does not extend our nonce */
		"r=abcdefXYZ,s=!!!!,i=4096",                      /* bad salt */
		"r=abcdefXYZ,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",     /* bad iterations */
		"r=abcdefXYZ,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=999999999", /* too expensive */
		"garbage",
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		ScramClient c;
		char m1[SCRAM_MSG_MAX], m3[SCRAM_MSG_MAX], err[160];
		scram_client_first_with_nonce(&c, "abcdef", m1, sizeof m1);
		assert_false(scram_client_final(&c, "pw", cases[i], strlen(cases[i]), m3, sizeof m3, err, sizeof err));
	}
}

static void test_server_rejects_malformed_client_messages(void **state)
{
	(void)state;
	ScramVerifier v;
	rfc_verifier(&v);
	const char *firsts[] = {"", "x,,n=,r=abc", "p=tls-server-end-point,,n=,r=abc", "n,a=admin,n=,r=abc",
				"n,,n=,", "n,,r=abc", "n,,n=,r=", "n"};
	for (size_t i = 0; i < sizeof firsts / sizeof firsts[0]; i++) {
		ScramServer s;
		char out[SCRAM_MSG_MAX], err[160];
		scram_server_init(&s, &v);
		assert_false(scram_server_first(&s, firsts[i], strlen(firsts[i]), out, sizeof out, err, sizeof err));
	}
	/* An embedded NUL and an oversized message. */
	ScramServer s;
	char out[SCRAM_MSG_MAX], err[160], big[4000];
	scram_server_init(&s, &v);
	assert_false(scram_server_first(&s, "n,,n=\0,r=abc", 12, out, sizeof out, err, sizeof err));
	memset(big, 'a', sizeof big);
	assert_false(scram_server_first(&s, big, sizeof big, out, sizeof out, err, sizeof err));

	const char *finals[] = {"c=biws,r=wrongnonce,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
				"c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
				"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
				"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=notbase64!"};
	for (size_t i = 0; i < sizeof finals / sizeof finals[0]; i++) {
		bool ok = true;
		scram_server_set_nonce_for_test(rfc_server_nonce);
		scram_server_init(&s, &v);
		assert_true(scram_server_first(&s, rfc_client_first, strlen(rfc_client_first), out, sizeof out, err,
					       sizeof err));
		assert_false(scram_server_final(&s, finals[i], strlen(finals[i]), &ok, out, sizeof out, err, sizeof err));
		assert_false(ok);
	}
	scram_server_set_nonce_for_test(NULL);
}

static void test_verifier_parsing(void **state)
{
	(void)state;
	ScramVerifier v;
	const char *good = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
			   "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
	assert_true(scram_parse_verifier(good, &v));
	assert_int_equal(v.saltlen, 16);
	const char *bad[] = {"", "md5abc", "SCRAM-SHA-256$", "SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==$a:b",
			     "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$short:short",
			     "SCRAM-SHA-256$4096:***$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_false(scram_parse_verifier(bad[i], &v));
}

static void test_md5_response(void **state)
{
	(void)state;
	/* md5(md5("secret" "bob") + salt) computed independently with Python's hashlib. */
	const uint8_t salt[4] = {1, 2, 3, 4};
	char out[36];
	auth_md5_response("bob", "secret", salt, out);
	assert_int_equal(strlen(out), 35);
	assert_memory_equal(out, "md5", 3);
	assert_string_equal(out, "md5f21dfe33ff3a9e03dbc3e008251fe5cc");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rfc7677_server),
		cmocka_unit_test(test_wrong_proof_is_refused),
		cmocka_unit_test(test_round_trip_with_generated_verifier),
		cmocka_unit_test(test_client_rejects_forged_server_signature),
		cmocka_unit_test(test_client_rejects_bad_server_first),
		cmocka_unit_test(test_server_rejects_malformed_client_messages),
		cmocka_unit_test(test_verifier_parsing),
		cmocka_unit_test(test_md5_response),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
