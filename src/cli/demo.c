/* pgcordon demo: initdb a scratch cluster, load sample data, write a config, serve. */
#include "cli/demo.h"

#include <errno.h>
#include <glob.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/apikey.h"
#include "auth/scram.h"
#include "cli/serve.h"
#include "core/util.h"

static const char sample_sql[] =
	"CREATE ROLE pgcordon_gateway LOGIN PASSWORD '%s';\n"
	"CREATE DATABASE app OWNER pgcordon_gateway;\n"
	"\\c app\n"
	"SET ROLE pgcordon_gateway;\n"
	"CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text, ssn text,\n"
	"                        credit_card text, created_at timestamptz DEFAULT now());\n"
	"INSERT INTO customers (name, email, ssn, credit_card) VALUES\n"
	"  ('Ada Lovelace', 'ada@example.com', '123-45-6789', '4111 1111 1111 1111'),\n"
	"  ('Alan Turing', 'alan@example.com', '987-65-4321', '5500 0000 0000 0004'),\n"
	"  ('Grace Hopper', 'grace@example.com', '111-22-3333', '3400 0000 0000 009');\n"
	"CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers,\n"
	"                     amount numeric(10,2), placed_at timestamptz DEFAULT now());\n"
	"INSERT INTO orders (customer_id, amount) SELECT 1 + i %% 3, (i * 7.5)::numeric(10,2)\n"
	"  FROM generate_series(1, 1000) i;\n";

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int run(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	int rc = system(cmd);
	return rc == -1 ? -1 : WEXITSTATUS(rc);
}

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof a;
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	return ntohs(a.sin_port);
}

static bool find_bindir(char *out, size_t outlen)
{
	glob_t g;
	if (glob("/usr/lib/postgresql/*/bin/initdb", 0, NULL, &g) != 0)
		return false;
	/* The highest version sorts last. */
	snprintf(out, outlen, "%s", g.gl_pathv[g.gl_pathc - 1]);
	globfree(&g);
	out[strlen(out) - strlen("/initdb")] = 0;
	return true;
}

int demo_run(const char *self, int port)
{
	char bindir[256], dir[] = "/tmp/pgcordon-demo-XXXXXX";
	if (!find_bindir(bindir, sizeof bindir)) {
		fprintf(stderr, "pgcordon demo: no PostgreSQL server binaries under /usr/lib/postgresql "
				"(run scripts/deps.sh)\n");
		return 1;
	}
	if (!mkdtemp(dir)) {
		fprintf(stderr, "pgcordon demo: mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	/* PostgreSQL refuses to run as root: hand the cluster to the postgres user. */
	const char *as = "";
	if (geteuid() == 0) {
		struct passwd *pw = getpwnam("postgres");
		if (!pw) {
			fprintf(stderr, "pgcordon demo: running as root needs a 'postgres' user\n");
			return 1;
		}
		if (chown(dir, pw->pw_uid, pw->pw_gid) != 0) {
			fprintf(stderr, "pgcordon demo: chown: %s\n", strerror(errno));
			return 1;
		}
		as = "runuser -u postgres -- ";
	}
	int pgport = free_port();
	uint8_t raw[18];
	char secret[32];
	util_random(raw, sizeof raw);
	util_b64_encode(raw, sizeof raw, secret);
	for (char *p = secret; *p; p++)
		if (*p == '/' || *p == '+')
			*p = 'x';

	printf("pgcordon demo: starting PostgreSQL in %s on port %d ...\n", dir, pgport);
	fflush(stdout);
	if (run("%s%s/initdb -D %s/data -A scram-sha-256 --auth-local=trust -U postgres >%s/initdb.log 2>&1", as,
		bindir, dir, dir) != 0 ||
	    run("%s%s/pg_ctl -D %s/data -l %s/postgres.log -o \"-p %d -k %s -c listen_addresses=127.0.0.1\" -w start >/dev/null",
		as, bindir, dir, dir, pgport, dir) != 0) {
		fprintf(stderr, "pgcordon demo: PostgreSQL did not start; see %s/*.log\n", dir);
		return 1;
	}
	char path[300];
	snprintf(path, sizeof path, "%s/sample.sql", dir);
	FILE *f = fopen(path, "w");
	if (!f)
		return 1;
	fprintf(f, sample_sql, secret);
	fclose(f);
	int rc = run("%s%s/psql -X -q -v ON_ERROR_STOP=1 -h %s -p %d -U postgres -d postgres -f %s >/dev/null", as,
		     bindir, dir, pgport, path);
	char *alice = scram_make_verifier("alice-demo-password", SCRAM_DEFAULT_ITERATIONS);
	char *agent = scram_make_verifier("agent-demo-password", SCRAM_DEFAULT_ITERATIONS);
	/* The web console's sign-in: an approver who may also read the audit trail. */
	char console_key[64], console_hash[80];
	apikey_generate(console_key, sizeof console_key, console_hash, sizeof console_hash);
	int admin_port = free_port();
	snprintf(path, sizeof path, "%s/pgcordon.yaml", dir);
	f = rc == 0 && admin_port > 0 ? fopen(path, "w") : NULL;
	if (!f) {
		fprintf(stderr, "pgcordon demo: loading sample data failed\n");
		run("%s%s/pg_ctl -D %s/data -m fast stop >/dev/null", as, bindir, dir);
		return 1;
	}
	fprintf(f,
		"# Written by pgcordon demo.\n"
		"listen: {address: 127.0.0.1, port: %d, workers: 2}\n"
		"audit: {store: \"sqlite:%s/audit.db\"}\n"
		"admin: {address: 127.0.0.1, port: %d, auditors: [security]}\n"
		"approvals: {approvers: [security], mode: wait, wait: 10m}\n"
		"api_keys:\n"
		"  console: {hash: \"%s\", groups: [security]}\n"
		"databases:\n"
		"  app: {host: 127.0.0.1, port: %d, dbname: app, user: pgcordon_gateway, password: \"%s\"}\n"
		"users:\n"
		"  alice: {password: \"%s\", groups: [analysts]}\n"
		"  agent: {password: \"%s\", groups: [agents]}\n"
		"policies:\n"
		"  - name: everyone\n"
		"    block:\n"
		"      - statements: [drop_database, alter_system, copy_to_program, copy_from_program]\n"
		"  - name: analysts\n"
		"    match: {groups: [analysts]}\n"
		"    block:\n"
		"      - delete_without_where: true\n"
		"      - update_without_where: true\n"
		"  - name: agents\n"
		"    match: {groups: [agents]}\n"
		"    access: {read_only: true, tables: [public.orders, public.customers]}\n"
		"    block:\n"
		"      - functions: [pg_read_file, pg_sleep]\n"
		"      - select_without_where: [public.customers]\n"
		"    review:\n"
		"      - statements: [copy_to]\n"
		"    limits: {max_rows: 100, statement_timeout: 30s}\n",
		port, dir, admin_port, console_hash, pgport, secret, alice, agent);
	fclose(f);
	chmod(path, 0600);
	free(alice);
	free(agent);

	printf("\npgcordon demo is up. The database password stays inside the gateway.\n\n"
	       "  as a human:  psql \"host=127.0.0.1 port=%d dbname=app user=alice password=alice-demo-password\"\n"
	       "  as an agent: PGPASSWORD=agent-demo-password psql -h 127.0.0.1 -p %d -U agent app\n\n"
	       "The agent is read-only, limited to orders and customers, 100 rows a statement:\n"
	       "  SELECT count(*) FROM orders;              -- allowed\n"
	       "  SELECT name FROM customers WHERE id = 1;  -- allowed\n"
	       "  SELECT * FROM customers;                  -- refused: no WHERE\n"
	       "  SELECT * FROM orders;                     -- cut off after 100 rows\n"
	       "  DELETE FROM orders WHERE id = 1;          -- refused: read-only\n"
	       "  COPY (SELECT id, amount FROM orders WHERE id <= 5) TO STDOUT;  -- waits for a human\n\n"
	       "Approve or deny it in the web console, which also shows every session and statement:\n"
	       "  http://127.0.0.1:%d/   sign in with the API key %s\n\n"
	       "The same agent as an MCP tool for an AI agent host (docs/mcp.md), under the same rules:\n"
	       "  PGPASSWORD=agent-demo-password %s mcp --connect \"host=127.0.0.1 port=%d dbname=app user=agent\"\n\n"
	       "Everything is recorded, outside the database:\n"
	       "  pgcordon sessions list --config %s\n"
	       "  pgcordon sessions replay SESSION_ID --config %s\n"
	       "  pgcordon audit verify --config %s\n\n"
	       "config: %s   (Ctrl-C stops the gateway and removes the throwaway database)\n\n",
	       port, port, admin_port, console_key, self, port, path, path, path, path);
	fflush(stdout);
	rc = serve_run(path);
	run("%s%s/pg_ctl -D %s/data -m fast stop >/dev/null 2>&1", as, bindir, dir);
	run("rm -rf %s", dir);
	return rc;
}
