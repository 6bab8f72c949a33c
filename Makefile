# The two commands the README starts with.
.PHONY: run test deps

## run: build and start the whole development stack in the foreground (Ctrl-C stops it)
run: deps
	@deploy/dev/run.sh

## test: formatting, lints and every test (what CI runs)
test: deps
	@deploy/ensure-postgres.sh
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo test --workspace

deps:
	@deploy/ensure-deps.sh
