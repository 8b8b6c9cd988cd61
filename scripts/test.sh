#!/usr/bin/env bash
# Runs the whole test suite. The capture tests read pcaps with Wireshark's dissectors
# (../shared/tools/pcap-lint, which needs tshark); tshark is installed here when it is
# missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v tshark >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark >/dev/null
  else
    echo "tshark is missing: sudo DEBIAN_FRONTEND=noninteractive apt-get install -y tshark" >&2
    exit 2
  fi
fi
cargo test --all-targets
