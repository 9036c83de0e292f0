"""Trainer for the BERT (+BiLSTM) + CRF NER head: `python -m train --help`."""
