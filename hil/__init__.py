"""The hardware-in-the-loop job around a hybrid optical network: datasets, teachers and optical
students (:mod:`hil.models`), NTK and losses, the trainer (:mod:`hil.api`, ``hil train``), the
before-fabrication estimator (:mod:`hil.estimate`), design export (:mod:`hil.export`), capture to HDF5
(:mod:`hil.capture`) and backend fine-tuning on captures (:mod:`hil.finetune`); the ``hil`` CLI
(:mod:`hil.cli`) is a thin shell over them."""
