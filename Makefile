# banditd — build, test, install.
#   make                      build/banditd, build/banditd-sim
#   make check                install missing deps, build, run unit + e2e tests,
#                             then again under ASan+UBSan and valgrind (tests/README.md)
#   make SANITIZE=address,undefined check   the same under ASan+UBSan
#   make demo                 the demo on the bundled RouteLLM data
#   make bench                micro-benchmarks (router decision, feedback update)
#   make install PREFIX=/usr/local DESTDIR=
#   make BUILD=build-je ALLOC=jemalloc   link jemalloc (libjemalloc-dev): ~10%
#                             less CPU per proxied request (docs/performance.md §9)

PREFIX   ?= /usr/local
DESTDIR  ?=
BUILD    ?= build
CC       ?= cc
SANITIZE ?=
ALLOC    ?= glibc

PKGS     := libmicrohttpd libcurl libcjson openblas sqlite3 hiredis
WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wformat=2 -Werror
CFLAGS   ?= -O2 -g
CFLAGS   += -std=c11 -D_GNU_SOURCE $(WARN) -Iinclude
CFLAGS   += $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS   += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null)

ifeq ($(ALLOC),jemalloc)
  ifneq ($(SANITIZE),)
    $(error ALLOC=jemalloc and SANITIZE exclude each other: the sanitizer brings its own malloc)
  endif
  LDLIBS  += -ljemalloc
else ifneq ($(ALLOC),glibc)
  $(error ALLOC is glibc (default) or jemalloc)
endif

ifneq ($(SANITIZE),)
  BUILD   := build-san
  CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
  LDFLAGS += -fsanitize=$(SANITIZE)
endif

# Every src/*.c is a library module except the programs' entry points.
MAINS    := src/main.c src/sim_main.c
LIB_SRCS := $(filter-out $(MAINS),$(wildcard src/*.c))
LIB_OBJS := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(LIB_SRCS))
LIB      := $(BUILD)/libbanditd.a

TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRCS))
BENCH_SRCS := $(wildcard bench/*.c)
BENCH_BINS := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRCS))
# Built with the benchmarks but not run by `make bench`: bench/proxy.sh's "floor" target.
NULL_PROXY := $(BUILD)/bench/null_proxy

.PHONY: all deps check check-asan check-valgrind unit unit-build e2e demo bench install clean format fuzz
all: $(BUILD)/banditd $(BUILD)/banditd-sim

$(BUILD)/obj/%.o: src/%.c $(wildcard include/banditd/*.h) | $(BUILD)/obj
	$(CC) $(CFLAGS) -c -o $@ $<

$(LIB): $(LIB_OBJS)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/banditd: $(BUILD)/obj/main.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/banditd-sim: $(BUILD)/obj/sim_main.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(LIB) $(wildcard tests/*.h) | $(BUILD)/tests
	$(CC) $(CFLAGS) $(CHECK_CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS) $(CHECK_LIBS)

$(BUILD)/bench/%: bench/%.c $(LIB) | $(BUILD)/bench
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

$(BUILD)/obj $(BUILD)/tests $(BUILD)/bench:
	mkdir -p $@

deps:
	@scripts/install-deps.sh

# The README's test command: build; unit tests (Check); end-to-end tests that
# start the real daemon against fake upstreams on loopback; then the same
# under ASan+UBSan (build-san/) and valgrind memcheck (subsets). Every phase
# is timed; the last line is "N passed, N failed". See tests/README.md.
# CHECK_PHASES="unit e2e" (etc.) runs a subset of phases.
check: deps
	@MAKE="$(MAKE)" SANITIZE="$(SANITIZE)" scripts/check.sh

# Only the ASan+UBSan phases / only the valgrind phases (after a build).
check-asan: deps
	@MAKE="$(MAKE)" CHECK_PHASES="asan-build asan-unit asan-e2e" scripts/check.sh

check-valgrind: deps
	@MAKE="$(MAKE)" CHECK_PHASES="build vg-unit vg-e2e" scripts/check.sh

unit-build: $(TEST_BINS)

unit: $(TEST_BINS)
	@scripts/run-unit.sh $(TEST_BINS)

e2e: all
	@BUILD=$(BUILD) tests/e2e/run.sh

demo: deps
	$(MAKE) all
	@BUILD=$(BUILD) scripts/demo.sh

bench: all $(BENCH_BINS)
	@for b in $(filter-out $(NULL_PROXY),$(BENCH_BINS)); do echo "== $$b"; $$b || exit 1; done

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/banditd $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 0755 $(BUILD)/banditd $(BUILD)/banditd-sim $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 config/banditd.example.json $(DESTDIR)$(PREFIX)/share/banditd/
	if [ -f docs/banditd.8 ]; then install -m 0644 docs/banditd.8 $(DESTDIR)$(PREFIX)/share/man/man8/; fi
	if [ -f config/banditd.service ]; then install -d $(DESTDIR)$(PREFIX)/lib/systemd/system && install -m 0644 config/banditd.service $(DESTDIR)$(PREFIX)/lib/systemd/system/; fi

format:
	clang-format -i src/*.c include/banditd/*.h tests/*.c bench/*.c tests/fuzz/*.c tests/fuzz/*.h

clean:
	rm -rf build build-san

# libFuzzer harnesses of every parser of hostile input (needs clang); each runs
# FUZZ_TIME seconds (default 60). See tests/fuzz/README.md.
fuzz:
	@tests/fuzz/run.sh

# Side-by-side proxy benchmark (direct / nginx / banditd, wrk), slow-upstream
# concurrency and streaming TTFB (issue 9; docs/performance.md).
.PHONY: bench-proxy bench-slow bench-stream bench-profile
bench-proxy: all $(NULL_PROXY)
	@BANDITD=$(CURDIR)/$(BUILD)/banditd NULL_PROXY=$(CURDIR)/$(NULL_PROXY) bench/proxy.sh
bench-slow: all
	@BANDITD=$(CURDIR)/$(BUILD)/banditd bench/slow.sh
bench-stream: all
	@BANDITD=$(CURDIR)/$(BUILD)/banditd python3 bench/stream_ttfb.py
bench-profile: all
	@BANDITD=$(CURDIR)/$(BUILD)/banditd bench/profile.sh
