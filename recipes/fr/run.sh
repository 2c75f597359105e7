#!/usr/bin/env bash
# Common Voice French from facebook/wav2vec2-base-960h on one GPU. Arguments go to the runner: --stage N --stop-stage M --set key=value --force --out DIR --cv-root DIR
here="$(cd "$(dirname "$0")" && pwd)"; bin="$here/../../.venv/bin/asr-transfer"; [ -x "$bin" ] || bin=asr-transfer
exec "$bin" recipe "$here/recipe.toml" "$@"
