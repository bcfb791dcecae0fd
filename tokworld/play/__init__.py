"""Play inside a run's world model from a web page: `tokworld play --run RUN`.

`server` (the Starlette app and its WebSocket protocol), `session` (one tab's dream), `world`
(the config and what every tab shares), `starts` (real starts), `real` (the real env beside the
dream), `record` (sessions as trajectory datasets), `controls` (actions and keys), `bench`
(key-press latency), and the page, `page.html`. Uses the core and `tokworld.data` only.
"""
