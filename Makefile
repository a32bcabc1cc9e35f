# PACS Extension Server — the task runner the README names.
#   make run       start the whole local stack (PostgreSQL, S3, migrations, server)
#   make test      install what the tests need and run the whole suite
#   make check     lint, type-check, buf lint/breaking and the generated-code check
#   make generate  regenerate code from protos/ (committed; never edit by hand)
#   make bench     benchmarks on the real stack, against baselines measured in the same run

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GOOGLEAPIS := .build/googleapis/google/api
GENERATED_PY := clients/python/src/pacs/v1
DESCRIPTOR := deploy/envoy/pacs.binpb
OPENAPI := deploy/envoy/openapi.json
CONTRACT_BASELINE := .ci/contract-baseline.binpb
PYTEST_ARGS ?=

.PHONY: install run serve migrate generate check-generated breaking contract-baseline lint format check test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e clients/python -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/pacs-grpc dev

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
generate: $(GOOGLEAPIS)/annotations.proto
	rm -f $(GENERATED_PY)/*_pb2*.py $(GENERATED_PY)/*_pb2*.pyi
	PATH="$(CURDIR)/$(BIN):$$PATH" PYTHON="$(CURDIR)/$(BIN)/python" $(BIN)/buf generate
	$(BIN)/buf build --as-file-descriptor-set --exclude-source-info -o $(DESCRIPTOR)
	$(BIN)/buf build --as-file-descriptor-set -o .build/openapi-source.binpb
	$(BIN)/python -m tools.openapi .build/openapi-source.binpb $(OPENAPI)

# Fails when the committed generated code differs from what the protos produce.
check-generated: generate
	@git diff --exit-code --stat -- $(GENERATED_PY) $(DESCRIPTOR) $(OPENAPI) || \
	  (echo "generated code is stale: run 'make generate' and commit the result" >&2; exit 1)
	@untracked=$$(git ls-files --others --exclude-standard -- $(GENERATED_PY) $(DESCRIPTOR) $(OPENAPI)); \
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
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code protos

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/buf format -w protos

check: lint breaking check-generated

# pytest exits 5 when it collected no test; a run that tested nothing fails.
test: install
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test-fast: install
	@$(MAKE) --no-print-directory test PYTEST_ARGS='-m "not slow" $(PYTEST_ARGS)'

# Not part of `make test`: figures, not pass/fail; results in bench/results/.
bench: install
	$(BIN)/python -m bench.mask_upload

clean:
	rm -rf .build .pytest_cache .mypy_cache .ruff_cache test-artifacts
