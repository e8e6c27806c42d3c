"""Guards: cheap lexical checks that veto a semantic match whose meaning differs from the query's.

Sentence embeddings place "Track order 48213" and "Track order 48231" at cosine 0.99, and "Is it
safe" next to "Is it unsafe": they encode topic, not the detail that decides the answer. No single
threshold separates those traps from genuine paraphrases, so a candidate above the threshold is
also checked by a few guards, each looking at one kind of detail:

* :class:`NumberGuard` - numbers, amounts, dates and identifiers (``48213`` vs ``48231``, ``$50`` vs
  ``$500``, ``tomorrow`` vs ``next Tuesday``, ``BA117`` vs ``BA171``).
* :class:`PolarityGuard` - negation and polarity (``safe``/``unsafe``, ``open``/``closed``,
  ``can``/``can't``, ``eat``/``avoid``): an odd number of negation cues on one side only, or a word
  on one side whose antonym is on the other.
* :class:`EntityGuard` - names and quoted strings (``Netflix`` vs ``Spotify``, ``'ls'`` vs ``'ln'``).
* :class:`ScopeGuard` - comparison and scope words (``more``/``less``, ``all``/``some``,
  ``before``/``after``, ``first``/``last``, ``min``/``max``, superlatives).
* :class:`SubstitutionGuard` - the two texts are the same sentence with one content word swapped
  (``ibuprofen`` vs ``acetaminophen``): the classic adversarial one-word edit.

A guard errs on the side of a veto: a missed hit costs one upstream call, a wrong hit serves a wrong
answer. Each returns a :class:`~stratacache.semantic.base.GuardVerdict` naming itself and what
differed; :class:`~stratacache.semantic.cache.SemanticCache` counts the vetoes per guard.

>>> NumberGuard().check("Track order 48213", "track order #48213") is None
True
>>> NumberGuard().check("Track order 48213", "Track order 48231").reason
'numbers differ: 48213 vs 48231'
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from functools import lru_cache

from stratacache.semantic.base import Guard, GuardVerdict

__all__ = [
    "ANTONYM_PAIRS",
    "NEGATION_CUES",
    "EntityGuard",
    "NumberGuard",
    "PolarityGuard",
    "ScopeGuard",
    "SubstitutionGuard",
    "content_words",
    "default_guards",
    "first_veto",
    "lower_words",
]

# A number keeps its decimal point and thousands separators ("4.12", "1,500"): split at them,
# "4.12" and "4.2" would both read as two small numbers.
_WORD = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+(?:['\u2019][^\W_]+)*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def _split(text: str) -> list[str]:
    # Word lists are written as one string for readability.
    return text.split()


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


@lru_cache(maxsize=4096)
def _lower_words(text: str) -> tuple[str, ...]:
    # Contractions are split so the negation survives: "can't" -> "can", "n't"; "what's" -> "what".
    out: list[str] = []
    for word in _words(text.replace("\u2019", "'")):
        low = word.lower()
        if low in ("cannot", "can't"):
            out += ["can", "n't"]
        elif low in ("won't",):
            out += ["will", "n't"]
        elif low.endswith("n't"):
            out += [low[:-3], "n't"]
        elif low.endswith(("'s", "'re", "'ve", "'m", "'ll", "'d")):
            out.append(low.split("'", 1)[0])
        else:
            out.append(low)
    return tuple(out)


def _stem(word: str) -> str:
    # A deliberately crude stemmer: it only has to map both sides of a comparison the same way
    # ("closed"/"close", "raises"/"raise", "taking"/"take"), not produce dictionary forms.
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def _verdict(name: str, what: str, a: Iterable[str], b: Iterable[str]) -> GuardVerdict:
    left = " ".join(sorted(a)) or "-"
    right = " ".join(sorted(b)) or "-"
    return GuardVerdict(name, f"{what} differ: {left} vs {right}")


# --- numbers, amounts, dates, identifiers ---------------------------------------------------------

# "one" is left out: "one should", "which one" use it as a pronoun far more often than a count, and
# "once" for the same reason ("once she becomes president"); "twice" still marks a count.
_NUMBER_WORDS = {
    "zero": "0", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40",
    "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "dozen": "12", "half": "0.5", "twice": "2x", "thrice": "3x",
    "teens": "10s", "twenties": "20s", "thirties": "30s", "forties": "40s", "fifties": "50s",
    "sixties": "60s", "seventies": "70s", "eighties": "80s", "nineties": "90s",
}  # fmt: skip
_DATE_WORDS = frozenset(
    _split("""january february march april june july august september october november december
    monday tuesday wednesday thursday friday saturday sunday weekend weekday
    today tomorrow yesterday tonight morning afternoon evening night noon midnight""")
)  # "may" is left out: it is far more often the modal verb than the month
_RELATIVE = frozenset({"last", "next", "this", "previous", "coming", "current", "past"})
_PERIODS = frozenset(
    _split("day week month year quarter decade century weekend night morning season semester")
)
_CURRENCY = {
    "$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "₹": "inr", "usd": "usd", "eur": "eur",
    "gbp": "gbp", "jpy": "jpy", "inr": "inr", "dollar": "usd", "euro": "eur", "pound": "gbp",
    "yen": "jpy", "rupee": "inr", "bitcoin": "btc", "btc": "btc", "cad": "cad", "aud": "aud",
    "chf": "chf", "cny": "cny", "rs": "inr",
}  # fmt: skip
_AM_PM = frozenset({"am", "pm", "a.m", "p.m"})
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NUMBER_WITH_UNIT = re.compile(r"(\d+(?:\.\d+)?)(am|pm|st|nd|rd|th|s|k|m|bn)?")
_CURRENCY_SYMBOL = re.compile(r"[$€£¥₹]")


def _numeric_signature(text: str) -> Counter[str]:
    items: Counter[str] = Counter()
    for symbol in _CURRENCY_SYMBOL.findall(text):
        items["cur:" + _CURRENCY[symbol]] += 1
    words = _lower_words(text)
    for i, word in enumerate(words):
        if any(c.isdigit() for c in word):
            match = _NUMBER_WITH_UNIT.fullmatch(word.replace(",", ""))
            if match is None:
                items["id:" + word] += 1  # BA117, S23, 3g, mp3: compared whole
                continue
            value, unit = match.groups()
            items[_canonical_number(value)] += 1
            if unit in ("am", "pm", "k", "m", "bn"):
                items["unit:" + unit] += 1
        elif word in _NUMBER_WORDS:
            items[_NUMBER_WORDS[word]] += 1
        elif (
            word in _AM_PM
            and i > 0
            and (_NUMBER.fullmatch(words[i - 1]) or words[i - 1] in _NUMBER_WORDS)
        ):
            # Only after a number: "7 am" is a time, "why am I" is not.
            items["unit:" + word.replace(".", "")] += 1
        elif word in _DATE_WORDS:
            items["date:" + word] += 1
        elif word in _CURRENCY or (word.endswith("s") and word[:-1] in _CURRENCY):
            code = _CURRENCY.get(word) or _CURRENCY[word[:-1]]
            if len(word) > 1:
                items["cur:" + code] += 1
        elif word in _RELATIVE and i + 1 < len(words) and _stem(words[i + 1]) in _PERIODS:
            items[f"date:{word} {words[i + 1]}"] += 1
    # "$50" and "50 dollars" both say usd once; counting the symbol and the word would differ.
    for key in [k for k in items if k.startswith("cur:")]:
        items[key] = 1
    return items


def _canonical_number(value: str) -> str:
    value = value.replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".") or "0"
    return value.lstrip("0") or "0"


class NumberGuard:
    """Vetoes when the numbers, amounts, currencies, dates or identifiers of the two texts differ.

    Spelled numbers count as digits (``two`` = ``2``), thousands separators and leading zeros are
    ignored, ``7pm`` = ``7 pm``, and a token mixing letters and digits (``BA117``) is compared whole.
    """

    name = "numbers"
    """The metrics label."""

    def check(self, query: str, candidate: str) -> GuardVerdict | None:
        """Veto when the two numeric signatures are not the same multiset."""
        a = _numeric_signature(query)
        b = _numeric_signature(candidate)
        if a == b:
            return None
        only_a = [_label(k) for k in (a - b).elements()]
        only_b = [_label(k) for k in (b - a).elements()]
        return _verdict(self.name, "numbers", only_a, only_b)


def _label(item: str) -> str:
    return item.split(":", 1)[1] if ":" in item else item


# --- negation and polarity ------------------------------------------------------------------------

NEGATION_CUES: frozenset[str] = frozenset(
    {
        "not", "no", "never", "n't", "without", "none", "nothing", "nobody", "nowhere",
        "neither", "nor", "avoid", "avoiding", "avoided", "avoids", "lack", "lacks", "lacking",
        "instead",
    }
)  # fmt: skip
"""Words that flip a statement; an odd count on one side only is a change of polarity."""

ANTONYM_PAIRS: tuple[tuple[str, str], ...] = tuple(
    tuple(pair.split("/"))  # type: ignore[misc]
    for pair in _split("""
    safe/dangerous safe/toxic safe/harmful safe/poisonous safe/risky open/close allow/forbid
    allow/ban allow/prohibit allowed/forbidden enable/disable import/export increase/decrease
    increase/reduce raise/lower rise/fall buy/sell buy/rent rent/own add/remove add/delete
    create/delete include/exclude accept/reject accept/decline win/lose true/false pass/fail
    success/failure succeed/fail start/stop start/end begin/end upload/download push/pull
    hot/cold warm/cold high/low higher/lower good/bad better/worse best/worst right/wrong
    positive/negative pros/cons advantage/drawback benefit/drawback benefit/risk strong/weak
    fast/slow faster/slower fastest/slowest large/small larger/smaller largest/smallest
    big/small bigger/smaller biggest/smallest long/short longer/shorter longest/shortest
    tall/short heavy/light cheap/expensive cheapest/expensive early/late earliest/latest
    old/new old/young oldest/youngest oldest/newest rich/poor easy/hard easy/difficult
    happy/sad love/hate before/after above/below inside/outside internal/external input/output
    male/female men/women man/woman boy/girl husband/wife north/south east/west day/night
    morning/evening summer/winter light/dark white/black wet/dry full/empty alive/dead live/die
    friend/enemy cause/prevent gain/lose gain/loss profit/loss win/loss attack/defend
    encrypt/decrypt compress/decompress encode/decode join/leave arrive/depart
    arrival/departure enter/exit login/logout send/receive eat/avoid take/avoid drink/avoid
    use/avoid show/hide visible/hidden public/private online/offline sync/async major/minor
    plus/minus add/subtract multiply/divide inbound/outbound incoming/outgoing
    upstream/downstream ascend/descend ascending/descending asc/desc maximum/minimum max/min
    most/least more/less more/fewer always/never all/none everyone/nobody everything/nothing
    yes/no agree/oppose support/oppose legal/banned lock/unlock mount/unmount
    """)
)
"""Word pairs of opposite meaning (compared after a light stemming, so inflections match)."""

_NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "non-", "anti", "de")


@lru_cache(maxsize=1)
def _antonyms() -> dict[str, frozenset[str]]:
    table: dict[str, set[str]] = {}
    for left, right in ANTONYM_PAIRS:
        table.setdefault(_stem(left), set()).add(_stem(right))
        table.setdefault(_stem(right), set()).add(_stem(left))
    return {k: frozenset(v) for k, v in table.items()}


class PolarityGuard:
    """Vetoes when one text negates the other or uses a word's antonym.

    Negation: the parity of :data:`NEGATION_CUES` (``not``, ``n't``, ``never``, ``without``,
    ``avoid``...) differs. Polarity: a word on one side has an antonym (:data:`ANTONYM_PAIRS`, or the
    same word with a negating prefix: ``safe``/``unsafe``, ``legal``/``illegal``) on the other side,
    and that antonym is not on the first side too.
    """

    name = "polarity"
    """The metrics label."""

    def check(self, query: str, candidate: str) -> GuardVerdict | None:
        """Veto on a negation-parity or antonym difference."""
        words_a = _lower_words(query)
        words_b = _lower_words(candidate)
        neg_a = sum(w in NEGATION_CUES for w in words_a)
        neg_b = sum(w in NEGATION_CUES for w in words_b)
        if neg_a % 2 != neg_b % 2:
            cues_a = [w for w in words_a if w in NEGATION_CUES]
            cues_b = [w for w in words_b if w in NEGATION_CUES]
            return _verdict(self.name, "negations", cues_a, cues_b)
        stems_a = {_stem(w): w for w in words_a}
        stems_b = {_stem(w): w for w in words_b}
        only_a = stems_a.keys() - stems_b.keys()
        only_b = stems_b.keys() - stems_a.keys()
        table = _antonyms()
        pairs = [(x, y) for x in only_a for y in table.get(x, ()) if y in only_b]
        pairs += list(_prefixed_pairs(only_a, only_b))
        for x, y in pairs:
            word = stems_a.get(x) or stems_b[x]
            other = stems_b.get(y) or stems_a[y]
            return GuardVerdict(self.name, f"opposites: {word} vs {other}")
        return None


def _prefixed_pairs(
    only_a: AbstractSet[str], only_b: AbstractSet[str]
) -> Iterable[tuple[str, str]]:
    for x, y in ((only_a, only_b), (only_b, only_a)):
        for word in x:
            if len(word) < 3:
                continue
            for prefix in _NEGATING_PREFIXES:
                if prefix + word in y:
                    yield word, prefix + word


# --- named entities and quoted strings ------------------------------------------------------------

_QUOTED = re.compile(
    r"\"([^\"]+)\""
    r"|\u201c([^\u201d]+)\u201d"
    r"|\u2018([^\u2019]+)\u2019"
    r"|(?<![\w'])'([^']+)'(?![\w'])"
)
_NOT_NAMES = frozenset({"i", "i'm", "i've", "i'd", "i'll", "ok", "okay", "q", "a"})


def _entities(text: str) -> set[str]:
    found: set[str] = set()
    for sentence in _SENTENCE.split(text):
        for position, word in enumerate(_words(sentence.replace("\u2019", "'"))):
            core = re.sub(r"'s$", "", word)
            low = core.lower()
            if low in _NOT_NAMES or not core:
                continue
            inner_caps = any(c.isupper() for c in core[1:])  # iPhone, macOS, TCP, McDonald
            if inner_caps or (position > 0 and core[0].isupper() and low not in _FUNCTION_WORDS):
                found.add(low)
    return found


def _forms(text: str) -> set[str]:
    lower = set(_lower_words(text)) | {w.lower() for w in _words(text)}
    return lower | {_stem(w) for w in lower}


def _quoted(text: str) -> set[str]:
    return {
        " ".join(_lower_words(next(g for g in groups if g)))
        for groups in _QUOTED.findall(text)
        if any(groups)
    }


class EntityGuard:
    """Vetoes when a name or a quoted string of one text does not occur in the other.

    A name is a capitalised word after the first word of a sentence, or any word with a capital
    inside it (``TCP``, ``iPhone``). The other text only has to contain the word, in any case, so
    ``Netflix`` matches ``netflix``; the sentence's first word is skipped because capitalisation
    there says nothing. A quoted span must appear, as words, in the other text.
    """

    name = "entities"
    """The metrics label."""

    def check(self, query: str, candidate: str) -> GuardVerdict | None:
        """Veto when either side names something the other does not mention."""
        words_a = _forms(query)
        words_b = _forms(candidate)
        missing_b = {e for e in _entities(query) if e not in words_b and _stem(e) not in words_b}
        missing_a = {
            e for e in _entities(candidate) if e not in words_a and _stem(e) not in words_a
        }
        if missing_a or missing_b:
            return _verdict(self.name, "names", missing_b, missing_a)
        text_a = " " + " ".join(_lower_words(query)) + " "
        text_b = " " + " ".join(_lower_words(candidate)) + " "
        quoted_b = {q for q in _quoted(query) if f" {q} " not in text_b}
        quoted_a = {q for q in _quoted(candidate) if f" {q} " not in text_a}
        if quoted_a or quoted_b:
            return _verdict(self.name, "quoted strings", quoted_b, quoted_a)
        return None


# --- comparison and scope -------------------------------------------------------------------------

_STRICT_SCOPE = {
    "only": "only", "single": "single", "exclusively": "only",
    "before": "before", "after": "after", "prior": "before", "since": "since", "until": "until",
    "min": "min", "minimum": "min", "max": "max", "maximum": "max",
    "least": "least", "fewest": "least", "fewer": "less", "less": "less",
    "more": "more", "most": "most",
}  # fmt: skip
"""Scope words whose presence on one side alone changes the question."""
_PAIRED_SCOPE = {
    "all": "all", "every": "all", "each": "each", "any": "some", "some": "some", "both": "both",
    "either": "either", "many": "many", "few": "few", "several": "several", "none": "none",
    "first": "1st", "second": "2nd", "third": "3rd", "fourth": "4th", "fifth": "5th",
    "sixth": "6th", "seventh": "7th", "eighth": "8th", "ninth": "9th", "tenth": "10th",
    "last": "last", "final": "last", "penultimate": "penultimate",
    "next": "next", "previous": "previous", "earlier": "earlier", "later": "later",
    "greater": "more", "higher": "higher", "lower": "lower", "above": "above", "below": "below",
    "over": "over", "under": "under", "between": "between", "within": "within",
}  # fmt: skip
"""Scope words that only veto when both sides use one and they differ (``some`` tips = tips)."""
_NOT_SUPERLATIVE = frozenset(
    _split("""test best interest request forest honest modest suggest invest guest west rest chest nest
    protest contest harvest digest earnest manifest arrest quest pest vest zest lest crest
    priest conquest latest""")
)
_QUANTIFIERS = frozenset(
    {"all", "each", "any", "some", "both", "either", "many", "few", "several", "none"}
)
# "most" and "more" are common in paraphrases ("the most effective way to"), so a one-sided use
# is tolerated when the other side has no scope word at all.
_SOFT = frozenset({"more", "most"})


def _scope(text: str) -> tuple[set[str], set[str]]:
    strict: set[str] = set()
    paired: set[str] = set()
    for word in _lower_words(text):
        if word in _STRICT_SCOPE:
            strict.add(_STRICT_SCOPE[word])
        elif word in _PAIRED_SCOPE:
            paired.add(_PAIRED_SCOPE[word])
        elif word in ("best", "worst", "latest") or (
            word.endswith("est") and len(word) > 5 and word not in _NOT_SUPERLATIVE
        ):
            paired.add(word)
    return strict, paired


class ScopeGuard:
    """Vetoes when comparison or scope words differ: ``first``/``last``, ``all``/``some``,
    ``before``/``after``, ``min``/``max``, ``only``, and superlatives (``cheapest``/``earliest``).

    Strict words (``only``, ``before``, ordinals, ``min``/``max``...) veto when either side alone
    has them; the looser ones (``all``, ``some``, superlatives) only when both sides have scope words
    and they differ, because "what are some tips" and "give me tips" ask the same thing.
    """

    name = "scope"
    """The metrics label."""

    def check(self, query: str, candidate: str) -> GuardVerdict | None:
        """Veto on a scope difference."""
        strict_a, paired_a = _scope(query)
        strict_b, paired_b = _scope(candidate)
        if strict_a != strict_b:
            diff_a, diff_b = strict_a - strict_b, strict_b - strict_a
            soft_only = (diff_a | diff_b) <= _SOFT
            if not soft_only or ((strict_a | paired_a) and (strict_b | paired_b)):
                return _verdict(self.name, "scope words", diff_a, diff_b)
        # Quantifiers and ranks (ordinals, superlatives) are compared apart: "some of the best"
        # and "the best" share their rank, and the lone "some" changes nothing.
        for a, b in (
            (paired_a & _QUANTIFIERS, paired_b & _QUANTIFIERS),
            (paired_a - _QUANTIFIERS, paired_b - _QUANTIFIERS),
        ):
            if a and b and a != b:
                return _verdict(self.name, "scope words", a - b, b - a)
        return None


# --- one-word substitutions -----------------------------------------------------------------------

_FUNCTION_WORDS = frozenset(
    _split("""a an the is are was were be been being am do does did done doing have has had having
    how what which who whom whose why where when can could should would will shall might must may
    i me my mine we us our you your yours he him his she her it its they them their this that
    these those there here to of in on at by for with from into onto about as and or but if so
    then than please tell give show explain let get any some s n't not no just also very really
    way ways best good kind type one thing things say said called named mean all every each""")
)
_SYNONYMS: frozenset[frozenset[str]] = frozenset(
    frozenset(_stem(w) for w in pair.split("/"))
    for pair in _split(
        """tall/high big/large small/little store/shop buy/purchase begin/start fix/repair
        car/automobile movie/film delivery/shipping couch/sofa rich/wealthy quick/fast
        price/cost error/mistake help/assist job/work choose/pick cellphone/phone mobile/phone
        smartphone/phone photo/picture image/picture pic/picture kid/child children/kids
        begin/commence end/finish finish/complete create/make build/make learn/study
        improve/better speak/talk reach/contact update/change modify/change alter/change
        fastest/quickest quickest/fastest easiest/simplest best/top"""
    )
)


def _content(text: str) -> list[str]:
    # Numbers are the number guard's business; here "three" and "3" are one word.
    return [
        _NUMBER_WORDS.get(w) or _stem(w) for w in _lower_words(text) if w not in _FUNCTION_WORDS
    ]


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


class SubstitutionGuard:
    """Vetoes when the texts are one sentence with exactly one content word replaced.

    ``Side effects of ibuprofen`` / ``Side effects of acetaminophen`` share every word but one; an
    embedding scores them 0.9 while the answers differ. A swap that looks like a typo (same first
    letter, one edit, four letters or more: ``pasword``) is allowed, as are another form of the same
    word (``paint``/``painter``), a short list of common synonyms (``tall``/``high``) and swaps of
    function words (``how do I`` / ``how can I``). Other synonym swaps are vetoed: that costs a hit,
    never a wrong answer.

    :param min_shared: how many content words the two texts must share for the rule to apply
        (below that, the texts are not "the same sentence" and the other guards decide).
    """

    name = "substitution"
    """The metrics label."""

    def __init__(self, min_shared: int = 2) -> None:
        self.min_shared = min_shared

    def check(self, query: str, candidate: str) -> GuardVerdict | None:
        """Veto on a single content-word swap that is not a typo."""
        seq_a = _content(query)
        seq_b = _content(candidate)
        a = Counter(seq_a)
        b = Counter(seq_b)
        only_a = list((a - b).elements())
        only_b = list((b - a).elements())
        if len(only_a) != 1 or len(only_b) != 1:
            return None
        shared = sum((a & b).values())
        if shared < self.min_shared:
            return None
        x, y = only_a[0], only_b[0]
        # Only "the same sentence": the shared words in the same order, the swap in one place.
        if [w if w != x else "\0" for w in seq_a] != [w if w != y else "\0" for w in seq_b]:
            return None
        typo = min(len(x), len(y)) >= 4 and x[0] == y[0] and _edit_distance(x, y) <= 1
        # One stem extending the other is the same word in another form (paint / painter).
        variant = x.startswith(y) or y.startswith(x)
        if typo or variant or frozenset((x, y)) in _SYNONYMS:
            return None
        return GuardVerdict(self.name, f"one word replaced: {x} vs {y}")


# --- composition ----------------------------------------------------------------------------------


def default_guards() -> list[Guard]:
    """The guards the semantic cache runs by default, cheapest and most decisive first."""
    return [NumberGuard(), PolarityGuard(), EntityGuard(), ScopeGuard(), SubstitutionGuard()]


def first_veto(guards: Sequence[Guard], query: str, candidate: str) -> GuardVerdict | None:
    """Run ``guards`` in order; return the first veto, or ``None`` when every guard passes."""
    for guard in guards:
        verdict = guard.check(query, candidate)
        if verdict is not None:
            return verdict
    return None


def lower_words(text: str) -> tuple[str, ...]:
    """The lowercased words of ``text`` as the guards see them (contractions split: ``n't``)."""
    return _lower_words(text)


def content_words(text: str) -> list[str]:
    """The stemmed content words of ``text``, function words dropped, spelled numbers as digits."""
    return _content(text)
