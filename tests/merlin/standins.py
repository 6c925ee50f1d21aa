"""Stand-ins for the tools Merlin's peer specs call, stdlib only and deterministic.

Both tools run the same stand-ins (written next to the spec copy; ``bin/`` goes first on
PATH), so any difference in what the steps wrote comes from the tools, not from the tools'
tools. Each text below is a whole executable file.

* ``make_samples.py``: hello_samples' and status_test_spec's generator
  (``--filepath F --number N``): N names, one a line (the upstream one draws random names
  with the ``names`` package and numpy).
* ``bin/spellbook``: the subcommands of merlin-spellbook that feature_demo uses
  (make-samples, collect, translate, learn, predict), writing small placeholder files where
  the real one trains a random forest. make-samples writes a real ``.npy`` (format 1.0,
  little-endian float64), since Merlin reads the samples file with numpy.
* ``scripts/hello_world.py``, ``scripts/features.json``: feature_demo's scripts directory,
  which its generate step copies into merlin_info.
* ``bin/python2``: runs feature_demo's python2 step with python3 after turning its
  ``print "..."`` statements into calls (there is no python2 here).
"""

from __future__ import annotations

__all__ = ["FEATURE_DEMO", "MAKE_SAMPLES", "NAMES", "sample_rows"]

#: The names make_samples.py hands out, in order (cycled).
NAMES = ("Ada", "Grace", "Hedy", "Joan", "Karen", "Lise", "Mary", "Rosalind")

MAKE_SAMPLES = '''\
#!/usr/bin/env python3
"""Stand-in for merlin's hello/make_samples.py: write N names, one a line."""
import argparse

NAMES = %r
parser = argparse.ArgumentParser(description="Make some samples (names of people).")
parser.add_argument("--number", type=int, required=True)
parser.add_argument("--filepath", required=True)
args = parser.parse_args()
with open(args.filepath, "w") as fh:
    fh.write("\\n".join(NAMES[i %% len(NAMES)] for i in range(args.number)))
''' % (NAMES,)

_SPELLBOOK = '''\
#!/usr/bin/env python3
"""Stand-in for merlin-spellbook: the subcommands feature_demo calls, with placeholder output."""
import argparse
import json
import struct
import sys


def write_npy(path, rows):
    ncols = len(rows[0]) if rows else 0
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (%d, %d), }" % (len(rows), ncols)
    header += " " * (63 - (len(header) + 10) % 64) + "\\n"  # pad to a 64-byte boundary
    with open(path, "wb") as fh:
        fh.write(b"\\x93NUMPY\\x01\\x00" + struct.pack("<H", len(header)) + header.encode())
        for row in rows:
            fh.write(struct.pack("<%dd" % ncols, *row))


def make_samples(a):
    rows = [[(i + 1) / 4, (i + 2) / 4] for i in range(a.n)]  # exact binary fractions
    write_npy(a.outfile, rows)


def collect(a):
    merged = {}
    for name in a.instring.split():
        with open(name) as fh:
            merged[name.rsplit("/", 2)[-2] + "/" + name.rsplit("/", 1)[-1]] = json.load(fh)
    with open(a.outfile, "w") as fh:
        json.dump(merged, fh, sort_keys=True)
    print("collected %d files" % len(merged))


def translate(a):
    with open(a.input) as fh, open(a.schema) as schema:
        data, _ = json.load(fh), json.load(schema)
    with open(a.output, "w") as fh:
        fh.write("npz stand-in: %d records\\n" % len(data))


def learn(a):
    with open(a.infile) as fh:
        first = fh.readline().strip()
    with open("random_forest_reg.pkl", "w") as fh:
        fh.write("regressor stand-in trained on: %s\\n" % first)


def predict(a):
    for name in (a.infile, a.reg):
        open(name).close()
    with open(a.outfile, "w") as fh:
        fh.write("prediction stand-in\\n")


parser = argparse.ArgumentParser(prog="spellbook")
sub = parser.add_subparsers(dest="command", required=True)
p = sub.add_parser("make-samples")
p.add_argument("-n", type=int, required=True)
p.add_argument("-outfile", required=True)
p.add_argument("-sample_type", default="random")
p.set_defaults(func=make_samples)
p = sub.add_parser("collect")
p.add_argument("-outfile", required=True)
p.add_argument("-instring", required=True)
p.set_defaults(func=collect)
p = sub.add_parser("translate")
p.add_argument("-input", required=True)
p.add_argument("-output", required=True)
p.add_argument("-schema", required=True)
p.set_defaults(func=translate)
p = sub.add_parser("learn")
p.add_argument("-infile", required=True)
p.set_defaults(func=learn)
p = sub.add_parser("predict")
p.add_argument("-infile", required=True)
p.add_argument("-outfile", required=True)
p.add_argument("-reg", required=True)
p.set_defaults(func=predict)
args = parser.parse_args()
sys.exit(args.func(args))
'''

_HELLO_WORLD = '''\
#!/usr/bin/env python3
"""Stand-in for feature_demo's scripts/hello_world.py: X, Y, Z in, their sum and product out."""
import argparse
import json

parser = argparse.ArgumentParser()
for name in ("X", "Y", "Z"):
    parser.add_argument(name, type=float)
parser.add_argument("-outfile", default="hello_world_output.json")
a = parser.parse_args()
with open(a.outfile, "w") as fh:
    json.dump({"inputs": {"X": a.X, "Y": a.Y, "Z": a.Z},
               "outputs": {"X+Y+Z": a.X + a.Y + a.Z, "X*Y*Z": a.X * a.Y * a.Z}}, fh)
'''

_PYTHON2 = '''\
#!/usr/bin/env python3
"""Stand-in python2: run a script with python3 after turning print statements into calls."""
import re
import sys

with open(sys.argv[1]) as fh:
    source = re.sub(r"^(\\s*)print (.+)$", r"\\1print(\\2)", fh.read(), flags=re.M)
sys.argv = sys.argv[1:]
exec(compile(source, sys.argv[0], "exec"), {"__name__": "__main__"})
'''

#: feature_demo.yaml's stand-ins, relative name -> text.
FEATURE_DEMO = {
    "bin/spellbook": _SPELLBOOK,
    "bin/python2": _PYTHON2,
    "scripts/hello_world.py": _HELLO_WORLD,
    "scripts/features.json": '{"inputs": ["X", "Y", "Z"], "outputs": ["X+Y+Z", "X*Y*Z"]}\n',
}


def sample_rows(n: int, columns: int = 1) -> str:
    """A headerless CSV samples file: ``n`` rows, ``columns`` columns of distinct words."""
    rows = []
    for i in range(n):
        cells = [NAMES[i % len(NAMES)] + str(i)] + [f"{c}x{i}" for c in range(1, columns)]
        rows.append(",".join(cells))
    return "\n".join(rows) + "\n"
