# The two commands of the README are `make demo` and `make test`; both install what they need.
# The filter Envoy loads: wasm/ (the proxy-wasm glue) around the core, a cdylib alone (with an
# rlib beside it LTO keeps ~300 KB more code). wasm-opt -Oz then takes off another ~70 KB, and 2.5 KB more with
# --low-memory-unused and a second -Oz: Rust's wasm32 layout puts the 1 MiB stack first, growing
# down towards 0, so the low 1 KiB is touched only by a stack about to overflow.
WASM := target/jwtguard.wasm
# Panic locations name the source files of dependencies: with the builder's cargo home cut from
# them the .wasm does not depend on where it is built (the same toolchain, wasm-opt and
# Cargo.lock give the same bytes) and is 2.5 KB smaller. The directory is crates.io's for
# cargo >= 1.85 (the workspace's rust-version); `make wasm` fails if a path is left.
CARGO_HOME ?= $(HOME)/.cargo
WASM_REMAP := --remap-path-prefix=$(CARGO_HOME)/registry/src/index.crates.io-1949cf8c6b5b557f=
# The end-to-end suites that run Envoy with the filter: `make test` runs them against both builds.
E2E := --test filter_e2e --test revocation_e2e --test jwks_e2e --test feed_e2e --test policy_e2e \
	--test signals_e2e --test monitoring --test demo

.PHONY: deps wasm module build demo test lint bench fuzz oci

deps:
	scripts/deps.sh

wasm: deps
	cargo build --config 'target.wasm32-wasip1.rustflags=["$(WASM_REMAP)"]' --profile wasm --target wasm32-wasip1 -p jwtguard-wasm
	wasm-opt -Oz --low-memory-unused -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
		--enable-mutable-globals target/wasm32-wasip1/wasm/jwtguard_wasm.wasm -o $(WASM)
	@! grep -qE "registry/src/|git/checkouts/" $(WASM) || { echo "$(WASM) names the builder's cargo home: set CARGO_HOME"; exit 1; }

# The Envoy 1.40 dynamic module: target/module/libjwtguard_module.so (profile `module`).
module: deps
	cargo build --profile module -p jwtguard-module

build: wasm module
	cargo build --release -p jwtguard-demo -p jwtguard-revocation

demo: build
	scripts/demo.sh

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p jwtguard-wasm --target wasm32-wasip1 --profile wasm -- -D warnings
	# The fuzz targets are a workspace of their own (cargo fuzz's flags): checked here, so that
	# a change to the core that breaks them fails the suite instead of the next fuzzing run.
	cd fuzz && CARGO_TARGET_DIR=../target cargo clippy --locked --bins -- -D warnings

# Everything with the wasm build, then the end-to-end suites with the dynamic module; a failure
# in the first does not hide the second's.
# Both runs take the whole workspace: features unify as in the first, so the second builds nothing.
# The end-to-end suites run the release service that `build` made.
test: build lint
	cargo test --workspace --no-fail-fast; status=$$?; \
		JWTGUARD_BUILD=module cargo test --workspace --no-fail-fast $(E2E) && exit $$status

bench: build
	target/release/jwtguard-bench filter
	target/release/jwtguard-bench status

fuzz:
	scripts/fuzz.sh

# The filter as a Wasm OCI image (Istio's oci:// URLs) in target/oci, without a Docker engine.
oci: wasm
	scripts/oci.sh
