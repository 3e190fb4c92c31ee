"""A small live chart of a training run, drawn with QPainter (no browser, no plotting library).

Training loss (left axis, from the job's ``step`` events) and the validation F1 and IoU of the
change class (right axis, 0-100 %, from its ``val`` events) against iteration.
"""

from __future__ import annotations

from typing import Any

from qgis.PyQt.QtCore import QPointF, QRectF, QSize, Qt
from qgis.PyQt.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qgis.PyQt.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor(31, 119, 180)
F1_COLOR = QColor(214, 39, 40)
IOU_COLOR = QColor(44, 160, 44)


class TrainingChart(QWidget):
    """Loss and validation F1/IoU against iteration; feed it with :meth:`add_event`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loss: list[tuple[int, float]] = []
        self.f1: list[tuple[int, float]] = []
        self.iou: list[tuple[int, float]] = []
        self.iterations = 0
        self.setMinimumHeight(160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def sizeHint(self) -> QSize:  # noqa: D102, N802
        return QSize(320, 200)

    def clear(self) -> None:
        """Forget every point."""
        self.loss.clear()
        self.f1.clear()
        self.iou.clear()
        self.iterations = 0
        self.update()

    def add_event(self, event: dict[str, Any]) -> None:
        """Take one training event (``start``, ``step``, ``val``; others are ignored)."""
        kind = event.get("event")
        iteration = event.get("iteration")
        if isinstance(event.get("iters"), int):
            self.iterations = max(self.iterations, int(event["iters"]))
        if not isinstance(iteration, int):
            return
        if kind == "start" and iteration == 0:
            self.clear()
            self.iterations = int(event.get("iters") or 0)
        elif kind == "step" and isinstance(event.get("loss"), (int, float)):
            self.loss.append((iteration, float(event["loss"])))
        elif kind == "val":
            for key, series in (("f1", self.f1), ("iou", self.iou)):
                value = event.get(key)
                if isinstance(value, (int, float)):
                    series.append((iteration, float(value)))
        else:
            return
        self.update()

    # -- drawing ---------------------------------------------------------------------

    def paintEvent(self, _event: Any) -> None:  # noqa: N802, D102
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), self.palette().base())
        font = QFont(painter.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        metrics = painter.fontMetrics()
        left, right, top, bottom = metrics.horizontalAdvance("0.000") + 8, metrics.horizontalAdvance("100%") + 8, \
            metrics.height() + 6, metrics.height() + 6
        plot = QRectF(left, top, max(10.0, self.width() - left - right), max(10.0, self.height() - top - bottom))
        text = self.palette().text().color()
        painter.setPen(QPen(QColor(text.red(), text.green(), text.blue(), 90), 1))
        painter.drawRect(plot)
        last = max([self.iterations] + [i for i, _ in self.loss + self.f1 + self.iou] + [1])
        max_loss = max([v for _, v in self.loss] + [1e-6])

        def x_of(iteration: float) -> float:
            return plot.left() + plot.width() * iteration / last

        def y_of(value: float, top_value: float) -> float:
            return plot.bottom() - plot.height() * max(0.0, min(1.0, value / top_value))

        for series, color, scale in ((self.loss, LOSS_COLOR, max_loss), (self.f1, F1_COLOR, 1.0),
                                     (self.iou, IOU_COLOR, 1.0)):
            if not series:
                continue
            painter.setPen(QPen(color, 1.6))
            path = QPainterPath(QPointF(x_of(series[0][0]), y_of(series[0][1], scale)))
            for iteration, value in series[1:]:
                path.lineTo(QPointF(x_of(iteration), y_of(value, scale)))
            painter.drawPath(path)
            if series is not self.loss:
                for iteration, value in series:
                    painter.drawEllipse(QPointF(x_of(iteration), y_of(value, scale)), 2.5, 2.5)
        painter.setPen(QPen(text, 1))
        painter.drawText(QRectF(0, plot.top() - 2, left - 4, metrics.height()),
                         Qt.AlignmentFlag.AlignRight, f"{max_loss:.3g}")
        painter.drawText(QRectF(0, plot.bottom() - metrics.height(), left - 4, metrics.height()),
                         Qt.AlignmentFlag.AlignRight, "0")
        painter.drawText(QRectF(plot.right() + 4, plot.top() - 2, right, metrics.height()),
                         Qt.AlignmentFlag.AlignLeft, "100%")
        painter.drawText(QRectF(plot.right() + 4, plot.bottom() - metrics.height(), right, metrics.height()),
                         Qt.AlignmentFlag.AlignLeft, "0%")
        painter.drawText(QRectF(plot.left(), plot.bottom() + 2, plot.width(), metrics.height()),
                         Qt.AlignmentFlag.AlignRight, f"iteration {last}")
        x = plot.left()
        for label, color in (("loss", LOSS_COLOR), ("val F1", F1_COLOR), ("val IoU", IOU_COLOR)):
            painter.setPen(QPen(color, 2))
            painter.drawLine(QPointF(x, top / 2), QPointF(x + 14, top / 2))
            painter.setPen(QPen(text, 1))
            painter.drawText(QPointF(x + 18, top / 2 + metrics.ascent() / 2 - 1), label)
            x += 18 + metrics.horizontalAdvance(label) + 12
        if not (self.loss or self.f1):
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "the loss and validation F1/IoU appear here")
        painter.end()
