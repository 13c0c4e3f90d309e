"""GGUF chat templates (`tokenizer.chat_template`): Jinja, run in a sandbox.

A template comes from a file the user downloaded, so it runs in Jinja's immutable sandbox with
only the globals Hugging Face's chat-template convention provides.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from bridge.errors import InvalidRequest

if TYPE_CHECKING:
    import jinja2


class TemplateError(InvalidRequest):
    """The chat template cannot be parsed or raised an error while rendering."""


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(f"chat template error: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    # Imported here: only models rendered by their GGUF chat template need Jinja, and it
    # costs start-up time.
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _jinja_error() -> type[Exception]:
    import jinja2

    return jinja2.TemplateError


def render(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Render a chat with the template; errors become TemplateError (a 400), never a 500."""
    try:
        template = _compile(source)
        return template.render(
            messages=list(messages),
            bos_token=bos_token,
            eos_token=eos_token,
            tools=list(tools) if tools else None,
            add_generation_prompt=add_generation_prompt,
            **(extra or {}),
        )
    except TemplateError:
        raise
    except _jinja_error() as exc:
        raise TemplateError(f"chat template error: {exc}") from exc
    except Exception as exc:  # a template can raise anything (TypeError on odd data, ...)
        raise TemplateError(f"chat template error: {type(exc).__name__}: {exc}") from exc
