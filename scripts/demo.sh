#!/usr/bin/env bash
# The README's main-job command: set up (idempotent), render a few synthetic street scenes with
# unexpected objects on the road, and run pebal-detect on them. Outputs land in out/demo/.
#
# Model: the embedded default (synthetic-world demo) model when the package ships one, otherwise
# the real ESPNetv2 Cityscapes weights from ../shared/assets (never copied into the repository),
# or whatever PEBAL_CHECKPOINT (+ PEBAL_MODEL for bare third-party files) points to.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$HERE/setup.sh"
# shellcheck source=scripts/env.sh
. "$HERE/env.sh"
cd "$PEBAL_ROOT"

OUT="${PEBAL_DEMO_OUT:-out/demo}"
SHARED_ESPNETV2="$PEBAL_ROOT/../shared/assets/espnetv2_cityscapes/espnetv2_s_2.0_city_1024x512.pth"
model_args=()
if [ -n "${PEBAL_CHECKPOINT:-}" ]; then
  model_args=(--checkpoint "$PEBAL_CHECKPOINT")
  [ -z "${PEBAL_MODEL:-}" ] || model_args+=(--model "$PEBAL_MODEL")
elif "$VENV/bin/python" -c 'from pebal_perception.core.default_model import default_checkpoint as d; d()' 2>/dev/null; then
  model_args=()
elif [ -f "$SHARED_ESPNETV2" ]; then
  echo "demo: no embedded default model yet; using the ESPNetv2 Cityscapes weights from ../shared (not PEBAL-fine-tuned, threshold uncalibrated)"
  model_args=(--checkpoint "$SHARED_ESPNETV2" --model espnetv2)
else
  echo "demo: error: no model: the package has no embedded default model and $SHARED_ESPNETV2 is absent; set PEBAL_CHECKPOINT" >&2
  exit 2
fi

rm -rf "$OUT/scenes"
pebal-synth --output "$OUT/scenes" --count 4 --seed 7 --size 1024x512 --anomalies 1:3 --quiet
mapfile -t scenes < <(ls "$OUT"/scenes/scene_*.png | grep -Ev '_(labelTrainIds|anomaly)\.png$')
pebal-detect "${scenes[@]}" --output "$OUT/detect" "${model_args[@]}"
echo "demo: overlays and maps in $OUT/detect (summary: $OUT/detect/summary.json)"
