"""lmforge: language-model pretraining from raw text to a Hugging Face export.

The package follows the data flow: corpus -> tokenizer -> data (shards, loaders) -> models ->
objectives -> train -> evaluate / generate / interop, with cli.py on top.
"""

__version__ = "0.1.0"
