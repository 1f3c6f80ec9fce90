# The two commands of the README. Both install what they need first.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: install demo test lint up down clean images

install:
	./scripts/bootstrap.sh

demo: install
	$(VENV)/bin/editflow demo

# pytest exits 5 when it collected no test; that is not a failure of the suite
# (the closing line still says so), every other non-zero code is.
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

# The chart's images (editflow/operator, editflow/gateway, editflow/worker) with buildah,
# pushed to the local registry; cached by content hash (charts/editflow/README.md, "Images").
# IMAGES_ARGS="--target control-plane" builds one target, "--no-push" skips the registry.
IMAGES_ARGS ?=
images: install
	$(VENV)/bin/editflow dev images $(IMAGES_ARGS)

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

up: install
	$(VENV)/bin/editflow dev up

down:
	$(VENV)/bin/editflow dev down

clean:
	rm -rf build dist .pytest_cache .ruff_cache
