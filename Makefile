# The two commands of the README are `make demo` and `make test`; both install what they need.
WASM := target/wasm32-wasip1/release/jwtguard.wasm

.PHONY: deps wasm build demo test lint bench fuzz

deps:
	scripts/deps.sh

wasm: deps
	cargo build --release --target wasm32-wasip1 -p jwtguard

build: wasm
	cargo build --release -p jwtguard-demo

demo: build
	scripts/demo.sh

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p jwtguard --target wasm32-wasip1 --release -- -D warnings

test: wasm lint
	cargo test --workspace

bench: build
	bench/filter.sh

fuzz:
	scripts/fuzz.sh
