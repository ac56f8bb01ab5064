# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv

.PHONY: demo test bench cpython-tests clean

$(VENV)/.installed: pyproject.toml setup.py $(wildcard src/pyflight/core/c/*.c src/pyflight/core/c/*.h src/pyflight/*/c/*.c)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e .
	touch $@

# The demo's web server (FastAPI on uvicorn) comes with the `demo` extra; installed once.
demo: $(VENV)/.installed
	$(VENV)/bin/python -c "import fastapi, uvicorn" 2>/dev/null || $(VENV)/bin/python -m pip install -q -e ".[demo]"
	$(VENV)/bin/pyflight info --self
	$(VENV)/bin/pyflight demo -o pyflight-demo.pyfl
	$(VENV)/bin/pyflight report pyflight-demo.pyfl

test:
	./scripts/test-all.sh

# CPython's own suites with and without the recorder (slow: minutes per version).
cpython-tests:
	./scripts/cpython-tests.sh

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/bench_record.py
	$(VENV)/bin/python bench/bench_snapshot.py
	$(VENV)/bin/python bench/bench_reader.py

clean:
	rm -rf $(VENV) .venvs build src/pyflight/*.so src/pyflight/*/*.so src/*.egg-info pyflight-demo.pyfl
