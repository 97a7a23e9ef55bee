# pgcordon build: `make` builds build/pgcordon; `make test` runs unit + integration tests;
# `make asan` runs the same suite against an ASan+UBSan build.

CC ?= cc
BUILD ?= build
PKGS := libevent libevent_pthreads openssl yaml-0.1 jansson libcurl sqlite3 libpq libmicrohttpd libzstd
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN := -Wall -Wextra -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wundef \
        -Wpointer-arith -Wshadow -Wno-unused-parameter
ifeq ($(CI),true)
WARN += -Werror
endif
OPT ?= -O2 -g
SAN ?=
CFLAGS := -std=c11 -D_GNU_SOURCE $(OPT) $(SAN) $(WARN) -Isrc $(PKG_CFLAGS) -pthread
LDLIBS := $(PKG_LIBS) -lpg_query -pthread

SRCS := $(wildcard src/core/*.c src/proto/*.c src/config/*.c src/auth/*.c src/net/*.c \
                   src/session/*.c src/policy/*.c src/mask/*.c src/audit/*.c src/approval/*.c src/http/*.c src/mcp/*.c \
                   src/cli/*.c)
LIB_SRCS := $(filter-out src/cli/%,$(SRCS))
# The web console's files, built into the binary by an .incbin (src/http/console_files.S).
CONSOLE_ASM := src/http/console_files.S
CONSOLE_FILES := $(wildcard src/http/console/*)
OBJS := $(SRCS:%.c=$(BUILD)/%.o) $(BUILD)/src/http/console_files.o
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o) $(BUILD)/src/http/console_files.o

UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

PYTEST := /usr/bin/python3 -m pytest

FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_LIB := $(filter-out src/net/% src/session/%,$(LIB_SRCS)) $(CONSOLE_ASM)
FUZZ_SECONDS ?= 30

.PHONY: all test unit integration asan fuzz clean format

all: $(BUILD)/pgcordon

$(BUILD)/pgcordon: $(OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

# The commit the binary is built from (pgcordon --version, /metrics). $(BUILD)/commit is
# rewritten only when it changes, and only version.o depends on it.
COMMIT := $(shell git describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)
$(BUILD)/commit: FORCE
	@mkdir -p $(BUILD)
	@echo '$(COMMIT)' | cmp -s - $@ || echo '$(COMMIT)' > $@
$(BUILD)/src/core/version.o: $(BUILD)/commit
$(BUILD)/src/core/version.o: CFLAGS += -DPGCORDON_COMMIT='"$(COMMIT)"'
.PHONY: FORCE
FORCE:

$(BUILD)/src/http/console_files.o: $(CONSOLE_ASM) $(CONSOLE_FILES)
	@mkdir -p $(dir $@)
	$(CC) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(LIB_OBJS) $(wildcard tests/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $(filter-out %.h,$^) $(LDLIBS) -lcmocka

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

integration: $(BUILD)/pgcordon
	PGCORDON_BIN=$(abspath $(BUILD)/pgcordon) $(PYTEST) -q -p no:cacheprovider tests/integration

test: unit integration

asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=all" test

# libFuzzer targets for every parser of outside input; each runs FUZZ_SECONDS.
fuzz:
	@mkdir -p build-fuzz/corpus
	@set -e; for f in $(FUZZ_SRCS); do \
	  name=$$(basename $$f .c); \
	  clang -std=c11 -D_GNU_SOURCE -g -O1 -Isrc $(PKG_CFLAGS) -fsanitize=fuzzer,address,undefined \
	    -o build-fuzz/$$name $$f $(FUZZ_LIB) $(PKG_LIBS) -lpg_query -pthread; \
	  mkdir -p build-fuzz/corpus/$$name; \
	  echo "== $$name ($(FUZZ_SECONDS)s)"; \
	  build-fuzz/$$name -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build-fuzz/corpus/$$name 2>&1 | tail -n 2; \
	done

format:
	clang-format -i $(SRCS) $(wildcard src/*/*.h) $(UNIT_SRCS)

clean:
	rm -rf build build-asan build-fuzz

-include $(OBJS:.o=.d)
