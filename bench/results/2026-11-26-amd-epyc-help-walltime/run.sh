#!/usr/bin/env bash
# How results.json and report.txt were made: `instyle --help` before and after the change that made it
# torch-free (6e17d04), each commit in its own throwaway worktree and venv, so that each really runs its own code.
# The venvs borrow torch & co. from the project venv through a .pth line; their own setuptools/pip are removed so
# the project venv's (new enough for pyproject's license field) build the editable install.
set -euo pipefail
REPO=${REPO:-/work/wt30}            # the project checkout
VENV=${VENV:-/work/venv14}          # a venv with the project's dependencies
OLD=${OLD:-6e17d04^}                # parent of "instyle --help imports no torch/numpy/Pillow"
NEW=${NEW:-HEAD}
BASE=$(readlink -f "$VENV/bin/python")
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for side in old new; do
  rev=$([ $side = old ] && echo "$OLD" || echo "$NEW")
  git -C "$REPO" worktree add --detach /tmp/$side-help "$rev"
  "$BASE" -m venv /tmp/venv-$side
  sp=$(/tmp/venv-$side/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  rm -rf "$sp"/setuptools* "$sp"/_distutils_hack "$sp"/distutils-precedence.pth "$sp"/pip "$sp"/pip-* "$sp"/pkg_resources
  echo "$SITE" > "$sp/zz-project-venv.pth"
  /tmp/venv-$side/bin/python -m pip install -q --no-deps --no-build-isolation -e /tmp/$side-help
done
# 21 interleaved rounds; every child runs from an empty temp folder (python -m puts the working folder first on
# sys.path: started in a source tree it would import that tree's instyle/, not the install's)
"$VENV/bin/python" -m instyle.bench.cli_overhead --help-walltime --runs 21 \
  --python /tmp/venv-old/bin/python --python /tmp/venv-new/bin/python --json results.json | tee report.txt
# clean up: git -C "$REPO" worktree remove /tmp/old-help; ... new-help; rm -r /tmp/venv-old /tmp/venv-new
