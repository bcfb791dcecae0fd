"""`tokworld play`: a restored dream continues bit-identically, the WebSocket protocol answers
every message (bad ones with one line, the dream going on), forks come back exactly, tabs dream
apart, the real env stands beside the dream, sessions are recorded as valid datasets that replay
to the same frames, and the page works in a real browser (slow)."""

from __future__ import annotations

import os
import re
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from tokworld.cli import main
from tokworld.data.format import TrajectoryMeta, load_trajectories
from tokworld.data.validate import validate_trajectories
from tokworld.data.windows import RealContext
from tokworld.errors import TokWorldError
from tokworld.imagine import ImaginationEngine
from tokworld.play.controls import controls_for
from tokworld.play.record import replay
from tokworld.play.server import create_app, serving
from tokworld.play.starts import Starts, find_run_data
from tokworld.play.world import PlayConfig
from tokworld.run import load_run

DOCS = Path(__file__).resolve().parents[1] / "docs"
FORWARD, LEFT = 2, 0  # MiniGrid actions


@pytest.fixture(scope="module")
def client(tiny_run, tmp_path_factory):
    """A play app (with the real env beside the dream) on the session's tiny MiniGrid run, which
    finds its data through RUN/pretrain.json."""
    record_dir = tmp_path_factory.mktemp("play") / "sessions"
    cfg = PlayConfig(run=str(tiny_run), real=True, record_dir=str(record_dir))
    with TestClient(create_app(cfg)) as client:
        yield client


def _open(ws) -> tuple[dict, dict]:
    """(hello, first frame) of a new tab."""
    return ws.receive_json(), ws.receive_json()


def _ask(ws, message: dict) -> dict:
    ws.send_json(message)
    return ws.receive_json()


def _alive(ws, action: int) -> dict:
    """Step until the dream is not at an end (where the next step would restart it)."""
    for _ in range(20):
        frame = _ask(ws, {"type": "step", "action": action})
        if not frame["terminated"]:
            return frame
    raise AssertionError("the model ends every step")


def test_a_restored_dream_continues_bit_identically(tiny_run, minigrid_dataset):
    model, tokenizer = load_run(tiny_run)
    engine = ImaginationEngine(model, tokenizer.decode, seed=3)  # sampled: the RNG matters
    with pytest.raises(TokWorldError, match="before snapshot"):
        engine.snapshot()
    context = RealContext(load_trajectories(minigrid_dataset), 3, tokenizer).sample(2)
    engine.start(context)
    for a in range(3):
        engine.step(torch.tensor([a, a + 1]))
    state = engine.snapshot()
    actions = torch.tensor([[2, 0], [1, 2], [2, 2], [0, 1], [2, 2], [1, 0]])

    def continuation():
        return [engine.step(a) for a in actions]

    first = continuation()
    for _ in range(2):  # the snapshot is unchanged by what follows: it restores again
        engine.restore(state)
        again = continuation()
        for x, y in zip(first, again, strict=True):
            assert torch.equal(x.codes, y.codes) and torch.equal(x.frames, y.frames)
            assert torch.equal(x.reward, y.reward) and torch.equal(x.terminated, y.terminated)
    engine.restore(state)
    engine.generator.manual_seed(99)  # without the saved RNG state the dream goes elsewhere
    other = continuation()
    assert any(not torch.equal(x.codes, y.codes) for x, y in zip(first, other, strict=True))
    with pytest.raises(TokWorldError, match="not an imagination snapshot"):
        engine.restore({"cache": None})


def test_hello_names_the_actions_and_a_key_takes_one_step(client):
    with client.websocket_connect("/ws") as ws:
        hello, frame = _open(ws)
        assert hello["env_id"] == "MiniGrid-Empty-5x5-v0" and hello["noop"] is None
        names = {a["name"]: a["key"] for a in hello["actions"]}
        assert names["forward"] == "ArrowUp" and names["left"] == "ArrowLeft"
        assert len(hello["actions"]) == 7 and hello["real"] is True
        assert frame["type"] == "frame" and frame["step"] == 0 and frame["action"] is None
        assert frame["imagined"].startswith("data:image/png;base64,")
        after = _ask(ws, {"type": "step", "action": FORWARD})
        if after["step"] == 0:  # the model ended the episode at once: a new dream began
            after = _ask(ws, {"type": "step", "action": FORWARD})
        assert after["step"] == 1 and after["action_name"] == "forward"
        assert isinstance(after["reward"], float) and isinstance(after["terminated"], bool)


@pytest.mark.parametrize(
    "message, error",
    [
        ({"type": "step", "action": 9}, "unknown action 9: this env has actions 0..6"),
        ({"type": "step", "action": "up"}, "unknown action 'up'"),
        ({"type": "step"}, "unknown action None"),
        ({"type": "jump"}, "unknown message type 'jump'"),
        ({"type": "restore", "name": "nope"}, "no fork named 'nope'"),
        ({"type": "fork", "name": "  "}, "a fork needs a name"),
        ({"type": "sampling", "temperature": 0}, "temperature must be a number > 0"),
        ({"type": "sampling", "temperature": 1, "top_k": 0}, "top-k must be empty or"),
        ({"type": "sampling", "temperature": 1, "greedy": "yes"}, "greedy must be true or"),
        ("not json", "not a JSON message"),
        (b"{}", "messages must be JSON text"),
        ([1, 2], "a message must be a JSON object"),
    ],
)
def test_bad_input_gets_one_line_and_the_dream_goes_on(client, message, error):
    with client.websocket_connect("/ws") as ws:
        _open(ws)
        if isinstance(message, str | bytes):
            (ws.send_text if isinstance(message, str) else ws.send_bytes)(message)
            reply = ws.receive_json()
        else:
            reply = _ask(ws, message)
        assert reply["type"] == "error" and error in reply["message"]
        assert "\n" not in reply["message"]
        assert _ask(ws, {"type": "restart"})["type"] == "frame"


def test_a_fork_comes_back_exactly(client):
    with client.websocket_connect("/ws") as ws:
        _, frame = _open(ws)
        for _ in range(2):
            frame = _alive(ws, FORWARD)
        forked = _ask(ws, {"type": "fork", "name": "before the turn"})
        assert forked["forks"] == ["before the turn"] and forked["imagined"] == frame["imagined"]
        went = [_ask(ws, {"type": "step", "action": a}) for a in (LEFT, FORWARD, FORWARD)]
        for _ in range(2):
            back = _ask(ws, {"type": "restore", "name": "before the turn"})
            assert back["imagined"] == forked["imagined"] and back["step"] == forked["step"]
            assert back["episode"] > forked["episode"]
            again = [_ask(ws, {"type": "step", "action": a}) for a in (LEFT, FORWARD, FORWARD)]
            for x, y in zip(went, again, strict=True):
                assert (x["imagined"], x["reward"]) == (y["imagined"], y["reward"])
                if x["terminated"]:  # the next step begins a new dream from a random start
                    break


def test_every_tab_has_its_own_dream(client):
    with client.websocket_connect("/ws") as one, client.websocket_connect("/ws") as two:
        hello_one, _ = _open(one)
        hello_two, _ = _open(two)
        assert hello_one["session"] != hello_two["session"]
        _ask(one, {"type": "sampling", "temperature": 1.0, "greedy": True})
        steps = [_ask(one, {"type": "step", "action": FORWARD})["step"] for _ in range(3)]
        assert _ask(two, {"type": "fork", "name": "a"})["step"] == 0
        assert _ask(one, {"type": "restore", "name": "a"})["type"] == "error"  # two's fork
        assert max(steps) > 0


def test_the_real_env_stands_beside_the_dream(client):
    with client.websocket_connect("/ws") as ws:
        _, frame = _open(ws)
        real = frame["real"]
        assert real["note"] == "real env at the context's last frame"  # replayed exactly
        assert real["frame"].startswith("data:image/png") and real["diff"].startswith("data:")
        after = _ask(ws, {"type": "step", "action": LEFT})
        assert after["real"]["psnr"] is None or after["real"]["psnr"] > 0


def test_without_a_collection_seed_the_page_says_why_there_is_no_real_env(
    tiny_run, minigrid_dataset, tmp_path
):
    ds = load_trajectories(minigrid_dataset)
    meta = TrajectoryMeta.from_dataset(ds)
    ds.info.description = replace(meta, source={"kind": "import"}).to_json()
    ds.save_to_disk(str(tmp_path / "data"))
    cfg = PlayConfig(
        run=str(tiny_run), dataset=str(tmp_path / "data"), real=True, record_dir=str(tmp_path)
    )
    with TestClient(create_app(cfg)) as client, client.websocket_connect("/ws") as ws:
        _, frame = _open(ws)
        assert frame["real"] == {
            "note": "no real env: the dataset records no collection seed: the real env cannot "
            "be put where the context ends"
        }
        assert _ask(ws, {"type": "step", "action": LEFT})["real"]["note"].startswith("no real")


def test_a_recorded_session_validates_and_replays_to_the_same_frames(client, tiny_run):
    with client.websocket_connect("/ws") as ws:
        _open(ws)
        assert "nothing to record" in _ask(ws, {"type": "record"})["message"]
        _alive(ws, FORWARD)
        _ask(ws, {"type": "fork", "name": "f"})
        _ask(ws, {"type": "sampling", "temperature": 0.7, "top_k": 20})
        for a in (LEFT, FORWARD):
            _ask(ws, {"type": "step", "action": a})
        _ask(ws, {"type": "restore", "name": "f"})
        _ask(ws, {"type": "sampling", "temperature": 1.0, "greedy": True})
        _ask(ws, {"type": "step", "action": FORWARD})
        saved = _ask(ws, {"type": "record"})
    assert saved["type"] == "saved" and Path(saved["gif"]).stat().st_size > 0
    ds = load_trajectories(saved["dataset"])
    validate_trajectories(ds)
    source = TrajectoryMeta.from_dataset(ds).source
    assert source["kind"] == "play" and source["frames"] == "imagined"
    episodes = source["episodes"]
    assert len(episodes) == saved["episodes"] >= 2  # the fork's branch is an episode of its own
    assert any(e["forked_from"] == "f" for e in episodes)
    model, tokenizer = load_run(tiny_run)
    engine = ImaginationEngine(model, tokenizer.decode)
    starts = Starts(find_run_data(tiny_run), 4, tokenizer)
    table = ds.with_format("numpy", dtype=None)
    for i, e in enumerate(episodes):
        rows = table.filter(lambda r, i=i: r["episode_index"] == i)
        frames = replay(engine, starts.window(e["window"]), e, rows["action"])
        assert np.array_equal(frames[:-1], rows["observation"])


def test_a_closed_tab_is_saved(tiny_run, tmp_path):
    cfg = PlayConfig(run=str(tiny_run), record_dir=str(tmp_path / "sessions"))
    app = create_app(cfg)
    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            _open(ws)
            _ask(ws, {"type": "step", "action": FORWARD})
        with client.websocket_connect("/ws") as ws:  # no steps: nothing to save
            _open(ws)
    (saved,) = app.state.player.saved
    validate_trajectories(load_trajectories(saved["dataset"]))


def test_fps_steps_on_ticks_with_the_pressed_action(tiny_run, tmp_path):
    cfg = PlayConfig(run=str(tiny_run), fps=20, record_dir=str(tmp_path))
    with TestClient(create_app(cfg)) as client, client.websocket_connect("/ws") as ws:
        hello, _ = _open(ws)
        assert hello["fps"] == 20
        ws.send_json({"type": "step", "action": LEFT})  # the next tick takes it
        frame = ws.receive_json()
        assert frame["type"] == "frame" and frame["action_name"] == "left"


@pytest.mark.parametrize("missing", ["tokenizer", "data"])
def test_a_broken_run_is_a_message_on_the_page_not_a_dead_server(tiny_run, tmp_path, missing):
    run = tmp_path / "run"
    run.mkdir()
    keep = ["world_model"] + (["tokenizer"] if missing == "data" else ["pretrain.json"])
    for name in keep:
        copy = shutil.copytree if (tiny_run / name).is_dir() else shutil.copy
        copy(tiny_run / name, run / name)
    cfg = PlayConfig(run=str(run), record_dir=str(tmp_path / "sessions"))
    message = "has no tokenizer/" if missing == "tokenizer" else "pass --dataset"
    with TestClient(create_app(cfg)) as client:
        for _ in range(2):  # asked again by the next tab; the server still serves
            with client.websocket_connect("/ws") as ws:
                error = ws.receive_json()
            assert error["type"] == "error" and error["fatal"] and message in error["message"]
            assert client.get("/").status_code == 200


def test_an_online_runs_chunks_are_its_data(tmp_path, minigrid_dataset):
    for chunk in ("chunk_000", "chunk_001"):
        shutil.copytree(minigrid_dataset, tmp_path / "data" / chunk)
    data = find_run_data(tmp_path)
    one = load_trajectories(minigrid_dataset)
    episodes = len(set(one["episode_index"]))
    assert len(data.dataset) == 2 * len(one)
    assert len(set(data.dataset["episode_index"])) == len(data.episode_seeds) == 2 * episodes
    assert data.episode_ordinals == 2 * list(range(episodes))  # each chunk was collected anew
    validate_trajectories(data.dataset)


def test_controls_name_ale_actions_and_give_every_action_a_key():
    controls = controls_for("ALE/Pong-v5", gym.spaces.Discrete(6))
    by_name = {c.name: c for c in controls.actions}
    assert [c.name for c in controls.actions] == [
        "NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"
    ]  # fmt: skip
    assert controls.noop == 0 and by_name["FIRE"].label == "Space"
    assert by_name["RIGHT"].key == "ArrowRight" and by_name["LEFT"].label == "←"
    keys = [c.key for c in controls.actions]
    assert len(set(keys)) == len(keys) and all(keys)
    generic = controls_for("not-an-env", gym.spaces.Discrete(3))
    assert [c.name for c in generic.actions] == ["action 0", "action 1", "action 2"]
    with pytest.raises(TokWorldError, match="needs a Discrete action space"):
        controls_for("Pendulum-v1", gym.spaces.Box(-2, 2, (1,)))


def test_the_command_refuses_bad_flags_and_a_busy_port(tiny_run, capsys):
    assert main(["play", "--run", str(tiny_run), "--fps", "-1"]) == 2
    assert "--fps must be 0 or" in capsys.readouterr().err
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["play", "--run", str(tiny_run), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow  # a real server and headless Chromium
def test_the_page_plays_forks_restores_and_records_in_a_browser(tiny_run, tmp_path):
    if _chromium() is None:
        pytest.skip("chromium is not installed (CI installs Debian's chromium)")
    from playwright.sync_api import expect, sync_playwright

    cfg = PlayConfig(run=str(tiny_run), port=0, real=True, record_dir=str(tmp_path))
    with serving(cfg) as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1040, "height": 700})
        page.set_default_timeout(30_000)  # 2 shared cores: a step can wait its turn
        expect.set_options(timeout=30_000)
        page.goto(url)
        image, step = page.locator("#imagined"), page.locator("#step")
        expect(step).to_have_text("0")
        expect(page.locator("button[data-action]")).to_have_count(7)
        page.locator("#greedy").check()
        page.locator("#apply-sampling").click()
        expect(page.locator("#message")).to_contain_text("greedy")
        first = image.get_attribute("src")
        page.keyboard.press("ArrowUp")  # forward: the agent walks, the frame changes
        expect(image).not_to_have_attribute("src", first)
        expect(page.locator("#latency")).to_contain_text("ms")
        page.locator("#fork-name").fill("here")
        page.locator("#fork").click()
        restore = page.locator("button[data-fork='here']")
        expect(restore).to_be_visible()
        forked, at = image.get_attribute("src"), step.inner_text()
        body = page.locator("body")
        for _ in range(2):  # every frame the page shows is counted on its body
            frames = int(body.get_attribute("data-frames"))
            page.keyboard.press("ArrowLeft")
            expect(body).to_have_attribute("data-frames", str(frames + 1))
        expect(step).not_to_have_text(at)
        restore.click()
        expect(page.locator("#message")).to_contain_text("back at fork 'here'")
        expect(image).to_have_attribute("src", forked)
        expect(step).to_have_text(at)
        page.locator("button[data-action='2']").click()
        expect(page.locator("#action")).to_have_text("forward")
        page.locator("#record").click()
        expect(page.locator("#saved")).to_contain_text(re.compile(r"saved \d+ episodes"))
        expect(page.locator("#psnr")).not_to_be_empty()
        page.screenshot(path=str(tmp_path / "play.png"))
        if os.environ.get("TOKWORLD_UPDATE_DOCS"):  # refresh the README's picture
            shutil.copy(tmp_path / "play.png", DOCS / "play.png")
        browser.close()
    assert (tmp_path / "play.png").read_bytes().startswith(b"\x89PNG")
    validate_trajectories(load_trajectories(str(next(tmp_path.glob("session-*")) / "dataset")))
