"""Merlin's samples: the ``merlin.samples`` block, the samples file, the per-sample layout.

A Merlin spec may name a table of samples (``merlin.samples``): ``generate.cmd`` makes the
file if it does not exist yet, ``file`` is read as Merlin reads it (``.npy``, ``.csv``,
``.tab``; rows are samples), and ``column_labels`` name the columns, each a token
(``$(WORLD)``). A step *uses samples* if its command or restart mentions a column label,
``$(MERLIN_SAMPLE_ID)`` or ``$(MERLIN_SAMPLE_PATH)`` (Merlin's ``needs_merlin_expansion``):
it then runs once per sample, in ``<workspace>/<sample path>``, where the sample path is
Merlin's directory hierarchy (``uniform_directories``: ``level_max_dirs`` entries per
level, names zero-padded to ``len(str(level_max_dirs))`` digits; 3 samples give ``00``,
``01``, ``02``; 100 give ``00/00`` .. ``03/24``).

The number of samples is known only once the file exists (it may be generated when the
study starts), so the per-sample values, and the tokens that depend on the count
(``$(MERLIN_GLOB_PATH)``, ``$(MERLIN_PATHS_ALL)``), are substituted when a job is
submitted (:func:`for_sample`, :func:`resolve_counted`), never held for every sample.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

if TYPE_CHECKING:
    from engine.spec.graph import StepInstance
    from engine.spec.model import Spec

__all__ = [
    "COUNTED_TOKENS", "SAMPLE_KEYWORDS", "SampleLayout", "SampleSpec", "SampleTable",
    "for_sample", "late_tokens", "merlin_tokens", "parse_samples", "resolve_merlin_variables", "read_samples", "resolve_counted", "uses_samples",
]

SAMPLE_KEYWORDS = ("MERLIN_SAMPLE_ID", "MERLIN_SAMPLE_PATH")
"""Tokens that make a step run once per sample (besides the column labels)."""
COUNTED_TOKENS = ("MERLIN_GLOB_PATH", "MERLIN_PATHS_ALL")
"""Tokens whose value depends on the number of samples, substituted at submission."""
FORMATS = (".npy", ".csv", ".tab")
"""The samples file formats Merlin 1.13 reads (``merlin.utils.load_array_file``)."""
MAX_LEVEL_DIRS = 1_000_000
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SampleSpec(msgspec.Struct, frozen=True, kw_only=True):
    """``merlin.samples`` after validation (strings not yet substituted).

    Attributes:
        file: Where the samples are (``$(MERLIN_INFO)/samples.npy``).
        labels: ``column_labels``, one per column.
        generate: ``generate.cmd``, run in ``merlin_info/`` if ``file`` does not exist.
        level_max_dirs: Directories per level of the sample hierarchy (Merlin: 25).
    """

    file: str
    labels: tuple[str, ...]
    generate: str = ""
    level_max_dirs: int = 25


def parse_samples(block: Any, fail: Callable[[str, str], NoReturn]) -> SampleSpec | None:
    """Validate ``merlin.samples`` (None or absent: no samples).

    Raises (through ``fail``):
        SpecError: a missing ``file`` or ``column_labels``, a label that cannot be a token,
            a duplicate label, an unknown key, or a bad ``level_max_dirs``.
    """
    if block is None:
        return None
    field = "merlin.samples"
    if not isinstance(block, dict):
        fail(field, "must be a mapping (generate, file, column_labels, level_max_dirs)")
    for key in block:
        if key not in ("generate", "file", "column_labels", "level_max_dirs"):
            fail(f"{field}.{key}", "unknown key (Merlin's are generate, file, column_labels "
                 "and level_max_dirs)")
    file = block.get("file")
    if not isinstance(file, str) or not file.strip():
        fail(f"{field}.file", "required: the samples file (.npy, .csv or .tab)")
    labels = block.get("column_labels")
    if not isinstance(labels, list) or not labels:
        fail(f"{field}.column_labels", "required: a list naming each column")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not _LABEL.match(label):
            fail(f"{field}.column_labels[{i}]", f"{str(label)[:40]!r} is not a token name "
                 "(letters, digits and _, not starting with a digit)")
        if label in labels[:i]:
            fail(f"{field}.column_labels[{i}]", f"'{label}' is given twice")
        if label.startswith("MERLIN_") or label in ("SPECROOT", "WORKSPACE", "LAUNCHER",
                                                    "OUTPUT_PATH"):
            fail(f"{field}.column_labels[{i}]", f"'{label}' is a reserved name")
    generate = block.get("generate") or {}
    if not isinstance(generate, dict) or not isinstance(generate.get("cmd", ""), str):
        fail(f"{field}.generate", "must be a mapping with a string cmd")
    for key in generate:
        if key != "cmd":
            fail(f"{field}.generate.{key}", "unknown key (Merlin's is cmd)")
    level = block.get("level_max_dirs", 25)
    if type(level) is not int or not 1 <= level <= MAX_LEVEL_DIRS:
        fail(f"{field}.level_max_dirs", f"must be an integer from 1 to {MAX_LEVEL_DIRS}")
    return SampleSpec(file=file, labels=tuple(labels), generate=generate.get("cmd") or "",
                      level_max_dirs=level)


def uses_samples(cmd: str, restart: str, labels: Sequence[str]) -> bool:
    """Merlin's rule: the step runs per sample if cmd or restart names a label or a
    sample keyword."""
    text = f"{cmd}\n{restart}"
    return any(f"$({t})" in text for t in (*labels, *SAMPLE_KEYWORDS))


class SampleLayout:
    """Where sample ``i`` lives: Merlin's hierarchy for ``n`` samples."""

    def __init__(self, n: int, level_max_dirs: int = 25) -> None:
        self.n = n
        self.level_max_dirs = level_max_dirs
        sizes = [1]  # samples per directory at each level, the deepest last
        while sizes[0] < n:
            sizes.insert(0, sizes[0] * level_max_dirs)
        del sizes[0]
        self.sizes = tuple(sizes)
        self.width = len(str(level_max_dirs))

    def path(self, i: int) -> str:
        """The sample's directory relative to its step's workspace (``03/24``)."""
        w, top = self.width, self.level_max_dirs
        parts = [f"{(i // size) % top if k else i // size:0{w}d}"
                 for k, size in enumerate(self.sizes)]
        return "/".join(parts)

    @property
    def glob(self) -> str:
        """``$(MERLIN_GLOB_PATH)``: one ``*/`` per level."""
        return "*/" * len(self.sizes)

    def paths_all(self) -> str:
        """``$(MERLIN_PATHS_ALL)``: every sample's directory, space-separated."""
        return " ".join(self.path(i) for i in range(self.n))


class SampleTable:
    """The samples: ``n`` rows of values, read as Merlin reads them (values as strings)."""

    def __init__(self, rows: Any, labels: Sequence[str]) -> None:
        self._rows = rows
        self.labels = tuple(labels)
        self.n = int(rows.shape[0])

    def row(self, i: int) -> tuple[str, ...]:
        """Sample ``i``'s values, one per label (Merlin's ``str()`` of each cell)."""
        return tuple(str(v) for v in self._rows[i][: len(self.labels)])


def read_samples(path: str, labels: Sequence[str]) -> SampleTable:
    """Read a samples file as Merlin 1.13 does: ``.npy`` (never with pickles), ``.csv``
    (comma-separated text), ``.tab`` (whitespace-separated); at least two dimensions.

    Raises:
        ValueError: an unknown extension, an unreadable or malformed file, fewer columns
            than labels.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: samples must be one of {', '.join(FORMATS)} (as Merlin "
                         f"reads them), not '{ext or 'no extension'}'")
    import numpy as np  # only studies with samples pay for it

    try:
        if ext == ".npy":
            rows = np.load(path, allow_pickle=False)
            if rows.ndim == 1:
                rows = rows.reshape(-1, 1)
        else:
            rows = np.loadtxt(path, delimiter="," if ext == ".csv" else None, ndmin=2,
                              dtype=str)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the samples: {exc}") from None
    if rows.ndim != 2:
        raise ValueError(f"{path}: samples must be a 2-D table, not {rows.ndim}-D")
    if rows.shape[0] and rows.shape[1] < len(labels):
        raise ValueError(f"{path}: {rows.shape[1]} column(s) but {len(labels)} column_labels "
                         f"({', '.join(labels)})")
    return SampleTable(rows, labels)


def resolve_counted(text: str, layout: SampleLayout) -> str:
    """Substitute the tokens that depend on the number of samples."""
    if "$(MERLIN_GLOB_PATH)" in text:
        text = text.replace("$(MERLIN_GLOB_PATH)", layout.glob)
    if "$(MERLIN_PATHS_ALL)" in text:
        text = text.replace("$(MERLIN_PATHS_ALL)", layout.paths_all())
    return text


def for_sample(inst: StepInstance, table: SampleTable, layout: SampleLayout,
               i: int) -> StepInstance:
    """Sample ``i``'s instance: its values, id and path substituted, its workspace the
    sample's directory (``$(WORKSPACE)`` stays the step's, as in Merlin)."""
    rel = layout.path(i)
    pairs = [*zip((f"$({label})" for label in table.labels), table.row(i)),
             ("$(MERLIN_SAMPLE_ID)", str(i)), ("$(MERLIN_SAMPLE_PATH)", rel)]

    def sub(text: str) -> str:
        if "$(" not in text:
            return text
        for token, value in pairs:
            text = text.replace(token, value)
        return resolve_counted(text, layout)

    return msgspec.structs.replace(inst, cmd=sub(inst.cmd), restart=sub(inst.restart),
                                   workspace=f"{inst.workspace}/{rel}" if rel else inst.workspace)


def late_tokens(labels: Sequence[str]) -> set[str]:
    """The tokens a study with these column labels resolves at submission, not expansion."""
    if not labels:
        return set()
    return {f"$({t})" for t in (*labels, *SAMPLE_KEYWORDS, *COUNTED_TOKENS)}


def merlin_tokens(spec: Spec, study_dir: str, spec_file: str,
                  now: datetime.datetime) -> dict[str, str]:
    """Merlin's study-wide tokens (``merlin.study.study.MerlinStudy.special_vars``)."""
    info = os.path.join(study_dir, "merlin_info")
    base = os.path.splitext(os.path.basename(spec_file))[0]
    labels = spec.samples.labels if spec.samples else ()
    return {
        "MERLIN_TIMESTAMP": now.strftime("%Y%m%d-%H%M%S"),
        "MERLIN_INFO": info,
        "MERLIN_WORKSPACE": study_dir,
        "MERLIN_SAMPLE_VECTOR": " ".join(f"$({label})" for label in labels),
        "MERLIN_SAMPLE_NAMES": " ".join(labels),
        "MERLIN_SPEC_ORIGINAL_TEMPLATE": os.path.join(info, f"{base}.orig.yaml"),
        "MERLIN_SPEC_EXECUTED_RUN": os.path.join(info, f"{base}.partial.yaml"),
        "MERLIN_SPEC_ARCHIVED_COPY": os.path.join(info, f"{base}.expanded.yaml"),
    }


def resolve_merlin_variables(spec: Spec) -> Spec:
    """Merlin's variables: each value gets the earlier variables (and labels) substituted
    in definition order, then ``~`` and ``$ENV`` expanded (``merlin.spec.expansion``), so
    ``HELLO: $(SCRIPTS)/hello.py`` after ``SCRIPTS: ...`` works, as Maestro's single pass
    does not; and ``description.name`` may use them (``name: $(NAME)``)."""
    done: dict[str, str] = {}

    def sub(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        for name, known in done.items():
            value = value.replace(f"$({name})", known)
        return os.path.expandvars(os.path.expanduser(value))

    variables = {}
    for name, value in spec.env.variables.items():
        variables[name] = sub(value)
        done[name] = str(variables[name])
    labels = {}
    for name, value in spec.env.labels.items():
        labels[name] = sub(value)
        done[name] = str(labels[name])
    env = msgspec.structs.replace(spec.env, variables=variables, labels=labels)
    desc = msgspec.structs.replace(spec.description, name=sub(spec.description.name))
    return msgspec.structs.replace(spec, env=env, description=desc)
