# The two commands of the README, on a fresh Debian machine:
#   make demo   — installs what is missing, builds, runs the crane scenario end to end
#   make test   — installs what is missing, builds, runs every test
# and for the next steps:
#   make run    — the appliance on examples/run/tibet-twin.yaml with a simulated PLC and a twin
#   make deb    — the Debian package of the release build (.build/deb/tibet-twin_*.deb)
SWIFT ?= swift
BIN := .build/debug/tibet-twin
export TIBET_TWIN_PYTHON := $(CURDIR)/.venv/bin/python

.PHONY: all setup build demo run deb test bench fuzz clean

all: build

setup:
	@scripts/setup.sh

build: setup
	$(SWIFT) build

demo: build
	$(BIN) demo

# Ctrl-C stops the appliance, the simulated PLC and the twin (scripts/run-local.sh).
run: build
	TIBET_TWIN_BIN=$(BIN) scripts/run-local.sh

# The release binary with the Swift runtime linked in, so the package needs only Debian's
# libraries (libc6, libstdc++6, libgcc-s1, libmodbus5). See docs/operations.md.
deb: setup
	$(SWIFT) build -c release --product tibet-twin --static-swift-stdlib
	scripts/make-deb.sh .build/release/tibet-twin

test: setup
	$(SWIFT) build --build-tests
	$(SWIFT) test --no-parallel

bench: setup
	$(SWIFT) build -c release --product tibet-twin-bench
	$(SWIFT) build -c release --product tibet-twin
	.build/release/tibet-twin-bench

# libFuzzer over the four readers of untrusted bytes, FUZZ_SECONDS each (default 60); new
# inputs go to .build/fuzz-corpus/, crashes and hangs to fuzz-*.out files (see docs/fuzzing.md).
FUZZ_SECONDS ?= 60
fuzz: setup
	$(SWIFT) build --scratch-path .build/fuzz -c release --product tibet-twin-fuzz \
		-Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING
	@for t in yaml twin modbus opcua; do \
		mkdir -p .build/fuzz-corpus/$$t; \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		SWIFT_BACKTRACE=enable=no TIBET_FUZZ_TARGET=$$t .build/fuzz/release/tibet-twin-fuzz .build/fuzz-corpus/$$t fuzz/corpus/$$t \
			-max_total_time=$(FUZZ_SECONDS) -timeout=5 -rss_limit_mb=2048 -max_len=65600 \
			-artifact_prefix=fuzz-$$t- -print_final_stats=1 2>&1 | grep -E "^#|stat::|ERROR|SUMMARY|Done" | tail -8 \
			|| exit 1; \
		ls fuzz-$$t-* >/dev/null 2>&1 && { echo "fuzz: $$t found a failing input: fuzz-$$t-*"; exit 1; }; \
	done; true

clean:
	rm -rf .build

# Regenerates the Swift of the Sparkplug B payload schema (Sources/SparkplugB/proto) with protoc
# and protoc-gen-swift of the pinned swift-protobuf. The result is committed: a normal build
# needs neither. Installs protoc (Debian protobuf-compiler) when it is missing.
.PHONY: sparkplug-proto
sparkplug-proto:
	@command -v protoc >/dev/null || { apt-get update && apt-get install -y protobuf-compiler; }
	$(SWIFT) build --product protoc-gen-swift
	protoc --plugin=protoc-gen-swift=.build/debug/protoc-gen-swift --swift_opt=Visibility=Public \
		--swift_out=Sources/SparkplugB -I Sources/SparkplugB/proto Sources/SparkplugB/proto/sparkplug_b.proto
