#!/usr/bin/env bash
# README command 1: set up on a fresh Debian machine and run a local 3-node Serf cluster with
# serfbridge as its event handler, printing the JSON its default file sink receives.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
exec serfbridge demo "$@"
