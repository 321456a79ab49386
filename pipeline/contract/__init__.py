"""The artefact contract shared by the prepare stages and the trainer.

Table names and schemas (`tables`), the crops format (`crops`), the one graph reader (`graphs`),
version locks and the declared roots (`lock`), class constants (`classes`) and the error hierarchy
(`errors`). The trainer imports this package of `pipeline` and no other.
"""
