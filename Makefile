# mod_claude_relay: build, test, demo.
#
#   make            build the module, the mock upstream and relay-keys into build/
#   make install    install mod_claude_relay.so into httpd's module folder
#   make deb        the Debian package build/libapache2-mod-claude-relay_VERSION_ARCH.deb
#   make test       install missing packages, then run every test
#   make fuzz       fuzz the usage parser (FUZZ_SECONDS, default 300)
#   make test-asan  the suite with the module under AddressSanitizer and UBSan
#   make format-check  fails when a C source is not as clang-format makes it
#   make soak       10 minutes of mixed traffic; checks leaks and memory (SOAK_SECONDS)
#   make demo       install missing packages, build, and run the relay on 127.0.0.1:8080
#   make demo-stop  stop the demo

APXS ?= apxs
CC ?= gcc
comma := ,
WARNINGS = -Wall -Wextra -Werror -Wmissing-prototypes -Wstrict-prototypes -Wshadow -Wformat=2
CFLAGS_TOOLS = $(WARNINGS) -O2 -g -I. -I/usr/include/hiredis
BUILD = build
# the one version number: the module's startup line, relay-keys --version and
# debian/changelog (t/unit/check_version.sh) follow it
VERSION := $(shell cat VERSION)

all: $(BUILD)/mod_claude_relay.so $(BUILD)/mod_relay_mock.so $(BUILD)/relay-keys \
     $(BUILD)/test-concurrency

$(BUILD):
	mkdir -p $(BUILD)

$(BUILD)/mod_claude_relay.so: | $(BUILD)
	$(MAKE) -f Makefile.apxs APXS=$(APXS)
	cp .libs/mod_claude_relay.so $@

# the mock upstream: a Claude API stand-in for tests, the demo and benchmarks
$(BUILD)/mod_relay_mock.so: mock/mod_relay_mock.c | $(BUILD)
	cd mock && $(APXS) -c -n relay_mock $(addprefix -Wc$(comma),$(WARNINGS)) -Wc,-O2 \
	    mod_relay_mock.c -ljson-c >/dev/null
	cp mock/.libs/mod_relay_mock.so $@

# relay-keys is a front end over the module's own key store and Redis client
# (relay_keystore.c, relay_redis.c), linked with APR and APR-util as httpd is.
# $(CPPFLAGS) $(CFLAGS) $(LDFLAGS): empty unless given, as debhelper gives
# Debian's hardening flags when it builds the package
APR_CFLAGS := $(shell apr-1-config --cppflags --includes)
APR_LIBS := $(shell apu-1-config --link-ld) $(shell apr-1-config --link-ld)
# relay_metrics.c: relay_redis.c times its commands through it (no-ops outside httpd)
KEYSTORE_SRC = relay_keystore.c relay_keystore_list.c relay_redis.c relay_keys.c relay_validate.c \
               relay_metrics.c
KEYSTORE_HDR = relay_keystore.h relay_keystore_int.h relay_redis.h relay_keys.h relay_validate.h \
               relay_schema.h relay_metrics.h
$(BUILD)/relay-keys: tools/relay-keys.c $(KEYSTORE_SRC) $(KEYSTORE_HDR) VERSION | $(BUILD)
	$(CC) $(CFLAGS_TOOLS) $(APR_CFLAGS) -DRELAY_VERSION='"$(VERSION)"' $(CPPFLAGS) $(CFLAGS) \
	    $(LDFLAGS) -o $@ tools/relay-keys.c $(KEYSTORE_SRC) $(APR_LIBS) -lhiredis -ljson-c

$(BUILD)/test-concurrency: tools/test-concurrency.c | $(BUILD)
	$(CC) $(CFLAGS_TOOLS) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ tools/test-concurrency.c \
	    -lcurl -ljson-c

$(BUILD)/test_keys: t/unit/test_keys.c relay_keys.c relay_keys.h | $(BUILD)
	$(CC) $(CFLAGS_TOOLS) -o $@ t/unit/test_keys.c relay_keys.c

$(BUILD)/test_validate: t/unit/test_validate.c t/unit/check.h relay_validate.c relay_keys.c relay_validate.h | $(BUILD)
	$(CC) $(CFLAGS_TOOLS) -o $@ t/unit/test_validate.c relay_validate.c relay_keys.c

$(BUILD)/test_endpoints: t/unit/test_endpoints.c t/unit/check.h relay_endpoints.c relay_endpoints.h | $(BUILD)
	$(CC) $(CFLAGS_TOOLS) -o $@ t/unit/test_endpoints.c relay_endpoints.c

$(BUILD)/test_usage: t/unit/test_usage.c relay_usage.c relay_usage.h | $(BUILD)
	$(CC) $(CFLAGS_TOOLS) -o $@ t/unit/test_usage.c relay_usage.c

$(BUILD)/test_metrics: t/unit/test_metrics.c t/unit/check.h relay_metrics.c relay_metrics.h relay_redis.c \
                       relay_redis.h relay_schema.h | $(BUILD)
	$(CC) $(CFLAGS_TOOLS) $(APR_CFLAGS) -o $@ t/unit/test_metrics.c relay_metrics.c relay_redis.c \
	    $(APR_LIBS) -lhiredis

# the lease core below httpd, against a redis-server it starts itself
LEASE_SRC = relay_lease.c relay_lease_batch.c relay_lease_wire.c relay_lease_cache.c \
            relay_lease_valid.c relay_lease_tracker.c relay_lease_keeper.c
LUA_SRC = lua/batch.lua lua/renew.lua lua/check.lua
$(BUILD)/relay_lease_lua.h: $(LUA_SRC) scripts/embed-lua | $(BUILD)
	scripts/embed-lua $@ $(LUA_SRC)

$(BUILD)/test_lease: t/unit/test_lease.c t/unit/check.h $(LEASE_SRC) relay_lease.h relay_lease_int.h \
                     relay_redis.c relay_redis.h relay_keys.c relay_metrics.c \
                     $(BUILD)/relay_lease_lua.h | $(BUILD)
	$(CC) $(CFLAGS_TOOLS) -I$(BUILD) $(APR_CFLAGS) -o $@ t/unit/test_lease.c $(LEASE_SRC) \
	    relay_redis.c relay_keys.c relay_metrics.c $(APR_LIBS) -lhiredis -lpthread

# always rebuild the module through Makefile.apxs, which tracks its sources
.PHONY: $(BUILD)/mod_claude_relay.so

ASSETS_DIR ?= /usr/share/mod_claude_relay/htdocs

install: $(BUILD)/mod_claude_relay.so
	$(MAKE) -f Makefile.apxs APXS=$(APXS) install
	install -d $(DESTDIR)$(ASSETS_DIR)
	install -m 644 htdocs/admin.css htdocs/admin.js $(DESTDIR)$(ASSETS_DIR)/

deps:
	scripts/install-deps

# The Debian package, built by debhelper in a copy of the sources under
# build/deb (the tree itself is left as it was) and checked by lintian; the
# package lands in build/.
DEB_SOURCES = VERSION Makefile Makefile.apxs README.md $(wildcard *.c *.h) tools conf htdocs \
              man debian lua scripts/embed-lua
deb:
	scripts/install-deps --deb
	t/unit/check_version.sh
	rm -rf $(BUILD)/deb $(BUILD)/libapache2-mod-claude-relay_*.deb
	mkdir -p $(BUILD)/deb/src
	tar -cf - $(DEB_SOURCES) | tar -C $(BUILD)/deb/src -xf -
	cd $(BUILD)/deb/src && dpkg-buildpackage --build=binary --no-sign
	lintian --fail-on error $(BUILD)/deb/*.changes
	cp $(BUILD)/deb/libapache2-mod-claude-relay_$(VERSION)_*.deb $(BUILD)/
	@ls $(BUILD)/libapache2-mod-claude-relay_$(VERSION)_*.deb

# libFuzzer with AddressSanitizer and UBSan on the usage parser:
#   make fuzz                      (FUZZ_SECONDS=300 by default)
FUZZ_SECONDS ?= 300
$(BUILD)/fuzz_usage: t/fuzz/fuzz_usage.c relay_usage.c relay_usage.h | $(BUILD)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I. \
	    -o $@ t/fuzz/fuzz_usage.c relay_usage.c

fuzz: $(BUILD)/fuzz_usage
	rm -rf $(BUILD)/fuzz-corpus && cp -r t/fuzz/corpus_usage $(BUILD)/fuzz-corpus
	$(BUILD)/fuzz_usage -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1 \
	    $(BUILD)/fuzz-corpus 2>&1 | tail -n 12

unit: $(BUILD)/test_keys $(BUILD)/test_validate $(BUILD)/test_usage $(BUILD)/test_endpoints \
      $(BUILD)/test_metrics $(BUILD)/test_lease $(BUILD)/relay-keys \
      $(BUILD)/test-concurrency
	luac5.1 -p $(LUA_SRC)
	$(BUILD)/test_keys
	$(BUILD)/test_validate
	$(BUILD)/test_usage
	$(BUILD)/test_endpoints
	$(BUILD)/test_metrics
	$(BUILD)/test_lease
	t/unit/test_relay_keys.sh $(BUILD)/relay-keys
	t/unit/test_concurrency_tool.sh $(BUILD)/test-concurrency
	t/unit/check_directives.sh
	t/unit/check_version.sh $(BUILD)/relay-keys

# prints how long it took, installs included, at the end
test:
	@t0=$$(date +%s); rc=0; \
	{ scripts/install-deps --test && $(MAKE) all unit && $(MAKE) fuzz FUZZ_SECONDS=20 && \
	  t/run-tests.sh; } || rc=$$?; \
	echo "make test: $$(( $$(date +%s) - t0 )) s in all"; exit $$rc

# the whole suite with the module built with AddressSanitizer and UBSan, the
# runtimes preloaded into Debian's httpd; any report fails the run
test-asan:
	scripts/install-deps --test
	$(MAKE) all
	$(MAKE) -f Makefile.apxs clean
	$(MAKE) -f Makefile.apxs SANITIZE=1
	mkdir -p $(BUILD)-asan
	cp .libs/mod_claude_relay.so $(BUILD)-asan/
	cp $(BUILD)/mod_relay_mock.so $(BUILD)/relay-keys $(BUILD)-asan/
	$(MAKE) -f Makefile.apxs clean
	RELAY_ASAN=1 RELAY_BUILD=$(CURDIR)/$(BUILD)-asan t/run-tests.sh

# a bounded soak: SOAK_SECONDS (600) of mixed traffic, then leaks and memory
soak:
	scripts/install-deps --test
	$(MAKE) all
	RELAY_SOAK=1 t/run-tests.sh t/soak/soak.t

demo:
	scripts/install-deps
	$(MAKE) all
	demo/demo.sh start

demo-stop:
	demo/demo.sh stop

# benchmarks (not part of make test): relay vs plain mod_proxy with wrk, then
# concurrent SSE streams, then the admin and metrics with 10,000 keys; results in
# bench/results-latest.md (BENCH_* variables: see bench/run.sh, bench/streams.sh
# and bench/scale.sh)
bench:
	scripts/install-deps --bench && $(MAKE) all && bench/run.sh && bench/streams.sh && bench/scale.sh

.PHONY: bench

# the C sources, formatted by the committed .clang-format
FORMAT_SOURCES = $(wildcard *.c *.h tools/*.c mock/*.c t/unit/*.c t/fuzz/*.c t/lib/*.c)

# fails when a source differs from what clang-format makes of it
format-check:
	clang-format --dry-run --Werror $(FORMAT_SOURCES)

# rewrites the sources in place
format:
	clang-format -i $(FORMAT_SOURCES)

clean:
	$(MAKE) -f Makefile.apxs clean
	rm -rf $(BUILD) $(BUILD)-asan mock/.libs mock/*.la mock/*.lo mock/*.slo mock/*.o

.PHONY: all install deps deb unit fuzz test test-asan soak demo demo-stop clean format format-check
