# The two commands the README starts with.
.PHONY: run test deps bench-revocation

## run: build and start the whole development stack in the foreground (Ctrl-C stops it)
run: deps
	@deploy/dev/run.sh

## test: formatting, lints and every test (what CI runs)
test: deps
	@deploy/ensure-postgres.sh
	@deploy/ensure-interop-venv.sh
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo test --workspace

deps:
	@deploy/ensure-deps.sh

## bench-revocation: revoke 1,000 tokens while three gateways serve them; print the delays
bench-revocation: deps
	cargo run --release --quiet -p system-tests --bin revocation-bench -- --tokens 1000
