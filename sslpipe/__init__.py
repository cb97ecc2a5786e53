"""sslpipe: self-supervised pretraining pipelines (CLI entry point; the library is ``sslcore``)."""
