"""Pydantic models of the wire format, following OpenAI's schema (as vLLM's ``protocol.py`` does).

Requests are validated in two layers: these models check *types* (strictly: ``"5"`` is not an
integer, ``true`` is not a number), then :mod:`logit_swarm.serve.protocol` checks *meaning*
(ranges, caps, the served model's units) with messages that say what to change. Unknown fields are
allowed and ignored, like vLLM. The response models describe what the server sends; the tests
validate real responses against them, and ``/docs`` shows both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Loose(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class StreamOptions(_Loose):
    """``stream_options``."""

    include_usage: bool | None = None


class _Sampling(_Loose):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logit_bias: dict | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    return_tokens_as_token_ids: bool | None = Field(None, description="vLLM extension: tokens as 'token_id:N'")
    weights: list[float] | None = Field(None, description="logit_swarm extension: one weight per expert")
    mode: Literal["probs", "logits"] | None = Field(None, description="logit_swarm extension: mixing mode")
    return_expert_logprobs: bool | None = Field(
        None, description="logit_swarm extension: every expert's log-prob of each generated unit")


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    logprobs: int | None = Field(None, description="top-k per unit; -1 = every unit")
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(_Loose):
    """One chat message (content: a string or text parts)."""

    role: str
    content: str | list[dict] | None = None


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    response_format: dict | None = None


class TokenizeRequest(_Loose):
    """``POST /tokenize`` (vLLM): a prompt or chat messages."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None


class DetokenizeRequest(_Loose):
    """``POST /detokenize`` (vLLM)."""

    model: str | None = None
    tokens: list[int]


# ---------------------------------------------------------------------------------- responses
class Usage(BaseModel):
    """``usage``: ``unit`` (extension) says what the counts count (a tokenizer's tokens, or bytes)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    unit: str


class CompletionLogProbs(BaseModel):
    """OpenAI / vLLM ``CompletionLogProbs``."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    """One completion choice."""

    index: int
    text: str
    logprobs: CompletionLogProbs | None
    finish_reason: Literal["stop", "length"] | None
    expert_logprobs: list[list[float]] | None = None


class CompletionResponse(BaseModel):
    """``text_completion``."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class TopLogprob(BaseModel):
    """One entry of a chat ``top_logprobs``."""

    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    """One unit of chat ``logprobs.content``."""

    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """Chat ``logprobs``."""

    content: list[ChatTokenLogprob]


class AssistantMessage(BaseModel):
    """The reply."""

    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    """One chat choice."""

    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionResponse(BaseModel):
    """``chat.completion``."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    """One model of ``/v1/models`` with logit_swarm's fields (``max_model_len`` as vLLM has it)."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    max_model_len: int | None
    unit: Literal["token", "byte"]
    mode: str
    weights: list[float]
    experts: list[str]
    max_logprobs: int


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"]
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    """The error object."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error body: ``{"error": {message, type, param, code}}``."""

    error: ErrorInfo


class TokenizeResponse(BaseModel):
    """``POST /tokenize``."""

    count: int
    max_model_len: int | None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    """``POST /detokenize``."""

    prompt: str


class TokenizerInfo(BaseModel):
    """``GET /tokenizer_info`` in the shape lm-eval's ``RemoteTokenizer`` reads (vLLM's fields)."""

    model_config = ConfigDict(extra="allow")
    tokenizer_class: str
    eos_token: str | None
    bos_token: str | None
    pad_token: str | None
    model_max_length: int | None
    chat_template: str | None
    unit: Literal["token", "byte"]
