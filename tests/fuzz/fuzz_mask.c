/* libFuzzer target: masking's statement rewriter (SQL from clients) and content detectors (rows). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mask/mask.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t outlen;
	free(mask_detect_scrub(~0u, data, size, &outlen));

	char *sql = malloc(size + 1);
	if (!sql)
		return 0;
	memcpy(sql, data, size);
	sql[size] = 0;
	static MaskRule partial = {.method = MASK_PARTIAL, .keep_last = 4};
	static MaskRule hash = {.method = MASK_HASH};
	static const MaskRule *rules[] = {&partial, &hash};
	MaskCatalog *c = mask_catalog_new(rules, 2, (const uint8_t *)"0123456789abcdef", 16);
	const char *rows[][MASK_CATALOG_COLUMNS] = {
		{"c", "public", "customers", "00001", "id", "integer", "N", "-1", "false", "16384"},
		{"c", "public", "customers", "00002", "ssn", "text", "S", "0", "false", "16384"},
		{"c", "public", "customers", "00003", "uid", "uuid", "U", "1", "false", "16384"},
		{"c", "public", "v", "00001", "ssn", "text", "S", "-1", "true", "16390"},
		{"f", NULL, "leak", NULL, NULL, NULL, NULL, NULL, NULL, NULL},
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
		mask_catalog_add_row(c, rows[i], MASK_CATALOG_COLUMNS);
	char *out = NULL, reason[256];
	RewriteOptions o = {.predicate_block = size % 2 == 0};
	mask_rewrite(c, &o, sql, &out, reason, sizeof reason);
	free(out);
	mask_catalog_free(c);
	free(sql);
	return 0;
}
