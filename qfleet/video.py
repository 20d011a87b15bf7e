"""Episode videos: an mp4 per episode (PyAV, whose wheels bundle FFmpeg, so nothing is
downloaded at run time) and an animated GIF for TensorBoard, which shows GIFs in its
IMAGES tab but cannot play mp4.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

GIF_MAX_FRAMES = 900
"""Frames of an episode that go into TensorBoard (60 s at Atari's 15 fps): TensorBoard
keeps every GIF in its event file, the mp4 keeps the whole episode."""
GIF_MAX_SIDE = 320
"""Larger frames (CartPole renders 600×400) are scaled down for TensorBoard."""


class Mp4Writer:
    """H.264 in an mp4, encoded as frames arrive so that a long episode never sits in
    memory whole."""

    def __init__(self, fps: int) -> None:
        import av

        self._buffer = io.BytesIO()
        self._container: Any = av.open(self._buffer, "w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=fps)
        self._stream.pix_fmt = "yuv420p"
        # One encoder thread: the evaluator is a CPU-less Ray actor beside training.
        self._stream.options = {"crf": "20", "preset": "veryfast", "threads": "1"}
        self._av = av
        self.frames = 0

    def add(self, frame: np.ndarray) -> None:
        """One RGB frame (H, W, 3), uint8; every frame of a video has the same size."""
        if self.frames == 0:  # yuv420p needs even sides: pad the first frame's size
            self._stream.height = frame.shape[0] + frame.shape[0] % 2
            self._stream.width = frame.shape[1] + frame.shape[1] % 2
        pad = ((0, self._stream.height - frame.shape[0]),
               (0, self._stream.width - frame.shape[1]), (0, 0))
        if any(p[1] for p in pad):
            frame = np.pad(frame, pad)
        packet_frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                        format="rgb24")
        self._container.mux(self._stream.encode(packet_frame))
        self.frames += 1

    def finish(self) -> bytes:
        """The whole mp4 file."""
        self._container.mux(self._stream.encode())
        self.close()
        return self._buffer.getvalue()

    def close(self) -> None:
        """Release the encoder (idempotent; what `finish` has not flushed is dropped)."""
        if self._container is not None:
            container, self._container = self._container, None
            with contextlib.suppress(Exception):  # an encoder that already failed
                container.close()


def gif(frames: list[np.ndarray], fps: int) -> bytes:
    """An animated GIF of `frames` (RGB uint8), scaled so no side exceeds GIF_MAX_SIDE."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames[:GIF_MAX_FRAMES]]
    scale = GIF_MAX_SIDE / max(images[0].size)
    if scale < 1:
        size = (round(images[0].width * scale), round(images[0].height * scale))
        images = [im.resize(size, Image.Resampling.BILINEAR) for im in images]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0, optimize=False)
    return out.getvalue()


def gif_summary(tag: str, data: bytes) -> object:
    """A TensorBoard image summary holding an animated GIF (what `add_video` writes, without
    its moviepy dependency)."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=data)
    return Summary(value=[Summary.Value(tag=tag, image=image)])
