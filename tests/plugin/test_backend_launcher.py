"""Starting the backend: a clear message and diagnostics when it cannot start."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.qgis


def test_python_without_backend_gives_clear_message_and_diagnostics(qgis_app: object, tmp_path) -> None:
    from changeclip_qgis.core import diagnostics
    from changeclip_qgis.core.backend_launcher import BackendLauncher, clean_env, serve_command
    from changeclip_qgis.core.errors import BackendUnavailable
    from changeclip_qgis.core.settings import BackendConfig

    launcher = BackendLauncher()
    config = BackendConfig(python="/usr/bin/python3", url="", token_file="", weights_dir=str(tmp_path),
                           start_timeout_s=60)
    with pytest.raises(BackendUnavailable, match="does not have the changeclip backend installed") as info:
        launcher.ensure(config)
    assert "No module named changeclip" in info.value.stderr_tail
    assert launcher.current() is None
    report = diagnostics.collect(launcher, config)
    for needle in ("## Versions", "QGIS", "/usr/bin/python3", "No module named changeclip", "## GPU",
                   "serve --host 127.0.0.1 --port 0"):
        assert needle in report
    assert serve_command("py")[:4] == ["py", "-m", "changeclip", "serve"]
    env = clean_env({"PYTHONPATH": "/x", "GDAL_DATA": "/y", "PROJ_LIB": "/z", "HOME": "/h", "QGIS_PREFIX_PATH": "/q"})
    assert env["HOME"] == "/h" and not {"PYTHONPATH", "GDAL_DATA", "PROJ_LIB", "QGIS_PREFIX_PATH"} & set(env)


def test_unreachable_url(qgis_app: object) -> None:
    from changeclip_qgis.core.backend_launcher import BackendLauncher
    from changeclip_qgis.core.errors import BackendUnavailable
    from changeclip_qgis.core.settings import BackendConfig

    config = BackendConfig(python="", url="http://127.0.0.1:9", token_file="", weights_dir="")
    with pytest.raises(BackendUnavailable, match="no backend answers at http://127.0.0.1:9"):
        BackendLauncher().ensure(config)
