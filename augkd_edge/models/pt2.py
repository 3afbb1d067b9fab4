"""Inspect a ``torch.export`` archive (``.pt2``) before torch loads it.

``torch.export.load`` runs code from the file in several ways: it calls
``torch.load(weights_only=False)`` on every weight or tensor constant whose
config entry says ``"use_pickle": true``, ``pickle.loads`` on opaque and
TorchScript-object constants, falls back to ``weights_only=False`` when the
sample inputs do not load safely, ``eval``s symbolic shape expressions through
``sympy.sympify``, compiles the program's ``guards_code``, resolves node
targets by ``getattr`` from ``torch``, and loads AOTInductor shared libraries.

:func:`check_pt2_archive` reads the archive as a zip file (no unpickling, no
eval) and refuses, naming the entry, anything outside the plain layout
``torch.export.save`` writes for an exported program with raw tensor
weights: only then may the file be handed to torch.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from augkd_edge.errors import UserError

# Entries of a plain archive, relative to its root folder (model names are \w+).
_PLAIN_ENTRIES = (
    r"archive_format",
    r"archive_version",
    r"byteorder",
    r"\.data/version",
    r"\.data/serialization_id",
    r"models/\w+\.json",
    r"data/weights/\w+_weights_config\.json",
    r"data/weights/weight_\d+",
    r"data/constants/\w+_constants_config\.json",
    r"data/constants/tensor_\d+",
    r"data/sample_inputs/\w+\.pt",
    r"extra/[\w.\-/]+",  # read as text only
)
_PLAIN = re.compile("|".join(f"(?:{p})" for p in _PLAIN_ENTRIES))

# Node targets torch resolves by getattr: operator overloads and symbolic-shape helpers only.
_TARGET = re.compile(r"torch\.ops\.[a-z]\w*\.[a-z]\w*(\.[A-Za-z]\w*)?|torch\._?sym_[a-z]\w*|_operator\.[a-z]\w*")
# Names allowed in symbolic shape expressions and guards (torch's own serialised forms).
_SAFE_NAMES = frozenset(
    "Symbol Integer Float Rational True False None oo zoo nan positive negative nonnegative nonpositive integer "
    "real finite Max Min Mod Abs Eq Ne Lt Le Gt Ge And Or Not Piecewise FloorDiv CeilDiv CleanDiv PythonMod "
    "ModularIndexing Where CeilToInt FloorToInt TruncToInt TruncToFloat RoundToInt RoundDecimal IntTrueDiv "
    "FloatTrueDiv PowByNatural FloatPow ToFloat Identity LShift RShift and or not L size stride storage_offset "
    "dim shape".split()
)
_SYMBOL_NAME = re.compile(r"[a-z]{1,5}\d+")


def check_pt2_archive(path: Path) -> None:
    """UserError naming the entry when the archive holds anything torch would unpickle or evaluate."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            root = _archive_root(path, names)
            for name in names:
                rel = name[len(root) + 1:] if name.startswith(root + "/") else None
                if rel is None or not _PLAIN.fullmatch(rel):
                    _refuse(path, name, "is not part of a plain torch.export archive (pickled objects, compiled "
                                        "AOTInductor code or another format)")
            if zf.read(f"{root}/archive_format").strip() != b"pt2":
                _refuse(path, f"{root}/archive_format", "does not say 'pt2'")
            for name in names:
                rel = name[len(root) + 1:]
                if rel.endswith("_weights_config.json") or rel.endswith("_constants_config.json"):
                    _check_payload_config(path, name, _json(zf, path, name))
                elif rel.startswith("models/"):
                    _check_program(path, name, _json(zf, path, name))
                elif rel.startswith("data/sample_inputs/"):
                    _check_sample_inputs(path, name, zf.read(name))
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        raise UserError(f"{path}: not a readable torch.export archive ({exc}).") from exc


def _refuse(path: Path, entry: str, why: str) -> None:
    raise UserError(
        f"{path}: refused to load: entry '{entry}' {why}; loading it could run code from the file. "
        f"Re-save the teacher with torch.export.save (plain tensor weights), or give a state_dict."
    )


def _archive_root(path: Path, names: list[str]) -> str:
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or not any(n.endswith("/archive_format") for n in names):
        raise UserError(f"{path}: not a torch.export archive (no single root folder with an archive_format entry).")
    return roots.pop()


def _json(zf: zipfile.ZipFile, path: Path, name: str) -> Any:
    try:
        return json.loads(zf.read(name))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: entry '{name}' is not valid JSON ({exc}).") from exc


def _check_payload_config(path: Path, name: str, config: Any) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        _refuse(path, name, "has no 'config' object")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            _refuse(path, f"{name}: {fqn}", "is stored as a pickle (use_pickle), not as raw tensor bytes")
        if not re.fullmatch(r"(weight|tensor)_\d+", str(meta.get("path_name"))):
            _refuse(path, f"{name}: {fqn}", f"points to '{meta.get('path_name')}', not a raw tensor")


def _check_program(path: Path, name: str, program: Any) -> None:
    for key, value in _strings(program):
        if key == "target" and not _TARGET.fullmatch(value):
            _refuse(path, name, f"calls '{value[:80]}', not a torch operator")
        elif key in ("expr_str", "guards_code") and not _safe_expression(value):
            _refuse(path, name, f"holds the expression {value[:80]!r}, which torch would evaluate as Python")


def _strings(obj: Any, key: str = "") -> Any:
    """(key, string) for every string in a JSON tree, keyed by the nearest dict key."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v, key)
    elif isinstance(obj, str):
        yield key, obj


def _safe_expression(text: str) -> bool:
    """Symbols, numbers, arithmetic and the names torch writes; no strings, attributes or calls beyond those."""
    text = re.sub(r"'[A-Za-z_]\w*'", "0", text)  # quoted symbol / argument names
    if re.search(r"[\"'\\;:{}@`$]|__|lambda", text):
        return False
    for match in re.finditer(r"[A-Za-z_]\w*", text):
        word = match.group()
        if word not in _SAFE_NAMES and not _SYMBOL_NAME.fullmatch(word):
            return False
    return True


def _check_sample_inputs(path: Path, name: str, data: bytes) -> None:
    """torch retries the sample inputs with weights_only=False when a safe load fails; make sure it cannot."""
    import pickle

    import torch

    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        _refuse(path, name, f"does not load as plain tensors ({str(exc).splitlines()[0] if str(exc) else exc!r})")
