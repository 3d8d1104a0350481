"""Keyboard shortcuts of the widget, bound on the viewer while a widget is open.

Keys napari itself uses (1–7, P, S, Z, E, F, L, M, R, T, V, X, B, A, C, O, Y, brackets, arrows,
Space, Escape, Enter, Delete) are left alone; Ctrl+Z and Ctrl+Shift+Z are the widget's undo
and redo (on *SAM2 labels* too, in place of napari's pixel-only undo).
"""

from __future__ import annotations

SHORTCUTS: dict[str, tuple[str, str]] = {
    # key: (widget method, what it does)
    "N": ("next_object", "new object"),
    "G": ("propagate", "propagate"),
    "H": ("cancel", "cancel (halt) the propagation or segment everything"),
    "U": ("undo_last_click", "undo the last click"),
    "Control-Z": ("undo_step", "undo (clicks, boxes, painting, deletions, propagations)"),
    "Control-Shift-Z": ("redo_step", "redo"),
    "I": ("toggle_negative", "invert: negative clicks on/off"),
    ".": ("select_next_object", "next object"),
    ",": ("select_previous_object", "previous object"),
}


# A shortcut does what its button does, only when the button is enabled (G on a single image,
# or during segment everything, does nothing but say so).
BUTTONS = {
    "next_object": "new_object",
    "propagate": "propagate_button",
    "undo_last_click": "undo",
}


def key_of(method: str) -> str:
    return next(key for key, (name, _) in SHORTCUTS.items() if name == method)


def bind(viewer, widget) -> list[str]:
    """Bind every shortcut on ``viewer`` to ``widget``; returns the keys bound."""
    bound = []
    for key, (method, _) in SHORTCUTS.items():
        action = getattr(widget, method)
        button = getattr(widget, BUTTONS[method]) if method in BUTTONS else None

        def handler(viewer, action=action, button=button, key=key):
            if button is not None and not button.enabled:
                widget.feedback.say(f"{key} ('{button.text}') is not available now.")
                return
            action()

        viewer.bind_key(key, handler, overwrite=True)
        bound.append(key)
    return bound


def unbind(viewer, keys) -> None:
    for key in keys:
        try:
            viewer.bind_key(key, None)
        except (KeyError, ValueError):
            pass


def tooltip(text: str, method: str) -> str:
    """``text`` with its shortcut, for a tooltip."""
    return f"{text} (shortcut: {key_of(method)})"
