"""A dialog that shows the diagnostics report and copies it to the clipboard."""

from __future__ import annotations

from qgis.core import QgsApplication, QgsTask
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase, QGuiApplication
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout

from ..core import diagnostics


class _CollectTask(QgsTask):
    reportReady = pyqtSignal(str)

    def __init__(self) -> None:
        super().__init__("ChangeCLIP: collecting diagnostics", QgsTask.Flag.CanCancel)
        self.report = ""

    def run(self) -> bool:
        try:
            self.report = diagnostics.collect()
        except Exception as exc:  # noqa: BLE001 - still show something
            self.report = f"collecting diagnostics failed: {exc!r}"
        return True

    def finished(self, result: bool) -> None:
        self.reportReady.emit(self.report)


class DiagnosticsDialog(QDialog):
    """Shows the report (collected in the background) with a "Copy to clipboard" button."""

    def __init__(self, parent=None) -> None:  # noqa: ANN001
        super().__init__(parent)
        self.setWindowTitle("ChangeCLIP diagnostics")
        self.resize(760, 560)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Paste this report into a bug report (it contains no token)."))
        self.text = QPlainTextEdit(self)
        self.text.setReadOnly(True)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.text.setPlainText("Collecting…")
        layout.addWidget(self.text)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        self.copy_button = QPushButton("Copy to clipboard", self)
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self.copy)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.task = _CollectTask()
        self.task.reportReady.connect(self.text.setPlainText)
        QgsApplication.taskManager().addTask(self.task)

    def copy(self) -> None:
        """Put the report on the clipboard."""
        QGuiApplication.clipboard().setText(self.text.toPlainText())
