/* MCP over JSON-RPC 2.0: the methods, their checks, and the errors of malformed messages. */
#include "mcp/server.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "core/version.h"

/* JSON-RPC 2.0 error codes (section 5.1). */
#define RPC_PARSE_ERROR -32700
#define RPC_INVALID_REQUEST -32600
#define RPC_METHOD_NOT_FOUND -32601
#define RPC_INVALID_PARAMS -32602

/* Newest first; a client asking for another gets the first, and decides whether to go on. */
static const char *const VERSIONS[] = {"2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05", NULL};

static const char INSTRUCTIONS[] =
	"This server runs SQL against a PostgreSQL database through the pgcordon gateway, as one "
	"identity. The gateway may refuse a statement (its error says which policy and rule), hold "
	"it for a human's approval (a notice gives the request id; run it again once approved), or "
	"mask values. Results are limited in rows and bytes; ask for what you need.";

static char *dump(json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
	json_decref(j);
	return s ? s : xstrdup("{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32603,\"message\":\"Internal error\"}}");
}

static char *reply_error(json_t *id, int code, const char *message)
{
	return dump(json_pack("{ss sO s{si ss}}", "jsonrpc", "2.0", "id", id ? id : json_null(), "error", "code",
			      code, "message", message));
}

static char *reply_result(json_t *id, json_t *result)
{
	return dump(json_pack("{ss sO so}", "jsonrpc", "2.0", "id", id, "result", result));
}

char *mcp_too_long(void)
{
	return reply_error(NULL, RPC_PARSE_ERROR, "Parse error: message longer than 4 MiB");
}

static json_t *initialize_result(json_t *params)
{
	const char *asked = json_string_value(json_object_get(params, "protocolVersion"));
	const char *version = VERSIONS[0];
	for (const char *const *v = VERSIONS; asked && *v; v++)
		if (strcmp(asked, *v) == 0)
			version = *v;
	return json_pack("{ss s{s{sb}} s{ss ss} ss}", "protocolVersion", version, "capabilities", "tools", "listChanged",
			 false, "serverInfo", "name", "pgcordon", "version", PGCORDON_VERSION, "instructions", INSTRUCTIONS);
}

/* A string without a NUL in it, or NULL. */
static const char *plain_string(json_t *j)
{
	const char *s = json_string_value(j);
	return s && strlen(s) == json_string_length(j) ? s : NULL;
}

static char *tools_call(McpDb *db, json_t *id, json_t *params)
{
	const char *name = plain_string(json_object_get(params, "name"));
	if (!name)
		return reply_error(id, RPC_INVALID_PARAMS, "Invalid params: \"name\" must be a tool's name");
	json_t *result = mcp_tools_call(db, name, json_object_get(params, "arguments"));
	if (!result) {
		/* Not cut inside a character: the message must stay UTF-8. */
		char *msg = xasprintf("Unknown tool: %.*s", (int)util_utf8_prefix(name, strlen(name), 100), name);
		char *out = reply_error(id, RPC_INVALID_PARAMS, msg);
		free(msg);
		return out;
	}
	return reply_result(id, result);
}

/* An id is a string or an integer; MCP forbids null. */
static bool valid_id(json_t *id) { return json_is_string(id) || json_is_integer(id); }

char *mcp_handle(McpDb *db, const char *msg, size_t len, McpStarts starts, void *arg)
{
	json_error_t je;
	/* \u0000 is valid JSON: taken, so the message keeps its id; names with one match nothing. */
	json_t *m = json_loadb(msg, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_ANY, &je);
	if (!m) {
		char *text = xasprintf("Parse error: %s", je.text);
		char *out = reply_error(NULL, RPC_PARSE_ERROR, text);
		free(text);
		return out;
	}
	char *out = NULL;
	json_t *id = json_object_get(m, "id"), *method = json_object_get(m, "method");
	json_t *params = json_object_get(m, "params");
	if (json_is_array(m)) {
		out = reply_error(NULL, RPC_INVALID_REQUEST, "Invalid Request: batches are not supported");
	} else if (!json_is_object(m)) {
		out = reply_error(NULL, RPC_INVALID_REQUEST, "Invalid Request: not an object");
	} else if (!method && (json_object_get(m, "result") || json_object_get(m, "error"))) {
		out = NULL; /* a response is never answered; this server sends no requests to match it to */
	} else if (!util_str_same(plain_string(json_object_get(m, "jsonrpc")), "2.0") || !plain_string(method) ||
		   (id && !valid_id(id))) {
		out = reply_error(valid_id(id) ? id : NULL, RPC_INVALID_REQUEST,
				  "Invalid Request: needs \"jsonrpc\": \"2.0\", a string \"method\", and an id that "
				  "is a string or an integer");
	} else if (id && params && !json_is_object(params)) {
		out = reply_error(id, RPC_INVALID_PARAMS, "Invalid params: MCP takes \"params\" as an object");
	} else if (!id) {
		out = NULL; /* a notification (initialized, cancelled for a call already done, ...) */
	} else {
		char *id_text = json_dumps(id, JSON_COMPACT | JSON_ENCODE_ANY);
		const char *name = json_string_value(method);
		if (starts && !starts(arg, id_text))
			out = NULL; /* cancelled before it ran */
		else if (strcmp(name, "initialize") == 0)
			out = reply_result(id, initialize_result(params));
		else if (strcmp(name, "ping") == 0)
			out = reply_result(id, json_object());
		else if (strcmp(name, "tools/list") == 0)
			out = reply_result(id, json_pack("{so}", "tools", mcp_tools_list()));
		else if (strcmp(name, "tools/call") == 0)
			out = tools_call(db, id, params);
		else
			out = reply_error(id, RPC_METHOD_NOT_FOUND, "Method not found");
		free(id_text);
	}
	json_decref(m);
	return out;
}

char *mcp_peek(const char *msg, size_t len, char **cancelled_id)
{
	*cancelled_id = NULL;
	json_t *m = json_loadb(msg, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, NULL);
	json_t *id = json_object_get(m, "id"), *params = json_object_get(m, "params");
	const char *method = plain_string(json_object_get(m, "method"));
	char *out = NULL;
	if (!util_str_same(plain_string(json_object_get(m, "jsonrpc")), "2.0") || (params && !json_is_object(params))) {
		/* not for here: mcp_handle answers it in its turn */
	} else if (util_str_same(method, "ping") && valid_id(id)) {
		out = reply_result(id, json_object());
	} else if (util_str_same(method, "notifications/cancelled") && !id) {
		json_t *rid = json_object_get(params, "requestId");
		if (valid_id(rid))
			*cancelled_id = json_dumps(rid, JSON_COMPACT | JSON_ENCODE_ANY);
	}
	json_decref(m);
	return out;
}
