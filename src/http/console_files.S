/*
 * The web console's files (src/http/console/), built into the binary so that the gateway
 * stays one file and serves exactly the console it was built with. console.c names them.
 */
	.section .rodata
	.balign 16

	.global http__console_index
http__console_index:
	.incbin "src/http/console/index.html"
	.global http__console_index_end
http__console_index_end:

	.balign 16
	.global http__console_js
http__console_js:
	.incbin "src/http/console/app.js"
	.global http__console_js_end
http__console_js_end:

	.balign 16
	.global http__console_css
http__console_css:
	.incbin "src/http/console/app.css"
	.global http__console_css_end
http__console_css_end:

	.section .note.GNU-stack, "", @progbits
