"""The LLM interface every reasoning stage uses, plus the response cache shared by the backends.

A prompt is a chat (list of {"role", "content"} messages). When the last message has role "assistant" the
backend *continues* it (assistant prefill), which is how template steps are forced (guided decoding)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from offline.reasoning.config import HttpLLMConfig, LocalLLMConfig, SamplingParams

log = logging.getLogger(__name__)

Message = dict[str, str]
Chat = list[Message]


def validate_chats(prompts: Sequence[Chat]) -> None:
    """Reject malformed chats up front with the index and field that is wrong."""
    for i, chat in enumerate(prompts):
        if not isinstance(chat, list) or not chat:
            raise ValueError(f"prompts[{i}]: expected a non-empty list of messages")
        for j, m in enumerate(chat):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise ValueError(f"prompts[{i}][{j}].role: must be system, user or assistant")
            if not isinstance(m.get("content"), str):
                raise ValueError(f"prompts[{i}][{j}].content: must be a string")


def continues_assistant(chat: Chat) -> bool:
    return chat[-1]["role"] == "assistant"


@runtime_checkable
class LLM(Protocol):
    """generate(prompts, params) -> one completion text per prompt, in order."""

    name: str

    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[str]: ...

    async def agenerate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[str]: ...


def cache_key(model: str, chat: Chat, params: SamplingParams) -> str:
    """sha256 of (model, messages, sampling params): same request -> same key, any change -> new key."""
    blob = json.dumps({"model": model, "messages": chat, "params": params.model_dump(mode="json")},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """Append-only JSONL of {"key", "text"}: each entry is one write() of one line, flushed and fsynced, so a
    killed job loses at most the line in flight; a torn last line is ignored on reload."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._data: dict[str, str] = {}
        self.torn_lines = 0
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self._data[row["key"]] = row["text"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.torn_lines += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def put(self, key: str, text: str) -> None:
        line = (json.dumps({"key": key, "text": text}, ensure_ascii=False) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if self._needs_newline(fd):
                    os.write(fd, b"\n")
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._data[key] = text

    def _needs_newline(self, fd: int) -> bool:
        """A torn last line (no trailing newline) must not swallow the next entry."""
        size = os.fstat(fd).st_size
        if size == 0:
            return False
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            return f.read(1) != b"\n"


def run_sync(coro):  # noqa: ANN001, ANN201 - thin helper
    """Run a coroutine from sync code, also when called inside a running loop (e.g. from a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list = []
    t = threading.Thread(target=lambda: result.append(asyncio.run(coro)))
    t.start()
    t.join()
    return result[0]


def build_llm(spec: str | None = None, *, cache_path: Path | None = None, **overrides: object) -> LLM:
    """'local' (default) or 'local:/path/to/model[::file.gguf]' -> in-process; 'http://host:port/v1[#model]' ->
    OpenAI-compatible client."""
    spec = spec or "local"
    if spec.startswith(("http://", "https://")) and ("," in spec or "@" in spec.partition("#")[0].rsplit("/", 1)[-1]):
        from offline.reasoning.endpoints import EndpointsConfig, MultiEndpointLLM  # 'URL[@N],URL[@N][#model]'

        return MultiEndpointLLM(EndpointsConfig.parse(spec, cache_path=cache_path, **overrides))
    if spec.startswith(("http://", "https://")):
        from offline.reasoning.http_backend import HttpLLM

        url, _, model = spec.partition("#")
        cfg = HttpLLMConfig(base_url=url.rstrip("/"), cache_path=cache_path,
                            **({"model": model} if model else {}), **overrides)  # type: ignore[arg-type]
        return HttpLLM(cfg)
    if spec == "local" or spec.startswith("local:"):
        from offline.reasoning.local_backend import LocalLLM

        path = spec[len("local:"):] if spec.startswith("local:") else ""
        model_path, _, gguf = path.partition("::")
        cfg = LocalLLMConfig(model_path=model_path or None, gguf_file=gguf or None, **overrides)  # type: ignore[arg-type]
        return LocalLLM(cfg, cache_path=cache_path)
    raise ValueError(f"--llm: expected 'local', 'local:PATH[::FILE.gguf]' or an http(s) URL, got {spec!r}")
