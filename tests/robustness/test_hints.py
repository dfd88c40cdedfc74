"""Every `rbox: error:` comes with a `hint:` that says what to do (rbox(1), EXIT STATUS).

The source is scanned: each construction of an RboxError class must name a hint, unless
its class has a default one (ProtocolError). A new error without one fails here before
a user ever sees it; the fuzz tests check the printed hint at run time too."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from rootless import errors

ROOT = Path(errors.__file__).parent


def error_classes() -> dict[str, type[errors.RboxError]]:
    return {name: cls for name, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, errors.RboxError)}


def constructions_without_a_hint() -> list[str]:
    classes = error_classes()
    missing = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name not in classes or classes[name].default_hint:
                continue
            hint = next((k.value for k in node.keywords if k.arg == "hint"), node.args[1] if len(node.args) > 1
                        else None)
            if hint is None or (isinstance(hint, ast.Constant) and not hint.value):
                missing.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {ast.unparse(node)[:100]}")
    return missing


def test_every_error_names_a_hint() -> None:
    assert constructions_without_a_hint() == []


def test_the_scan_finds_an_error_without_a_hint(tmp_path, monkeypatch) -> None:
    # The positive control: a module with such an error is reported.
    (tmp_path / "bad.py").write_text("from rootless.errors import SpecError\nraise SpecError('no hint here')\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert [line.split(":", 1)[1] for line in constructions_without_a_hint()] == [
        "2: SpecError('no hint here')"]


def test_classes_without_a_default_hint_get_none() -> None:
    assert errors.SpecError("x").hint is None
    assert errors.ProtocolError("x").hint
