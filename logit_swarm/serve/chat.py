"""Chat messages → prompt ids per expert, with a default template for experts that have none.

An expert with a chat template renders the messages with it (``Expert.render_chat``). An expert
without one (a base model, most zoo experts) renders them with the server's template: the one
given with ``--chat-template`` (a Jinja file, rendered like a Hugging Face chat template with
``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``), else
:data:`DEFAULT_CHAT_TEMPLATE`, a plain transcript::

    system: Be brief.
    user: Hi
    assistant:

whose text is then encoded like a completion prompt (with the tokenizer's BOS, if it adds one).
The server warns once at start for every expert that uses it.
"""

from __future__ import annotations

from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment

#: The template for experts without a chat template of their own (see the module docstring).
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def has_chat_template(expert) -> bool:
    """Whether the expert's tokenizer carries its own chat template."""
    return bool(getattr(expert.tokenizer, "chat_template", None))


class ChatRenderer:
    """Renders chat messages for each expert (its own template, else the server's).

    Args:
        experts: the served experts.
        template: Jinja source of the fallback template, or a path to a file holding it; None =
            :data:`DEFAULT_CHAT_TEMPLATE`.
    """

    def __init__(self, experts, template: str | None = None):
        if template is not None and "{" not in template and Path(template).is_file():
            template = Path(template).read_text(encoding="utf-8")
        self.source = template or DEFAULT_CHAT_TEMPLATE
        self.template = ImmutableSandboxedEnvironment(trim_blocks=False).from_string(self.source)
        #: Names of the experts that use the fallback template.
        self.fallback = [e.name for e in experts if not has_chat_template(e)]

    def warning(self) -> str | None:
        """The start-up warning about experts using the fallback template (None if none do)."""
        if not self.fallback:
            return None
        which = "--chat-template" if self.source != DEFAULT_CHAT_TEMPLATE else "the default transcript template"
        return (f"warning: expert(s) {', '.join(map(repr, self.fallback))} have no chat template; chat requests "
                f"render their messages with {which} (see logit_swarm/serve/chat.py)")

    def text(self, expert, messages: list[dict]) -> str:
        """The fallback template's text of ``messages`` for ``expert``."""
        tok = expert.tokenizer
        return self.template.render(messages=messages, add_generation_prompt=True,
                                    bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")

    def render(self, expert, messages: list[dict]) -> list[int]:
        """Prompt ids of ``messages`` for ``expert``."""
        if has_chat_template(expert):
            return expert.render_chat(messages)
        return expert.encode(self.text(expert, messages))
