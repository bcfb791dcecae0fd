"""Trajectory data: the dataset format, windows over episodes, collection, importers, the Hub.

- `tokworld.data.format`: the schema, `TrajectoryMeta`, loading, validation, streamed writing;
- `tokworld.data.windows`: `WindowDataset`, its `Tiling` (each step once), `RealContext` and
  held-out episode splits;
- `tokworld.data.collect`: trajectories from a gymnasium env;
- `tokworld.data.importers` (`from_minari`, `from_hf`): datasets others recorded;
- `tokworld.data.hub`: `describe`, dataset cards and `push_dataset`.
"""
