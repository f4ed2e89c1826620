"""The output store: one georeferenced Zarr v3 group of building maps per input scene.

One package owns the format, so writer and readers cannot drift apart:
:mod:`~resflow.store.format` (constants, encoding, metadata templates),
:mod:`~resflow.store.root` (the root document), :mod:`~resflow.store.writer`,
:mod:`~resflow.store.shards` and :mod:`~resflow.store.targets` (making a store, refusing
what must not be overwritten or resumed, writing shards and the ledger),
:mod:`~resflow.store.reader` (what exports, eval and ``resflow info`` read) and
:mod:`~resflow.store.mask_rule` (which pixels are buildings). Names are imported from those
modules; this package re-exports nothing.
"""
