"""Models: tokenizer, policy / value / reward models, batching, generation, saving in the Hugging Face layout.
May import the standard library, libraries other than the tools (mlflow, prefect, gx, dvc), config, io, locks."""
