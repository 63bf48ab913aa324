"""The values a conversation offers each field of a forced call or structured output (issue 21).

A pure rule over the user and tool text (no model): the text is cut into *units* that a value should
not cut short, and every field gets the candidates that fit its *kind*:

* **units**: values the user put in quotes ('...', "...", «...», 「...」, ...); *names*: runs of capitalised
  words (``Ada Lovelace``, ``Kettle Pro 3000``, ``Άλφα Τεχνική``, ``Новосибирск``), runs of words of scripts
  without case (``김민준``, ``बाँसुरी``); and *dates* as written (``14 March 2025``, ``June 7``, ``2024-11-02``,
  ``03/09/2026``, ``10月1日``); a run followed by a comma and a one-word run is also offered with it
  (``San Francisco, CA``). A run whose first word is a determiner, a pronoun or a request verb
  (``LEADING_WORDS``) is offered without it (``The Aurora X2`` -> ``Aurora X2``, ``Meet Kwame Mensah`` ->
  ``Kwame Mensah``); month names are dates, not names.
* **kinds** (:func:`field_kind`, from the field's name): ``date`` (``date``, ``day``, ``birthday``, ...) takes
  dates; ``code`` (``id``, ``number``, ``code``, ``zip``, ``phone``, ``year``, ...) takes every span, numbers
  included; ``place`` (``city``, ``country``, ``location``, ``origin``, ...) takes the names after ``in`` /
  ``at`` / ``near`` / ``from`` / ``to`` (``京都に``), else every name; ``name`` (``name``, ``person``,
  ``customer``, ``company``, ...) takes quoted values and names not after ``in`` / ``at``. *Names* are
  name runs and, inside unspaced scripts (CJK, kana, Thai, ...), spans without digits: every span of up
  to ``MAX_UNSPACED`` characters, or when the run has kana (Japanese) its kanji and katakana runs of 2+
  characters (``田中花子`` in ``田中花子さんは``) and the whole run when it is a word of its own
  (``こんにちは株式会社``). ``text`` (any other string) takes every word span (up to 6 words) that
  neither is nor starts or ends with a number, does not run across a clause end, a quote or a
  bracket, and cuts no unit (``21`` cuts ``21 August``, ``Al-Farsi`` cuts ``Ahmed Al-Farsi``); in a
  schema with name or place fields, none that contains a name run (``apart``).
* **direction** (:func:`field_role`): a ``from`` / ``origin`` / ``source`` field takes the spans the text marks
  as a source (after ``from``, ``depart``, ``leaving``, ``从``) when there are some, else every span not
  marked as a destination (after ``to``, ``into``, ``in``, ``->``, ``往``, ``到``); a ``to`` / ``destination`` /
  ``target`` field the reverse (``Convert 100 USD to EUR``: ``to_currency`` takes ``EUR``, ``from_currency``
  not ``EUR``).

A kind whose candidates are empty falls back to ``text`` (then to every span); a direction filter that
would leave nothing is dropped.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from langchain_core.messages import BaseMessage, ChatMessage, FunctionMessage, HumanMessage, ToolMessage

from langchain_aisp.chat._render import content_text

SEP = "\x1f"
MAX_SPANS = 400
"""Most argument candidates a forced-call row of ``tool_choice="auto"`` may pick from."""
UNSPACED = r"\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
"""Scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, kana, CJK ideographs)."""
MAX_UNSPACED = 10
"""Longest span (in characters) taken from inside a run of an unspaced script ("王小明" in "王小明今年28岁")."""
_NUMBER = re.compile(r"(?<![\d.A-Za-z])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?![\dA-Za-z])")
"""A number as written (``1,500`` is 1500), also next to an unspaced script (``28岁``)."""

_UNIT = re.compile(rf"[{UNSPACED}]|[^\s{UNSPACED}]+")
"""A unit of normalised text: one character of an unspaced script, or a run of other non-space characters."""

QUOTED = re.compile(
    r"(?<!\w)'([^'\n]{1,80})'(?!\w)|\"([^\"\n]{1,80})\"|«([^»\n]{1,80})»|“([^”\n]{1,80})”|‘([^’\n]{1,80})’"
    r"|„([^“\n]{1,80})“|「([^」\n]{1,80})」|『([^』\n]{1,80})』"
)
"""A value the user put in quotes ('...', "...", «...», “...”, ‘...’, „...“, 「...」, 『...』)."""

_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December"
    r"|(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\.?)"
)
DATES = re.compile(
    "|".join(
        [
            r"(?<!\d)\d{4}-\d{1,2}-\d{1,2}(?!\d)",
            r"(?<!\d)\d{1,2}[/.]\d{1,2}[/.]\d{2,4}(?!\d)",
            rf"(?<!\d)\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}(?:,?\s+\d{{4}})?(?!\w)",
            rf"(?<!\w){_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?(?![\d:])",
            rf"(?<!\w){_MONTH}\s+\d{{4}}(?!\d)",
            r"(?:\d{4}年)?\d{1,2}月(?:\d{1,2}[日号])?",
        ]
    ),
    re.IGNORECASE,
)
"""A date as written: ISO, numeric with / or ., day-month(-year), month-day(-year), month-year, 年月日."""
_EDGE_NUMBER = re.compile(r"^[\d.,]+(?:\s|$)|\s[\d.,]+$")
"""A text span that starts or ends with a number (``3 blue umbrellas``, ``wants 7``) or is one: the number is
another field's (a quantity, a price), the text is the rest."""
_CLAUSE = re.compile(r"[,;:!?.。，、；：！？]\s|[\"«»“”()\[\]「」『』]|(?<!\w)'|'(?!\w)|[。，、；！？]")
"""Punctuation a text value does not run across (a clause or sentence end, a quote, a bracket)."""
_MONTH_WORD = re.compile(rf"{_MONTH}", re.IGNORECASE)

_PUNCT = ".,;:!?\"'()[]{}<>«»“”‘’„「」『』*"
_OPENING = "\"'([{<«“‘„「『"
_CLOSING = ".,;:!?\"')]}>»”’“」』"
LEADING_WORDS = frozenset(
    "the a an our my your their his her its this that these those we i you he she it they please "
    "what who where when which how why is are was do does did can could would will "
    "add book buy call check compute convert create find get give invite list look make meet order record "
    "register remind schedule search send set show tell translate write".split()
)
"""Words that begin a capitalised run without being part of the name: determiners, pronouns, question
words and the verbs of requests (``The Aurora X2`` is ``Aurora X2``, ``Meet Kwame Mensah`` is ``Kwame Mensah``)."""
_POSSESSIVE = re.compile(r"['’]s$")
_KANA = re.compile(r"[\u3040-\u30ff]")
_SCRIPT_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[\u30a0-\u30ff]+")
"""Runs of one script inside a Japanese run: ideographs (kanji), katakana (hiragana is grammar)."""
_UNSPACED_RUN = re.compile(rf"[{UNSPACED}]+")

DATE_KEYS = frozenset("date day birthday birthdate dob deadline when".split())
CODE_KEYS = frozenset("id ids number num no code zip postcode postal phone tel sku isbn pin version year".split())
PLACE_KEYS = frozenset(
    "city town place country nation location origin destination venue region capital airport address".split()
)
NAME_KEYS = frozenset(
    "name names person people customer client user author owner contact company organization organisation org "
    "brand hotel restaurant employer manufacturer".split()
)
SOURCE_KEYS = frozenset("from origin source departure depart sender src".split())
TARGET_KEYS = frozenset("to destination target arrival arrive recipient dest into".split())
SOURCE_MARKERS = frozenset("from depart departing departs leaving leave 从 自".split())
TARGET_MARKERS = frozenset("to into in arrive arriving arrives -> → towards toward 往 到 至".split())
PLACE_MARKERS = frozenset("in at near 在 于".split())
"""Words before a place (``lives in London``): marked spans are places, not names."""
WAY_MARKERS = frozenset("from to into -> → 从 往 到".split())
"""Words before a place or a person (``from Accra``, ``an order from 李娜``): marked spans may be places."""
PLACE_AFTER = frozenset("にでへ")
"""Japanese particles after a place (``京都に住んで``)."""
PERSON_AFTER = ("さん", "様", "氏", "君", "先生")
"""Japanese honorifics after a person's name (``田中花子さん``): marked spans are not places."""


def normalize(text: str) -> str:
    """Light normalisation for comparing values: Unicode NFKC, case folded, punctuation and symbols as
    spaces, whitespace collapsed (``"  Ada  LOVELACE!"`` -> ``"ada lovelace"``, ``"Ｏｓｌｏ"`` -> ``"oslo"``)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    spaced = "".join(" " if unicodedata.category(c)[0] in "PSZC" else c for c in folded)
    return " ".join(spaced.split())


def units(text: str) -> list[str]:
    """The units of normalised ``text``: words, and single characters of scripts written without spaces
    (``"王小明 28"`` -> ``["王", "小", "明", "28"]``), so a span can start inside an unspaced run."""
    return _UNIT.findall(normalize(text))


def key(text: str) -> str:
    """The normalised units of ``text`` joined by a separator (with one at both ends): ``a`` is a span of
    ``b`` when ``key(a) in key(b)``."""
    return SEP + SEP.join(units(text)) + SEP


def key_words(name: str) -> set[str]:
    """The lower-case words of a field name (``customerName``, ``from_currency``, ``unit-price``)."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name).replace("_", " ").replace("-", " ")
    return set(spaced.lower().split())


def field_kind(name: str) -> str:
    """``"date"``, ``"code"``, ``"place"``, ``"name"`` or ``"text"``: which candidates a string field named
    ``name`` takes (the first of those whose words the name has; see the module docstring)."""
    words = key_words(name)
    for kind, keys in (("date", DATE_KEYS), ("code", CODE_KEYS), ("place", PLACE_KEYS), ("name", NAME_KEYS)):
        if words & keys:
            return kind
    return "text"


def field_role(name: str) -> str | None:
    """``"source"`` (``from_currency``, ``origin``), ``"target"`` (``to_currency``, ``destination``) or None."""
    words = key_words(name)
    if words & SOURCE_KEYS and not words & TARGET_KEYS:
        return "source"
    if words & TARGET_KEYS and not words & SOURCE_KEYS:
        return "target"
    return None


def _core(word: str) -> str:
    """A word without the punctuation around it, nor a possessive ``'s`` (``"Ada's,"`` -> ``Ada``)."""
    return _POSSESSIVE.sub("", word.strip(_PUNCT)).strip(_PUNCT)


def _uncased(core: str) -> bool:
    letters = [c for c in core if c.isalpha()]
    return bool(letters) and not any(c.isupper() or c.islower() for c in letters) and not _UNSPACED_RUN.search(core)


def name_runs(text: str) -> list[str]:
    """Runs of capitalised words or words of uncased scripts, as written (see the module docstring)."""
    words = list(re.finditer(r"\S+", text))
    found: list[tuple[int, int]] = []  # (start, end) of each run in the text
    run: list[re.Match[str]] = []

    def close() -> None:
        nonlocal run
        if run:
            first, last = run[0], run[-1]
            start = first.start() + len(first.group()) - len(first.group().lstrip(_PUNCT))
            end = last.start() + last.group().index(_core(last.group())) + len(_core(last.group()))
            if _core(first.group()).lower() not in LEADING_WORDS:
                found.append((start, end))
            else:  # without the leading word, nor a number after it (``Convert 100 USD`` -> ``USD``)
                rest = [w for i, w in enumerate(run) if i and any(not c.isdigit() for c in _core(w.group()))]
                if rest:
                    found.append((rest[0].start() + len(rest[0].group()) - len(rest[0].group().lstrip(_PUNCT)), end))
        run = []

    for match in words:
        raw = match.group()
        core = _core(raw)
        named = bool(core) and not _MONTH_WORD.fullmatch(core) and (core[0].isupper() or _uncased(core))
        follows = bool(run) and bool(core) and any(c.isdigit() for c in core) and not core[0].islower()
        if raw[0] in _OPENING or not (named or follows):
            close()
        if named or follows:
            run.append(match)
            if raw[-1] in _CLOSING:
                close()
    close()
    out = [text[a:b] for a, b in found]
    for (a, b), (c, d) in itertools.pairwise(found):  # "San Francisco, CA", "Paris, France"
        if text[b:c] == ", " and " " not in text[c:d]:
            out.append(text[a:d])
    return out


def unspaced_names(text: str) -> list[str]:
    """Name candidates inside runs of unspaced scripts (no digits): every span of up to ``MAX_UNSPACED``
    characters, or in a Japanese run (one with kana) its kanji and katakana runs of 2+ characters (a lone
    kanji before kana is a verb's or a counter's: ``住んで``, ``19歳で``), plus the whole run when it is a
    word of its own."""
    out: list[str] = []
    tokens = {_core(w) for w in text.split()}
    for run in _UNSPACED_RUN.findall(text):
        if _KANA.search(run):
            out += [r for r in _SCRIPT_RUN.findall(run) if len(r) > 1] + ([run] if run in tokens else [])
        else:
            n = len(run)
            out += [run[i:j] for i in range(n) for j in range(i + 1, min(n, i + MAX_UNSPACED) + 1)]
    return out


def _cuts(span: str, unit_keys: frozenset[str]) -> bool:
    """Whether ``span`` starts or ends inside a unit without being one (``21`` of ``21 August``)."""
    mine = key(span)
    if mine in unit_keys:
        return False
    parts = mine.strip(SEP).split(SEP)
    for unit in unit_keys:
        if unit in mine:
            continue
        other = unit.strip(SEP).split(SEP)
        if mine in unit:
            return True
        for k in range(1, min(len(parts), len(other))):
            if parts[-k:] == other[:k] or other[-k:] == parts[:k]:
                return True
    return False


def _marks(text: str, span: str) -> set[str]:
    """The directions the text gives ``span`` where it occurs: the word (or unspaced character) before it."""
    found: set[str] = set()
    start = text.find(span)
    while start >= 0:
        previous = text[start - 1 : start]
        if previous and _UNSPACED_RUN.fullmatch(previous):
            word = previous
        else:
            before = text[:start].split()
            word = before[-1].lower() if before else ""
            word = word if word in ("->", "→") else _core(word)
        found.add("source" if word in SOURCE_MARKERS else "target" if word in TARGET_MARKERS else "none")
        after = text[start + len(span) : start + len(span) + 2]
        if word in PLACE_MARKERS or (after[:1] in PLACE_AFTER and _UNSPACED_RUN.match(span[-1:])):
            found.add("place")
        elif word in WAY_MARKERS:
            found.add("way")
        if any(after.startswith(p) for p in PERSON_AFTER) and _UNSPACED_RUN.match(span[-1:]):
            found.add("person")
        start = text.find(span, start + 1)
    return found


@dataclass(frozen=True)
class Candidates:
    """The conversation's values by kind (see the module docstring), read once per call."""

    quoted: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    every: tuple[str, ...] = ()
    numbers: tuple[float, ...] = ()
    marks: dict[str, frozenset[str]] = field(default_factory=dict)
    """Normalised key of a candidate -> the directions it is given where it occurs ("source", "target", "none")."""
    keys: dict[str, str] = field(default_factory=dict)
    """Each candidate -> its normalised :func:`key`."""

    @classmethod
    def of(cls, messages: Sequence[BaseMessage]) -> Candidates:
        texts = conversation_texts(messages)
        every, numbers = conversation_spans(messages)
        quoted = [q.strip() for t in texts for m in QUOTED.finditer(t) for q in m.groups() if q and q.strip()]
        dates = [m.group() for t in texts for m in DATES.finditer(t)]
        runs = [r for t in texts for r in name_runs(t)]
        unit_keys = frozenset(key(u) for u in [*quoted, *runs, *dates] if units(u))
        date_keys = frozenset(key(d) for d in dates)
        found = dict.fromkeys([*quoted, *runs, *(s for t in texts for s in unspaced_names(t))])
        first = itertools.islice(found, MAX_SPANS)  # at most as many as "auto" offers (last message first)
        names = [n for n in first if key(n) not in date_keys and not _cuts(n, unit_keys)]
        text = [s for s in every if not _EDGE_NUMBER.search(s) and not _CLAUSE.search(s) and not _cuts(s, unit_keys)]
        text += [n for n in names if n not in text]
        pool = dict.fromkeys([*names, *text, *dates])
        keys = {s: key(s) for s in dict.fromkeys([*pool, *every, *quoted])}
        marks = {keys[s]: frozenset(m for t in texts for m in _marks(t, s)) for s in pool}

        def unique(values: Sequence[str]) -> tuple[str, ...]:
            return tuple(dict.fromkeys(v for v in values if keys.get(v, key(v)) != SEP + SEP))

        return cls(
            unique(quoted), unique(names), unique(dates), unique(text), unique(every), tuple(numbers), marks, keys
        )

    def strings(self, kind: str, role: str | None = None, apart: bool = False) -> list[str]:
        """The candidates of a string field of ``kind`` and direction ``role``; ``apart``: a text field of a
        schema that also has name or place fields, which takes no span containing a name run (those are
        the name fields' values: ``product`` is not ``Chloe Dubois``)."""
        pools = {"name": self.names, "place": self.names, "date": self.dates, "code": self.every, "text": self.text}
        pool = list(pools.get(kind, self.text) or self.text or self.every)
        if kind in ("place", "name"):  # places: names after in / at / from / to (京都に); names: not after in / at
            marks = {s: self.marks.get(self.keys.get(s, ""), frozenset()) for s in pool}
            if kind == "place":
                pool = [s for s in pool if marks[s] & {"place", "way"} and "person" not in marks[s]] or pool
            else:
                pool = [s for s in pool if "place" not in marks[s] or "person" in marks[s]] or pool
        if kind == "text" and apart:
            runs = [self.keys[n] for n in self.names if n in self.keys and not _UNSPACED_RUN.search(n)]
            pool = [s for s in pool if not any(r in self.keys.get(s, key(s)) for r in runs)] or pool
        if role is not None:
            opposite = "target" if role == "source" else "source"
            ways = {s: self.marks.get(self.keys.get(s, ""), frozenset()) & {"source", "target", "none"} for s in pool}
            kept = [s for s in pool if role in ways[s]] or [s for s in pool if ways[s] != {opposite}]
            pool = kept or pool
        return pool

    def fits(self, value: str, kind: str, role: str | None = None) -> bool:
        """Whether ``value`` (after normalisation) is one of :meth:`strings` ``(kind, role)``."""
        mine = key(value)
        return any(self.keys.get(s) == mine for s in self.strings(kind, role))


def conversation_texts(messages: Sequence[BaseMessage]) -> list[str]:
    """The user and tool texts of the conversation, as written, the last message first."""
    texts: list[str] = []
    for m in reversed(messages):
        is_user = isinstance(m, HumanMessage) or (isinstance(m, ChatMessage) and m.role in ("user", "human"))
        if is_user or isinstance(m, (ToolMessage, FunctionMessage)):
            try:
                texts.append(content_text(m))
            except ValueError:
                continue
    return texts


def _unspaced_spans(text: str) -> list[str]:
    """Every span of up to ``MAX_UNSPACED`` characters inside runs of an unspaced script (digits included,
    never cut inside a number, never only digits): ``"王小明今年28岁"`` -> ``"王", "王小", ..., "28岁"``."""
    out = []
    for run in re.findall(rf"\d*[{UNSPACED}]+(?:\d+[{UNSPACED}]*)*", text):
        cuts = [i for i in range(len(run) + 1) if i in (0, len(run)) or not (run[i - 1].isdigit() and run[i].isdigit())]
        out += [run[i:j] for i in cuts for j in cuts if 0 < j - i <= MAX_UNSPACED and not run[i:j].isdigit()]
    return out


def conversation_spans(messages: Sequence[BaseMessage], max_words: int = 6) -> tuple[list[str], list[float]]:
    """Candidate argument values taken from the conversation: word spans (up to ``max_words`` words, as
    written, without surrounding punctuation), spans of up to ``MAX_UNSPACED`` characters inside runs of
    unspaced scripts, and numbers of the user and tool text, the last user message first; at most
    ``MAX_SPANS`` spans."""
    texts = conversation_texts(messages)
    spans: dict[str, None] = {}
    numbers: dict[float, None] = {}
    for text in texts:
        words = list(re.finditer(r"\S+", text))
        for i in range(len(words)):
            for j in range(i, min(len(words), i + max_words)):
                span = text[words[i].start() : words[j].end()].strip(".,;:!?\"'()[]{}<>«»“”‘’")
                if span and len(spans) < MAX_SPANS:
                    spans.setdefault(span, None)
        for span in _unspaced_spans(text):
            if len(spans) < MAX_SPANS:
                spans.setdefault(span, None)
        for match in _NUMBER.finditer(text):
            numbers.setdefault(float(match.group().replace(",", "")), None)
    return list(spans), list(numbers)
