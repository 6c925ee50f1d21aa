"""An offline stand-in for the LULESH git repository used by Maestro's LULESH sample specs.

``lulesh_sample1_unix*.yaml`` clone ``https://github.com/LLNL/LULESH.git`` at tag ``2.0.3``,
``sed`` five lines of its Makefile and run ``make``. The stand-in is a local bare repository
with that tag and a Makefile whose lines match the five ``sed`` patterns; its ``all`` target
writes a ``lulesh2.0`` shell script that echoes its arguments. A temporary global git config
redirects the GitHub URL to it (``url.<bare>.insteadOf``), so the specs run unmodified.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["LULESH_URL", "LULESH_TAG", "make_lulesh_standin"]

LULESH_URL = "https://github.com/LLNL/LULESH.git"
LULESH_TAG = "2.0.3"

# Every line the spec's sed commands look for is here; recipes need real tabs.
_MAKEFILE = """\
SERCXX = c++ -DUSE_MPI=0
MPICXX = mpig++ -DUSE_MPI=1
CXX = $(MPICXX)
CXXFLAGS = -g -O3 -fopenmp
#CXXFLAGS = -g -O3 -I. -Wall
#LDFLAGS = -g -O3
LDFLAGS = -g -O3 -fopenmp

.PHONY: all clean

all: lulesh2.0

lulesh2.0:
\techo '#!/bin/sh' > $@
\techo 'echo "lulesh2.0 $$*"' >> $@
\tchmod +x $@

clean:
\trm -f lulesh2.0
"""


def make_lulesh_standin(tmp_path: Path | str) -> dict[str, str]:
    """Build the stand-in repository under ``tmp_path`` and return the env vars to use it.

    Args:
        tmp_path: A scratch directory (e.g. pytest's ``tmp_path``).

    Returns:
        Environment variables (``GIT_CONFIG_GLOBAL``, ``GIT_CONFIG_NOSYSTEM``) to add to the
        environment of whatever clones the LULESH URL (Maestro, or Troupe's runtime).

    Raises:
        subprocess.CalledProcessError: A git command failed.
    """
    root = Path(tmp_path) / "lulesh-standin"
    src, bare = root / "src", root / "LULESH.git"
    src.mkdir(parents=True)
    config = root / "gitconfig"
    config.write_text(
        "[user]\n\tname = Troupe Tests\n\temail = troupe@example.invalid\n"
        "[init]\n\tdefaultBranch = main\n"
        "[advice]\n\tdetachedHead = false\n"
        f'[url "{bare}"]\n\tinsteadOf = {LULESH_URL}\n'
    )
    env = {"GIT_CONFIG_GLOBAL": str(config), "GIT_CONFIG_NOSYSTEM": "1"}
    run_env = {**os.environ, **env}

    def git(*args: str, cwd: Path = src) -> None:
        subprocess.run(["git", *args], cwd=cwd, env=run_env, check=True, capture_output=True)

    (src / "Makefile").write_text(_MAKEFILE)
    (src / "README").write_text("Stand-in for LULESH 2.0.3 (tests only).\n")
    git("init", "-q")
    git("add", "Makefile", "README")
    git("commit", "-q", "-m", "LULESH stand-in")
    git("tag", LULESH_TAG)
    git("clone", "-q", "--bare", str(src), str(bare), cwd=root)
    return env
