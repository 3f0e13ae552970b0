"""Tokenizer, policy / value / reward models, batching and saving in the Hugging Face layout."""
