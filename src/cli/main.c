/* pgcordon's command line: serve, check-config, passwd, demo. */
#include <ctype.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "auth/apikey.h"
#include "auth/scram.h"
#include "cli/approvals_cmd.h"
#include "cli/demo.h"
#include "cli/mcp_cmd.h"
#include "cli/audit_cmd.h"
#include "cli/serve.h"
#include "core/util.h"
#include "core/version.h"

static void usage(FILE *f)
{
	fprintf(f, "usage:\n"
		   "  pgcordon serve --config FILE          run the gateway\n"
		   "  pgcordon --version                    print the version and the commit it was built from\n"
		   "  pgcordon check-config --config FILE   validate a config file\n"
		   "  pgcordon passwd [--user U] [--password P]\n"
		   "                                        print a SCRAM-SHA-256 verifier (reads the\n"
		   "                                        password from stdin when --password is absent)\n"
		   "  pgcordon apikey create NAME [--groups G1,G2] [--expires YYYY-MM-DD]\n"
		   "                                        make an API key: prints it once, and the config line\n"
		   "  pgcordon demo [--port N]              throwaway PostgreSQL with the gateway in front\n"
		   "  pgcordon sessions list|replay ...     read recorded sessions (pgcordon sessions --help)\n"
		   "  pgcordon audit verify|export ...      check the audit chain, export JSON Lines\n"
		   "  pgcordon approvals list|approve|deny ...\n"
		   "                                        decide held statements (pgcordon approvals --help)\n"
		   "  pgcordon grants request|list ...      ask for time-bound table access, list grants\n"
		   "  pgcordon mcp --connect CONNINFO       an MCP server on stdio for AI agents, querying\n"
		   "                                        through the gateway (pgcordon mcp --help)\n");
}

static const char *option(int argc, char **argv, const char *name)
{
	for (int i = 2; i < argc - 1; i++)
		if (strcmp(argv[i], name) == 0)
			return argv[i + 1];
	return NULL;
}

static bool only_options(int argc, char **argv, const char *const *allowed)
{
	for (int i = 2; i < argc; i += 2) {
		bool ok = false;
		for (const char *const *a = allowed; *a; a++)
			ok = ok || strcmp(argv[i], *a) == 0;
		if (!ok || i + 1 >= argc) {
			fprintf(stderr, "pgcordon %s: unexpected argument \"%s\"\n", argv[1], argv[i]);
			return false;
		}
	}
	return true;
}

static char *read_password(void)
{
	struct termios old, quiet;
	bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &old) == 0;
	if (tty) {
		fprintf(stderr, "Password: ");
		quiet = old;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
	}
	char buf[1024];
	char *line = fgets(buf, sizeof buf, stdin);
	if (tty) {
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
		fprintf(stderr, "\n");
	}
	if (!line)
		return NULL;
	buf[strcspn(buf, "\r\n")] = 0;
	return xstrdup(buf);
}

static int cmd_passwd(int argc, char **argv)
{
	static const char *const allowed[] = {"--user", "--password", NULL};
	if (!only_options(argc, argv, allowed))
		return 2;
	const char *user = option(argc, argv, "--user");
	const char *given = option(argc, argv, "--password");
	char *password = given ? xstrdup(given) : read_password();
	if (!password || !*password) {
		fprintf(stderr, "pgcordon passwd: empty password\n");
		free(password);
		return 1;
	}
	char *verifier = scram_make_verifier(password, SCRAM_DEFAULT_ITERATIONS);
	util_wipe_free(password);
	if (!verifier) {
		fprintf(stderr, "pgcordon passwd: cannot compute the verifier\n");
		return 1;
	}
	if (user)
		printf("%s: {password: \"%s\"}\n", user, verifier);
	else
		printf("%s\n", verifier);
	free(verifier);
	return 0;
}

static int cmd_apikey(int argc, char **argv)
{
	if (argc < 4 || strcmp(argv[2], "create") != 0) {
		fprintf(stderr, "usage: pgcordon apikey create NAME [--groups G1,G2] [--expires YYYY-MM-DD]\n");
		return 2;
	}
	const char *name = argv[3];
	const char *groups = NULL, *expires = NULL;
	for (int i = 4; i < argc; i += 2) {
		if (i + 1 >= argc || (strcmp(argv[i], "--groups") != 0 && strcmp(argv[i], "--expires") != 0)) {
			fprintf(stderr, "pgcordon apikey create: unexpected argument \"%s\"\n", argv[i]);
			return 2;
		}
		if (strcmp(argv[i], "--groups") == 0)
			groups = argv[i + 1];
		else
			expires = argv[i + 1];
	}
	for (const char *p = name; *p; p++) {
		if (!isalnum((unsigned char)*p) && !strchr("_-.@", *p)) {
			fprintf(stderr, "pgcordon apikey create: names are letters, digits, _ - . @\n");
			return 2;
		}
	}
	if (!*name || strlen(name) > 63) {
		fprintf(stderr, "pgcordon apikey create: names are 1-63 characters\n");
		return 2;
	}
	char key[64], hash[80];
	apikey_generate(key, sizeof key, hash, sizeof hash);
	printf("API key for %s (shown once, store it now):\n\n  %s\n\nAdd to the config under api_keys:\n\n  %s: {hash: \"%s\"",
	       name, key, name, hash);
	if (groups) {
		printf(", groups: [");
		for (const char *p = groups; *p; p++)
			fputs(*p == ',' ? ", " : (char[]){*p, 0}, stdout);
		printf("]");
	}
	if (expires)
		printf(", expires: %s", expires);
	printf("}\n\nClients connect with user=%s and the key as the password.\n", name);
	OPENSSL_cleanse(key, sizeof key);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	const char *cmd = argv[1];
	if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
		printf("pgcordon %s (commit %s)\n", PGCORDON_VERSION, pgcordon_commit);
		return 0;
	}
	static const char *const config_only[] = {"--config", NULL};
	if (strcmp(cmd, "serve") == 0 || strcmp(cmd, "check-config") == 0) {
		const char *path = option(argc, argv, "--config");
		if (!only_options(argc, argv, config_only) || !path) {
			usage(stderr);
			return 2;
		}
		return strcmp(cmd, "serve") == 0 ? serve_run(path) : serve_check_config(path);
	}
	if (strcmp(cmd, "passwd") == 0)
		return cmd_passwd(argc, argv);
	if (strcmp(cmd, "sessions") == 0 || strcmp(cmd, "audit") == 0)
		return audit_cmd_main(argc, argv);
	if (strcmp(cmd, "apikey") == 0)
		return cmd_apikey(argc, argv);
	if (strcmp(cmd, "approvals") == 0 || strcmp(cmd, "grants") == 0)
		return approvals_main(argc, argv);
	if (strcmp(cmd, "mcp") == 0)
		return mcp_cmd_main(argc, argv);
	if (strcmp(cmd, "demo") == 0) {
		static const char *const demo_opts[] = {"--port", NULL};
		if (!only_options(argc, argv, demo_opts))
			return 2;
		const char *port = option(argc, argv, "--port");
		return demo_run(argv[0], port ? atoi(port) : 6432);
	}
	fprintf(stderr, "pgcordon: unknown command \"%s\"\n", cmd);
	usage(stderr);
	return 2;
}
