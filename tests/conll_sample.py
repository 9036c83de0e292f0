"""Small CoNLL files cut from the real data, for tests that train or evaluate on a few sentences."""

from bert_ner import conll


def write_first_sentences(source, out, count):
  """Writes the first `count` sentences of the CoNLL file `source` to `out` as `word tag` lines
  (IOB2, no -DOCSTART-: one document); returns `out`."""
  lines = [
    "".join(f"{word} {tag}\n" for word, tag in zip(s.words, s.tags)) + "\n"
    for s in conll.read_conll(source)[:count]
  ]
  out.write_text("".join(lines), encoding="utf-8")
  return out
