"""OpenAI `/v1/completions` wire format for the `openai` backend: bodies, SSE chunks, token ids.

Pure functions and small state objects; no threads, no sockets, no LoadGen.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.backends.base import BackendError, GenerationRequest

TOKEN_ID_RE = re.compile(r"^token_id:(\d+)$")  # vLLM's return_tokens_as_token_ids format


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class EndpointError(BackendError):
    """The endpoint cannot serve this run (unreachable, wrong model, bad key); says the fix."""


class StreamError(RuntimeError):
    """The server reported an error inside the stream, or the stream ended without [DONE]."""


@dataclass(frozen=True)
class EndpointCaps:
    """What the server accepts and returns, found by probe requests before LoadGen starts."""

    token_prompt: bool = True  # `prompt` may be a list of token ids
    extra_fields: bool = True  # vLLM-style min_tokens / ignore_eos / return_token_ids accepted
    token_source: str = "token_ids"  # token_ids | logprobs | retokenize

    def describe(self) -> str:
        prompt = "token ids" if self.token_prompt else "text (detokenized)"
        how = {
            "token_ids": "the server's `token_ids` field",
            "logprobs": "logprobs tokens (token_id:N)",
            "retokenize": "re-tokenized text (checkpoint tokenizer)",
        }[self.token_source]
        extras = "min_tokens/ignore_eos sent" if self.extra_fields else "no min_tokens/ignore_eos"
        return f"prompts as {prompt}; output ids from {how}; {extras}"


def normalize_url(url: str) -> str:
    """'http://h:8000/v1/' -> 'http://h:8000' (the paths below add /v1)."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise EndpointError(
            f"--endpoint_url={url!r}: give an http(s) URL, e.g. --endpoint_url=http://127.0.0.1:8000"
        )
    return url


def completion_body(
    model: str,
    req: GenerationRequest,
    caps: EndpointCaps,
    tokenizer: Tokenizer | None,
    stream: bool = True,
) -> dict[str, Any]:
    """Greedy, pinned: temperature 0 and the request's token limits."""
    if req.fixed_output_len > 0:  # speed runs: exactly this many tokens
        max_tokens = min_tokens = req.fixed_output_len
        ignore_eos = True
    else:
        max_tokens = req.max_new_tokens
        min_tokens = min(req.min_new_tokens, max_tokens)
        ignore_eos = False
    if caps.token_prompt:
        prompt: list[int] | str = list(req.prompt_token_ids)
    else:
        assert tokenizer is not None, "text prompts need the checkpoint tokenizer"
        prompt = tokenizer.decode(list(req.prompt_token_ids), skip_special_tokens=False)
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    if caps.extra_fields:
        body["min_tokens"] = min_tokens
        body["ignore_eos"] = ignore_eos
        body["return_token_ids"] = True
        if not caps.token_prompt:
            body["add_special_tokens"] = False  # the decoded prompt already has them
    if caps.token_source == "logprobs":
        body["logprobs"] = 1
        body["return_tokens_as_token_ids"] = True
    return body


def parse_sse_line(line: bytes) -> dict[str, Any] | None:
    """One SSE line -> its JSON payload; None for blank/comment lines; {} for [DONE]."""
    text = line.decode("utf-8", errors="replace").strip()
    if not text or text.startswith(":") or not text.startswith("data:"):
        return None
    data = text[len("data:") :].strip()
    if data == "[DONE]":
        return {}
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as e:
        raise StreamError(f"unparsable stream chunk {data[:200]!r}: {e}") from e
    if not isinstance(payload, dict):
        raise StreamError(f"stream chunk is not a JSON object: {data[:200]!r}")
    if "error" in payload:
        raise StreamError(f"server error in stream: {payload['error']!r}"[:500])
    return payload


@dataclass
class CompletionStream:
    """Accumulates one streamed completion; `tokens()` gives the final id list."""

    token_source: str
    eos_token_id: int | None
    ignore_eos: bool
    tokenizer: Tokenizer | None = None
    text_parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    is_done: bool = False  # [DONE] seen
    first_token_id: int | None = None

    @property
    def has_output(self) -> bool:
        return self.first_token_id is not None

    def add(self, payload: dict[str, Any]) -> bool:
        """Apply one chunk; True when it carried the stream's first output token."""
        if not payload:
            self.is_done = True
            return False
        had_output = self.has_output
        for choice in payload.get("choices") or []:  # usage-only chunks have no choices
            self.text_parts.append(choice.get("text") or "")
            self.token_ids.extend(self._chunk_ids(choice))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if not had_output:
            if self.token_ids:
                self.first_token_id = self.token_ids[0]
            elif self.token_source == "retokenize" and "".join(self.text_parts):
                ids = self._encode("".join(self.text_parts))
                self.first_token_id = ids[0] if ids else None
        return not had_output and self.has_output

    def _chunk_ids(self, choice: dict[str, Any]) -> list[int]:
        if self.token_source == "token_ids":
            ids = choice.get("token_ids")
            if ids is None:
                raise StreamError("chunk without `token_ids` although the probe saw them")
            return [int(t) for t in ids]
        if self.token_source == "logprobs":
            tokens = (choice.get("logprobs") or {}).get("tokens") or []
            out = []
            for t in tokens:
                m = TOKEN_ID_RE.match(str(t))
                if m is None:
                    raise StreamError(f"logprobs token {t!r} is not of the form token_id:N")
                out.append(int(m.group(1)))
            return out
        return []

    def _encode(self, text: str) -> list[int]:
        assert self.tokenizer is not None, "retokenize needs the checkpoint tokenizer"
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def tokens(self) -> list[int]:
        """All output ids; at most one EOS, at the end (text servers drop it: add it back)."""
        ids = list(self.token_ids) if self.token_source != "retokenize" else self._encode(self.text)
        eos = self.eos_token_id
        if eos is None or self.ignore_eos:
            return ids
        if eos in ids:
            return ids[: ids.index(eos) + 1]
        if self.token_source == "retokenize" and self.finish_reason == "stop":
            ids.append(eos)  # stopped on EOS, which the server does not echo as text
        return ids


def probe_ids(chunks: list[dict[str, Any]]) -> str:
    """Which token source the probe's chunks support: token_ids, logprobs or neither."""
    choices = [c for p in chunks for c in (p.get("choices") or [])]
    if choices and all(isinstance(c.get("token_ids"), list) for c in choices):
        return "token_ids"
    toks = [t for c in choices for t in ((c.get("logprobs") or {}).get("tokens") or [])]
    if toks and all(TOKEN_ID_RE.match(str(t)) for t in toks):
        return "logprobs"
    return "retokenize"


def error_excerpt(body: str) -> str:
    """The message of an OpenAI-style error body, else the first 300 characters."""
    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    except (json.JSONDecodeError, AttributeError):
        pass
    return body.strip()[:300]
