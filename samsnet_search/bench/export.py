"""Benchmark: the exported model beside the eager one (the ratio should be about 1).

One Sams-Net (random weights, eval mode) is exported as `samsnet-search export` does
(`delivery.export.export_programs`, ONNX from the masks program), written, loaded back, and timed
side by side with the eager model on the same input (runs interleaved, `common.timed_side_by_side`):

* masks: `SamsNet.forward` vs `masks.pt2` vs onnxruntime's `model.onnx`, on a magnitude;
* separate: `SamsNet.separate` vs `separate.pt2` (STFT, masks, ISTFT), on audio.

The input is one excerpt whose frame count does not fill whole slices (the padded last slice
runs). Sizes: the quickstart's largest trial model (full: also the paper's model on 10 s).
`*_ratio` = exported / eager time; `max_abs_diff` is over all outputs of all formats.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from ..config import SAMPLE_RATE, ModelConfig, read_yaml
from ..delivery.export import export_onnx, export_programs
from ..engine import checkpoint
from .attention import QUICKSTART
from .common import timed_side_by_side


@dataclass(frozen=True)
class ExportSizes:
    label: str
    n_fft: int
    hop_length: int
    channels: int
    heads: int
    depth: int
    slices: int
    segment_seconds: float  # the training segment: sets slice_frames
    seconds: float  # the timed excerpt
    repeats: int


def sizes_for(quick: bool, smoke: bool) -> list[ExportSizes]:
    space = read_yaml(QUICKSTART)
    model, data = space["model"], space["data"]

    def largest(value: Any) -> int:
        return max(value["choice"] if "choice" in value else value["int"]) if isinstance(value, dict) else value

    quickstart = ExportSizes(
        "quickstart's largest trial model",
        model["n_fft"],
        model["hop_length"],
        largest(model["channels"]),
        largest(model["heads"]),
        largest(model["depth"]),
        largest(model["slices"]),
        data["segment_seconds"],
        2.0 if smoke else 6.0,
        repeats=3 if smoke else 5,
    )
    if quick:
        return [quickstart]
    paper = ExportSizes("paper model (64 maps, 2 heads, 3 modules, 12 slices)", 4096, 1024, 64, 2, 3, 12, 6.0, 10.0, 3)
    return [quickstart, paper]


def _model(sizes: ExportSizes) -> torch.nn.Module:
    cfg = ModelConfig(
        n_fft=sizes.n_fft,
        hop_length=sizes.hop_length,
        channels=sizes.channels,
        heads=sizes.heads,
        depth=sizes.depth,
        slices=sizes.slices,
    )
    torch.manual_seed(0)
    return checkpoint.build_model(cfg.resolved(int(sizes.segment_seconds * SAMPLE_RATE))).eval()


def _audio(sizes: ExportSizes, slice_frames: int) -> torch.Tensor:
    """(1, 2, N) noise whose frame count 1 + N // hop is not a multiple of the slice length."""
    samples = int(sizes.seconds * SAMPLE_RATE)
    while (1 + samples // sizes.hop_length) % slice_frames == 0:
        samples += sizes.hop_length
    return 0.1 * torch.randn(1, 2, samples, generator=torch.Generator().manual_seed(1))


def measure(sizes: ExportSizes) -> dict[str, float]:
    net = _model(sizes)
    audio = _audio(sizes, net.slice_frames)
    with torch.no_grad():
        mag = net.spectrogram(audio).abs()
        example_audio, example_mag = audio.expand(2, -1, -1).contiguous(), mag.expand(2, -1, -1, -1).contiguous()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        masks, stems = export_programs(net, example_mag, example_audio)
        export_s = time.perf_counter() - start
        for name, program in (("masks", masks), ("separate", stems)):
            torch.export.save(program, str(Path(tmp) / f"{name}.pt2"))
        export_onnx(masks, Path(tmp) / "model.onnx")
        masks = torch.export.load(str(Path(tmp) / "masks.pt2")).module()
        stems = torch.export.load(str(Path(tmp) / "separate.pt2")).module()
        session = ort.InferenceSession(str(Path(tmp) / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"mag": mag.numpy()}
    with torch.no_grad():
        diff = max(
            float((masks(mag) - net(mag)).abs().max()),
            float((stems(audio) - net.separate(audio)).abs().max()),
            float((torch.from_numpy(session.run(["masks"], feed)[0]) - net(mag)).abs().max()),
        )
        t_masks = timed_side_by_side(
            {"eager": lambda: net(mag), "pt2": lambda: masks(mag), "onnx": lambda: session.run(["masks"], feed)},
            sizes.repeats,
        )
        t_sep = timed_side_by_side({"eager": lambda: net.separate(audio), "pt2": lambda: stems(audio)}, sizes.repeats)
    ms = {f"masks_{k}": 1000 * v["median_s"] for k, v in t_masks.items()}
    ms |= {f"separate_{k}": 1000 * v["median_s"] for k, v in t_sep.items()}
    return {
        **{f"{k}_ms": v for k, v in ms.items()},
        "masks_pt2_ratio": ms["masks_pt2"] / ms["masks_eager"],
        "masks_onnx_ratio": ms["masks_onnx"] / ms["masks_eager"],
        "separate_pt2_ratio": ms["separate_pt2"] / ms["separate_eager"],
        "export_s": export_s,
        "frames": float(mag.shape[-1]),
        "slice_frames": float(net.slice_frames),
        "max_abs_diff": diff,
    }


def run(quick: bool, device: str, threads: int, smoke: bool = False) -> dict[str, Any]:
    torch.set_num_threads(threads)
    all_sizes = sizes_for(quick or smoke, smoke)
    figures: dict[str, float] = {}
    for index, sizes in enumerate(all_sizes):
        prefix = "" if index == 0 else "paper_"
        figures |= {f"{prefix}{k}": v for k, v in measure(sizes).items()}
    notes = [
        "CPU whatever --device is: the programs are exported and timed on CPU, where `export` traces them",
        "ratio = exported / eager median time (runs interleaved); about 1: the programs are the model's own forward",
    ]
    return {"sizes": [asdict(s) for s in all_sizes], "figures": figures, "notes": notes}
