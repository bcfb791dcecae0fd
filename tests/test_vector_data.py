"""Vector observations in datasets: Minari imports, collect --obs, data info, card, checks."""

from __future__ import annotations

import json

import datasets
import gymnasium as gym
import numpy as np
import pytest
from minari_recording import record_minari

from tokworld.cli import main
from tokworld.data.collect import collect
from tokworld.data.format import (
    TrajectoryMeta,
    load_trajectories,
    trajectory_row,
    write_trajectories,
)
from tokworld.data.from_minari import import_minari, observation_converter
from tokworld.data.hub import dataset_card
from tokworld.data.importers import resolve_dataset_spec
from tokworld.data.mixture import cache_dir
from tokworld.data.validate import validate_trajectories
from tokworld.errors import TokWorldError
from tokworld.tokenizer.codecs import space_to_dict

minari = pytest.importorskip("minari")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:minari.utils")

PENDULUM_SPACE = {"type": "Box", "low": [-1.0, -1.0, -8.0], "high": [1.0, 1.0, 8.0]}


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """Minari and datasets caches live in the test's tmp dir; nothing reaches the network."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.fixture(scope="module", params=["Pendulum-v1", "CartPole-v1"])
def minari_vectors(request, tmp_path_factory):
    """A local Minari dataset of a flat Box env (continuous or discrete actions)."""
    env_id = request.param
    root = tmp_path_factory.mktemp("minari")
    env = gym.make(env_id, max_episode_steps=12)
    name = env_id.split("-")[0].lower()
    recorded = record_minari(env, root, f"tokworld-test/{name}-v0")
    return env_id, root / "tokworld-test" / f"{name}-v0", recorded


def test_minari_vectors_import_the_recorded_observations(minari_vectors, tmp_path):
    env_id, path, recorded = minari_vectors
    ds = import_minari(str(path), tmp_path / "out", progress=False)
    validate_trajectories(ds)
    rows = ds.with_format("numpy")[:]
    assert len(ds) == sum(len(ep["actions"]) for ep in recorded)
    for i, ep in enumerate(recorded):
        mine = rows["episode_index"] == i
        assert rows["observation"][mine].dtype == np.float32
        np.testing.assert_array_equal(rows["observation"][mine], ep["obs"][:-1])
        np.testing.assert_array_equal(rows["action"][mine], ep["actions"])
        np.testing.assert_array_equal(rows["reward"][mine], ep["rewards"].astype(np.float32))
        np.testing.assert_array_equal(rows["terminated"][mine], ep["term"])
    meta = TrajectoryMeta.from_dataset(ds)
    space = gym.make(env_id).observation_space
    assert (meta.env_id, meta.observation, meta.frame_size) == (env_id, "vector", 0)
    assert meta.observation_shape == space.shape
    assert meta.observation_space == space_to_dict(space)
    assert meta.source["source_observation_shape"] == list(space.shape)
    assert meta.source["conversion"] == "none"
    assert meta.source["policy"] == "random"


def test_a_minari_vector_spec_resolves_to_a_vector_dataset(minari_vectors, tmp_path):
    _, path, recorded = minari_vectors
    spec = f"minari:{path}"
    first = resolve_dataset_spec(spec, tmp_path / "cache")
    assert resolve_dataset_spec(spec, tmp_path / "cache") == first  # cached
    ds = load_trajectories(first)
    assert TrajectoryMeta.from_dataset(ds).observation == "vector"
    first_obs = np.asarray(ds.with_format("numpy")[0]["observation"])
    np.testing.assert_array_equal(first_obs, recorded[0]["obs"][0])


def test_minari_dict_observations_are_refused_in_one_line(tmp_path, capsys):
    minigrid = gym.make("MiniGrid-Empty-5x5-v0", max_episode_steps=4)
    # MiniGrid's own "mission" text space has no Minari serialization: keep image + direction.
    env = gym.wrappers.FilterObservation(minigrid, ["image", "direction"])
    record_minari(env, tmp_path / "minari", "tokworld-test/minigrid-dict-v0", episodes=1)
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["import", "minari:tokworld-test/minigrid-dict-v0", "--out", out], capsys
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "Dict observations are not supported" in err
    assert "tokworld-test/minigrid-dict-v0" in err and "'direction': Discrete(4)" in err
    assert not out.exists()


def test_non_flat_non_image_observations_are_refused():
    with pytest.raises(TokWorldError, match=r"Box\(3, 4\) float32: neither frames nor a flat"):
        observation_converter(gym.spaces.Box(0, 1, (3, 4)), "grid-v0", 64)
    converter = observation_converter(gym.spaces.Box(-1, 1, (5,), np.float64), "x-v0", 64)
    assert converter.description == "float64 -> float32"
    assert converter(np.arange(5.0)).dtype == np.float32


@pytest.mark.filterwarnings("ignore::UserWarning:minari")  # nan is outside the space
def test_a_minari_nan_observation_is_refused_naming_episode_step_and_dimension(tmp_path):
    env = gym.make("Pendulum-v1", max_episode_steps=4)
    seen = []

    def poison(obs):
        seen.append(obs)
        return np.array([obs[0], np.nan, obs[2]], np.float32) if len(seen) == 3 else obs

    nan_env = gym.wrappers.TransformObservation(env, poison, env.observation_space)
    record_minari(nan_env, tmp_path / "minari", "tokworld-test/pendulum-nan-v0", episodes=1)
    out = tmp_path / "out"
    with pytest.raises(TokWorldError, match="episode 0, step 2: observation dimension 1 is nan"):
        import_minari("tokworld-test/pendulum-nan-v0", out, progress=False)
    assert not out.exists()


def test_collect_auto_gives_vectors_and_frames_gives_frames(tmp_path):
    auto = collect("Pendulum-v1", 12, tmp_path / "auto", progress=False, observation="auto")
    ds = load_trajectories(auto.out)
    validate_trajectories(ds)
    meta = TrajectoryMeta.from_dataset(ds)
    assert (meta.observation, meta.observation_shape) == ("vector", (3,))
    assert meta.observation_space == PENDULUM_SPACE
    assert np.asarray(ds.with_format("numpy")[:]["observation"]).shape == (12, 3)

    frames = collect(
        "Pendulum-v1", 12, tmp_path / "frames", frame_size=16, progress=False, observation="frames"
    )
    ds = load_trajectories(frames.out)
    validate_trajectories(ds)
    assert TrajectoryMeta.from_dataset(ds).observation == "frames"
    assert ds.features["observation"].shape == (16, 16, 3)


def test_cli_collect_obs_vector_and_data_info(tmp_path, capsys):
    out = tmp_path / "cartpole"
    argv = ["collect", "--env", "CartPole-v1", "--steps", 15, "--out", out, "--obs", "vector"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert json.loads(stdout)["steps"] == 15
    ds = load_trajectories(str(out))
    validate_trajectories(ds)
    assert ds.features["observation"] == datasets.List(datasets.Value("float32"), length=4)

    code, stdout, err = run_cli(["data", "info", out], capsys)
    assert code == 0, err
    info = json.loads(stdout)
    assert (info["observation"], info["observation_shape"]) == ("vector", [4])
    assert "frame_shape" not in info
    assert (info["steps"], info["action_space"]["type"]) == (15, "Discrete")

    with pytest.raises(SystemExit):
        main([str(a) for a in argv[:-1]] + ["pixels"])
    assert "invalid choice: 'pixels'" in capsys.readouterr().err


def test_data_info_reports_frames_too(tmp_path, capsys):
    out = tmp_path / "frames"
    collect("CartPole-v1", 5, out, frame_size=16, progress=False, observation="frames")
    code, stdout, err = run_cli(["data", "info", out], capsys)
    assert code == 0, err
    info = json.loads(stdout)
    assert (info["observation"], info["observation_shape"]) == ("frames", [16, 16, 3])
    assert info["frame_shape"] == [16, 16, 3]


def test_the_card_of_a_vector_dataset_describes_vectors(tmp_path):
    summary = collect("Pendulum-v1", 10, tmp_path / "p", progress=False, observation="vector")
    ds = load_trajectories(summary.out)
    text = dataset_card(ds, "me/pendulum-random").content
    for words in [
        "# me/pendulum-random",
        "**Environment**: `Pendulum-v1`",
        f"**Observations**: float32 vectors of 3 dimensions, space `{json.dumps(PENDULUM_SPACE)}`",
        "| `observation` | `List(float32, length=3)` | the observation vector seen at this step",
        "Row t holds the observation vector seen at step t",
    ]:
        assert words in text
    for frame_words in ["Frames", "uint8", "frame seen"]:
        assert frame_words not in text

    # A pushed repo is parquet plus this card: the vector metadata comes back from the card.
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    ds.to_parquet(repo / "data" / "train-00000-of-00001.parquet")
    dataset_card(ds, "me/pendulum-random").save(repo / "README.md")
    pushed = load_trajectories(str(repo))
    validate_trajectories(pushed)
    assert TrajectoryMeta.from_dataset(pushed) == TrajectoryMeta.from_dataset(ds)


def test_a_nan_vector_observation_is_refused_naming_row_and_dimension(tmp_path):
    space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action = {"type": "Discrete", "n": 2, "start": 0}
    meta = TrajectoryMeta("Test-v0", action, 0, observation_space=space_to_dict(space))
    observations = np.zeros((6, 3), np.float32)
    observations[4, 2] = np.nan

    def rows():
        for t, obs in enumerate(observations):
            yield trajectory_row(0, t, obs, 0, 0.0, False, False, t == 5)

    ds = write_trajectories(rows, tmp_path / "nan", meta, (3,))
    with pytest.raises(TokWorldError, match="row 4, dimension 2 is nan") as error:
        validate_trajectories(ds)
    assert len(str(error.value).splitlines()) == 1


def test_a_minari_vector_dataset_pretrains_imagines_and_finetunes_end_to_end(
    minari_vectors, tmp_path, capsys, monkeypatch
):
    env_id, path, _ = minari_vectors
    monkeypatch.setenv("TOKWORLD_CACHE", str(tmp_path / "cache"))
    run, imagined, tuned = tmp_path / "run", tmp_path / "imagined", tmp_path / "tuned"
    pretrain = ["pretrain", "--dataset", f"minari:{path}", "--out", run, "--preset", "tiny"]
    pretrain += ["--world-model-steps", 4, "--batch-size", 4, "--eval-every", 0]
    assert run_cli(pretrain, capsys)[0] == 0
    assert json.loads((run / "tokenizer" / "config.json").read_text())["model_type"] == (
        "vector_codec"
    )
    data = resolve_dataset_spec(f"minari:{path}", cache_dir())  # pretrain converted it there
    imagine = ["imagine", "--run", run, "--dataset", data, "--out", imagined]
    imagine += ["--episodes", 2, "--steps", 5, "--context", 2]
    assert run_cli(imagine, capsys)[0] == 0
    ds = load_trajectories(str(imagined / "dataset"))
    validate_trajectories(ds)
    dims = {"Pendulum-v1": 3, "CartPole-v1": 4}[env_id]
    assert TrajectoryMeta.from_dataset(ds).observation_shape == (dims,)
    finetune = ["finetune", "--run", run, "--env", env_id, "--out", tuned, "--env-steps", 60]
    finetune += ["--initial-steps", 40, "--steps-per-epoch", 20, "--world-model-steps", 2]
    finetune += ["--policy-steps", 2, "--batch-size", 4, "--horizon", 3, "--context", 2]
    finetune += ["--eval-episodes", 2]
    code, out, err = run_cli(finetune, capsys)
    assert code == 0, err
    metrics = json.loads((tuned / "metrics.json").read_text())
    assert [p["env_steps"] for p in metrics["learning_curve"]] == [40, 60]
    assert (tuned / "policy" / "model.safetensors").exists()
