"""`ner_config.json` through its one schema (bert_ner.ner_schema): every file written so far still
reads (checkpoints and exports from before schema_version, the shipped checkpoint), a written
file reads back the same, and what is not this schema is one ValueError naming the file and
field."""

import json

import pytest

from bert_ner import ner_schema
from bert_ner.ner_schema import ExportInfo, NerConfig, NerConfigFile
from conftest import REPO_ROOT

# An export's ner_config.json as the exporter wrote it before schema_version existed.
OLD_EXPORT = {
  "head": "dense",
  "lstm_size": 128,
  "hidden_size": 128,
  "feature_layers": [-1],
  "do_lower_case": True,
  "max_seq_length": 32,
  "dropout": 0.5,
  "adapter_rank": 0,
  "adapter_alpha": 0.0,
  "adapter_first_layer": 0,
  "labels": ["O", "B-PER", "I-PER"],
  "fingerprint": "0123456789abcdef",
  "vocab_size": 30522,
  "max_position_embeddings": 64,
}


# A checkpoint dir's ner_config.json as the trainer wrote it before schema_version existed.
OLD_CHECKPOINT = {
  "head": "bilstm",
  "lstm_size": 128,
  "hidden_size": 128,
  "feature_layers": [-4, -3, -2, -1],
  "do_lower_case": True,
  "max_seq_length": 256,
  "dropout": 0.5,
  "adapter_rank": 16,
  "adapter_alpha": 16.0,
  "adapter_first_layer": 0,
  "word_shape_dim": 16,
  "word_shape_dropout": 0.75,
}


def write_json(path, data):
  path.write_text(json.dumps(data))
  return path


def test_the_shipped_checkpoint_config_reads_at_the_current_version_without_export_info():
  content = ner_schema.read(REPO_ROOT / "models/default" / ner_schema.FILE_NAME)
  assert content.schema_version == ner_schema.SCHEMA_VERSION and content.export is None
  assert content.config.feature_layers == [-4, -3, -2, -1]
  assert content.config.adapter_rank == 16


def test_a_checkpoint_config_from_before_the_schema_version_reads_as_version_1(tmp_path):
  content = ner_schema.read(write_json(tmp_path / "ner_config.json", OLD_CHECKPOINT))
  assert content.schema_version == 1 and content.export is None
  assert content.config == NerConfig.from_dict(OLD_CHECKPOINT)
  assert content.config.word_shape_dim == 16


def test_an_export_from_before_the_schema_version_keeps_its_info_and_length_groups(tmp_path):
  content = ner_schema.read(write_json(tmp_path / "ner_config.json", OLD_EXPORT))
  assert content.schema_version == 1
  assert content.config == NerConfig.from_dict(OLD_EXPORT)
  assert content.export == ExportInfo(
    fingerprint="0123456789abcdef",
    labels=["O", "B-PER", "I-PER"],
    vocab_size=30522,
    max_position_embeddings=64,
    outputs_zero_past_length=True,
  )


def test_an_export_written_reads_back_the_same_at_the_current_version(tmp_path):
  content = NerConfigFile(
    NerConfig(head="dense", max_seq_length=32),
    ExportInfo("fedcba9876543210", ["O", "B-LOC"], 100, 64, outputs_zero_past_length=False),
  )
  ner_schema.write(tmp_path / "ner_config.json", content)
  again = ner_schema.read(tmp_path / "ner_config.json")
  assert again == content and again.schema_version == ner_schema.SCHEMA_VERSION
  # Flat, as earlier readers expect: their keys sit at the top level.
  data = json.loads((tmp_path / "ner_config.json").read_text())
  assert data["fingerprint"] == "fedcba9876543210" and data["max_seq_length"] == 32


def test_export_info_fields_not_known_read_back_as_not_known(tmp_path):
  content = NerConfigFile(NerConfig(), ExportInfo("0123456789abcdef"))
  ner_schema.write(tmp_path / "ner_config.json", content)
  assert ner_schema.read(tmp_path / "ner_config.json") == content


def test_a_file_without_word_shapes_reads_as_a_model_without_them(tmp_path):
  content = ner_schema.read(write_json(tmp_path / "ner_config.json", OLD_EXPORT))
  assert content.config.word_shape_dim == 0 and content.config.word_shape_dropout == 0.0
  NerConfig(word_shape_dim=16, word_shape_dropout=0.5).to_json_file(tmp_path / "shapes.json")
  again = ner_schema.read(tmp_path / "shapes.json").config
  assert (again.word_shape_dim, again.word_shape_dropout) == (16, 0.5)


def test_a_checkpoint_config_written_has_no_export_info(tmp_path):
  NerConfig(lstm_size=64).to_json_file(tmp_path / "ner_config.json")
  content = ner_schema.read(tmp_path / "ner_config.json")
  assert content.export is None and content.config == NerConfig(lstm_size=64)


@pytest.mark.parametrize(
  "change, message",
  [
    ({"schema_version": 3}, "schema_version 3 is newer than this code reads (2)"),
    ({"schema_version": "2"}, "schema_version must be an integer >= 1, got '2'"),
    ({"max_position_embeddings": 0}, "max_position_embeddings must be an integer >= 1, got 0"),
    ({"outputs_zero_past_length": 1}, "outputs_zero_past_length must be true or false, got 1"),
    ({"labels": "O"}, "labels must be a list of label names, got 'O'"),
    ({"head": "crf"}, "head must be one of ('bilstm', 'dense'), got 'crf'"),
    ({"word_shape_dim": -1}, "word_shape_dim must be an integer >= 0, got -1"),
    ({"word_shape_dropout": 1.5}, "word_shape_dropout must be a number in [0, 1], got 1.5"),
  ],
)
def test_a_field_that_is_not_this_schema_is_one_line_naming_it(tmp_path, change, message):
  path = write_json(tmp_path / "ner_config.json", {**OLD_EXPORT, **change})
  with pytest.raises(ValueError) as error:
    ner_schema.read(path)
  assert str(error.value) == f"{path}: {message}"


def test_a_required_field_missing_is_named(tmp_path):
  path = write_json(tmp_path / "ner_config.json", {"do_lower_case": True})
  with pytest.raises(ValueError, match=r"lacks \['max_seq_length'\]$"):
    ner_schema.read(path, ner_schema.FEATURIZER_FIELDS)
