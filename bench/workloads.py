"""The benchmark's workloads (W1-W4) and the files each peer runs them from: a Maestro/Troupe
spec, a DAG for the floor, Parsl and Dask scripts, a Snakefile. Used by ``bench/run.py``."""

from __future__ import annotations

import json
from pathlib import Path

# --------------------------------------------------------------------------- workloads

class Workload:
    """A DAG of named steps, plus its Maestro/Troupe spec."""

    def __init__(self, key: str, kind: str, n: int):
        self.key, self.kind, self.n = key, kind, n

    def steps(self) -> list[tuple[str, list[str]]]:
        """Expanded step instances in dependency order: (output name, dependencies)."""
        n = self.n
        if self.kind == "independent":
            return [(f"s{i}", []) for i in range(n)]
        if self.kind == "chain":
            return [(f"c{i}", [f"c{i-1}"] if i else []) for i in range(n)]
        if self.kind == "diamond":
            par = [f"p_{i}" for i in range(n)]
            return [("src", [])] + [(p, ["src"]) for p in par] + [("sink", par)]
        if self.kind == "sweep":
            par = [f"w_{i}" for i in range(n)]
            return [(p, []) for p in par] + [("f", par)]
        raise ValueError(self.kind)

    def dag(self, out: Path) -> list:
        return [[name, cmd(out, name), deps] for name, deps in self.steps()]

    def spec(self, out: Path) -> str:
        n = self.n
        # Every step's command runs under /bin/sh, as in the floor (Maestro's own default
        # shell is /bin/bash, which costs about 0.6 ms more per process start here).
        head = (f"description: {{name: {self.kind}{n}, description: bench {self.key}}}\n"
                "batch: {type: local, shell: /bin/sh}\nstudy:\n")

        def step(name: str, command: str, deps: list[str] | None = None) -> str:
            d = f", depends: [{', '.join(deps)}]" if deps else ""
            return (f"  - name: {name}\n    description: {name}\n"
                    f"    run: {{cmd: {json.dumps(command)}{d}}}\n")

        if self.kind in ("independent", "chain"):
            return head + "".join(step(name, cmd(out, name), deps) for name, deps in self.steps())
        values = ", ".join(str(i) for i in range(n))
        if self.kind == "diamond":
            body = (step("src", cmd(out, "src"))
                    + step("p", cmd(out, "p_$(I)"), ["src"])
                    + step("sink", cmd(out, "sink"), ["p_*"]))
        else:
            body = step("w", cmd(out, "w_$(I)")) + step("f", cmd(out, "f"), ["w_*"])
        return head + body + f'global.parameters:\n  I: {{values: [{values}], label: "I.%%"}}\n'


def cmd(out: Path, name: str) -> str:
    return f'echo x > "{out}/{name}.out"'


WORKLOADS = {w.key: w for w in [
    Workload("W1-200", "independent", 200),
    Workload("W1-1000", "independent", 1000),
    Workload("W2-100", "chain", 100),
    Workload("W3-500", "diamond", 500),
    Workload("W4-200", "sweep", 200),
]}


# --------------------------------------------------------------------------- peers' files

PARSL = '''
import json, os, sys
import parsl
from parsl.config import Config
from parsl.executors.threads import ThreadPoolExecutor
from parsl.app.app import bash_app

@bash_app
def step(cmd, inputs=()):
    return cmd

dag = json.load(open(sys.argv[1]))
if sys.argv[3] == "htex":
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider
    executor = HighThroughputExecutor(
        label="htex", address="127.0.0.1", cores_per_worker=1,
        max_workers_per_node=os.cpu_count() or 1,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))
else:
    executor = ThreadPoolExecutor(max_threads=os.cpu_count() or 1)
parsl.load(Config(executors=[executor], run_dir=sys.argv[2]))
futs = {}
for name, cmd, deps in dag:
    futs[name] = step(cmd, inputs=[futs[d] for d in deps])
bad = 0
for f in futs.values():
    try:
        f.result()
    except Exception as exc:
        bad += 1
parsl.dfk().cleanup()
sys.exit(1 if bad else 0)
'''

DASK = '''
import json, os, subprocess, sys
from dask.distributed import Client, LocalCluster

def step(cmd, *deps):
    subprocess.run(["/bin/sh", "-c", cmd], check=True)
    return 0

if __name__ == "__main__":
    dag = json.load(open(sys.argv[1]))
    with LocalCluster(n_workers=os.cpu_count() or 1, threads_per_worker=1,
                      dashboard_address=None, local_directory=sys.argv[2]) as cluster, \\
            Client(cluster) as client:
        futs = {}
        for name, cmd, deps in dag:
            futs[name] = client.submit(step, cmd, *[futs[d] for d in deps], key=name, pure=False)
        client.gather(list(futs.values()))
'''


def snakefile(w: Workload, out: Path) -> str:
    n = w.n
    o = str(out)
    head = f'shell.executable("/bin/sh")\nOUT = {o!r}\n'
    sh = "'echo x > \"{output}\"'"
    if w.kind == "independent":
        return head + (
            f"rule all:\n    input: expand(OUT + '/s{{i}}.out', i=range({n}))\n"
            "rule s:\n    output: OUT + '/s{i}.out'\n    wildcard_constraints: i=r'\\d+'\n"
            f"    shell: {sh}\n")
    if w.kind == "chain":
        return head + (
            f"rule all:\n    input: OUT + '/c{n-1}.out'\n"
            "def parent(wc):\n    i = int(wc.i)\n    return [OUT + f'/c{i-1}.out'] if i else []\n"
            "rule c:\n    input: parent\n    output: OUT + '/c{i}.out'\n"
            f"    wildcard_constraints: i=r'\\d+'\n    shell: {sh}\n")
    if w.kind == "diamond":
        return head + (
            "rule all:\n    input: OUT + '/sink.out'\n"
            f"rule src:\n    output: OUT + '/src.out'\n    shell: {sh}\n"
            "rule p:\n    input: OUT + '/src.out'\n    output: OUT + '/p_{i}.out'\n"
            f"    wildcard_constraints: i=r'\\d+'\n    shell: {sh}\n"
            f"rule sink:\n    input: expand(OUT + '/p_{{i}}.out', i=range({n}))\n"
            f"    output: OUT + '/sink.out'\n    shell: {sh}\n")
    return head + (
        "rule all:\n    input: OUT + '/f.out'\n"
        "rule w:\n    output: OUT + '/w_{i}.out'\n"
        f"    wildcard_constraints: i=r'\\d+'\n    shell: {sh}\n"
        f"rule f:\n    input: expand(OUT + '/w_{{i}}.out', i=range({n}))\n"
        f"    output: OUT + '/f.out'\n    shell: {sh}\n")
