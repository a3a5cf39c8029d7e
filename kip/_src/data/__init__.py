"""Implementation of :mod:`kip.data`: readers, preprocessing and the :class:`Dataset` container."""
