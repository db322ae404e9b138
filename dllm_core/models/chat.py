"""Turning a user's text into the prompt string the model expects (chat template or plain text)."""

from __future__ import annotations

from typing import Any

from ..errors import OptionError


def has_chat_template(tokenizer: Any) -> bool:
    """True when the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, text: str, chat: bool | None = None) -> str:
    """``text`` as a single user turn of the chat template followed by the assistant header.

    ``chat=None`` applies the template when the tokenizer has one and passes ``text`` through
    otherwise; ``chat=False`` always passes it through; ``chat=True`` requires a template.
    The result already holds any BOS text the template adds, so encode it with
    ``add_special_tokens=False``.
    """
    if chat is False or (chat is None and not has_chat_template(tokenizer)):
        return text
    if not has_chat_template(tokenizer):
        raise OptionError("chat=True but the tokenizer has no chat template; pass chat=False for plain prompts")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return rendered if isinstance(rendered, str) else str(rendered)
