"""Fine-tuning the shop's own reply model: data -> LoRA training -> export -> evaluation.

::

    data.py           the dataset: chat examples built exactly as ``generate`` builds its
                      prompts, split by FAQ id, deduplicated, with a data card
    conversations.py  agent-approved replies from the store (PII removed)
    train.py          LoRA training with peft on transformers (resumable checkpoints)
    export.py         PEFT dir (vLLM), GGUF LoRA (llama.cpp), merged checkpoint; install
    evaluate.py       base vs adapter through the real pipeline and engine
    plots.py          loss curves and metric bars (PNG)
    cli.py            ``bot finetune data | train | export | eval``

Usage and figures: docs/finetune.md and docs/finetune/report.md.
"""
