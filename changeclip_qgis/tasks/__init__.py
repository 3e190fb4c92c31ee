"""Background work (QgsTask subclasses); layers are only touched in ``finished()``."""
