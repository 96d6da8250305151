"""Training and inference: the Trainer, the one checkpoint format, chunked apply, separate,
evaluate and the Wiener post-filter. Works without Ray or MLflow."""
