"""The r2m server: a frozen reward-model backbone shared by many runs, each with its own
online-trained R2M module (docs/method.md), behind a FastAPI app.

The data path, one module per concern: `text_format` (prompt/response → token ids), `backbone`
(token ids → reward token embeddings), `r2m_module` + `losses` (RTE + hidden states → reward;
GREBT), `runs` (per-run state), `engine` (ties them together on one model thread), `http/` (the
outside: routes, bodies, errors), `metrics`, `settings`, `cli`.
"""

__version__ = "0.1.0"
