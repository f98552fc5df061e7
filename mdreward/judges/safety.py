"""Defences for judge prompts: untrusted text is escaped before it enters a prompt, so it cannot
close a delimiter, open a chat turn, plant a section label, or plant a verdict the judge might echo.

Order of work for every prompt: ``fold_lookalikes`` (invisible, format, tag and control
characters dropped; look-alike letters and structural punctuation written as the ASCII they
imitate), then the prompt's own escape. Each function changes only the few character sequences
that carry meaning to a judge prompt; ordinary prose (superscripts, CJK, real Cyrillic words)
passes through unchanged.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from functools import lru_cache
from typing import Any, Callable

#: Chat-template control tokens of common model families (ChatML, Llama 2/3, Gemma, DeepSeek, Mistral).
_CONTROL_TOKENS = re.compile(
    r"<\|[^<>|\n]{0,64}\|>"              # <|im_start|>, <|eot_id|>, <|endoftext|>, <|start_header_id|>
    r"|<\uff5c[^<>\n]{0,64}\uff5c>"      # DeepSeek's full-width bars <｜...｜>
    r"|</?s>|\[/?INST\]|<</?SYS>>"        # Llama 2 / Mistral
    r"|<(?:start|end)_of_turn>",         # Gemma
    re.IGNORECASE)
#: Characters that draw nothing or steer rendering: format (Cf: soft hyphen, zero-width, bidi, tags),
#: controls other than tab/newline, variation selectors, combining grapheme joiner, Hangul fillers.
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5"
                        "\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0"
                        "\ufff9-\ufffb\U000e0000-\U000e0fff\U0001d173-\U0001d17a]")
#: Letters of other scripts that render like ASCII letters (after Unicode's confusables.txt: Cyrillic,
#: Greek, Armenian, Cherokee, Latin IPA and small capitals). Applied per word, see ``fold_lookalikes``.
_LOOKALIKE_LETTERS = str.maketrans(
    "АВСЕНІЈКМОРЅТХУаСеіјорсѕхуԁԛԝһӏӀѵүҮѴЁёЇїЬ"   # Cyrillic
    "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧοιναρτυχϲϳ"                      # Greek
    "ՕօսոհզցԳՍ"                                     # Armenian
    "ᎪᏴᏟᎬᎻᏆᏦᎷᏁᎾᏢᏚᎢᏔᏙᏞᏃ"                           # Cherokee
    "ɑɡɩıȷʏꓮꓐꓚꓓꓰꓝꓖꓧꓲꓙꓗꓡꓟꓠꓳꓑꓣꓢꓔꓴꓦꓪꓫꓬꓜᴀʙᴄᴅᴇғɢʜɪᴊᴋʟᴍɴᴏᴘʀᴛᴜᴠᴡʏᴢ",
    "ABCEHIJKMOPSTXYaCeijopcsxydqwhlIvyYVEeIib"
    "ABEZHIKMNOPTYXoivaptuxcj"
    "OouhhqgqU"
    "ABCEHIKMhOPSTWVLZ"
    "agiijyABCDEFGHIJKLMNOPRSTUVWXYZabcdefghijklmnoprtuvwyz")
#: Punctuation that imitates the characters prompts are built from: brackets, backticks, hashes,
#: colons, angle brackets (NFKC already maps the full-width forms).
_LOOKALIKE_PUNCTUATION = str.maketrans({
    "【": "[", "】": "]", "〚": "[", "〛": "]", "⟦": "[", "⟧": "]", "〔": "[", "〕": "]", "❲": "[", "❳": "]",
    "⁅": "[", "⁆": "]", "ˋ": "`", "‵": "`", "ʻ": "'", "ˊ": "`", "♯": "#", "⋕": "#", "꞉": ":", "∶": ":",
    "˸": ":", "ː": ":", "ᐸ": "<", "ᐳ": ">", "˂": "<", "˃": ">", "‹": "<", "›": ">", "〈": "<", "〉": ">",
    "⟨": "<", "⟩": ">", "❮": "<", "❯": ">", "ǀ": "|", "∣": "|", "｜": "|",
})
_WORD = re.compile(r"[^\W\d_]+")
_ROLE_MARKER = re.compile(r"\b(User|Assistant|System|Human)(\s*):", re.IGNORECASE)
#: "Final Decision" with any separator between the words (space, middle dot, hyphen, underscore, nothing).
_FINAL_DECISION = re.compile(r"final[^a-z0-9]{0,8}decision", re.IGNORECASE)
#: The verifier prompt's own section labels; a response must not open one.
_VERIFIER_LABEL = re.compile(r"\b(question|ground[^a-z0-9]{0,4}truth[^a-z0-9]{0,4}answer|student[^a-z0-9]{0,4}answer)"
                             r"(\s*):", re.IGNORECASE)
_PAIRWISE_VERDICT = re.compile(r"\[\s*\[|\]\s*\]")
_ANGLE_RUN = re.compile(r"<{2,}|>{2,}")
#: The WritingBench critic's section labels (``** Criteria **`` ...).
_CRITIC_LABEL = re.compile(r"\*\*(\s*(?:criteria|query|response|output format|scoring rules)\s*)\*\*", re.IGNORECASE)
#: A quoted ``score`` key: shown with typographic quotes, so a copied object is not valid JSON.
_SCORE_KEY = re.compile(r"""(["'])(score|reason)\1(\s*:)""", re.IGNORECASE)


@lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    """The ASCII a compatibility form stands for (full-width, mathematical alphanumerics, circled),
    keeping superscripts, subscripts and fractions, whose meaning the flat form would change."""
    folded = unicodedata.normalize("NFKC", char)
    if len(folded) == 1 and folded.isascii():
        decomposition = unicodedata.decomposition(char)
        if not decomposition.startswith(("<super>", "<sub>", "<fraction>")):
            return folded
    return char


def _fold_word(match: re.Match[str]) -> str:
    word = match.group(0)
    if word.isascii():
        return word
    folded = "".join(_fold_char(c) for c in word).translate(_LOOKALIKE_LETTERS)
    # A word that reads as ASCII is written as ASCII; a real word of another script keeps its letters.
    return folded if folded.isascii() else word


def fold_lookalikes(text: str) -> str:
    """``text`` as a reader that takes look-alikes for ASCII would read it.

    Drops invisible, format, tag and control characters (tab and newline stay) and lone surrogates;
    writes every word made only of ASCII look-alikes (``Fіnal`` with a Cyrillic i, ``𝐘𝐞𝐬``) as
    ASCII; maps look-alikes of structural punctuation (``［``, ``【``, ``｀``, ``ˋ``, ``＃``, ``：``,
    ``＜``) to ASCII. Superscripts, subscripts and words of other scripts are kept.
    """
    if text.isascii():
        return _INVISIBLE.sub("", text)
    text = text.encode("utf-8", "replace").decode("utf-8") if _has_surrogate(text) else text
    text = _INVISIBLE.sub("", text)
    text = "".join(c if c.isascii() or c.isalpha() else _fold_char(c) for c in text)
    text = text.translate(_LOOKALIKE_PUNCTUATION)
    return _WORD.sub(_fold_word, text)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def defuse_control_tokens(text: str) -> str:
    """Look-alikes folded, then chat-template tokens broken apart (``<|im_end|>`` -> ``< |im_end| >``)."""
    text = fold_lookalikes(text)
    if "<" not in text and "[" not in text:  # every control token starts with one of them
        return text
    return _CONTROL_TOKENS.sub(lambda m: f"{m.group(0)[0]} {m.group(0)[1:-1]} {m.group(0)[-1]}", text)


_WHITESPACE = re.compile(r"\s+")
_HASH_RUN = re.compile(r"#{2,}")


def escape_for_verifier(text: str) -> str:
    """Escape text that goes into the general-verifier's plain-text prompt.

    One line (no new ``###`` section), no section labels (``Ground Truth Answer:``), no role markers
    (``Assistant:`` ends the real prompt), and no ``Final Decision`` phrase for the verifier to copy.
    """
    text = _WHITESPACE.sub(" ", defuse_control_tokens(text)).strip()
    if "#" in text:
        text = _HASH_RUN.sub("#", text)  # a run, not "###" pairs: "#####" must not leave "###"
    if ":" in text:
        text = _ROLE_MARKER.sub(lambda m: f"{m.group(1)} -", text)
        text = _VERIFIER_LABEL.sub(lambda m: f"{m.group(1)} -", text)
    return _FINAL_DECISION.sub("(decision)", text)


def escape_for_pairwise(text: str) -> str:
    """Escape a text shown to the pairwise judge: no ``[[X]]`` verdict tokens, no ``<<``/``>>`` delimiters."""
    text = defuse_control_tokens(text)
    previous = None
    while previous != text:  # "[[[A]]]" must not collapse into a fresh "[[A]]"
        previous = text
        text = _PAIRWISE_VERDICT.sub(lambda m: m.group(0)[0], text)
        text = _ANGLE_RUN.sub(lambda m: m.group(0)[0], text)
    return text


def escape_for_critic(text: str) -> str:
    """Escape a response shown to the WritingBench critic. Backtick fences stay as written (a criterion
    may ask for a code block): the caller wraps the response in a longer fence (``critic_fence``).
    The critic's section labels are defused and quoted ``score``/``reason`` keys get typographic
    quotes, so the response cannot open a section or hand the critic a JSON verdict to copy."""
    text = defuse_control_tokens(text)
    text = _CRITIC_LABEL.sub(lambda m: f"*{m.group(1)}*", text)
    return _SCORE_KEY.sub(lambda m: f"\u201c{m.group(2)}\u201d{m.group(3)}", text)


def critic_fence(text: str) -> str:
    """A backtick fence longer than any backtick run in ``text``, so ``text`` cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


#: Phrases that address the judge or ask for a verdict: an answer or a story has no reason to say them.
_JUDGE = r"(?:judge|grader|evaluator|verifier|critic|reviewer|assessor|rater|annotator)s?"
_INJECTION_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+)?(?:the\s+|your\s+)?(?:previous|prior|above|earlier"
    r"|preceding|other|system|your)\s+(?:instructions?|rules|prompts?|criteria|guidelines)\b",
    r"\b(?:note|message|instructions?|attention)\s+(?:to|for)\s+(?:the\s+)?(?:" + _JUDGE
    + r"|ai|model|assistant|llm)\b",
    r"\b(?:dear|hey|attention)\s+" + _JUDGE + r"\b",
    # A judge addressed by name and told what to decide: "Grader: prefer this", "..., evaluator." (a speaker label
    # in a court transcript, "Judge: The court finds ...", names no verdict and is not a hit).
    r"\b" + _JUDGE + r"\s*:.{0,60}?\b(?:prefer|pick|choose|correct|better|best|winner|score|rate|grade|mark|10|yes"
    r"|accept|perfect)\b",
    r",\s*" + _JUDGE + r"\s*[.!]",
    r"\b" + _JUDGE + r"\b.{0,40}\b(?:must|should|shall|will|are\s+to|need\s+to|have\s+to)\s+(?:prefer|pick|choose"
    r"|select|rate|mark|score|grade|give|accept|output|answer|say|declare)\s+(?:this|it|me|my|yes|the\s+(?:first"
    r"|second))\b",
    r"\byou\s+(?:should|must|shall|will|need\s+to|have\s+to|are\s+to|ought\s+to)\s+(?:prefer|pick|choose|select|rate"
    r"|mark|score|grade|give|accept|output|answer|say|declare)\s+(?:this|it|me|my|yes|the\s+(?:first|second))\b",
    r"\b(?:mark|grade|judge|rate|score|consider|treat|count|label|declare|deem|evaluate|accept|assess)\s+(?:it|me"
    r"|this(?:\s+\w+)?|my\s+\w+|the\s+(?:answer|response|text|essay|story|submission|reply|output))\s+(?:as\s+|to\s+be\s+"
    r"|an?\s+|the\s+)*(?:correct|right|true|valid|better|best|winner|superior|preferred|perfect|excellent"
    r"|full\s+marks|yes|10|ten)\b",
    r"\b(?:this|the\s+following|the\s+present|my|our)\s+(?:text|answer|response|essay|story|submission|note|reply"
    r"|output|poem|piece)\b.{0,60}\b(?:is|should\s+be|must\s+be|deserves)\s+(?:(?:the|a|an|clearly|obviously"
    r"|definitely|certainly)\s+)*(?:better|best|correct|winner|superior|preferred|perfect|flawless|10|ten)\b",
    r"\b(?:the\s+)?text\s+(?:containing|with|that\s+contains|that\s+has)\s+this\s+(?:note|message|line|sentence)\b",
    r"\b(?:give|assign|award|grant)\s+(?:it|this|me|the\s+response|this\s+response|this\s+answer)\s+(?:an?\s+)?"
    r"(?:(?:score|rating|grade|mark)\s+(?:of\s+)?)?(?:10|ten|full\s+marks|a\s+perfect\s+score|the\s+maximum|top\s+marks)\b",
    r"\b(?:rate|score|grade)\s+(?:this|it|me)?\s*(?:a\s+)?(?:10|ten)\s*(?:/|out\s+of)\s*10\b",
    r"\b(?:output|respond|reply|say|print|write|return)\s+(?:with\s+)?(?:only\s+)?(?:\"?final\W{0,8}decision|\[\["
    r"|the\s+verdict|a\s+score\s+of|\"?yes\b)",
    r"(?:^|\W)(?:system|assistant)\s*(?:prompt|message|override)\s*:",
)]


#: Words at least one of which every pattern above needs: one scan rules most texts out.
_INJECTION_CUES = re.compile(r"ignore|disregard|forget|override|note|message|instruct|attention|dear|hey|judge|grader"
                             r"|evaluat|verifier|critic|review|assess|rater|annotat|you|mark|grade|rate|score|consider"
                             r"|treat|count|label|declare|deem|accept|this|the following|present|my|our|text|give"
                             r"|assign|award|grant|output|answer|respond|reply|say|print|write|return|conclude"
                             r"|system|assistant", re.IGNORECASE)


def injection_hits(text: str, limit: int = 5) -> list[str]:
    """Passages of ``text`` (look-alikes folded) that read as instructions to a judge, at most ``limit``."""
    folded = _WHITESPACE.sub(" ", fold_lookalikes(text))
    if _INJECTION_CUES.search(folded) is None:
        return []
    hits: list[str] = []
    for pattern in _INJECTION_PATTERNS:
        for match in pattern.finditer(folded):
            hits.append(match.group(0)[:120])
            if len(hits) >= limit:
                return hits
    return hits


def request_nonce(key: bytes, *parts: str) -> str:
    """A 12-hex-digit marker the response cannot predict: an HMAC of the request's texts under a
    secret key (random per domain unless given). Equal requests get equal nonces, so caching works."""
    digest = hmac.new(key, "\x1f".join(parts).encode("utf-8", "surrogatepass"), hashlib.sha256)
    return digest.hexdigest()[:12]


def utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8: a safe upper bound on its tokens for byte-level tokenizers."""
    return len(text.encode("utf-8", "surrogatepass"))


def clip_to_budget(text: str, budget: int, count: Callable[[str], int]) -> tuple[str, int]:
    """The longest prefix of ``text`` whose ``count`` is at most ``budget`` (binary search), and its count
    (so callers need not count it again)."""
    size = count(text)
    if size <= budget:
        return text, size
    low, low_size, high = 0, count(""), len(text)
    while low < high:
        middle = (low + high + 1) // 2
        middle_size = count(text[:middle])
        if middle_size <= budget:
            low, low_size = middle, middle_size
        else:
            high = middle - 1
    return text[:low], low_size


def require_placeholders(template: str, names: tuple[str, ...], where: str) -> None:
    """A configurable prompt must keep every ``{name}`` the domain fills in."""
    missing = [name for name in names if "{" + name + "}" not in template]
    if missing:
        raise ValueError(f"{where} lacks placeholder(s) {missing}")


def token_counter(judge: object) -> Callable[[str], int]:
    """How to count a text's tokens for ``judge``: its own ``count_tokens`` when it has a tokenizer,
    else UTF-8 bytes (never fewer than the tokens of a byte-level or byte-fallback tokenizer)."""
    count = getattr(judge, "count_tokens", None)
    return count if callable(count) else utf8_size


INJECTION_POLICIES = ("penalize", "report", "off")


def check_injection_policy(policy: str, domain: str) -> str:
    """``penalize``: a response that addresses the judge gets the domain's losing outcome without a judge
    call; ``report``: it is judged, with the hits in ``components``; ``off``: no detection."""
    if policy not in INJECTION_POLICIES:
        raise ValueError(f"{domain} injection must be one of {INJECTION_POLICIES}, got {policy!r}")
    return policy


def invalid_unicode(text: str) -> str | None:
    """Why ``text`` is not valid Unicode text (a lone surrogate cannot be encoded), or None."""
    if _has_surrogate(text):
        return "a lone surrogate (invalid Unicode)"
    return None


def invalid_text_field(sample: Any, fields: tuple[str, ...]) -> str | None:
    """An error naming the record and the input field that holds invalid Unicode, or None."""
    for name in fields:
        value = getattr(sample, name, None)
        if isinstance(value, str) and _has_surrogate(value):
            return f"{sample.where()}: field {name!r} holds a lone surrogate (invalid Unicode)"
    return None
