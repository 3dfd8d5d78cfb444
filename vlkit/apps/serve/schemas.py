"""Request bodies of the OpenAI-compatible API (pydantic) and the error shape.

Unknown fields are ignored (OpenAI clients send many optional ones); known fields are checked strictly enough
that every bad value becomes a 400 naming it (see errors.py, which turns validation errors into OpenAI errors):
types are strict (`true` is not an integer, `"yes"` is not a boolean), `null` means the field's default (as in
OpenAI's API), and text must be valid Unicode (a lone UTF-16 surrogate such as `"\\ud800"` is refused).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlkit.config import SEED_RANGE

MAX_TEXT_CHARS = 64 * 1024 * 1024  # above any body the server accepts (50 MiB)


class _Lenient(BaseModel):
    # str_max_length makes pydantic check every string as Unicode: a lone surrogate is a `string_unicode` error
    model_config = ConfigDict(extra="ignore", strict=True, str_max_length=MAX_TEXT_CHARS)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class ImageURL(_Lenient):
    url: str = Field(min_length=1)
    detail: Optional[Literal["auto", "low", "high"]] = None


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(_Lenient):
    url: str = Field(min_length=1)


class VideoPart(_Lenient):
    """vLLM's video part: {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}."""
    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[Union[TextPart, ImagePart, VideoPart], Field(discriminator="type")]
Seed = Annotated[int, Field(ge=SEED_RANGE[0], le=SEED_RANGE[1])]


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[ContentPart], None] = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # OpenAI's default; pass 0 for greedy
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    seed: Optional[Seed] = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None


class ImageGenerationRequest(_Lenient):
    prompt: str = Field(min_length=1)
    model: Optional[str] = None
    n: int = Field(default=1, ge=1, le=4)
    size: Optional[str] = None
    response_format: Literal["b64_json"] = "b64_json"
    seed: Optional[Annotated[int, Field(ge=SEED_RANGE[0], le=SEED_RANGE[1] - 3)]] = None  # image i uses seed + i
    guidance_scale: Optional[float] = Field(default=None, ge=0.0, le=50.0)
