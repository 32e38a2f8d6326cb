# chanfleet: every command a user types. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Debian packages the tests and the local topology run for real.
APT_PACKAGES := redis-server redis-sentinel nginx-light prometheus prometheus-nginx-exporter \
	prometheus-redis-exporter chromium fonts-noto-color-emoji postgresql iproute2

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements-dev.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.lock
	touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## Create .venv with the pinned dependencies

.PHONY: system-deps
system-deps: ## Install Redis, Sentinel, nginx, Prometheus, PostgreSQL and the browser with apt when missing (root)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    (apt-get install -y -qq $$missing >/dev/null 2>&1 || \
	     (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null)); \
	  else echo "please run: sudo apt-get install$$missing"; exit 1; fi; \
	fi

.PHONY: lint
lint: venv ## ruff
	$(PY) -m ruff check .

.PHONY: test
test: venv system-deps ## Lint and run every test but the whole-topology ones (SQLite, or PostgreSQL with DATABASE_URL)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not topology" $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: venv system-deps ## The whole-topology tests: drills, browser, live Prometheus, load smoke, image, cluster, deployed drills
	$(PY) -m pytest -q -m topology $(PYTEST_ARGS)

.PHONY: test-sqlite
test-sqlite: venv system-deps ## The app's own tests on SQLite (what CI runs after make test on PostgreSQL)
	DATABASE_URL= $(PY) -m pytest -q app

.PHONY: chart
chart: venv ## Render the chart to build/chart for review
	$(PY) -m deploy.helm.render --out build/chart

# Load: a short soak by default; USERS=, ROOMS=, DURATION= (plateau seconds) for long runs.
USERS ?= 100
ROOMS ?= 10
DURATION ?= 90
SHARD ?= 1

.PHONY: soak
soak: venv ## Locust soak against make run's topology, memory/fd/Redis sampled (USERS=100 ROOMS=10 DURATION=90)
	$(PY) -m loadtest.run soak --users $(USERS) --rooms $(ROOMS) --duration $(DURATION)

.PHONY: rehearse-failover
rehearse-failover: venv ## Kill the Redis master mid-soak; prints dropped sockets, loss, reconnect and RTT figures (SHARD=2 with make run SHARDS=2)
	$(PY) -m loadtest.run failover --shard $(SHARD)

.PHONY: rehearse-deploy
rehearse-deploy: venv system-deps ## The chart in the local cluster (two Redis groups): smoke, second group, Redis pod killed, rolling deploy, forged XFF
	$(PY) -m pytest -s -q -p no:cacheprovider tests/test_deployed.py $(PYTEST_ARGS)

.PHONY: rehearse-rollout
rehearse-rollout: venv ## Drain and replace each WebSocket process mid-soak (the rolling deploy, locally)
	$(PY) -m loadtest.run rollout

# The reconnect-storm drill: how many clients, and whether one WebSocket process is killed or drained.
CLIENTS ?= 10000
MODE ?= kill
# The handshake ladder: sockets opened per phase against each rung.
SOCKETS ?= 3000

.PHONY: rehearse-storm
rehearse-storm: venv system-deps ## Kill -9 (or drain) one WebSocket process under N clients; prints resume p50/p99/last, refused, lost (CLIENTS=, MODE=kill|drain)
	$(PY) -m loadtest.storm --clients $(CLIENTS) --mode $(MODE)

.PHONY: bench-ladder
bench-ladder: venv system-deps ## A WebSocket process's CPU per handshake, bare uvicorn up to the full chat join, fresh and resuming (SOCKETS=)
	$(PY) -m loadtest.ladder --sockets $(SOCKETS)

# The fan-out benchmark: room sizes; DIAGNOSE=1 adds /proc counters and py-spy (not in the document).
SIZES ?= 100,1000,5000
SIZES_COST ?= 100,1000,10000,50000
DIAGNOSE ?=

.PHONY: bench
bench: venv system-deps ## Fan-out benchmark, ours vs stock vs no-Django ceiling; writes docs/benchmarks.md (SIZES=, DIAGNOSE=1)
	$(PY) -m loadtest.bench --sizes $(SIZES) $(if $(DIAGNOSE),--diagnose) --out docs/benchmarks.md

.PHONY: bench-redis-cost
bench-redis-cost: venv system-deps ## Redis CPU per group send by room size, script and pub/sub fan-out (SIZES_COST=100,1000,10000,50000)
	$(PY) -m loadtest.redis_cost --sizes $(SIZES_COST)

# The scale benchmark: one room of MEMBERS through nginx (not in CI: about 20 minutes).
MEMBERS ?= 50000
ROOMS ?= 1
SCALE_SHARDS ?= 1

.PHONY: bench-scale
bench-scale: venv system-deps ## One room of 50,000 through nginx, ours vs the ceiling; writes docs/benchmarks.md (MEMBERS=, ROOMS=, SCALE_SHARDS=)
	$(PY) -m loadtest.scale --members $(MEMBERS) --rooms $(ROOMS) --shards $(SCALE_SHARDS) \
		--cost-sizes $(SIZES_COST) --out docs/benchmarks.md

.PHONY: dev
dev: venv ## One uvicorn process, in-memory layer, SQLite: a quick look at http://127.0.0.1:8000/
	mkdir -p var
	DEBUG=1 $(PY) manage.py migrate --noinput
	DEBUG=1 $(PY) manage.py seed_demo
	DEBUG=1 BIND=127.0.0.1 PORT=8000 $(PY) -m app.realtime.server.uvicorn_server

.PHONY: run
run: venv system-deps ## Start the whole topology (Redis+Sentinel, 2 uvicorn WS, 2 gunicorn, nginx) on :8000; SHARDS=2: two Redis masters
	$(PY) -m deploy.local up

.PHONY: stop
stop: ## Stop the topology started by make run
	@test -x $(PY) && $(PY) -m deploy.local down || true

.PHONY: status
status: ## Show the processes of the topology
	@$(PY) -m deploy.local status

.PHONY: postgres
postgres: ## Start a PostgreSQL of the project's own on 127.0.0.1:5432 (var/postgres, trust auth, database test)
	deploy/local/postgres.sh start

.PHONY: postgres-stop
postgres-stop: ## Stop the PostgreSQL started by make postgres
	deploy/local/postgres.sh stop

.PHONY: clean
clean: stop postgres-stop cluster-down ## Stop and remove all local state (var/)
	rm -rf var build

# Container images (deploy/image): docker when its engine answers, else podman; archives in build/images.
.PHONY: image
image: ## Build chanfleet:<appVersion> from the Dockerfile, smoke-test every role, save build/images/chanfleet-<appVersion>.tar
	python3 -m deploy.image image

.PHONY: image-base
image-base: ## Make sure debian:bookworm-slim is stored: pulled, or made from Debian's packages when no registry answers
	python3 -m deploy.image base

.PHONY: test-images
test-images: ## Build, check and save the test cluster's stand-in redis, nginx and postgres images (build/images)
	python3 -m deploy.image test-images

# The local single-node Kubernetes cluster (deploy/cluster): built from source, state in var/cluster.
.PHONY: cluster-up
cluster-up: ## Install, build and start a local Kubernetes cluster; prints KUBECONFIG, kubectl and helm (root)
	python3 -m deploy.cluster up

.PHONY: cluster-down
cluster-down: ## Stop the local Kubernetes cluster and remove everything it left (var/cluster)
	python3 -m deploy.cluster down

.PHONY: cluster-status
cluster-status: ## Show the local Kubernetes cluster's processes and node
	python3 -m deploy.cluster status
