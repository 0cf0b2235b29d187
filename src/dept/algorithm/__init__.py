"""The DEPT algorithm in plain PyTorch: workers, aggregator, variants, schedule, the round loop.

Nothing here knows how tensors travel (no torch.distributed, no flwr): engines move `Download`s and
`WorkerUpdate`s between the aggregator and the workers.
"""
