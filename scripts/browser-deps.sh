#!/usr/bin/env bash
# What the browser tests need from Debian: chromium (driven by Playwright), espeak-ng and sox (speech WAVs).
# Best effort: without them the browser tests skip and say why.
set -euo pipefail

missing=()
# promtool (package prometheus): tests/docker checks the Prometheus config and alert rules with it.
declare -A package=([promtool]=prometheus)  # tools whose Debian package has another name
# openssl: tests of rediss:// make a throw-away CA with it (tests/redis_servers.py).
for tool in chromium espeak-ng sox promtool openssl; do
  command -v "$tool" >/dev/null || missing+=("${package[$tool]:-$tool}")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
sudo_=""; [[ $(id -u) -ne 0 ]] && sudo_="sudo"
echo "browser tests: installing ${missing[*]}"
if ! { $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
  echo "browser tests: could not install ${missing[*]}; those tests will be skipped" >&2
fi
