"""Message content: the definition a brand saves, its checks at save time, and rendering it for one channel.

Pure functions over plain data (no I/O): a definition is validated once when saved (``validate_definition``), so
that every mistake a marketer can make in the editor is reported there with the field and line, and rendered
many times when sent (``render``), where anything that would produce broken text (a missing value, a template
that runs away, a message over a provider's size limit) becomes a ``Skip`` with the reason instead of a message.

Templates are Liquid (python-liquid 2). They read only the context they are given, load partials only from the
``partials`` mapping, cannot reach Python attributes, and run under loop, output, nesting and variable-size
limits so a hostile template ends in a ``Skip`` rather than a hang. See docs/messaging.md.
"""

from __future__ import annotations

import contextvars
import copy
import decimal
import functools
import gc
import html as html_lib
import inspect
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import css_inline
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from liquid import BoundTemplate, Environment, FalsyStrictUndefined, Markup, RenderContext, Undefined
from liquid.builtin.content import ContentNode
from liquid.builtin.expressions import _tokenize
from liquid.builtin.expressions.arguments import KeywordArgument
from liquid.builtin.expressions.filtered import FilteredExpression, TernaryFilteredExpression
from liquid.builtin.expressions.primitive import RangeLiteral, StringLiteral
from liquid.builtin.filters.misc import date as _liquid_date
from liquid.builtin.tags.include_tag import IncludeNode
from liquid.builtin.tags.liquid_tag import _tokenize_liquid_expression
from liquid.builtin.tags.render_tag import RenderNode
from liquid.exceptions import (
    ContextDepthError,
    FilterArgumentError,
    FilterError,
    LiquidError,
    LocalNamespaceLimitError,
    LoopIterationLimitError,
    OutputStreamLimitError,
    ResourceLimitError,
    TemplateNotFoundError,
    UndefinedError,
)
from liquid.filter import sequence_filter, with_environment
from liquid.lex import _tokenize_template
from liquid.loader import BaseLoader, TemplateSource
from liquid.output import LimitedStringIO
from liquid.stream import TokenStream
from liquid.token import TOKEN_CONTENT, TOKEN_EOF, TOKEN_ILLEGAL, TOKEN_OUTPUT, Token
from liquid.undefined import UNDEFINED
from mjml import mjml2html

from chorus import safejson
from chorus.messaging import policy, sms

CHANNELS = ("email", "sms", "push", "whatsapp", "messenger", "in_app", "webhook")
KINDS = ("marketing", "transactional")


@dataclass(frozen=True)
class Limit:
    """A provider's size limit for one rendered field: ``size`` in ``unit`` (segments, characters or bytes)."""

    size: int
    unit: str
    why: str


MAX_SIZES: dict[str, Limit] = {
    "email.html": Limit(102 * 1024, "bytes", "Gmail clips messages larger than 102 KB"),
    "sms.text": Limit(10, "segments", "carriers and Twilio reassemble long messages unreliably; cost control"),
    # Push fields share the 4,096-byte FCM / APNs / Web Push payload: these add up to 3,840 bytes of text and
    # leave 256 bytes for the JSON envelope and the Web Push encryption overhead (103 bytes, RFC 8291).
    "push.title": Limit(256, "bytes", "share of the 4 KB push payload"),
    "push.body": Limit(1536, "bytes", "share of the 4 KB push payload"),
    "push.url": Limit(1024, "bytes", "share of the 4 KB push payload"),
    "push.image": Limit(1024, "bytes", "share of the 4 KB push payload"),
    "whatsapp.text": Limit(4096, "characters", "WhatsApp Cloud API text message body"),
    "whatsapp.template.parameters": Limit(1024, "characters", "WhatsApp template body text"),
    "messenger.text": Limit(2000, "characters", "Messenger Send API text message"),
    "in_app.title": Limit(256, "characters", "Chorus's own: an in-app card title"),
    "in_app.body": Limit(4096, "characters", "Chorus's own: an in-app card body"),
    "webhook.body": Limit(256 * 1024, "bytes", "Chorus's own: webhook request body"),
}
"""Rendered size limits per ``channel.field``; the reasons are in docs/messaging.md."""

# Resource limits for Liquid. Legitimate messages stay far below them (a cart of 50 products is 50 iterations);
# a template that reaches one is almost certainly a mistake or an attack, and renders as a Skip.
LOOP_LIMIT = 10_000  # loop iterations per render, nested or not, and the longest range literal
NODE_LIMIT = 100_000  # tags and outputs executed per render: loops over long straight-line bodies stop here
# CPU seconds of the rendering thread per render (parsing and garbage collection excluded): a backstop for
# filters slow on big values (sort). CPU time, not wall time, and without the collector's pauses: a busy machine
# or a large heap must not turn a normal template into a skipped message.
TIME_LIMIT = 1.0
# Filter work (1 per call plus the length of its input and result) between two readings of the clock. No filter on
# values within the limits below takes more than about 0.15 s, and a call on 10,000 items or characters reads it.
CLOCK_EVERY = 10_000
_GC = threading.local()


def _gc_clock(phase: str, _info: dict) -> None:
    if phase == "start":
        _GC.started = time.thread_time()
    elif getattr(_GC, "started", None) is not None:
        _GC.spent = getattr(_GC, "spent", 0.0) + time.thread_time() - _GC.started
        _GC.started = None


gc.callbacks.append(_gc_clock)


def _cpu() -> float:
    """This thread's CPU seconds, less the time the garbage collector ran in it."""
    return time.thread_time() - getattr(_GC, "spent", 0.0)


OUTPUT_LIMIT = 256 * 1024  # bytes written by one template (captures included)
ITEM_LIMIT = LOOP_LIMIT  # items in a list one filter returns (what a loop could go through)
VALUE_LIMIT = 4 * OUTPUT_LIMIT  # characters a list one filter returns makes as text
# python-liquid's context depth counts scope layers, not partials: with 30 (its default) a template can nest 13
# includes, 31 renders or 26 for loops. A partial that includes itself stops there.
DEPTH_LIMIT = 30
LOCALS_LIMIT = 128 * 1024  # bytes held in assigned/captured variables (python-liquid's sys.getsizeof measure)
SOURCE_LIMIT = 256 * 1024  # characters in one template string

_PARTIAL_NAME = re.compile(r"[a-z0-9_-]{1,64}")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")
_WA_TEMPLATE_NAME = re.compile(r"[a-z0-9_]{1,512}")
_WA_LANGUAGE = re.compile(r"[a-z]{2,3}(?:_[A-Za-z]{2,4})?")

# Fields per channel: type, and whether the string is a template rendered with HTML escaping.
_FIELDS: dict[str, dict[str, type]] = {
    "email": {"subject": str, "preheader": str, "mjml": str, "html": str, "text": str},
    "sms": {"text": str},
    "push": {"title": str, "body": str, "url": str, "image": str},
    "whatsapp": {"text": str, "template": dict},
    "messenger": {"text": str},
    "in_app": {"title": str, "body": str, "cta": dict},
    "webhook": {"body": object},
}
_REQUIRED = {"email": ("subject",), "sms": ("text",), "push": ("body",), "messenger": ("text",)}
_REQUIRED |= {"in_app": ("body",), "webhook": ("body",)}
_ONE_OF = {"email": ("mjml", "html"), "whatsapp": ("text", "template")}
_HTML_FIELDS = {("email", "mjml"), ("email", "html")}
# Texts a message cannot go without: rendered empty, the message is skipped (``_require``), so one that is empty as
# written, in a variant or a locale's override, is refused when saved (an SMS with no text was accepted).
_NOT_EMPTY = {
    ("email", "subject"): "an email with no subject cannot be sent",
    ("sms", "text"): "an SMS with no text cannot be sent",
    ("push", "body"): "a push notification with no body cannot be sent",
    ("whatsapp", "text"): "a WhatsApp message with no text cannot be sent",
    ("whatsapp", "template.parameters"): "WhatsApp refuses a template parameter with no text",
    ("messenger", "text"): "a Messenger message with no text cannot be sent",
    ("in_app", "body"): "an in-app message with no body cannot be shown",
}
# Links a person taps, checked as rendered and, for the text before any Liquid, when saved (see DENIED_SCHEMES).
_LINKS = {("push", "url"), ("push", "image")}


class ContentError(ValueError):
    """A definition or partial that cannot be saved: ``field`` is the dotted path, ``line`` the template line."""

    def __init__(self, field: str, message: str, line: int | None = None):
        self.field = field
        self.message = message
        self.line = line
        super().__init__(f"{field}: {message}" + (f" (line {line})" if line else ""))


@dataclass(frozen=True)
class Rendered:
    """One channel's content, ready for its adapter. ``locale`` is the override used (None: the default)."""

    channel: str
    locale: str | None
    fields: dict[str, Any]


@dataclass(frozen=True)
class Skip:
    """Why a message is not sent on a channel (never send broken text), and the field at fault."""

    reason: str
    field: str | None


class _Skipped(Exception):
    def __init__(self, reason: str, field: str | None):
        super().__init__(reason)
        self.skip = Skip(reason, field)


# --- Liquid environment ---------------------------------------------------------------------------------------

def _stream_init(self: TokenStream, tokens: Iterator[Token], block_depth_carry: int = 0) -> None:
    """python-liquid reports "found end of expression" at index -1, which made every such syntax error point at
    the template's last line: the end of a stream is placed right after its last token instead (for a template,
    the end of the source; for an expression, the end of that expression)."""
    _stream_init_original(self, tokens, block_depth_carry)
    if self.tokens:
        last = self.tokens[-1]
        self.eof = Token(TOKEN_EOF, TOKEN_EOF, last.start_index + len(last.value), last.source)


_stream_init_original = TokenStream.__init__
TokenStream.__init__ = _stream_init  # type: ignore[method-assign]


# --- Linear-time lexing ---------------------------------------------------------------------------------------
# python-liquid's lexers are regular expressions that are quadratic on some inputs: at every "{{" without a "}}"
# after it the template lexer scans to the end of the source (16,000 characters of "{{" took 15 s to be refused),
# and whitespace before a closing "}}" or "%}", a line of spaces in {% liquid %}, or "(" and '["' in an expression
# make them backtrack over and over. These stand-ins produce the same matches (tested against python-liquid's own
# on generated templates) in about linear time: a search that finds nothing is remembered instead of repeated.


class _Match:
    """The part of ``re.Match`` python-liquid's tokenizers read: ``lastgroup``, ``group``, ``start``, ``end``."""

    __slots__ = ("_spans", "lastgroup", "string")

    def __init__(self, string: str, kind: str, spans: dict[str, tuple[int, int] | None]):
        self.string = string
        self.lastgroup = kind
        self._spans = spans  # the whole match is spans[kind]

    def group(self, name: str | None = None) -> str | None:
        span = self._spans[name or self.lastgroup]
        return None if span is None else self.string[span[0] : span[1]]

    def start(self, name: str | None = None) -> int:
        span = self._spans[name or self.lastgroup]
        return -1 if span is None else span[0]

    def end(self, name: str | None = None) -> int:
        span = self._spans[name or self.lastgroup]
        return -1 if span is None else span[1]


class _Finder:
    """The first match of ``pattern`` starting at or after a position, for positions that (mostly) move forward:
    the answer for one position holds for every later position up to that match, so no part of the text is
    searched twice, however many times it is asked about."""

    __slots__ = ("_asked", "_found", "_pattern", "_source")

    def __init__(self, source: str, pattern: re.Pattern[str]):
        self._source, self._pattern = source, pattern
        self._asked: int | None = None
        self._found: re.Match[str] | None = None

    def __call__(self, pos: int) -> re.Match[str] | None:
        asked, found = self._asked, self._found
        if asked is None or pos < asked or (found is not None and found.start() < pos):
            found = self._pattern.search(self._source, pos)
            self._asked, self._found = pos, found
        return found


_WS = re.compile(r"\s*")
_WORD_RUN = re.compile(r"\w+")
_OUT_CLOSE = re.compile(r"\}\}")
_TAG_CLOSE = re.compile(r"%\}")
_MARKUP_START = re.compile(r"\{[{%]")
_RAW_OPEN = {
    "RAW": re.compile(r"\{%-?\s*raw\s*(?P<rsr>-?)%\}"),
    "DOC": re.compile(r"\{%-?\s*doc\s*(?P<lsd>-?)%\}"),
}
_RAW_CLOSE = {
    "RAW": re.compile(r"\{%-?\s*endraw\s*(?P<rsr_e>-?)%\}"),
    "DOC": re.compile(r"\{%-?\s*enddoc\s*(?P<rsd>-?)%\}"),
}
_RAW_BODY = {"RAW": "raw", "DOC": "doc"}


def _rstrip_to(source: str, start: int, end: int, chars: str | None = None) -> int:
    """Where ``source[start:end]`` ends once trailing whitespace (or ``chars``) is removed."""
    while end > start and (source[end - 1] in chars if chars else source[end - 1].isspace()):
        end -= 1
    return end


class _TemplateRules:
    """python-liquid's template lexer rules (``liquid.lex.compile_liquid_rules`` with the default delimiters and
    no comment syntax): ``finditer`` yields the matches ``rules.finditer`` would."""

    def finditer(self, source: str) -> Iterator[_Match]:
        n = len(source)
        finders = {key: _Finder(source, pattern) for key, pattern in _RAW_CLOSE.items()}
        out_close, tag_close = _Finder(source, _OUT_CLOSE), _Finder(source, _TAG_CLOSE)
        markup = _Finder(source, _MARKUP_START)
        dollar = n - 1 if source.endswith("\n") else n  # "$" also matches before a final newline
        pos = 0
        while pos < n:
            match = None
            if source.startswith("{%", pos):
                match = self._raw(source, pos, "RAW", finders) or self._raw(source, pos, "DOC", finders)
                match = match or self._tag(source, pos, tag_close)
            elif source.startswith("{{", pos):
                match = self._output(source, pos, out_close)
            if match is None:
                match = self._content(source, pos, markup, dollar)
            yield match
            pos = match.end()

    @staticmethod
    def _raw(source: str, pos: int, kind: str, finders: dict[str, _Finder]) -> _Match | None:
        # {% raw %}.*?{% endraw %}: the body ends at the first closing tag
        opened = _RAW_OPEN[kind].match(source, pos)
        if opened is None or (closed := finders[kind](opened.end())) is None:
            return None
        spans = {kind: (pos, closed.end()), _RAW_BODY[kind]: (opened.end(), closed.start())}
        spans |= {name: opened.span(name) for name in _RAW_OPEN[kind].groupindex}
        spans |= {name: closed.span(name) for name in _RAW_CLOSE[kind].groupindex}
        return _Match(source, kind, spans)

    @staticmethod
    def _inner(source: str, start: int, close: int) -> tuple[int, int, int]:
        """The expression between ``start`` (after the tag's opening and any whitespace) and ``close`` (its first
        closing delimiter): its end without trailing whitespace, and where a ``-`` before the delimiter begins."""
        dash = close - 1 if close - 1 >= start and source[close - 1] == "-" else close
        return _rstrip_to(source, start, dash), dash, close

    def _output(self, source: str, pos: int, out_close: _Finder) -> _Match | None:
        # {{-?\s*(?P<stmt>(?:(?!-?}})[\s\S])*(?<!\s))\s*(?P<rss>-?)}}
        closed = out_close(pos + 2)
        if closed is None:
            return None
        close = closed.start()
        after = pos + 3 if source.startswith("-", pos + 2) else pos + 2
        start = _WS.match(source, after).end()
        end, dash, close = self._inner(source, start, close)
        stmt = (start, end) if end > start else (after, after)
        spans = {TOKEN_OUTPUT: (pos, close + 2), "stmt": stmt, "rss": (dash, close)}
        return _Match(source, TOKEN_OUTPUT, spans)

    def _tag(self, source: str, pos: int, tag_close: _Finder) -> _Match | None:
        # {%-?\s*(?P<name>#|\w+)\s*(?P<expr>(?:(?!-?%})[\s\S])*(?<!\s))\s*(?P<rst>-?)%}
        closed = tag_close(pos + 2)
        if closed is None:
            return None
        after = pos + 3 if source.startswith("-", pos + 2) else pos + 2
        name_start = _WS.match(source, after).end()
        if source.startswith("#", name_start):
            name_end = name_start + 1
        elif word := _WORD_RUN.match(source, name_start):
            name_end = word.end()
        else:
            return None
        start = _WS.match(source, name_end).end()
        end, dash, close = self._inner(source, start, closed.start())
        expr = (start, end) if end > start else (name_end, name_end)
        spans = {"TAG": (pos, close + 2), "name": (name_start, name_end), "expr": expr, "rst": (dash, close)}
        return _Match(source, "TAG", spans)

    @staticmethod
    def _content(source: str, pos: int, markup: _Finder, dollar: int) -> _Match:
        # .+?(?=(({%|{{)(?P<rstrip>-?))|$)
        found = markup(pos + 1)
        end = len(source) if dollar <= pos else dollar
        if found is not None and found.start() <= end:
            end = found.start()
            rstrip: tuple[int, int] | None = (end + 2, end + 3 if source.startswith("-", end + 2) else end + 2)
        else:
            rstrip = None
        return _Match(source, TOKEN_CONTENT, {TOKEN_CONTENT: (pos, end), "rstrip": rstrip})


class _LiquidTagRules:
    """The ``{% liquid %}`` tag's line lexer (``[ \\t]*(?P<name>#|\\w+)[ \\t]*(?P<expr>.*?)[ \\t\\r]*?(\\n+|$)``,
    then ``[\\r\\n]+``, then any one character), which python-liquid's regex matches in quadratic time on a line
    of spaces."""

    def finditer(self, source: str) -> Iterator[_Match]:
        n, pos = len(source), 0
        while pos < n:
            name_start = pos
            while name_start < n and source[name_start] in " \t":
                name_start += 1
            if source.startswith("#", name_start):
                name_end = name_start + 1
            elif word := _WORD_RUN.match(source, name_start):
                name_end = word.end()
            else:
                name_end = -1
            if name_end >= 0:
                start = name_end
                while start < n and source[start] in " \t":
                    start += 1
                line_end = source.find("\n", start)
                line_end = n if line_end < 0 else line_end
                end = _rstrip_to(source, start, line_end, " \t\r")
                stop = line_end
                while stop < n and source[stop] == "\n":
                    stop += 1
                spans = {"LIQUID_EXPR": (pos, stop), "name": (name_start, name_end), "expr": (start, end)}
                match = _Match(source, "LIQUID_EXPR", spans)
            elif source[pos] in "\r\n":
                stop = pos
                while stop < n and source[stop] in "\r\n":
                    stop += 1
                match = _Match(source, "SKIP", {"SKIP": (pos, stop)})
            else:
                match = _Match(source, TOKEN_ILLEGAL, {TOKEN_ILLEGAL: (pos, pos + 1)})
            yield match
            pos = match.end()


class _ExpressionRules:
    """python-liquid's expression lexer (``liquid.builtin.expressions._tokenize._RE``), where its two rules that
    scan ahead are decided by a remembered search: ``(`` starts a range literal when a ``..`` follows it
    (anywhere), and ``["…"]`` needs the closing quote followed by ``]``. Everything else is its own regex."""

    def __init__(self, rules: re.Pattern[str]):
        self.rules = rules
        self.range_open = re.compile(rf"(?P<{_tokenize.TOKEN_RANGE_LITERAL}>\()")
        self.index = re.compile(_tokenize.IDENTINDEX_PATTERN)
        self.quote = re.compile(r"\[\s*([\"'])")
        self.closes = {q: re.compile(rf"{q}\s*\]") for q in "\"'"}

    def finditer(self, source: str) -> Iterator[re.Match[str] | _Match]:
        n, pos = len(source), 0
        last_range = source.rfind("..")
        closes = {q: _Finder(source, pattern) for q, pattern in self.closes.items()}
        while pos < n:
            char = source[pos]
            if char == "(":
                match = self.range_open.match(source, pos) if last_range >= pos + 2 else None
                match = match or self.rules.match(source, pos, pos + 1)
            elif char == "[":
                if found := self.index.match(source, pos):
                    end = found.end()
                elif (quote := self.quote.match(source, pos)) and (closed := closes[quote.group(1)](quote.end())):
                    end = closed.end()
                else:
                    end = pos + 1
                match = self.rules.match(source, pos, end)
            else:
                match = self.rules.match(source, pos)
            if match is None:  # the rules end in "any one character": never the case
                return
            yield match
            pos = match.end()


if not isinstance(_tokenize._RE, _ExpressionRules):  # module reloads in tests
    _tokenize._RE = _ExpressionRules(_tokenize._RE)  # type: ignore[assignment]
_TEMPLATE_RULES = _TemplateRules()

_PARTIALS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("chorus_partials", default=None)
_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("chorus_budget", default=None)


class _WorkLimitError(ResourceLimitError):
    """Too many nodes executed, or too much time spent, in one render."""


@dataclass
class _Budget:
    """What one render() may still spend; shared by every template and partial it renders."""

    loops: int = LOOP_LIMIT
    nodes: int = NODE_LIMIT
    seconds: float = TIME_LIMIT
    started: float = field(default_factory=lambda: _cpu())  # when the template being rendered started
    work: int = 0  # filter work since the clock was last read (see charge)

    def tick(self) -> None:
        self.nodes -= 1
        if self.nodes < 0:
            raise _WorkLimitError(f"the template executes more than {NODE_LIMIT:,} tags and outputs", token=None)
        # the clock is a system call (tens of microseconds on some virtual machines): read it every 16th node; the
        # work inside one node is in its filters, which charge() meters
        if not self.nodes & 15:
            self.clock()

    def charge(self, units: int) -> None:
        """Meter one filter call by the size of the values it handled: the clock is read once per
        CLOCK_EVERY units, so a filter over 10,000 items reads it every call and a small one rarely."""
        self.work += units
        if self.work >= CLOCK_EVERY:
            self.work = 0
            self.clock()

    def clock(self) -> None:
        if _cpu() - self.started > self.seconds:
            raise _WorkLimitError(f"the template takes more than {TIME_LIMIT:g} CPU second(s) to render", token=None)


def _run(template: BoundTemplate, context: Mapping[str, Any]) -> str:
    """Render a parsed template, charging the time to the current budget."""
    budget = _BUDGET.get()
    if budget is None:
        return template.render(context)
    budget.started = _cpu()
    try:
        return template.render(context)
    finally:
        budget.seconds -= _cpu() - budget.started


class _Missing(FalsyStrictUndefined):
    """A missing value: false in ``{% if %}``, replaced by ``default``, an error anywhere it would be output."""

    force_liquid_default = True

    def __init__(self, name: str, *, token: Any, obj: object = UNDEFINED, hint: str | None = None):
        super().__init__(name, token=token, obj=obj, hint=hint)
        path = hint.removesuffix(" is undefined").strip("'") if hint and hint.endswith(" is undefined") else name
        self.msg = f"missing value {path}"


def _buffer(limit: int) -> LimitedStringIO:
    # newline="\n": python-liquid's limited buffer otherwise turns every "\r" of a value into "\n".
    return LimitedStringIO(limit=limit, newline="\n")


class _Context(RenderContext):
    """Meters a render: loop iterations across the whole render (not only within one nest of loops), and nodes.

    python-liquid has no per-node hook, but ``Node.render`` reads ``context.disabled_tags`` before rendering
    each node, so that property counts nodes and checks the clock (tested by the hostile-template tests).
    """

    @property
    def disabled_tags(self) -> list[str]:
        if (budget := _BUDGET.get()) is not None:
            budget.tick()
        return self._disabled_tags

    @disabled_tags.setter
    def disabled_tags(self, value: list[str]) -> None:
        self._disabled_tags = value

    def get_buffer(self, buf: Any = None) -> LimitedStringIO:
        return _buffer(OUTPUT_LIMIT - (buf.size if isinstance(buf, LimitedStringIO) else 0))

    def raise_for_loop_limit(self, length: int = 1) -> None:
        super().raise_for_loop_limit(length)
        if (budget := _BUDGET.get()) is not None:
            budget.loops -= length
            if budget.loops < 0:
                raise LoopIterationLimitError("loop iteration limit reached", token=None)


class _Template(BoundTemplate):
    context_class = _Context

    def _get_buffer(self) -> LimitedStringIO:
        return _buffer(OUTPUT_LIMIT)


class _BoundedRange(RangeLiteral):
    """``(1..n)`` with at most LOOP_LIMIT items: filters such as ``join`` or ``reversed`` would build it whole."""

    __slots__ = ()

    def _make_range(self, start: Any, stop: Any) -> range:
        items = super()._make_range(start, stop)
        if items.stop - items.start > LOOP_LIMIT:
            raise LoopIterationLimitError(f"range {self} has more than {LOOP_LIMIT:,} items", token=self.token)
        return items


class _PartialLoader(BaseLoader):
    """Partials come only from the mapping given to the current call; there is no file system behind it."""

    def get_source(self, env: Environment, template_name: str, *, context: Any = None, **kwargs: object):
        partials = _PARTIALS.get()
        source = partials.get(template_name) if partials is not None else None
        if not isinstance(source, str):
            raise TemplateNotFoundError(template_name)
        return TemplateSource(source, template_name, None)

    def load(self, env: Environment, name: str, *, globals: Any = None, context: Any = None, **kwargs: object):  # noqa: A002
        return _parse(env.kind, self.get_source(env, name).text, name)  # type: ignore[attr-defined]


def _size(value: object) -> int:
    return len(value) if isinstance(value, str | list | tuple | dict | range) else 0


def _text_size(value: object, cap: int) -> int:
    """About how many characters ``value`` makes as text (a list prints its items), counting no further than
    ``cap``: a list may hold the same long text many times, so its printed size is not its memory size."""
    total, stack = 0, [value]
    while stack and total <= cap:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 1
        elif isinstance(item, list | tuple):
            total += 2
            stack.extend(item)
        elif isinstance(item, dict):
            total += 2
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, range):
            total += len(item) * len(str(max(abs(item.start), abs(item.stop)))) + 2
        else:
            total += 8
    return total


def _could_exceed(name: str, left: object, args: tuple) -> bool:
    """Whether ``join`` or ``replace`` could build more than the output limit (``s | replace: '', s`` multiplies)."""
    cap = OUTPUT_LIMIT + 1
    if name == "join":
        separator = _text_size(args[0], cap) if args else 1
        return _text_size(left, cap) + _size(left) * separator > OUTPUT_LIMIT
    return _text_size(left, cap) * max([1, *(_text_size(a, cap) for a in args)]) > OUTPUT_LIMIT


def _describe(value: object) -> str:
    """A value as an error message shows it to a marketer: its kind and a short excerpt."""
    if value is None or isinstance(value, Undefined):
        return "nil"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"the text {value[:40]!r}" + ("…" if len(value) > 40 else "")
    if isinstance(value, int | float | decimal.Decimal):
        text = str(value)
        return f"the number {text[:40]}" + ("…" if len(text) > 40 else "")
    if isinstance(value, list | tuple | range):
        return f"a list of {len(value):,} item(s)"
    if isinstance(value, dict):
        return "an object"
    return "a value of an unsupported kind"


def _arity(name: str, sig: inspect.Signature) -> str:
    """What a filter takes, in Liquid's terms (``truncate: 20, '…'``), for argument-count errors."""
    params = [p for p in list(sig.parameters.values())[1:] if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p.name.rstrip("_") for p in params if p.default is p.empty]
    optional = [p.name.rstrip("_") for p in params if p.default is not p.empty]
    if not params:
        return f"the {name} filter takes no arguments"
    takes = f"{len(required)}" + (f" to {len(params)}" if optional else "")
    names = ", ".join(required + [f"{n} (optional)" for n in optional])
    return f"the {name} filter takes {takes} argument(s): {names}"


@sequence_filter
def _uniq(sequence: list, key: object = None) -> list[object]:
    """Liquid's ``uniq`` in linear time: python-liquid's compares every pair (10,000 items took 1.5 s, over the
    whole render budget in one call the budget cannot interrupt)."""
    seen: set = set()
    out = []
    for obj in sequence:
        item = obj
        if key is not None:
            try:
                item = obj[key]  # type: ignore[index]
            except KeyError:
                item = _NO_KEY
            except (TypeError, IndexError):
                raise FilterArgumentError(f"uniq: cannot read {key!r} of {_describe(obj)}", token=None) from None
        marker = _hashable(item)
        if marker not in seen:
            seen.add(marker)
            out.append(obj)
    return out


_NO_KEY = object()


_DATE_TEXT = 64  # characters: no date is longer, and dateutil takes seconds to reject 200,000 characters


def _date(value: object, fmt: object, **kwargs: object) -> object:
    """Liquid's ``date``; a text too long to be a date is returned unchanged without parsing (Liquid returns any
    text that is not a date unchanged)."""
    if isinstance(value, str) and len(value.strip()) > _DATE_TEXT:
        return value
    return _liquid_date(value, fmt, **kwargs)


def _hashable(value: object) -> object:
    """A hashable stand-in equal for equal values (objects and lists from JSON data are not hashable)."""
    if isinstance(value, dict):
        return ("{}", frozenset((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("[]", tuple(_hashable(v) for v in value))
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value


def _check_result(name: str, left: object, result: object) -> object:
    """What one filter returns must stay within the render's limits: a chain of filters inside one output never
    reaches the output buffer, so its intermediate values are bounded here (size) and numbers stay finite and
    within 64 bits (what JSON from outside may hold), so the next filter's work is bounded too. New text must be
    storable (``url_decode`` and ``base64_decode`` can make a NUL, which PostgreSQL cannot hold)."""
    if isinstance(result, str):
        if len(result) > OUTPUT_LIMIT:
            raise FilterError(f"{name}: the result is longer than {OUTPUT_LIMIT:,} characters", token=None)
        # isascii() is O(1): only text with other characters needs the full check (url_decode: '%00' is ASCII,
        # hence the NUL test first)
        if result is not left and ("\x00" in result or not result.isascii()) and (why := safejson.text_problem(result)):
            raise FilterError(f"{name}: the result {why}", token=None)
    elif isinstance(result, list | tuple):
        if len(result) > ITEM_LIMIT:
            raise FilterError(f"{name}: the result has more than {ITEM_LIMIT:,} items", token=None)
        # a list can hold one long text many times (concat: s | concat: s...) and be printed or joined later
        if _text_size(result, VALUE_LIMIT) > VALUE_LIMIT:
            raise FilterError(f"{name}: the result is longer than {VALUE_LIMIT:,} characters as text", token=None)
    elif isinstance(result, bool) or result is None:
        pass
    elif isinstance(result, int):
        if not safejson.INT_MIN <= result <= safejson.INT_MAX:
            raise FilterError(f"{name}: the result is out of range (numbers must fit in 64 bits)", token=None)
    elif isinstance(result, float | decimal.Decimal):
        try:
            finite = math.isfinite(float(result))
        except (OverflowError, ValueError):
            finite = False
        if not finite:
            raise FilterError(f"{name}: {_describe(left)} does not give a finite number", token=None)
    return result


def _metered(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Every filter runs through here: the render's CPU budget is checked after each call (a chain of filters in
    one output is one node, so the node clock alone never interrupts it), the result is bounded
    (:func:`_check_result`), and a failure inside the filter becomes a message in Liquid's terms instead of
    Python's (``append() missing 1 required positional argument``, ``[<class 'decimal.InvalidOperation'>]``)."""
    try:
        sig: inspect.Signature | None = inspect.signature(func)
    except (TypeError, ValueError):
        sig = None

    @functools.wraps(func)
    def metered(left: object, *args: object, **kwargs: object) -> object:
        if name in _MULTIPLYING and _could_exceed(name, left, args):
            # refused before it runs: the result would be built whole before its size could be checked
            raise FilterError(f"{name}: the result could exceed the output limit", token=None)
        try:
            result = func(left, *args, **kwargs)
        except LiquidError as err:
            # python-liquid's decorators pass Python's own message on (TypeError: "append() missing 1 required
            # positional argument"); its own wording ("truncate expected an integer") is kept
            cause = err.__cause__
            if not isinstance(cause, _PYTHON_ERRORS) or str(cause) not in str(err.message):
                raise
            raise _filter_error(name, sig, left, args, kwargs) from None
        except _PYTHON_ERRORS:
            raise _filter_error(name, sig, left, args, kwargs) from None
        if (budget := _BUDGET.get()) is not None:
            budget.charge(1 + _size(left) + _size(result))
        return _check_result(name, left, result)

    metered.signature = sig  # type: ignore[attr-defined]  # for the save-time argument check
    return metered


_PYTHON_ERRORS = (TypeError, ValueError, ArithmeticError, OverflowError, OSError, decimal.DecimalException,
                  RecursionError, KeyError, IndexError, AttributeError)  # fmt: skip


def _filter_error(name: str, sig: inspect.Signature | None, left: object, args: tuple, kwargs: dict) -> LiquidError:
    if sig is not None:
        try:
            sig.bind(left, *args, **kwargs)
        except TypeError:
            return FilterArgumentError(_arity(name, sig), token=None)
    given = f" with {', '.join(_describe(a) for a in args)}" if args else ""
    return FilterArgumentError(f"{name}: cannot be applied to {_describe(left)}{given}", token=None)


# Filters whose result can be far larger than their input (``s | replace: '', s``).
_MULTIPLYING = frozenset({"replace", "join"})


class _Environment(Environment):
    loop_iteration_limit = LOOP_LIMIT
    output_stream_limit = OUTPUT_LIMIT
    context_depth_limit = DEPTH_LIMIT
    local_namespace_limit = LOCALS_LIMIT
    template_class = _Template

    def __init__(self, kind: str, *, autoescape: bool, undefined: type[Undefined]):
        super().__init__(loader=_PartialLoader(), autoescape=autoescape, undefined=undefined, strict_filters=True)
        self.kind = kind
        self.filters["uniq"] = _uniq
        self.filters["date"] = with_environment(_date)
        for name, func in list(self.filters.items()):
            self.filters[name] = _metered(name, func)
        # python-liquid's lexers in linear time (see _TemplateRules); this environment has the default
        # delimiters and no comment syntax, which is what they implement
        self.tags["liquid"]._tokenize = functools.partial(  # type: ignore[attr-defined]
            _tokenize_liquid_expression, rules=_LiquidTagRules(), comment_start_string=""
        )

    def tokenizer(self) -> Callable[[str], Iterator[Token]]:
        return functools.partial(_tokenize_template, rules=_TEMPLATE_RULES)


# "text" for subjects, SMS, push...; "html" escapes values; "lax" renders missing values as empty and is used
# only at save time, to compile a template's MJML without a customer.
_ENVS = {
    "text": _Environment("text", autoescape=False, undefined=_Missing),
    "html": _Environment("html", autoescape=True, undefined=_Missing),
    "lax": _Environment("lax", autoescape=True, undefined=Undefined),
}


def _nodes(nodes: Any, static: RenderContext) -> Iterator[Any]:
    """Every node of a template, nested blocks included, without loading partials."""
    for node in nodes:
        yield node
        yield from _nodes(node.children(static, include_partials=False), static)


@functools.lru_cache(maxsize=2048)
def _parse(kind: str, source: str, name: str = "") -> BoundTemplate:
    """Parse once per (environment, source): the same definition is rendered for every recipient."""
    template = _ENVS[kind].from_string(source, name=name)
    for node in _nodes(template.nodes, RenderContext(template)):
        pending = list(node.expressions())
        while pending:
            expr = pending.pop()
            pending.extend(expr.children())
            if type(expr) is RangeLiteral:
                expr.__class__ = _BoundedRange
    return template


def _line(source: str, index: int) -> int:
    return source.count("\n", 0, max(index, 0)) + 1


def _error_line(err: LiquidError, source: str) -> int | None:
    token = err.token
    if token is not None and token.start_index < 0:  # an unclosed block is reported at the end of the template
        return _line(source, len(source))
    if token is None or token.source != source:  # raised in a partial: its lines are not this field's
        return None
    return _line(source, token.start_index)


def _reason(err: LiquidError) -> str:
    if isinstance(err, UndefinedError):
        return str(err.message)
    if isinstance(err, LoopIterationLimitError):
        if str(err.message).startswith("range"):
            return f"{err.message}: the loop limit is {LOOP_LIMIT:,} iterations"
        return f"the template exceeds the loop limit of {LOOP_LIMIT:,} iterations"
    if isinstance(err, OutputStreamLimitError):
        return f"the template output exceeds the limit of {OUTPUT_LIMIT:,} bytes"
    if isinstance(err, ContextDepthError):
        return "partials and loops nest too deeply (does a partial include itself?)"
    if isinstance(err, _WorkLimitError):
        return str(err.message)
    if isinstance(err, LocalNamespaceLimitError):
        return f"assigned variables exceed the limit of {LOCALS_LIMIT:,} bytes"
    if isinstance(err, TemplateNotFoundError):
        return f"partial {err.message!r} does not exist"
    return _syntax_reason(err)


def _liquid(kind: str, source: str, context: Mapping[str, Any], field: str) -> str:
    """Render one template string, turning every failure into a Skip that names the field."""
    try:
        return _run(_parse(kind, source), context)
    except LiquidError as err:
        line = None if isinstance(err, UndefinedError) else _error_line(err, source)
        raise _Skipped(_reason(err) + (f" (line {line})" if line else ""), field) from None
    except RecursionError:
        raise _Skipped("the template nests too deeply", field) from None
    except _PYTHON_ERRORS as err:  # every filter's failures are translated; this is what is left (e.g. comparing)
        raise _Skipped(f"the template could not be rendered: {_python_reason(err)}", field) from None


def _python_reason(err: Exception) -> str:
    """A Python error from outside the filters, without Python's wording (class names, reprs, codecs)."""
    if isinstance(err, ValueError) and "integer string conversion" in str(err):
        return "a number is too long to print"
    if isinstance(err, UnicodeError):
        return "a value contains a lone surrogate, which is not valid text"
    if isinstance(err, ArithmeticError | decimal.DecimalException):
        return "a calculation has no result (a division by zero or a number out of range)"
    return "a value is of a kind that cannot be used there"


# --- Limits -----------------------------------------------------------------------------------------------------


def over_limit(key: str, value: str, name: str | None = None) -> str | None:
    """The reason ``value`` is too large for ``MAX_SIZES[key]``, or None. The outbox also checks an email with it as
    it is sent, its tracked links included."""
    limit = MAX_SIZES[key]
    if limit.unit == "segments":
        info = sms.segments(value)
        if info.segments <= limit.size:
            return None
        capacity = limit.size * (sms.GSM7_MULTIPART if info.encoding == "GSM-7" else sms.UCS2_MULTIPART)
        return (
            f"{name or key} is {info.segments:,} segments; the limit is {limit.size:,} segments "
            f"({capacity:,} {info.encoding} characters)"
        )
    size = len(value.encode()) if limit.unit == "bytes" else len(value)
    if size <= limit.size:
        return None
    return f"{name or key} is {size:,} {limit.unit}; the limit is {limit.size:,} {limit.unit} ({limit.why})"


def _static_text(source: str) -> str:
    """Text outside any tag at the top level: output by every render, so a lower bound of the result."""
    return "".join(node.text for node in _parse("lax", source).nodes if isinstance(node, ContentNode))


# --- Links a person taps ----------------------------------------------------------------------------------------

# A push's url and image and an in-app call to action's url are opened by the app, the service worker or the page
# that shows them, and come from data the public write key can set (an outside probe: the inbox served
# "javascript:alert(1)" from event data). These schemes run code or show what the sender chose inside the app, or
# read the device. A deny-list, not an allow-list: an app's own deep links (shop://p/1) are as legitimate as https
# (the allow-list of 3b9a02b refused them and was reverted).
DENIED_SCHEMES = ("javascript", "data", "vbscript", "file")
# A scheme as browsers read it (the WHATWG URL standard): spaces and control characters before it dropped, tabs and
# newlines dropped anywhere ("java\tscript:" is javascript:), then a letter, letters, digits, "+", "-" or "." up to
# the first ":". Other control characters are dropped anywhere too: an app's own URL parser need not be a browser's,
# and no link a person taps holds one.
_URL_IGNORED = re.compile(r"[\x00-\x1f\x7f]")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# A push's image is shown, never opened: a small picture inline (data:image/png;base64,…) is common and runs
# nothing (review: these were refused, and templates saved with one skipped every push). Not SVG, which is a document.
_INLINE_IMAGE = re.compile(r"data:image/(?!svg)", re.IGNORECASE)
# What a refusal suggests instead: every other scheme, and a relative link, is allowed.
_LINK_ADVICE = "use a web link (https://…), an app's own link (such as shop://…) or a relative link"


def _scheme(url: str) -> str | None:
    found = _SCHEME.match(_URL_IGNORED.sub("", url).lstrip(" "))
    return found.group(1).lower() if found else None


def link_problem(url: str, name: str) -> str | None:
    """Why ``url`` cannot be a link a person taps (``name``, e.g. push.url, says which), or None.

    Read as it is and, where it holds a character reference, as an HTML attribute reads it: an app that puts it
    in an href turns "javascript&colon;…" into javascript:."""
    for read in (url, html_lib.unescape(url)) if "&" in url else (url,):
        scheme = _scheme(read)
        if scheme == "data" and name.endswith(".image") and _INLINE_IMAGE.match(_URL_IGNORED.sub("", read).lstrip(" ")):
            continue
        if scheme in DENIED_SCHEMES:
            return f"{name} is a {scheme}: link, which may run code or open something other than a page: {_LINK_ADVICE}"
    return None


def _leading_text(source: str) -> str:
    """The text a template outputs before its first tag or output: the same in every render."""
    text = []
    for node in _parse("lax", source).nodes:
        if not isinstance(node, ContentNode):
            break
        text.append(node.text)
    return "".join(text)


# --- Validation (save time) -------------------------------------------------------------------------------------


def _check_template(source: str, field: str, partials: Mapping[str, str] | None) -> None:
    """Parse and statically check one template; ``partials`` None skips checking that included partials exist.

    Checked in the lax environment (the syntax, tags and filters are the same in all three): its static analysis
    evaluates dynamic partial names, which must not fail as missing values here.
    """
    if len(source) > SOURCE_LIMIT:
        raise ContentError(field, f"the template is {len(source):,} characters; the limit is {SOURCE_LIMIT:,}")
    if problem := safejson.text_problem(source):
        raise ContentError(field, problem)
    try:
        template = _parse("lax", source)
    except LiquidError as err:
        raise ContentError(field, _syntax_reason(err), _error_line(err, source)) from None
    _check_arguments(template, source, field)
    if partials is not None:
        _check_includes(template, source, field, partials, set())
    analysis = template.analyze(include_partials=False)

    def line(span: Any) -> int | None:
        return _line(source, span.index) if not span.template_name else None

    for name, spans in analysis.filters.items():
        if name not in _ENVS["lax"].filters:
            raise ContentError(field, f"unknown filter {name!r}", line(spans[0]))
    for variables in analysis.variables.values():
        for var in variables:
            if any(str(segment).startswith("__") for segment in var.segments):
                path = ".".join(str(s) for s in var.segments)
                raise ContentError(field, f"{path}: templates can read data, not Python attributes", line(var.span))


_PY_TYPES = {
    "NoneType": "nil", "str": "text", "int": "a number", "float": "a number", "Decimal": "a number",
    "bool": "true or false", "list": "a list", "tuple": "a list", "range": "a range", "dict": "an object",
}  # fmt: skip
_PY_TYPE = re.compile(r"\b(found|got|not) (" + "|".join(_PY_TYPES) + r")\b")


_COMPARE = re.compile(r"'(<' and '>|in' and 'contains)' are not supported between '(\w+)' and '(\w+)'")


def _kind(type_name: str) -> str:
    return _PY_TYPES.get(type_name, "a value of another kind")


def _compare_reason(m: re.Match) -> str:
    """python-liquid's comparison errors name Python's types (``'<' and '>' are not supported between 'str' and
    'int'``): the same in the template's terms."""
    left, right = _kind(m.group(2)), _kind(m.group(3))
    if m.group(1).startswith("<"):
        return (
            f"cannot compare {left} with {right} using < or >: compare values of the same kind "
            "(a text holding a number becomes a number with | plus: 0)"
        )
    return f"contains cannot look for {right} in {left}: it works on a text, a list or an object"


def _syntax_reason(err: LiquidError) -> str:
    """python-liquid's messages, where they speak of its internals, in the template's terms."""
    if m := _COMPARE.fullmatch(str(err.message)):
        return _compare_reason(m)
    message = _PY_TYPE.sub(lambda m: f"{m.group(1)} {_PY_TYPES[m.group(2)]}", str(err.message))
    if m := re.fullmatch(r"expected tag (end\w+), found end of expression", message):
        return f"a block is not closed: {{% {m.group(1)} %}} is missing before the end of the template"
    if m := re.match(r"integer string conversion limit \((\d+)\) reached", message):
        return f"a value of more than {int(m.group(1)):,} characters cannot be read as a number"
    return message.replace("found end of expression", "found the end of the tag")


def _filters_of(expr: Any) -> Iterator[Any]:
    if isinstance(expr, FilteredExpression):
        yield from expr.filters or ()
    elif isinstance(expr, TernaryFilteredExpression):
        yield from expr.filters or ()
        yield from expr.tail_filters or ()


def _check_arguments(template: BoundTemplate, source: str, field: str) -> None:
    """Every filter is given arguments it takes (``append`` without one would only fail when sent)."""
    filters = _ENVS["lax"].filters
    for node in _nodes(template.nodes, RenderContext(template)):
        pending = list(node.expressions())
        while pending:
            expr = pending.pop()
            pending.extend(expr.children())
            for call in _filters_of(expr):
                sig = getattr(filters.get(call.name), "signature", None)
                if sig is None:
                    continue
                positional = [None] * sum(not isinstance(arg, KeywordArgument) for arg in call.args)
                keywords = {arg.name: None for arg in call.args if isinstance(arg, KeywordArgument)}
                keywords |= {p.name: None for p in sig.parameters.values() if p.name in ("environment", "context")}
                try:
                    sig.bind(None, *positional, **keywords)
                except TypeError:
                    line = _line(source, call.token.start_index) if call.token.source == source else None
                    raise ContentError(field, _arity(call.name, sig), line) from None


def _check_includes(template: BoundTemplate, source: str, field: str, partials: Mapping, seen: set) -> None:
    """Every partial named literally (``{% include 'footer' %}``) must exist, in partials of partials too."""
    for node in _nodes(template.nodes, RenderContext(template)):
        if not isinstance(node, IncludeNode | RenderNode) or not isinstance(node.name, StringLiteral):
            continue  # a dynamic name is looked up at render time
        name = node.name.value
        if not isinstance(partials.get(name), str):
            if template.name:
                raise ContentError(field, f"partial {name!r} (included by {template.name!r}) does not exist")
            raise ContentError(field, f"partial {name!r} does not exist", _line(source, node.name.token.start_index))
        if name not in seen:
            seen.add(name)
            try:
                partial = _parse("lax", partials[name], name)
            except LiquidError as err:
                raise ContentError(field, f"partial {name!r}: {_syntax_reason(err)}") from None
            _check_includes(partial, partials[name], field, partials, seen)


def _json_leaves(value: object, path: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    """Every string leaf of a JSON value with its path; anything that is not JSON is an error."""
    if depth > 32:
        raise ContentError(path, "JSON nested deeper than 32 levels")
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ContentError(path, f"object keys must be strings, not {key!r}")
            yield from _json_leaves(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _json_leaves(item, f"{path}[{i}]", depth + 1)
    elif not (value is None or isinstance(value, bool | int | float)):
        raise ContentError(path, f"{type(value).__name__} is not a JSON value")


def _map_json(value: Any, path: str, render: Callable[[str, str], str]) -> Any:
    if isinstance(value, str):
        return render(value, path)
    if isinstance(value, dict):
        return {k: _map_json(v, f"{path}.{k}", render) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_json(v, f"{path}[{i}]", render) for i, v in enumerate(value)]
    return value


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _check_object(value: object, path: str, keys: dict[str, bool]) -> dict:
    """A small nested object (whatsapp.template, in_app.cta): ``keys`` maps each field to whether it's required."""
    if not isinstance(value, dict):
        raise ContentError(path, "must be an object")
    for key in value:
        if key not in keys:
            raise ContentError(f"{path}.{key}", f"unknown field; expected one of {', '.join(keys)}")
    for key, required in keys.items():
        if required and key not in value:
            raise ContentError(f"{path}.{key}", "is required")
    return value


def _check_fields(channel: str, variant: object, path: str, partials: Mapping[str, str]) -> dict:
    """Types, known fields and templates of a variant or of a locale override (which may be partial)."""
    if not isinstance(variant, dict):
        raise ContentError(path, "must be an object")
    fields = _FIELDS[channel]
    for key, value in variant.items():
        if key not in fields:
            raise ContentError(f"{path}.{key}", f"unknown field; expected one of {', '.join(fields)}")
        if fields[key] is not object and not isinstance(value, fields[key]):
            expected = "a string" if fields[key] is str else "an object"
            raise ContentError(f"{path}.{key}", f"must be {expected}")
    out = copy.deepcopy(variant)
    for key, value in out.items():
        field = f"{path}.{key}"
        if isinstance(value, str):
            if (channel, key) in _NOT_EMPTY and not value.strip():
                raise ContentError(field, f"is empty: {_NOT_EMPTY[channel, key]}")
            _check_template(value, field, partials)
            if (channel, key) in _LINKS and (problem := link_problem(_leading_text(value), f"{channel}.{key}")):
                raise ContentError(field, problem)
            limit_key = "email.html" if (channel, key) in _HTML_FIELDS else f"{channel}.{key}"
            if limit_key in MAX_SIZES and (over := over_limit(limit_key, _static_text(value))):
                raise ContentError(field, f"the text outside Liquid tags is already over the limit: {over}")
    if "template" in out:
        template = _check_object(
            out["template"], f"{path}.template", {"name": True, "language": True, "parameters": False}
        )
        if not isinstance(template["name"], str) or not _WA_TEMPLATE_NAME.fullmatch(template["name"]):
            raise ContentError(f"{path}.template.name", "must be a WhatsApp template name ([a-z0-9_])")
        if not isinstance(template["language"], str) or not _WA_LANGUAGE.fullmatch(template["language"]):
            raise ContentError(f"{path}.template.language", "must be a WhatsApp language code such as en_US")
        params = template.setdefault("parameters", [])
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            raise ContentError(f"{path}.template.parameters", "must be a list of strings")
        for i, param in enumerate(params):
            if not param.strip():
                why = _NOT_EMPTY["whatsapp", "template.parameters"]
                raise ContentError(f"{path}.template.parameters[{i}]", f"is empty: {why}")
            _check_template(param, f"{path}.template.parameters[{i}]", partials)
    if "cta" in out:
        cta = _check_object(out["cta"], f"{path}.cta", {"label": True, "url": True})
        for key in ("label", "url"):
            if not isinstance(cta[key], str):
                raise ContentError(f"{path}.cta.{key}", "must be a string")
            _check_template(cta[key], f"{path}.cta.{key}", partials)
        if problem := link_problem(_leading_text(cta["url"]), f"{channel}.cta.url"):
            raise ContentError(f"{path}.cta.url", problem)
    if "body" in out and channel == "webhook":
        for leaf_path, leaf in _json_leaves(out["body"], f"{path}.body"):
            _check_template(leaf, leaf_path, partials)
        static = _map_json(out["body"], "", lambda source, _: _static_text(source))
        if over := over_limit("webhook.body", _dumps(static)):
            raise ContentError(f"{path}.body", f"the text outside Liquid tags is already over the limit: {over}")
    return out


def _check_complete(channel: str, variant: dict, path: str) -> None:
    for key in _REQUIRED.get(channel, ()):
        if key not in variant:
            raise ContentError(f"{path}.{key}", "is required")
    if group := _ONE_OF.get(channel):
        if sum(key in variant for key in group) != 1:
            raise ContentError(path, f"needs exactly one of {' or '.join(group)}")


def _merge(channel: str, base: dict, override: dict) -> dict:
    """Override fields one by one; an alternative (html for mjml, template for text) replaces the other."""
    merged = dict(base)
    for key in _ONE_OF.get(channel, ()):
        if key in override:
            for other in _ONE_OF[channel]:
                merged.pop(other, None)
    merged.update(override)
    return merged


def _check_mjml(variant: dict, field: str, layout: str | None, partials: Mapping[str, str]) -> None:
    """Compile the MJML with missing values left empty: tags and structure are checked before anyone gets it."""
    token, budget = _PARTIALS.set(partials), _BUDGET.set(_Budget())
    try:
        body = _run(_parse("lax", variant["mjml"]), {})
        if layout:
            body = _run(_parse("lax", partials[layout]), {"content": Markup(body)})
    except (LiquidError, ValueError, TypeError, ArithmeticError, RecursionError):
        return  # depends on the data: reported at render time
    finally:
        _PARTIALS.reset(token)
        _BUDGET.reset(budget)
    try:
        compile_mjml(body)
    except ValueError as err:
        with_layout = f" (with layout {layout!r})" if layout else ""
        raise ContentError(field, f"{err}{with_layout}") from None


def _mjml_document(text: str) -> bool:
    """Whether a rendered body or layout is an MJML document (what compile_mjml requires it to start with)."""
    return _MJML_COMMENT.sub("", text).lstrip().startswith("<mjml")


def _check_html_layout(field: str, layout: str, partials: Mapping[str, str]) -> None:
    """An ``html`` variant goes into an HTML page: inside an MJML layout it would be sent as raw ``<mjml>`` tags
    (the opposite mix, ``mjml`` in an HTML layout, is refused by compiling it)."""
    token, budget = _PARTIALS.set(partials), _BUDGET.set(_Budget())
    try:
        page = _run(_parse("lax", partials[layout]), {"content": Markup("")})
    except (LiquidError, ValueError, TypeError, ArithmeticError, RecursionError):
        page = partials[layout]  # depends on the data: its source says what it is
    finally:
        _PARTIALS.reset(token)
        _BUDGET.reset(budget)
    if _mjml_document(page):
        raise ContentError(
            field,
            f"layout {layout!r} is an MJML document, which an html variant cannot go into: write this variant as "
            "mjml, or use a layout that is an HTML page",
        )


def validate_partial(name: str, source: str) -> None:
    """Check a partial (a layout or a snippet for ``{% include %}`` / ``{% render %}``) before saving it."""
    if not isinstance(name, str) or not _PARTIAL_NAME.fullmatch(name):
        raise ContentError("name", "a partial name is 1 to 64 characters of a-z, 0-9, _ and -")
    if not isinstance(source, str):
        raise ContentError("source", "must be a string")
    # Other partials it includes may not exist yet: that is checked with the definitions that use it.
    _check_template(source, "source", None)


def validate_definition(doc: object, partials: Mapping[str, str] | None = None, *, at: str = "") -> dict:
    """Check a message definition before saving it; return it normalised (defaults filled in).

    Raises ContentError naming the first field at fault. ``partials`` are the workspace's partials by name
    (None means there are none): layouts and static includes must name one of them. ``at`` is where the definition
    sits in the request, when it is not the whole body: with ``at="content"`` (a message sent with inline content)
    the error names ``content.variants.sms.text`` as the request has it, not ``variants.sms.text``.
    """
    try:
        return _validate_definition(doc, partials)
    except ContentError as err:
        if not at:
            raise
        field = at if err.field in ("", "definition") else f"{at}{'' if err.field.startswith('[') else '.'}{err.field}"
        raise ContentError(field, err.message, err.line) from None


def _validate_definition(doc: object, partials: Mapping[str, str] | None) -> dict:
    partials = dict(partials or {})
    if not isinstance(doc, dict):
        raise ContentError("definition", "must be a JSON object")
    if bad := safejson.problem(doc, ""):  # NUL, lone surrogates (in keys too), numbers JSON and the store refuse
        raise ContentError(*bad)
    allowed = ("name", "kind", "topic", "layout", "variants", "locales")
    for key in doc:
        if key not in allowed:
            raise ContentError(key, f"unknown field; expected one of {', '.join(allowed)}")
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ContentError("name", "is required: a string of 1 to 200 characters")
    kind = doc.get("kind", "marketing")
    if kind not in KINDS:
        raise ContentError("kind", f"must be one of {', '.join(KINDS)}")
    topic = doc.get("topic", "marketing" if kind == "marketing" else "transactional")
    if not isinstance(topic, str) or not policy.TOPIC_NAME.fullmatch(topic):
        raise ContentError("topic", f"must be {policy.TOPIC_RULE}")
    layout = doc.get("layout")
    if layout is not None:
        if not isinstance(layout, str) or layout not in partials:
            raise ContentError("layout", f"no partial named {layout!r}")
        _check_template(partials[layout], "layout", partials)
        if "content" not in _parse("lax", partials[layout]).analyze(include_partials=False).globals:
            raise ContentError("layout", f"partial {layout!r} must output {{{{ content }}}}")

    variants = doc.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ContentError("variants", "needs at least one channel variant")
    out_variants: dict[str, dict] = {}
    for channel in variants:
        if channel not in CHANNELS:
            raise ContentError(f"variants.{channel}", f"unknown channel; expected one of {', '.join(CHANNELS)}")
    for channel in CHANNELS:
        if channel in variants:
            path = f"variants.{channel}"
            variant = _check_fields(channel, variants[channel], path, partials)
            _check_complete(channel, variant, path)
            if "mjml" in variant:
                _check_mjml(variant, f"{path}.mjml", layout, partials)
            elif "html" in variant and layout:
                _check_html_layout(f"{path}.html", layout, partials)
            out_variants[channel] = variant

    locales = doc.get("locales") or {}
    if not isinstance(locales, dict):
        raise ContentError("locales", "must be an object of locale -> channel -> fields")
    out_locales: dict[str, dict] = {}
    for locale, overrides in locales.items():
        base = f"locales.{locale}"
        if not isinstance(locale, str) or not _LOCALE.fullmatch(locale):
            raise ContentError(base, "is not a locale such as fr or fr-CA")
        if not isinstance(overrides, dict):
            raise ContentError(base, "must be an object of channel -> fields")
        out_locales[locale] = {}
        for channel, override in overrides.items():
            path = f"{base}.{channel}"
            if channel not in out_variants:
                raise ContentError(path, f"there is no default {channel} variant to override")
            checked = _check_fields(channel, override, path, partials)
            merged = _merge(channel, out_variants[channel], checked)
            _check_complete(channel, merged, path)
            if "mjml" in checked:
                _check_mjml(merged, f"{path}.mjml", layout, partials)
            elif "html" in checked and layout:
                _check_html_layout(f"{path}.html", layout, partials)
            out_locales[locale][channel] = checked
    return {
        "name": name,
        "kind": kind,
        "topic": topic,
        "layout": layout,
        "variants": out_variants,
        "locales": out_locales,
    }


# --- Rendering (send time) --------------------------------------------------------------------------------------


def _localised(definition: Mapping, channel: str, locale: str | None) -> tuple[dict, str | None, dict[str, str]]:
    """The variant for ``locale``: default, then the language (fr), then the exact locale (fr-CA) laid over it.

    Returns the merged fields, the most specific locale that contributed (None: the default) and, per field,
    the definition path it came from (for Skip.field).
    """
    variant = dict(definition["variants"][channel])
    origin = {key: f"variants.{channel}.{key}" for key in variant}
    used = None
    locales = definition.get("locales") or {}
    if locale:
        by_norm = {key.lower().replace("_", "-"): key for key in locales}
        parts = locale.lower().replace("_", "-").split("-")
        for i in range(1, len(parts) + 1):
            key = by_norm.get("-".join(parts[:i]))
            override = locales[key].get(channel) if key else None
            if override:
                variant = _merge(channel, variant, override)
                origin |= {field: f"locales.{key}.{channel}.{field}" for field in override}
                used = key
    return variant, used, origin


def _require(value: str | None, field: str, name: str) -> str:
    if value is None or not value.strip():
        raise _Skipped(f"{name} is empty", field)
    return value


def _limit(key: str, value: str, field: str, name: str | None = None) -> str:
    if over := over_limit(key, value, name):
        raise _Skipped(over, field)
    return value


_INLINER = css_inline.CSSInliner(keep_at_rules=True, keep_link_tags=True, load_remote_stylesheets=False)
_PREHEADER = (
    '<div style="display:none;font-size:1px;color:#ffffff;line-height:1px;max-height:0px;max-width:0px;'
    'opacity:0;overflow:hidden;mso-hide:all;">{}</div>'
)
_BODY_TAG = re.compile(r"<body\b[^>]*>", re.I)
_TEXT_CONFIG = ParserConfig(display_links=True)


_MJML_POSITION = re.compile(r" at position (\d+):(\d+)")
# [^<>]: one pass, however the text is broken; the name is atomic: once it ends on a word boundary, a tag without
# its ">" is not retried with each shorter name ("<mj-a-a-a…" took 13 s for 16,000 characters)
_MJML_TAG = re.compile(r"<(/?)(?>(mjml|mj-[\w-]+)\b)[^<>]*?(/?)>")
_MJML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)


def _mjml_tags(body: str) -> str | None:
    """The first MJML tag left open or closed out of turn, with its line: ``<mj-text> at line 3 is not closed``.
    Only the ``mj-`` tags are followed (HTML inside ``mj-text`` is not), so None when they all pair up."""
    text = _MJML_COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), body)
    stack: list[tuple[str, int]] = []
    line, seen = 1, 0
    for m in _MJML_TAG.finditer(text):
        closing, name, selfclosing = m.groups()
        line, seen = line + text.count("\n", seen, m.start()), m.start()
        if selfclosing:
            continue
        if not closing:
            stack.append((name, line))
        elif stack and stack[-1][0] == name:
            stack.pop()
        elif stack and any(opened == name for opened, _ in stack):  # closes an outer tag: the inner one is open
            opened, at = stack[-1]
            return f"<{opened}> at line {at} is not closed before </{name}> at line {line}"
        else:
            return f"</{name}> at line {line} closes a tag that is not open"
    if stack:
        name, line = stack[-1]
        return f"<{name}> at line {line} is not closed"
    return None


def _mjml_problem(message: str, body: str) -> str:
    """mjml-python's (mrml's) error in our words: which kind of problem and, where it gives a position (a byte
    offset into the document), the line; never its own text, its "root template" or the offsets."""
    line, near = None, ""
    if m := _MJML_POSITION.search(message):
        raw = body.encode("utf-8", "surrogatepass")
        line = raw[: int(m.group(1))].count(b"\n") + 1
        near = raw[int(m.group(1)) : int(m.group(2))].decode("utf-8", "replace").strip()[:40]
    at = f" at line {line}" if line else ""
    # mrml points at an element by its name, with or without the "<"
    element = f"<{name.group(1)}>{at}" if (name := re.match(r"<?([\w-]+)", near)) else f"an element{at}"
    if message.startswith("unable to load included template"):
        return f"the MJML has an mj-include{at}, which cannot be loaded here: use a layout or a partial instead"
    if found := _mjml_tags(body):  # an MJML tag left open explains any of mrml's complaints, and says where
        return f"the MJML is not well-formed: {found}"
    if message.startswith("unexpected end of stream"):
        return "the MJML is not well-formed: a tag is not closed"
    if message.startswith("unexpected token"):
        return "the MJML is not well-formed: a closing tag does not match the tag it closes" + (
            f"{at}, near {near!r}" if near else at
        )
    if message.startswith("unable to parse next template"):
        return (
            "the MJML is not well-formed: it has markup that cannot be read (a stray '<', an attribute without "
            "quotes or a comment left open)"
        )
    if message.startswith("unexpected element"):
        return f"the MJML has {element}, where it is not allowed"
    if message.startswith("unexpected attribute"):
        return f"the MJML has an attribute that is not allowed{at}"
    return f"the MJML does not compile{at}"


# mrml (MJML) and css-inline parse recursively, in native code: a document nested some thousands of elements deep
# overflows the thread's stack and kills the whole process (5,000 nested <mj-section>, or 20,000 <b>, did). No
# email comes near this depth; elements whose end tag HTML lets one leave out (<p>, <li>, <td>...) and void
# elements (<br>, <img>...) do not count, a tag left open does.
NESTING_LIMIT = 1_000
_ANY_TAG = re.compile(r"<(/?)([A-Za-z][^\s/<>]*+)[^<>]*+>")  # possessive: one pass over a tag without its ">"
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
_OPTIONAL_END = frozenset("p li dt dd option optgroup tr td th thead tbody tfoot colgroup caption rb rt rp rtc".split())


def _nesting_problem(markup: str, kind: str) -> str | None:
    """Why ``markup`` (MJML or HTML) nests too deeply for its parser, or None: see NESTING_LIMIT."""
    depth = 0
    for m in _ANY_TAG.finditer(_MJML_COMMENT.sub("", markup)):
        name = m.group(2).lower()
        if name in _VOID or m.group(0).endswith("/>") or (kind == "HTML" and name in _OPTIONAL_END):
            continue
        depth = max(depth - 1, 0) if m.group(1) else depth + 1
        if depth > NESTING_LIMIT:
            return f"the {kind} nests elements more than {NESTING_LIMIT:,} deep (are tags left open?)"
    return None


def compile_mjml(body: str) -> str:
    """MJML to HTML; a ValueError says what is wrong in the template's terms (mjml-python speaks of its parser's
    "root template" and byte offsets). A fragment (``<mj-section>…``) is only valid inside a layout."""
    start = body.lstrip()
    if not start.startswith("<mjml"):
        raise ValueError(
            "MJML must be a whole document, <mjml><mj-body>…</mj-body></mjml>, but this starts with "
            f"{start[:20]!r}: wrap it, or set a layout that is the document and outputs {{{{ content }}}} "
            "inside <mj-body>"
        )
    if "<mj-body" not in body:
        raise ValueError("MJML has no <mj-body>: the content goes in <mjml><mj-body>…</mj-body></mjml>")
    if problem := _nesting_problem(body, "MJML"):
        raise ValueError(problem)
    try:
        return mjml2html(body)
    except ValueError as err:
        raise ValueError(_mjml_problem(str(err), body)) from None


def _html_to_text(html: str) -> str:
    """The plain-text part: links as ``[label](url)``, hidden elements (the preheader) left out."""
    return _tidy_text(get_text(html, _TEXT_CONFIG))


_CONTENT_TAG = re.compile(r"\{\{-?\s*content\s*-?\}\}")
# Filters whose output is markup (or undoes escaping): in HTML they become text differently than in plain text.
_MARKUP_FILTERS = {"newline_to_br", "escape", "escape_once", "xml_escape", "safe", "raw"}
_HOLE = "zqxchorus{}x"


def _text_part(markup: str, source: str, layout: str | None) -> str | None:
    """The plain-text part as a Liquid template, or None when it must be made from each rendered HTML.

    Converting HTML to text costs more than the rest of an email's rendering, and for most emails it needs doing
    once per template, not once per recipient: when the source's Liquid is output tags alone (a loop or a
    condition could change the structure the text is made from), its tags are swapped for placeholders, the
    compiled HTML is converted once, and the tags go back into the text."""
    if layout is not None:
        if len(_CONTENT_TAG.findall(layout)) != 1 or re.search(r"\bcontent\b", source):
            return None
        source = _CONTENT_TAG.sub(lambda _m: source, layout)
    return _text_template(markup, source)


def _markup_spans(source: str) -> list[tuple[int, int]]:
    """Where the Liquid tags and outputs are: what ``re.findall(r"{{.*?}}|{%.*?%}", source, re.S)`` finds, in
    linear time (that regex scans to the end of the source from every "{{" without a "}}" after it, which a
    comment full of braces makes quadratic)."""
    spans: list[tuple[int, int]] = []
    opener, out_close, tag_close = (_Finder(source, p) for p in (_MARKUP_START, _OUT_CLOSE, _TAG_CLOSE))
    pos = 0
    while (opened := opener(pos)) is not None:
        start = opened.start()
        closed = (out_close if source[start + 1] == "{" else tag_close)(start + 2)
        if closed is None:
            pos = start + 1
        else:
            spans.append((start, closed.end()))
            pos = closed.end()
    return spans


@functools.lru_cache(maxsize=512)
def _text_template(markup: str, source: str) -> str | None:
    spans = _markup_spans(source)
    tags = [source[start:end] for start, end in spans]
    if any(not t.startswith("{{") or _MARKUP_FILTERS & set(re.findall(r"\|\s*(\w+)", t)) for t in tags):
        return None
    if "zqxchorus" in source:
        return None
    parts, last = [], 0
    for i, (start, end) in enumerate(spans):
        parts += [source[last:start], _HOLE.format(i)]
        last = end
    holed = "".join(parts) + source[last:]
    try:
        if markup == "mjml" and _nesting_problem(holed, "MJML"):
            return None
        html = mjml2html(holed) if markup == "mjml" else holed
        if _nesting_problem(html, "HTML"):
            return None
        text = _html_to_text(_INLINER.inline(html))
    except ValueError:
        return None
    text = text.replace("{", "{{ '{' }}")  # literal braces in the text stay text
    text = re.sub(r"zqxchorus(\d+)x", lambda m: tags[int(m.group(1))], text)
    return None if "zqxchorus" in text else text


def _tidy_text(text: str) -> str:
    lines = [line.strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _one_line(text: str) -> str:
    """Subjects and preheaders are one line: a newline from a value must never reach a mail header."""
    return " ".join(text.split())


def _email(v: dict, ctx: dict, at: dict[str, str], layout: str | None, partials: Mapping[str, str]) -> dict:
    subject = _require(_one_line(_liquid("text", v["subject"], ctx, at["subject"])), at["subject"], "email.subject")
    preheader = _one_line(_liquid("text", v["preheader"], ctx, at["preheader"])) if v.get("preheader") else None
    markup = "mjml" if "mjml" in v else "html"
    body = _liquid("html", v[markup], ctx, at[markup])
    if layout:
        if not isinstance(partials.get(layout), str):
            raise _Skipped(f"layout {layout!r} does not exist", "layout")
        body = _liquid("html", partials[layout], {**ctx, "content": Markup(body)}, "layout")
        if markup == "html" and _mjml_document(body):  # the layout was changed to MJML after the save
            raise _Skipped(
                f"layout {layout!r} is an MJML document, which an html variant cannot go into: write this variant "
                "as mjml, or use a layout that is an HTML page",
                at["html"],
            )
    if markup == "mjml":
        try:
            body = compile_mjml(body)
        except ValueError as err:
            raise _Skipped(str(err), at["mjml"]) from None
    if problem := _nesting_problem(body, "HTML"):
        raise _Skipped(problem, at[markup])
    try:
        html = _INLINER.inline(body)
    except ValueError as err:
        raise _Skipped(f"CSS could not be inlined: {err}", at[markup]) from None
    if preheader:
        hidden = _PREHEADER.format(html_lib.escape(preheader))
        html = _BODY_TAG.sub(lambda m: m.group(0) + hidden, html, count=1)
    _limit("email.html", html, at[markup])
    text = _liquid("text", v["text"], ctx, at["text"]) if v.get("text") else ""
    if not text:
        template = _text_part(markup, v[markup], partials.get(layout) if layout else None)
        text = _tidy_text(_liquid("text", template, ctx, at[markup])) if template else _html_to_text(html)
    return {"subject": subject, "preheader": preheader, "html": html, "text": text}


def _sms(v: dict, ctx: dict, at: dict[str, str], *_: object) -> dict:
    text = _require(_liquid("text", v["text"], ctx, at["text"]), at["text"], "sms.text")
    _limit("sms.text", text, at["text"])
    info = sms.segments(text)
    return {"text": text, "encoding": info.encoding, "segments": info.segments, "characters": info.characters}


def _optional(channel: str, key: str, v: dict, ctx: dict, at: dict[str, str]) -> str | None:
    if not v.get(key):
        return None
    value = _liquid("text", v[key], ctx, at[key])
    if f"{channel}.{key}" in MAX_SIZES:
        _limit(f"{channel}.{key}", value, at[key])
    return value


def _push(v: dict, ctx: dict, at: dict[str, str], *_: object) -> dict:
    fields = {key: _optional("push", key, v, ctx, at) for key in ("title", "body", "url", "image")}
    _require(fields["body"], at["body"], "push.body")
    for key in ("url", "image"):
        fields[key] = fields[key].strip() if fields[key] else None
        if fields[key] and (problem := link_problem(fields[key], f"push.{key}")):
            raise _Skipped(problem, at[key])
    return fields


def _whatsapp(v: dict, ctx: dict, at: dict[str, str], *_: object) -> dict:
    if "text" in v:
        text = _require(_liquid("text", v["text"], ctx, at["text"]), at["text"], "whatsapp.text")
        return {"text": _limit("whatsapp.text", text, at["text"])}
    template = v["template"]
    params = []
    for i, source in enumerate(template.get("parameters", [])):
        field, name = f"{at['template']}.parameters[{i}]", f"whatsapp.template.parameters[{i}]"
        value = _require(_liquid("text", source, ctx, field), field, name)
        if re.search(r"[\n\t]| {5}", value):  # Meta rejects these (error 132018)
            raise _Skipped(f"{name} has a new line, a tab or more than 4 spaces in a row", field)
        params.append(_limit("whatsapp.template.parameters", value, field, name))
    return {"template": {"name": template["name"], "language": template["language"], "parameters": params}}


def _messenger(v: dict, ctx: dict, at: dict[str, str], *_: object) -> dict:
    text = _require(_liquid("text", v["text"], ctx, at["text"]), at["text"], "messenger.text")
    return {"text": _limit("messenger.text", text, at["text"])}


def _in_app(v: dict, ctx: dict, at: dict[str, str], *_: object) -> dict:
    fields: dict[str, Any] = {key: _optional("in_app", key, v, ctx, at) for key in ("title", "body")}
    _require(fields["body"], at["body"], "in_app.body")
    cta = v.get("cta")
    fields["cta"] = (
        {key: _liquid("text", cta[key], ctx, f"{at['cta']}.{key}") for key in ("label", "url")} if cta else None
    )
    if fields["cta"] and (problem := link_problem(fields["cta"]["url"], "in_app.cta.url")):
        raise _Skipped(problem, f"{at['cta']}.url")
    return fields


def _webhook(v: dict, ctx: dict, at: dict[str, str], *_: object) -> dict:
    body = _map_json(v["body"], at["body"], lambda source, path: _liquid("text", source, ctx, path))
    _limit("webhook.body", _dumps(body), at["body"])
    return {"body": body}


_RENDERERS = {
    "email": _email,
    "sms": _sms,
    "push": _push,
    "whatsapp": _whatsapp,
    "messenger": _messenger,
    "in_app": _in_app,
    "webhook": _webhook,
}


def render(
    definition: Mapping,
    channel: str,
    context: Mapping,
    *,
    locale: str | None = None,
    partials: Mapping[str, str] | None = None,
) -> Rendered | Skip:
    """Render one channel's variant of a validated definition for one recipient.

    ``context`` is everything templates can see (``profile``, ``traits``, ``event``, ``message``...). Never
    raises for content problems: anything that would send broken or oversized text is a Skip with the reason.
    """
    if channel not in CHANNELS:
        raise ContentError("channel", f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
    if channel not in (definition.get("variants") or {}):
        return Skip(f"the message has no {channel} variant", f"variants.{channel}")
    variant, used, at = _localised(definition, channel, locale)
    partials = partials or {}
    tokens = _PARTIALS.set(partials), _BUDGET.set(_Budget())
    try:
        fields = _RENDERERS[channel](variant, dict(context), at, definition.get("layout"), partials)
    except _Skipped as skipped:
        return skipped.skip
    finally:
        _PARTIALS.reset(tokens[0])
        _BUDGET.reset(tokens[1])
    return Rendered(channel, used, fields)


def preview(
    definition: Mapping,
    context: Mapping,
    *,
    locale: str | None = None,
    partials: Mapping[str, str] | None = None,
) -> dict[str, Rendered | Skip]:
    """Render every variant of a definition, as the editor's preview shows them side by side: each with
    ``message.channel`` set to its channel, as a send of it sets it (it was empty in preview: an outside probe)."""
    def on(channel: str) -> Mapping:
        return {**context, "message": {**(context.get("message") or {}), "channel": channel}}

    return {
        channel: render(definition, channel, on(channel), locale=locale, partials=partials)
        for channel in CHANNELS
        if channel in (definition.get("variants") or {})
    }
