# Developer entry points. Recipes run from the directory holding this Makefile,
# so `make -C path/to/repo test` and `make -f path/to/repo/Makefile test` work.
#
#   make venv    create/refresh .venv (editable install with [test] extras), and put `lambent` on PATH
#                (scripts/link-cli.sh: /usr/local/bin as root, else ~/.local/bin)
#   make test    run ruff and mypy (scripts/lint.sh), then pytest against a throwaway Redis, Kafka and ElasticMQ;
#                pass pytest args via ARGS, e.g. make test ARGS="-k apigw -x" (LINT=0 skips ruff and mypy)
#   make lint    only ruff and mypy over runtime/, tests/, bench/ (seconds)
#   make up      install redis-server if needed, put `lambent` on PATH as make venv does, then run every
#                role (scripts/up.sh: Kafka and ElasticMQ too; KAFKA=0 / SQS=0 skip them)
#   make bench   run bench/sync.py
#   make clean   remove .state (throwaway Redis state, locks)

SHELL := /bin/bash
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
ARGS ?=

.PHONY: venv test lint up bench clean

venv:
	cd "$(ROOT)" && scripts/venv.sh && scripts/link-cli.sh

test:
	cd "$(ROOT)" && scripts/test.sh $(ARGS)

lint: venv
	cd "$(ROOT)" && scripts/lint.sh

up:
	cd "$(ROOT)" && source scripts/lib.sh && ensure_redis_server && { ensure_jail_tools || true; }
	cd "$(ROOT)" && scripts/venv.sh && scripts/link-cli.sh
	cd "$(ROOT)" && exec scripts/up.sh

bench: venv
	cd "$(ROOT)" && .venv/bin/python bench/sync.py

clean:
	rm -rf "$(ROOT)/.state"
