"""End-to-end training (``heads finetune``, ``heads train --end-to-end``): backbones and head
trained together from decoded frames, through the same loop as cached training
(:mod:`heads.loop`).

- :mod:`heads.finetune.config`: the papers' presets and :class:`FinetuneConfig`;
- :mod:`heads.finetune.clips`: decoding and augmenting the frames of each video (DataLoader side);
- :mod:`heads.finetune.models`: the stream encoders and :class:`PixelModel` (encoders → head);
- :mod:`heads.finetune.build`: the model of a config, the labelled videos, ``--init-from``;
- :mod:`heads.finetune.recipe`: the recipe (build → setup → train → cleanup) and the loader;
- :mod:`heads.finetune.cli`: the ``heads finetune`` command.

Kept free of imports so that ``heads --help`` and the config need no torch.
"""
