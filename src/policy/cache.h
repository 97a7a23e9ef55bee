/*
 * The facts cache: SQL text → QueryFacts, so a statement is parsed once. Two levels:
 * the exact text, then the text with numeric literals folded (so "WHERE aid = 17" and
 * "WHERE aid = 42" share one parse) for statements whose facts cannot depend on those
 * numbers. One cache per worker thread: no locks; entries are reference-counted within
 * that thread. Each entry also memoizes the last decisions by effective-policy id.
 */
#ifndef PGC_CACHE_H
#define PGC_CACHE_H

#include <stdbool.h>
#include <stddef.h>

#include "policy/inspect.h"
#include "policy/policy.h"

typedef struct FactsCache FactsCache;
typedef struct CachedFacts CachedFacts;

typedef struct {
	uint64_t hits_exact;
	uint64_t hits_folded;
	uint64_t misses;
} CacheStats;

FactsCache *facts_cache_new(int capacity);
void facts_cache_free(FactsCache *c);
const CacheStats *facts_cache_stats(const FactsCache *c);

/* Returns a referenced entry for sql (len bytes, no NUL needed); release it when done. */
CachedFacts *facts_cache_get(FactsCache *c, const char *sql, size_t len);
const QueryFacts *cached_facts(const CachedFacts *e);
/*
 * The facts of sql (len bytes, no NUL needed), not cached: inspect_sql, on any thread.
 * cached_facts_adopt wraps them (it takes them) in an entry of no cache, released as usual.
 */
QueryFacts *facts_of_text(const char *sql, size_t len);
CachedFacts *cached_facts_adopt(QueryFacts *facts);
void cached_facts_ref(CachedFacts *e);
void cached_facts_release(CachedFacts *e);

/* The decision for e under ep, memoized (when lookup is not needed) by ep->id. */
const Decision *cached_decide(CachedFacts *e, const EffectivePolicy *ep, PreparedLookup lookup, void *arg,
			      Decision *scratch);

/* Exposed for tests: folds numeric literals; false when the text is not simple to fold. */
bool facts_fold_numbers(const char *sql, size_t len, char *out, size_t outlen, size_t *outn);

#endif
