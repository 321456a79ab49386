"""The artefact contract shared by the prepare stages and the trainer.

Table names and schemas (`tables`), the crops format (`crops`), the one graph reader (`graphs`),
version locks and the declared roots (`lock`), class constants (`classes`) and the error hierarchy
(`errors`), landmark layouts such as AFLW-19 from 68 points (`layouts`) and the one config builder and
`--set` parser (`config`). The trainer imports this package of `pipeline` and no other.
"""
