"""The artefact contract shared by the prepare stages and the trainer.

Table names and schemas (`tables`), the crops format (`crops`), the one graph reader (`graphs`),
version locks and the declared roots (`lock`), class constants (`classes`) and the error hierarchy
(`errors`), landmark layouts such as AFLW-19 from 68 points in numpy and torch forms (`layouts`), the
VA-regressor file format (`va_regressor`), the one Registry of backends, adapters and methods (`registry`),
the one config builder and `--set` parser (`config`) and the command-line grammar built on it (`cli`).
The trainer imports this package of `pipeline` and no other.
"""
