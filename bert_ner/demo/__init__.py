"""python -m bert_ner.demo: a web page that tags text through the project's gRPC or REST client."""
