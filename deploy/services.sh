#!/usr/bin/env bash
# Local backing services for the scoring workers' integration tests:
#   Redis (Celery broker), PostgreSQL (results), Apache Kafka in KRaft mode (streams).
#
# Usage: deploy/services.sh up|down|env|status [redis|postgres|kafka ...]
#        (default: all three)
#
#   up      start what is not already answering, then print the exports (stdout)
#   down    stop what this script started (by pid file); anything else is left alone
#   env     print the exports only:   eval "$(deploy/services.sh env)"
#   status  say which services answer; exit 1 when one does not
#
# Progress and errors go to stderr, so `eval "$(deploy/services.sh up)"` works.
# Everything runs on 127.0.0.1 only and keeps its state under $ROOT/.services/.
#
# Ports (defaults): SCORING_TEST_REDIS_PORT=6379  SCORING_TEST_PG_PORT=5432
#                   SCORING_TEST_KAFKA_PORT=9092 (its controller uses port + 1)
# If SCORING_KAFKA_BOOTSTRAP is set and a broker answers there, it is used as is.
set -Eeuo pipefail
# No silent exits: name the command that failed unexpectedly.
trap 'echo "services: ERROR: unexpected failure (exit $?) at ${BASH_SOURCE[0]}:$LINENO: $BASH_COMMAND" >&2' ERR

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=$ROOT/.services
HOST=127.0.0.1

REDIS_PORT=${SCORING_TEST_REDIS_PORT:-6379}
PG_PORT=${SCORING_TEST_PG_PORT:-5432}
KAFKA_PORT=${SCORING_TEST_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
KAFKA_WAIT_S=${SCORING_TEST_KAFKA_WAIT_S:-60}
# Kafka's own convention for heap settings; small by default (2-core CI machine).
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m}

# The credentials the application and its tests use (see `env`).
PG_USER=scoring
PG_PASSWORD=scoring
PG_DB=scoring

REDIS_DIR=$STATE/redis
KAFKA_DIR=$STATE/kafka
KAFKA_LIBS=$KAFKA_DIR/libs
KAFKA_POM=$ROOT/deploy/kafka/pom.xml
KAFKA_TEMPLATE=$ROOT/deploy/kafka/server.properties

# ---------------------------------------------------------------- helpers

log() { echo "services: $*" >&2; }

die() {
    echo "services: ERROR: $*" >&2
    exit 1
}

# show_log_tail FILE: the last lines of a service's log, to explain a failure.
show_log_tail() {
    if [ -r "$1" ]; then
        echo "---- last lines of $1 ----" >&2
        tail -n 30 "$1" >&2 || true
        echo "----" >&2
    fi
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# pid_is PIDFILE PATTERN: prints the pid when the pid file names a live process
# whose command line contains PATTERN (guards against recycled pids).
pid_is() {
    local pid cmdline
    [ -r "$1" ] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$2"* ]] || return 1
    echo "$pid"
}

# stop_pid PID NAME SECONDS: SIGTERM, wait, then SIGKILL as a last resort.
stop_pid() {
    local pid=$1 name=$2 wait_s=$3 i
    kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < wait_s * 5; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    log "$name (pid $pid) did not stop within ${wait_s}s; killing it"
    kill -9 "$pid" 2>/dev/null || true
}

is_root() { [ "$(id -u)" -eq 0 ]; }

APT_UPDATED=0
# apt_install PKG...: install Debian packages; `apt-get update` at most once.
apt_install() {
    if ! is_root || ! command -v apt-get >/dev/null; then
        die "missing packages: $*. Install them (Debian: sudo apt-get install -y $*) and rerun."
    fi
    log "installing $* (apt-get)"
    if [ "$APT_UPDATED" = 0 ]; then
        apt-get update -qq >&2 || die "apt-get update failed; check network access to the Debian mirrors"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
        die "apt-get install $* failed (see above)"
}

# ---------------------------------------------------------------- packages

# pg_bindir [MAJOR]: directory of the PostgreSQL server programs (initdb, pg_ctl),
# the highest installed major version unless MAJOR is given.
pg_bindir() {
    local d
    if [ -n "${1:-}" ]; then
        d=/usr/lib/postgresql/$1/bin
        [ -x "$d/initdb" ] && echo "$d"
        return 0
    fi
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        if [ -x "$d/initdb" ]; then
            echo "$d"
            return 0
        fi
    done
    # Not Debian's layout: initdb on PATH.
    if command -v initdb >/dev/null; then dirname "$(command -v initdb)"; fi
}

# java_major: the major version of `java` on PATH (0 when there is none).
java_major() {
    local v
    v=$(java -version 2>&1 | sed -n 's/.*version "\([0-9][0-9.]*\).*/\1/p' | head -n 1)
    v=${v#1.}
    echo "${v%%.*}" | grep -E '^[0-9]+$' || echo 0
}

# ensure_packages SERVICE...: install what the requested services need.
ensure_packages() {
    local pkgs=() s
    for s in "$@"; do
        case $s in
        redis)
            command -v redis-server >/dev/null && command -v redis-cli >/dev/null || pkgs+=(redis-server)
            ;;
        postgres)
            [ -n "$(pg_bindir)" ] || pkgs+=(postgresql)
            ;;
        kafka)
            command -v kcat >/dev/null || pkgs+=(kcat)
            command -v java >/dev/null || pkgs+=(default-jre-headless)
            # Maven is only needed to fill the jar cache.
            kafka_libs_current || command -v mvn >/dev/null || pkgs+=(maven)
            ;;
        esac
    done
    if [ ${#pkgs[@]} -gt 0 ]; then apt_install "${pkgs[@]}"; fi
    return 0
}

# ---------------------------------------------------------------- redis

redis_answers() {
    [ "$(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
}

redis_up() {
    local t0 i pid
    t0=$(now)
    if redis_answers; then
        log "redis: reusing the server answering on $HOST:$REDIS_PORT"
        return 0
    fi
    if pid=$(pid_is "$REDIS_DIR/redis.pid" redis-server); then
        die "redis: our server (pid $pid) runs on port $(cat "$REDIS_DIR/port" 2>/dev/null), not $REDIS_PORT; run '$0 down redis' first"
    fi
    if port_open "$REDIS_PORT"; then
        die "redis: port $REDIS_PORT is taken by something that does not answer PING; stop it or pick another port: SCORING_TEST_REDIS_PORT=$((REDIS_PORT + 1)) $0 up"
    fi
    mkdir -p "$REDIS_DIR"
    : >"$REDIS_DIR/redis.log"
    echo "$REDIS_PORT" >"$REDIS_DIR/port"
    # No persistence: the broker's content is throwaway test data.
    redis-server --daemonize yes --bind "$HOST" --port "$REDIS_PORT" \
        --save '' --appendonly no --dir "$REDIS_DIR" \
        --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" >&2 9>&- ||
        {
            show_log_tail "$REDIS_DIR/redis.log"
            die "redis: redis-server did not start (log above)"
        }
    for ((i = 0; i < 100; i++)); do
        redis_answers && break
        sleep 0.1
    done
    if ! redis_answers; then
        show_log_tail "$REDIS_DIR/redis.log"
        die "redis: no PONG from $HOST:$REDIS_PORT after 10s (log above)"
    fi
    log "redis: started on $HOST:$REDIS_PORT in $(since "$t0")"
}

redis_down() {
    local pid
    if pid=$(pid_is "$REDIS_DIR/redis.pid" redis-server); then
        stop_pid "$pid" redis 10
        rm -f "$REDIS_DIR/redis.pid"
        log "redis: stopped (pid $pid)"
    else
        log "redis: nothing started by this script is running"
    fi
}

redis_status() {
    local pid origin=external
    if pid=$(pid_is "$REDIS_DIR/redis.pid" redis-server); then origin="started here, pid $pid"; fi
    if redis_answers; then
        echo "redis     up    $HOST:$REDIS_PORT ($origin)"
    else
        echo "redis     down  $HOST:$REDIS_PORT"
        return 1
    fi
}

# ---------------------------------------------------------------- postgres
#
# A private cluster (initdb + pg_ctl), not Debian's 15/main: it needs no
# service manager, listens only where we say, and `down` cannot touch a
# cluster somebody else relies on. The server refuses to run as root, so as
# root the cluster belongs to the `postgres` user. Layout of $PG_BASE:
#   data/          the cluster          run/  unix socket (private: local auth is trust)
#   postgres.log   the server log
# Admin work goes through the socket as superuser `postgres`; the application
# logs in over TCP as scoring/scoring (scram-sha-256).

PG_BASE=

# as_pg CMD...: run CMD as the cluster owner (`postgres` when we are root).
as_pg() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# pg_choose_base: decide (once; remembered in .services/pg.base) where the
# cluster lives. .services/pg unless the `postgres` user cannot reach it (a
# checkout under a private home, say) or the socket path would be too long
# for a unix socket (~107 bytes), then /tmp/scoring-services-pg-PORT.
pg_choose_base() {
    local record=$STATE/pg.base
    if [ -s "$record" ]; then
        PG_BASE=$(cat "$record")
        return 0
    fi
    PG_BASE=$STATE/pg
    if is_root; then
        chmod 0755 "$STATE"
        if ! runuser -u postgres -- test -x "$STATE" 2>/dev/null; then
            log "postgres: user postgres cannot traverse $STATE (a parent directory is not o+x); using /tmp"
            PG_BASE=/tmp/scoring-services-pg-$PG_PORT
        fi
    fi
    if [ ${#PG_BASE} -gt 80 ]; then
        log "postgres: $PG_BASE is too long for a unix socket path; using /tmp"
        PG_BASE=/tmp/scoring-services-pg-$PG_PORT
    fi
    echo "$PG_BASE" >"$record"
}

# pg_load_base: like pg_choose_base but never creates anything (down/status).
pg_load_base() {
    PG_BASE=
    if [ -s "$STATE/pg.base" ]; then PG_BASE=$(cat "$STATE/pg.base"); fi
    [ -n "$PG_BASE" ]
}

# pg_ours_port: the port our cluster runs on, when it runs.
pg_ours_port() {
    local bin
    [ -n "$PG_BASE" ] && [ -f "$PG_BASE/data/PG_VERSION" ] || return 1
    bin=$(pg_bindir "$(cat "$PG_BASE/data/PG_VERSION")")
    [ -n "$bin" ] || return 1
    as_pg "$bin/pg_ctl" status -D "$PG_BASE/data" >/dev/null 2>&1 || return 1
    # Line 4 of postmaster.pid is the port.
    sed -n 4p "$PG_BASE/data/postmaster.pid"
}

# pg_tool NAME: a PostgreSQL client program of the newest installed version
# (Debian's /usr/bin wrappers pick a version by cluster, which may not exist).
pg_tool() {
    local bin
    bin=$(pg_bindir)
    if [ -n "$bin" ] && [ -x "$bin/$1" ]; then echo "$bin/$1"; else echo "$1"; fi
}

pg_answers() {
    "$(pg_tool pg_isready)" -q -h "$HOST" -p "$PG_PORT" -t 3 2>/dev/null
}

# pg_app_login: the application's credentials work over TCP.
pg_app_login() {
    PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=5 "$(pg_tool psql)" -X -q -At -h "$HOST" -p "$PG_PORT" \
        -U "$PG_USER" -d "$PG_DB" -c 'SELECT 1' >/dev/null 2>&1
}

# pg_admin SOCKETDIR SQL: run SQL as superuser `postgres` over a unix socket.
pg_admin() {
    as_pg "$(pg_tool psql)" -X -q -At -v ON_ERROR_STOP=1 -h "$1" -p "$PG_PORT" -U postgres -d postgres -c "$2"
}

# pg_ensure_app_role SOCKETDIR: role and database of the application, if absent.
# CREATEDB lets the tests make a database per run.
pg_ensure_app_role() {
    local sock=$1
    pg_admin "$sock" "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
            CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
        ELSE
            ALTER ROLE $PG_USER LOGIN CREATEDB;
        END IF; END \$\$;" >&2 || return 1
    if [ "$(pg_admin "$sock" "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
        pg_admin "$sock" "CREATE DATABASE $PG_DB OWNER $PG_USER" >&2 || return 1
    fi
}

pg_init_cluster() {
    local bin=$1 data=$PG_BASE/data
    log "postgres: creating a cluster in $data ($("$bin/postgres" --version))"
    rm -rf "$data"
    mkdir -p "$PG_BASE/run"
    if is_root; then chown -R postgres:postgres "$PG_BASE"; fi
    chmod 0700 "$PG_BASE"
    # --no-locale: the C locale exists everywhere; the encoding is still UTF8.
    as_pg "$bin/initdb" -D "$data" -U postgres -E UTF8 --no-locale \
        --auth-local=trust --auth-host=scram-sha-256 >"$PG_BASE/initdb.log" 2>&1 ||
        {
            show_log_tail "$PG_BASE/initdb.log"
            die "postgres: initdb failed (log above)"
        }
    # Loopback only, socket in our own directory (not /var/run/postgresql, which
    # may not exist). Durability is switched off: the data is throwaway and
    # tests that create databases run much faster without fsync.
    cat >>"$data/postgresql.conf" <<EOF

# --- deploy/services.sh (test cluster) ---
listen_addresses = '$HOST'
unix_socket_directories = '$PG_BASE/run'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
}

pg_up() {
    local t0 bin data sock ours i
    t0=$(now)
    pg_choose_base
    data=$PG_BASE/data
    sock=$PG_BASE/run

    if pg_answers; then
        ours=$(pg_ours_port || true)
        if [ "$ours" = "$PG_PORT" ]; then
            log "postgres: reusing our cluster on $HOST:$PG_PORT"
            pg_ensure_app_role "$sock" || die "postgres: could not create role/database $PG_USER in our cluster"
        else
            # Someone else's server (Debian's cluster, say): as root, try its
            # default socket; otherwise the app role must already exist.
            log "postgres: reusing a server on $HOST:$PG_PORT that this script did not start"
            if ! pg_app_login && is_root; then
                pg_ensure_app_role /var/run/postgresql 2>/dev/null || true
            fi
        fi
        pg_app_login || die "postgres: a server answers on $HOST:$PG_PORT but $PG_USER/$PG_PASSWORD cannot log in to database $PG_DB. Create them there:
    sudo -u postgres psql -p $PG_PORT -c \"CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'\" -c \"CREATE DATABASE $PG_DB OWNER $PG_USER\"
or use a private cluster on another port:  SCORING_TEST_PG_PORT=$((PG_PORT + 1)) $0 up postgres"
        return 0
    fi
    if port_open "$PG_PORT"; then
        die "postgres: port $PG_PORT is taken by something that is not PostgreSQL; pick another: SCORING_TEST_PG_PORT=$((PG_PORT + 1)) $0 up"
    fi
    ours=$(pg_ours_port || true)
    if [ -n "$ours" ]; then
        die "postgres: our cluster already runs on port $ours, not $PG_PORT; run '$0 down postgres' first"
    fi

    # A cluster from an earlier run is reused; one whose initdb never
    # finished (no PG_VERSION) is made anew.
    if [ -f "$data/PG_VERSION" ]; then
        bin=$(pg_bindir "$(cat "$data/PG_VERSION")")
        [ -n "$bin" ] || die "postgres: $data was made by PostgreSQL $(cat "$data/PG_VERSION"), which is not installed; remove it ($0 down; rm -rf $PG_BASE $STATE/pg.base) and rerun"
    else
        bin=$(pg_bindir)
        pg_init_cluster "$bin"
    fi

    log "postgres: starting on $HOST:$PG_PORT"
    as_pg "$bin/pg_ctl" start -D "$data" -l "$PG_BASE/postgres.log" -w -t 60 \
        -o "-p $PG_PORT -c listen_addresses=$HOST -c unix_socket_directories=$sock" >/dev/null 9>&- ||
        {
            show_log_tail "$PG_BASE/postgres.log"
            die "postgres: pg_ctl start failed (log above)"
        }
    for ((i = 0; i < 150; i++)); do
        pg_answers && break
        sleep 0.2
    done
    if ! pg_answers; then
        show_log_tail "$PG_BASE/postgres.log"
        die "postgres: not accepting connections on $HOST:$PG_PORT after 30s (log above)"
    fi
    pg_ensure_app_role "$sock" || die "postgres: could not create role/database $PG_USER"
    pg_app_login || {
        show_log_tail "$PG_BASE/postgres.log"
        die "postgres: $PG_USER cannot log in over TCP (log above)"
    }
    log "postgres: started on $HOST:$PG_PORT in $(since "$t0") (data: $data)"
}

pg_down() {
    local bin
    if ! pg_load_base || [ -z "$(pg_ours_port || true)" ]; then
        log "postgres: nothing started by this script is running"
        return 0
    fi
    bin=$(pg_bindir "$(cat "$PG_BASE/data/PG_VERSION")")
    as_pg "$bin/pg_ctl" stop -D "$PG_BASE/data" -m fast -w -t 60 >/dev/null ||
        die "postgres: pg_ctl stop failed; see $PG_BASE/postgres.log"
    log "postgres: stopped"
}

pg_status() {
    local origin=external ours
    pg_load_base || true
    ours=$(pg_ours_port || true)
    if [ "$ours" = "$PG_PORT" ]; then origin="started here, data $PG_BASE/data"; fi
    if pg_answers; then
        if pg_app_login; then
            echo "postgres  up    $HOST:$PG_PORT ($origin)"
        else
            echo "postgres  up    $HOST:$PG_PORT ($origin) but $PG_USER/$PG_PASSWORD cannot log in"
            return 1
        fi
    else
        echo "postgres  down  $HOST:$PG_PORT"
        return 1
    fi
}

# ---------------------------------------------------------------- kafka
#
# The real Apache Kafka broker, jars from Maven Central (deploy/kafka/pom.xml),
# one JVM acting as broker and KRaft controller. No ZooKeeper, no tarball.

# kafka_answers BOOTSTRAP: a broker there returns metadata.
kafka_answers() {
    timeout 10 kcat -b "$1" -L -m 3 >/dev/null 2>&1
}

# kafka_local_answers: our port is open and a broker there returns metadata
# (the port check first: kcat waits its full timeout on a closed port).
kafka_local_answers() {
    port_open "$KAFKA_PORT" && kafka_answers "$HOST:$KAFKA_PORT"
}

# kafka_external: SCORING_KAFKA_BOOTSTRAP from the caller points at a live broker.
kafka_external() {
    [ -n "${SCORING_KAFKA_BOOTSTRAP:-}" ] && [ "$SCORING_KAFKA_BOOTSTRAP" != "$HOST:$KAFKA_PORT" ] &&
        command -v kcat >/dev/null && kafka_answers "$SCORING_KAFKA_BOOTSTRAP"
}

kafka_version() {
    sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM" | head -n 1
}

# kafka_libs_current: the jar cache holds the version the pom asks for.
kafka_libs_current() {
    [ -f "$KAFKA_LIBS/.complete" ] && [ "$(cat "$KAFKA_LIBS/.complete")" = "$(kafka_version)" ]
}

# kafka_fetch_libs: fill .services/kafka/libs from Maven Central, once.
kafka_fetch_libs() {
    local t0 version tmp=$KAFKA_DIR/libs.tmp
    kafka_libs_current && return 0
    version=$(kafka_version)
    [ -n "$version" ] || die "kafka: no <kafka.version> in $KAFKA_POM"
    t0=$(now)
    log "kafka: downloading Kafka $version jars with Maven (first run only)"
    rm -rf "$tmp"
    mkdir -p "$KAFKA_DIR"
    # Into a scratch folder first, so an interrupted download is never taken for a cache.
    if ! mvn -q -B -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$KAFKA_DIR/mvn.log" 2>&1; then
        show_log_tail "$KAFKA_DIR/mvn.log"
        die "kafka: Maven could not fetch the Kafka jars (log above). Check that Maven Central is reachable (proxy: ~/.m2/settings.xml) and rerun."
    fi
    [ -f "$tmp/kafka_2.13-$version.jar" ] || die "kafka: Maven ran but kafka_2.13-$version.jar is missing in $tmp"
    echo "$version" >"$tmp/.complete"
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
    log "kafka: jars in $KAFKA_LIBS ($(since "$t0"))"
}

# Kafka's JVM with its jars and our logging setup; the main class follows.
# shellcheck disable=SC2206  # KAFKA_HEAP_OPTS holds several options
KAFKA_JAVA=(java $KAFKA_HEAP_OPTS -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -cp "$KAFKA_LIBS/*")

# kafka_configure: server.properties from the template, and the log4j2 setup.
kafka_configure() {
    local conf
    conf=$(<"$KAFKA_TEMPLATE")
    conf=${conf//@KAFKA_PORT@/$KAFKA_PORT}
    conf=${conf//@CONTROLLER_PORT@/$KAFKA_CONTROLLER_PORT}
    conf=${conf//@LOG_DIR@/$KAFKA_DIR/data}
    printf '%s\n' "$conf" >"$KAFKA_DIR/server.properties"
    # Everything to stdout, which the launcher sends to kafka.log. Without a
    # binding Kafka's slf4j would log nothing; without a config, only errors.
    cat >"$KAFKA_DIR/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF
}

# kafka_format: KRaft storage must be formatted once, with a cluster id. The
# storage is kept across down/up; it is made anew when the ports change.
kafka_format() {
    local data=$KAFKA_DIR/data stamp=$KAFKA_DIR/data.ports cluster_id out
    if [ -f "$data/meta.properties" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$KAFKA_PORT $KAFKA_CONTROLLER_PORT" ]; then
        return 0
    fi
    rm -rf "$data"
    out=$("${KAFKA_JAVA[@]}" kafka.tools.StorageTool random-uuid 2>&1) || true
    cluster_id=$(printf '%s\n' "$out" | tail -n 1)
    # A Kafka Uuid: 16 bytes in URL-safe base64 without padding.
    if ! [[ $cluster_id =~ ^[A-Za-z0-9_-]{22}$ ]]; then
        printf '%s\n' "$out" >>"$KAFKA_DIR/kafka.log"
        show_log_tail "$KAFKA_DIR/kafka.log"
        die "kafka: could not make a cluster id with kafka.tools.StorageTool (log above)"
    fi
    "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
        -c "$KAFKA_DIR/server.properties" >>"$KAFKA_DIR/kafka.log" 2>&1 ||
        {
            show_log_tail "$KAFKA_DIR/kafka.log"
            die "kafka: formatting the storage in $data failed (log above)"
        }
    echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT" >"$stamp"
    log "kafka: formatted storage, cluster id $cluster_id"
}

kafka_up() {
    local t0 pid deadline
    t0=$(now)
    if kafka_external; then
        log "kafka: using SCORING_KAFKA_BOOTSTRAP=$SCORING_KAFKA_BOOTSTRAP (answers); starting nothing"
        return 0
    fi
    if [ -n "${SCORING_KAFKA_BOOTSTRAP:-}" ] && [ "$SCORING_KAFKA_BOOTSTRAP" != "$HOST:$KAFKA_PORT" ]; then
        log "kafka: SCORING_KAFKA_BOOTSTRAP=$SCORING_KAFKA_BOOTSTRAP does not answer; starting a broker on $HOST:$KAFKA_PORT instead"
    fi
    if kafka_local_answers; then
        log "kafka: reusing the broker answering on $HOST:$KAFKA_PORT"
        return 0
    fi
    if pid=$(pid_is "$KAFKA_DIR/kafka.pid" kafka.Kafka); then
        # Ours, still starting up (or hung): wait below rather than start a second one.
        if [ "$(cat "$KAFKA_DIR/data.ports" 2>/dev/null)" != "$KAFKA_PORT $KAFKA_CONTROLLER_PORT" ]; then
            die "kafka: our broker (pid $pid) runs with ports $(cat "$KAFKA_DIR/data.ports" 2>/dev/null), not $KAFKA_PORT; run '$0 down kafka' first"
        fi
        log "kafka: our broker (pid $pid) is running but not answering yet; waiting"
    else
        local p
        for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
            if port_open "$p"; then
                die "kafka: port $p is taken by something that is not our broker; pick another base port: SCORING_TEST_KAFKA_PORT=$((KAFKA_PORT + 10)) $0 up (uses it and the next one)"
            fi
        done
        [ "$(java_major)" -ge 17 ] || die "kafka: needs Java 17 or newer on PATH (found: $(java -version 2>&1 | head -n 1)); e.g. apt-get install -y openjdk-17-jre-headless"
        kafka_fetch_libs
        kafka_configure
        : >"$KAFKA_DIR/kafka.log"
        kafka_format
        log "kafka: starting on $HOST:$KAFKA_PORT (controller $HOST:$KAFKA_CONTROLLER_PORT)"
        # setsid + nohup: the broker outlives this shell and its terminal. It
        # must not inherit the lock (fd 9) nor our stdout/stderr: a caller's
        # `$(...)` or `| tee` would otherwise wait for the broker to exit.
        (
            cd "$KAFKA_DIR"
            exec setsid nohup "${KAFKA_JAVA[@]}" kafka.Kafka "$KAFKA_DIR/server.properties" \
                >>"$KAFKA_DIR/kafka.log" 2>&1 </dev/null 9>&-
        ) &
        pid=$!
        echo "$pid" >"$KAFKA_DIR/kafka.pid"
    fi
    deadline=$((SECONDS + KAFKA_WAIT_S))
    until kafka_local_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log_tail "$KAFKA_DIR/kafka.log"
            die "kafka: the broker exited during startup (log above)"
        fi
        [ "$SECONDS" -lt "$deadline" ] || break
        sleep 0.25
    done
    if ! kafka_local_answers; then
        show_log_tail "$KAFKA_DIR/kafka.log"
        die "kafka: no metadata from $HOST:$KAFKA_PORT after ${KAFKA_WAIT_S}s (log above; pid $pid still runs: '$0 down kafka' stops it)"
    fi
    log "kafka: started on $HOST:$KAFKA_PORT in $(since "$t0") (pid $pid)"
}

kafka_down() {
    local pid
    if pid=$(pid_is "$KAFKA_DIR/kafka.pid" kafka.Kafka); then
        # SIGTERM makes Kafka shut down cleanly (a few seconds).
        stop_pid "$pid" kafka 30
        rm -f "$KAFKA_DIR/kafka.pid"
        log "kafka: stopped (pid $pid)"
    else
        log "kafka: nothing started by this script is running"
    fi
}

kafka_status() {
    local pid origin=external
    if kafka_external; then
        echo "kafka     up    $SCORING_KAFKA_BOOTSTRAP (SCORING_KAFKA_BOOTSTRAP, external)"
        return 0
    fi
    if pid=$(pid_is "$KAFKA_DIR/kafka.pid" kafka.Kafka); then origin="started here, pid $pid"; fi
    if kafka_local_answers; then
        echo "kafka     up    $HOST:$KAFKA_PORT ($origin)"
    else
        echo "kafka     down  $HOST:$KAFKA_PORT${pid:+ (pid $pid runs but does not answer; see $KAFKA_DIR/kafka.log)}"
        return 1
    fi
}

# ---------------------------------------------------------------- commands

print_env() {
    local s bootstrap=$HOST:$KAFKA_PORT
    for s in "$@"; do
        case $s in
        redis) echo "export SCORING_BROKER_URL=redis://$HOST:$REDIS_PORT/0" ;;
        postgres) echo "export SCORING_DATABASE_URL=postgresql+psycopg://$PG_USER:$PG_PASSWORD@$HOST:$PG_PORT/$PG_DB" ;;
        kafka)
            if kafka_external; then bootstrap=$SCORING_KAFKA_BOOTSTRAP; fi
            echo "export SCORING_KAFKA_BOOTSTRAP=$bootstrap"
            ;;
        esac
    done
}

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

main() {
    local cmd=${1:-} s services=() rc=0 t0
    [ $# -gt 0 ] && shift
    for s in "$@"; do
        case $s in
        redis) services+=(redis) ;;
        postgres | postgresql | pg) services+=(postgres) ;;
        kafka) services+=(kafka) ;;
        *) die "unknown service '$s' (expected: redis postgres kafka)" ;;
        esac
    done
    [ ${#services[@]} -gt 0 ] || services=(redis postgres kafka)
    for s in "$REDIS_PORT" "$PG_PORT" "$KAFKA_PORT"; do
        if ! [[ $s =~ ^[0-9]+$ ]] || [ "$s" -lt 1 ] || [ "$s" -gt 65534 ]; then die "bad port '$s'"; fi
    done

    case $cmd in
    up)
        t0=$(now)
        mkdir -p "$STATE"
        # One `up`/`down` at a time (two test runs starting together).
        exec 9>"$STATE/.lock"
        flock -w 300 9 || die "another services.sh up/down holds $STATE/.lock"
        ensure_packages "${services[@]}"
        for s in "${services[@]}"; do
            case $s in
            redis) redis_up ;;
            postgres) pg_up ;;
            kafka) kafka_up ;;
            esac
        done
        log "all up in $(since "$t0")"
        print_env "${services[@]}"
        ;;
    down)
        [ -d "$STATE" ] || return 0
        exec 9>"$STATE/.lock"
        flock -w 300 9 || die "another services.sh up/down holds $STATE/.lock"
        # Reverse order: consumers of the others first.
        for ((i = ${#services[@]} - 1; i >= 0; i--)); do
            case ${services[i]} in
            redis) redis_down ;;
            postgres) pg_down ;;
            kafka) kafka_down ;;
            esac
        done
        ;;
    env)
        print_env "${services[@]}"
        ;;
    status)
        for s in "${services[@]}"; do
            case $s in
            redis) redis_status || rc=1 ;;
            postgres) pg_status || rc=1 ;;
            kafka) kafka_status || rc=1 ;;
            esac
        done
        exit "$rc"  # not `return`: a failing function would trip the ERR trap
        ;;
    *) usage ;;
    esac
}

main "$@"
