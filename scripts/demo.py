"""``make demo``: the main job, end to end, exactly as a user's qgis_process run does it.

1. Stage the real plugin (scripts/package.py) into build/demo/plugins and enable it in a
   throw-away QGIS profile (nothing touches ~/.local/share/QGIS).
2. Run ``qgis_process run changeclip:detectchanges`` on the sample NAIP 2015/2020 pair in
   resources/sample/ (the 2020 grid is shifted by 1 m, so alignment is exercised). The
   plugin starts the backend (``changeclip serve`` from .venv), which aligns, tiles,
   detects with the unsupervised IR-MAD engine (no weights needed, fully offline) and
   writes styled-ready outputs.
3. Print where the outputs are and the run's summary.json.

Set ``CHANGECLIP_DEMO_ENGINE=changeclip`` and ``CHANGECLIP_DEMO_WEIGHTS=/path/weights`` to
run the ChangeCLIP network instead (weights are not shipped; see README).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import package  # noqa: E402


def qgis_process_binary() -> str:
    """``qgis_process.bin`` where Debian ships it (its wrapper script is broken on 3.22)."""
    for candidate in ("/usr/bin/qgis_process.bin", shutil.which("qgis_process") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("qgis_process not found: install the Debian package 'qgis' (make setup does)")


def main() -> int:
    """Run the demo; return the process exit code."""
    work = ROOT / "build" / "demo"
    plugins = work / "plugins"
    profile = work / "profile"
    out = ROOT / "out" / "demo"
    for path in (plugins, profile):
        shutil.rmtree(path, ignore_errors=True)
    package.stage(plugins)
    ini = profile / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text("[PythonPlugins]\nchangeclip_qgis=true\n", encoding="utf-8")
    out.mkdir(parents=True, exist_ok=True)

    engine = os.environ.get("CHANGECLIP_DEMO_ENGINE", "irmad")
    env = dict(os.environ)
    env.update({
        "QT_QPA_PLATFORM": "offscreen",
        "QGIS_PLUGINPATH": str(plugins),
        "QGIS_CUSTOM_CONFIG_PATH": str(profile),
        "CHANGECLIP_BACKEND_PYTHON": str(ROOT / ".venv" / "bin" / "python"),
    })
    outputs = {
        "CHANGE_MASK": out / "change_mask.tif",
        "CHANGE_PROBABILITY": out / "change_probability.tif",
        "CHANGE_POLYGONS": out / "change_polygons.gpkg",
        "SUMMARY": out / "summary.json",
    }
    for path in outputs.values():
        path.unlink(missing_ok=True)
    args = [
        qgis_process_binary(), "--json", "run", "changeclip:detectchanges", "--",
        f"BEFORE={ROOT / 'resources/sample/naip_2015.tif'}",
        f"AFTER={ROOT / 'resources/sample/naip_2020.tif'}",
        f"ENGINE={engine}",
        "MIN_AREA=100",
        *(f"{key}={path}" for key, path in outputs.items()),
    ]
    if engine == "changeclip":
        weights = os.environ.get("CHANGECLIP_DEMO_WEIGHTS")
        if not weights:
            raise SystemExit("CHANGECLIP_DEMO_ENGINE=changeclip needs CHANGECLIP_DEMO_WEIGHTS=/path/to/weights")
        args += [f"WEIGHTS={weights}", "PROMPT_MODE=none"]
    print("running:", " ".join(args), flush=True)
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)  # noqa: S603
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        print(f"demo FAILED: qgis_process exited with {proc.returncode}", file=sys.stderr)
        return proc.returncode or 1
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    res = result.get("results", {})
    print(f"\nChangeCLIP demo finished (engine: {engine})")
    for key in outputs:
        print(f"  {key:<19} {res.get(key)}")
    print(f"  CHANGED_AREA_M2     {res.get('CHANGED_AREA_M2')}")
    print(f"  CHANGED_FRACTION    {res.get('CHANGED_FRACTION')}")
    print("\nOpen them in QGIS: each comes with a same-named .qml style beside it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
