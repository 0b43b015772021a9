"""Episode videos: real MuJoCo, real EGL (Mesa's software rasterizer), real ffmpeg, real files.

Frames are kept small and episodes short: each render is a process of its own (about half a
second to start)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import numpy.typing as npt
import pytest

from controller.tasks import get_task
from sim_bridge.mujoco_bridge import MujocoBridge, Recording
from sim_bridge.video import INDEX, EpisodeVideos, read_index

SMALL = (160, 120)
CARTPOLE = get_task("cartpole-swingup")


def _episode(steps: int, seed: int = 0) -> Recording:
    """A cartpole episode of ``steps`` random full-force pushes, as the bridge recorded it."""
    bridge = MujocoBridge.for_task(CARTPOLE, seed=seed, record=True)
    rng = np.random.default_rng(seed)
    bridge.begin_episode()
    bridge.read_state()
    for _ in range(steps):
        bridge.apply_action(rng.choice([-1.0, 1.0], size=1))
        bridge.read_state()
    recording = bridge.recording()
    bridge.close()
    assert recording is not None
    return recording


def _decoded(path: Path) -> tuple[dict[str, object], list[npt.NDArray[np.uint8]]]:
    frames = imageio_ffmpeg.read_frames(str(path))
    meta = next(frames)
    width, height = meta["size"]
    return meta, [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in frames]


def test_a_recorded_cartpole_episode_becomes_a_webm_that_ffmpeg_decodes(tmp_path: Path) -> None:
    recording = _episode(steps=40)
    assert recording.qpos.shape == (41, 2)  # the reset and every step
    assert recording.mocap_pos.shape == (41, 0, 3) and recording.period == 0.04

    directory = tmp_path / "videos"
    videos = EpisodeVideos(CARTPOLE, directory, size=SMALL)
    videos.episode_done(recording, episode=1, robot="sim-0", episode_return=2.5)
    (video,) = videos.finish(timeout_s=60)
    assert video.tags == ["first", "best", "last"] and video.frames == 41

    meta, frames = _decoded(directory / video.file)
    assert meta["codec"] == "vp9" and meta["size"] == SMALL and meta["fps"] == 25.0
    assert len(frames) == 41
    # Not blank, and moving: the pole (cyan, rgb 0 0.7 0.7) is in every frame and swings.
    for frame in (frames[0], frames[-1]):
        r, g, b = (frame[..., i].astype(int) for i in range(3))
        assert np.sum((g > 80) & (b > 80) & (r < 60)) > 30
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1.0
    assert json.loads((directory / INDEX).read_text()) == [{
        "file": "episode-0001.webm", "episode": 1, "robot": "sim-0", "return": 2.5,
        "tags": ["first", "best", "last"], "frames": 41, "seconds": 1.64,
    }]  # fmt: skip
    assert sorted(p.name for p in directory.iterdir()) == ["episode-0001.webm", INDEX]


def test_the_first_the_best_so_far_and_the_last_keep_videos_and_the_rest_go(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "videos"
    short = _episode(steps=2)
    videos = EpisodeVideos(CARTPOLE, directory, size=(64, 48))
    for episode, value in enumerate([1.0, 5.0, 3.0, 7.0, 2.0], start=1):
        videos.episode_done(short, episode, "sim-0", value)
    kept = videos.finish(timeout_s=60)
    assert [(v.episode, v.tags) for v in kept] == [(1, ["first"]), (4, ["best"]), (5, ["last"])]
    index = json.loads((directory / INDEX).read_text())
    assert [(e["episode"], e["return"], e["tags"], e["frames"]) for e in index] == [
        (1, 1.0, ["first"], 3), (4, 7.0, ["best"], 3), (5, 2.0, ["last"], 3)
    ]  # fmt: skip
    # Episode 2's video, the best until episode 4, is gone (or was never rendered).
    assert sorted(p.name for p in directory.iterdir()) == [
        "episode-0001.webm", "episode-0004.webm", "episode-0005.webm", INDEX
    ]  # fmt: skip

    # A resumed run goes on in the same directory: the first stays, the best is beaten only by
    # a better return, and the new last takes the tag (the old last, with no tag left, goes).
    resumed = EpisodeVideos(CARTPOLE, directory, size=(64, 48))
    resumed.episode_done(short, 6, "sim-1", 6.0)
    resumed.episode_done(short, 7, "sim-0", 8.0)
    kept = resumed.finish(timeout_s=60)
    assert [(v.episode, v.robot, v.tags) for v in kept] == [
        (1, "sim-0", ["first"]), (7, "sim-0", ["best", "last"])
    ]  # fmt: skip
    assert [v.episode for v in read_index(directory)] == [1, 7]
    assert sorted(p.name for p in directory.iterdir()) == [
        "episode-0001.webm", "episode-0007.webm", INDEX
    ]  # fmt: skip


def test_a_task_without_a_mujoco_model_runs_without_videos_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pendulum = get_task("pendulum")  # gymnasium's classic-control Pendulum-v1
    with caplog.at_level(logging.WARNING, logger="sim_bridge.video"):
        videos = EpisodeVideos(pendulum, tmp_path / "videos")
    assert not videos.active
    assert [r.getMessage() for r in caplog.records] == [
        "videos off: Pendulum-v1 is not a MuJoCo simulation: nothing to render"
    ]
    bridge = MujocoBridge.for_task(pendulum, record=True)
    bridge.begin_episode()
    assert bridge.recording() is None  # nothing to record either
    bridge.close()
    videos.episode_done(None, 1, "sim-0", -100.0)
    assert videos.finish(timeout_s=10) == []
    assert not (tmp_path / "videos").exists()


def test_a_renderer_that_cannot_start_turns_videos_off_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUJOCO_GL", "no-such-backend")  # as a machine without the GL libraries
    short = _episode(steps=2)
    with caplog.at_level(logging.WARNING, logger="sim_bridge.video"):
        videos = EpisodeVideos(CARTPOLE, tmp_path / "videos", size=(64, 48))
        for episode in (1, 2, 3):
            videos.episode_done(short, episode, "sim-0", float(episode))
        assert videos.finish(timeout_s=60) == []
    (warning,) = caplog.records
    assert warning.getMessage().startswith("videos off: rendering failed (1): ")
    assert "MUJOCO_GL" in warning.getMessage()
    assert not videos.active
    assert json.loads((tmp_path / "videos" / INDEX).read_text()) == []
