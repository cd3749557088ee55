# The two commands of the README. Each installs what it needs by itself.
VENV ?= .venv
export VENV

.PHONY: demo test bench clean

demo:
	@sh scripts/bootstrap demo
	$(VENV)/bin/vmhooks demo

test:
	@sh scripts/bootstrap test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench:
	@sh scripts/bootstrap test
	$(VENV)/bin/python bench/chain.py
	$(VENV)/bin/python bench/agent.py
	$(VENV)/bin/python bench/kubevirt.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
