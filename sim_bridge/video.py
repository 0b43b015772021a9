"""Videos of a simulated robot's episodes: the first, the best so far and the last, as WebM (VP9)
files a browser plays, listed in ``index.json``.

The control loop pays only for the bridge's copy of the positions at each step
(``MujocoBridge(record=True)``, a microsecond). Everything else happens in a render process
started per video at the lowest priority (nice 19): it loads the task's MuJoCo model, replays
the positions with ``mj_forward``, draws them with MuJoCo's offscreen renderer (``MUJOCO_GL=egl``
unless the user chose another backend; Mesa's software rasterizer where there is no GPU) and
encodes with imageio-ffmpeg's ffmpeg. Where no video can be made (no MuJoCo model, no EGL) the
run goes on without them and says why once.

``index.json`` (rewritten whole, atomically, whenever a video is finished or loses its last
tag) lists the finished videos, by episode: ``{"file": "episode-0003.webm", "episode": 3,
"robot": "sim-0", "return": 41.2, "tags": ["best"], "frames": 201, "seconds": 8.04}``; tags are
"first", "best" and "last", each held by one video at most; a video that loses its last tag is
deleted. ``python -m sim_bridge.video`` is the render process.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mujoco
import numpy as np

from sim_bridge.lifeline import child_env, watch_parent

if TYPE_CHECKING:
    from sim_bridge.mujoco_bridge import Recording, SimulatedTask

log = logging.getLogger(__name__)

INDEX = "index.json"
SIZE = (480, 360)
"""Width and height of the videos, pixels: enough to follow the robot, cheap to draw in software
(a cartpole frame: about 4 ms with 4x multisampling, shadows off)."""
ENCODER = ["-deadline", "realtime", "-cpu-used", "8", "-crf", "35", "-b:v", "0", "-threads", "1"]
"""ffmpeg options of the VP9 encoder: its fastest mode (200 frames in about 0.2 s) at a quality
where a cartpole episode takes about 50 kB."""


@dataclass(eq=False)
class Video:
    """One video of the directory, as ``index.json`` lists it (``episode_return`` as "return")."""

    file: str
    episode: int
    robot: str
    episode_return: float | None
    tags: list[str]
    frames: int = 0
    seconds: float = 0.0
    done: bool = field(default=False, repr=False)
    """Rendered (only finished videos are listed)."""

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "episode": self.episode, "robot": self.robot,
                "return": self.episode_return, "tags": list(self.tags), "frames": self.frames,
                "seconds": self.seconds}  # fmt: skip


def read_index(directory: Path) -> list[Video]:
    """The finished videos ``directory/index.json`` lists whose files are there ([] if none)."""
    try:
        entries = json.loads((directory / INDEX).read_text())
        videos = [Video(e["file"], e["episode"], e["robot"], e["return"], list(e["tags"]),
                        e["frames"], e["seconds"], done=True) for e in entries]  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [v for v in videos if (directory / v.file).exists()]


class EpisodeVideos:
    """Decides which episodes of a run get a video and has them rendered, one at a time, in the
    background; ``directory`` keeps the videos and ``index.json`` (those of an earlier run into
    the same directory stay, and keep their tags until others take them)."""

    def __init__(self, task: SimulatedTask, directory: Path, size: tuple[int, int] = SIZE) -> None:
        if size[0] % 2 or size[1] % 2 or min(size) < 16:
            raise ValueError(f"video size must be even and at least 16 pixels, got {size}")
        self.directory, self.size = directory, size
        self.problem: str | None = None
        """Why no more videos are made (None: they are)."""
        self._videos = read_index(directory)
        self._queue: deque[tuple[Video, Recording]] = deque()
        self._latest: tuple[Video, Recording] | None = None
        self._busy: subprocess.Popen[bytes] | None = None
        self._wake = threading.Condition()
        self._scratch = directory / ".rendering"
        """The render jobs and the videos being made (what a killed run left is cleared)."""
        try:
            model = _model_of(task)
        except ValueError as exc:
            self._off(str(exc))
            return
        shutil.rmtree(self._scratch, ignore_errors=True)
        self._scratch.mkdir(parents=True)
        mujoco.mj_saveModel(model, str(self._scratch / "model.mjb"), None)
        self._worker = threading.Thread(target=self._work, name="videos", daemon=True)
        self._worker.start()

    @property
    def active(self) -> bool:
        """Whether episodes handed in may still get videos (so bridges should record)."""
        return self.problem is None

    def episode_done(
        self, recording: Recording | None, episode: int, robot: str, episode_return: float | None
    ) -> None:
        """Hand in an episode (1-based ``episode``): it gets a video if it is the first one
        handed in, or returns more than the best so far; it is kept to be the last one until
        the next arrives (see :meth:`finish`)."""
        if not self.active:
            return
        if recording is None:
            self._off(f"the robot of episode {episode} recorded no MuJoCo state")
            return
        video = Video(f"episode-{episode:04d}.webm", episode, robot, episode_return, [])
        with self._wake:
            # One an earlier run made of the same episode (killed before recording its end,
            # so run again on resume) is replaced.
            self._videos = [v for v in self._videos if v.episode != episode]
            tags = [] if any("first" in v.tags for v in self._videos) else ["first"]
            if episode_return is not None and episode_return > self._best():
                tags.append("best")
            self._latest = (video, recording)
            if tags:
                self._take(video, tags, recording)

    def finish(self, timeout_s: float) -> list[Video]:
        """Tag the last episode handed in "last", wait up to ``timeout_s`` for every video to be
        rendered (abandoning the rest, with a warning) and return the finished ones."""
        try:
            return self._finish(timeout_s)
        finally:  # interrupted too (Ctrl-C in the wait): no render process is left behind
            self.close()

    def _finish(self, timeout_s: float) -> list[Video]:
        with self._wake:
            if self.active and self._latest is not None:
                video, recording = self._latest
                if video in self._videos:  # already first or best
                    video.tags.append("last")
                    self._retag(video, ["last"])
                else:
                    self._take(video, ["last"], recording)
            end = time.monotonic() + timeout_s
            while self._queue or self._busy is not None:
                left = end - time.monotonic()
                if left <= 0:
                    log.warning("videos: %d not rendered within %.0f s, abandoned",
                                len(self._queue) + (self._busy is not None), timeout_s)  # fmt: skip
                    break
                self._wake.wait(left)
        return sorted((v for v in self._videos if v.done), key=lambda v: v.episode)

    def close(self) -> None:
        """Stop rendering at once: what is not finished is dropped."""
        with self._wake:
            if self.problem is None:
                self.problem = "closed"
            self._queue.clear()
            self._videos = [v for v in self._videos if v.done]
            if self._busy is not None:
                self._busy.kill()
            self._wake.notify_all()
        shutil.rmtree(self._scratch, ignore_errors=True)

    # --- bookkeeping, under self._wake -------------------------------------------------------
    def _best(self) -> float:
        """The return of the video tagged best (-inf: none; NaN is never the best)."""
        best = [v.episode_return for v in self._videos if "best" in v.tags]
        return next((r for r in best if r is not None), -math.inf)

    def _take(self, video: Video, tags: list[str], recording: Recording) -> None:
        """Give ``video`` the ``tags`` (taking them from the others) and queue its render."""
        video.tags = tags
        self._retag(video, tags)
        self._videos.append(video)
        self._queue.append((video, recording))
        self._wake.notify_all()

    def _retag(self, video: Video, tags: list[str]) -> None:
        """Take ``tags`` from every other video; one left with none is dropped (and deleted)."""
        for other in self._videos:
            if other is not video:
                other.tags = [t for t in other.tags if t not in tags]
        for gone in [v for v in self._videos if not v.tags]:
            self._videos.remove(gone)
            if gone.done:
                (self.directory / gone.file).unlink(missing_ok=True)
        self._write_index()

    def _write_index(self) -> None:
        entries = [v.as_json() for v in sorted(self._videos, key=lambda v: v.episode) if v.done]
        staged = self.directory / (INDEX + ".tmp")
        staged.write_text(json.dumps(entries, indent=1) + "\n")
        staged.replace(self.directory / INDEX)

    def _off(self, problem: str) -> None:
        """No more videos, and why (said once)."""
        with self._wake:
            if self.problem is not None:
                return
            self.problem = problem
            self._queue.clear()
            self._videos = [v for v in self._videos if v.done]
            self._wake.notify_all()
        log.warning("videos off: %s", problem)

    # --- the render queue --------------------------------------------------------------------
    def _work(self) -> None:
        """One render at a time, in the order queued; one that lost its tags meanwhile is
        skipped."""
        while True:
            with self._wake:
                while self.active and not self._queue:
                    self._wake.wait()
                if not self.active:
                    return
                video, recording = self._queue.popleft()
                if video not in self._videos:
                    self._wake.notify_all()
                    continue
                try:
                    proc = self._busy = self._start(video, recording)
                except OSError as exc:
                    self._off(f"the render process cannot start: {exc}")
                    return
            out, err = proc.communicate()
            with self._wake:
                self._busy = None
                self._wake.notify_all()
                if not self.active:
                    return
                if proc.returncode == 0:
                    self._finished(video, json.loads(out.decode().splitlines()[-1]))
                    continue
            lines = err.decode(errors="replace").strip().splitlines() or ["(no message)"]
            self._off(f"rendering failed ({proc.returncode}): {lines[-1]}")

    def _start(self, video: Video, recording: Recording) -> subprocess.Popen[bytes]:
        job = self._scratch / f"{video.episode}.npz"
        np.savez(job, qpos=recording.qpos, mocap_pos=recording.mocap_pos,
                 mocap_quat=recording.mocap_quat)  # fmt: skip
        env = child_env()  # a render does not outlive the run (sim_bridge.lifeline)
        if not env.get("MUJOCO_GL"):  # the user's choice (glfw with a display, osmesa) stands
            env["MUJOCO_GL"] = "egl"
            env.pop("PYOPENGL_PLATFORM", None)
        env.setdefault("LP_NUM_THREADS", "1")  # Mesa's rasterizer: one core, not all of them
        size = f"{self.size[0]}x{self.size[1]}"
        return subprocess.Popen(
            [sys.executable, "-m", "sim_bridge.video", str(self._scratch / "model.mjb"), str(job),
             str(self._scratch / video.file),
             "--fps", repr(1.0 / recording.period), "--size", size],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip

    def _finished(self, video: Video, result: dict[str, Any]) -> None:
        """Move a rendered video in (the index names it only once it is whole)."""
        rendered = self._scratch / video.file
        if video not in self._videos:  # lost its tags while it rendered
            rendered.unlink(missing_ok=True)
            return
        rendered.replace(self.directory / video.file)
        video.frames, video.seconds, video.done = result["frames"], result["seconds"], True
        self._write_index()


def _model_of(task: SimulatedTask) -> mujoco.MjModel:
    """The MuJoCo model of ``task``'s simulation, made as the bridge makes it (saved as MJB, the
    render process loads it whole, meshes included, without the task or the registration of its
    environment); ValueError saying why there is none."""
    from sim_bridge.mujoco_bridge import make_env

    if task.env_id is None:
        raise ValueError(f"task {task.name} names no simulation (env_id)")
    env = make_env(task.env_id, task.env_kwargs)
    model = getattr(env.unwrapped, "model", None)
    env.close()
    if not isinstance(model, mujoco.MjModel):
        raise ValueError(f"{task.env_id} is not a MuJoCo simulation: nothing to render")
    return model


# --- the render process ----------------------------------------------------------------------
def render(
    model_path: Path, job: Path, out: Path, fps: float, size: tuple[int, int]
) -> dict[str, Any]:
    """Draw every row of a recording (``job``: the npz of a Recording's arrays) with the model
    at ``model_path`` and encode the frames to ``out`` (VP9 WebM); returns frames and seconds.

    The camera: the model's camera named "track" where it has one (gymnasium's locomotion
    models), else a side view of the first moving body, following it along the ground. A model
    with no floor gets marks every half metre along x, so the motion of a cart shows."""
    import imageio_ffmpeg

    model = mujoco.MjModel.from_binary_path(str(model_path))
    width, height = size
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
    model.vis.global_.offheight = max(model.vis.global_.offheight, height)
    # The model's lights stay where they are while the robot may travel far (the cartpole's
    # rail is unlimited): the camera's own light keeps it lit.
    model.vis.headlight.ambient = np.maximum(model.vis.headlight.ambient, 0.3)
    model.vis.headlight.diffuse = np.maximum(model.vis.headlight.diffuse, 0.5)
    data = mujoco.MjData(model)
    rows = np.load(job)
    qpos, mocap_pos, mocap_quat = rows["qpos"], rows["mocap_pos"], rows["mocap_quat"]
    writer = imageio_ffmpeg.write_frames(
        str(out), size, fps=fps, codec="libvpx-vp9", pix_fmt_out="yuv420p", quality=None,
        bitrate=None, macro_block_size=2, output_params=ENCODER, ffmpeg_log_level="error",
    )  # fmt: skip
    writer.send(None)
    track = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
    no_floor = not np.any(model.geom_type == mujoco.mjtGeom.mjGEOM_PLANE)
    with mujoco.Renderer(model, height, width) as renderer:
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False  # 4x the cost in software
        camera, follow = None, 0
        for t in range(len(qpos)):
            data.qpos[:] = qpos[t]
            data.mocap_pos[:], data.mocap_quat[:] = mocap_pos[t], mocap_quat[t]
            mujoco.mj_forward(model, data)
            if camera is None and track < 0:
                camera, follow = _side_view(model, data)
            if camera is not None:
                camera.lookat[:2] = data.xpos[follow][:2]
            renderer.update_scene(data, track if camera is None else camera)
            if camera is not None and no_floor:
                _add_marks(renderer.scene, camera)
            writer.send(renderer.render())
    writer.close()
    return {"frames": len(qpos), "seconds": round(len(qpos) / fps, 3)}


def _side_view(model: Any, data: Any) -> tuple[Any, int]:
    """A free camera looking at the first body that moves, from the side (along +y), far enough
    to see it whole with room to move; and that body's id."""
    moving = [b for b in range(1, model.nbody) if model.body_jntnum[b] > 0]
    body = moving[0] if moving else 1 if model.nbody > 1 else 0
    subtree = [g for g in range(model.ngeom) if model.body_rootid[model.geom_bodyid[g]] ==
               model.body_rootid[body]]  # fmt: skip
    reach = max((np.linalg.norm(data.geom_xpos[g] - data.xpos[body]) + model.geom_rbound[g]
                 for g in subtree), default=model.stat.extent / 2)  # fmt: skip
    camera = mujoco.MjvCamera()
    camera.type = mujoco.mjtCamera.mjCAMERA_FREE
    camera.lookat[:] = data.xpos[body]
    camera.distance, camera.azimuth, camera.elevation = max(4.5 * reach, 1.0), 90.0, -15.0
    return camera, body


def _add_marks(scene: Any, camera: Any) -> None:
    """Small posts every 0.5 m along x at the followed body's height, across the view."""
    step, half = 0.5, 1.5 * camera.distance
    start = math.floor((camera.lookat[0] - half) / step)
    for i in range(start, start + int(2 * half / step) + 2):
        if scene.ngeom >= scene.maxgeom:
            return
        mujoco.mjv_initGeom(
            scene.geoms[scene.ngeom], mujoco.mjtGeom.mjGEOM_BOX, np.array([0.012, 0.012, 0.07]),
            np.array([i * step, camera.lookat[1], camera.lookat[2]]), np.eye(3).reshape(-1),
            np.array([0.9, 0.9, 0.9, 1.0] if i % 2 == 0 else [0.5, 0.5, 0.5, 1.0], np.float32),
        )  # fmt: skip
        scene.ngeom += 1


def main(argv: list[str] | None = None) -> None:
    """The render process: ``python -m sim_bridge.video MODEL.mjb JOB.npz OUT.webm --fps F
    --size WxH``; prints the result as one JSON line."""
    watch_parent()  # a run killed outright cannot end us itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's, which ends us itself
    os.nice(19)
    parser = argparse.ArgumentParser(prog="python -m sim_bridge.video")
    parser.add_argument("model", type=Path)
    parser.add_argument("job", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--fps", type=float, required=True)
    parser.add_argument("--size", default=f"{SIZE[0]}x{SIZE[1]}")
    args = parser.parse_args(argv)
    width, height = (int(x) for x in args.size.split("x"))
    started = time.perf_counter()
    result = render(args.model, args.job, args.out, args.fps, (width, height))
    print(json.dumps({**result, "wall_s": round(time.perf_counter() - started, 3)}), flush=True)


if __name__ == "__main__":
    main()
