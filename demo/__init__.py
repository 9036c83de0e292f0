"""python -m demo: a web page that tags text through the project's gRPC or REST client."""
