"""Describing change polygons in words with CLIP (``detect --describe``), after detection.

For every change polygon a crop of each date around it is embedded by a CLIP image encoder and
compared with the text embeddings of a vocabulary of land-cover/object names: the polygon gets
what it was (``before_class``), what it became (``after_class``) and, for a user's query, a score
and a match flag. Works for any engine (ChangeCLIP or IR-MAD).

Modules: :mod:`~changeclip.describe.vocabulary` (names, prompt templates, queries; no torch),
:mod:`~changeclip.describe.crops` (where to crop on the grid; no torch),
:mod:`~changeclip.describe.encoder` (CLIP image/text embeddings), :mod:`~changeclip.describe.scoring`
(probabilities and query scores), :mod:`~changeclip.describe.describer` (the polygon pass that
reads crops, scores them and writes the attributes and the matching outputs) and
:mod:`~changeclip.describe.loading` (the encoder and its embedded vocabularies kept loaded by the
job server, and their cache keys).
"""
