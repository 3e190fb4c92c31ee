"""The plugin runs in QGIS's own Python: importing any of its modules pulls in no backend stack."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

GUARD = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    sys.path.insert(0, "/usr/share/qgis/python/plugins")
    sys.path.insert(0, sys.argv[1])
    from qgis.core import QgsApplication
    app = QgsApplication([], True)
    app.initQgis()
    import changeclip_qgis
    names = ["changeclip_qgis"] + [m.name for m in pkgutil.walk_packages(changeclip_qgis.__path__, "changeclip_qgis.")]
    errors = {}
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # report every failing module, not only the first
            errors[name] = repr(exc)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                   ("torch", "torchvision", "open_clip", "timm", "changeclip", "safetensors", "fastapi",
                    "uvicorn", "pydantic", "scipy"))
    print("GUARD " + json.dumps({"modules": names, "errors": errors, "heavy": heavy}))
    """
)


@pytest.mark.qgis
def test_every_plugin_module_imports_without_backend_stack(repo_root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(QT_QPA_PLATFORM="offscreen", PATH="/usr/bin:/bin")
    proc = subprocess.run(["/usr/bin/python3", "-c", GUARD, str(repo_root)], capture_output=True, text=True,
                          timeout=300, env=env, cwd="/")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("GUARD ")]
    assert lines, f"guard script failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(lines[-1][len("GUARD "):])
    assert len(report["modules"]) > 5, report["modules"]
    assert report["errors"] == {}, report["errors"]
    assert report["heavy"] == [], f"plugin imports pulled in backend modules: {report['heavy']}"
