/* libFuzzer target: SQL text through the inspector and the facts cache's number folding. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy/cache.h"
#include "policy/inspect.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static FactsCache *cache;
	if (!cache)
		cache = facts_cache_new(64);
	char *sql = malloc(size + 1);
	if (!sql)
		return 0;
	memcpy(sql, data, size);
	sql[size] = 0;
	/* Through the cache (exact, folded, miss) and directly. */
	cached_facts_release(facts_cache_get(cache, sql, size));
	QueryFacts *q = inspect_sql(sql);
	inspect_free(q);
	free(sql);
	return 0;
}
