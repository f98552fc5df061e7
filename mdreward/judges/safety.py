"""Defences for judge prompts: untrusted text is escaped before it enters a prompt, so it cannot
close a delimiter, open a chat turn, or plant a verdict the judge might echo.

Each function changes only the few character sequences that carry meaning to a judge prompt;
ordinary prose passes through unchanged.
"""
from __future__ import annotations

import re

#: Chat-template control tokens of common model families (ChatML, Llama 2/3, Gemma, DeepSeek, Mistral).
_CONTROL_TOKENS = re.compile(
    r"<\|[^<>|\n]{0,64}\|>"              # <|im_start|>, <|eot_id|>, <|endoftext|>, <|start_header_id|>
    r"|<\uff5c[^<>\n]{0,64}\uff5c>"      # DeepSeek's full-width bars <｜...｜>
    r"|</?s>|\[/?INST\]|<</?SYS>>"        # Llama 2 / Mistral
    r"|<(?:start|end)_of_turn>",         # Gemma
    re.IGNORECASE)
#: Invisible characters that can hide or reorder text (bidi overrides, zero-width joiners).
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_ROLE_MARKER = re.compile(r"\b(User|Assistant|System|Human)(\s*):", re.IGNORECASE)
_FINAL_DECISION = re.compile(r"final[\s_*-]*decision", re.IGNORECASE)
_PAIRWISE_VERDICT = re.compile(r"\[\s*\[|\]\s*\]")
_ANGLE_RUN = re.compile(r"<{3,}|>{3,}")


def defuse_control_tokens(text: str) -> str:
    """Break chat-template tokens apart (``<|im_end|>`` -> ``< |im_end| >``) and drop invisible characters."""
    text = _INVISIBLE.sub("", text)
    return _CONTROL_TOKENS.sub(lambda m: f"{m.group(0)[0]} {m.group(0)[1:-1]} {m.group(0)[-1]}", text)


def escape_for_verifier(text: str) -> str:
    """Escape text that goes into the general-verifier's plain-text prompt.

    One line (no new ``###`` section), no role markers (``Assistant:`` ends the real prompt), and no
    ``Final Decision`` phrase for the verifier to copy into its output.
    """
    text = defuse_control_tokens(text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"#{3,}", "#", text)  # a run, not "###" pairs: "#####" must not leave "###"
    text = _ROLE_MARKER.sub(lambda m: f"{m.group(1)} -", text)
    return _FINAL_DECISION.sub("(decision)", text)


def escape_for_pairwise(text: str) -> str:
    """Escape a text shown to the pairwise judge: no ``[[X]]`` verdict tokens, no ``<<<``/``>>>`` delimiters."""
    text = defuse_control_tokens(text)
    previous = None
    while previous != text:  # "[[[A]]]" must not collapse into a fresh "[[A]]"
        previous = text
        text = _PAIRWISE_VERDICT.sub(lambda m: m.group(0)[0], text)
        text = _ANGLE_RUN.sub(lambda m: m.group(0)[:2], text)
    return text


def escape_for_critic(text: str) -> str:
    """Escape a response shown to the WritingBench critic: it sits inside a ``` fence it must not close."""
    text = defuse_control_tokens(text)
    return re.sub(r"`{3,}", lambda m: "'" * len(m.group(0)), text)


def clip(text: str, max_chars: int) -> tuple[str, bool]:
    """At most ``max_chars`` characters, and whether text was cut."""
    if len(text) <= max_chars:
        return text, False
    return text[:max_chars] + " [... truncated]", True


def require_placeholders(template: str, names: tuple[str, ...], where: str) -> None:
    """A configurable prompt must keep every ``{name}`` the domain fills in."""
    missing = [name for name in names if "{" + name + "}" not in template]
    if missing:
        raise ValueError(f"{where} lacks placeholder(s) {missing}")
