"""The widget's propagation: tracking every object through the stack with a progress bar and
Cancel, following it with the slider if asked, and embedding the slice shown ahead of a click.
A part of :class:`~napari_sam2._qt.widget.SAM2Widget`."""

from __future__ import annotations

import re
import time

import numpy as np

from .feedback import EXPECTED_ERRORS

SLOW_SLICE = 1.5  # seconds: above this, suggest a smaller input size
AHEAD = (1, -1)  # after the slice shown, these neighbours are embedded in the background
ESTIMATE_FROM = 2.0  # seconds: a run estimated to take longer says about how long


class PropagationMixin:
    def propagate(self, *_, obj_ids=None) -> None:
        """Track every object (or ``obj_ids``) through the stack, filling the Labels layer as
        slices arrive. Objects whose prompts did not change since their last propagation by
        the same direction and range are not run again (see ``engine/reruns.py``)."""
        if self.session is None:
            self.feedback.error("Press Start and click on an object first.")
            return
        if self.refuse_if_busy("propagating"):
            return
        start = None if self.first.value < 0 else int(self.first.value)
        stop = None if self.last.value < 0 else int(self.last.value)
        direction = self.direction.value
        try:
            lineage = self.lineage.propagate_options(direction)
        except EXPECTED_ERRORS as e:  # divisions backward, a bad finder setting
            self.feedback.error(e)
            return
        # A run that follows a lineage runs every object (the lineage is derived from all).
        following = bool(any(lineage.get(k) for k in ("divisions", "new_objects", "lineage_edits")))
        following = following or self.session.tracker._lineage is not None
        edits = tuple(lineage.get("lineage_edits") or ())  # a new correction: run again
        call = (direction, start, stop, lineage.get("divisions"), lineage.get("new_objects"), edits)
        session = self.session
        windowed = session.in_windows(**lineage)  # big slices: each object in its window
        with session.lock:
            every = list(session.obj_ids)
            chosen = every if obj_ids is None else [i for i in every if i in set(obj_ids)]
            if obj_ids is not None and not chosen:
                self.feedback.error(
                    f"Objects {sorted(obj_ids)} have no prompt to propagate from: click on them "
                    "first."
                )
                return
            todo = self.ledger.changed(session.tracker, call, chosen)
            if windowed and todo:  # in windows every object runs
                todo = every
        if every and not todo:
            a, b = self.ledger.span(chosen)
            which = "" if obj_ids is None else f" for objects {chosen}"
            self.feedback.done(
                f"Nothing changed{which} since the last propagation over slices {a}–{b}: "
                "nothing was run (add or change a prompt, or choose another range or direction)."
            )
            return
        run_ids = None if following or windowed or set(todo) == set(every) else todo
        try:
            passes = session.passes(direction, start, stop, run_ids, **lineage)
        except EXPECTED_ERRORS as e:  # no prompt yet, a range outside the stack
            self.feedback.error(_in_slices(e, direction))
            return
        yields = sum(abs(b - a) + 1 for a, b, _ in passes)
        covered = {f for a, b, _ in passes for f in range(min(a, b), max(a, b) + 1)}
        slices = len(covered)
        self._written = set()
        self._prompted_meanwhile = False
        self.ledger.started(todo)
        span = (min(covered), max(covered))
        run = (call, span, todo, yields, time.perf_counter(), run_ids, windowed)
        only = "" if run_ids is None else f" (objects {todo} only{self._unchanged(chosen, todo)})"
        if windowed and obj_ids is not None and set(chosen) != set(every):
            only = " (every object: in windows all objects are followed together)"
        how = _how(windowed, session.downscaled_because(**lineage))
        self.feedback.say(
            f"Propagating {direction} over {slices} slices{how}{only}"
            f"{self._estimate(yields, todo)}…"
        )
        self.propagation_worker = self.run(
            self.lineage.results,
            direction,
            start,
            stop,
            lineage,
            run_ids,
            yielded=self._show_frame,
            finished=lambda: self._propagation_done(yields, slices, run),
        )
        self.start_progress(yields, "propagating", cancel=self.propagation_worker.quit)

    @staticmethod
    def _unchanged(chosen, todo) -> str:
        same = [i for i in chosen if i not in todo]
        return f"; {same} did not change" if same else ""

    def _estimate(self, yields: int, objects) -> str:
        """About how long the run takes: from the seconds per slice and object of the last
        run, else from the seconds one slice took to embed (a lower bound)."""
        per = getattr(self, "_seconds_per_object_slice", None)
        if per is not None:
            seconds = per * yields * max(1, len(objects))
        elif getattr(self, "_embed_seconds", None) is not None:
            seconds = self._embed_seconds * yields
        else:
            return ""
        if seconds < ESTIMATE_FROM:
            return ""
        return f", about {_duration(seconds)}"

    @property
    def propagating(self) -> bool:
        worker = self.propagation_worker
        return worker is not None and worker in self.runner.workers

    def _show_frame(self, result) -> None:
        self.write_result(result, undoable=False)
        self.labels_layer.refresh()
        self._written.add(result.frame)
        self.lineage.on_frame(result)
        self.advance_progress(1)
        if self.follow.value:
            self.go_to_frame(result.frame)

    def _propagation_done(self, yields: int, slices: int, run=None) -> None:
        self._propagations += 1
        self.end_progress()
        if self.session is None:
            return  # the session ended meanwhile (the image was removed): that message stays
        self.lineage.on_done()
        self.refresh_objects()
        written = len(self._written)
        if run is not None and written >= slices and not self.feedback.error_shown:
            call, span, todo, _, began, *_ = run
            elapsed = time.perf_counter() - began
            self._seconds_per_object_slice = elapsed / max(1, yields * len(todo))
            with self.session.lock:
                self.ledger.finished(self.session.tracker, call, span, todo)
        # Prompts given while it ran: noted when they were given (their sync may finish after
        # the propagation does) or found waiting in the tracker.
        waiting = self._prompted_meanwhile
        windowed = run is not None and run[6]
        if run is None or run[5] is None:  # a run of chosen objects: the others' prompts wait
            waiting = waiting or self.session.prompts_waiting(windowed)
        note = " Prompts given while it ran are followed by the next Propagate." if waiting else ""
        if self.feedback.error_shown and written < slices:
            return  # the error says what happened
        if written < slices:
            self.feedback.done(
                f"Stopped after {written} of {slices} slices were written; Propagate continues "
                f"from there.{note}"
            )
        else:
            both = " (both directions)" if self.direction.value == "both" else ""
            where = ""
            if windowed:
                moves = sum(self.session.recentrings.values())
                where = f" in native-resolution windows ({moves} re-centring{'s' * (moves != 1)})"
            self.feedback.done(f"Propagated over {slices} slices{both}{where}.{note}", notify=True)

    def cancel(self, *_) -> None:
        """Stop the work in progress (a propagation after the slice being computed, segment
        everything after the batch of clicks being decoded); results so far are kept."""
        if self._cancel_action is not None:
            self._cancel_action()
            self.feedback.say("Cancelling…")

    def note_prompt_change(self, *_) -> None:
        """A click, box or brush stroke of the user's: remembered if a propagation runs, so
        that its end says the change is followed by the next one."""
        if self.propagating and not self.objects.writing:
            self._prompted_meanwhile = True

    # ------------------------------------------------------------------ long tasks
    @property
    def task(self) -> str | None:
        """The long task running (``"propagating"``, ``"segmenting everything"``), if any:
        one at a time, each with its progress bar and the Cancel button of its tab."""
        return self._task

    def refuse_if_busy(self, task: str) -> bool:
        """True (and says why, unless it is ``task`` itself clicked twice) while a long task
        runs."""
        if self._task is None:
            return False
        if self._task != task:
            self.feedback.error(
                f"Busy {self._task}: wait for it to finish, or press Cancel (H) first."
            )
        return True

    def start_progress(self, total: int, desc: str, cancel, tab: str = "Segment") -> bool:
        """Start a long task: the progress bar, what Cancel does meanwhile (the Cancel button of
        ``tab``, and H), the task buttons disabled. False if one is running already."""
        task = desc.removeprefix("SAM 2: ")
        if self.refuse_if_busy(task):
            return False
        self._task = task
        self.feedback.start_progress(total, desc)
        self._cancel_action = cancel
        for page, button in self.cancel_buttons.items():
            button.enabled = page == tab
        self._enable_task_buttons()
        return True

    def advance_progress(self, n: int) -> None:
        self.feedback.advance(n)

    def end_progress(self) -> None:
        self.feedback.end_progress()
        self._task = None
        self._cancel_action = None
        for button in self.cancel_buttons.values():
            button.enabled = False
        self._enable_task_buttons()

    def _enable_task_buttons(self) -> None:
        idle = self._task is None and self.session is not None
        self.propagate_button.enabled = idle and self.geometry.num_frames > 1
        self.objects.segment_all.enabled = idle

    def label_view(self):
        """SAM2 labels as (T, H, W) frames of the tracked axis."""
        return self.geometry.label_frames(self.labels_layer.data)

    def current_frame(self) -> int:
        """The tracked slice shown by the viewer."""
        if self.geometry.stack_axis is None:
            return 0
        position = self.image_layer.world_to_data(self.viewer.dims.point)
        frame = round(position[self.geometry.stack_axis])
        return int(np.clip(frame, 0, self.geometry.num_frames - 1))

    def go_to_frame(self, frame: int) -> None:
        if self.geometry is None or self.geometry.stack_axis is None:
            return
        coords = list(self.geometry.index(frame)) + [0, 0]
        world = self.image_layer.data_to_world(coords)
        axis = self.viewer.dims.ndim - self.image_layer.ndim + self.geometry.stack_axis
        self.viewer.dims.set_point(axis, world[self.geometry.stack_axis])

    def _on_slider(self, *_) -> None:
        """Embed the slice now shown, in the background, so the first click on it is fast;
        then (*embed the neighbouring slices ahead*) the slices next to it, outside the
        session's lock, so that the next slice is ready before the user moves there. Moving
        again cancels what the previous move had left to do."""
        if self.session is None or self.geometry.stack_axis is None:
            return
        self._ahead_token += 1  # the previous move's embeddings are no longer wanted
        if self.runner.workers - self._ahead_workers:  # a task, a click: as before, not now
            return
        frame, token, session = self.current_frame(), self._ahead_token, self.session
        n = self.geometry.num_frames
        ahead = [frame + d for d in AHEAD if 0 <= frame + d < n] if self.ahead.value else []
        started = time.perf_counter()

        def wanted() -> bool:
            return self._ahead_token == token

        def embed():
            session.embed(frame, wanted)
            yield None  # the slice shown is ready
            for f in ahead:
                if not wanted():
                    return
                session.embed_ahead(f, wanted)
                yield f

        def shown(f) -> None:
            if f is None:
                self._speed_hint(time.perf_counter() - started)

        worker = self.run(embed, quiet=True, yielded=shown)
        self._ahead_workers.add(worker)
        worker.finished.connect(lambda: self._ahead_workers.discard(worker))

    def _speed_hint(self, seconds: float) -> None:
        """After the first slice embedded on a CPU: how long a slice takes, and a faster size."""
        if self._speed_checked or self.session is None:
            return
        self._speed_checked = True
        self._embed_seconds = seconds  # the time estimate of a first propagation
        model = self.session.tracker.model
        size = model.config.image_size
        if model.device.type != "cpu" or seconds < SLOW_SLICE or size <= 256:
            return
        smaller = size // 2
        self.feedback.say(
            f"A slice takes {seconds:.1f} s to embed at input size {size} on this CPU; "
            f"{smaller} would take about {seconds / 4:.1f} s (less accurate): choose it under "
            "'input size' and press Start."
        )


def _how(windowed: bool, downscaled: str | None) -> str:
    """Where a propagation on big slices runs, for the status line."""
    if windowed:
        return " in native-resolution windows (each object in a window around it)"
    if downscaled is not None:
        return f" on downscaled slices ({downscaled})"
    return ""


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def _in_slices(error: BaseException, direction: str) -> str | BaseException:
    """The tracker's refusal of a range, in the widget's words (slices) and with the fix."""
    text = str(error)
    numbers = re.findall(r"\d+", text)
    if len(numbers) != 2 or not ("cannot go from frame" in text or "is after stop" in text):
        return error
    first, last = numbers
    fix = {
        "forward": "choose 'backward' or 'both' as the direction, or a 'to slice' after it "
        "(-1: to the last slice)",
        "backward": "choose 'forward' or 'both' as the direction, or a 'to slice' before it "
        "(-1: to slice 0)",
    }.get(direction, "choose a 'from slice' before the 'to slice' (-1: the whole stack)")
    what = f"{direction.capitalize()} propagation cannot go from slice {first} to slice {last}"
    return f"{what}: {fix}."
