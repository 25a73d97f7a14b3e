"""How good are the images? Metrics, judges and pictures.

    metrics.py      the statistics behind FID, KID and the Inception Score
    inception.py    the FID Inception-v3 network, reading pytorch-fid's weights
    judge.py        a small classifier trained on a dataset's labels: a judge that works offline
    pixel_judge.py  caption adherence on the embedded set, read off the drawn pixels
    evaluate.py     generate images for held-out captions and measure them
    plotting.py     image grids, captioned grids and the loss curve, saved as PNG
"""
