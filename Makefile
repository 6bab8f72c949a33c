# The two commands the README starts with.
.PHONY: run test deps bench bench-revocation fuzz

## run: build and start the whole development stack in the foreground (Ctrl-C stops it)
run: deps
	@deploy/dev/run.sh

## test: formatting, lints and every test (what CI runs)
test: deps
	@deploy/ensure-postgres.sh
	@deploy/ensure-interop-venv.sh
	@deploy/ensure-oidc-provider.sh
	@deploy/ensure-chromium.sh
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo test --workspace

deps:
	@deploy/ensure-deps.sh
	@deploy/ensure-nats-server.sh

## bench-revocation: revoke 1,000 tokens while three gateways serve them; print the delays
bench-revocation: deps
	cargo run --release --quiet -p bench --bin revocation-bench -- --tokens 1000

## bench: the performance figures of BENCHMARKS.md (about 30 minutes; prints every table)
bench: deps
	@deploy/ensure-bench-deps.sh
	@deploy/ensure-interop-venv.sh
	cargo build --release --quiet --workspace --bins
	target/release/edge-bench
	target/release/replay-bench --runs 3
	target/release/revocation-bench --tokens 1000
	target/release/revoke-bench

## fuzz: every libFuzzer target for FUZZ_SECONDS each (default 60; needs a nightly toolchain)
fuzz:
	@deploy/fuzz.sh $(or $(FUZZ_SECONDS),60)
