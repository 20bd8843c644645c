"""See and measure motion: the AMF viewer (``ditflow-fast amf``), flow pictures, and Motion Fidelity on any videos.

- :mod:`.colour`: the flow colour wheel (hue: direction, saturation: magnitude), shared by the PNG
  and the page's JavaScript (the same table and formula).
- :mod:`.reference`: the reference AMF (argmax, clean latent at timestep 0, empty prompt) of a video
  through a model of any supported family, or through the bundled toy-world model and its codec.
- :mod:`.output`: ``amf.safetensors`` (field and provenance), ``amf.png`` (a grid of every frame
  pair) and :mod:`.page`: ``amf.html``, one self-contained page (data inline, no network);
  :mod:`.fields` holds the numbers both use (the saturation scale, the per-pair error).
- :mod:`.motion`: trackers (OpenCV pyramidal Lucas-Kanade on a grid with a forward-backward check;
  CoTracker from the torch hub cache) and Motion Fidelity as DiTFlow and SMM define it
  (``ditflow-fast eval``).

The docs are ``docs/viewer.md``.
"""
