"""Online depth on frame streams: a source -> bounded queues -> stages -> sinks pipeline.

Three threads run side by side: the reader decodes the source (:class:`VideoSource`,
:class:`ImageSequence`), the worker runs the stages over each batch of frames (:class:`Infer` on the
predictor's device, :class:`Stabilise`, stages of your own, :class:`Colour` on the device), and the
caller's thread hands every frame, in source order, to the sinks (:class:`VideoOut`,
:class:`FlickerOut`, :class:`CallbackOut`, sinks of your own). A new step (a filter, a second output, a
point-cloud writer) is one :class:`Stage` or :class:`Sink` subclass passed to :func:`run_stream`.

Queues are bounded, so memory stays flat. Without ``realtime`` every frame is processed (the reader
waits when the worker is busy). With ``realtime`` the reader keeps the source's pace and drops a frame
whenever the worker is still busy; the output then pairs every input frame with the most recent
depth, so the output video keeps the source frame rate, and the drops are counted.

Nothing is lost silently: frames that cannot be decoded, that are larger than the pixel limit, or a
video that ends before the frame count its container declares are counted as ``problems`` (with
``strict=True`` the first one stops the stream); frames of another size than the first are processed
and resized for the output video, and counted as ``resized``. Ctrl-C stops within about a second:
the video written so far is kept under ``<name>.partial<ext>`` and :class:`StreamInterrupted` says so.
"""

from .pipeline import (CallbackOut, Colour, FlickerOut, Frame, Infer, Sink, Stabilise, Stage, StreamInterrupted,
                       StreamStats, VideoOut, check_paths, run_stream, write_stats)
from .sinks import CODECS, VideoSink, h264_available
from .sources import VIDEO_EXTS, ImageSequence, Problem, VideoSource

__all__ = ["CODECS", "VIDEO_EXTS", "CallbackOut", "Colour", "FlickerOut", "Frame", "ImageSequence", "Infer", "Problem",
           "Sink", "Stabilise", "Stage", "StreamInterrupted", "StreamStats", "VideoOut", "VideoSink", "VideoSource",
           "check_paths", "h264_available", "run_stream", "write_stats"]
