/* TLS contexts: the listener's server context and each database's client context. */
#include "net/tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>

#define TLS_MAX_RECORD_PLAINTEXT 8192 /* bytes of data in one record sent to a client */

static void ssl_error(char *err, size_t errlen, const char *what, const char *file)
{
	char buf[160];
	ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
	ERR_clear_error();
	snprintf(err, errlen, "%s: %s %s: %s", "tls", what, file ? file : "", buf);
}

static SSL_CTX *server_ctx(const char *cert, const char *key, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		ssl_error(err, errlen, "cannot create context", NULL);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
	/*
	 * Records of at most 8 KiB, as PostgreSQL itself sends. libpq reads into at least 8 KiB
	 * of buffer at a time; a bigger record leaves its tail decrypted inside libpq's OpenSSL,
	 * where the socket's readiness cannot show it, and a client that waits on the socket
	 * between reads (psycopg, any async libpq user) then waits forever for the answer's end.
	 */
	SSL_CTX_set_max_send_fragment(ctx, TLS_MAX_RECORD_PLAINTEXT);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		ssl_error(err, errlen, "cannot load certificate", cert);
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
		ssl_error(err, errlen, "cannot load private key", key);
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

static SSL_CTX *client_ctx(const DatabaseConfig *d, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx) {
		ssl_error(err, errlen, "cannot create context", NULL);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
	if (d->sslmode == SSLMODE_VERIFY_FULL) {
		if (SSL_CTX_load_verify_locations(ctx, d->sslrootcert, NULL) != 1) {
			ssl_error(err, errlen, "cannot load sslrootcert", d->sslrootcert);
			SSL_CTX_free(ctx);
			return NULL;
		}
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		/* sslmode require: encryption without identity, as libpq defines it. */
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	return ctx;
}

bool tls_prepare_config(Config *c, char *err, size_t errlen)
{
	char inner[256];
	if (c->tls_mode != TLS_DISABLE) {
		c->tls_ctx = server_ctx(c->tls_cert, c->tls_key, inner, sizeof inner);
		if (!c->tls_ctx) {
			snprintf(err, errlen, "%s:1: %s", c->path, inner);
			return false;
		}
	}
	if (c->admin_enabled && c->admin_tls_cert) {
		/* The API's TLS is libmicrohttpd's; checked here so that a bad pair is a config error. */
		SSL_CTX *admin = server_ctx(c->admin_tls_cert, c->admin_tls_key, inner, sizeof inner);
		if (!admin) {
			snprintf(err, errlen, "%s:1: admin.%s", c->path, inner);
			return false;
		}
		SSL_CTX_free(admin);
	}
	for (int i = 0; i < c->ndatabases; i++) {
		DatabaseConfig *d = &c->databases[i];
		if (d->sslmode == SSLMODE_DISABLE)
			continue;
		d->tls_ctx = client_ctx(d, inner, sizeof inner);
		if (!d->tls_ctx) {
			snprintf(err, errlen, "%s:1: database \"%s\": %s", c->path, d->name, inner);
			return false;
		}
	}
	return true;
}
