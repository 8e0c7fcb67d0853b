"""The compiled CPU kernel of the experts pass (``csrc/experts_cpu.cpp``), built on first use.

On a CPU, :class:`subnets.experts.layer.Experts` runs its gather, experts and combine through this kernel
when it can be built: the same ATen operators as the Python loop in ``layer.py``, in the same runs and
order (bit-identical results), but run by OpenMP threads, one expert per thread, without the interpreter
and lock overhead the loop pays about twenty times per expert. The router's top-k selection of float32
scores also runs here. It is compiled once per torch and Python version (about 30 s, with the C++ compiler
and ninja that torch's extension builder needs) into ``$SUBNETS_KERNELS`` (default
``~/.cache/subnets/kernels``); when it cannot be built, one ``RuntimeWarning`` says why, naming the log file
that keeps the compiler's full output (``build-<hash>.log`` in that folder), and the Python loop is used.
``SUBNETS_EXPERTS_KERNEL=python`` turns the kernel off. :func:`implementation` says which of the two runs.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("csrc") / "experts_cpu.cpp"
SWITCH = "SUBNETS_EXPERTS_KERNEL"
_LOCK = threading.Lock()
_loaded: dict[str, object] = {}  # "module": the kernel (None: not built); "failure": why, when it did not build
_UNSET = object()
COMPILED = "compiled kernel"


def build_directory() -> Path:
    """Where the kernel is compiled: one folder per torch version, Python version and machine type."""
    root = Path(os.environ.get("SUBNETS_KERNELS") or Path.home() / ".cache" / "subnets" / "kernels")
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return root / f"torch-{torch.__version__.replace('+', '_')}-{python}-{platform.machine()}"


def enabled() -> bool:
    """Whether the kernel may be used (``SUBNETS_EXPERTS_KERNEL`` is not ``python``)."""
    value = os.environ.get(SWITCH, "").strip().lower()
    if value not in ("", "python", "compiled"):
        raise ValueError(f"{SWITCH} must be 'python' or 'compiled', got {os.environ[SWITCH]!r}")
    return value != "python"


def kernel() -> ModuleType | None:
    """The compiled kernel, building it on first use; None when it is switched off or cannot be built."""
    if not enabled():
        return None
    with _LOCK:
        if "module" not in _loaded:
            _loaded.pop("failure", None)
            _loaded["module"] = _build()
        return _loaded["module"]  # type: ignore[return-value]


def implementation(device: torch.device | str = "cpu") -> str:
    """Which implementation runs the experts of float32 tensors on ``device``: ``"compiled kernel"``, or
    ``"python loop (<why>)"`` (switched off, another device, or the kernel did not build: then the reason
    and the log file of the compiler's output). Builds the kernel if it has not been tried yet."""
    device = torch.device(device)
    if device.type != "cpu":
        return f"python loop (the kernel is CPU-only; device {device.type})"
    if not enabled():
        return f"python loop ({SWITCH}=python)"
    if kernel() is not None:
        return COMPILED
    return f"python loop ({_loaded.get('failure') or 'the kernel did not build'})"


@contextmanager
def using(module: ModuleType) -> Iterator[None]:
    """Runs the experts through ``module`` (a build of another version of the source, from
    :func:`compile_source`) instead of this kernel inside the block: for benchmarks that compare kernel
    versions in one process."""
    with _LOCK:
        before = _loaded.get("module", _UNSET)
        _loaded["module"] = module
    try:
        yield
    finally:
        with _LOCK:
            if before is _UNSET:
                _loaded.pop("module", None)
            else:
                _loaded["module"] = before


def compile_source(source: Path, name: str, folder: Path) -> ModuleType:
    """Compiles the kernel ``source`` as extension ``name`` in ``folder`` (torch's extension builder, with the
    PyPI ninja's folder on PATH) and loads it; raises if it cannot."""
    from torch.utils.cpp_extension import load

    path = os.environ.get("PATH")
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PATH"] = os.pathsep.join([*_ninja_folder(), *([path] if path else [])])
    try:
        return load(name=name, sources=[str(source)], build_directory=str(folder), extra_cflags=["-O3", "-fopenmp"],
                    extra_ldflags=["-fopenmp"], verbose=False)
    finally:
        if path is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = path


def _build() -> ModuleType | None:
    folder = None
    try:
        folder = build_directory()
        if not (folder.is_dir() and any(folder.glob("*.so"))):
            print(f"subnets: compiling the CPU experts kernel into {folder} (once, about 30 s)", file=sys.stderr)
        return compile_source(SOURCE, "subnets_experts_cpu", folder)
    except Exception as error:  # no compiler, no ninja, an unwritable cache: the Python loop still works
        reason = _reason(error)
        log = _write_log(error, folder)
        where = (f"the compiler's full output is in {log}" if isinstance(log, Path)
                 else f"the compiler's output could not be saved: {log}")
        _loaded["failure"] = f"the kernel did not build: {reason}; {where}"
        warnings.warn(f"subnets: the CPU experts kernel could not be built ({reason}); using the Python loop. "
                      f"{where[0].upper()}{where[1:]}. Set {SWITCH}=python to skip trying.", RuntimeWarning,
                      stacklevel=3)
        return None


def _reason(error: Exception) -> str:
    """One line of a failed build's error: the compiler's first ``error:`` line, else the last line (torch's
    builder puts the whole compiler output in its message, whose last line is ninja's "build stopped")."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    errors = [line for line in lines[1:] if "error:" in line.lower()]
    return errors[0] if errors else lines[-1]


def _write_log(error: Exception, folder: Path | None) -> Path | str:
    """Writes the failed build's full output (the error's whole message and traceback) to ``build-<hash>.log``
    in the kernel folder, or in the temporary folder when that cannot be written; returns the file, or why
    neither could be written. The hash is of the source and the output, so each distinct failure has its
    own file."""
    text = "".join(traceback.format_exception(error))
    try:
        source = SOURCE.read_bytes()
    except OSError:
        source = b""
    digest = hashlib.sha256(source + text.encode()).hexdigest()[:12]
    when = datetime.datetime.now().isoformat(timespec="seconds")
    header = (f"subnets: building the CPU experts kernel failed, {when}\nsource: {SOURCE}\nbuild folder: {folder}\n"
              f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}\n\n")
    problems = []
    for place in ([folder] if folder is not None else []) + [Path(tempfile.gettempdir()) / "subnets-kernels"]:
        try:
            place.mkdir(parents=True, exist_ok=True)
            path = place / f"build-{digest}.log"
            path.write_text(header + text)
            return path
        except OSError as problem:
            problems.append(f"{place}: {problem}")
    return "; ".join(problems)


def _ninja_folder() -> list[str]:
    """The folder of the PyPI ninja package's binary, which torch's builder looks for on PATH (none if absent)."""
    try:
        import ninja
    except ImportError:
        return []
    folder = getattr(ninja, "BIN_DIR", None)
    return [folder] if folder else []
