# The two commands of the README: `make mount` and `make test`. Both install what is
# missing first (Debian packages for FUSE and building pyfuse3, then a virtualenv).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STORE  ?= demo.mofs
MNT    ?= mnt

.PHONY: mount umount test lint system clean

mount: $(STAMP)
	@mkdir -p $(MNT)
	@$(BIN)/mofs mount $(STORE) $(MNT)
	@echo
	@echo "Try:  echo hello > $(MNT)/hello.txt && cat $(MNT)/hello.txt"
	@echo "      cp -r /usr/share/doc/make $(MNT)/ && ls $(MNT)/make"
	@echo "      $(BIN)/mofs stat $(MNT)        # the cache and the protocol messages so far"
	@echo "      make umount                  # write everything back and unmount"

umount:
	@$(BIN)/mofs umount $(MNT)

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Debian packages: FUSE 3 (fusermount3, headers), pkg-config and a compiler for pyfuse3,
# venv support for Python, attr (setfattr/getfattr, used by the tests and to pick a
# pager per directory). Installed only when something is missing.
system:
	@need=""; \
	pkg-config --exists fuse3 2>/dev/null || need="$$need fuse3 libfuse3-dev pkg-config"; \
	command -v fusermount3 >/dev/null || need="$$need fuse3"; \
	command -v gcc >/dev/null || need="$$need gcc"; \
	command -v setfattr >/dev/null || need="$$need attr"; \
	$(PYTHON) -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null || need="$$need python3-dev"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || need="$$need python3-venv"; \
	if [ -n "$$need" ]; then \
		echo "Installing Debian packages:$$need"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$need; \
	fi

$(STAMP): pyproject.toml docs/tutorial/mofs-example-pager/pyproject.toml
	@$(MAKE) --no-print-directory system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q ./docs/tutorial/mofs-example-pager  # the tutorial's plug-in pager
	@touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
