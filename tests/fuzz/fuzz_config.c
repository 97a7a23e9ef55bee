/* libFuzzer target: the YAML config loader (through a memfd, as it reads a path). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int fd = memfd_create("config", 0);
	if (fd < 0)
		return 0;
	if (write(fd, data, size) == (ssize_t)size) {
		char path[64], err[512];
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
		Config *c = config_load(path, err, sizeof err);
		config_release(c);
	}
	close(fd);
	return 0;
}
