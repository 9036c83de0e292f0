"""Trainer for the BERT (+BiLSTM) + CRF NER head: `python -m bert_ner.train --help`."""
