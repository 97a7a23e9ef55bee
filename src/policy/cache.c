/* Per-worker facts cache with LRU eviction and decision memos. */
#include "policy/cache.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "core/sql_parse.h"
#include "core/util.h"

#define MEMO_SLOTS 4
#define MAX_CACHED_TEXT 8192
/* Texts cached are parsed on the caller's stack: a parse that could not run (53000, no
 * thread for it) never happens to them, so it is never remembered. */
_Static_assert(MAX_CACHED_TEXT <= SQL_PARSE_INLINE_MAX, "cached texts must be parsed inline");

struct CachedFacts {
	int refs;
	QueryFacts *facts;
	bool has_execute; /* decisions depend on session state: never memoized */
	struct {
		uint64_t policy_id;
		Decision decision;
	} memo[MEMO_SLOTS];
	int memo_next;
};

typedef struct Entry {
	char *key; /* first byte: 'E' exact or 'F' folded, then the text */
	size_t keylen;
	uint64_t hash;
	CachedFacts *value;
	struct Entry *hnext;           /* hash chain */
	struct Entry *lru_prev, *lru_next;
} Entry;

struct FactsCache {
	Entry **buckets;
	int nbuckets;
	int count;
	int capacity;
	Entry *lru_head, *lru_tail; /* head: most recent */
	CacheStats stats;
};

static uint64_t hash_bytes(const char *p, size_t n)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)p[i];
		h *= 1099511628211ULL;
	}
	return h;
}

FactsCache *facts_cache_new(int capacity)
{
	FactsCache *c = xcalloc(1, sizeof *c);
	c->capacity = capacity;
	c->nbuckets = 1;
	while (c->nbuckets < capacity * 2)
		c->nbuckets <<= 1;
	c->buckets = xcalloc((size_t)c->nbuckets, sizeof *c->buckets);
	return c;
}

void cached_facts_ref(CachedFacts *e) { e->refs++; }

void cached_facts_release(CachedFacts *e)
{
	if (e && --e->refs == 0) {
		inspect_free(e->facts);
		free(e);
	}
}

const QueryFacts *cached_facts(const CachedFacts *e) { return e->facts; }

const CacheStats *facts_cache_stats(const FactsCache *c) { return &c->stats; }

static void lru_unlink(FactsCache *c, Entry *e)
{
	if (e->lru_prev)
		e->lru_prev->lru_next = e->lru_next;
	else
		c->lru_head = e->lru_next;
	if (e->lru_next)
		e->lru_next->lru_prev = e->lru_prev;
	else
		c->lru_tail = e->lru_prev;
	e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(FactsCache *c, Entry *e)
{
	e->lru_next = c->lru_head;
	e->lru_prev = NULL;
	if (c->lru_head)
		c->lru_head->lru_prev = e;
	c->lru_head = e;
	if (!c->lru_tail)
		c->lru_tail = e;
}

static void remove_entry(FactsCache *c, Entry *e)
{
	Entry **pp = &c->buckets[e->hash & (uint64_t)(c->nbuckets - 1)];
	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	lru_unlink(c, e);
	cached_facts_release(e->value);
	free(e->key);
	free(e);
	c->count--;
}

void facts_cache_free(FactsCache *c)
{
	if (!c)
		return;
	while (c->lru_head)
		remove_entry(c, c->lru_head);
	free(c->buckets);
	free(c);
}

static Entry *cache_lookup(FactsCache *c, const char *key, size_t keylen, uint64_t h)
{
	for (Entry *e = c->buckets[h & (uint64_t)(c->nbuckets - 1)]; e; e = e->hnext) {
		if (e->hash == h && e->keylen == keylen && memcmp(e->key, key, keylen) == 0) {
			if (c->lru_head != e) {
				lru_unlink(c, e);
				lru_push_front(c, e);
			}
			return e;
		}
	}
	return NULL;
}

static void insert(FactsCache *c, const char *key, size_t keylen, uint64_t h, CachedFacts *v)
{
	if (c->count >= c->capacity)
		remove_entry(c, c->lru_tail);
	Entry *e = xcalloc(1, sizeof *e);
	e->key = xmalloc(keylen);
	memcpy(e->key, key, keylen);
	e->keylen = keylen;
	e->hash = h;
	e->value = v;
	cached_facts_ref(v);
	size_t b = h & (uint64_t)(c->nbuckets - 1);
	e->hnext = c->buckets[b];
	c->buckets[b] = e;
	lru_push_front(c, e);
	c->count++;
}

bool facts_fold_numbers(const char *sql, size_t len, char *out, size_t outlen, size_t *outn)
{
	size_t o = 0;
	size_t i = 0;
	out[o++] = 'F';
	while (i < len) {
		char ch = sql[i];
		if (o + 2 >= outlen)
			return false;
		if (ch == '\\' || ch == '$' || ch == '\0')
			return false; /* escapes, dollar quotes and parameters: keep it simple, do not fold */
		if (ch == '\'' || ch == '"') {
			/* A standard string or quoted identifier, copied verbatim ('' and "" are escapes). */
			if (ch == '\'' && i > 0 && (sql[i - 1] == 'E' || sql[i - 1] == 'e' || sql[i - 1] == '&'))
				return false;
			char q = ch;
			out[o++] = sql[i++];
			for (;;) {
				if (i >= len)
					return false;
				if (o + 2 >= outlen)
					return false;
				out[o++] = sql[i];
				if (sql[i] == q) {
					if (i + 1 < len && sql[i + 1] == q) {
						out[o++] = sql[++i];
						i++;
						continue;
					}
					i++;
					break;
				}
				i++;
			}
			continue;
		}
		if (ch == '-' && i + 1 < len && sql[i + 1] == '-')
			return false; /* comments: not worth the risk */
		if (ch == '/' && i + 1 < len && sql[i + 1] == '*')
			return false;
		if (isalpha((unsigned char)ch) || ch == '_' || (unsigned char)ch >= 0x80) {
			while (i < len && (isalnum((unsigned char)sql[i]) || sql[i] == '_' || (unsigned char)sql[i] >= 0x80)) {
				if (o + 2 >= outlen)
					return false;
				out[o++] = sql[i++];
			}
			continue;
		}
		if (isdigit((unsigned char)ch) || (ch == '.' && i + 1 < len && isdigit((unsigned char)sql[i + 1]))) {
			while (i < len && (isdigit((unsigned char)sql[i]) || sql[i] == '.'))
				i++;
			if (i < len && (sql[i] == 'e' || sql[i] == 'E')) {
				size_t j = i + 1;
				if (j < len && (sql[j] == '+' || sql[j] == '-'))
					j++;
				if (j < len && isdigit((unsigned char)sql[j])) {
					i = j;
					while (i < len && isdigit((unsigned char)sql[i]))
						i++;
				}
			}
			out[o++] = '?';
			continue;
		}
		out[o++] = sql[i++];
	}
	*outn = o;
	return true;
}

/* Facts whose meaning cannot change with the value of a number. */
static bool foldable(const QueryFacts *q)
{
	static const char *const safe[] = {"select", "insert", "update", "delete", "merge", "transaction", NULL};
	if (q->error)
		return false;
	for (int i = 0; i < q->nstmts; i++) {
		const StatementFacts *f = &q->stmts[i];
		if (f->timeout_ms != TIMEOUT_NOT_SET || f->execute_name || f->prepare_name)
			return false;
		for (int k = 0; k < f->kinds.n; k++) {
			bool ok = false;
			for (const char *const *s = safe; *s && !ok; s++)
				ok = strcmp(*s, f->kinds.items[k]) == 0;
			if (!ok)
				return false;
		}
	}
	return true;
}

QueryFacts *facts_of_text(const char *sql, size_t len)
{
	/* A NUL inside the text would cut what the parser sees from what the server runs. */
	if (memchr(sql, 0, len)) {
		QueryFacts *q = xcalloc(1, sizeof *q);
		q->error = xstrdup("statement text contains a NUL byte");
		return q;
	}
	char *text = xmalloc(len + 1);
	memcpy(text, sql, len);
	text[len] = 0;
	QueryFacts *q = inspect_sql(text);
	free(text);
	return q;
}

CachedFacts *cached_facts_adopt(QueryFacts *facts)
{
	CachedFacts *v = xcalloc(1, sizeof *v);
	v->refs = 1;
	v->facts = facts;
	for (int i = 0; i < facts->nstmts; i++)
		v->has_execute = v->has_execute || facts->stmts[i].execute_name;
	return v;
}

CachedFacts *facts_cache_get(FactsCache *c, const char *sql, size_t len)
{
	bool cacheable = len <= MAX_CACHED_TEXT;
	char exact[MAX_CACHED_TEXT + 2];
	size_t exact_len = len + 1;
	uint64_t he = 0;
	if (cacheable) {
		exact[0] = 'E';
		memcpy(exact + 1, sql, len);
		he = hash_bytes(exact, exact_len);
		Entry *e = cache_lookup(c, exact, exact_len, he);
		if (e) {
			c->stats.hits_exact++;
			cached_facts_ref(e->value);
			return e->value;
		}
	}
	char folded[MAX_CACHED_TEXT + 2];
	size_t folded_len = 0;
	bool can_fold = cacheable && facts_fold_numbers(sql, len, folded, sizeof folded, &folded_len);
	uint64_t hf = can_fold ? hash_bytes(folded, folded_len) : 0;
	if (can_fold) {
		Entry *e = cache_lookup(c, folded, folded_len, hf);
		if (e) {
			c->stats.hits_folded++;
			/* Not remembered under the exact text: texts that differ only in literals would
			 * churn the cache (evicting other statements) for nothing. */
			cached_facts_ref(e->value);
			return e->value;
		}
	}
	c->stats.misses++;
	CachedFacts *v = cached_facts_adopt(facts_of_text(sql, len));
	if (cacheable) {
		insert(c, exact, exact_len, he, v);
		if (can_fold && foldable(v->facts))
			insert(c, folded, folded_len, hf, v);
	}
	return v;
}

const Decision *cached_decide(CachedFacts *e, const EffectivePolicy *ep, PreparedLookup lookup, void *arg,
			      Decision *scratch)
{
	if (e->has_execute) {
		policy_decide(ep, e->facts, lookup, arg, scratch);
		return scratch;
	}
	for (int i = 0; i < MEMO_SLOTS; i++)
		if (e->memo[i].policy_id == ep->id)
			return &e->memo[i].decision;
	int slot = e->memo_next;
	e->memo_next = (e->memo_next + 1) % MEMO_SLOTS;
	policy_decide(ep, e->facts, NULL, NULL, &e->memo[slot].decision);
	e->memo[slot].policy_id = ep->id;
	return &e->memo[slot].decision;
}
