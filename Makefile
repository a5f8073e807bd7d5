# mod_acme_rs — build, install, test, demo.
# Run as root on Debian/Ubuntu. `make test` installs everything it needs first.

CARGO       ?= cargo
APXS        ?= apxs
SO          := target/release/libmod_acme_rs.so
APACHE_CONF := /etc/apache2/mods-available

# What the build and the tests need from Debian and PyPI.
APT_PACKAGES := apache2 apache2-dev libclang-dev pebble openssl curl ca-certificates python3-pip
PIP_PACKAGES := moto[server]

.PHONY: all build install deps test demo bench clean

all: build

build:
	$(CARGO) build --release -p mod_acme_rs

install: build
	install -d "$$($(APXS) -q LIBEXECDIR)"
	install -m 0644 $(SO) "$$($(APXS) -q LIBEXECDIR)/mod_acme_rs.so"
	install -d $(APACHE_CONF)
	install -m 0644 apache-conf/acme_rs.load apache-conf/acme_rs.conf $(APACHE_CONF)/
	@echo "Installed. Enable with: a2enmod ssl status acme_rs && systemctl reload apache2"

# Idempotent: installs only what is missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@python3 -c 'import moto.server, flask' 2>/dev/null && command -v moto_server >/dev/null 2>&1 \
	  || python3 -m pip install -q '$(PIP_PACKAGES)' \
	  || python3 -m pip install -q --break-system-packages '$(PIP_PACKAGES)'
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo not found: install Rust (rustup) first"; exit 1; }

# Every test: the engine's unit tests and the integration tests against real apache2, Pebble,
# moto and the project's DNS server. The module under test is target/release/libmod_acme_rs.so.
test: deps
	$(CARGO) build --release -p mod_acme_rs
	$(CARGO) test --release --workspace

# One command, everything local: a CA, a Route53 API, a DNS server and Apache, which gets and
# serves a wildcard certificate by itself. Ctrl-C stops it all.
demo: deps build
	$(CARGO) run --release -q -p acme_rs_stack --bin acme-rs-demo -- --module $(SO)

# The README's benchmark: apache2 start to the new certificate served, median of 5 runs.
bench: deps build
	$(CARGO) run --release -q -p acme_rs_stack --bin acme-rs-demo -- --module $(SO) --bench 5

clean:
	$(CARGO) clean
