.PHONY: install test lint bench quickstart
install:
	pip install -e '.[test]'
test:
	python -m pytest -q
lint:
	ruff check humpback_lite tests benchmarks
bench:
	python benchmarks/bench_engine.py
quickstart:
	humpback run recipes/quickstart.yaml
