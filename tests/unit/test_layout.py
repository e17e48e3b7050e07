"""The service package stands alone: the dev tools are another distribution.

``dispatcher/`` never imports ``dispatcher_dev`` (the embedded servers, fake Pushy, fleet
simulator), except `dispatcher dev`, lazily, which says how to install them when absent.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import dispatcher
from dispatcher import cli

PACKAGE = Path(dispatcher.__file__).resolve().parent
DEV_MODULES = ("devstack", "fakepushy", "simulator", "dev")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at top level) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
    return found


def test_the_service_package_carries_no_dev_tools() -> None:
    for name in DEV_MODULES:
        assert not (PACKAGE / f"{name}.py").exists(), f"dispatcher/{name}.py is a dev tool"
    for path in PACKAGE.rglob("*.py"):
        for module, top_level in _imports(path):
            if module.startswith("dispatcher_dev"):
                assert path.name == "cli.py", f"{path} imports {module}"
                assert not top_level, "cli imports the dev tools only inside `dispatcher dev`"


def test_dispatcher_dev_without_the_dev_tools_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "dispatcher_dev.dev", None)  # import fails
    with pytest.raises(SystemExit) as exited:
        cli.main(["dev"])
    assert exited.value.code == 2
    assert "devstack extra" in capsys.readouterr().err
