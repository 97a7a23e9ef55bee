/*
 * SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL uses it: verifiers, the server side
 * for local users, and the client side for the upstream login. No channel binding
 * (SCRAM-SHA-256-PLUS is not offered). Pure functions over strings; no sockets, no logs.
 */
#ifndef PGC_SCRAM_H
#define PGC_SCRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SCRAM_KEY_LEN 32
#define SCRAM_MAX_SALT 64
#define SCRAM_DEFAULT_ITERATIONS 4096
#define SCRAM_MAX_ITERATIONS 1000000 /* bound what an upstream may make us compute */
#define SCRAM_MSG_MAX 1024

typedef struct {
	int iterations;
	uint8_t salt[SCRAM_MAX_SALT];
	int saltlen;
	uint8_t stored_key[SCRAM_KEY_LEN];
	uint8_t server_key[SCRAM_KEY_LEN];
} ScramVerifier;

/* "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>" */
bool scram_parse_verifier(const char *text, ScramVerifier *out) __attribute__((warn_unused_result));
/* Returns a malloc'd verifier for password with a fresh random salt. */
char *scram_make_verifier(const char *password, int iterations);
/* The verifier for password with a given salt (tests, and make_verifier itself). */
bool scram_verifier_from_password(const char *password, const uint8_t *salt, int saltlen, int iterations,
				  ScramVerifier *out) __attribute__((warn_unused_result));
/* A verifier no password matches, stable per user name, so unknown users look like known ones. */
void scram_mock_verifier(const char *user, ScramVerifier *out);

typedef enum { SCRAM_INIT, SCRAM_SENT_FIRST, SCRAM_DONE } ScramState;

typedef struct {
	ScramState state;
	ScramVerifier verifier;
	char gs2_header[8];
	char client_first_bare[SCRAM_MSG_MAX];
	char server_first[SCRAM_MSG_MAX];
	char nonce[SCRAM_MSG_MAX]; /* client nonce + server nonce */
	uint8_t server_signature[SCRAM_KEY_LEN];
} ScramServer;

void scram_server_init(ScramServer *s, const ScramVerifier *v);
/* Takes the client-first-message, writes server-first-message to out (NUL-terminated). */
bool scram_server_first(ScramServer *s, const char *msg, size_t len, char *out, size_t outlen,
			char *err, size_t errlen) __attribute__((warn_unused_result));
/*
 * Takes client-final-message. Returns false with err for malformed input; otherwise
 * sets *ok to whether the proof matched and, when it did, writes server-final to out.
 */
bool scram_server_final(ScramServer *s, const char *msg, size_t len, bool *ok, char *out,
			size_t outlen, char *err, size_t errlen) __attribute__((warn_unused_result));

typedef struct {
	ScramState state;
	char client_nonce[32];
	char client_first_bare[SCRAM_MSG_MAX];
	uint8_t server_signature[SCRAM_KEY_LEN];
} ScramClient;

/* Writes client-first-message ("n,,n=,r=..."). */
void scram_client_first(ScramClient *c, char *out, size_t outlen);
/* Takes server-first, writes client-final (with proof) computed from password. */
bool scram_client_final(ScramClient *c, const char *password, const char *msg, size_t len,
			char *out, size_t outlen, char *err, size_t errlen) __attribute__((warn_unused_result));
/* Checks server-final ("v=..."): the server proved it knows the verifier. */
bool scram_client_verify(ScramClient *c, const char *msg, size_t len, char *err, size_t errlen)
	__attribute__((warn_unused_result));

/* Exposed for tests: client-first with a fixed nonce. */
void scram_client_first_with_nonce(ScramClient *c, const char *nonce, char *out, size_t outlen);
void scram_server_set_nonce_for_test(const char *nonce);

/* md5 password response: "md5" + md5hex(md5hex(password + user) + salt). out >= 36 bytes. */
void auth_md5_response(const char *user, const char *password, const uint8_t salt[4], char out[36]);

#endif
