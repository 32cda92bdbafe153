"""Request bodies of the server: strict types, unknown fields refused by name (no setting is ignored).

`/v1/completions` takes OpenAI's fields; `top_k` and `repetition_penalty` are extensions (vLLM has
them too). OpenAI fields this server does not implement are accepted only at their neutral value (the
value that changes nothing); any other value is refused with the field's name.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

NEUTRAL = {"echo": (False,), "logprobs": (None,), "best_of": (None, 1), "suffix": (None, ""),
           "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None, {}), "user": (None,)}
"""Fields of OpenAI's completions API that are not implemented, and the values that mean "not used"."""


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Body):
    include_usage: bool = False


class CompletionRequest(Body):
    model: str
    prompt: str | list[str]
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, neutral in NEUTRAL.items():
                if name in data and not any(data[name] == v and type(data[name]) is type(v) for v in neutral):
                    raise ValueError(f"'{name}' is not supported by this server (leave it out)")
            data = {k: v for k, v in data.items() if k not in NEUTRAL}
        return data


class FillMaskRequest(Body):
    model: str
    input: str
    top_k: int = 5


class ClassifyRequest(Body):
    model: str
    input: str | list[str]
    input_pair: str | list[str] | None = None


class NerRequest(Body):
    model: str
    input: str | list[str]
    aggregation: Literal["first", "simple"] = "first"


class QARequest(Body):
    model: str
    question: str | list[str]
    context: str | list[str]
