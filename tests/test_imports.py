"""Imports of datasets recorded elsewhere: Minari, Hub/parquet layouts, info and card."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import datasets
import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from minari_recording import record_minari

from tokworld.cli import main
from tokworld.data.convert import FrameConverter
from tokworld.data.format import TrajectoryMeta, load_trajectories
from tokworld.data.hub import dataset_card
from tokworld.data.importers import resolve_dataset_spec
from tokworld.data.validate import validate_trajectories
from tokworld.errors import TokWorldError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:minari.utils")

# MiniGrid-Empty-5x5 starts at (1, 1) facing east, the goal is at (3, 3): forward, forward,
# turn right, forward, forward reaches it.
TO_GOAL = [2, 2, 1, 2, 2]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code: int, err: str, out_dir: Path, words: str) -> None:
    """Exit 2, one stderr line naming the problem, nothing left at or beside `out_dir`."""
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert words in err
    assert not out_dir.exists()
    assert not list(out_dir.parent.glob(f".{out_dir.name}.partial-*"))


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """Minari and datasets caches live in the test's tmp dir; nothing reaches the network."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.fixture(scope="module")
def minari_pixels(tmp_path_factory):
    """A Minari dataset of MiniGrid frames written by Minari's DataCollector, and what the env
    gave: per episode (frames, actions, rewards, terminations, truncations)."""
    pytest.importorskip("minari")
    from tokworld.envs import make_env

    root = tmp_path_factory.mktemp("minari")
    env = make_env("MiniGrid-Empty-5x5-v0", frame_size=40, max_episode_steps=8)

    def act(episode: int, t: int):
        return TO_GOAL[t] if episode != 1 and t < len(TO_GOAL) else None

    recorded = record_minari(env, root, "tokworld-test/minigrid-v0", act=act,
                             algorithm="scripted+random", jpeg_encoding=False)  # fmt: skip
    return root / "tokworld-test" / "minigrid-v0", recorded


def test_minari_import_keeps_steps_actions_rewards_and_ends(minari_pixels, tmp_path, capsys):
    path, recorded = minari_pixels
    out = tmp_path / "imported"
    code, stdout, err = run_cli(
        ["import", f"minari:{path}", "--out", out, "--frame-size", 40], capsys
    )
    assert code == 0, err
    assert json.loads(stdout)["steps"] == sum(len(ep["actions"]) for ep in recorded)
    ds = load_trajectories(str(out))
    validate_trajectories(ds)
    rows = ds.with_format("numpy")[:]
    for i, ep in enumerate(recorded):
        mine = rows["episode_index"] == i
        np.testing.assert_array_equal(rows["observation"][mine], ep["obs"][:-1])
        np.testing.assert_array_equal(rows["action"][mine], ep["actions"])
        np.testing.assert_array_equal(rows["reward"][mine], ep["rewards"].astype(np.float32))
        np.testing.assert_array_equal(rows["terminated"][mine], ep["term"])
        np.testing.assert_array_equal(rows["truncated"][mine], ep["trunc"])
    assert rows["terminated"].sum() == 2 and rows["truncated"].sum() == 1
    meta = TrajectoryMeta.from_dataset(ds)
    assert meta.env_id == "MiniGrid-Empty-5x5-v0"
    assert meta.action_space == {"type": "Discrete", "n": 7, "start": 0}
    assert meta.source["spec"] == f"minari:{path}"
    assert meta.source["policy"] == "scripted+random"
    assert meta.source["conversion"] == "none"


def test_pretrain_takes_a_minari_spec_and_keeps_its_provenance(
    minari_pixels, tmp_path, monkeypatch
):
    path, recorded = minari_pixels
    monkeypatch.setenv("TOKWORLD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["pretrain", "--dataset", f"minari:{path}", "--out", str(out), "--preset", "tiny",
            "--tokenizer-steps", "2", "--world-model-steps", "2", "--batch-size", "2",
            "--eval-fraction", "0"]  # fmt: skip
    assert main(argv) == 0
    dataset = json.loads((out / "metrics.json").read_text())["dataset"]
    assert dataset["path"] == f"minari:{path}"
    assert dataset["steps"] == sum(len(ep["actions"]) for ep in recorded)
    assert dataset["source"]["spec"] == f"minari:{path}"
    assert dataset["source"]["conversion"] == "resized 40x40 -> 64x64 (cv2.INTER_AREA)"
    assert (out / "world_model" / "model.safetensors").exists()


def test_minari_frames_are_resized_with_inter_area(minari_pixels, tmp_path):
    path, recorded = minari_pixels
    spec = f"minari:{path}"
    first = resolve_dataset_spec(spec, tmp_path / "cache", frame_size=16)
    assert resolve_dataset_spec(spec, tmp_path / "cache", frame_size=16) == first  # cached
    ds = load_trajectories(first).with_format("numpy")
    expected = cv2.resize(recorded[0]["obs"][1], (16, 16), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(ds[1]["observation"], expected)
    assert "resized 40x40 -> 16x16" in TrajectoryMeta.from_dataset(ds).source["conversion"]


def test_minari_vector_observations_are_imported_by_id(tmp_path, capsys):
    minari = pytest.importorskip("minari")
    collector = minari.DataCollector(gym.make("CartPole-v1", max_episode_steps=5))
    collector.reset(seed=0)
    for _ in range(5):
        collector.step(collector.action_space.sample())
    collector.create_dataset("tokworld-test/cartpole-v0")
    capsys.readouterr()
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        ["import", "minari:tokworld-test/cartpole-v0", "--out", out], capsys
    )
    assert code == 0, err
    info = json.loads(stdout)
    assert (info["observation"], info["observation_shape"], info["steps"]) == ("vector", [4], 5)
    validate_trajectories(load_trajectories(str(out)))


def jat_parquet(path: Path, lengths, seed: int = 0, rewards_short_in: int | None = None):
    """A parquet file in the jat-dataset layout: one row per episode, 4x84x84 uint8 stacks."""
    rng = np.random.default_rng(seed)
    episodes = [rng.integers(0, 256, (n, 4, 84, 84), dtype=np.uint8) for n in lengths]
    actions = [rng.integers(0, 6, n) for n in lengths]
    rewards = [rng.normal(size=n).astype(np.float32) for n in lengths]
    if rewards_short_in is not None:
        rewards[rewards_short_in] = rewards[rewards_short_in][:-1]
    frames_type = pa.list_(pa.list_(pa.list_(pa.list_(pa.uint8()))))
    table = pa.table(
        {
            "image_observations": pa.array([e.tolist() for e in episodes], type=frames_type),
            "discrete_actions": pa.array([a.tolist() for a in actions], type=pa.list_(pa.int64())),
            "rewards": pa.array([r.tolist() for r in rewards], type=pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, path)
    return episodes, actions, rewards


JAT_MAP = "observation=image_observations,action=discrete_actions,reward=rewards"


def test_jat_layout_imports_with_frame_conversion(tmp_path, capsys):
    src = tmp_path / "jat.parquet"
    episodes, actions, rewards = jat_parquet(src, [5, 3, 4])
    out = tmp_path / "out"
    argv = ["import", f"hf:{src}", "--map", JAT_MAP, "--out", out, "--frame-size", 64]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert json.loads(stdout)["episodes"] == 3
    ds = load_trajectories(str(out))
    validate_trajectories(ds)
    assert len(ds) == 12
    rows = ds.with_format("numpy")[:]
    np.testing.assert_array_equal(rows["action"], np.concatenate(actions))
    np.testing.assert_array_equal(rows["reward"], np.concatenate(rewards))
    assert rows["truncated"].sum() == 3 and not rows["terminated"].any()
    gray = cv2.resize(episodes[1][2][-1], (64, 64), interpolation=cv2.INTER_AREA)
    frame = rows["observation"][5 + 2]
    assert frame.shape == (64, 64, 3)
    for channel in range(3):
        np.testing.assert_array_equal(frame[..., channel], gray)
    meta = TrajectoryMeta.from_dataset(ds)
    assert meta.action_space == {
        "type": "Discrete",
        "n": int(max(map(max, actions))) + 1,
        "start": 0,
    }
    assert meta.source["layout"] == "one row per episode"
    assert meta.source["conversion"] == (
        "last frame of each 4-frame stack; grayscale replicated to RGB; "
        "resized 84x84 -> 64x64 (cv2.INTER_AREA)"
    )


def test_step_layout_uses_episode_column_and_end_flags(tmp_path):
    from tokworld.data.from_hf import import_hf

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    table = pa.table(
        {
            "img": pa.array([f.tolist() for f in frames]),  # int64 pixels, accepted
            "act": pa.array([[0.5, -1.0]] * 7),
            "rew": pa.array(np.arange(7, dtype=np.float64)),
            "done": pa.array([False, False, True, False, False, False, False]),
            "ep": pa.array([0, 0, 0, 1, 1, 2, 2]),
        }
    )
    pq.write_table(table, tmp_path / "steps.parquet")
    box = {"type": "Box", "low": [-1.0, -1.0], "high": [1.0, 1.0]}
    mapping = "observation=img,action=act,reward=rew,terminated=done,episode=ep"
    ds = import_hf(
        str(tmp_path / "steps.parquet"),
        tmp_path / "out",
        mapping,
        frame_size=32,
        action_space=json.dumps(box),
        progress=False,
    )
    validate_trajectories(ds)
    rows = ds.with_format("numpy")[:]
    np.testing.assert_array_equal(rows["episode_index"], [0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(rows["terminated"], [0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(rows["truncated"], [0, 0, 0, 0, 1, 0, 1])
    np.testing.assert_array_equal(rows["observation"], frames)
    np.testing.assert_array_equal(rows["action"], [[0.5, -1.0]] * 7)


def test_step_layout_decodes_grayscale_images(tmp_path):
    from PIL import Image

    from tokworld.data.from_hf import import_hf

    frames = np.random.default_rng(2).integers(0, 256, (5, 20, 20), dtype=np.uint8)
    features = datasets.Features(
        {
            "pixels": datasets.Image(),
            "a": datasets.Value("int32"),
            "r": datasets.Value("float32"),
            "cut": datasets.Value("bool"),
        }
    )
    source = datasets.Dataset.from_dict(
        {
            "pixels": [Image.fromarray(f) for f in frames],
            "a": [0, 1, 2, 1, 0],
            "r": [0.0, 1.0, 0.0, 0.0, 2.0],
            "cut": [False, True, False, False, False],
        },
        features=features,
    )
    source.to_parquet(tmp_path / "steps.parquet")
    mapping = {"observation": "pixels", "action": "a", "reward": "r", "truncated": "cut"}
    ds = import_hf(
        str(tmp_path / "steps.parquet"),
        tmp_path / "out",
        mapping,
        frame_size=20,
        streaming=True,
        progress=False,
    )
    rows = ds.with_format("numpy")[:]
    np.testing.assert_array_equal(rows["episode_index"], [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(rows["observation"], np.repeat(frames[..., None], 3, axis=3))
    assert TrajectoryMeta.from_dataset(ds).action_space["n"] == 3


def test_hf_map_naming_a_missing_column_is_refused(tmp_path, capsys):
    jat_parquet(tmp_path / "jat.parquet", [2])
    out = tmp_path / "out"
    argv = [
        "import",
        f"hf:{tmp_path / 'jat.parquet'}",
        "--out",
        out,
        "--map",
        "observation=image_observations,action=nope,reward=rewards",
    ]
    code, _, err = run_cli(argv, capsys)
    assert_clean_error(code, err, out, "no column 'nope'")


def test_hf_episode_with_mismatched_lengths_is_refused(tmp_path, capsys):
    jat_parquet(tmp_path / "jat.parquet", [3, 4, 2], rewards_short_in=1)
    out = tmp_path / "out"
    argv = ["import", f"hf:{tmp_path / 'jat.parquet'}", "--map", JAT_MAP, "--out", out]
    code, _, err = run_cli(argv, capsys)
    assert_clean_error(code, err, out, "row 1: 4 actions but 3 rewards")


def test_unknown_spec_prefix_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["import", "foo:bar", "--out", out], capsys)
    assert_clean_error(code, err, out, "unknown dataset spec prefix 'foo'")
    code, _, err = run_cli(["import", "minari:x-v0", "--out", out, "--streaming"], capsys)
    assert_clean_error(code, err, out, "--streaming applies to hf: imports only")
    with pytest.raises(TokWorldError, match="unknown dataset spec prefix"):
        resolve_dataset_spec("foo:bar", tmp_path / "cache")
    assert resolve_dataset_spec("me/some-dataset", tmp_path / "cache") == "me/some-dataset"


def test_frame_converter_layouts():
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    for shape, source in [
        ((12, 10), gray),
        ((12, 10, 1), gray[..., None]),
        ((2, 12, 10), np.stack([gray * 0, gray])),
    ]:
        converted = FrameConverter(shape, 6)(source)
        expected = cv2.resize(gray, (6, 6), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(converted, np.repeat(expected[..., None], 3, axis=2))
    assert FrameConverter((6, 6, 3), 6).description == "none"
    with pytest.raises(TokWorldError, match="not frames"):
        FrameConverter((17,), 6)
    with pytest.raises(TokWorldError, match="frame shapes differ"):
        FrameConverter((6, 6, 3), 6)(np.zeros((5, 6, 3), np.uint8))


def test_data_info_and_card(tmp_path, capsys):
    src = tmp_path / "jat.parquet"
    _, _, rewards = jat_parquet(src, [2, 3])
    out = tmp_path / "out"
    assert main(["import", f"hf:{src}", "--map", JAT_MAP, "--out", str(out)]) == 0
    capsys.readouterr()
    code, stdout, err = run_cli(["data", "info", out], capsys)
    assert code == 0, err
    info = json.loads(stdout)
    returns = [float(np.sum(r, dtype=np.float64)) for r in rewards]
    assert (info["episodes"], info["steps"], info["frame_shape"]) == (2, 5, [64, 64, 3])
    assert info["returns"]["mean"] == pytest.approx(np.mean(returns), abs=1e-5)
    assert info["returns"]["max"] == pytest.approx(max(returns), abs=1e-5)
    assert info["source"]["spec"] == f"hf:{src}"

    card = dataset_card(load_trajectories(str(out)), "me/jat-mini")
    text = card.content
    for words in [
        "# me/jat-mini",
        "| `observation` | `Array3D(64, 64, 3) uint8`",
        "## Source",
        "## Collection policy",
        f"hf:{src}",
        "**Environment**: `unknown`",
    ]:
        assert words in text
    from huggingface_hub import DatasetCard

    reread = DatasetCard(text).data
    assert "tokworld" in reread.tags
    assert reread["tokworld"]["source"]["conversion"].startswith("last frame of each 4-frame")

    # A pushed repo is parquet plus this card: loading it reads the metadata back from the card.
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    load_trajectories(str(out)).to_parquet(repo / "data" / "train-00000-of-00001.parquet")
    assert not TrajectoryMeta.from_dataset(load_trajectories(str(repo))).source
    card.save(repo / "README.md")
    meta = TrajectoryMeta.from_dataset(load_trajectories(str(repo)))
    assert meta.source["spec"] == f"hf:{src}"
    assert meta == TrajectoryMeta.from_dataset(load_trajectories(str(out)))
