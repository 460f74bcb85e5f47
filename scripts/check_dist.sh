#!/bin/sh
# Install each built distribution (wheel, sdist) into a fresh venv and answer the demo question
# with the bundled model: what a user of `pip install minicpmv` gets, outside the source tree.
set -eu
dist=$(cd "$1" && pwd)
python=${PYTHON:-python3}
for artifact in "$dist"/*.whl "$dist"/*.tar.gz; do
    venv=$(mktemp -d)
    # a failed install must not leave a ~1 GB venv behind on a small disk
    trap 'rm -rf "$venv"' EXIT
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir torch==2.13.0
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "$artifact"
    # from a directory outside the checkout, so the installed copy is the one that runs
    answer=$(cd "$venv" && "$venv/bin/minicpmv" generate -p "How many shapes are there?" \
        --image "$("$venv/bin/python" -c 'import minicpmv, os; print(os.path.join(os.path.dirname(minicpmv.__file__), "assets", "demo-scene.png"))')" -n 8 2>/dev/null)
    echo "$(basename "$artifact"): $answer"
    test -n "$answer"
    rm -rf "$venv"
done
