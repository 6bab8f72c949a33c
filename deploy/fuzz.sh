#!/usr/bin/env bash
# fuzz.sh [SECONDS [TARGET...]]: runs the libFuzzer targets of fuzz/ (all by default) for
# SECONDS (default 60) each and prints how many inputs each ran. The targets check the invariants of the crates' `fuzz`
# modules, which `cargo test` also checks as property tests on every run.
#
# cargo fuzz needs a nightly toolchain (for the sanitizer flags); cargo-fuzz itself is
# installed from crates.io into target/tools. Without nightly it says so and exits 1.
# Inputs that grew the coverage are kept in target/fuzz-corpus/<target>; crashes go to
# fuzz/artifacts/<target> (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "error: make fuzz needs a nightly toolchain (rustup toolchain install nightly); the property tests of make test check the same invariants" >&2
    exit 1
fi
tools="$PWD/target/tools"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    echo "installing cargo-fuzz into $tools" >&2
    cargo install --quiet --locked --root "$tools" cargo-fuzz
fi
export PATH="$tools/bin:$PATH"
targets=(path bearer jwt framing event snapshot)
[ $# -le 1 ] || targets=("${@:2}")
results=()
for target in "${targets[@]}"; do
    corpus="target/fuzz-corpus/$target"
    mkdir -p "$corpus"
    log="target/fuzz-corpus/$target.log"
    echo "fuzzing $target for ${seconds}s" >&2
    # -rss_limit_mb and -max_len bound memory and input size; the run ends by time.
    (cd fuzz && cargo +nightly fuzz run --release "$target" "../$corpus" "seeds/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1) \
        >"$log" 2>&1 || { echo "$target: FAILED (see $log and fuzz/artifacts/$target)" >&2; tail -40 "$log" >&2; exit 1; }
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    results+=("$(printf '%-10s %12s executions  %6s coverage points  0 crashes' "$target" "${runs:-?}" "${cov:-?}")")
done
echo "fuzzing, ${seconds} s a target ($(rustup run nightly rustc --version)):"
printf '%s\n' "${results[@]}"
