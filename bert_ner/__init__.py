"""BERT + CRF named-entity recognition: the model core shared by training, export and serving."""
