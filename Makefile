# Gatehouse — the two commands: `make run` and `make test`.
CARGO    ?= cargo
CONFIG   ?= conf/gatehouse.yaml
DEV_CERTS = conf/dev-certs
BIN       = target/debug/gatehouse
# Where cargo builds (cargo-deb and the package test follow CARGO_TARGET_DIR too).
TARGET_DIR   = $(or $(CARGO_TARGET_DIR),target)
PACKAGE_FILES = $(TARGET_DIR)/release/package-files

.PHONY: run test check certs build deps deb bench bench-deps fuzz soak clean-certs embedder

## run: build, write dev certs if absent, start Gatehouse with conf/gatehouse.yaml
run: deps build certs
	RUST_LOG=$${RUST_LOG:-info} $(BIN) run -c $(CONFIG)

## test: install missing packages, then run the whole suite (unit, integration, real Kea);
## the package and the examples are built first because their tests inspect and run them
test: deps deb
	$(CARGO) build --examples
	$(CARGO) test --lib --bins --tests --no-fail-fast
	$(CARGO) test --doc
	$(MAKE) embedder

## embedder: a crate outside Gatehouse (tests/fixtures/embedder) built on its documented
## surface alone, and its test (same dependency versions and target dir as this crate)
embedder:
	cp Cargo.lock tests/fixtures/embedder/Cargo.lock
	CARGO_TARGET_DIR=$(abspath $(TARGET_DIR)) $(CARGO) test --manifest-path tests/fixtures/embedder/Cargo.toml

## check: formatting and lints, warnings are errors
check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

## certs: the throwaway development PKI (conf/dev-certs, git-ignored)
certs: build
	@[ -f $(DEV_CERTS)/ca.crt ] || $(BIN) dev-certs $(DEV_CERTS)

build: deps
	$(CARGO) build

## deb: the Debian package of the release build, $(TARGET_DIR)/debian/gatehouse_<version>_<arch>.deb
## (binary, systemd unit, /etc/gatehouse/gatehouse.yaml, man pages, bash/zsh/fish completions)
deb: deps
	$(CARGO) build --release --locked
	rm -rf $(PACKAGE_FILES)
	$(TARGET_DIR)/release/gatehouse package-files $(PACKAGE_FILES)
	gzip -9n $(PACKAGE_FILES)/man/*.1
	bash scripts/package-docs.sh $(PACKAGE_FILES)/doc
	$(CARGO) deb --no-build --locked

deps:
	@bash scripts/deps.sh

clean-certs:
	rm -rf $(DEV_CERTS)

## bench: micro-benchmarks, then Gatehouse vs nginx and HAProxy end to end (release build): HTTP
## (H1), what a bearer token costs, relay in three load shapes with system calls per record (R1), ping-pong rounds (P4), idle
## links EC and RSA-4096 (R3), reconnect storms (R2: 2,000 links RSA-4096 and EC, 9,000 EC), and a
## second storm round against a master that kept running, with and without resumption (R2b)
R2B = STORM_LINKS=1000 STORM_KEYS=rsa4096 STORM_UPSTREAM_KEY=same STORM_IDENTITIES=distinct \
      STORM_ROUNDS=2 STORM_RESUME=both STORM_PROXIES=gatehouse
bench: deps bench-deps
	$(CARGO) bench --bench hot_paths
	$(CARGO) build --release --example bare_pingora
	ulimit -n $$(ulimit -Hn); $(CARGO) bench --bench e2e
	ulimit -n $$(ulimit -Hn); BENCH_KEYS=rsa4096 BENCH_PARTS=idle BENCH_IDLE=2000 $(CARGO) bench --bench e2e
	ulimit -n $$(ulimit -Hn); $(CARGO) bench --bench storm
	ulimit -n $$(ulimit -Hn); STORM_LINKS=9000 STORM_KEYS=p256 STORM_CONCURRENCY=256 $(CARGO) bench --bench storm
	ulimit -n $$(ulimit -Hn); $(R2B) $(CARGO) bench --bench storm

## soak: 30 min of mixed HTTP + cluster load with reconnect storms and reloads (SOAK_SECS to change)
soak: deps
	ulimit -n $$(ulimit -Hn); $(CARGO) bench --bench soak

bench-deps:
	@BENCH=1 bash scripts/deps.sh

## fuzz: each cargo-fuzz target for FUZZ_SECS seconds (seeds in fuzz/corpus, new inputs in fuzz/work)
FUZZ_SECS ?= 60
FUZZ_TARGETS = netstring envelope kea_command config
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/work/$$t; \
	  echo "== fuzz $$t ($(FUZZ_SECS)s)"; \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -s none $$t fuzz/work/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECS) -print_final_stats=1 > fuzz/work/$$t.log 2>&1; rc=$$?; \
	  grep -E "stat::number_of_executed_units|stat::new_units_added" fuzz/work/$$t.log; \
	  if [ $$rc -ne 0 ]; then tail -40 fuzz/work/$$t.log; echo "fuzz $$t FAILED (crash input in fuzz/artifacts/$$t)"; exit $$rc; fi; \
	done
