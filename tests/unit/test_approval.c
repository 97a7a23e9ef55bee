/*
 * The approval table's memory bounds (src/approval/approval.c), without a store: a request
 * too large to hold, one requester's pending bytes, and a loop of cancelled requests that
 * must neither grow the table past APPROVAL_TABLE_BYTES nor crowd out other requesters nor
 * push out an approval still usable.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "approval/approval.h"
#include "config/config.h"
#include "core/log.h"

static const char config_text[] = "databases:\n  app: {host: h, user: u, password: p}\n"
				  "approvals: {approvers: [oncall]}\n"
				  "policies:\n  - name: everyone\n";

static Config *cfg;

static int setup(void **state)
{
	(void)state;
	char path[] = "/tmp/pgcordon-approval-XXXXXX", err[512];
	int fd = mkstemp(path);
	if (fd < 0 || write(fd, config_text, strlen(config_text)) != (ssize_t)strlen(config_text))
		return -1;
	close(fd);
	cfg = config_load(path, err, sizeof err);
	unlink(path);
	if (!cfg) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	if (!approval_start(cfg, NULL, NULL, err, sizeof err)) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	approval_stop();
	config_release(cfg);
	return 0;
}

/* A statement of n bytes, different each call (so that no digest repeats). */
static char *statement(size_t n)
{
	static unsigned serial;
	char *s = malloc(n + 1);
	assert_non_null(s);
	memset(s, 'x', n);
	char head[32];
	int h = snprintf(head, sizeof head, "SELECT %u --", serial++);
	memcpy(s, head, (size_t)h < n ? (size_t)h : n);
	s[n] = 0;
	return s;
}

static char last_digest[APPROVAL_DIGEST_LEN]; /* of the statement ask opened last */

static ApprovalOpen ask(const char *requester, ApprovalMode mode, size_t bytes, const char *params,
			char id[APPROVAL_ID_LEN])
{
	char *sql = statement(bytes);
	char *digest = last_digest;
	approval_digest(sql, params, digest);
	Decision why = {.kind = DEC_BLOCK, .policy = "everyone", .rule = "review"};
	snprintf(why.why, sizeof why.why, "test");
	ApprovalSettings settings;
	config_approval_settings(cfg, NULL, &settings); /* approvers: [oncall] */
	settings.mode = mode;
	ApprovalAsk a = {.requester = requester,
			 .database = "app",
			 .session_id = "",
			 .statement = sql,
			 .parameters = params,
			 .digest = digest,
			 .why = &why,
			 .settings = &settings};
	bool created = false;
	ApprovalOpen r = approval_open(&a, id, &created);
	assert_true(r != APPROVAL_OPENED || created);
	free(sql);
	return r;
}

static void test_too_large(void **state)
{
	(void)state;
	char id[APPROVAL_ID_LEN];
	assert_int_equal(ask("alice", APPROVAL_WAIT, APPROVAL_TEXT_MAX + 1, NULL, id), APPROVAL_TOO_LARGE);
	/* statement and parameters count together */
	char params[64];
	snprintf(params, sizeof params, "[\"%s\"]", "0123456789");
	assert_int_equal(ask("alice", APPROVAL_WAIT, APPROVAL_TEXT_MAX - 5, params, id), APPROVAL_TOO_LARGE);
	assert_int_equal(ask("alice", APPROVAL_WAIT, APPROVAL_TEXT_MAX, NULL, id), APPROVAL_OPENED);
	assert_int_equal(approval_cancel(id, "test"), APR_CANCELLED);
	assert_non_null(strstr(approval_refusal(APPROVAL_TOO_LARGE), "1 MiB"));
}

/* One requester's pending bytes are bounded; another requester is not held back by them. */
static void test_bytes_per_requester(void **state)
{
	(void)state;
	char ids[64][APPROVAL_ID_LEN], id[APPROVAL_ID_LEN];
	size_t each = APPROVAL_TEXT_MAX - APPROVAL_REQUEST_OVERHEAD - 64; /* and "[]" for no parameters */
	size_t fit = APPROVAL_BYTES_PER_REQUESTER / APPROVAL_TEXT_MAX;
	for (size_t i = 0; i < fit; i++)
		assert_int_equal(ask("bob", APPROVAL_WAIT, each, NULL, ids[i]), APPROVAL_OPENED);
	assert_int_equal(ask("bob", APPROVAL_WAIT, each, NULL, id), APPROVAL_FULL_MINE_BYTES);
	assert_int_equal(ask("carol", APPROVAL_WAIT, each, NULL, id), APPROVAL_OPENED);
	assert_int_equal(approval_cancel(id, "test"), APR_CANCELLED);
	/* once one of bob's ends, bob may ask again */
	assert_int_equal(approval_cancel(ids[0], "test"), APR_CANCELLED);
	assert_int_equal(ask("bob", APPROVAL_WAIT, each, NULL, ids[0]), APPROVAL_OPENED);
	for (size_t i = 0; i < fit; i++)
		assert_int_equal(approval_cancel(ids[i], "test"), APR_CANCELLED);
}

/*
 * 300 requests of 1 MiB, each cancelled at once (a client that cancels its held statement
 * in a loop): the table stays under its budget, every one of them opens, and an approval
 * still usable survives the churn.
 */
static void test_cancelled_requests_do_not_pile_up(void **state)
{
	(void)state;
	char kept[APPROVAL_ID_LEN], id[APPROVAL_ID_LEN], found[APPROVAL_ID_LEN];
	assert_int_equal(ask("dave", APPROVAL_RETRY, 1000, NULL, kept), APPROVAL_OPENED);
	char digest[APPROVAL_DIGEST_LEN];
	memcpy(digest, last_digest, sizeof digest);
	char *groups[] = {"oncall"};
	ApprovalCaller oncall = {.name = "erin", .groups = groups, .ngroups = 1};
	json_t *out = NULL;
	assert_int_equal(approval_decide(&oncall, kept, true, NULL, &out), 200);
	json_decref(out);
	assert_true(approval_find_usable("dave", "app", digest, found));

	size_t most = 0, count = 0;
	for (int i = 0; i < 300; i++) {
		assert_int_equal(ask("mallory", APPROVAL_WAIT, APPROVAL_TEXT_MAX - APPROVAL_REQUEST_OVERHEAD, NULL, id),
				 APPROVAL_OPENED);
		assert_int_equal(approval_cancel(id, "client left"), APR_CANCELLED);
		size_t bytes = approval_table_bytes(&count);
		if (bytes > most)
			most = bytes;
	}
	assert_true(most <= APPROVAL_TABLE_BYTES);
	assert_true(count < 300);
	/* someone else still gets in, and the approval is still there to use */
	assert_int_equal(ask("frank", APPROVAL_WAIT, 1000, NULL, id), APPROVAL_OPENED);
	assert_int_equal(approval_cancel(id, "test"), APR_CANCELLED);
	assert_int_equal(approval_status(kept, NULL, 0, NULL, 0), APR_APPROVED);
	assert_true(approval_find_usable("dave", "app", digest, found));
	assert_string_equal(found, kept);
}

int main(void)
{
	log_set_level(LOG_ERROR);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_too_large),
		cmocka_unit_test(test_bytes_per_requester),
		cmocka_unit_test(test_cancelled_requests_do_not_pile_up),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
