#!/bin/sh
# Model Job: make $TAGALONG_MODEL_ROOT/$TAGALONG_MODEL_NAME hold a verified export, exporting only when
# it does not (so re-running the Job is cheap). The export goes to a scratch folder on the same volume
# and is renamed into place after its manifest checks, so an embedder never sees half a model.
set -eu
root="${TAGALONG_MODEL_ROOT:?}"
name="${TAGALONG_MODEL_NAME:?}"
target="$root/$name"
scratch="$root/.$name.partial"
scripts="${TAGALONG_SCRIPTS_DIR:-/opt/tagalong-scripts}"
status=0
python "$scripts/wait_for_model.py" --check-only "$target" || status=$?
if [ "$status" -eq 0 ]; then
  echo "export_model: $target already verified; nothing to do"
  exit 0
elif [ "$status" -ne 3 ]; then
  echo "export_model: the model check itself failed (exit $status)" >&2
  exit "$status"
fi
rm -rf "$scratch"
python -m services.embedder.export "$name" --out "$scratch"
python "$scripts/wait_for_model.py" --check-only "$scratch"
rm -rf "$target"
mv "$scratch" "$target"
echo "export_model: $target exported and verified"
