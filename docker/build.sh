#!/bin/sh
# Build the Troupe image from a wheel (not the source tree): the project's wheel and its
# dependencies' are built on this host with its pip configuration, then `docker build`
# installs them with no index (docker/Dockerfile).
#
#   docker/build.sh [TAG]        (TAG: troupe/troupe:<version>, also tagged troupe/troupe:latest)
#
# Environment: BASE (troupe/base:bookworm, made by docker/base.sh; python:3.11-slim where
# a registry is reachable), PYTHON (the interpreter that builds the wheels: it must be the
# image's Python version, 3.11 for bookworm; default .venv/bin/python, else python3),
# DOCKER_BUILD_ARGS (more options for docker build, e.g. --no-cache).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
python=${PYTHON:-$repo/.venv/bin/python}
[ -x "$python" ] || python=python3
version=$(cd "$repo" && "$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
tag=${1:-troupe/troupe:$version}
base=${BASE:-troupe/base:bookworm}

work=$(mktemp -d "${TMPDIR:-/tmp}/troupe-build.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
# A copy of what the wheel is made of: building in the clone would leave build/ there.
mkdir -p "$work/src" "$work/context"
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/engine" "$repo/adapters" "$work/src/"
find "$work/src" -name __pycache__ -type d -prune -exec rm -rf {} +
started=$(date +%s)
"$python" -m pip wheel --quiet --wheel-dir "$work/context/wheels" "$work/src" 2>&1 \
    | grep -v "is ignored" || true
ls "$work/context/wheels"/troupe-*.whl >/dev/null
cp -r "$repo/examples" "$work/context/examples"
find "$work/context/examples" \( -name __pycache__ -o -name studies \) -type d -prune -exec rm -rf {} +
cp "$here/Dockerfile" "$work/context/Dockerfile"

# The legacy builder: the docker client here has no buildx plugin, and BuildKit is not needed.
# shellcheck disable=SC2086  # DOCKER_BUILD_ARGS is a list of options
DOCKER_BUILDKIT=0 docker build --network host --build-arg "BASE=$base" -t "$tag" \
    ${DOCKER_BUILD_ARGS:-} "$work/context"
case "$tag" in
    *:latest) ;;
    *) docker tag "$tag" "${tag%:*}:latest" ;;
esac
size=$(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')
echo "build.sh: $tag ($size) in $(( $(date +%s) - started )) s"
