"""Key press to new frame: the latency of one imagined step through the play server.

    python -m tokworld.play.bench [--run RUN --dataset DIR] [--preset small] [--presses 50]

Starts the play server on 127.0.0.1, opens a WebSocket as the page does, and times `presses`
step messages from sending to receiving the new frame (sampling, decoding, PNG encoding and the
socket round trip; the browser's paint, about a millisecond, is not included). Without `--run`
it times an untrained run of `--preset` on a small MiniGrid dataset, made in a temporary folder:
the cost of a step does not depend on the weights. Prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from websockets.sync.client import connect

from tokworld.config import FRAME_DECODINGS, TokWorldConfig
from tokworld.data.collect import collect
from tokworld.data.format import TrajectoryMeta, load_trajectories
from tokworld.folders import json_text
from tokworld.model import TokWorldModel
from tokworld.play.server import serving
from tokworld.play.world import PlayConfig
from tokworld.tokenizer.frame import FrameTokenizer, FrameTokenizerConfig
from tokworld.tokenizer.vocab import Vocabulary

ENV_ID = "MiniGrid-Empty-5x5-v0"


def untrained_run(preset: str, folder: Path, frame_decoding: str = "token") -> tuple[str, str]:
    """(run, dataset): an untrained `preset` run (decoding frames per `frame_decoding`) and 200
    random MiniGrid steps, in `folder`."""
    dataset = folder / "data"
    collect(ENV_ID, 200, dataset, seed=0, progress=False)
    space = TrajectoryMeta.from_dataset(load_trajectories(str(dataset))).space
    tokenizer = FrameTokenizer(FrameTokenizerConfig.preset(preset))
    tokenizer.save_pretrained(folder / "run" / "tokenizer")
    vocab = Vocabulary.from_spaces(space, tokenizer.codebook_size, tokenizer.tokens_per_frame)
    config = TokWorldConfig.preset(preset, vocab, frame_decoding=frame_decoding)
    TokWorldModel(config).save_pretrained(folder / "run" / "world_model")
    return str(folder / "run"), str(dataset)


def time_presses(url: str, presses: int, action: int = 2) -> list[float]:
    """Milliseconds from sending each of `presses` steps to receiving its frame."""
    times = []
    with connect(url.replace("http://", "ws://") + "ws", max_size=None) as ws:
        ws.recv(), ws.recv()  # hello, first frame
        for _ in range(presses):
            start = time.perf_counter()
            ws.send(json.dumps({"type": "step", "action": action}))
            reply = json.loads(ws.recv())
            times.append(1000 * (time.perf_counter() - start))
            if reply["type"] != "frame":
                raise RuntimeError(reply.get("message", reply))
    return times


def bench(run: str, dataset: str | None, presses: int, record_dir: str) -> dict:
    """Latency figures (ms) of `presses` key presses on `run`."""
    cfg = PlayConfig(run=run, dataset=dataset, port=0, record_dir=record_dir)
    with serving(cfg) as (url, _):
        time_presses(url, 5)  # warm-up
        times = np.array(time_presses(url, presses))
    return {
        "presses": presses,
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "mean_ms": float(times.mean()),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m tokworld.play.bench", description=__doc__)
    parser.add_argument("--run", help="run to time (default: an untrained --preset run)")
    parser.add_argument("--dataset", help="real starts for --run (default: the run's own)")
    parser.add_argument("--preset", default="small", help="preset of the untrained run")
    parser.add_argument("--presses", type=int, default=50)
    parser.add_argument("--frame-decoding", default="token", choices=FRAME_DECODINGS,
                        help="frame decoding of the untrained run")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run, dataset = args.run, args.dataset
        if run is None:
            run, dataset = untrained_run(args.preset, Path(tmp), args.frame_decoding)
        result = bench(run, dataset, args.presses, str(Path(tmp) / "sessions"))
    untrained = f"untrained {args.preset} ({args.frame_decoding} decoding) on {ENV_ID}"
    result["run"] = args.run or untrained
    print(json_text(result))
    return result


if __name__ == "__main__":
    main()
