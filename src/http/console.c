/* The web console's files by URL path (their bytes are in console_files.S). */
#include "http/console.h"

#include <string.h>

extern const char http__console_index[], http__console_index_end[];
extern const char http__console_js[], http__console_js_end[];
extern const char http__console_css[], http__console_css_end[];

bool http_console_file(const char *url, ConsoleFile *out)
{
	if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0)
		*out = (ConsoleFile){"text/html; charset=utf-8", http__console_index,
				     (size_t)(http__console_index_end - http__console_index)};
	else if (strcmp(url, "/console/app.js") == 0)
		*out = (ConsoleFile){"text/javascript; charset=utf-8", http__console_js,
				     (size_t)(http__console_js_end - http__console_js)};
	else if (strcmp(url, "/console/app.css") == 0)
		*out = (ConsoleFile){"text/css; charset=utf-8", http__console_css,
				     (size_t)(http__console_css_end - http__console_css)};
	else
		return false;
	return true;
}
