#!/usr/bin/env bash
# The README's main job, end to end over real ROS 2 (DDS on loopback only):
#   1. set up (idempotent: venv, messages, launchers, console scripts);
#   2. render a short synthetic drive (30 frames, 640x320, 10 Hz) with unexpected objects on the road
#      into a ROS 2 bag: /camera/image_raw, /camera/camera_info, /ground_truth/{anomaly,instances};
#   3. start the detector node exactly as launch/detector.launch.py does (installed detector_node,
#      --params-file config/detector.yaml, the launch file's remappings, camera mounting parameters);
#   4. replay the bag into it with `pebal-bag play` (real time on a GPU; on a CPU at PEBAL_DEMO_RATE,
#      default 0.25, so that the node, ~0.3 s per 1024x512 frame there, sees every frame of the drive
#      instead of dropping the stale ones), while scripts/demo_recorder.py
#      records the node's outputs;
#   5. write out/demo/overlay.mp4 (H.264; boxes with track id and score, ground-truth outlines, legend)
#      and out/demo/summary.json (frames in/out, drops, latency percentiles, and per obstacle whether it
#      was found within 3 frames of appearing, false alarms per frame); the last line printed gives
#      those two numbers against their targets (>= 80 % found, <= 0.1 false alarms per frame).
#
# `bash scripts/demo.sh VIDEO` runs the same demo on your own footage (a video OpenCV reads, or a folder
# of PNG/JPEG images) instead of the synthetic drive: it becomes a bag (`pebal-bag from-video`, 10 Hz for
# a folder), is replayed into the node at its own rate, and the summary counts the frames that report an
# obstacle (there is no ground truth to score against).
#
# Model: the embedded default (the EdgeNets ESPNetv2 Cityscapes weights, PEBAL-fine-tuned by
# pebal_training/recipes/real_default.py) when the package ships one, otherwise the base ESPNetv2
# weights from ../shared/assets (never copied into the repository; threshold uncalibrated), or whatever
# PEBAL_CHECKPOINT (+ PEBAL_MODEL for bare third-party files) points to. Environment: PEBAL_DEMO_OUT
# (default out/demo), PEBAL_DEMO_FRAMES (30), PEBAL_DEMO_SIZE (640x320), PEBAL_DEMO_RATE (replay speed;
# default 1 with a CUDA GPU, 0.25 without), ROS_DOMAIN_ID (default: one per run, printed).
set -euo pipefail
FOOTAGE="${1:-}"
case "$FOOTAGE" in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# A DDS domain of its own for this run (unless the caller chose one): parallel demos/tests on this
# machine must not hear each other. scripts/env.sh keeps discovery on loopback.
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((1 + $$ % 100))}"
bash "$HERE/setup.sh"
# shellcheck source=scripts/env.sh
. "$HERE/env.sh"
cd "$PEBAL_ROOT"
PY="$VENV/bin/python"

OUT="${PEBAL_DEMO_OUT:-out/demo}"
FRAMES="${PEBAL_DEMO_FRAMES:-30}"
SIZE="${PEBAL_DEMO_SIZE:-640x320}"
FPS=10
NS=/demo
PREFIX="$NS/pebal_detector"
IMAGE_TOPIC=/camera/image_raw
INFO_TOPIC=/camera/camera_info
SHARED_ESPNETV2="$PEBAL_ROOT/../shared/assets/espnetv2_cityscapes/espnetv2_s_2.0_city_1024x512.pth"
WIDTH="${SIZE%x*}"
HEIGHT="${SIZE#*x}"

say() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

# --- model ------------------------------------------------------------------------------------------
node_params=()
if [ -n "${PEBAL_CHECKPOINT:-}" ]; then
  node_params=(-p "checkpoint:=$PEBAL_CHECKPOINT")
  [ -z "${PEBAL_MODEL:-}" ] || node_params+=(-p "model:=$PEBAL_MODEL")
  model_note="PEBAL_CHECKPOINT=$PEBAL_CHECKPOINT"
elif "$PY" -c 'from pebal_perception.core.default_model import default_checkpoint as d; d()' 2>/dev/null; then
  model_note="embedded default model (pebal_perception/data/default_model.pt)"
elif [ -f "$SHARED_ESPNETV2" ]; then
  say "no embedded default model yet; using the ESPNetv2 Cityscapes weights from ../shared" \
      "(not PEBAL-fine-tuned, threshold uncalibrated: expect false alarms)"
  # Network input = the frame size (a multiple of ESPNetv2's 16): half the pixels of 1024x512, ~2.5x faster on CPU.
  node_params=(-p "checkpoint:=$SHARED_ESPNETV2" -p model:=espnetv2 -p "input_width:=$WIDTH" -p "input_height:=$HEIGHT")
  model_note="ESPNetv2 Cityscapes weights (../shared/assets, not PEBAL-fine-tuned, threshold uncalibrated)"
else
  die "no model: the package has no embedded default model and $SHARED_ESPNETV2 is absent; set PEBAL_CHECKPOINT"
fi

# --- processes: cleaned up on every exit ---------------------------------------------------------
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -INT "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A re-run replaces the previous run's outputs, and nothing else: a folder holding anything the demo
# does not write (e.g. a mistyped PEBAL_DEMO_OUT) is refused before anything is removed.
if [ -e "$OUT" ] || [ -L "$OUT" ]; then
  [ -d "$OUT" ] && [ ! -L "$OUT" ] || die "$OUT: exists and is not a folder"
  for entry in "$OUT"/* "$OUT"/.[!.]*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    case "$(basename "$entry")" in
      drive_bag|node.log|recorder.log|summary.json|overlay.mp4|overlay.avi|overlay_last.png|ready|played) ;;
      .overlay.*.tmp*) ;;  # a video write that was interrupted
      *) die "$OUT: holds $(basename "$entry"), which the demo did not write; choose another PEBAL_DEMO_OUT" ;;
    esac
  done
fi
rm -rf "$OUT"
mkdir -p "$OUT"
say "ROS_DOMAIN_ID=$ROS_DOMAIN_ID (loopback only); outputs in $OUT"
BAG="$OUT/drive_bag"

# --- 1. synthetic drive (or your footage) -> bag ----------------------------------------------------
play_topics=("$IMAGE_TOPIC" "$INFO_TOPIC" /ground_truth/anomaly /ground_truth/instances)
if [ -n "$FOOTAGE" ]; then
  [ -e "$FOOTAGE" ] || die "$FOOTAGE: no such file or folder"
  pebal-bag from-video "$FOOTAGE" --output "$BAG" --topic "$IMAGE_TOPIC" -q \
    || die "$FOOTAGE: could not be turned into a bag (see the line above)"
  read -r FRAMES FPS < <("$PY" -c 'import json,sys; f=json.load(open(sys.argv[1])); print(f["frames"], f["fps"])' \
    "$BAG/footage.json")
  say "your footage: $FOOTAGE ($FRAMES frames at $FPS Hz; no ground truth: the summary counts what is reported)"
  play_topics=("$IMAGE_TOPIC")
  mounting=()  # unknown: the horizon and scale come from the road region
else
  "$PY" -m pebal_training.recipes.drive_bag --output "$BAG" --frames "$FRAMES" --fps "$FPS" --size "$SIZE" \
    --seed 7 --anomalies 2:3
  read -r CAM_HEIGHT CAM_PITCH < <("$PY" -c 'import json,sys; c=json.load(open(sys.argv[1]))["camera"]; print(c["height"], c["pitch"])' "$BAG/drive.json")
  mounting=(-p "camera.height_m:=$CAM_HEIGHT" -p "camera.pitch_rad:=$CAM_PITCH")
fi

# --- 2. the node, as the launch file starts it ------------------------------------------------------
# Network input: the checkpoint's own size (the embedded model runs at 1024x512), unless set above.
# Reliable input (the bag player offers reliable): delivery does not depend on the DDS profile then,
# so the summary shows the node's own behaviour (it drops only stale frames).
"$VENV/lib/pebal_perception/detector_node" --ros-args --params-file config/detector.yaml \
  "${node_params[@]}" -p "qos_overrides.$IMAGE_TOPIC.subscription.reliability:=reliable" \
  "${mounting[@]}" \
  -r "image:=$IMAGE_TOPIC" -r "image/compressed:=$IMAGE_TOPIC/compressed" -r "camera_info:=$INFO_TOPIC" \
  -r "__ns:=$NS" >"$OUT/node.log" 2>&1 &
pids+=($!)
node_pid=$!

# --- 3. recorder --------------------------------------------------------------------------------
if [ -z "${PEBAL_DEMO_RATE:-}" ]; then
  PEBAL_DEMO_RATE="$("$PY" -c 'import torch; print(1.0 if torch.cuda.is_available() else 0.25)')"
fi
say "replaying at ${PEBAL_DEMO_RATE}x real time (PEBAL_DEMO_RATE; the node drops frames it cannot keep up with)"
TIMEOUT="$("$PY" -c 'import math,sys; print(max(150, math.ceil(float(sys.argv[1]) / float(sys.argv[2]) / float(sys.argv[3])) + 90))' \
  "$FRAMES" "$FPS" "$PEBAL_DEMO_RATE")"  # the replay runs in real time: a long video needs longer than the drive
"$PY" "$HERE/demo_recorder.py" --out "$OUT" --prefix "$PREFIX" --expect "$FRAMES" --fps "$FPS" \
  --done-file "$OUT/played" --timeout "$TIMEOUT" --model-note "$model_note" >"$OUT/recorder.log" 2>&1 &
pids+=($!)
recorder_pid=$!

for _ in $(seq 600); do
  [ -f "$OUT/ready" ] && break
  kill -0 "$node_pid" 2>/dev/null || { tail -n 5 "$OUT/node.log" >&2; die "the node exited during start-up (log: $OUT/node.log)"; }
  kill -0 "$recorder_pid" 2>/dev/null || { tail -n 5 "$OUT/recorder.log" >&2; die "the recorder exited (log: $OUT/recorder.log)"; }
  sleep 0.1
done
[ -f "$OUT/ready" ] || die "the node did not come up within 60 s (log: $OUT/node.log)"
grep -m1 "ready:" "$OUT/node.log" | sed 's/^/demo: node: /' || true

# --- 4. replay --------------------------------------------------------------------------------------
pebal-bag play "$BAG" --wait-for-subscribers --wait-timeout 20 --rate "$PEBAL_DEMO_RATE" --reliable \
  --topics "${play_topics[@]}"
touch "$OUT/played"

# --- 5. results ---------------------------------------------------------------------------------
wait "$recorder_pid" || { tail -n 5 "$OUT/recorder.log" >&2; die "the recorder failed (log: $OUT/recorder.log)"; }
cat "$OUT/recorder.log"
rm -f "$OUT/ready" "$OUT/played"
[ -f "$OUT/summary.json" ] || die "no summary written"
ls "$OUT"/overlay.mp4 "$OUT"/overlay.avi 2>/dev/null | sed 's/^/demo: video: /' || true
say "summary: $OUT/summary.json (bag: $BAG, node log: $OUT/node.log)"
# The last line: the scoring against the demo's targets (also in summary.json "detection").
score="$(grep -m1 -e '^recorder: obstacles found' -e '^recorder: no ground truth' "$OUT/recorder.log" \
  | sed 's/^recorder: //')" || true
say "${score:-no scoring (no ground truth received)}"
