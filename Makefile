# spore: `make` builds everything, `make test` runs the whole suite.

MUSL      := x86_64-unknown-linux-musl
AGENT     := target/$(MUSL)/agent/spore-agent
CARGO     ?= cargo
# The master embeds the agent found here at build time.
export SPORE_AGENT_BIN := $(CURDIR)/$(AGENT)

.PHONY: all agent master deps test test-local docker-check lint bench clean musl-target

all: master

musl-target:
	@rustup target list --installed | grep -qx $(MUSL) || rustup target add $(MUSL)

agent: musl-target
	$(CARGO) build --locked -p spore-agent --profile agent --target $(MUSL)
	@ls -l $(AGENT) | awk '{ printf "agent: %s bytes\n", $$5 }'

master: agent
	$(CARGO) build --locked --release -p spore
	@echo "built target/release/spore (agent embedded)"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

deps:
	sh tests/scripts/install-deps.sh

# Everything, the Docker fleet included.
test: deps agent lint docker-check
	$(CARGO) build --locked -p spore
	$(CARGO) nextest run --locked --workspace --no-fail-fast
	$(CARGO) test --locked --workspace --doc

# Everything but the tests that need a Docker engine.
test-local: deps agent lint
	$(CARGO) build --locked -p spore
	$(CARGO) nextest run --locked --workspace --no-fail-fast -E 'not (binary(fleet) | binary(containers))'
	$(CARGO) test --locked --workspace --doc

docker-check:
	@docker info >/dev/null 2>&1 || { echo "make test: the fleet tests need a running Docker engine (docker info failed); make test-local runs everything else"; exit 1; }

bench: master
	$(CARGO) run --locked --release -p spore-tests --bin spore-bench

clean:
	$(CARGO) clean
