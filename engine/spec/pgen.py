"""Parameters: the zipped table the expansion reads, and Maestro's custom generators (``--pgen``).

A study's parameters come either from ``global.parameters`` or from a Python file passed with
``--pgen`` whose ``get_custom_generator(env, **kwargs)`` returns a Maestro
``ParameterGenerator``. Both become one :class:`ParameterTable` (keys in order, values zipped
by index, labels already formatted). :class:`ParameterGenerator` offers Maestro's
``add_parameter`` API; when ``maestrowf`` is not installed, a shim makes
``from maestrowf.datastructures.core import ParameterGenerator`` resolve to it while the pgen
file runs, so users' generator files work unmodified.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from engine.errors import ConfigError, SpecError

if TYPE_CHECKING:
    from engine.spec.environment import StudyEnvironment
    from engine.spec.model import Parameter

__all__ = ["ParameterGenerator", "ParameterTable", "load_generator", "parse_pargs"]

_SHIM_MODULES = (
    "maestrowf",
    "maestrowf.datastructures",
    "maestrowf.datastructures.core",
    "maestrowf.datastructures.core.parameters",
)


class ParameterGenerator:
    """Maestro's ``ParameterGenerator`` API, for ``--pgen`` files.

    Attributes:
        parameters: Key -> list of values, in insertion order.
        labels: Key -> label string containing ``label_token``, or a list of one label per value.
        names: Key -> the name ``$(KEY.name)`` expands to.
    """

    def __init__(self, token: str = "$", ltoken: str = "%%") -> None:
        self.parameters: dict[str, list[Any]] = {}
        self.labels: dict[str, str | list[str]] = {}
        self.names: dict[str, str] = {}
        self.label_token = ltoken
        self.token = token
        self.length = 0

    def add_parameter(
        self, key: str, values: Sequence[Any], label: str | list[str] | None = None,
        name: str | None = None,
    ) -> None:  # fmt: skip
        """Add (or replace) a parameter.

        Args:
            key: The token name: ``$(KEY)``, ``$(KEY.label)``, ``$(KEY.name)``.
            values: The values, zipped by index with the other parameters.
            label: A label with ``%%`` where the value goes, or one label per value;
                defaults to ``KEY.%%``.
            name: What ``$(KEY.name)`` becomes; defaults to ``key``.

        Raises:
            ValueError: ``values`` has a different length from the parameters already added.
        """
        values = list(values)
        if self.length == 0:
            self.length = len(values)
        elif len(values) != self.length:
            raise ValueError(
                f"parameter '{key}' has {len(values)} values, the others have {self.length}"
            )
        self.parameters[key] = values
        self.labels[key] = label if label else f"{key}.{self.label_token}"
        self.names[key] = name if name else key

    def __bool__(self) -> bool:
        return bool(self.parameters)


class ParameterTable(msgspec.Struct, frozen=True, kw_only=True):
    """Zipped parameters: combination ``i`` takes index ``i`` of every key.

    Attributes:
        keys: Parameter keys, in definition order (the order Maestro applies them in).
        values: Per key, the values.
        labels: Per key, the formatted label of each value (``SIZE.%%`` -> ``SIZE.10``).
        names: Per key, what ``$(KEY.name)`` becomes.
    """

    keys: tuple[str, ...] = ()
    values: tuple[tuple[Any, ...], ...] = ()
    labels: tuple[tuple[str, ...], ...] = ()
    names: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Number of combinations (0 when there are no parameters)."""
        return len(self.values[0]) if self.values else 0

    @classmethod
    def from_spec(cls, params: Mapping[str, Parameter]) -> ParameterTable:
        """Build the table from validated ``global.parameters``."""
        return cls(
            keys=tuple(params),
            values=tuple(tuple(p.values) for p in params.values()),
            labels=tuple(tuple(p.label.replace("%%", str(v)) for v in p.values)
                         for p in params.values()),  # fmt: skip
            names=tuple(params),
        )


def parse_pargs(pargs: Sequence[str]) -> dict[str, str]:
    """Split ``--pargs KEY:VALUE`` items on the first ``:`` (both sides stripped, as Maestro).

    Raises:
        ConfigError: An item has no ``:``.
    """
    out: dict[str, str] = {}
    for item in pargs:
        key, sep, value = item.partition(":")
        if not sep:
            raise ConfigError(f"--pargs {item!r}: expected KEY:VALUE")
        out[key.strip()] = value.strip()
    return out


class _SpecRoot(str):
    """``kwargs["SPECROOT"]``: Maestro passes a Variable (``.value``); a str works as a path too."""

    @property
    def value(self) -> str:
        return str(self)

    @property
    def name(self) -> str:
        return "SPECROOT"


def load_generator(
    pgen_path: str, env: StudyEnvironment, pargs: Sequence[str], *, study_dir: str,
    spec_root: str,
) -> ParameterTable:  # fmt: skip
    """Run a ``--pgen`` file and turn its generator into a :class:`ParameterTable`.

    The file is imported by path and ``get_custom_generator(env, **kwargs)`` is called with
    the parsed ``pargs`` plus ``OUTPUT_PATH`` (the study directory) and ``SPECROOT``.

    Args:
        pgen_path: The Python file, as the user named it.
        env: The study environment (``env.find(NAME).value`` works as in Maestro).
        pargs: ``KEY:VALUE`` strings.
        study_dir: The absolute study directory.
        spec_root: The absolute spec directory.

    Returns:
        The generator's parameters.

    Raises:
        ConfigError: A ``pargs`` item is malformed.
        SpecError: The file cannot be loaded, raises, or returns something unusable; the
            error names the pgen file.
    """
    kwargs: dict[str, Any] = parse_pargs(pargs)
    kwargs["OUTPUT_PATH"] = study_dir
    kwargs["SPECROOT"] = _SpecRoot(spec_root)
    path = os.path.abspath(pgen_path)
    if not os.path.isfile(path):
        raise SpecError(pgen_path, "", "pgen file does not exist")
    module_spec = importlib.util.spec_from_file_location("custom_gen", path)
    if module_spec is None or module_spec.loader is None:
        raise SpecError(pgen_path, "", "cannot import the pgen file as Python")
    try:
        with _maestro_shim():
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            func = getattr(module, "get_custom_generator", None)
            if not callable(func):
                raise SpecError(pgen_path, "", "defines no get_custom_generator(env, **kwargs)")
            generator = func(env, **kwargs)
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(pgen_path, "", f"pgen failed: {type(exc).__name__}: {exc}") from exc
    return _table_from_generator(pgen_path, generator)


def _table_from_generator(pgen_path: str, gen: Any) -> ParameterTable:
    params = getattr(gen, "parameters", None)
    if not isinstance(params, Mapping):
        raise SpecError(pgen_path, "", "get_custom_generator must return a ParameterGenerator, "
                        f"not {type(gen).__name__}")  # fmt: skip
    labels: Mapping[str, Any] = getattr(gen, "labels", {}) or {}
    names: Mapping[str, Any] = getattr(gen, "names", {}) or {}
    ltoken = getattr(gen, "label_token", "%%")
    keys, values, formatted = [], [], []
    for key, vals in params.items():
        if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence):
            raise SpecError(pgen_path, f"parameters.{key}", "values must be a list")
        if values and len(vals) != len(values[0]):
            raise SpecError(pgen_path, f"parameters.{key}", f"has {len(vals)} values but "
                            f"'{keys[0]}' has {len(values[0])}")  # fmt: skip
        label = labels.get(key) or f"{key}.{ltoken}"
        if isinstance(label, str):
            formatted.append(tuple(label.replace(ltoken, str(v)) for v in vals))
        elif isinstance(label, Sequence) and len(label) == len(vals):
            formatted.append(tuple(str(x) for x in label))
        else:
            raise SpecError(pgen_path, f"labels.{key}",
                            "must be a string or one label per value")  # fmt: skip
        keys.append(str(key))
        values.append(tuple(vals))
    return ParameterTable(
        keys=tuple(keys), values=tuple(values), labels=tuple(formatted),
        names=tuple(str(names.get(k) or k) for k in keys),
    )  # fmt: skip


@contextlib.contextmanager
def _maestro_shim() -> Iterator[None]:
    """Make ``maestrowf.datastructures.core.ParameterGenerator`` importable if maestrowf is not.

    The shim modules are removed again afterwards, so nothing else mistakes them for the
    real package.
    """
    try:
        present = importlib.util.find_spec("maestrowf") is not None
    except (ImportError, ValueError):
        present = False
    if present:
        yield
        return
    added: dict[str, types.ModuleType] = {}
    for name in _SHIM_MODULES:
        if name not in sys.modules:
            module = types.ModuleType(name, "Troupe's stand-in for maestrowf (pgen files only).")
            module.__path__ = []  # a package, so the submodules resolve
            module.ParameterGenerator = ParameterGenerator  # type: ignore[attr-defined]
            added[name] = sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent in added:  # 'import maestrowf.datastructures.core as c' walks attributes
                setattr(added[parent], child, module)
    try:
        yield
    finally:
        for name, module in added.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
