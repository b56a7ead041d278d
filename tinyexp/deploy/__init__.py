"""Deployment to microcontrollers: TFLite export, TFLite Micro measurement, C sources.

* :mod:`~tinyexp.deploy.export`: a float network to a ``dynamic``/``int8``/``fp16``/``int16x8``
  TFLite flatbuffer (litert-torch, PT2E, ai-edge-quantizer), slimmed for the MCU.
* :mod:`~tinyexp.deploy.tflm`: operators, arena (head/tail) and predictions in TFLite Micro;
  host latency in the full TFLite runtime.
* :mod:`~tinyexp.deploy.csource`: ``model_data.{h,cc}`` and a ``main.cc`` for a TFLM build.
* :mod:`~tinyexp.deploy.cli`: ``tinyexp-deploy inspect FILE.tflite``.

The packages behind it are heavy and live in the ``deploy`` extra; importing this package
imports none of them (each function imports what it needs).
"""

from tinyexp.deploy.export import MODES, DeployError, export_tflite

__all__ = ["MODES", "DeployError", "export_tflite"]
