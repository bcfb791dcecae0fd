"""Evaluation: a model that copies the last frame of a static env is perfect (and one of a moving
env is not), eval-model writes its JSON and plot, the bench JSON keeps its keys, the HTML report
renders in headless Chromium without console errors, bad input is one line."""

from __future__ import annotations

import json
import shutil
import subprocess

import gymnasium as gym
import numpy as np
import pytest
import torch

from tokworld.cli import main
from tokworld.config import TokWorldConfig
from tokworld.data.format import TrajectoryMeta, write_trajectories
from tokworld.eval.fidelity import PSNR_MAX, evaluate_fidelity
from tokworld.model import TokWorldModel, TokWorldOutput
from tokworld.tokenizer import Kind, Vocabulary, space_to_dict
from tokworld.tokenizer.frame import FrameTokenizer, FrameTokenizerConfig

EPISODES, LENGTH, CONTEXT, HORIZON = 3, 8, 2, 3


class CopyModel(TokWorldModel):
    """A world model that predicts nothing changes: each frame code is the same code one block
    earlier, the reward is 0 and the episode goes on. Ignores the KV cache: it remembers the
    token at every stream position itself."""

    def forward(self, input_ids, position_ids=None, cache=None, use_cache=False, **kwargs):
        vocab = self.vocab
        self.stream = getattr(self, "stream", {})
        start = {kind: vocab.id_slice(kind).start for kind in Kind}
        reward_zero = int(vocab.reward.encode(torch.zeros(1))[0]) + start[Kind.REWARD]
        logits = torch.full((*input_ids.shape, vocab.size), float("-inf"))
        for i, p in enumerate(position_ids[0].tolist()):
            self.stream[p] = input_ids[:, i]
            kind = vocab.block_kinds[(p + 1) % vocab.block_size]
            earlier = p + 1 - vocab.block_size
            if kind == Kind.FRAME and earlier in self.stream:  # a frame before it was fed
                target = self.stream[earlier]
            else:
                ids = {
                    Kind.REWARD: reward_zero,
                    Kind.END: start[Kind.END],
                    Kind.FRAME: start[Kind.FRAME],
                }
                target = torch.full_like(input_ids[:, i], ids.get(kind, start[Kind.ACTION]))
            logits[torch.arange(len(target)), i, target] = 0.0
        return TokWorldOutput(logits=logits)


def _dataset(path, frame_of) -> str:
    """EPISODES episodes of LENGTH steps, frame_of(episode, t) uint8 (64, 64, 3); all but the
    last episode end terminated; random actions of 3, no rewards."""
    rng = np.random.default_rng(0)

    def rows():
        for e in range(EPISODES):
            for t in range(LENGTH):
                last = t == LENGTH - 1
                yield {
                    "episode_index": e,
                    "frame_index": t,
                    "observation": frame_of(e, t),
                    "action": int(rng.integers(3)),
                    "reward": 0.0,
                    "terminated": last and e < EPISODES - 1,
                    "truncated": last and e == EPISODES - 1,
                }

    meta = TrajectoryMeta("static", space_to_dict(gym.spaces.Discrete(3)), 64)
    write_trajectories(rows, path, meta, (64, 64, 3))
    return str(path)


def _static(e, t):
    return np.full((64, 64, 3), 40 + 60 * e, np.uint8)


def _flashing(e, t):
    return np.full((64, 64, 3), 255 * (t % 2), np.uint8)


def _tokenizer(ds_path) -> FrameTokenizer:
    """A tiny tokenizer whose codebook was initialised on the dataset's frames."""
    from tokworld.data.format import load_trajectories

    torch.manual_seed(0)
    tokenizer = FrameTokenizer(FrameTokenizerConfig.preset("tiny"))
    frames = load_trajectories(ds_path).with_format("numpy", dtype=None)[:]["observation"]
    opt = torch.optim.Adam(tokenizer.parameters(), 1e-3)
    for _ in range(2):
        loss, _ = tokenizer.compute_loss({"observation": torch.from_numpy(frames)})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tokenizer.eval()


def _vocab(tokenizer) -> Vocabulary:
    space = gym.spaces.Discrete(3)
    return Vocabulary.from_spaces(space, tokenizer.codebook_size, tokenizer.tokens_per_frame)


@pytest.fixture(scope="module")
def static(tmp_path_factory):
    """(dataset path, tokenizer, run dir of that tokenizer and a random tiny world model)."""
    root = tmp_path_factory.mktemp("static")
    path = _dataset(root / "data", _static)
    tokenizer = _tokenizer(path)
    torch.manual_seed(0)
    tokenizer.save_pretrained(root / "run" / "tokenizer")
    TokWorldModel(TokWorldConfig.preset("tiny", _vocab(tokenizer))).save_pretrained(
        root / "run" / "world_model"
    )
    return path, tokenizer, str(root / "run")


def _fidelity(path, tokenizer, windows=100):
    from tokworld.data.format import load_trajectories

    model = CopyModel(TokWorldConfig.preset("tiny", _vocab(tokenizer)))
    ds = load_trajectories(path)
    return evaluate_fidelity(model, tokenizer, ds, CONTEXT, HORIZON, windows, batch_size=16)


@pytest.mark.slow  # ~8 s, most of it SSIM
def test_copying_the_last_frame_of_a_static_env_is_perfect(static):
    path, tokenizer, _ = static
    result, rollouts = _fidelity(path, tokenizer)
    steps, valid = result["per_step"], rollouts.frame_valid
    assert np.array_equal(rollouts.imagined_frames[valid], rollouts.reconstruction[valid])
    assert steps["horizon"] == list(range(1, HORIZON + 1))
    assert steps["psnr_vs_reconstruction"] == [PSNR_MAX] * HORIZON
    assert steps["token_accuracy"] == [1.0] * HORIZON
    assert steps["ssim_vs_reconstruction"] == pytest.approx([1.0] * HORIZON)
    # what is left against the real frames is the tokenizer's own error, all of it
    assert steps["psnr_vs_real"] == pytest.approx(steps["tokenizer_psnr"])
    # every start with room for one imagined step is used; windows stop at their episode's end
    assert result["windows"] == EPISODES * (LENGTH - CONTEXT)
    assert steps["frames"][0] == result["windows"] and steps["frames"][-1] < steps["frames"][0]
    # the last HORIZON - 1 starts of each terminated episode reach its end; none is foreseen
    assert result["end"] == {
        "precision": None,
        "recall": 0.0,
        "predicted": 0,
        "actual": (EPISODES - 1) * (HORIZON - 1),
        "hits": 0,
    }
    assert result["reward"]["actual"] == result["reward"]["predicted"] == 0
    assert set(result["at_horizon"]) == {"1"}


def test_copying_the_last_frame_of_a_moving_env_is_not(tmp_path):
    path = _dataset(tmp_path / "flashing", _flashing)
    tokenizer = _tokenizer(path)
    black, white = tokenizer.encode(np.stack([_flashing(0, 0), _flashing(0, 1)]))
    assert not torch.equal(black, white)  # the frames differ in code space too
    steps = _fidelity(path, tokenizer, windows=6)[0]["per_step"]
    # the imagined frame never changes, so it is wrong at odd horizons and right at even ones
    assert steps["token_accuracy"][0] < 1.0 and steps["psnr_vs_reconstruction"][0] < PSNR_MAX
    assert steps["token_accuracy"][1] == 1.0 and steps["psnr_vs_reconstruction"][1] == PSNR_MAX


@pytest.mark.slow  # ~4 s, most of it SSIM
def test_eval_model_writes_json_and_plot(static, tmp_path):
    path, _, run = static
    out = tmp_path / "fid.json"
    code = main(
        [
            "eval-model",
            "--run",
            run,
            "--dataset",
            path,
            "--context",
            "2",
            "--horizon",
            "4",
            "--windows",
            "6",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["context"] == 2 and result["horizon"] == 4 and result["windows"] == 6
    assert len(result["per_step"]["psnr_vs_real"]) == 4
    assert {"reward", "end", "at_horizon", "sampling"} <= result.keys()
    assert (tmp_path / "fid.png").read_bytes()[:4] == b"\x89PNG"


BENCH_KEYS = {
    "schema",
    "preset",
    "quick",
    "machine",
    "settings",
    "tokenizer",
    "world_model",
    "imagination",
    "peak_memory_mib",
    "seconds",
}
MACHINE_KEYS = {
    "cpu",
    "cpu_count",
    "cpus_usable",
    "gpu",
    "device",
    "torch",
    "cuda",
    "torch_threads",
    "python",
    "platform",
    "load_average",
}
FIGURE_KEYS = {"median", "min", "max", "runs"}
MEMORY_KEYS = {"peak_mib", "increase_mib"}


@pytest.mark.slow  # ~9 s
def test_bench_quick_json_keeps_its_keys(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--quick", "--threads", "1", "--json", str(out)]) == 0
    b = json.loads(out.read_text())
    assert b.keys() == BENCH_KEYS and b["machine"].keys() == MACHINE_KEYS
    assert b["schema"] == 1 and b["quick"] and b["machine"]["torch_threads"] == 1
    repeats = b["settings"]["repeats"]
    tok, wm = b["tokenizer"], b["world_model"]
    assert tok.keys() == {
        "parameters",
        "tokens_per_frame",
        "train_batch",
        "encode_batch",
        "decode_batch",
        "train_frames_per_s",
        "encode_frames_per_s",
        "decode_frames_per_s",
        "memory",
    }
    assert wm.keys() == {
        "parameters",
        "batch",
        "context_steps",
        "tokens_per_batch",
        "train_tokens_per_s",
        "loop_tokens_per_s",
        "memory",
    }
    assert b["imagination"].keys() == {"batch_1", "batch_8", "batch_32"}
    figures = [
        tok["train_frames_per_s"],
        tok["encode_frames_per_s"],
        tok["decode_frames_per_s"],
        wm["train_tokens_per_s"],
        wm["loop_tokens_per_s"],
    ]
    memories = [tok["memory"], wm["memory"]]
    for entry in b["imagination"].values():
        assert entry.keys() == {"batch", "steps", "imagined_steps_per_s", "decoder_share", "memory"}
        figures.append(entry["imagined_steps_per_s"])
        memories.append(entry["memory"])
    for f in figures:
        assert f.keys() == FIGURE_KEYS and len(f["runs"]) == repeats
        assert 0 < f["min"] <= f["median"] <= f["max"]
    for m in memories:  # each section ran in its own forked child, from the same parent
        assert m.keys() == MEMORY_KEYS and 0 < m["increase_mib"] < m["peak_mib"]
    assert b["peak_memory_mib"] == max(m["peak_mib"] for m in memories)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _console(html_file) -> list[str]:
    """Console messages Chromium logs while loading the page headless."""
    proc = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            f"file://{html_file}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "</html>" in proc.stdout
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.slow  # headless Chromium
def test_report_is_self_contained_and_renders_without_console_errors(static, tmp_path):
    path, _, run = static
    stage = tmp_path / "run" / "train_state"
    history = [
        {"step": s, "loss": 2.0 / s, "eval/loss": 2.2 / s, "frame_acc": s / 10} for s in (1, 2, 3)
    ]
    policy = [{"step": s, "loss": 1.0 / s, "imagined_return": float(s)} for s in (1, 2, 3)]
    online = {
        "learning_curve": [{"env_steps": 100 * s, "return": float(s)} for s in (1, 2)],
        "history": [{"epoch": 0, "env_steps": 100, "collect": {"mean_return": 0.5}}],
    }
    (stage / "world_model").mkdir(parents=True)
    (stage / "world_model" / "history.json").write_text(json.dumps(history))
    (stage / "policy" / "train_state").mkdir(parents=True)  # the policy checkpoints its history
    state = {"step": 3, "extra": {"history": policy}}
    (stage / "policy" / "train_state" / "state.json").write_text(json.dumps(state))
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(online))
    shutil.copytree(run, tmp_path / "run", dirs_exist_ok=True)
    out = tmp_path / "report.html"
    code = main(
        [
            "report",
            "--run",
            str(tmp_path / "run"),
            "--dataset",
            path,
            "--out",
            str(out),
            "--windows",
            "4",
            "--horizon",
            "3",
            "--context",
            "2",
            "--videos",
            "2",
        ]
    )
    assert code == 0
    page = out.read_text()
    sources = page.split('src="')[1:]
    # world-model and policy curves, return vs env steps, fidelity, 2 GIFs, reconstruction grid
    assert len(sources) == 7 and all(s.startswith("data:image/") for s in sources)
    assert page.count("data:image/gif") == 2
    for heading in (
        "Training curves",
        "Open-loop fidelity",
        "Imagined vs real",
        "Tokenizer reconstructions",
        "Configuration",
    ):
        assert heading in page
    if _chromium() is None:
        pytest.skip("chromium is not installed (CI installs Debian's chromium)")
    assert _console(out) == []
    broken = tmp_path / "broken.html"  # the check would see a broken image
    broken.write_text(
        page.replace('src="data:image/gif;base64,R', 'src="data:image/gif;base64,X', 1)
    )
    assert any("report image failed to load" in line for line in _console(broken))


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval-model", "--run", "RUN", "--horizon", "0"], "must be positive"),
        (["eval-model", "--run", "RUN"], "no held_out.json"),
        (["eval-model", "--run", "MISSING", "--dataset", "DATA"], "has no world_model/"),
        (["eval-model", "--run", "RUN", "--dataset", "DATA", "--context", "20"], "longer than"),
        (["report", "--run", "RUN", "--out", "OUT", "--fidelity", "DATA"], "is not the output"),
        (["bench", "--threads", "0"], "--threads must be >= 1"),
        (["bench", "imagine", "--steps", "10", "--long-steps", "5"], "--long-steps >= --steps"),
    ],
)
def test_bad_input_is_one_line(args, message, static, tmp_path, capsys):
    path, _, run = static
    fake = tmp_path / "fake.json"
    fake.write_text("{}")
    subs = {"RUN": run, "DATA": path, "MISSING": str(tmp_path / "nope"), "OUT": str(tmp_path)}
    args = [subs.get(a, a) for a in args]
    if "--fidelity" in args:
        args[args.index("--fidelity") + 1] = str(fake)
        args[args.index("--out") + 1] = str(tmp_path / "r.html")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
