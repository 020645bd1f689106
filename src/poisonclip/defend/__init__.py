"""Defenses (``poisonclip defend``): remove or correct poisons, then measure the model again.

``filter``: drop what a registered detector flags and train on the rest (``defend.filter``);
``cleanclip``: fine-tune a poisoned model on clean data with added unimodal losses
(``defend.cleanclip``). Both report through ``defend.measure``: the same evaluation before
and after, into ``defense.json``.
"""
