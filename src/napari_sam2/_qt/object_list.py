"""The object list: every object's id, colour, name and how many slices it is prompted and
labelled on; select one or several (Ctrl/Shift-click), hide, rename, delete, merge, give a new
id, propagate only those selected, and jump to an object's prompted slices."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

COLUMNS = ("id", "name", "prompted", "labelled")


@dataclass
class ObjectInfo:
    """What the list shows of one object."""

    obj_id: int
    name: str = ""
    prompted: list[int] = field(default_factory=list)  # slices with a prompt
    labelled: int = 0  # slices where it has labels
    visible: bool = True
    lineage: str = ""  # parent and daughters (lineage_tab.lineage_note), after the slices


class ObjectList(QWidget):
    """A table of objects. ``on_select(id)``, ``on_delete(ids)``, ``on_goto(slice)``,
    ``on_rename(id, name)``, ``on_merge(ids)`` (the first keeps its id), ``on_relabel(id,
    new_id)`` and ``on_propagate(ids)`` are the widget's; hiding is done here, on the Labels
    layer's colours."""

    def __init__(
        self,
        on_select: Callable[[int], None],
        on_delete: Callable[[list[int]], None],
        on_goto: Callable[[int], None],
        on_rename: Callable[[int, str], None],
        on_merge: Callable[[list[int]], None] | None = None,
        on_relabel: Callable[[int, int], None] | None = None,
        on_propagate: Callable[[list[int]], None] | None = None,
    ) -> None:
        super().__init__()
        self.on_select, self.on_delete = on_select, on_delete
        self.on_goto, self.on_rename = on_goto, on_rename
        self.on_merge, self.on_relabel, self.on_propagate = on_merge, on_relabel, on_propagate
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(["id", "name", "prompted on", "slices"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMaximumHeight(180)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.table.setToolTip(
            "Click a row to work on that object; double-click to go to its next prompted "
            "slice; untick to hide its labels; edit the name to rename it; Ctrl/Shift-click to "
            "select several (merge, delete, propagate them)"
        )
        self.goto_button = QPushButton("Go to its prompted slice")
        self.delete_button = QPushButton("Delete selected")
        self.merge_button = QPushButton("Merge selected")
        self.merge_button.setToolTip(
            "The other selected objects become the first one selected: their labels, clicks "
            "and prompted slices"
        )
        self.propagate_button = QPushButton("Propagate selected")
        self.propagate_button.setToolTip("Propagate only the selected objects (the others stay)")
        self.new_id = QSpinBox()
        self.new_id.setRange(1, 2**31 - 1)
        self.new_id.setPrefix("new id ")
        self.relabel_button = QPushButton("Change id")
        self.relabel_button.setToolTip("Give the selected object the new id (an unused one)")
        buttons = QHBoxLayout()
        buttons.addWidget(self.goto_button)
        buttons.addWidget(self.delete_button)
        edits = QHBoxLayout()
        edits.addWidget(self.merge_button)
        edits.addWidget(self.propagate_button)
        relabel = QHBoxLayout()
        relabel.addWidget(self.new_id)
        relabel.addWidget(self.relabel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        layout.addLayout(edits)
        layout.addLayout(relabel)
        self.infos: dict[int, ObjectInfo] = {}
        self._filling = False
        self._layer = None
        self._goto_index: dict[int, int] = {}
        self.table.itemSelectionChanged.connect(self._selected)
        self.table.itemChanged.connect(self._edited)
        self.table.cellDoubleClicked.connect(lambda row, _: self.goto(self._id_of(row)))
        self.goto_button.clicked.connect(lambda: self.goto(self.selected()))
        self.delete_button.clicked.connect(self._delete)
        self.merge_button.clicked.connect(lambda: self._with_selected(self.on_merge, 2))
        self.propagate_button.clicked.connect(lambda: self._with_selected(self.on_propagate, 1))
        self.relabel_button.clicked.connect(self._relabel)

    # ------------------------------------------------------------------ content
    def show_objects(self, infos: list[ObjectInfo], labels_layer=None) -> None:
        """Show ``infos`` (keeping names and visibility of objects already listed)."""
        self._layer = labels_layer
        for info in infos:
            old = self.infos.get(info.obj_id)
            if old is not None:
                info.name = info.name or old.name
                info.visible = old.visible
        self.infos = {info.obj_id: info for info in infos}
        selected = self.selected()
        self._filling = True
        try:
            self.table.setRowCount(len(infos))
            for row, info in enumerate(infos):
                self._fill(row, info)
            if selected in self.infos:
                self.table.selectRow(list(self.infos).index(selected))
        finally:
            self._filling = False
        self._apply_visibility()

    def _fill(self, row: int, info: ObjectInfo) -> None:
        ident = QTableWidgetItem(str(info.obj_id))
        ident.setFlags(
            Qt.ItemFlag.ItemIsSelectable
            | Qt.ItemFlag.ItemIsEnabled
            | Qt.ItemFlag.ItemIsUserCheckable
        )
        ident.setCheckState(Qt.CheckState.Checked if info.visible else Qt.CheckState.Unchecked)
        color = self._color(info.obj_id)
        if color is not None:
            ident.setBackground(color)
        name = QTableWidgetItem(info.name or f"object {info.obj_id}")
        prompted = QTableWidgetItem(_slices(info.prompted) + info.lineage)
        labelled = QTableWidgetItem(str(info.labelled))
        for item in (prompted, labelled):
            item.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled)
        for column, item in enumerate((ident, name, prompted, labelled)):
            self.table.setItem(row, column, item)

    def _color(self, obj_id: int) -> QColor | None:
        if self._layer is None:
            return None
        rgba = self._layer.colormap.map(obj_id)
        r, g, b, _ = (int(255 * float(v)) for v in rgba)
        return QColor(r, g, b)

    # ------------------------------------------------------------------ actions
    def selected(self) -> int | None:
        """The object selected first (the current one), if any."""
        ids = self.selected_ids()
        return ids[0] if ids else None

    def selected_ids(self) -> list[int]:
        """The selected objects, the current one first, then in list order."""
        rows = sorted(r.row() for r in self.table.selectionModel().selectedRows())
        ids = [self._id_of(r) for r in rows]
        current = self.table.currentRow()
        if 0 <= current < self.table.rowCount() and current in rows:
            first = self._id_of(current)
            ids = [first] + [i for i in ids if i != first]
        return ids

    def select(self, obj_id: int) -> None:
        if obj_id in self.infos and obj_id not in self.selected_ids():
            self.table.selectRow(list(self.infos).index(obj_id))

    def select_many(self, obj_ids) -> None:
        """Select these objects (the first becomes the current one)."""
        model = self.table.selectionModel()
        self.table.clearSelection()
        flags = model.SelectionFlag.Select | model.SelectionFlag.Rows
        order = list(self.infos)
        for obj_id in reversed(list(obj_ids)):
            if obj_id in self.infos:
                index = self.table.model().index(order.index(obj_id), 0)
                model.select(index, flags)
                model.setCurrentIndex(index, model.SelectionFlag.NoUpdate)

    def goto(self, obj_id: int | None) -> None:
        """The object's next prompted slice (cycling through them on repeated calls)."""
        info = self.infos.get(obj_id) if obj_id is not None else None
        if info is None or not info.prompted:
            return
        i = self._goto_index.get(obj_id, -1) + 1
        self._goto_index[obj_id] = i % len(info.prompted)
        self.on_goto(info.prompted[self._goto_index[obj_id]])

    def set_visible(self, obj_id: int, visible: bool) -> None:
        if obj_id in self.infos:
            self.infos[obj_id].visible = visible
            row = list(self.infos).index(obj_id)
            state = Qt.CheckState.Checked if visible else Qt.CheckState.Unchecked
            self.table.item(row, 0).setCheckState(state)
            self._apply_visibility()

    def _id_of(self, row: int) -> int:
        return int(self.table.item(row, 0).text())

    def _selected(self) -> None:
        obj_id = self.selected()
        if obj_id is not None and not self._filling:
            self.on_select(obj_id)

    def _edited(self, item: QTableWidgetItem) -> None:
        if self._filling:
            return
        obj_id = self._id_of(item.row())
        info = self.infos[obj_id]
        if item.column() == 0:
            info.visible = item.checkState() == Qt.CheckState.Checked
            self._apply_visibility()
        elif item.column() == 1:
            info.name = item.text().strip()
            self.on_rename(obj_id, info.name)

    def _delete(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.on_delete(ids)

    def _with_selected(self, action, at_least: int) -> None:
        ids = self.selected_ids()
        if action is not None and (len(ids) >= at_least or at_least == 2):
            action(ids)

    def _relabel(self) -> None:
        obj_id = self.selected()
        if obj_id is not None and self.on_relabel is not None:
            self.on_relabel(obj_id, int(self.new_id.value()))

    def _apply_visibility(self) -> None:
        """Hidden objects are drawn transparent (their labels stay in the layer)."""
        layer = self._layer
        if layer is None:
            return
        hidden = [i for i, info in self.infos.items() if not info.visible]
        if not hidden and not isinstance(layer.colormap, DirectLabelColormap):
            return
        if not hidden:
            layer.colormap = self._cyclic
            return
        if not isinstance(layer.colormap, DirectLabelColormap):
            self._cyclic = layer.colormap
        colors = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
        for i in self.infos:
            colors[i] = (0, 0, 0, 0) if i in hidden else tuple(self._cyclic.map(i))
        layer.colormap = DirectLabelColormap(color_dict=colors)


def _slices(frames: list[int]) -> str:
    if not frames:
        return "—"
    shown = ", ".join(map(str, frames[:6]))
    return shown + (f" … ({len(frames)})" if len(frames) > 6 else "")
