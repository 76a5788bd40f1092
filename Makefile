# tripwire: every task behind one Makefile. `make help` lists them.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard proto/tripwire/v1/*.proto)

.DEFAULT_GOAL := help
.PHONY: help install run test test-unit test-integration test-e2e proto proto-check proto-lint fmt lint typecheck bench clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-17s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server,dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv with the server, client and dev tools (editable)

run: $(STAMP) ## Run the server on 127.0.0.1:50051 with ./tripwire.db
	$(BIN)/tripwire serve

test: $(STAMP) ## Run the whole test suite (unit, integration, e2e)
	$(BIN)/pytest -q

test-unit: $(STAMP) ## Run the pure-logic tests only
	$(BIN)/pytest -q tests/unit

test-integration: $(STAMP) ## Run the in-process server tests only
	$(BIN)/pytest -q tests/integration

test-e2e: $(STAMP) ## Run the subprocess/grpcurl tests only
	$(BIN)/pytest -q tests/e2e

proto: $(STAMP) ## Regenerate the Python code (and the documented descriptors reflection serves)
	$(BIN)/python -m grpc_tools.protoc -Iproto \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--python_out=proto --grpc_python_out=proto \
		--mypy_out=proto --mypy_grpc_out=proto \
		--include_source_info --descriptor_set_out=proto/tripwire/v1/descriptors.binpb \
		$(PROTO_SRC)

proto-check: proto ## Regenerate and fail if the committed code differs
	@git diff --exit-code --stat -- proto || \
		(echo "generated code is stale: run 'make proto' and commit" && exit 1)
	@test -z "$$(git status --porcelain -- proto)" || \
		(git status --porcelain -- proto; echo "untracked generated files: commit them" && exit 1)

proto-lint: $(STAMP) ## buf lint the contract (and buf breaking against origin/main, if it exists)
	$(BIN)/buf lint
	@if git rev-parse --verify -q origin/main >/dev/null; then \
		$(BIN)/buf breaking --against '.git#branch=origin/main'; fi

fmt: $(STAMP) ## Format the code
	$(BIN)/ruff format server client tests bench examples
	$(BIN)/ruff check --fix server client tests bench examples

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check server client tests bench examples
	$(BIN)/ruff format --check server client tests bench examples

typecheck: $(STAMP) ## mypy --strict on the server and client
	$(BIN)/mypy server/tripwire/server client/tripwire/client

bench: $(STAMP) ## Run the benchmarks (prints ratios; never part of `make test`)
	$(BIN)/python bench/run_all.py

clean: ## Remove the virtual env and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
