"""The engine must run where Qt is absent: import it with every Qt binding blocked."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"PySide6", "PyQt5", "PyQt6", "qasync", "shiboken6"}:
            raise ImportError("Qt is blocked in this test: " + name)
sys.meta_path.insert(0, Block())
import pkgutil, paradiff_gui.engine as engine
for m in pkgutil.walk_packages(engine.__path__, "paradiff_gui.engine."):
    __import__(m.name)
import paradiff_gui.cli
print("ok", len(sys.modules))
"""


def test_engine_and_cli_import_without_qt():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
