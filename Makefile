# Gatehouse — the two commands: `make run` and `make test`.
CARGO    ?= cargo
CONFIG   ?= conf/gatehouse.yaml
DEV_CERTS = conf/dev-certs
BIN       = target/debug/gatehouse

.PHONY: run test check certs build deps bench clean-certs

## run: build, write dev certs if absent, start Gatehouse with conf/gatehouse.yaml
run: deps build certs
	RUST_LOG=$${RUST_LOG:-info} $(BIN) run -c $(CONFIG)

## test: install missing packages, then run the whole suite (unit, integration, real Kea)
test: deps
	$(CARGO) test --lib --bins --tests --no-fail-fast

## check: formatting and lints, warnings are errors
check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## certs: the throwaway development PKI (conf/dev-certs, git-ignored)
certs: build
	@[ -f $(DEV_CERTS)/ca.crt ] || $(BIN) dev-certs $(DEV_CERTS)

build: deps
	$(CARGO) build

deps:
	@bash scripts/deps.sh

clean-certs:
	rm -rf $(DEV_CERTS)

## bench: micro-benchmarks, then Gatehouse vs nginx and HAProxy end to end (release build)
bench: deps bench-deps
	$(CARGO) bench --bench hot_paths
	ulimit -n $$(ulimit -Hn); $(CARGO) bench --bench e2e

bench-deps:
	@BENCH=1 bash scripts/deps.sh
