"""Unit tests of services.registry.normalize: phone numbers to E.164, name search keys, NFC storage."""
from __future__ import annotations

import unicodedata

import pytest

from services.registry.normalize import nfc, normalize_name, normalize_phone

# Khmer code points, named so that the typed orders in the tests are readable.
SA, RO, TA, KHA, NYO, HA, NO = "\u179f", "\u179a", "\u178f", "\u1781", "\u1789", "\u17a0", "\u1793"
COENG = "\u17d2"
VOWEL_AA, VOWEL_I, VOWEL_II, VOWEL_U = "\u17b6", "\u17b7", "\u17b8", "\u17bb"
NIKAHIT, REAHMUK, TRIISAP, MUUSIKATOAN, BANTOC, ROBAT = "\u17c6", "\u17c7", "\u17ca", "\u17c9", "\u17cb", "\u17cc"
ZWSP, ZWNJ, ZWJ, BOM = "\u200b", "\u200c", "\u200d", "\ufeff"


# --- normalize_phone ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("012 345 678", "+85512345678"),
        ("012345678", "+85512345678"),
        ("012-345-678", "+85512345678"),
        ("012.345.678", "+85512345678"),
        ("(012) 345 678", "+85512345678"),
        ("  012 345 678  ", "+85512345678"),
        ("\u00a0012\u00a0345\u00a0678", "+85512345678"),  # no-break spaces from copy-paste
        ("012\u2013345\u2013678", "+85512345678"),  # en dashes from a word processor
        ("+855 12 345 678", "+85512345678"),
        ("+85512345678", "+85512345678"),
        ("855 12 345 678", "+85512345678"),
        ("00855 12 345 678", "+85512345678"),
        ("+855 (0)12 345 678", "+85512345678"),  # trunk 0 kept after the country code
        ("855012345678", "+85512345678"),
        ("00855 012 345 678", "+85512345678"),
        ("(+855) 12-345-678", "+85512345678"),
        ("097 1234567", "+855971234567"),  # 9-digit NSN (mobile)
        ("0123456789", "+855123456789"),
        ("+855 97 123 4567", "+855971234567"),
        ("023 123 456", "+85523123456"),  # Phnom Penh landline
        ("085 512 345", "+85585512345"),  # national number whose NSN starts with 855
        ("០១២ ៣៤៥ ៦៧៨", "+85512345678"),  # Khmer digits
        ("+៨៥៥ ៩៧ ១២៣ ៤៥៦៧", "+855971234567"),
        ("០៩៧-123-៤៥៦៧", "+855971234567"),  # mixed digit scripts
        ("+66 81 234 5678", "+66812345678"),  # Thailand
        ("+1 (202) 555-0143", "+12025550143"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+12345678", "+12345678"),  # 8 digits: shortest foreign number accepted
        ("+123456789012345", "+123456789012345"),  # 15 digits: E.164 maximum
    ],
)
def test_normalize_phone_accepts(raw: str, expected: str) -> None:
    assert normalize_phone(raw) == expected


def test_normalize_phone_result_is_stable() -> None:
    for raw in ("012 345 678", "097 1234567", "+66 81 234 5678"):
        once = normalize_phone(raw)
        assert normalize_phone(once) == once


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("---", "no digits"),
        ("+", "no digits"),
        ("abc", "invalid character 'a'"),
        ("012 345 67a", "invalid character 'a'"),
        ("012 345 678 ext 9", "invalid character 'e'"),
        ("012/345/678", "invalid character '/'"),
        ("012 345 678, 097 123 4567", "invalid character ','"),
        ("٠١٢٣٤٥٦٧٨", "invalid character"),  # Arabic-Indic digits are not accepted
        ("012+345678", "'\\+' is only allowed once, at the start"),
        ("++85512345678", "'\\+' is only allowed once"),
        ("12345678", "must start with the trunk prefix 0"),  # bare NSN: probably a missing digit
        ("912345678", "must start with the trunk prefix 0"),
        ("01234567", "8 or 9 digits .*got 7"),
        ("01234567890", "8 or 9 digits .*got 10"),
        ("0", "8 or 9 digits .*got 0"),
        ("+855 1234567", "8 or 9 digits .*got 7"),
        ("+855 1234567890", "8 or 9 digits .*got 10"),
        ("855 1234567", "8 or 9 digits"),
        ("00855 1234567", "8 or 9 digits"),
        ("+855 00 12 345 678", "too many leading zeros"),
        ("0012345678", "other than Cambodia"),  # "00" is the international prefix
        ("0044 20 7946 0958", "other than Cambodia .* leading '\\+'"),
        ("+0 123 456 789", "country code cannot start with 0"),
        ("+1234567", "8 to 15 digits .*got 7"),
        ("+1234567890123456", "8 to 15 digits .*got 16"),
    ],
)
def test_normalize_phone_rejects(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_phone(raw)


def test_normalize_phone_error_does_not_echo_the_number() -> None:
    # Messages end up in logs; they describe the problem without repeating personal data.
    with pytest.raises(ValueError) as excinfo:
        normalize_phone("+855 1234567")
    assert "1234567" not in str(excinfo.value)


@pytest.mark.parametrize("raw", [None, 12345678, b"012345678"])
def test_normalize_phone_requires_a_string(raw: object) -> None:
    with pytest.raises(TypeError):
        normalize_phone(raw)  # type: ignore[arg-type]


# --- normalize_name: Latin ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "Sokha  Chan",
        "sokha chan",
        "Sokhá Chan",
        "SOKHA CHAN",
        "  Sokha\tChan\n",
        "Sokha\u00a0Chan",
        "So\u200bkha Chan",
        "Sokha-Chan",
        "Sokha, Chan.",
        "Ｓｏｋｈａ Ｃｈａｎ",  # full-width forms
        "Sokha\u0301 Cha\u0302n",  # decomposed accents
    ],
)
def test_latin_spellings_of_one_name_share_a_key(raw: str) -> None:
    assert normalize_name(raw) == "sokha chan"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("O'Neil", "oneil"),
        ("O\u2019Neil", "oneil"),  # typographic apostrophe
        ("O\u00b4Neil", "oneil"),  # acute accent used as an apostrophe
        ("ONeil", "oneil"),
        ("Straße", "strasse"),
        ("ﬁona", "fiona"),
        ("Nguyễn Văn Ánh", "nguyen van anh"),
        ("Łukasz Øst", "łukasz øst"),  # letters without a decomposition are kept
        ("Chan (Sokha) #2", "chan sokha 2"),
        ("Đặng", "đang"),
    ],
)
def test_latin_name_keys(raw: str, expected: str) -> None:
    assert normalize_name(raw) == expected


def test_accents_on_other_scripts_are_kept() -> None:
    # Only Latin accents are dropped: й (и + breve) is a distinct Cyrillic letter.
    assert normalize_name("Андрей") == "андрей"
    assert normalize_name("Андрей") != normalize_name("Андреи")


def test_different_latin_names_keep_different_keys() -> None:
    assert normalize_name("Sokha") != normalize_name("Sokhan")
    assert normalize_name("Sok Ha") != normalize_name("Sokha")


# --- normalize_name: Khmer ---------------------------------------------------------------------

SOKHA = "សុខា"
SREI = SA + COENG + RO + VOWEL_II  # ស្រី, typed in the recommended order


def test_khmer_name_is_its_own_key() -> None:
    # Dependent vowels are combining marks, but they are not accents: nothing may be stripped.
    assert normalize_name(SOKHA) == SOKHA
    assert normalize_name(SREI) == SREI
    assert normalize_name("ខ្ញុំ") == "ខ្ញុំ"


@pytest.mark.parametrize("invisible", [ZWSP, ZWNJ, ZWJ, BOM, "\u2060", "\u00ad", "\u17b4", "\u17b5"])
def test_khmer_invisible_characters_do_not_matter(invisible: str) -> None:
    assert normalize_name("សុ" + invisible + "ខា") == SOKHA
    assert normalize_name(invisible + SOKHA + invisible) == SOKHA


def test_khmer_vowel_typed_before_subscript_matches() -> None:
    typed = SA + VOWEL_II + COENG + RO  # ស + ី + ្ + រ: looks the same on screen
    assert typed != SREI
    assert normalize_name(typed) == normalize_name(SREI) == SREI


def test_khmer_zero_width_space_inside_syllable_matches() -> None:
    typed = SA + VOWEL_II + ZWSP + COENG + ZWNJ + RO
    assert normalize_name(typed) == SREI


def test_khmer_two_subscripts_keep_their_order() -> None:
    stri = SA + COENG + TA + COENG + RO + VOWEL_II  # ស្ត្រី "woman"
    typed_vowel_first = SA + VOWEL_II + COENG + TA + COENG + RO
    assert normalize_name(typed_vowel_first) == stri
    # ស្រ្តី is a different (misspelt) stack, so it must not be folded into ស្ត្រី.
    assert normalize_name(SA + COENG + RO + COENG + TA + VOWEL_II) != stri


@pytest.mark.parametrize(
    "typed",
    [
        KHA + COENG + NYO + VOWEL_U + NIKAHIT,  # ខ្ញុំ, recommended order
        KHA + COENG + NYO + NIKAHIT + VOWEL_U,  # nikahit before the vowel
        KHA + VOWEL_U + NIKAHIT + COENG + NYO,  # vowel and sign before the subscript
        KHA + NIKAHIT + VOWEL_U + COENG + NYO,
    ],
)
def test_khmer_nikahit_before_or_after_vowel_matches(typed: str) -> None:
    assert normalize_name(typed) == "ខ្ញុំ"


def test_khmer_bantoc_and_register_shifter_orders_match() -> None:
    hun = HA + TRIISAP + VOWEL_U + NO  # ហ៊ុន
    assert normalize_name(HA + VOWEL_U + TRIISAP + NO) == hun
    # Bantoc typed before the vowel on the same base.
    assert normalize_name(SA + BANTOC + VOWEL_I) == SA + VOWEL_I + BANTOC


def test_khmer_canonical_component_order() -> None:
    # Every kind of component on one base, typed in reverse: subscripts, shifter, robat, vowel, sign.
    typed = SA + REAHMUK + NIKAHIT + VOWEL_AA + ROBAT + MUUSIKATOAN + COENG + TA + COENG + RO
    expected = SA + COENG + TA + COENG + RO + MUUSIKATOAN + ROBAT + VOWEL_AA + NIKAHIT + REAHMUK
    assert normalize_name(typed) == expected


def test_khmer_signs_are_ordered_among_themselves() -> None:
    assert normalize_name(SA + VOWEL_AA + REAHMUK + NIKAHIT) == normalize_name(SA + VOWEL_AA + NIKAHIT + REAHMUK)


def test_khmer_two_vowels_keep_their_typed_order() -> None:
    # Two vowels on one base is a typo or a split vowel; reordering them could merge distinct strings.
    assert normalize_name(SA + VOWEL_I + VOWEL_AA) == SA + VOWEL_I + VOWEL_AA
    assert normalize_name(SA + VOWEL_AA + VOWEL_I) == SA + VOWEL_AA + VOWEL_I


def test_khmer_dangling_coeng_is_left_alone() -> None:
    # A coeng followed by a vowel subscripts nothing; no guess is made about what was meant.
    assert normalize_name(SA + COENG + VOWEL_II + RO) == SA + COENG + VOWEL_II + RO


def test_khmer_whitespace_and_punctuation_are_removed() -> None:
    assert normalize_name("សុខា ចាន់") == "សុខាចាន់"
    assert normalize_name("  សុខា   ចាន់  ") == "សុខាចាន់"
    assert normalize_name("សុខា\u200bចាន់") == "សុខាចាន់"
    assert normalize_name("សុខា ចាន់។") == "សុខាចាន់"
    assert normalize_name("សុខា-ចាន់") == "សុខាចាន់"


def test_khmer_mark_after_a_stray_space_rejoins_its_base() -> None:
    assert normalize_name("ស ុខា") == SOKHA


def test_mixed_khmer_and_latin_keep_a_space_between_scripts() -> None:
    assert normalize_name("Sokha  សុខា") == "sokha សុខា"
    assert normalize_name("សុខា (Sokha) Chan") == "សុខា sokha chan"


def test_different_khmer_names_keep_different_keys() -> None:
    assert normalize_name("សុខា") != normalize_name("សុខ")
    assert normalize_name("ស្រី") != normalize_name("សិរី")


SAMPLES = [
    "Sokha  Chan",
    "Sokhá Chan",
    "O'Neil",
    "សុខា ចាន់",
    SA + VOWEL_II + COENG + RO,
    KHA + NIKAHIT + VOWEL_U + COENG + NYO,
    SA + REAHMUK + NIKAHIT + VOWEL_AA + ROBAT + MUUSIKATOAN + COENG + TA + COENG + RO,
    "\u17dd" + COENG + KHA,  # ATTHACAN and COENG are the only Khmer marks NFC reorders
    SA + "\u17dd" + COENG + KHA,
    "ស ុខា",
    "Sokha  សុខា",
    "Nguyễn Văn Ánh",
    "\u0301Sokha \u00a8",  # marks with no letter to sit on
]


@pytest.mark.parametrize("raw", SAMPLES)
def test_name_key_is_idempotent_and_nfc(raw: str) -> None:
    key = normalize_name(raw)
    assert normalize_name(key) == key
    assert unicodedata.is_normalized("NFC", key)


def test_atthacan_typed_before_subscript_matches() -> None:
    # NFC would move ATTHACAN (ccc 230) behind COENG (ccc 9) and split the pair; reordering first avoids it.
    assert normalize_name(SA + "\u17dd" + COENG + KHA) == SA + COENG + KHA + "\u17dd"


@pytest.mark.parametrize("raw", ["", "   ", "\u200b", "...", " - ", "។"])
def test_name_without_searchable_content_gives_empty_key(raw: str) -> None:
    assert normalize_name(raw) == ""


def test_normalize_name_requires_a_string() -> None:
    with pytest.raises(TypeError):
        normalize_name(None)  # type: ignore[arg-type]


# --- nfc ---------------------------------------------------------------------------------------


def test_nfc_trims_and_composes() -> None:
    assert nfc("  Sokha\u0301  ") == "Sokh\u00e1"
    assert nfc("e\u0301") == "\u00e9"
    assert nfc("\tសុខា\n") == "សុខា"


def test_nfc_keeps_the_name_as_given() -> None:
    # Storage keeps case, inner spacing and the typed Khmer order; only the search key folds them.
    assert nfc("Sokha  CHAN") == "Sokha  CHAN"
    typed = SA + VOWEL_II + COENG + RO
    assert nfc(typed) == typed


def test_nfc_of_blank_is_empty() -> None:
    assert nfc("   ") == ""
