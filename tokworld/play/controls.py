"""The actions a player can take, with their names and keys.

Names come from the env where it can be made: ALE's action meanings
(`env.unwrapped.get_action_meanings()`), MiniGrid's named actions (`env.unwrapped.actions`);
otherwise `action 0`, `action 1`, ... Movement uses the arrow keys, fire and toggle the space
bar; every other action gets a free letter or digit. Keys are `KeyboardEvent.key` values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import gymnasium as gym

from tokworld.envs import make_env
from tokworld.errors import TokWorldError

# Action name -> key, for the names ALE and MiniGrid use.
NAMED_KEYS = {
    "NOOP": "n",
    "FIRE": " ",
    "UP": "ArrowUp",
    "RIGHT": "ArrowRight",
    "LEFT": "ArrowLeft",
    "DOWN": "ArrowDown",
    "left": "ArrowLeft",
    "right": "ArrowRight",
    "forward": "ArrowUp",
    "pickup": "p",
    "drop": "d",
    "toggle": " ",
    "done": "Enter",
}
SPARE_KEYS = "1234567890qwertyuiopasfghjklzxcvbm"
KEY_LABELS = {" ": "Space", "ArrowUp": "↑", "ArrowDown": "↓", "ArrowLeft": "←", "ArrowRight": "→"}
NOOP_NAMES = ("NOOP",)


@dataclass(frozen=True)
class Control:
    """One action: its index in the action space, name, key and the key's label."""

    index: int
    name: str
    key: str
    label: str


@dataclass(frozen=True)
class Controls:
    """The actions of an env; `noop` is the index of its no-op action, if it has one."""

    actions: tuple[Control, ...]
    noop: int | None

    def to_json(self) -> dict:
        return {"actions": [asdict(c) for c in self.actions], "noop": self.noop}

    def check(self, action) -> int:
        """`action` as an index of this action space, or a TokWorldError naming the valid ones."""
        if isinstance(action, bool) or not isinstance(action, int):
            raise TokWorldError(f"unknown action {action!r}: send an action index")
        if not 0 <= action < len(self.actions):
            raise TokWorldError(
                f"unknown action {action}: this env has actions 0..{len(self.actions) - 1}"
            )
        return action

    def name(self, action: int) -> str:
        return self.actions[action].name


def controls_for(env_id: str, space: gym.Space) -> Controls:
    """The controls of `env_id`, whose action space is `space` (which must be Discrete)."""
    if not isinstance(space, gym.spaces.Discrete):
        raise TokWorldError(f"play needs a Discrete action space; {env_id} has {space}")
    names = action_names(env_id, int(space.n))
    used: set[str] = set()
    keys = []
    for name in names:
        key = NAMED_KEYS.get(name)
        keys.append(None if key in used else key)
        used.add(key)
    spare = iter(k for k in SPARE_KEYS if k not in used)
    keys = [key or next(spare, "") for key in keys]
    actions = tuple(
        Control(i, name, key, KEY_LABELS.get(key, key.upper() if len(key) == 1 else key))
        for i, (name, key) in enumerate(zip(names, keys, strict=True))
    )
    noop = next((i for i, name in enumerate(names) if name in NOOP_NAMES), None)
    return Controls(actions, noop)


def action_names(env_id: str, n: int) -> list[str]:
    """The env's names for its `n` actions where it has them, else `action 0`, ..."""
    generic = [f"action {i}" for i in range(n)]
    try:
        env = make_env(env_id)
    except TokWorldError:
        return generic
    try:
        inner = env.unwrapped
        if hasattr(inner, "get_action_meanings"):
            names = list(inner.get_action_meanings())
        elif hasattr(inner, "actions"):
            names = [a.name for a in inner.actions]
        else:
            names = []
    finally:
        env.close()
    return names if len(names) == n else generic
