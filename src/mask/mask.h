/*
 * Masking: the rules of a policy, the sensitive-column catalog of a database, and the
 * methods that mask a value (in SQL, inside the statement) or a text (in the gateway).
 *
 * Masked relations are replaced in each statement by a subquery that masks their columns
 * before anything else in the statement sees them (mask/rewrite.c), so expressions,
 * predicates, aggregates, JSON and error messages only ever meet masked values. Content
 * detection (mask/detect.c) is the backstop over every text value that leaves.
 * Pure: no sockets, no logging.
 */
#ifndef PGC_MASK_H
#define PGC_MASK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { MASK_REDACT, MASK_PARTIAL, MASK_HASH, MASK_NULL, MASK_EMAIL, MASK_FIXED } MaskMethod;

/* Detectors, as bits. */
enum {
	DETECT_CREDIT_CARD = 1 << 0,
	DETECT_US_SSN = 1 << 1,
	DETECT_EMAIL = 1 << 2,
	DETECT_IBAN = 1 << 3,
	DETECT_AWS_ACCESS_KEY = 1 << 4,
	DETECT_JWT = 1 << 5,
	DETECT_PRIVATE_KEY = 1 << 6,
};

/* One entry of a policy's mask: list (config). Exactly one of columns, types, detect. */
typedef struct {
	char **columns; /* "schema.table.column" patterns, '*' matches any run of characters */
	int ncolumns;
	char **types;   /* type names as format_type() writes them: "inet", "character varying" */
	int ntypes;
	unsigned detect; /* DETECT_* bits */
	MaskMethod method;
	int keep_first, keep_last; /* partial */
	char *value;               /* fixed */
} MaskRule;

bool mask_method_from_name(const char *name, MaskMethod *out);
const char *mask_method_name(MaskMethod m);
/* The DETECT_* bit of a detector name, 0 if unknown. */
unsigned mask_detector_from_name(const char *name);

/* ---- the sensitive-column catalog of one database, for one set of rules ---- */

typedef struct {
	char *name;
	char *type;      /* format_type(atttypid, atttypmod) */
	char category;   /* pg_type.typcategory */
	int rule;        /* index into the rule list, -1: not masked */
	int attnum;
} MaskColumn;

typedef struct {
	char *schema, *name;
	uint32_t oid;
	bool derived;    /* a view built on a masked relation that no rule names: refused */
	MaskColumn *cols; /* in attnum order */
	int ncols;
} MaskRelation;

typedef struct MaskCatalog {
	MaskRelation *rels;
	int nrels;
	char **functions; /* names of functions outside pg_catalog: what they read is unknown */
	int nfunctions;
	const MaskRule *const *rules; /* the rules the catalog was loaded for (not owned) */
	int nrules;
	char *path[64];   /* the session's search path (current_schemas(true)), in order */
	int path_ord[64];
	int npath;
	uint8_t hash_ipad[64], hash_opad[64]; /* HMAC-SHA-256 pads of the hash key */
	bool has_key;
} MaskCatalog;

/*
 * The catalog query for rules: one result set, rows ('c', schema, relation, attnum, column,
 * type, category, rule, derived, relation oid) for every column of every masked relation
 * and of every view built on one, ('s', NULL, schema, position) for the session's search
 * path, then ('f', NULL, function, ...) for functions outside pg_catalog, then ('v', schema,
 * view, NULL, ..., definition) for every view built on a masked relation that rules name
 * columns of (see mask_view_covered). Caller frees.
 */
#define MASK_CATALOG_COLUMNS 10
char *mask_catalog_sql(const MaskRule *const *rules, int nrules);
MaskCatalog *mask_catalog_new(const MaskRule *const *rules, int nrules, const uint8_t *key, size_t keylen);
/* Adds one row of the catalog query (text values; NULL for SQL NULL). False: malformed. */
bool mask_catalog_add_row(MaskCatalog *c, const char *const *values, int nvalues);
void mask_catalog_free(MaskCatalog *c);
const MaskRelation *mask_catalog_find(const MaskCatalog *c, const char *schema, const char *name);
bool mask_catalog_has_function(const MaskCatalog *c, const char *name);
/*
 * The masked relation an optionally qualified name reads: unqualified names are looked up
 * along the session's search path (the first schema holding a masked relation of that name;
 * "public" when the path is unknown). Masked identities cannot change search_path.
 */
const MaskRelation *mask_catalog_resolve(const MaskCatalog *c, const char *schema, const char *name);
/* The column of relation relid at attnum, if the catalog holds that relation; else NULL. */
const MaskColumn *mask_catalog_column(const MaskCatalog *c, uint32_t relid, int attnum);

/*
 * Whether the rules that name columns of view v (built on masked relations) mask all it
 * takes from masked columns, by its definition (pg_get_viewdef; NULL for a view over another
 * such view). False: v is refused.
 */
bool mask_view_covered(const MaskCatalog *c, const MaskRelation *v, const char *viewdef);

/* A SQL text literal that cannot break out of a statement: convert_from(decode('<hex>', 'hex'), 'UTF8'). Caller frees. */
char *mask__sql_text(const char *s);

/* The SQL expression that masks column (an already quoted reference) of column type col. Caller frees. */
char *mask_sql_expr(const MaskCatalog *c, const MaskColumn *col, const char *ref);

/* ---- statement rewriting (mask/rewrite.c) ---- */

typedef enum { REWRITE_PASS, REWRITE_DONE, REWRITE_ROWS, REWRITE_REFUSE } RewriteResult;

typedef struct {
	bool predicate_block; /* on_masked_predicate: block */
	bool rows_in_gateway; /* plain reads may be masked in the gateway (REWRITE_ROWS) */
} RewriteOptions;

/*
 * Rewrites sql so that every masked relation it reads is read through its masking
 * subquery. PASS: nothing masked is touched (out NULL). DONE: *out is the new text
 * (caller frees). ROWS: the statement is a plain read of one masked relation whose masked
 * columns appear only as output columns by themselves; it may run as written with every
 * result field that RowDescription traces to a masked column masked in the gateway
 * (mask_rowmask_*). REFUSE: reason says why masking cannot be made sound.
 */
RewriteResult mask_rewrite(const MaskCatalog *c, const RewriteOptions *o, const char *sql, char **out, char *reason,
			   size_t reasonlen);

/*
 * Whether sql names a masked relation (or a view over one) anywhere, read or written;
 * true when it cannot be parsed. The audit trail records such a statement's parameters
 * redacted: which column a parameter meets is not always known.
 */
bool mask_names_masked(const MaskCatalog *c, const char *sql);

/* ---- result fields masked in the gateway (mask/rowmask.c) ---- */

typedef struct {
	bool masked;
	MaskMethod method;
	int keep_first, keep_last;
	int max_chars; /* varchar(n): n; 0: no limit */
	char *value;   /* fixed */
} MaskField;

/* Which fields of one result are masked, and how; built from its RowDescription. */
typedef struct RowMask {
	int nfields, nmasked;
	MaskField *fields;
	uint8_t hash_key[32];
	bool has_key;
} RowMask;

RowMask *mask_rowmask_new(const MaskCatalog *c, int nfields);
/*
 * Field i comes from attribute attnum of relation relid (0, 0: not a plain column) with
 * result type typoid/typmod. False when it is a masked column this code cannot mask
 * (not text): the result must not be sent.
 */
bool mask_rowmask_field(RowMask *m, const MaskCatalog *c, int i, uint32_t relid, int attnum, uint32_t typoid,
			int32_t typmod);
/* A growing output buffer (free buf when done). */
typedef struct {
	uint8_t *buf;
	size_t len, cap;
} MaskBuf;

/*
 * The masked value of field i (text: the same bytes in text and binary format) in out
 * (replacing what it held). False: the value is SQL NULL.
 */
bool mask_rowmask_value(const RowMask *m, int i, const uint8_t *s, size_t n, MaskBuf *out);
void mask_rowmask_free(RowMask *m);

/* ---- content detection (mask/detect.c) ---- */

#define MASK_REDACTED "[REDACTED]"

/*
 * Replaces every detected value in s[0..n) by MASK_REDACTED. Returns a new buffer (length
 * in *outlen) when something was found, NULL when s is clean.
 */
uint8_t *mask_detect_scrub(unsigned detectors, const uint8_t *s, size_t n, size_t *outlen);
bool mask_luhn_ok(const char *digits, size_t n);
bool mask_iban_ok(const char *s, size_t n);

#endif
