"""What answers a benchmark's prompts: a loaded model (`LocalAnswerer`) or any OpenAI-compatible
endpoint (`EndpointAnswerer`: our `minicpmv serve`, vLLM, llama-server, ollama). Both take a batch
of user-message contents (text and PIL images, in order) and return one answer each."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ..errors import MiniCPMVError


class EndpointError(MiniCPMVError, RuntimeError):
    """The endpoint could not be reached or answered with an error."""


class LocalAnswerer:
    """A ChatModel; a batch is decoded together (left-padded), or one at a time where the LLM
    backend takes one conversation (llama.cpp)."""

    def __init__(self, chat, preset: str = "precise", max_slice_nums: int | None = None):
        self.chat, self.preset, self.max_slice_nums = chat, preset, max_slice_nums
        self.version = chat.version

    def __call__(self, contents: list[list], max_new_tokens: int) -> list[str]:
        conversations = [[{"role": "user", "content": content}] for content in contents]
        options = dict(preset=self.preset, max_new_tokens=max_new_tokens, max_slice_nums=self.max_slice_nums)
        if self.chat.max_batch == 1:
            return [self.chat.generate(c, **options).text for c in conversations]
        return [g.text for g in self.chat.generate_batch(conversations, **options)]


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def openai_content(content: list) -> list[dict]:
    return [
        {"type": "text", "text": item}
        if isinstance(item, str)
        else {"type": "image_url", "image_url": {"url": data_url(item)}}
        for item in content
    ]


class EndpointAnswerer:
    """POST /chat/completions under `api_base` (e.g. http://127.0.0.1:8080/v1), greedy
    (temperature 0) unless `sampling` says otherwise: the OpenAI API has no beam search.
    `concurrency` requests at once."""

    def __init__(
        self,
        api_base: str,
        api_key: str | None = None,
        concurrency: int = 1,
        model: str | None = None,
        version: str = "2.6",
        timeout: float = 600.0,
        sampling: dict | None = None,
    ):
        self.url = api_base.rstrip("/") + "/chat/completions"
        self.api_key, self.model, self.version, self.timeout = api_key, model, version, timeout
        self.sampling = sampling or {"temperature": 0}  # e.g. {"temperature": 0.2, "top_p": 0.9}
        self.pool = ThreadPoolExecutor(max_workers=max(1, concurrency))

    def _one(self, content: list, max_new_tokens: int) -> str:
        body = {
            "messages": [{"role": "user", "content": openai_content(content)}],
            "max_tokens": max_new_tokens,
            **self.sampling,
        }
        if self.model:
            body["model"] = self.model
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:200]
            raise EndpointError(f"{self.url}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise EndpointError(f"{self.url}: {exc}") from None
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.url}: not a chat completion: {str(reply)[:200]}") from None

    def __call__(self, contents: list[list], max_new_tokens: int) -> list[str]:
        return list(self.pool.map(lambda c: self._one(c, max_new_tokens), contents))
