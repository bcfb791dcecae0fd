"""CUDA graphs in imagination: replay gives what eager gives, one graph per token count, and
asking for graphs where they cannot run is one error. The replay tests need a CUDA device (run
them there with `pytest --noconftest tests/test_cuda_graph.py`); the errors are checked here."""

from __future__ import annotations

import gc
import weakref

import gymnasium as gym
import pytest
import torch

from tokworld.config import TokWorldConfig
from tokworld.cuda_graph import CudaGraphed
from tokworld.errors import TokWorldError
from tokworld.eval.bench_imagine import _graphs_agree, build, main, random_context
from tokworld.imagine import ImaginationEngine
from tokworld.model import TokWorldModel
from tokworld.run import check_device
from tokworld.tokenizer.codecs import ActionCodec, RewardCodec
from tokworld.tokenizer.vocab import Vocabulary

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
MODES = ("token", "parallel", "block")


def test_graphs_on_a_cpu_model_are_one_error():
    model, _ = build("tiny")
    with pytest.raises(TokWorldError, match="CUDA graphs need a CUDA device; the model is on cpu"):
        ImaginationEngine(model, cuda_graphs=True)
    with pytest.raises(TokWorldError, match="torch.compile or CUDA graphs"):
        ImaginationEngine(model, compile=True, cuda_graphs=True)


def test_bench_with_graphs_on_cpu_is_one_line():
    with pytest.raises(SystemExit, match="^error: CUDA graphs need a CUDA device"):
        main(["--preset", "tiny", "--device", "cpu", "--cuda-graphs"])
    with pytest.raises(SystemExit, match="^error: choose torch.compile or CUDA graphs"):
        main(["--preset", "tiny", "--device", "cpu", "--cuda-graphs", "--compile"])


@needs_cuda
def test_a_graphed_function_replays_new_inputs_into_fresh_outputs():
    calls = []

    def double(x):
        calls.append(1)
        return x * 2

    graphed = CudaGraphed(double)
    first = graphed(torch.ones(3, device="cuda"))
    second = graphed(torch.full((3,), 5.0, device="cuda"))
    assert torch.equal(first, torch.full((3,), 2.0, device="cuda"))  # not overwritten
    assert torch.equal(second, torch.full((3,), 10.0, device="cuda"))
    assert len(calls) == graphed.warmup + 1  # warm-ups and the capture; replays call nothing
    graphed(torch.ones(4, device="cuda"))
    assert len(graphed.graphs) == 2


@needs_cuda
@pytest.mark.parametrize("mode", MODES)
def test_graphed_imagination_matches_eager(mode):
    model, tokenizer = build("tiny", device="cuda", frame_decoding=mode)
    actions = torch.randint(0, 4, (12, 3), device="cuda")
    agreement = _graphs_agree(model, tokenizer, 3, 4, actions)
    assert agreement["tokens_equal"]
    assert agreement["frames_max_abs_diff"] <= 1e-6


@needs_cuda
def test_graphed_imagination_of_a_vector_model_with_box_actions_matches_eager():
    # Per-position observation codes (the vector codec's layout) and Box actions, on the GPU:
    # what planning a Pendulum run does.
    action = ActionCodec.from_space(gym.spaces.Box(-2.0, 2.0, (1,)), bins=8)
    vocab = Vocabulary(3 * 16, 3, action, RewardCodec("symlog"), per_position_codes=True)
    torch.manual_seed(0)
    config = TokWorldConfig.preset("tiny", vocab, frame_decoding="parallel")
    model = TokWorldModel(config).to("cuda").eval()
    context = {
        "codes": torch.randint(0, 16, (4, 3, 3)) + torch.arange(3) * 16,
        "action": torch.rand(4, 3, 1) * 4 - 2,
        "reward": torch.zeros(4, 3),
        "terminated": torch.zeros(4, 3, dtype=torch.bool),
    }
    actions = torch.rand(6, 4, 1, device="cuda") * 4 - 2
    rollouts = []
    for graphs in (False, True):
        engine = ImaginationEngine(model, seed=1, cuda_graphs=graphs)
        engine.start(context)
        rollouts.append(torch.stack([engine.step(a).codes for a in actions]))
    assert torch.equal(rollouts[0], rollouts[1])


@needs_cuda
@pytest.mark.parametrize("mode", MODES)
def test_one_graph_per_token_count_kept_across_starts(mode):
    model, _ = build("tiny", device="cuda", frame_decoding=mode)
    engine = ImaginationEngine(model, cuda_graphs=True)
    action = torch.zeros(3, dtype=torch.long, device="cuda")
    seen = []
    for _ in range(2):  # the second start reuses the ring, and with it the graphs
        engine.start(random_context(model, 3, 4))
        for _ in range(4):
            engine.step(action)
        ((ring, graphed),) = engine.graphed.values()
        # parallel: the step after a start, then the later ones; block: one group every step
        assert ring is engine.cache and len(graphed.graphs) == (1 if mode == "block" else 2)
        seen.append(graphed)
    assert seen[0] is seen[1]
    engine.restore(engine.snapshot())  # a restored ring is a copy: its graphs are captured anew
    engine.step(action)
    ((ring, graphed),) = engine.graphed.values()
    # A token step feeds the action with its last token, then one token at a time: 2 shapes.
    assert ring is engine.cache and graphed is not seen[0]
    assert len(graphed.graphs) == (mode == "token") + 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
@pytest.mark.parametrize(
    "args, message",
    [
        (["imagine", "--run", "r", "--dataset", "d", "--out", "o", "--cuda-graphs"],
         "CUDA graphs need a CUDA device; the model is on cpu"),
        (["finetune", "--env", "CartPole-v1", "--env-steps", "10", "--out", "o", "--cuda-graphs"],
         "CUDA graphs need a CUDA device; the model is on cpu"),
        (["imagine", "--run", "r", "--dataset", "d", "--out", "o", "--cuda-graphs", "--compile"],
         "choose torch.compile or CUDA graphs"),
        (["eval", "--run", "r", "--env", "Pendulum-v1", "--json", "o", "--plan",
          "--plan-cuda-graphs"], "CUDA graphs need a CUDA device; the model is on cpu"),
        (["eval", "--run", "r", "--env", "Pendulum-v1", "--json", "o", "--plan", "--device",
          "cuda"], "device 'cuda': torch sees no CUDA device here"),
        (["imagine", "--run", "r", "--dataset", "d", "--out", "o", "--device", "cuda"],
         "device 'cuda': torch sees no CUDA device here"),
        (["imagine", "--run", "r", "--dataset", "d", "--out", "o", "--device", "gpu0"],
         "unknown device 'gpu0'"),
        (["finetune", "--env", "CartPole-v1", "--env-steps", "10", "--out", "o", "--act", "plan",
          "--plan-cuda-graphs"], "CUDA graphs need a CUDA device; the model is on cpu"),
        (["bench", "imagine", "--device", "cuda", "--json", "o"],
         "device 'cuda': torch sees no CUDA device here"),
    ],
)  # fmt: skip
def test_gpu_settings_without_a_gpu_are_one_line_before_any_work(args, message, tmp_path, capsys):
    from tokworld.cli import main as cli_main  # not at the top: the GPU image lacks its imports

    args = [str(tmp_path / a) if a in ("r", "d", "o") else a for a in args]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_a_gpu_index_beyond_the_count_is_one_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda", 1)
    assert check_device("cuda") == torch.device("cuda")
    with pytest.raises(TokWorldError, match="device 'cuda:2': torch sees 2 CUDA device.s. here"):
        check_device("cuda:2")


@needs_cuda
def test_rings_and_graphs_are_kept_per_batch_size_and_freed_with_the_engine():
    # A planner alternates batch sizes (rows grouped by context length): each size keeps its
    # ring and graphs, and a dropped engine frees them without the cyclic collector.
    model, _ = build("tiny", device="cuda", frame_decoding="parallel")
    engine = ImaginationEngine(model, cuda_graphs=True)
    for batch in (3, 2, 3, 2):
        engine.start(random_context(model, batch, 4))
        for _ in range(3):
            engine.step(torch.zeros(batch, dtype=torch.long, device="cuda"))
    assert sorted(batch for batch, *_ in engine.rings) == [2, 3]
    assert [len(graphed.graphs) for _, graphed in engine.graphed.values()] == [2, 2]
    ring = weakref.ref(engine.cache)
    gc.disable()
    try:
        del engine
        assert ring() is None
    finally:
        gc.enable()
