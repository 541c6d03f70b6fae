#!/usr/bin/env bash
# Train the embedded default model end to end on this machine's CPUs, then export it to
# src/encore/assets/embedded/ in the official checkpoint layout (fp16 safetensors, < 100 MB).
#
#   nohup bash scripts/train_embedded.sh > runs/embedded.log 2>&1 &
#
# Stages (in order): corpus -> vae -> vae_final -> latents -> dit -> distill -> planner -> export.
# The export holds the turbo (the default) and its base teacher, the turbo storing only the tensors that
# distillation changed (`shared_weights` in embedded.json), so `encore eval` with no --checkpoint compares
# base-50 with turbo-8 of the shipped model.
# Re-running resumes: finished stages are skipped (marker files $RUN/.done-<stage>), an interrupted
# training stage continues from its newest checkpoint, the corpus and latent cache skip finished clips.
# Run a subset with STAGES="dit distill". Every knob below can be overridden from the environment, and
# extra recipe options go in VAE_ARGS / DIT_ARGS / DISTILL_ARGS / PLANNER_ARGS (key=value words).
#
# Expected wall time on a quiet 2-core machine (measured step times, 2 threads):
#   corpus 6 h of audio ~0.5 h | VAE 1400 steps x 4x0.5 s (~1 s per step once Muon orthogonalizes in float32)
#   ~0.4 h | finalize ~0.05 h | latents ~1.7 s per 10 s encode | DiT 16x10 s ~1.6 s per step |
#   distill 8x10 s ~3 s per step | planner 8x150 codes ~1.5 s per step.
# The shipped model's budgets (docs/model-card.md) were chosen to fit one 3-hour working session.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
RUN="${RUN:-$ROOT/runs/embedded}"
DEST="${DEST:-$ROOT/src/encore/assets/embedded}"
THREADS="${THREADS:-2}"
SEED="${SEED:-0}"
STAGES="${STAGES:-corpus vae vae_final latents dit distill planner export}"

CORPUS_HOURS="${CORPUS_HOURS:-6}"
CLIP_SECONDS="${CLIP_SECONDS:-10}"
VAE_STEPS="${VAE_STEPS:-2200}"
VAE_ADV_START="${VAE_ADV_START:-1700}"
VAE_FINAL_START="${VAE_FINAL_START:-2000}"
DIT_STEPS="${DIT_STEPS:-10000}"
# The measured turbo (model card, Recipe step 14): 100 steps with the flow-matching anchor. Pure DMD
# (DISTILL_ARGS="flow_weight=0") diverged from our hinted teacher, and the anchored student drifts after ~100.
DISTILL_STEPS="${DISTILL_STEPS:-100}"
PLANNER_STEPS="${PLANNER_STEPS:-3000}"
STEM_FRACTION="${STEM_FRACTION:-0.3}"
BEAT_HINT_PROB="${BEAT_HINT_PROB:-0.75}"  # share of text2music items conditioned on beat hints (0 = none)
KEY_HINT_PROB="${KEY_HINT_PROB:-0.9}"     # share of those hints that also carry the key (0 = none; set 0 with no beat hints)
MAX_CLIPS="${MAX_CLIPS:-}"
# The defaults train the VAE of releases 1-5, which keeps little pitch. The shipped VAE (model card, Recipe steps 17
# and 22: its last 3,500 steps in the last phase with balanced_upsampling=true, encoder frozen) was trained with:
#   VAE_ARGS="geometry=embedded-v2 latent_pitch_weight=1.0 chroma_weight=1.0 learning_rate=0.00025 adamw_learning_rate=0.0001"
VAE_ARGS="${VAE_ARGS:-}"
DIT_ARGS="${DIT_ARGS:-}"
DISTILL_ARGS="${DISTILL_ARGS:-learning_rate=0.00002 ema_decay=0.95 flow_weight=1.0 dmd_min_t=0.5}"
PLANNER_ARGS="${PLANNER_ARGS:-}"

export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$RUN/logs"

log() { echo "[$(date '+%F %T')] $*"; }
latest() { ls -d "$1"/checkpoints/step-* 2>/dev/null | sort | tail -n 1; }
wants() { [[ " $STAGES " == *" $1 "* ]]; }

stage() {  # stage NAME COMMAND...: skip when done, log to $RUN/logs/NAME.log, mark done on success
  local name="$1"; shift
  if ! wants "$name"; then return 0; fi
  if [[ -f "$RUN/.done-$name" ]]; then log "skip $name (done)"; return 0; fi
  log "start $name: $*"
  local t0=$SECONDS
  "$@" >> "$RUN/logs/$name.log" 2>&1
  touch "$RUN/.done-$name"
  log "done $name in $(( (SECONDS - t0) / 60 )) min"
}

build_corpus() {
  "$PY" -m encore.frontends.cli data build "$RUN/corpus" --hours "$CORPUS_HOURS" --seed "$SEED" \
    --workers "$THREADS" --clip-seconds "$CLIP_SECONDS"
}

train_vae() {
  # shellcheck disable=SC2086
  "$PY" -m encore.training.recipes.vae data="$RUN/corpus" output_dir="$RUN/vae" seed="$SEED" \
    num_threads="$THREADS" max_steps="$VAE_STEPS" adversarial_start_step="$VAE_ADV_START" \
    final_phase_start_step="$VAE_FINAL_START" $VAE_ARGS
}

finalize_vae() {
  "$PY" -m encore.training.recipes.vae finalize "$(latest "$RUN/vae")" "$RUN/vae_final" data="$RUN/corpus"
}

encode_latents() {
  "$PY" -m encore.training.recipes.dit encode "$RUN/corpus" "$RUN/vae_final" "$RUN/latents" \
    stem_fraction="$STEM_FRACTION" ${MAX_CLIPS:+max_clips=$MAX_CLIPS}
}

train_dit() {
  # shellcheck disable=SC2086
  "$PY" -m encore.training.recipes.dit cache_dir="$RUN/latents" output_dir="$RUN/dit" seed="$SEED" \
    num_threads="$THREADS" max_steps="$DIT_STEPS" beat_hint_prob="$BEAT_HINT_PROB" \
    key_hint_prob="$KEY_HINT_PROB" $DIT_ARGS
}

distill() {
  # shellcheck disable=SC2086
  "$PY" -m encore.training.recipes.distill cache_dir="$RUN/latents" teacher="$(latest "$RUN/dit")" \
    output_dir="$RUN/distill" seed="$SEED" num_threads="$THREADS" max_steps="$DISTILL_STEPS" \
    beat_hint_prob="$BEAT_HINT_PROB" key_hint_prob="$KEY_HINT_PROB" $DISTILL_ARGS
}

train_planner() {
  # shellcheck disable=SC2086
  "$PY" -m encore.training.recipes.planner cache_dir="$RUN/latents" dit_checkpoint="$(latest "$RUN/dit")" \
    output_dir="$RUN/planner" seed="$SEED" num_threads="$THREADS" max_steps="$PLANNER_STEPS" $PLANNER_ARGS
}

export_model() {
  local planner=()
  if [[ -n "$(latest "$RUN/planner")" ]]; then planner=("planner=$(latest "$RUN/planner")"); fi
  rm -rf "$DEST.tmp"
  "$PY" -m encore.training.embedded export "$DEST.tmp" vae="$RUN/vae_final" dit="$(latest "$RUN/distill")" \
    base="$(latest "$RUN/dit")" "${planner[@]}"
  rm -rf "$DEST"
  mv "$DEST.tmp" "$DEST"
  du -sh "$DEST"
}

stage corpus build_corpus
stage vae train_vae
stage vae_final finalize_vae
stage latents encode_latents
stage dit train_dit
stage distill distill
stage planner train_planner
stage export export_model
log "all requested stages finished; logs in $RUN/logs, loss curves in $RUN/*/loss_log.jsonl"
