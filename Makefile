# Two commands set Pleura up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint migrate clean

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

install: $(BIN)/.installed

# umask 077: the database, media and broker under var/ hold patient data (config/settings/local.py).
migrate: install
	umask 077; mkdir -p var/broker/out var/broker/processed var/broker/control var/media
	umask 077; $(BIN)/python manage.py migrate --noinput

## make run: web server, Celery workers (inference, training) and beat with embedded defaults (SQLite, filesystem broker).
run: migrate
	umask 077; $(BIN)/python manage.py seed_demo
	umask 077; $(BIN)/python manage.py ensure_default_model
	bash scripts/run-local.sh $(HOST) $(PORT)

## make test: the whole suite (SQLite locally; PostgreSQL + Redis when DATABASE_URL / REDIS_URL are set).
test: install
	$(BIN)/ruff check .
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf var test-artifacts .pytest_cache
