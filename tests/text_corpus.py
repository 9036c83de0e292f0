"""A generated Unicode corpus for the in-graph tokenizer's agreement with the featurizer.

Each string mixes pieces from pools that stress one rule of BERT's basic tokenizer or WordPiece:
accents (composed and decomposed), combining marks, CJK and Hangul, emoji with ZWJ sequences,
skin tones and flags, control, format and zero-width characters, right-to-left text and marks,
Unicode punctuation and whitespace runs, 1-character and very long words, arbitrary code points
(unassigned and private-use ones too), and invalid UTF-8 byte sequences.
"""

import random

ASCII_WORDS = "EU rejects German call to boycott British lamb Peter Blackburn unaffable 1996-08-22"
POOLS = {
  "ascii": ASCII_WORDS.split() + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
  "accents": [
    "Müller",
    "café",
    "naïve",
    "Ångström",
    "São",
    "Ñandú",
    "İstanbul",
    "ΣΊΣΥΦΟΣ",
    "Straße",
  ],
  "decomposed": ["Mu\u0308ller", "cafe\u0301", "n\u0303", "a\u0301\u0302\u0303", "\u0301x"],
  "combining": [chr(c) for c in range(0x0300, 0x0370)] + ["\u20dd", "\u0489", "\u1ab0"],
  "cjk": ["漢字", "東京", "中文測試", "日本語のテキスト", "한국어", "한", "\uf900", "\U00020000"],
  "emoji": [
    "😀",
    "👍🏽",
    "👨\u200d👩\u200d👧",
    "🇩🇪",
    "🏳\ufe0f\u200d🌈",
    "❤\ufe0f",
    "#\ufe0f\u20e3",
  ],
  "control": [chr(c) for c in range(0, 32)] + [chr(c) for c in range(0x7F, 0xA0)],
  "zero_width": ["\u200b", "\u200c", "\u200d", "\ufeff", "\u2060", "\u00ad", "\u180e"],
  "rtl": ["שלום", "עולם", "مرحبا", "بالعالم", "\u200e", "\u200f", "\u202b", "\u202c"],
  "punctuation": [
    "«",
    "»",
    "—",
    "–",
    "…",
    "¿",
    "¡",
    "、",
    "。",
    "「",
    "」",
    "‘",
    "’",
    "“",
    "”",
    "·",
  ],
  "whitespace": [" ", "  ", "\t", "\n", "\r\n", "\u3000", "\u00a0", "\u2028", "\u2009", "\x0b"],
  "digits": ["0", "42", "3.14", "١٢٣", "१२३", "²", "½"],
}
WEIGHTS = {name: 1 for name in POOLS}
WEIGHTS.update(ascii=6, whitespace=6, accents=2)


def _random_code_point(rng):
  """Any code point a str can hold in UTF-8 (no surrogates), assigned or not."""
  while True:
    c = rng.randrange(0x110000)
    if not 0xD800 <= c < 0xE000:
      return chr(c)


def _piece(rng):
  """One piece of text from a pool, a rare long word or arbitrary code points."""
  roll = rng.random()
  if roll < 0.02:
    return rng.choice("abcé漢") * rng.choice([1, 199, 200, 201, 250, 600])
  if roll < 0.10:
    return "".join(_random_code_point(rng) for _ in range(rng.randint(1, 4)))
  pool = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
  return rng.choice(POOLS[pool])


def generated_text(rng):
  """A str of a few dozen pieces, now and then separated by whitespace."""
  parts = []
  for _ in range(rng.randint(0, 40)):
    parts.append(_piece(rng))
    if rng.random() < 0.5:
      parts.append(rng.choice(POOLS["whitespace"][:4]))
  return "".join(parts)


def invalid_utf8(rng):
  """UTF-8 bytes of a generated text with invalid sequences spliced in."""
  data = bytearray(generated_text(rng).encode("utf-8"))
  bad = [
    b"\xff",
    b"\xfe",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\x80",
  ]
  for _ in range(rng.randint(1, 4)):
    at = rng.randint(0, len(data))
    data[at:at] = rng.choice(bad)
  return bytes(data)


def corpus(count, seed=0):
  """`count` generated strings: str, and every tenth one bytes with invalid UTF-8."""
  rng = random.Random(seed)
  return [invalid_utf8(rng) if i % 10 == 9 else generated_text(rng) for i in range(count)]
