# The two commands of the README, on a fresh Debian machine:
#   make demo   — installs what is missing, builds, runs the crane scenario end to end
#   make test   — installs what is missing, builds, runs every test
SWIFT ?= swift
BIN := .build/debug/tibet-twin
export TIBET_TWIN_PYTHON := $(CURDIR)/.venv/bin/python

.PHONY: all setup build demo test bench clean

all: build

setup:
	@scripts/setup.sh

build: setup
	$(SWIFT) build

demo: build
	$(BIN) demo

test: setup
	$(SWIFT) build --build-tests
	$(SWIFT) test --no-parallel

bench: setup
	$(SWIFT) build -c release --product tibet-twin-bench
	$(SWIFT) build -c release --product tibet-twin
	.build/release/tibet-twin-bench

clean:
	rm -rf .build
