.PHONY: install test test-fast lint bench quickstart
install:
	pip install -e '.[test]'
test:
	python -m pytest -q
test-fast:  # no real model loaded, no training: the orchestration, readers, recipes, stores
	python -m pytest -q -m "not slow"
lint:
	ruff check humpback_lite tests benchmarks
bench:
	python benchmarks/bench_engine.py
	python benchmarks/bench_train.py
	python benchmarks/bench_score.py
	python benchmarks/bench_segment.py
	python benchmarks/bench_extra_buffers.py
	python benchmarks/bench_remote.py
	python benchmarks/bench_eval.py $(if $(wildcard runs/quickstart/export/model.gguf),--run runs/quickstart)
quickstart:
	humpback run recipes/quickstart.yaml
