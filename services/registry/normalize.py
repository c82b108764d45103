"""Normalisation of volunteer contact data: Cambodian phone numbers to E.164, names to search keys.

Pure functions with no I/O, shared by the registry's write paths (CSV import, API) and its search.

Phone numbers
-------------
`normalize_phone` accepts what people actually type in Cambodia -- `012 345 678`, `+855 12 345 678`,
`00855-12-345-678`, `+855 (0)12 345 678`, Khmer digits `០១២ ៣៤៥ ៦៧៨` -- and returns E.164
(`+85512345678`). A Cambodian national significant number (NSN) is 8 or 9 digits and never starts
with 0. Numbers from other countries are accepted only when written with a leading `+` and 8 to 15
digits in all (E.164's maximum), because without the `+` a foreign number cannot be told apart from a
mistyped Cambodian one; `00` followed by another country code is therefore refused. A bare NSN with
neither trunk `0` nor country code (`12345678`) is refused too: people in Cambodia always write the
`0`, so a number without it is more likely missing a digit than missing a prefix.

Name keys
---------
`normalize_name` returns a key for matching and searching, never for display (`nfc` is for storage).
Two spellings that a person would read as the same name must give the same key:

* Compatibility forms fold together (NFKC: full-width letters, ligatures), then case (casefold).
* Accents are removed from Latin letters only (`Sokhá` → `sokha`). Khmer dependent vowels and signs
  are combining characters too, so stripping every combining mark would destroy Khmer names; a mark
  is removed only when the letter it sits on is Latin (or when it sits on no letter at all).
* Apostrophes are deleted (`O'Neil` = `ONeil`); other punctuation and symbols separate words
  (`Chan,Sokha` = `Chan Sokha`). Whitespace collapses to single spaces between Latin words.
* Khmer is written without spaces between words, so whitespace between two Khmer characters is
  dropped (`សុខា ចាន់` = `សុខាចាន់`). A space between Khmer and Latin text is kept.
* Invisible characters are dropped: every format character (category Cf: ZWSP U+200B, ZWNJ U+200C,
  ZWJ U+200D, BOM U+FEFF, LRM, soft hyphen, ...), and the deprecated invisible Khmer inherent vowels
  U+17B4/U+17B5. Khmer keyboards and copy-paste from the web insert these freely.
* Khmer syllables are put into one canonical order. A syllable is a base (consonant U+1780-U+17A2 or
  independent vowel U+17A3-U+17B3) followed by dependent components: coeng (U+17D2) + consonant
  pairs (subscripts), register shifters (U+17C9, U+17CA), robat (U+17CC), dependent vowels
  (U+17B6-U+17C5) and other signs (U+17C6-U+17D1, U+17D3, U+17DD). Renderers draw most of these in
  fixed positions whatever order they were typed in, so `ស + ី + ្ + រ` looks exactly like `ស្រី`
  (`ស + ្ + រ + ី`) on screen but is a different string. The components are stably sorted into the
  order Unicode recommends: subscripts first, kept in their typed order (with two subscripts the order
  is meaningful: ស្ត្រ is not ស្រ្ត), then register shifters, robat, vowels, then other signs.
  Shifters and signs are also sorted by code point among themselves (their order never changes the
  rendering); vowels keep their typed order, because two vowels in a syllable are either a typo or a
  split vowel whose order matters.

The key is not a transliteration: `Sokha` and `សុខា` give different keys.
"""
from __future__ import annotations

import unicodedata

# --- phone numbers -----------------------------------------------------------------------------

CAMBODIA_COUNTRY_CODE = "855"
_CAMBODIAN_NSN_LENGTHS = (8, 9)
# E.164 allows at most 15 digits; fewer than 8 is not a plausible subscriber number anywhere.
_E164_MIN_DIGITS = 8
_E164_MAX_DIGITS = 15

_KHMER_DIGITS = str.maketrans({chr(0x17E0 + i): str(i) for i in range(10)})
# Word processors and phone contact apps turn "-" into typographic dashes; accept those as well.
_PHONE_SEPARATORS = frozenset("-.()\u2010\u2011\u2012\u2013\u2014\u2015\u2212")


def normalize_phone(raw: str) -> str:
    """Return `raw` as an E.164 number (`+85512345678`), or raise ValueError saying what is wrong.

    Accepted: spaces, dashes, dots and parentheses anywhere; ASCII or Khmer digits; a national
    number with trunk prefix `0`; the Cambodian country code as `855`, `+855` or `00855`, optionally
    followed by the trunk `0` that people often keep (`+855 (0)12 345 678`); foreign numbers in `+`
    form with 8-15 digits. See the module docstring for why everything else is refused.
    """
    if not isinstance(raw, str):
        raise TypeError(f"phone number must be a string, not {type(raw).__name__}")
    has_plus, digits = _phone_digits(raw)
    if not digits:
        raise ValueError("phone number is empty" if not raw.strip() else "phone number contains no digits")

    if has_plus:
        if digits.startswith(CAMBODIA_COUNTRY_CODE):
            return _cambodian(digits[len(CAMBODIA_COUNTRY_CODE):], after_country_code=True)
        return _foreign(digits)
    if digits.startswith("00"):
        if digits.startswith("00" + CAMBODIA_COUNTRY_CODE):
            return _cambodian(digits[2 + len(CAMBODIA_COUNTRY_CODE):], after_country_code=True)
        raise ValueError("international numbers other than Cambodia (+855) must be written with a leading '+'")
    if digits.startswith("0"):
        return _cambodian(digits[1:], after_country_code=False)
    if digits.startswith(CAMBODIA_COUNTRY_CODE):
        return _cambodian(digits[len(CAMBODIA_COUNTRY_CODE):], after_country_code=True)
    raise ValueError(
        "phone number must start with the trunk prefix 0 (e.g. 012 345 678) "
        "or a country code (+855, 855, 00855 or +<country code>)"
    )


def _phone_digits(raw: str) -> tuple[bool, str]:
    """Split `raw` into (had a leading '+', its ASCII digits), refusing any stray character."""
    has_plus = False
    digits: list[str] = []
    for ch in raw.translate(_KHMER_DIGITS):
        if "0" <= ch <= "9":
            digits.append(ch)
        elif ch.isspace() or ch in _PHONE_SEPARATORS:
            continue
        elif ch == "+":
            # Only before the first digit, so "(+855) 12 ..." passes but "012+345" does not.
            if has_plus or digits:
                raise ValueError("'+' is only allowed once, at the start of the phone number")
            has_plus = True
        else:
            raise ValueError(
                f"phone number contains an invalid character {ch!r}; "
                "only digits, spaces, dashes, dots, parentheses and a leading '+' are allowed"
            )
    return has_plus, "".join(digits)


def _cambodian(nsn: str, *, after_country_code: bool) -> str:
    if after_country_code and nsn.startswith("0"):
        nsn = nsn[1:]  # the "+855 (0)12 ..." habit: the trunk 0 kept after the country code
    if nsn.startswith("0"):
        raise ValueError("Cambodian phone number has too many leading zeros")
    if len(nsn) not in _CAMBODIAN_NSN_LENGTHS:
        raise ValueError(
            "Cambodian phone number must have 8 or 9 digits after the leading 0 "
            f"(e.g. 012 345 678 or 097 123 4567); got {len(nsn)}"
        )
    return f"+{CAMBODIA_COUNTRY_CODE}{nsn}"


def _foreign(digits: str) -> str:
    if digits.startswith("0"):
        raise ValueError("a country code cannot start with 0")
    if not _E164_MIN_DIGITS <= len(digits) <= _E164_MAX_DIGITS:
        raise ValueError(
            f"international phone number must have {_E164_MIN_DIGITS} to {_E164_MAX_DIGITS} digits "
            f"including the country code; got {len(digits)}"
        )
    return f"+{digits}"


# --- names -------------------------------------------------------------------------------------

_COENG = "\u17d2"
_KHMER_INHERENT_VOWELS = frozenset("\u17b4\u17b5")
# Typed in place of each other inside Latin names; deleted rather than turned into a word break.
_APOSTROPHES = frozenset("'`\u00b4\u2018\u2019\u02bc\u2032")

# Rank of each dependent Khmer component in the canonical order (coeng pairs are rank 0).
_SUBSCRIPT, _REGISTER_SHIFTER, _ROBAT, _VOWEL, _SIGN = range(5)
_KHMER_MARK_RANK: dict[str, int] = {
    "\u17c9": _REGISTER_SHIFTER,
    "\u17ca": _REGISTER_SHIFTER,
    "\u17cc": _ROBAT,
    **{chr(cp): _VOWEL for cp in range(0x17B6, 0x17C6)},
    **{chr(cp): _SIGN for cp in range(0x17C6, 0x17D2) if cp not in (0x17C9, 0x17CA, 0x17CC)},
    "\u17d3": _SIGN,
    "\u17dd": _SIGN,
}
# Within these ranks the typed order carries no meaning, so it is normalised too.
_RANKS_SORTED_BY_CODE_POINT = frozenset({_REGISTER_SHIFTER, _SIGN})


def nfc(s: str) -> str:
    """Trim and NFC-normalise `s`: the form in which names are stored, as the person gave them."""
    return unicodedata.normalize("NFC", s.strip())


def normalize_name(raw: str) -> str:
    """Return the search/matching key of a person's or place's name (see the module docstring).

    Returns "" for a name with nothing searchable in it (only spaces or punctuation).
    """
    if not isinstance(raw, str):
        raise TypeError(f"name must be a string, not {type(raw).__name__}")
    text = "".join(ch for ch in raw if not _is_invisible(ch) and ch not in _APOSTROPHES)
    # Reorder before NFKC: canonical reordering would move ATTHACAN (ccc 230) behind a following
    # coeng (ccc 9) and detach the coeng from the consonant it subscripts.
    text = _reorder_khmer(text)
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    text = _strip_latin_marks(text)
    text = "".join(_word_char(ch) for ch in text)
    # Again after joining Khmer words: a mark typed after a stray space only now meets its base.
    return _reorder_khmer(_join_words(text.split()))


def _is_invisible(ch: str) -> bool:
    return unicodedata.category(ch) == "Cf" or ch in _KHMER_INHERENT_VOWELS


def _is_khmer(ch: str) -> bool:
    return "\u1780" <= ch <= "\u17ff" or "\u19e0" <= ch <= "\u19ff"


def _is_khmer_base(ch: str) -> bool:
    return "\u1780" <= ch <= "\u17b3"


def _reorder_khmer(text: str) -> str:
    """Put the dependent components of every Khmer syllable in `text` into canonical order."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        out.append(ch)
        i += 1
        if not _is_khmer_base(ch):
            continue
        components: list[tuple[int, str]] = []
        while i < n:
            mark = text[i]
            if mark == _COENG:
                if i + 1 < n and _is_khmer_base(text[i + 1]):
                    components.append((_SUBSCRIPT, text[i : i + 2]))
                    i += 2
                else:
                    # A coeng with nothing to subscript: keep it with the subscripts, do not guess.
                    components.append((_SUBSCRIPT, mark))
                    i += 1
            elif mark in _KHMER_MARK_RANK:
                components.append((_KHMER_MARK_RANK[mark], mark))
                i += 1
            else:
                break
        components.sort(key=_component_sort_key)  # stable: subscripts and vowels keep typed order
        out.extend(component for _, component in components)
    return "".join(out)


def _component_sort_key(component: tuple[int, str]) -> tuple[int, int]:
    rank, text = component
    return rank, (ord(text) if rank in _RANKS_SORTED_BY_CODE_POINT else 0)


def _is_latin_letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L") and unicodedata.name(ch, "").startswith("LATIN ")


def _strip_latin_marks(text: str) -> str:
    """Remove combining marks carried by Latin letters (or by no letter); keep all others."""
    out: list[str] = []
    base = ""
    for ch in unicodedata.normalize("NFD", text):
        if unicodedata.category(ch).startswith("M"):
            on_latin = bool(base) and _is_latin_letter(base)
            # A stray mark after a space or punctuation (NFKC turns U+00A8 "¨" into space + U+0308)
            # is noise, unless it is Khmer: a space typed inside a Khmer syllable is fixed later.
            stray = not base or not unicodedata.category(base).startswith("L")
            if on_latin or (stray and not _is_khmer(ch)):
                continue
        else:
            base = ch
        out.append(ch)
    return unicodedata.normalize("NFC", "".join(out))


def _word_char(ch: str) -> str:
    category = unicodedata.category(ch)
    if category[0] in "PS":
        return " "
    if category == "Cc" and not ch.isspace():
        return ""
    return ch


def _join_words(words: list[str]) -> str:
    if not words:
        return ""
    parts = [words[0]]
    for previous, word in zip(words, words[1:]):
        if not (_is_khmer(previous[-1]) and _is_khmer(word[0])):
            parts.append(" ")
        parts.append(word)
    return "".join(parts)
