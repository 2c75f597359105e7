#!/usr/bin/env bash
# French synthetic speech (espeak-ng) from models/en-synth-small. Arguments go to the runner: --stage N --stop-stage M --set key=value --force --out DIR
here="$(cd "$(dirname "$0")" && pwd)"; bin="$here/../../.venv/bin/asr-transfer"; [ -x "$bin" ] || bin=asr-transfer
exec "$bin" recipe "$here/recipe.toml" "$@"
