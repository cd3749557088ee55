# The two commands of the README. Each installs what it needs by itself.
VENV ?= .venv
export VENV

# `make install`: see scripts/install (PREFIX, DESTDIR, SYSCONFDIR, UNITDIR, PYTHON).
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
GENERATED ?= build/shell
export PREFIX DESTDIR SYSCONFDIR GENERATED

.PHONY: demo test bench clean shell-files install uninstall

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

# The man page and the shell completions, generated from the argparse parser.
shell-files:
	@sh scripts/bootstrap build
	$(VENV)/bin/python scripts/shellfiles.py $(GENERATED)

install: shell-files
	sh scripts/install install

uninstall:
	sh scripts/install uninstall

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache src/vmhooks/*.so
