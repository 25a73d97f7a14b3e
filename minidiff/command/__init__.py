"""The `minidiff` command and what it measures.

    cli.py           minidiff demo / train / sample / adherence / evaluate / bench
    options.py       its options, derived from the configs they set, with their checks
    runs.py          a training run as the command sets it up, and its sample grids
    benchmark.py     what `minidiff bench` times: images/s, compile time, FLOP/s, MFU
    pytorch_peer.py  the same network in HF diffusers, for `minidiff bench --pytorch`
    import_graph.py  the library's own layout, checked: which module imports which
"""
