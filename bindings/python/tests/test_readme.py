# SPDX-License-Identifier: MIT
"""The README's Python example runs as written (the API calls stubbed)."""

import asyncio
import pathlib
import re
import types

import libquota

README = pathlib.Path(__file__).resolve().parents[3] / "README.md"


def test_readme_python_example(daemons, monkeypatch):
    text = README.read_text()
    section = text[text.index("### From Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    seg = daemons.quotad({"llama-4-scout": {"rpm": 1200, "tpm": 900000}})
    monkeypatch.setenv("QUOTA_SEGMENT", seg)
    usage = types.SimpleNamespace(usage=types.SimpleNamespace(prompt_tokens=650, completion_tokens=300))

    async def call_async():
        return usage

    env = {"call_the_api": lambda: usage, "call_the_api_async": call_async}
    exec(compile(code, "README.md", "exec"), env)
    with libquota.Client() as c:
        q = c.quota("llama-4-scout")
        asyncio.run(env["handle"](q))
        st = q.status()
    assert st["admitted"] == 2 and st["inflight"] == 0
    assert st["admitted_input_tokens"] == 1300 and st["admitted_output_tokens"] == 600
