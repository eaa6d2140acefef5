#!/usr/bin/env bash
# Installs what the local services need and nothing else: Debian packages (Redis,
# PostgreSQL, kcat, a JRE, docker-compose, Chromium for the browser test) when missing, the Kafka broker's jars from Maven
# Central into .services/kafka/libs (once per Kafka version), and the manifest checkers that
# tests/deploy runs (kustomize, kubeconform: built from the Go module proxy into
# .services/bin, once per version). Starting, probing and stopping the servers is Python:
# `python -m deploy.services up|down|env|status`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
POM=$ROOT/deploy/kafka/pom.xml
LIBS=$ROOT/.services/kafka/libs

log() { echo "install-packages: $*" >&2; }

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v kcat >/dev/null || missing+=(kcat)
command -v java >/dev/null || missing+=(default-jre-headless)
command -v openssl >/dev/null || missing+=(openssl)
# Headless Chromium: tests/integration/test_flower.py drives Flower's pages in a real browser.
command -v chromium >/dev/null || missing+=(chromium)
# Compose 1.29 (Debian's): `docker-compose config` validates docker-compose.yml, no engine needed.
command -v docker-compose >/dev/null || missing+=(docker-compose)
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n 1)
current=$(cat "$LIBS/.complete" 2>/dev/null || true)
if [ "$current" != "$version" ] && ! command -v mvn >/dev/null; then missing+=(maven); fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        log "missing: ${missing[*]}. Install them (Debian: sudo apt-get install -y ${missing[*]}) and rerun."
        exit 1
    fi
    log "apt-get install ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    # Debian starts its own servers on install; ours run on their own ports and data.
    for unit in redis-server postgresql; do
        if command -v systemctl >/dev/null && systemctl is-active --quiet "$unit" 2>/dev/null; then
            systemctl stop "$unit" || true
        fi
    done
fi

if [ "$current" != "$version" ]; then
    log "Kafka $version jars from Maven Central (first run only)"
    tmp=$LIBS.tmp
    rm -rf "$tmp"
    mkdir -p "$(dirname "$LIBS")"
    if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp.log" 2>&1; then
        tail -n 30 "$tmp.log" >&2
        log "Maven could not fetch the Kafka jars (log above); check that Maven Central is reachable"
        exit 1
    fi
    [ -f "$tmp/kafka_2.13-$version.jar" ] || { log "kafka_2.13-$version.jar missing after Maven"; exit 1; }
    echo "$version" >"$tmp/.complete"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
fi

# tests/deploy renders deploy/k8s with kustomize and validates it with kubeconform against
# the schemas vendored in tests/deploy/schemas (offline). Versions are pinned here.
BIN=$ROOT/.services/bin
go_tool() {  # NAME MODULE@VERSION: rebuilt only when the pinned version changes
    [ -x "$BIN/$1" ] && [ "$(cat "$BIN/.$1.version" 2>/dev/null)" = "$2" ] && return 0
    command -v go >/dev/null || { log "go is needed to build $1 ($2)"; exit 1; }
    log "go install $2 (first run only)"
    mkdir -p "$BIN"
    GOBIN=$BIN go install "$2" >&2
    echo "$2" >"$BIN/.$1.version"
}
go_tool kustomize sigs.k8s.io/kustomize/kustomize/v5@v5.8.1
go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform@v0.8.0
