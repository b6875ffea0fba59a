"""`r2m_client` installs and works without torch, transformers or any server dependency."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import importlib.abc
    import sys

    BLOCKED = {"torch", "transformers", "fastapi", "uvicorn", "redis", "starlette"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{name} is blocked in this test", name=name)
            return None

    sys.meta_path.insert(0, Blocker())

    import numpy as np
    import r2m_client
    import r2m_client.hf
    from r2m_client._encode import score_chunks
    from r2m_proto import SAFETENSORS_REQUEST_KEY, ScoreRequest, decode_safetensors

    hidden = [np.arange(12, dtype=np.float32).reshape(3, 4),
              np.linspace(-1, 1, 20, dtype=np.float16).reshape(5, 4)]
    (chunk,) = score_chunks("run-1", ["p0", "p1"], ["r0", "r1"], hidden, step=3,
                            min_version=None, binary=True, max_bytes=1 << 20)
    metadata, tensors = decode_safetensors(bytearray(b"".join(chunk.body.buffers)))
    request = ScoreRequest.model_validate_json(metadata[SAFETENSORS_REQUEST_KEY])
    assert request.run_id == "run-1" and request.step == 3 and request.min_version is None
    assert [(i.prompt, i.response) for i in request.items] == [("p0", "r0"), ("p1", "r1")]
    for i, (item, array) in enumerate(zip(request.items, hidden)):
        view = tensors[item.hidden_states]
        assert item.hidden_states == f"items.{i}.hidden_states"
        assert view.dtype == array.dtype.name and view.shape == array.shape
        assert bytes(view.data) == array.tobytes()
    assert r2m_client.R2MClient and r2m_client.AsyncR2MClient
    loaded = {name.partition(".")[0] for name in sys.modules}
    assert not loaded & BLOCKED, loaded & BLOCKED
    print("ok")
''')


def test_client_imports_and_encodes_without_torch_or_server_packages() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
