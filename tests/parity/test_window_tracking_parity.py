"""Tracking in windows follows an object as Meta's SAM2VideoPredictor (sam2==1.1.0) does on the
cropped movie, while the window does not move.

Frames of 600 x 520 pixels (more than twice the 256-pixel input on a side) hold moving blobs;
the tracker follows each object in a 256-pixel window of native resolution. The official
predictor reads the window's crops as JPEG files; our full frames carry exactly the decoded
crops inside the window, so both sides see the same pixels there. ``margin=0`` keeps windows
where the prompts put them (random weights give masks that fill their window, which would
re-centre it; re-centring has its own tests in tests/engine/test_window_tracking.py).
Logits are compared inside the window on every yielded frame; outside it ours are -1024.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from official import build_official
from PIL import Image

from napari_sam2.engine.window_frames import WindowPlacer
from napari_sam2.engine.window_tracking import WindowTracker
from napari_sam2.model import CONFIGS, SAM2Model

TOL = 1e-3  # as tests/parity/test_video_tracker_parity.py
NAME = "sam2.1_hiera_tiny"
IMAGE_SIZE = 256
T, H, W = 8, 600, 520


def blobs(t: int) -> np.ndarray:
    rng = np.random.default_rng(t)
    rr, cc = np.mgrid[:H, :W]
    img = rng.integers(0, 60, (H, W, 3)).astype(np.uint8)
    img[(rr - 300 - 2 * t) ** 2 + (cc - 130 - 3 * t) ** 2 < 16**2] += 150  # object 1
    img[(rr - 330) ** 2 + (cc - 175 + t) ** 2 < 11**2] += 100  # object 2, same window
    img[(rr - 90 + t) ** 2 + (cc - 420) ** 2 < 14**2] += 120  # object 3, another window
    return img


BIG, BIG_T = 2048, 4  # the 2048² movie


def big_blob(t: int) -> np.ndarray:
    """A 2048² frame of noise with one nucleus-sized blob drifting near (1500, 610)."""
    rng = np.random.default_rng(100 + t)
    img = rng.integers(0, 60, (BIG, BIG, 3)).astype(np.uint8)
    rr, cc = np.ogrid[:BIG, :BIG]
    img[(rr - 1500 - 3 * t) ** 2 + (cc - 610 + 2 * t) ** 2 < 12**2] += 150
    return img


@pytest.fixture(scope="module")
def model_pair():
    official = build_official(
        NAME,
        seed=0,
        video=True,
        overrides=[
            "++model.add_all_frames_to_correct_as_cond=true",
            f"++model.image_size={IMAGE_SIZE}",
        ],
    )
    with torch.no_grad():  # as the video parity test: most compared masks are real
        official.sam_mask_decoder.pred_obj_score_head.layers[2].bias += 1.0
    ours = SAM2Model(CONFIGS[NAME].with_image_size(IMAGE_SIZE))
    ours.load_state_dict(official.state_dict(), strict=True)
    return official, ours.eval()


def movie_for(windows, folder, frames=None):
    """Full frames (default: the blobs movie) whose pixels inside each window are the decoded
    JPEG crops that the official predictor reads (one folder per window)."""
    frames = np.stack([blobs(t) for t in range(T)]) if frames is None else frames
    folders = {}
    for k, (r0, c0, r1, c1) in enumerate(windows):
        sub = folder / f"window{k}"
        sub.mkdir()
        for t in range(len(frames)):
            path = sub / f"{t:05d}.jpg"
            Image.fromarray(frames[t, r0:r1, c0:c1]).save(path, quality=95)
            frames[t, r0:r1, c0:c1] = np.array(Image.open(path).convert("RGB"))
        folders[(r0, c0, r1, c1)] = str(sub)
    return frames, folders


def place(rows, cols, shape=(H, W)):
    return WindowPlacer(shape, IMAGE_SIZE, 0).window_for(rows, cols)


def shifted_xy(points, window):
    return (np.asarray(points, np.float32) - window[:2])[:, ::-1].copy()


class Check:
    def __init__(self):
        self.worst, self.frames, self.present = 0.0, 0, 0

    def __call__(self, theirs, ours, obj_ids, window):
        frame, ids, logits = theirs
        assert frame == ours.frame and list(ids) == list(obj_ids)
        rows = [ours.obj_ids.index(i) for i in obj_ids]
        assert all(ours.windows[i] == window for i in rows)
        r0, c0, r1, c1 = window
        full = ours.logits[rows]
        inside = full[:, r0:r1, c0:c1]
        expected = logits[:, 0].numpy()
        diff = float(np.abs(expected - inside).max())
        assert diff <= TOL, f"frame {frame}: max |Δlogit| {diff}"
        outside = full.copy()
        outside[:, r0:r1, c0:c1] = -1024.0
        assert (outside == -1024.0).all()
        self.worst = max(self.worst, diff)
        self.frames += 1
        self.present += int(((expected > 0).sum(axis=(1, 2)) > 0).sum())


def test_two_objects_in_one_window_and_one_in_another_match_official_on_the_crops(
    model_pair, tmp_path
):
    official, model = model_pair
    click1, box2, click3 = [(300, 130)], (318, 163, 342, 187), [(90, 420)]
    shared = place([300], [130])
    assert place([318, 342], [163, 187]) == shared  # objects 1 and 2: one window
    other = place([90], [420])
    assert other != shared
    frames, folders = movie_for([shared, other], tmp_path)
    tracker = WindowTracker(model, frames, margin=0, object_batch=16)
    check = Check()
    with torch.inference_mode():
        s1 = official.init_state(folders[shared])
        s3 = official.init_state(folders[other])
        theirs = official.add_new_points_or_box(
            s1, 0, 1, points=shifted_xy(click1, shared), labels=np.array([1], np.int32)
        )
        check(theirs, tracker.add_prompt(0, 1, points=click1, labels=[1]), [1], shared)
        r0, c0 = shared[:2]
        b = np.array([box2[1] - c0, box2[0] - r0, box2[3] - c0, box2[2] - r0], np.float32)
        theirs = official.add_new_points_or_box(s1, 0, 2, box=b)
        check(theirs, tracker.add_prompt(0, 2, box=box2), [1, 2], shared)
        theirs = official.add_new_points_or_box(
            s3, 0, 3, points=shifted_xy(click3, other), labels=np.array([1], np.int32)
        )
        check(theirs, tracker.add_prompt(0, 3, points=click3, labels=[1]), [3], other)
        assert tracker.windows == {1: shared, 2: shared, 3: other}
        assert tracker.num_windows == 2

        ours = list(tracker.propagate("forward"))
        assert [r.frame for r in ours] == list(range(T))
        for window, state, ids in ((shared, s1, [1, 2]), (other, s3, [3])):
            theirs = list(official.propagate_in_video(state))
            for a, b in zip(theirs, ours, strict=True):
                check(a, b, ids, window)
    assert tracker.recentrings == {1: 0, 2: 0, 3: 0}
    assert check.present >= check.frames // 2
    print(f"windows: {check.frames} compared frames, max |Δlogit| = {check.worst:.2e}")
    tracker.close()


def test_a_box_tracked_both_ways_from_a_middle_frame_matches_official(model_pair, tmp_path):
    official, model = model_pair
    box = (290, 120, 330, 160)  # object 1 on frame 3
    window = place([box[0], box[2]], [box[1], box[3]])
    frames, folders = movie_for([window], tmp_path)
    tracker = WindowTracker(model, frames, margin=0)
    check = Check()
    r0, c0 = window[:2]
    with torch.inference_mode():
        state = official.init_state(folders[window])
        b = np.array([box[1] - c0, box[0] - r0, box[3] - c0, box[2] - r0], np.float32)
        theirs = official.add_new_points_or_box(state, 3, 1, box=b)
        check(theirs, tracker.add_prompt(3, 1, box=box), [1], window)
        theirs = list(official.propagate_in_video(state)) + list(
            official.propagate_in_video(state, reverse=True)
        )
        ours = list(tracker.propagate("both"))
    assert [r.frame for r in ours] == [t[0] for t in theirs] == [*range(3, T), *range(3, -1, -1)]
    for a, b in zip(theirs, ours, strict=True):
        check(a, b, [1], window)
    assert check.present >= check.frames // 2
    tracker.close()


def test_an_object_in_a_2048_squared_movie_matches_official_on_its_window(model_pair, tmp_path):
    """The issue's case: one object in a 2048² movie (eight tiles on a side at this input),
    followed in its native-resolution window, equals Meta's predictor on the cropped movie."""
    official, model = model_pair
    click = [(1500, 610)]
    window = place([1500], [610], (BIG, BIG))
    assert window[2] - window[0] == window[3] - window[1] == IMAGE_SIZE
    assert 0 < window[0] and window[3] < BIG  # cut inside the frame on both axes
    frames, folders = movie_for([window], tmp_path, np.stack([big_blob(t) for t in range(BIG_T)]))
    tracker = WindowTracker(model, frames, margin=0)
    check = Check()
    with torch.inference_mode():
        state = official.init_state(folders[window])
        theirs = official.add_new_points_or_box(
            state, 0, 1, points=shifted_xy(click, window), labels=np.array([1], np.int32)
        )
        check(theirs, tracker.add_prompt(0, 1, points=click, labels=[1]), [1], window)
        theirs = list(official.propagate_in_video(state))
        ours = list(tracker.propagate("forward"))
    assert [r.frame for r in ours] == [t[0] for t in theirs] == list(range(BIG_T))
    for a, b in zip(theirs, ours, strict=True):
        check(a, b, [1], window)
    assert ours[0].shape == (BIG, BIG)
    assert tracker.windows == {1: window} and tracker.recentrings == {1: 0}
    assert check.present >= check.frames // 2
    print(f"2048² movie: {check.frames} compared frames, max |Δlogit| = {check.worst:.2e}")
    tracker.close()
