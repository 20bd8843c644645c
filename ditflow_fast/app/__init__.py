"""``ditflow-fast app``: DiTFlow motion transfer in a web page (Gradio Blocks), on the transfer API.

Needs the optional ``app`` extra (``pip install -e '.[app]' in the checkout``). The page: a reference video (an
upload or a bundled sample), an optional first-frame image (image-to-video), a prompt or prompt embeddings, a model
(default: a tiny random CogVideoX written into the app's cache on first start, which runs on a CPU in seconds), a
method and the main settings; the predicted peak GPU memory before running (and a refusal when it does not fit);
progress per denoising step with the optimisation loss; the result beside the reference, the AMF viewer of both,
Motion Fidelity and a zip of the run folder. One run at a time, others queued (docs/app.md).

Modules: :mod:`.core` (fields -> ``transfer_api.run``'s inputs and options, run folders, memory, the held
model, jobs; no gradio), :mod:`.results` (what a run folder holds, read for the page), :mod:`.ui` (the Gradio
page). The subcommand itself (parser, checks, launch) is ``ditflow_fast/cli/app.py``.
"""
