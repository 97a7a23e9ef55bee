/* The audit chain, the SQLite store and verification: tags, key evolution, tamper findings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <sqlite3.h>
#include <zstd.h>

#include "audit/chain.h"
#include "audit/report.h"
#include "audit/rungs.h"
#include "audit/store.h"
#include "config/config.h"
#include "core/jsonw.h"
#include "core/util.h"
#include <jansson.h>

static const uint8_t KEY[AUDIT_KEY_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
					   17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

static StoredRecord rec(int64_t seq, const char *body, const char *prev)
{
	StoredRecord r = {.node = "n1", .seq = seq, .time = "2026-11-22T10:00:00.000000Z", .kind = "statement",
			  .session_id = "s1", .user_name = "alice", .database = "app", .body = body, .prev_tag = prev};
	return r;
}

static void test_tag_covers_every_field(void **state)
{
	(void)state;
	char a[AUDIT_TAG_HEX], b[AUDIT_TAG_HEX];
	StoredRecord r = rec(1, "{\"sql\":\"select 1\"}", "");
	chain_tag(KEY, &r, a);
	chain_tag(KEY, &r, b);
	assert_string_equal(a, b);
	assert_int_equal(strlen(a), 64);
	const char **fields[] = {&r.node, &r.time, &r.kind, &r.session_id, &r.user_name, &r.database, &r.body, &r.prev_tag};
	for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
		const char *saved = *fields[i];
		*fields[i] = "x";
		chain_tag(KEY, &r, b);
		assert_string_not_equal(a, b);
		*fields[i] = saved;
	}
	r.seq = 2;
	chain_tag(KEY, &r, b);
	assert_string_not_equal(a, b);
	/* Length prefixes: moving a byte between fields changes the tag. */
	StoredRecord r2 = r, r3 = r;
	r2.user_name = "alicea";
	r2.database = "pp";
	r3.user_name = "alice";
	r3.database = "app";
	chain_tag(KEY, &r2, a);
	chain_tag(KEY, &r3, b);
	assert_string_not_equal(a, b);
}

/* Known answers (Python's hmac and hashlib): tags do not change with the implementation. */
static void test_tag_known_answer(void **state)
{
	(void)state;
	char t[AUDIT_TAG_HEX];
	StoredRecord r = rec(1, "{\"sql\":\"select 1\"}", "");
	chain_tag(KEY, &r, t);
	assert_string_equal(t, "72c5edf67d6ae07e338e498e74437a93784b505be9d5b2ce0ea8986549ee7366");
	r.body_len = strlen(r.body);
	chain_tag(KEY, &r, t);
	assert_string_equal(t, "72c5edf67d6ae07e338e498e74437a93784b505be9d5b2ce0ea8986549ee7366");
	/* Bodies that fill the hashing buffer, overflow it, and go past it whole. */
	static const struct {
		size_t n;
		const char *tag;
	} big[] = {
		{900, "ec95c5f2a900851ef9c5e45f8d2a5d23074f579e8240f9ac85abcbc2c8de9f63"},
		{1000, "95ceebd4e2a6533850dbca8ea1492d9d802c536a0483e148937f9e98060f75e4"},
		{5000, "cca4fe1086c000c9e3365a1fda5ffa8e5ec0a5976e99fbb386d98f6d4ed6605f"},
	};
	char prev[65], body[5100];
	memset(prev, 'b', 64);
	prev[64] = 0;
	for (size_t i = 0; i < sizeof big / sizeof *big; i++) {
		size_t n = big[i].n;
		memcpy(body, "{\"sql\":\"", 8);
		memset(body + 8, 'a', n);
		memcpy(body + 8 + n, "\"}", 3);
		StoredRecord rb = rec(1, body, prev);
		chain_tag(KEY, &rb, t);
		assert_string_equal(t, big[i].tag);
	}
	uint8_t k[AUDIT_KEY_LEN];
	memcpy(k, KEY, sizeof k);
	chain_next_key(k);
	char hex[2 * AUDIT_KEY_LEN + 1];
	for (int i = 0; i < AUDIT_KEY_LEN; i++)
		snprintf(hex + 2 * i, 3, "%02x", k[i]);
	assert_string_equal(hex, "ae216c2ef5247a3782c135efa279a3e4cdc61094270f5d2be58c6204b7a612c9");
}

static void test_key_evolves_one_way(void **state)
{
	(void)state;
	uint8_t k1[AUDIT_KEY_LEN], k3[AUDIT_KEY_LEN], step[AUDIT_KEY_LEN];
	chain_key_at(KEY, 1, k1);
	assert_memory_equal(k1, KEY, AUDIT_KEY_LEN);
	chain_key_at(KEY, 3, k3);
	memcpy(step, KEY, sizeof step);
	chain_next_key(step);
	assert_memory_not_equal(step, KEY, AUDIT_KEY_LEN);
	chain_next_key(step);
	assert_memory_equal(step, k3, AUDIT_KEY_LEN);
}

static void test_rungs_give_every_key(void **state)
{
	(void)state;
	KeyRungs r;
	rungs_init(&r, KEY);
	uint8_t k[AUDIT_KEY_LEN], want[AUDIT_KEY_LEN];
	int64_t end = 3 * KEY_RUNG + 5;
	assert_int_equal(rungs_walk_to(&r, end, k), end - 1);
	assert_int_equal(r.n, 4); /* key(1), key(1 + KEY_RUNG), ... key(1 + 3 KEY_RUNG) */
	chain_key_at(KEY, end, want);
	assert_memory_equal(k, want, AUDIT_KEY_LEN);
	const int64_t seqs[] = {1, 2, KEY_RUNG, KEY_RUNG + 1, KEY_RUNG + 2, 2 * KEY_RUNG + 1, end, end + 10};
	for (size_t i = 0; i < sizeof seqs / sizeof *seqs; i++) {
		int64_t steps = rungs_key_at(&r, seqs[i], k);
		chain_key_at(KEY, seqs[i], want);
		assert_memory_equal(k, want, AUDIT_KEY_LEN);
		assert_true(steps == (seqs[i] - 1) % KEY_RUNG || seqs[i] > 1 + 3 * KEY_RUNG);
	}
	rungs_free(&r);
}

static char rpath[64];

static KeyRungs rungs_from_file(const uint8_t *key, int want_rc)
{
	KeyRungs r;
	char err[300];
	rungs_init(&r, key);
	int rc = rungs_load(&r, rpath, err, sizeof err);
	if (rc != want_rc)
		fail_msg("rungs_load: %d (%s)", rc, rc < 0 ? err : "");
	return r;
}

static void save(KeyRungs *r)
{
	char err[300];
	if (!rungs_save(r, rpath, err, sizeof err))
		fail_msg("%s", err);
}

static size_t file_size(void)
{
	struct stat sb;
	return stat(rpath, &sb) == 0 ? (size_t)sb.st_size : 0;
}

/* Writes 4 rungs (3 lines), then edits the file with edit. */
static void written_then(void (*edit)(FILE *f, size_t size))
{
	KeyRungs r;
	uint8_t k[AUDIT_KEY_LEN];
	rungs_init(&r, KEY);
	rungs_walk_to(&r, 3 * KEY_RUNG + 1, k);
	unlink(rpath);
	save(&r);
	rungs_free(&r);
	if (edit) {
		FILE *f = fopen(rpath, "r+");
		assert_non_null(f);
		edit(f, file_size());
		fclose(f);
	}
}

static void alter_line_2(FILE *f, size_t size)
{
	(void)size;
	char line[200];
	assert_non_null(fgets(line, sizeof line, f));
	long at = ftell(f) + 20; /* line 2, inside its key */
	fseek(f, at, SEEK_SET);
	int c = fgetc(f);
	fseek(f, at, SEEK_SET);
	fputc(c == '0' ? '1' : '0', f);
}

static void tear_last_line(FILE *f, size_t size) { assert_int_equal(ftruncate(fileno(f), (off_t)size - 10), 0); }

static void add_garbage(FILE *f, size_t size)
{
	(void)size;
	fseek(f, 0, SEEK_END);
	fputs("not a rung\n", f);
}

/* Walks r (4 rungs) on to a fifth, saves, and reads the file back: all 5 there. */
static void append_fifth_rung(KeyRungs *r)
{
	uint8_t k[AUDIT_KEY_LEN];
	rungs_walk_to(r, 4 * KEY_RUNG + 1, k);
	save(r);
	rungs_free(r);
	KeyRungs back = rungs_from_file(KEY, 1);
	assert_int_equal(back.n, 5);
	rungs_free(&back);
}

static void test_rungs_file(void **state)
{
	(void)state;
	snprintf(rpath, sizeof rpath, "/tmp/pgc-unit-rungs-%d", (int)getpid());
	unlink(rpath);
	KeyRungs r = rungs_from_file(KEY, 0); /* none yet */
	assert_int_equal(r.n, 1);
	rungs_free(&r);

	written_then(NULL);
	struct stat sb;
	assert_int_equal(stat(rpath, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	size_t whole = file_size();
	{
		/* The keys are not in it as they are: a copy without the key file is no use. */
		uint8_t k2[AUDIT_KEY_LEN];
		char hex[2 * AUDIT_KEY_LEN + 1], text[1024] = {0};
		chain_key_at(KEY, KEY_RUNG + 1, k2);
		util_hex_encode(k2, AUDIT_KEY_LEN, hex);
		hex[2 * AUDIT_KEY_LEN] = 0;
		FILE *f = fopen(rpath, "r");
		assert_non_null(f);
		assert_true(fread(text, 1, sizeof text - 1, f) > 0);
		fclose(f);
		assert_null(strstr(text, hex));
		assert_non_null(strstr(text, "65537 "));
	}
	r = rungs_from_file(KEY, 1);
	assert_int_equal(r.n, 4);
	assert_int_equal(r.in_file, 4);
	uint8_t k[AUDIT_KEY_LEN], want[AUDIT_KEY_LEN];
	assert_int_equal(rungs_key_at(&r, 3 * KEY_RUNG + 3, k), 2);
	chain_key_at(KEY, 3 * KEY_RUNG + 3, want);
	assert_memory_equal(k, want, AUDIT_KEY_LEN);
	save(&r); /* nothing new: the file stays */
	assert_int_equal(file_size(), whole);
	append_fifth_rung(&r); /* one more rung is appended */

	/* A line that does not verify is not used, nor what follows; the next save rewrites them. */
	void (*edits[])(FILE *, size_t) = {alter_line_2, tear_last_line, add_garbage};
	const int64_t kept[] = {2, 3, 4};
	for (size_t i = 0; i < 3; i++) {
		written_then(edits[i]);
		r = rungs_from_file(KEY, -1);
		assert_int_equal(r.n, kept[i]);
		assert_true(r.file_stale);
		rungs_walk_to(&r, 3 * KEY_RUNG + 1, k);
		save(&r);
		assert_int_equal(file_size(), whole);
		rungs_free(&r);
		r = rungs_from_file(KEY, 1);
		assert_int_equal(r.n, 4);
		rungs_free(&r);
	}

	/* Another key's file: none of it verifies. */
	written_then(NULL);
	uint8_t other[AUDIT_KEY_LEN] = {9};
	r = rungs_from_file(other, -1);
	assert_int_equal(r.n, 1);
	rungs_key_at(&r, 5, k);
	chain_key_at(other, 5, want);
	assert_memory_equal(k, want, AUDIT_KEY_LEN);
	save(&r); /* cut to nothing: an empty chain's file */
	assert_int_equal(file_size(), 0);
	rungs_free(&r);

	/* Cut short by someone since it was read: written again whole, not padded with NULs. */
	written_then(NULL);
	r = rungs_from_file(KEY, 1);
	assert_int_equal(truncate(rpath, 10), 0);
	append_fifth_rung(&r);

	/* Many rungs: more lines than one write's buffer holds. */
	rungs_init(&r, KEY);
	rungs_walk_to(&r, 99 * (int64_t)KEY_RUNG + 1, k);
	unlink(rpath);
	save(&r);
	KeyRungs back = rungs_from_file(KEY, 1);
	assert_int_equal(back.n, 100);
	assert_memory_equal(back.key, r.key, 100 * AUDIT_KEY_LEN);
	rungs_free(&back);
	rungs_free(&r);

	/* Not a plain file: not used, not written. */
	unlink(rpath);
	assert_int_equal(mkdir(rpath, 0700), 0);
	r = rungs_from_file(KEY, -1);
	assert_true(r.file_failed);
	rungs_walk_to(&r, KEY_RUNG + 1, k);
	save(&r);
	rungs_free(&r);
	rmdir(rpath);
}

static char dbpath[64];

static void sql(const char *q)
{
	sqlite3 *db;
	assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
	int rc = sqlite3_exec(db, q, NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		fail_msg("%s: %s", q, sqlite3_errmsg(db));
	sqlite3_close(db);
}

static AuditStore *open_store(void)
{
	char url[80], err[300];
	snprintf(url, sizeof url, "sqlite:%s", dbpath);
	AuditStore *st = store_open(url, false, 0, err, sizeof err);
	if (!st)
		fail_msg("%s", err);
	return st;
}

static void new_path(void)
{
	snprintf(dbpath, sizeof dbpath, "/tmp/pgcordon-unit-audit-XXXXXX");
	int fd = mkstemp(dbpath);
	assert_true(fd >= 0);
	close(fd);
}

/* n chained records of node n1, as the gateway makes them; bodies {"n":i}. */
static void chain_records(int n, StoredRecord *recs, char (*tags)[AUDIT_TAG_HEX], char (*bodies)[64])
{
	uint8_t key[AUDIT_KEY_LEN];
	memcpy(key, KEY, sizeof key);
	for (int i = 0; i < n; i++) {
		snprintf(bodies[i], 64, "{\"n\":%d}", i + 1);
		recs[i] = rec(i + 1, bodies[i], i ? tags[i - 1] : "");
		chain_tag(key, &recs[i], tags[i]);
		recs[i].tag = tags[i];
		chain_next_key(key);
	}
}

/* A store with n chained records of node n1, in batches of 4 (seq 1-4, 5-8, 9-...). */
static AuditStore *make_store(int n)
{
	new_path();
	AuditStore *st = open_store();
	StoredRecord recs[32];
	char tags[32][AUDIT_TAG_HEX], bodies[32][64], err[300];
	assert_true(n <= 32);
	chain_records(n, recs, tags, bodies);
	for (int i = 0; i < n; i += 4) {
		assert_true(store_begin(st, err, sizeof err));
		if (!store_append(st, &recs[i], (size_t)(n - i < 4 ? n - i : 4), err, sizeof err))
			fail_msg("%s", err);
		assert_true(store_commit(st, err, sizeof err));
	}
	return st;
}

static int verify(AuditStore *st, VerifyResult *v)
{
	char err[300];
	KeyRungs keys;
	rungs_init(&keys, KEY);
	int rc = audit_verify(st, &keys, "n1", NULL, v, err, sizeof err);
	rungs_free(&keys);
	if (rc < 0)
		fail_msg("%s", err);
	return rc;
}

static void drop_store(AuditStore *st)
{
	store_close(st);
	unlink(dbpath);
	char side[80];
	snprintf(side, sizeof side, "%s-wal", dbpath);
	unlink(side);
	snprintf(side, sizeof side, "%s-shm", dbpath);
	unlink(side);
}

static void test_verify_intact_chain(void **state)
{
	(void)state;
	AuditStore *st = make_store(10);
	VerifyResult v;
	assert_int_equal(verify(st, &v), 1);
	assert_int_equal(v.records, 10);
	assert_int_equal(v.first_seq, 1);
	assert_int_equal(v.last_seq, 10);
	uint8_t wrong[AUDIT_KEY_LEN] = {0};
	KeyRungs keys;
	rungs_init(&keys, wrong);
	char err[300];
	assert_int_equal(audit_verify(st, &keys, "n1", NULL, &v, err, sizeof err), 0); /* another key: nothing verifies */
	rungs_free(&keys);
	drop_store(st);
}

/* Rewrites every batch as its plain text, which the store reads as well as zstd frames. */
static void unpack_all(void)
{
	sqlite3 *db;
	sqlite3_stmt *q, *u;
	assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT first_seq, records FROM audit_batches", -1, &q, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "UPDATE audit_batches SET records = ?2 WHERE first_seq = ?1", -1, &u, NULL),
			 SQLITE_OK);
	while (sqlite3_step(q) == SQLITE_ROW) {
		const void *blob = sqlite3_column_blob(q, 1);
		size_t n = (size_t)sqlite3_column_bytes(q, 1);
		unsigned long long size = ZSTD_getFrameContentSize(blob, n);
		assert_true(size != ZSTD_CONTENTSIZE_ERROR && size != ZSTD_CONTENTSIZE_UNKNOWN);
		char *text = malloc((size_t)size + 1);
		assert_int_equal(ZSTD_decompress(text, (size_t)size, blob, n), size);
		sqlite3_bind_int64(u, 1, sqlite3_column_int64(q, 0));
		sqlite3_bind_text(u, 2, text, (int)size, free);
		assert_int_equal(sqlite3_step(u), SQLITE_DONE);
		sqlite3_reset(u);
	}
	sqlite3_finalize(q);
	sqlite3_finalize(u);
	sqlite3_close(db);
}

/* Verify fails and its problem names seq= and word (the batches unpacked first: packed). */
static void expect_problem_in(bool packed, const char *tamper, const char *seq, const char *word)
{
	AuditStore *st = make_store(10);
	VerifyResult v;
	if (!packed) {
		unpack_all();
		assert_int_equal(verify(st, &v), 1); /* plain text reads and verifies the same */
	}
	sql(tamper);
	if (verify(st, &v) != 0)
		fail_msg("verify passed after: %s", tamper);
	if (!strstr(v.problem, seq) || !strstr(v.problem, word))
		fail_msg("after %s: expected %s and '%s' in: %s", tamper, seq, word, v.problem);
	drop_store(st);
}

static void expect_problem(const char *tamper, const char *seq, const char *word)
{
	expect_problem_in(false, tamper, seq, word);
}

#define SEQ6_PREFIX "{\"seq\":6,\"time\":\"2026-11-22T10:00:00.000000Z\",\"kind\":\"statement\",\"session_id\":\"s1\",\"user\":"

static void test_verify_names_altered_deleted_inserted(void **state)
{
	(void)state;
	/* Edits of the batch text, by hand and with SQLite's JSON functions (which re-minify it). */
	expect_problem("UPDATE audit_batches SET records = replace(records, '\"record\":{\"n\":4}', '\"record\":{\"n\":99}')",
		       "seq=4", "altered");
	expect_problem("UPDATE audit_batches SET records = json_set(records, '$[0].record.n', 99) WHERE first_seq = 9",
		       "seq=9", "altered");
	expect_problem("UPDATE audit_batches SET records = replace(records, '" SEQ6_PREFIX "\"alice\"', '" SEQ6_PREFIX
		       "\"mallory\"')",
		       "seq=6", "altered");
	expect_problem("UPDATE audit_batches SET records = json_remove(records, '$[1]') WHERE first_seq = 5", "seq=6",
		       "deleted");
	expect_problem("UPDATE audit_batches SET records = json_remove(records, '$[0]') WHERE first_seq = 5", "seq=5",
		       "deleted");
	expect_problem("DELETE FROM audit_batches WHERE first_seq = 5", "seq=5", "deleted");
	/* a "prune" without its prune record */
	expect_problem("UPDATE audit_batches SET records = json_remove(records, '$[0]', '$[0]', '$[0]') WHERE first_seq = 1",
		       "seq=3", "deleted");
	expect_problem("UPDATE audit_batches SET records = json_insert(records, '$[#]', json_set(records -> '$[1]',"
		       " '$.seq', 11, '$.record', json('{\"n\":11}'))) WHERE first_seq = 9",
		       "seq=11", "inserted");
	/* a batch that no longer parses (or decompresses): its first record is named */
	expect_problem_in(true, "UPDATE audit_batches SET records = substr(records, 1, 40) WHERE first_seq = 5", "seq=5",
			  "altered");
	expect_problem_in(true, "DELETE FROM audit_batches WHERE first_seq = 5", "seq=5", "deleted");
	expect_problem("UPDATE audit_batches SET records = substr(records, 1, 150) WHERE first_seq = 5", "seq=5", "altered");
	/* the batch's own prev_tag is the first record's link */
	expect_problem("UPDATE audit_batches SET prev_tag = 'x' WHERE first_seq = 5", "seq=5", "altered");
}

/* Reading the batches back: filters, the head, retention cuts. */
static bool count_cb(const StoredRecord *r, void *arg)
{
	(*(int *)arg)++;
	return r->seq != 7; /* stops after seq 7 */
}

static void test_scan_batches(void **state)
{
	(void)state;
	AuditStore *st = make_store(10);
	char err[300];
	int n = 0;
	StoreFilter f = {.from_seq = 3};
	assert_true(store_scan(st, &f, count_cb, &n, err, sizeof err));
	assert_int_equal(n, 5); /* 3..7 */
	n = 0;
	StoreFilter g = {.session_id = "s1", .kind = "statement", .limit = 2};
	assert_true(store_scan(st, &g, count_cb, &n, err, sizeof err));
	assert_int_equal(n, 2);
	n = 0;
	StoreFilter h = {.session_id = "nope"};
	assert_true(store_scan(st, &h, count_cb, &n, err, sizeof err));
	assert_int_equal(n, 0);
	int64_t seq;
	char tag[AUDIT_TAG_HEX];
	assert_true(store_head(st, "n1", &seq, tag, err, sizeof err));
	assert_int_equal(seq, 10);
	/* retention cuts at a batch end */
	assert_true(store_last_before(st, "n1", "2027", &seq, tag, err, sizeof err));
	assert_int_equal(seq, 10);
	assert_true(store_begin(st, err, sizeof err));
	assert_true(store_delete_through(st, "n1", 8, err, sizeof err));
	assert_true(store_commit(st, err, sizeof err));
	n = 0;
	StoreFilter all = {0};
	assert_true(store_scan(st, &all, count_cb, &n, err, sizeof err));
	assert_int_equal(n, 2); /* 9, 10 */
	drop_store(st);
}

/* A file of the earlier layout (a row per record) is read as it is and converted for writing. */
static void test_upgrade_earlier_layout(void **state)
{
	(void)state;
	new_path();
	StoredRecord recs[6];
	char tags[6][AUDIT_TAG_HEX], bodies[6][64];
	chain_records(6, recs, tags, bodies);
	sqlite3 *db;
	assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db,
				      "CREATE TABLE audit_records (seq INTEGER PRIMARY KEY, node TEXT NOT NULL, time TEXT NOT NULL,"
				      " kind TEXT NOT NULL, session_id TEXT NOT NULL, user_name TEXT NOT NULL, database TEXT NOT NULL,"
				      " body TEXT NOT NULL, prev_tag TEXT NOT NULL, tag TEXT NOT NULL)",
				      NULL, NULL, NULL),
			 SQLITE_OK);
	for (int i = 0; i < 6; i++) {
		char *q = sqlite3_mprintf("INSERT INTO audit_records VALUES (%lld, %Q, %Q, %Q, %Q, %Q, %Q, %Q, %Q, %Q)",
					  (long long)recs[i].seq, recs[i].node, recs[i].time, recs[i].kind, recs[i].session_id,
					  recs[i].user_name, recs[i].database, recs[i].body, recs[i].prev_tag, recs[i].tag);
		assert_int_equal(sqlite3_exec(db, q, NULL, NULL, NULL), SQLITE_OK);
		sqlite3_free(q);
	}
	sqlite3_close(db);
	AuditStore *st = open_store();
	VerifyResult v;
	assert_int_equal(verify(st, &v), 1);
	assert_int_equal(v.records, 6);
	char err[300];
	assert_false(store_append(st, recs, 1, err, sizeof err)); /* not written as it is */
	assert_true(store_upgrade(st, err, sizeof err));
	assert_int_equal(verify(st, &v), 1);
	assert_int_equal(v.records, 6);
	assert_string_equal(v.head_tag, tags[5]);
	store_close(st);
	st = open_store();
	assert_int_equal(verify(st, &v), 1);
	assert_int_equal(v.records, 6);
	int64_t seq;
	char tag[AUDIT_TAG_HEX];
	assert_true(store_head(st, "n1", &seq, tag, err, sizeof err));
	assert_int_equal(seq, 6);
	assert_string_equal(tag, tags[5]);
	drop_store(st);
}

/* User and database names that need escaping, or are not UTF-8, come back byte for byte. */
static void test_batch_strings_round_trip(void **state)
{
	(void)state;
	new_path();
	AuditStore *st = open_store();
	StoredRecord r = rec(1, "{\"x\":\"\\u00e9\\n\"}", "");
	r.user_name = "quote\" back\\slash \t tab \xc3\xa9";
	r.database = "not utf-8 \xff\xfe";
	char tag[AUDIT_TAG_HEX], err[300];
	chain_tag(KEY, &r, tag);
	r.tag = tag;
	assert_true(store_begin(st, err, sizeof err));
	assert_true(store_append(st, &r, 1, err, sizeof err));
	assert_true(store_commit(st, err, sizeof err));
	VerifyResult v;
	assert_int_equal(verify(st, &v), 1);
	assert_int_equal(v.records, 1);
	drop_store(st);
}

static void test_since(void **state)
{
	(void)state;
	char out[AUDIT_TIME_LEN];
	assert_true(audit_parse_since("2026-11-01", out));
	assert_string_equal(out, "2026-11-01");
	assert_true(audit_parse_since("2026-11-01 08:00:00Z", out));
	assert_string_equal(out, "2026-11-01T08:00:00");
	assert_true(audit_parse_since("30m", out));
	assert_int_equal(strlen(out), 27);
	assert_false(audit_parse_since("yesterday", out));
	assert_false(audit_parse_since("2026-11-01'; DROP", out));
	int64_t s;
	assert_true(config_parse_period_s("90d", &s));
	assert_int_equal(s, 90 * 86400);
	assert_false(config_parse_period_s("5w", &s));
	assert_false(config_parse_period_s("-1d", &s));
}

/* text as JSON; the test fails, showing the text, when it is not. */
static json_t *parse_json(const char *text)
{
	json_error_t e;
	json_t *j = json_loads(text, 0, &e);
	if (!j)
		fail_msg("invalid JSON %s: %s", text, e.text);
	return j;
}

static void test_json_writer(void **state)
{
	(void)state;
	JsonW w;
	jw_init(&w);
	jw_begin_object(&w);
	jw_key(&w, "s");
	jw_string(&w, "quote \" backslash \\ newline \n tab \t bell \a Ã©");
	jw_key(&w, "bad");
	jw_text(&w, (const uint8_t *)"\xff" "\0" "a", 3, false);
	jw_key(&w, "bin");
	jw_text(&w, (const uint8_t *)"ok", 2, true);
	jw_key(&w, "list");
	jw_begin_array(&w);
	jw_int(&w, -5);
	jw_null(&w);
	jw_bool(&w, true);
	jw_fixed3(&w, 1500);
	jw_begin_array(&w);
	jw_end_array(&w);
	jw_raw(&w, "{\"x\":1}", 7);
	jw_end_array(&w);
	jw_key(&w, "none");
	jw_string(&w, NULL);
	JW_KEY(&w, "plain");
	jw_int(&w, 7);
	jw_end_object(&w);
	char *text = jw_take(&w);
	json_t *j = parse_json(text);
	assert_string_equal(json_string_value(json_object_get(j, "s")),
			    "quote \" backslash \\ newline \n tab \t bell \a Ã©");
	assert_string_equal(json_string_value(json_object_get(json_object_get(j, "bad"), "hex")), "ff0061");
	assert_string_equal(json_string_value(json_object_get(json_object_get(j, "bin"), "hex")), "6f6b");
	assert_int_equal(json_array_size(json_object_get(j, "list")), 6);
	assert_int_equal(json_integer_value(json_array_get(json_object_get(j, "list"), 0)), -5);
	assert_true(json_real_value(json_array_get(json_object_get(j, "list"), 3)) == 1.5);
	assert_true(json_is_null(json_object_get(j, "none")));
	assert_int_equal(json_integer_value(json_object_get(j, "plain")), 7);
	json_decref(j);
	free(text);
	/* Overlong forms and surrogates are not UTF-8. */
	assert_false(jw_valid_utf8((const uint8_t *)"\xc0\xaf", 2));
	assert_false(jw_valid_utf8((const uint8_t *)"\xed\xa0\x80", 3));
	assert_false(jw_valid_utf8((const uint8_t *)"\xe2\x82", 2));
	assert_true(jw_valid_utf8((const uint8_t *)"\xf0\x9f\x98\x80", 4));
	/* Numbers are written by hand (no printf on the hot path). */
	jw_init(&w);
	jw_begin_array(&w);
	jw_int(&w, INT64_MIN);
	jw_int(&w, 0);
	jw_fixed3(&w, 7);
	jw_fixed3(&w, -1234567);
	jw_fixed3(&w, 0);
	jw_end_array(&w);
	text = jw_take(&w);
	assert_string_equal(text, "[-9223372036854775808,0,0.007,-1234.567,0.000]");
	free(text);
}

/* Every special byte at every offset of the 8-byte scan (and its tail) comes back as written. */
static void test_json_writer_fast_path(void **state)
{
	(void)state;
	static const char *const specials[] = {"\x01", "\x1f", "\"", "\\", "\x7f", "\xc3\xa9", "\xe2\x82\xac", " ", "~"};
	for (size_t k = 0; k < sizeof specials / sizeof *specials; k++) {
		for (size_t at = 0; at <= 19; at++) {
			char text[64];
			memset(text, 'a', 19);
			memcpy(text + at, specials[k], strlen(specials[k]));
			size_t n = at + strlen(specials[k]) > 19 ? at + strlen(specials[k]) : 19;
			text[n] = 0;
			JsonW w;
			jw_init(&w);
			jw_begin_array(&w);
			jw_text(&w, (const uint8_t *)text, n, false);
			jw_end_array(&w);
			char *json = jw_take(&w);
			json_t *j = parse_json(json);
			assert_string_equal(json_string_value(json_array_get(j, 0)), text);
			json_decref(j);
			free(json);
		}
	}
	/* Bytes that are not UTF-8 text (NUL, a lone continuation byte, 0xff) still become hex. */
	static const char *const bad[] = {"abcdefgh\0ijk", "abcdefghij\x80k", "\xff"};
	static const size_t bad_len[] = {13, 12, 1};
	for (size_t k = 0; k < 3; k++) {
		JsonW w;
		jw_init(&w);
		jw_text(&w, (const uint8_t *)bad[k], bad_len[k], false);
		char *json = jw_take(&w);
		assert_non_null(strstr(json, "{\"hex\":"));
		free(json);
	}
}

/* The head of a cut text: at most cap bytes, never part of a character; short texts whole. */
static void test_json_writer_cut(void **state)
{
	(void)state;
	/* "ab" then a 2-, a 3- and a 4-byte character: cut at each byte of the last three. */
	const char text[] = "ab\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
	const size_t n = sizeof text - 1;
	static const size_t head_at[] = {2, 2, 4, 4, 4, 7, 7, 7, 7};
	for (size_t cap = 2; cap < n; cap++) {
		JsonW w;
		jw_init(&w);
		jw_text_cut(&w, (const uint8_t *)text, n, false, cap, NULL);
		char *json = jw_take(&w);
		json_t *j = parse_json(json);
		size_t want = head_at[cap - 2];
		assert_int_equal(strlen(json_string_value(json_object_get(j, "head"))), want);
		assert_memory_equal(json_string_value(json_object_get(j, "head")), text, want);
		assert_int_equal(json_integer_value(json_object_get(j, "bytes")), n);
		char sha[65];
		util_sha256_hex(text, n, sha);
		assert_string_equal(json_string_value(json_object_get(j, "sha256")), sha);
		json_decref(j);
		free(json);
	}
	/* No cap, or a text that fits: jw_text. A binary head is cut at the byte, as hex. */
	JsonW w;
	jw_init(&w);
	jw_begin_array(&w);
	jw_text_cut(&w, (const uint8_t *)text, n, false, 0, NULL);
	jw_text_cut(&w, (const uint8_t *)text, n, false, n, NULL);
	jw_text_cut(&w, (const uint8_t *)text, n, true, 3, "given");
	jw_end_array(&w);
	char *json = jw_take(&w);
	json_t *j = parse_json(json);
	assert_string_equal(json_string_value(json_array_get(j, 0)), text);
	assert_string_equal(json_string_value(json_array_get(j, 1)), text);
	json_t *cut = json_array_get(j, 2);
	assert_string_equal(json_string_value(json_object_get(json_object_get(cut, "head"), "hex")), "6162c3");
	assert_string_equal(json_string_value(json_object_get(cut, "sha256")), "given");
	json_decref(j);
	free(json);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_json_writer_fast_path),
		cmocka_unit_test(test_json_writer_cut),
		cmocka_unit_test(test_tag_covers_every_field),
		cmocka_unit_test(test_tag_known_answer),
		cmocka_unit_test(test_key_evolves_one_way),
		cmocka_unit_test(test_rungs_give_every_key),
		cmocka_unit_test(test_rungs_file),
		cmocka_unit_test(test_verify_intact_chain),
		cmocka_unit_test(test_verify_names_altered_deleted_inserted),
		cmocka_unit_test(test_scan_batches),
		cmocka_unit_test(test_upgrade_earlier_layout),
		cmocka_unit_test(test_batch_strings_round_trip),
		cmocka_unit_test(test_since),
		cmocka_unit_test(test_json_writer),
	};
	int failed = cmocka_run_group_tests(tests, NULL, NULL);
	chain_release_thread();
	return failed;
}
