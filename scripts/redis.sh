#!/usr/bin/env bash
# Make sure a Redis answers at ASR_REDIS_URL's host and port (default 127.0.0.1:6379); start one if not.
# Installs Debian's redis-server when it is missing. The Redis started here keeps nothing on disk.
set -euo pipefail

url=${ASR_REDIS_URL:-redis://127.0.0.1:6379/0}
if [[ "$url" != redis://* ]]; then  # rediss://, sentinel://, unix://: an operator's Redis, not ours to start
  echo "redis: $url is not a plain redis:// URL; not starting one (make sure it is up)"; exit 0
fi
hostport=${url#redis://}; hostport=${hostport#*@}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}; [[ "$port" == "$host" ]] && port=6379

ping() { (exec 3<>"/dev/tcp/$host/$port" && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null; }

if ping; then echo "redis: $host:$port is up"; exit 0; fi
if [[ "$host" != "127.0.0.1" && "$host" != "localhost" ]]; then
  echo "redis: nothing answers at $host:$port and it is not local; start it yourself" >&2; exit 1
fi
if ! command -v redis-server >/dev/null; then
  echo "redis: installing redis-server"
  sudo_=""; [[ $(id -u) -ne 0 ]] && sudo_="sudo"
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq redis-server >/dev/null
fi
mkdir -p var
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir "$PWD/var" --logfile "$PWD/var/redis-$port.log"
for _ in $(seq 50); do ping && { echo "redis: started on $host:$port"; exit 0; }; sleep 0.1; done
echo "redis: failed to start; see var/redis-$port.log" >&2; exit 1
