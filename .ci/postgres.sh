# Sourced by .ci/run (from the repository root): start a throwaway PostgreSQL server on a free loopback port so the
# PostgreSQL tests (they read LIBREFANG_TEST_POSTGRES_URL) run instead of skipping.
# Best effort: when PostgreSQL cannot be installed or started, say so loudly and go on
# (those tests then skip and pytest reports them as skipped).

_pg_bin() {
  # The pgserver wheel of the dev group (PostgreSQL 16 with pgvector) first, then Debian's server.
  local wheel
  wheel=$(ls -d .venv/lib/python3*/site-packages/pgserver/pginstall/bin 2>/dev/null | head -n 1)
  if [ -n "$wheel" ] && [ -x "$wheel/initdb" ]; then
    echo "$(cd "$wheel" && pwd)"
    return
  fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

start_ci_postgres() {
  local bin dir port
  bin=$(_pg_bin)
  if [ -z "$bin" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "CI: installing PostgreSQL (apt-get)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
      || echo "CI: apt-get could not install PostgreSQL"
    bin=$(_pg_bin)
  fi
  if [ -z "$bin" ]; then
    echo "CI: WARNING no PostgreSQL server here; the PostgreSQL tests will be skipped"
    return 0
  fi
  dir=$(mktemp -d /tmp/lf-ci-pg.XXXXXX)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # initdb refuses to run as root: the cluster belongs to the postgres user when we are root.
  local as=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres 2>/dev/null || true
    chown postgres "$dir"
    as=(runuser -u postgres --)
  fi
  if "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null \
    && "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
         -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off" start >/dev/null; then
    export LIBREFANG_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/postgres"
    CI_PG_STOP=("${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop)
    echo "CI: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
  else
    echo "CI: WARNING PostgreSQL did not start; the PostgreSQL tests will be skipped"
    cat "$dir/log" 2>/dev/null | tail -n 20 || true
  fi
}

stop_ci_postgres() {
  if [ "${#CI_PG_STOP[@]}" -gt 0 ]; then
    "${CI_PG_STOP[@]}" >/dev/null 2>&1 || true
  fi
}

CI_PG_STOP=()
