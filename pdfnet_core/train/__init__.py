"""Fine-tuning PDFNet with the paper's losses, and the ``train`` / ``evaluate`` commands.

config (TrainConfig), data (DIS5K folders, depth cache), losses, depth_head, model (training
forward, official save layout), swin_timm (ImageNet Swin-B), loop, evaluate, plots, commands,
synthetic (a generated DIS5K-style set).  The inference path never imports this package; timm is
imported only when training runs.
"""
