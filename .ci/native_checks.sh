#!/usr/bin/env bash
set -euo pipefail
echo "native-check: nothing yet"
