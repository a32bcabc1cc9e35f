# PACS Extension Server — the task runner the README names.
#   make run       start the whole local stack (PostgreSQL, S3, migrations, server)
#   make test      install what the tests need and run the whole suite
#   make check     lint, type-check, buf lint/breaking, the generated-code and lock checks
#   make lock      regenerate requirements/runtime.lock (the image's hashed runtime pins)
#   make generate  regenerate code from protos/ (committed; never edit by hand)
#   make soak      the long reliability runs (10 minutes of load, 10,000-request fuzzing)
#   make bench     benchmarks on the real stack, against baselines measured in the same run

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GOOGLEAPIS := .build/googleapis/google/api
GENERATED_PY := clients/protos/src/pacs/v1
DESCRIPTOR := deploy/envoy/pacs.binpb
OPENAPI := deploy/envoy/openapi.json
CONTRACT_BASELINE := .ci/contract-baseline.binpb
TS_CLIENT := clients/typescript
GENERATED_TS := $(TS_CLIENT)/src/gen
# npm ci rewrites this file, so it marks an install of exactly the lockfile.
TS_DEPS := $(TS_CLIENT)/node_modules/.package-lock.json
TS_SOURCES = $(shell find $(TS_CLIENT)/src $(TS_CLIENT)/viewer -type f) $(TS_CLIENT)/tsconfig.json
VIEWER_BUNDLE := $(TS_CLIENT)/dist-viewer/viewer.js
PYTEST_ARGS ?=

.PHONY: install viewer run serve migrate generate check-generated breaking contract-baseline lint format check lock check-lock test test-fast soak bench clean

install: $(STAMP)

# The server with its test tools, and what this repository builds beside it: the generated
# stubs (clients/protos), the Python client (clients/python) and the development-only local
# stack (devstack, `pacs-dev`), all editable.
$(STAMP): pyproject.toml clients/protos/pyproject.toml clients/python/pyproject.toml \
	devstack/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e clients/protos -e clients/python -e devstack -e '.[test]'
	touch $(STAMP)

run: install
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory viewer; \
	  else echo "npm not found: the viewer page is not built (needs Node.js 20 and npm)"; fi
	$(BIN)/pacs-dev run

# The TypeScript client (tsc) and the viewer page `make run` serves.
$(TS_DEPS): $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund

viewer: $(VIEWER_BUNDLE)

$(VIEWER_BUNDLE): $(TS_DEPS) $(TS_SOURCES)
	cd $(TS_CLIENT) && npm run --silent build

serve: install
	$(BIN)/pacs-grpc serve

migrate: install
	$(BIN)/pacs-grpc migrate

# buf cannot reach its registry here, so google/api/{annotations,http}.proto
# come from the installed googleapis-common-protos wheel into a git-ignored
# folder that buf.yaml lists as a second module.
$(GOOGLEAPIS)/annotations.proto: $(STAMP)
	mkdir -p $(GOOGLEAPIS)
	$(BIN)/python -c 'import google.api.http_pb2 as m, pathlib, shutil; src = pathlib.Path(m.__file__).parent; [shutil.copy(src / f, "$(GOOGLEAPIS)/") for f in ("annotations.proto", "http.proto")]'

# The OpenAPI document is built from an image with source info, because its
# descriptions are the protos' comments.
generate: $(GOOGLEAPIS)/annotations.proto $(TS_DEPS)
	rm -f $(GENERATED_PY)/*_pb2*.py $(GENERATED_PY)/*_pb2*.pyi
	PATH="$(CURDIR)/$(BIN):$$PATH" PYTHON="$(CURDIR)/$(BIN)/python" $(BIN)/buf generate
	$(BIN)/buf generate --template buf.gen.ts.yaml
	$(BIN)/buf build --as-file-descriptor-set --exclude-source-info -o $(DESCRIPTOR)
	$(BIN)/buf build --as-file-descriptor-set -o .build/openapi-source.binpb
	$(BIN)/python -m tools.openapi .build/openapi-source.binpb $(OPENAPI)

# Fails when the committed generated code differs from what the protos produce.
check-generated: generate
	@git diff --exit-code --stat -- $(GENERATED_PY) $(GENERATED_TS) $(DESCRIPTOR) $(OPENAPI) || \
	  (echo "generated code is stale: run 'make generate' and commit the result" >&2; exit 1)
	@untracked=$$(git ls-files --others --exclude-standard -- $(GENERATED_PY) $(GENERATED_TS) $(DESCRIPTOR) $(OPENAPI)); \
	  if [ -n "$$untracked" ]; then echo "generated files not committed: $$untracked" >&2; exit 1; fi

# The released contract is frozen: buf's FILE rules against the image saved
# when it was released. Refresh the baseline only when releasing a contract.
breaking: $(GOOGLEAPIS)/annotations.proto
	$(BIN)/buf build -o .build/current.binpb
	$(BIN)/buf breaking .build/current.binpb --against $(CONTRACT_BASELINE)

contract-baseline: $(GOOGLEAPIS)/annotations.proto
	$(BIN)/buf build --exclude-source-info -o $(CONTRACT_BASELINE)

lint: $(GOOGLEAPIS)/annotations.proto
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code protos

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/buf format -w protos

# The image's runtime dependencies (Dockerfile), pinned with hashes from pyproject.toml and
# requirements/runtime.in. Pins still allowed stay as they are; LOCK_ARGS=--upgrade moves
# them all to the newest releases allowed. Needs PyPI.
# The packages built from this repository (clients/protos, clients/python) stay out of it.
RUNTIME_LOCK := requirements/runtime.lock
LOCK_COMPILE = $(BIN)/uv pip compile --quiet pyproject.toml requirements/runtime.in \
	--generate-hashes --python-version 3.11 --python-platform linux \
	--no-emit-package pacs-extension-protos --no-emit-package pacs-extension-client \
	--custom-compile-command "make lock"

lock: install
	$(LOCK_COMPILE) $(LOCK_ARGS) -o $(RUNTIME_LOCK)

# Fails when the lock no longer matches the declared dependencies: it is compiled again,
# from its own pins, into a scratch copy, which must come out the same.
check-lock: install
	@mkdir -p .build && cp $(RUNTIME_LOCK) .build/runtime.lock
	@$(LOCK_COMPILE) -o .build/runtime.lock
	@diff -u $(RUNTIME_LOCK) .build/runtime.lock || \
	  (echo "$(RUNTIME_LOCK) is stale: run 'make lock' and commit the result" >&2; exit 1)

check: lint breaking check-generated check-lock

# pytest exits 5 when it collected no test; a run that tested nothing fails.
test: install
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test-fast: install
	@$(MAKE) --no-print-directory test PYTEST_ARGS='-m "not slow" $(PYTEST_ARGS)'

# The long reliability runs: ten minutes of series with reads (SOAK_SECONDS), 10,000
# generated requests through gRPC and 2,400 through REST (schemathesis is slower per request).
soak: install
	@PACS_SOAK=1 FUZZ_REQUESTS=$${FUZZ_REQUESTS:-10000} REST_FUZZ_REQUESTS=$${REST_FUZZ_REQUESTS:-2400} \
	  $(BIN)/python -m pytest tests/soak \
	  tests/integration/test_fuzz_grpc.py tests/e2e/test_fuzz_rest.py $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# Not part of `make test`: figures, not pass/fail; results (JSON and PNG) in bench/results/.
bench: install
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench

clean:
	rm -rf .build .pytest_cache .mypy_cache .ruff_cache test-artifacts
