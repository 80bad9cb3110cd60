// `make bench`: each capability's figures beside its named baseline, measured in the same run.
print("tibet-twin-bench: no benchmarks yet")
